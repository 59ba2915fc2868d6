"""The per-token scalar unit: a small sequential ALU on SFloat operands, bit-exact with ``golden.sfloat``.

Each token needs only a handful of scalar operations (activation scale, RMS, dequantisation factors,
softmax normaliser), so this unit trades speed for area: one operation at a time, one result bit per
cycle for multiply, divide and square root, and no barrel shifter.

Operands and results
--------------------
An SFloat (:data:`SFLOAT`) is ``m * 2^e`` with a 24-bit mantissa ``m`` and a signed ``e_bits``-bit
exponent (default :data:`E_BITS` = 12, range [-2048, 2047]). The golden model's exponents stay far inside
this range (per-token scales, sums of squares below 2^48, powers of two of attention exponents).

* **Operands must be normalised**: ``m == 0`` or ``2^23 <= m < 2^24`` (every result of this unit and
  every ``SFloat.from_float`` constant is). The unit tests bit 23 for zero.
* **Zero** is ``m == 0`` with any exponent. The golden model stores zero with exponent ``-(1 << 20)``,
  which does not fit; the unit never looks at the exponent of a zero operand, and a zero *result*
  always has ``e == 0``.
* ``overflow`` is set when a non-zero result's exponent does not fit in ``e_bits`` (the golden model
  has no limit); the exponent is then wrapped to ``e_bits`` bits.
* ``div_by_zero`` is set by DIV with a zero divisor; the result is zero. (The golden model raises
  ``ZeroDivisionError``.)

Operations (:class:`Op`), each exactly ``golden.sfloat.SFloat``'s truncating arithmetic:

======================  ========================================  =======================================
op                      result                                    operands used
======================  ========================================  =======================================
``MUL``                 ``a.mul(b)``                              a, b
``DIV``                 ``a.div(b)``                              a, b
``ADD``                 ``a.add(b)``                              a, b
``SQRT``                ``a.sqrt()``                              a
``SCALE_POW2``          ``a.scale_pow2(k)``                       a, k
``FROM_INT``            ``SFloat.from_int(i)``, ``i < 2^48``      i
``TO_MULT``             ``a.multiplier()``: ``value.m = m >> 8``  a
                        (16 bits), ``value.e = -(e + 8)``
                        (a zero gives ``(0, 0)``)
======================  ========================================  =======================================

Datapath
--------
Three working registers, ``lo`` (25 bits), ``hi`` (27 bits) and ``bb`` (26 bits), an exponent register
``ex`` (``e_bits + 2`` bits) and a step counter. The result mantissa always ends in ``lo[0:24]``.

* MUL (``multiplier="serial"``): shift-add, one multiplier bit per cycle (24 cycles): ``lo`` holds the
  running high half, ``hi`` the multiplier whose low bits are replaced by product bits. With
  ``multiplier="dsp"`` one cycle computes ``a.m * b.m`` (four ECP5 MULT18X18D).
* DIV: restoring division of ``a.m << 25`` by ``2 * b.m`` (the same quotient as ``(a.m << 24) // b.m``,
  starting from the remainder ``a.m``), one quotient bit per cycle (25 cycles), the remainder in
  ``hi``, the quotient shifted into ``lo``.
* SQRT: digit-by-digit (restoring) integer square root of ``m << (24 + (e & 1))``, two radicand bits
  and one root bit per cycle (25 cycles); the nonzero radicand bits ``m << (e & 1)`` in ``bb``, the
  remainder in ``hi``, the root in ``lo``. DIV and SQRT share one 27-bit subtractor.
* ADD: the operand with the larger exponent goes to ``bb``, the other to ``lo``, which is shifted right
  one bit per cycle to align (at most 24 cycles, truncating), then added. MUL and ADD share one 24-bit
  adder.
* Normalisation: MUL and FROM_INT leave a 48-bit value in ``{lo[0:24], hi[0:24]}`` and shift it left one
  bit per cycle until bit 47 is set or a step limit is reached (zero); DIV, SQRT and ADD leave a 24- or
  25-bit value in ``lo`` and take one cycle to shift out the carry. Dropping bits on a right shift is
  the golden model's truncation.
* Exponents: ``ex`` is loaded with ``ea + eb``, ``ea + k``, ``-(ea + 8)`` (one shared adder), ``ea - eb``,
  ``ea >> 1``, the larger exponent or 24; one small adder then applies the constant offsets (+24 after a
  product, -24 after a quotient, -12 after a root) and the normalisation steps (-1 per left shift, +1
  for a carry).

Timing
------
``cmd.ready`` is high only while the unit is idle, and ``res`` holds the result until it is taken; the
unit is idle again in the next cycle. Latency from the ``cmd`` transfer to ``res.valid``
(:meth:`ScalarUnit.latency`, checked cycle-exactly by the tests); with an always-ready consumer one
operation issues every ``latency + 1`` cycles:

* SCALE_POW2, TO_MULT, DIV by zero: 1
* MUL: 26 (product >= 2^47) or 27 (product < 2^47, or zero) serial; 3 or 4 with the DSP multiplier
* DIV, SQRT: 27
* ADD: ``4 + min(|ea - eb|, 24)`` (4 if an operand is zero; one cycle orders the operands)
* FROM_INT: ``50 - bitlen(i)`` (50 for zero)

With ``cmd_register`` every operation takes one cycle more: the registered command is decoded in its
own cycle (``LOAD``), so that no caller's operand multiplexer shares a cycle with the decode. An
undefined ``op`` encoding (7) returns zero after 1 cycle (2 with ``cmd_register``).
"""

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.sfloat import MANT_BITS, SFloat

from ..params import check_int

__all__ = ["E_BITS", "INT_BITS", "SFLOAT", "Op", "ScalarUnit", "cmd_layout", "res_layout", "sfloat_layout",
           "reference_result"]

#: Default exponent width.
E_BITS = 12
#: Width of the FROM_INT operand (sums of squares, maxima).
INT_BITS = 48
_MULTIPLIERS = ("serial", "dsp")


class Op(enum.Enum, shape=3):
    """Scalar unit operation (the ``op`` field of a command)."""

    MUL = 0
    DIV = 1
    ADD = 2
    SQRT = 3
    SCALE_POW2 = 4
    FROM_INT = 5
    TO_MULT = 6


def sfloat_layout(e_bits=E_BITS):
    """An SFloat: ``m`` (0 or in [2^23, 2^24)) times ``2^e``."""
    return data.StructLayout({"m": unsigned(MANT_BITS), "e": signed(e_bits)})


#: The SFloat layout with the default exponent width.
SFLOAT = sfloat_layout()


def cmd_layout(e_bits=E_BITS):
    """A command: ``op`` and its operands (``a``, ``b``: SFloats; ``k``: SCALE_POW2 shift; ``i``: FROM_INT)."""
    return data.StructLayout({
        "op": Op,
        "a": sfloat_layout(e_bits),
        "b": sfloat_layout(e_bits),
        "k": signed(e_bits),
        "i": unsigned(INT_BITS),
    })


def res_layout(e_bits=E_BITS):
    """A result: the value and its error flags (see the module docstring)."""
    return data.StructLayout({"value": sfloat_layout(e_bits), "div_by_zero": 1, "overflow": 1})


def reference_result(op, a=(0, 0), b=(0, 0), k=0, i=0, *, e_bits=E_BITS):
    """What the unit returns for one command, computed with ``golden.sfloat``.

    Parameters
    ----------
    op : Op or int
    a, b : tuple of int
        Operands ``(m, e)`` as the unit sees them (normalised; ``m == 0`` is zero, whatever ``e``).
    k, i : int
        SCALE_POW2 shift and FROM_INT integer.
    e_bits : int
        Exponent width of the unit.

    Returns
    -------
    tuple of int
        ``(m, e, div_by_zero, overflow)``; a zero result has ``e == 0`` and an exponent that does not
        fit in ``e_bits`` is wrapped with ``overflow`` set.
    """
    def golden(v):
        mv, ev = int(v[0]), int(v[1])
        if mv == 0:
            return SFloat.normalise(np.int64(0), np.int64(0))  # the golden zero
        return SFloat(np.int64(mv), np.int64(ev))

    op = Op(op)
    ga, gb = golden(a), golden(b)
    if op == Op.MUL:
        r = ga.mul(gb)
    elif op == Op.DIV:
        if gb.m == 0:
            return 0, 0, 1, 0
        r = ga.div(gb)
    elif op == Op.ADD:
        r = ga.add(gb)
    elif op == Op.SQRT:
        r = ga.sqrt()
    elif op == Op.SCALE_POW2:
        r = ga.scale_pow2(np.int64(k))
    elif op == Op.FROM_INT:
        if not 0 <= int(i) < 1 << INT_BITS:
            raise ValueError(f"FROM_INT operand {i} outside [0, 2^{INT_BITS})")
        r = SFloat.from_int(np.int64(i))
    else:
        m16, sh = ga.multiplier()
        r = SFloat(m16, sh)
    rm, re_ = int(r.m), int(r.e)
    if rm == 0:
        return 0, 0, 0, 0
    lo, hi = -(1 << (e_bits - 1)), (1 << (e_bits - 1)) - 1
    wrapped = (re_ - lo) % (1 << e_bits) + lo
    return rm, wrapped, 0, int(not lo <= re_ <= hi)


class ScalarUnit(wiring.Component):
    """Sequential SFloat ALU, bit-exact with :class:`golden.sfloat.SFloat` (see the module docstring).

    Parameters
    ----------
    e_bits : int
        Exponent width of operands and results, 8 to 32.
    multiplier : {"serial", "dsp"}
        MUL as a 24-cycle shift-add (no DSP blocks) or as one 24x24 product (4 MULT18X18D on ECP5).
    cmd_register : bool
        Register the command as it is taken and decode it in the next cycle (``LOAD``): one cycle more
        per operation, and the caller's operand multiplexers no longer share a cycle with the decode
        (exponent adders, operand and step-count multiplexers). The LINEAR unit's scalar units use it.

    Attributes
    ----------
    cmd : In(stream.Signature(cmd_layout(e_bits)))
        One operation per transfer; accepted only while idle.
    res : Out(stream.Signature(res_layout(e_bits)))
        One result per command, in order; held until taken.
    """

    def __init__(self, *, e_bits=E_BITS, multiplier="serial", cmd_register=False):
        check_int("e_bits", e_bits, 8, 32)
        if not isinstance(cmd_register, bool):
            raise TypeError(f"cmd_register must be a bool, got {cmd_register!r}")
        self.cmd_register = cmd_register
        if multiplier not in _MULTIPLIERS:
            raise ValueError(f"multiplier must be one of {_MULTIPLIERS}, got {multiplier!r}")
        self.e_bits = e_bits
        self.multiplier = multiplier
        self.cmd_layout = cmd_layout(e_bits)
        self.res_layout = res_layout(e_bits)
        super().__init__({
            "cmd": In(stream.Signature(self.cmd_layout)),
            "res": Out(stream.Signature(self.res_layout)),
        })

    def latency(self, op, a_e=0, b_e=0, a_zero=False, b_zero=False, i=0, mul_carry=True):
        """Cycles from the ``cmd`` transfer to ``res.valid`` (see the module docstring).

        ``mul_carry``: the 48-bit product has bit 47 set (one normalisation cycle fewer).
        """
        op = Op(op)
        load = int(self.cmd_register)           # the LOAD cycle (the command decoded from a register)
        if op in (Op.SCALE_POW2, Op.TO_MULT) or (op == Op.DIV and b_zero):
            return load + 1
        if op == Op.MUL:
            norm = 1 if (mul_carry and not (a_zero or b_zero)) else 2
            return load + (MANT_BITS if self.multiplier == "serial" else 1) + norm + 1
        if op in (Op.DIV, Op.SQRT):
            return load + MANT_BITS + 3
        if op == Op.ADD:
            return load + (4 if (a_zero or b_zero) else 4 + min(abs(a_e - b_e), MANT_BITS))
        return load + 2 * MANT_BITS + 2 - int(i).bit_length()

    def elaborate(self, platform):
        m = Module()
        E, W = self.e_bits, MANT_BITS
        XW = E + 2  # internal exponent: ea - eb - 24 and ea + eb + 24 fit
        # With cmd_register, the command is registered as it is taken and decoded from the register in
        # the next cycle (LOAD): the decode then starts at a flip-flop instead of behind the caller's
        # own operand multiplexers.
        cmd = Signal(self.cmd_layout, name="cmd_r") if self.cmd_register else self.cmd.payload
        a, b = cmd.a, cmd.b

        lo = Signal(W + 1)
        hi = Signal(W + 3)
        bb = Signal(W + 2)
        ex = Signal(signed(XW))
        cnt = Signal(range(2 * W + 1))
        cnt_z = Signal()  # cnt == 0, kept beside it as a register (it gates the adder and the state moves)
        dd = Signal(signed(E + 1))  # ADD: ea - eb, registered for the alignment step
        eb = Signal(signed(E))      # ADD: eb
        nz = Signal()  # the result is not zero
        dz = Signal()

        # -- outputs: straight from the registers, stable while res.valid --------------------------
        fits = ex[E - 1:].all() | ~ex[E - 1:].any()
        m.d.comb += [
            self.res.payload.value.m.eq(lo[:W]),
            self.res.payload.value.e.eq(Mux(nz, ex[:E], 0)),
            self.res.payload.div_by_zero.eq(dz),
            self.res.payload.overflow.eq(nz & ~fits),
        ]

        # -- command decode (used in the cycle a command is accepted) ---------------------------------
        a_zero, b_zero = ~a.m[W - 1], ~b.m[W - 1]
        d = Signal(signed(E + 1))  # ea - eb
        m.d.comb += d.eq(a.e - b.e)
        # ADD: the operand with the larger exponent ("big") goes to bb, the other one to lo; a zero
        # operand is always the small one. The command loads lo = ma, bb = mb, ex = ea and registers
        # ea - eb; the next cycle (ADD_PREP) swaps them if a is the small one and loads the alignment
        # distance, so the exponent compare is not in the command's cycle.
        add_a_zero, add_b_zero = ~lo[W - 1], ~bb[W - 1]
        swap = Signal()  # a is the small operand
        m.d.comb += swap.eq(add_a_zero | (~add_b_zero & dd[-1]))
        # Alignment distance min(|d|, 24) without a full-width negation: v = |d| - neg (one's complement).
        neg = dd[-1]
        v = Signal(unsigned(E + 1))
        m.d.comb += v.eq(Mux(neg, ~dd, dd))
        far = Signal()  # |d| >= 24, i.e. v >= 24, or v >= 23 for negative d
        m.d.comb += far.eq(v[5:].any() | (v[4] & (v[3] | (neg & v[:3].all()))))
        near = Signal(5)
        m.d.comb += near.eq(v[:5] + neg)
        align = Signal(range(W + 1))
        m.d.comb += align.eq(Mux(add_a_zero | add_b_zero, 0, Mux(far, W, near)))

        pick_a = Signal()    # lo loads a.m and bb loads b.m (else the other way round)
        lo_zero = Signal()   # lo loads zero instead
        bb_shift = Signal()  # bb loads its operand shifted left by one (SQRT, odd exponent)
        hi_zero = Signal()   # hi loads zero instead of a.m
        cnt_load = Signal.like(cnt)
        # Exponents: one adder for ea + eb, ea + k and ~ea - 7 = -(ea + 8); the constant offsets of MUL,
        # DIV and SQRT are added by the exponent step of their last cycle. Every input of the exponent
        # register is at most one carry chain deep.
        is_scale, is_tomult = cmd.op == Op.SCALE_POW2, cmd.op == Op.TO_MULT
        ex_sum = Signal(signed(XW))
        m.d.comb += ex_sum.eq(Mux(is_tomult, ~a.e, a.e) + Mux(is_scale, cmd.k, Mux(is_tomult, -7, b.e)))
        ex_load = Signal(signed(XW))
        with m.Switch(cmd.op):
            with m.Case(Op.MUL):  # lo: 0, hi: ma, bb: mb; ex: ea + eb (+ 24 after the last step)
                m.d.comb += [lo_zero.eq(1), pick_a.eq(1), ex_load.eq(ex_sum), cnt_load.eq(W - 1)]
            with m.Case(Op.DIV):  # lo: 0, hi: ma, bb: mb; ex: ea - eb (- 24 after the last step)
                m.d.comb += [lo_zero.eq(1), pick_a.eq(1), ex_load.eq(d), cnt_load.eq(W)]
            with m.Case(Op.SQRT):  # lo, hi: 0; bb: m << (e & 1); ex: (e - (e & 1)) / 2 (- 12 at the end)
                m.d.comb += [lo_zero.eq(1), hi_zero.eq(1), bb_shift.eq(a.e[0]), ex_load.eq(a.e >> 1),
                             cnt_load.eq(W)]
            with m.Case(Op.ADD):  # lo: ma, bb: mb, ex: ea (ADD_PREP: lo small, bb big, ex big exponent)
                m.d.comb += [pick_a.eq(1), ex_load.eq(a.e)]
            with m.Case(Op.SCALE_POW2):
                m.d.comb += [pick_a.eq(1), ex_load.eq(ex_sum)]
            with m.Case(Op.TO_MULT):
                m.d.comb += ex_load.eq(ex_sum)
            with m.Case(Op.FROM_INT):  # {lo, hi} = i; ex = 24; at most 48 normalisation steps
                m.d.comb += [ex_load.eq(W), cnt_load.eq(2 * W)]
            with m.Default():
                m.d.comb += lo_zero.eq(1)
        lo_load = Signal.like(lo)
        hi_load = Signal.like(hi)
        bb_load = Signal.like(bb)
        bb_op = Signal(W)
        m.d.comb += bb_op.eq(Mux(pick_a, b.m, a.m))
        with m.Switch(cmd.op):
            with m.Case(Op.FROM_INT):
                m.d.comb += [lo_load.eq(cmd.i[W:]), hi_load.eq(cmd.i[:W])]
            with m.Case(Op.TO_MULT):
                m.d.comb += lo_load.eq(a.m >> 8)
            with m.Default():
                m.d.comb += [lo_load.eq(Mux(lo_zero, 0, Mux(pick_a, a.m, b.m))),
                             hi_load.eq(Mux(hi_zero, 0, a.m))]
        m.d.comb += bb_load.eq(Mux(bb_shift, bb_op << 1, bb_op))

        # -- shared arithmetic --------------------------------------------------------------------------
        # Adder (MUL partial products, ADD); with the gate off, s[1:] is lo >> 1.
        # The gate is on in MUL (by hi[0]) and in ALIGN's last step; which of the two states the unit is in
        # comes from flags set and cleared with the state moves, not from the state's decode (the decode
        # and the gate were two LUT levels and two long routes ahead of the adder's carry chain: 11.41 ns
        # routed on the ECP5 shell at 9887928, the fused LINEAR core's NormQuant).
        gate = Signal()
        in_mul = Signal()
        in_align = Signal()
        m.d.comb += gate.eq((in_mul & hi[0]) | (in_align & cnt_z))
        s = Signal(W + 2)
        m.d.comb += s.eq(lo + Mux(gate, bb[:W], 0))
        # Subtractor (DIV, SQRT): x is the shifted remainder, y the divisor or trial root.
        #   DIV: x = r << 1, y = 2 * mb: restoring division of ma << 25 by 2 mb, starting from r = ma.
        #   SQRT: x = (r << 2) | next two radicand bits, y = (root << 2) | 1.
        # With use_sqrt low, x is also the left shift of hi for the wide normalisation. use_sqrt is a
        # flip-flop loaded with the command (the op is SQRT), not the SQRT state's decode: the decode ahead
        # of x and y, the subtractor's 27-bit carry chain and the mux by its sign into hi and lo were
        # 13.59 ns routed on the ECP5 shell at 6c79f98 (the LINEAR unit's scalar unit).
        use_sqrt = Signal()
        x = Signal(W + 3)
        y = Signal(W + 3)
        diff = Signal(signed(W + 4))
        ge = Signal()
        m.d.comb += [
            x.eq(Mux(use_sqrt, Cat(bb[W:W + 2], hi[:W + 1]), Cat(Const(0, 1), hi[:W + 2]))),
            y.eq(Mux(use_sqrt, Cat(Const(1, 2), lo), Cat(Const(0, 1), bb[:W]))),
            diff.eq(x - y),
            ge.eq(~diff[-1]),
        ]
        # lo shifted left, with the next quotient/root bit (DIV, SQRT) or hi's top bit (normalisation).
        lo_in = Signal()
        lo_shl = Signal.like(lo)
        m.d.comb += lo_shl.eq(Cat(lo_in, lo[:W]))
        # Exponent step: -1 per normalisation shift, +1 for a carry out, +24 after a product.
        ex_add = Signal(signed(6))
        ex_step = Signal(signed(XW))
        m.d.comb += ex_step.eq(ex + ex_add)

        with m.FSM(name="state"):
            def accept():
                """The command's decode: load the working registers and go to the op's first state."""
                m.d.sync += [lo.eq(lo_load), hi.eq(hi_load), bb.eq(bb_load), ex.eq(ex_load),
                             cnt.eq(cnt_load), cnt_z.eq(cnt_load == 0), dz.eq(0), nz.eq(0),
                             dd.eq(d), eb.eq(b.e), use_sqrt.eq(cmd.op == Op.SQRT),
                             in_mul.eq((cmd.op == Op.MUL) if self.multiplier == "serial" else 0)]
                with m.Switch(cmd.op):
                    with m.Case(Op.MUL):
                        m.next = "MUL" if self.multiplier == "serial" else "MUL_DSP"
                    with m.Case(Op.DIV):
                        with m.If(b_zero):
                            m.d.sync += dz.eq(1)
                            m.next = "DONE"
                        with m.Else():
                            m.next = "DIV"
                    with m.Case(Op.SQRT):
                        m.next = "SQRT"
                    with m.Case(Op.ADD):
                        m.next = "ADD_PREP"
                    with m.Case(Op.FROM_INT):
                        m.next = "WIDE"
                    with m.Case(Op.SCALE_POW2, Op.TO_MULT):
                        m.d.sync += nz.eq(~a_zero)
                        m.next = "DONE"
                    with m.Default():  # undefined encoding: zero
                        m.next = "DONE"

            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                if self.cmd_register:
                    with m.If(self.cmd.valid):
                        m.d.sync += cmd.eq(self.cmd.payload)
                        m.next = "LOAD"
                else:
                    with m.If(self.cmd.valid):
                        accept()
            if self.cmd_register:
                with m.State("LOAD"):
                    accept()

            with m.State("MUL"):
                # {lo, hi[0:24]} = ({lo + (hi[0] ? mb : 0)}, hi[0:24]) >> 1
                m.d.sync += [lo.eq(s[1:]), hi.eq(Cat(hi[1:W], s[0])), cnt.eq(cnt - 1), cnt_z.eq(cnt == 1)]
                with m.If(cnt_z):
                    m.d.comb += ex_add.eq(W)
                    m.d.sync += [ex.eq(ex_step), cnt.eq(1), cnt_z.eq(0),   # a nonzero product needs <= 1 shift
                                 in_mul.eq(0)]
                    m.next = "WIDE"

            if self.multiplier == "dsp":
                with m.State("MUL_DSP"):
                    p = Signal(2 * W)
                    m.d.comb += [p.eq(hi[:W] * bb[:W]), ex_add.eq(W)]
                    m.d.sync += [lo.eq(p[W:]), hi.eq(p[:W]), ex.eq(ex_step), cnt.eq(1), cnt_z.eq(0)]
                    m.next = "WIDE"

            for name in ("DIV", "SQRT"):
                with m.State(name):
                    m.d.comb += lo_in.eq(ge)
                    m.d.sync += [hi.eq(Mux(ge, diff, x)), lo.eq(lo_shl), cnt.eq(cnt - 1), cnt_z.eq(cnt == 1)]
                    if name == "SQRT":
                        m.d.sync += bb.eq(bb << 2)
                    with m.If(cnt_z):
                        m.d.comb += ex_add.eq(-W if name == "DIV" else -(W // 2))
                        m.d.sync += ex.eq(ex_step)
                        m.next = "NARROW"

            with m.State("ADD_PREP"):
                with m.If(~swap):
                    m.d.sync += [lo.eq(bb[:W]), bb.eq(lo[:W])]
                with m.Else():
                    m.d.sync += ex.eq(eb)
                m.d.sync += [cnt.eq(align), cnt_z.eq(add_a_zero | add_b_zero | (dd == 0)),   # align == 0
                             in_align.eq(1)]
                m.next = "ALIGN"

            with m.State("ALIGN"):
                with m.If(cnt_z):
                    m.d.sync += [lo.eq(s), in_align.eq(0)]
                    m.next = "NARROW"
                with m.Else():
                    m.d.sync += [lo.eq(s[1:]), cnt.eq(cnt - 1), cnt_z.eq(cnt == 1)]

            with m.State("NARROW"):
                # A 24- or 25-bit result in lo (or zero): drop the carry bit.
                m.d.comb += ex_add.eq(1)
                m.d.sync += nz.eq(lo[W - 1:].any())
                with m.If(lo[W]):
                    m.d.sync += [lo.eq(s[1:]), ex.eq(ex_step)]
                m.next = "DONE"

            with m.State("WIDE"):
                # A 48-bit value in {lo[0:24], hi[0:24]}: shift left until bit 47 is set, or cnt steps.
                with m.If(lo[W - 1] | cnt_z):
                    m.d.sync += nz.eq(lo[W - 1])
                    m.next = "DONE"
                with m.Else():
                    m.d.comb += [lo_in.eq(hi[W - 1]), ex_add.eq(-1)]
                    m.d.sync += [lo.eq(lo_shl), hi.eq(x), ex.eq(ex_step), cnt.eq(cnt - 1), cnt_z.eq(cnt == 1)]

            with m.State("DONE"):
                m.d.comb += self.res.valid.eq(1)
                with m.If(self.res.ready):
                    m.next = "IDLE"

        return m
