"""Products registered inside the ECP5 multiplier block, so that 100 MHz paths do not cross it unregistered.

Yosys maps ``a * b`` to ``MULT18X18D`` blocks with all their pipeline registers off (``synth_ecp5`` does
not absorb fabric flip-flops into the DSP). A flip-flop -> multiplier -> flip-flop path then costs the
multiplier's 3.9 ns *plus* the long routes into and out of the DSP row on both sides (nextpnr, a routed
LINEAR unit on the 85F: 3.7 ns in, 4.0 ns out), 12 ns in all. With the block's own output register on,
the product's flip-flop *is* the block's output register: the path in ends at the register (nextpnr
out of context: 1.3 ns route and 3.5 ns setup through the multiplier) and the path out starts 0.74 ns
after the clock.

:func:`registered_product` is ``m.d.sync += p.eq(a * b)`` (under an optional enable) with that register:
an ``Instance("MULT18X18D")`` on ECP5 when both operands fit one block, plain Amaranth otherwise (every
other target, simulation, and operands wider than 18 bits). Both forms have the same one-cycle latency,
reset value (0) and enable; ``tests/test_arith_dsp.py`` checks the plain form against NumPy and the
ECP5 form's cells and parameters after Yosys.
"""

from amaranth.hdl import ClockSignal, Const, Instance, ResetSignal, Signal, signed, unsigned

__all__ = ["DSP_WIDTH", "dsp_target", "fits_dsp", "registered_product", "registered_pieces"]

#: Operand width of one ECP5 multiplier block (signed).
DSP_WIDTH = 18


def dsp_target(platform):
    """``"ecp5"`` for a platform with ``family == "ecp5"`` (the board platforms and
    :data:`hw.synth.ECP5_SYNTH_PLATFORM`), else ``None``."""
    return "ecp5" if getattr(platform, "family", None) == "ecp5" else None


def _operand_mode(shape):
    """How an operand enters the block: ``"signed"`` (sign- or zero-extended to 18 signed bits),
    ``"unsigned"`` (18 unsigned bits, only when both operands are), or ``None`` (too wide)."""
    if shape.signed:
        return "signed" if shape.width <= DSP_WIDTH else None
    if shape.width <= DSP_WIDTH - 1:
        return "signed"
    return "unsigned" if shape.width <= DSP_WIDTH else None


def fits_dsp(a_shape, b_shape):
    """Whether ``a * b`` fits one ``MULT18X18D``: both signed or narrow enough to zero-extend into 18
    signed bits, or both unsigned of at most 18 bits."""
    ma, mb = _operand_mode(a_shape), _operand_mode(b_shape)
    if ma is None or mb is None:
        return False
    if "unsigned" in (ma, mb):
        return not a_shape.signed and not b_shape.signed
    return True


def registered_product(m, name, a, b, *, en=None, platform=None, input_registers=False):
    """``a * b``, registered: a new signal ``name`` that takes ``a * b`` at each clock edge where ``en``
    is high (always when ``en`` is None), reset 0 by the ``sync`` domain's reset.

    With ``input_registers`` the operands are registered first (the block's A and B input registers on
    ECP5), so the product is that of the operands two loads back. Use it where the operands come from far
    away: the route into the block then ends at a register instead of running on through the multiplier
    (the attention scores' query words: 7.4 ns of route from their block RAM, 11.00 ns placed).

    Parameters
    ----------
    m : Module
        The module to add the multiplier (or the register) to.
    name : str
        Name of the product signal (and of the block instance, ``name + "_dsp"``).
    a, b : Value
        The operands, signed or unsigned.
    en : Value, optional
        Clock enable of the product register.
    platform : object, optional
        The elaboration platform; ``family == "ecp5"`` selects the ``MULT18X18D`` form.
    input_registers : bool
        Register the operands too (a latency of two loads instead of one), under the same enable and
        reset.

    Returns
    -------
    Signal
        ``signed(len(a) + len(b))`` if either operand is signed, else ``unsigned(len(a) + len(b))``.

    Raises
    ------
    ValueError
        When called inside a ``with m.If``/``m.Switch``/``m.FSM`` block (the condition belongs in ``en``).
    """
    if getattr(getattr(m, "domain", None), "_depth", 0):
        # Inside ``with m.If``/``m.FSM`` the plain form's register would load only under that condition,
        # the block's would not: the two forms would differ. The enable says when to load.
        raise ValueError(f"registered_product {name!r}: call it outside If/Switch/FSM blocks and pass the "
                         f"load condition as `en`")
    a_shape, b_shape = a.shape(), b.shape()
    width = a_shape.width + b_shape.width
    is_signed = a_shape.signed or b_shape.signed
    p = Signal(signed(width) if is_signed else unsigned(width), name=name)
    if dsp_target(platform) != "ecp5" or not fits_dsp(a_shape, b_shape):
        loads = [p.eq(a * b)]
        if input_registers:
            a_r, b_r = Signal(a_shape, name=f"{name}_ra"), Signal(b_shape, name=f"{name}_rb")
            loads = [a_r.eq(a), b_r.eq(b), p.eq(a_r * b_r)]
        if en is None:
            m.d.sync += loads
        else:
            with m.If(en):
                m.d.sync += loads
        return p

    signed_mode = is_signed or _operand_mode(a_shape) == "signed" and _operand_mode(b_shape) == "signed"
    if signed_mode:
        # Assigning to an 18-bit signed signal sign-extends a signed operand and zero-extends an
        # unsigned one (of at most 17 bits, so its top bit stays 0).
        a18, b18 = Signal(signed(DSP_WIDTH), name=f"{name}_a"), Signal(signed(DSP_WIDTH), name=f"{name}_b")
    else:
        a18, b18 = Signal(DSP_WIDTH, name=f"{name}_a"), Signal(DSP_WIDTH, name=f"{name}_b")
    m.d.comb += [a18.eq(a), b18.eq(b)]
    p36 = Signal(2 * DSP_WIDTH, name=f"{name}_p")
    ports = {}
    for i in range(DSP_WIDTH):
        ports[f"i_A{i}"] = a18[i]
        ports[f"i_B{i}"] = b18[i]
        ports[f"i_C{i}"] = Const(0, 1)
    for i in range(2 * DSP_WIDTH):
        ports[f"o_P{i}"] = p36[i]
    m.submodules[f"{name}_dsp"] = _mult18x18d(
        ports, sign=Const(int(signed_mode), 1), clk=ClockSignal("sync"), rst=ResetSignal("sync"),
        ce=Const(1, 1) if en is None else en, input_registers=input_registers)
    m.d.comb += p.eq(p36[:width])
    return p


def _mult18x18d(ports, *, sign, clk, rst, ce, input_registers=False):
    """One ``MULT18X18D`` with its output register on (clock 0, clock enable 0, synchronous reset 0), and
    its A and B input registers on the same clock, enable and reset when ``input_registers``."""
    unused = {f"i_{port}{k}": Const(value, 1) for k in (1, 2, 3) for port, value in (("CE", 1), ("RST", 0))}
    inputs = "CLK0" if input_registers else "NONE"
    return Instance(
        "MULT18X18D",
        p_REG_INPUTA_CLK=inputs, p_REG_INPUTA_CE="CE0", p_REG_INPUTA_RST="RST0",
        p_REG_INPUTB_CLK=inputs, p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
        p_REG_INPUTC_CLK="NONE", p_REG_PIPELINE_CLK="NONE",
        p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
        p_CLK0_DIV="ENABLED", p_HIGHSPEED_CLK="NONE", p_GSR="DISABLED", p_CAS_MATCH_REG="FALSE",
        p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED", p_RESETMODE="SYNC",
        i_SIGNEDA=sign, i_SIGNEDB=sign, i_SOURCEA=Const(0, 1), i_SOURCEB=Const(0, 1),
        i_CLK0=clk, i_CE0=ce, i_RST0=rst, **unused, **ports)


def registered_pieces(m, name, a, b, *, en=None, platform=None):
    """``a * b`` for an ``a`` of any width, as registered pieces that each fit one block: ``[(shift,
    piece), ...]`` with ``a * b == sum(piece << shift)`` one cycle after the operands (the caller sums the
    pieces in its next stage, so no adder follows a block in the same cycle).

    ``a`` is cut into 17-bit unsigned chunks (the top chunk keeps ``a``'s sign); ``b`` must fit one
    block's other operand (at most 17 unsigned or 18 signed bits). Arguments as :func:`registered_product`.
    """
    b_shape = b.shape()
    if b_shape.width > (DSP_WIDTH if b_shape.signed else DSP_WIDTH - 1):
        raise ValueError(f"registered_pieces {name!r}: b has {b_shape.width} bits; at most "
                         f"{DSP_WIDTH - 1} unsigned or {DSP_WIDTH} signed bits fit one block")
    a_shape = a.shape()
    cut = DSP_WIDTH - 1
    if fits_dsp(a_shape, b_shape):
        return [(0, registered_product(m, name, a, b, en=en, platform=platform))]
    pieces = []
    for k, lo in enumerate(range(0, a_shape.width, cut)):
        chunk = a[lo:lo + cut]
        if lo + cut >= a_shape.width and a_shape.signed:
            chunk = chunk.as_signed()
        pieces.append((lo, registered_product(m, f"{name}_{k}", chunk, b, en=en, platform=platform)))
    return pieces
