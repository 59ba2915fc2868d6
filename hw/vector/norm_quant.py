"""RMSNorm fused with per-token absmax int8 quantisation: the prologue of every linear layer.

:class:`NormQuant` is bit-exact with :func:`golden.numerics.norm_quant` (``docs/numerics.md``, section
"RMSNorm fused with int8 quantisation").

Interface (one vector at a time)
--------------------------------
``cfg`` (one transfer per vector, accepted only while idle)
    ``n`` (1 <= n <= max_n), ``sx`` (the vector's SFloat scale), ``shift`` (the gain's power-of-two
    exponent, signed 8 bits) and ``eps`` (SFloat). All must be normalised SFloats (as ``golden``'s are).
``i`` (``ceil(n / lanes)`` beats after ``cfg``)
    ``x``: ``lanes`` signed ``x_bits``-bit elements (:func:`~hw.vector.epilogue.vector_layout`), ``g``:
    the matching ``lanes`` int16 gain values (``NormGain.q``). The gain travels on the same beats as
    ``x`` (a producer that holds the gain in a memory reads it alongside); both are stored on chip.
    Lanes of the last beat beyond ``n`` are ignored.
``o`` (``ceil(n / lanes)`` beats)
    ``q``: ``lanes`` int8 values in [-127, 127] (lanes beyond ``n`` in the last beat are 0), ``last``
    on the vector's last beat.
``s`` (one transfer per vector)
    ``sq``, the output SFloat scale (a zero scale has ``m = 0, e = 0``), and ``overflow`` (some scalar-unit
    result's exponent did not fit ``e_bits``; never happens for the model's ranges).

Input width: ``x_bits`` (default 63) signed bits, so ``|x| <= 2^62`` — the golden model's int64 range
(``|x| < 2^62``). Smaller ``x_bits`` (at least 24) shrink the buffer and the shifters.

Passes
------
1. LOAD: ``i`` at one beat per cycle; each beat is written to the buffer (one memory word per beat:
   ``lanes * (x_bits + 16)`` bits) and the OR of ``|x|`` over all elements is accumulated;
   ``b = bitlen(mx) = bitlen(OR |x|)`` (two cycles after the last beat: from registered per-byte flags,
   not a 63-bit priority encoder in one cycle).
2. PASS2: the buffer is read at one beat per cycle through a lock-step pipeline: per lane
   ``xs = ((x << 23) >> b)[0:24] = shift_floor(x, b - 23)`` (the read word registered, then one barrel
   shifter, arithmetic right shift, over two stages), ``xt = xs >> 8 = shift_floor(x, b - 15)`` (nested
   floors compose), ``v = xs * g`` (40-bit signed: two registered 18-bit products summed in a stage of
   their own), ``xt^2``; a lane adder tree accumulates ``ss`` and a
   lane max tree ``mv = max|v|``, both registered (``|v|``, then one max level per stage).
3. SCALAR: ``bv = bitlen(mv)``, ``mvn = ((mv << 16) >> bv) = shift_floor(mv, bv - 16)``, and
   ``R = floor(127 * 2^24 / mvn)`` by a 16-step restoring divider (R < 2^16). At the same time the
   internal :class:`~hw.vector.scalar_unit.ScalarUnit` sequencer starts (see below); it runs in parallel
   with pass 3.
4. PASS3: the same pipeline recomputes ``v`` and continues: ``vn = ((v << 16) >> bv)`` (17-bit signed,
   ``= shift_floor(v, ev)``), ``p = vn * R``, ``xq = clamp((p + 2^23) >> 24, -127, 127)`` into ``o``;
   ``o`` is an output FIFO (:func:`~hw.vector.epilogue.output_fifo`) that pass 3 issues into only while
   it has room for every beat in flight: the pipeline itself never stalls (no clock enables).
5. The unit is idle again when the last beat has entered the output FIFO and the ``s`` transfer has been
   taken.

``mv == 0`` (all-zero ``x`` or zero gain) gives ``R = 0`` so ``xq = 0``, and ``num = 0`` so
``sq = 0`` (the scalar unit's DIV of zero, or its divide-by-zero result when ``eps = 0``).

Scalar sequence (the golden order; ``t1``, ``t2`` are registers, ``C127 = from_int(127)`` a constant)::

    t1 = FROM_INT(ss); t1 = SCALE_POW2(t1, 2 (b - 15)); t2 = MUL(sx, sx); t1 = MUL(t1, t2)
    t2 = FROM_INT(n);  t1 = DIV(t1, t2);  t1 = ADD(t1, eps); t1 = SQRT(t1); t1 = MUL(t1, C127)
    t2 = FROM_INT(mv); t2 = SCALE_POW2(t2, b - 23 - shift); t2 = MUL(t2, sx); sq = DIV(t2, t1)

(``a.mul(b)`` is symmetric, so operand order is immaterial.) About 380 cycles with the serial
multiplier, independent of ``lanes``.

Timing (``B = ceil(n / lanes)`` beats, no stalls): LOAD ``B``, bitlen 3, PASS2 ``B`` plus a
``8 + ceil(log2 lanes)``-cycle drain (the pipeline and the registered reduction trees), bitlen(mv) and
``mvn`` 3, divider 16, then PASS3 (``B`` plus a 9-cycle drain) in parallel with the scalar sequence
(``S`` ~ 290 cycles, data dependent: FROM_INT takes ``51 - bitlen``, ADD ``5 + |ea - eb|``). From the
``cfg`` transfer to the later of the last ``o`` beat and ``s``::

    cycles = 2 B + 32 + ceil(log2 lanes) + max(B + 9, S)          (:meth:`NormQuant.cycles_model`)

Measured in the Amaranth simulator (:func:`firmware.bench_vector.measure_norm_quant`): lanes 1,
n = 320: 1001; lanes 4, n = 1280: 1003, n = 2560: 1963 (the timing pipeline's stages and registered
bit lengths cost 8 to 16 cycles per vector). At lanes 16 and ``n = 1536`` (``B = 96``) the model gives
``192 + 36 + 290 = 518`` cycles, against 1824 cycles of the TLMM engine for the following 1536 x 1536
linear layer (T = 28, N = 16); the scalar sequence dominates there (a DSP multiplier,
``multiplier="dsp"``, saves ~90 cycles).

Cost (Yosys 0.70 ``synth_ecp5``, ``NormQuant(4, 2560)``, default ``x_bits = 63``, serial scalar unit):
LUT4 4485, CCU2C 526 (LUT4-eq 5537), FF 1151, MULT18X18D 16 (4 per lane: ``xs * g`` 2, ``xt^2`` 1,
``vn * R`` 1), DP16KD 18 (the 640 x 316-bit buffer). Most LUTs are the per-lane 86-bit barrel shifter
``(x << 23) >> b`` and the 40-bit ``(v << 16) >> bv`` shifter; ``x_bits = 48`` shrinks both and the
buffer (256 bits per word).
"""

from functools import reduce

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.sfloat import SFloat

from ..arith.dsp import registered_product
from .epilogue import Dequant, lane, output_fifo, vector_layout
from .scalar_unit import E_BITS, INT_BITS, Op, ScalarUnit, sfloat_layout
from ..params import check_int

__all__ = ["NormQuant", "norm_cfg_layout", "norm_in_layout", "norm_out_layout", "norm_scale_layout",
           "GAIN_SHIFT_BITS"]

#: Width of the signed ``shift`` (gain exponent) field of ``cfg``.
GAIN_SHIFT_BITS = 8
_G_BITS = 16
_XS_BITS = 24   # |xs| < 2^23
_XT_BITS = 16   # |xt| < 2^15
_V_BITS = 40    # v = xs * g, |v| <= 2^38
_VN_BITS = 17   # vn in [-2^16, 2^16)
_R_BITS = 16    # R = floor(127 * 2^24 / mvn) <= 65024
#: Pipeline stages from a pass's read of the buffer to the output FIFO: A, A2, B1, B, C, C2, D, E, O.
_STAGES = 9


def norm_cfg_layout(max_n, e_bits=E_BITS):
    return data.StructLayout({
        "n": unsigned(max(1, int(max_n).bit_length())),
        "sx": sfloat_layout(e_bits),
        "shift": signed(GAIN_SHIFT_BITS),
        "eps": sfloat_layout(e_bits),
    })


def norm_in_layout(lanes, x_bits=63):
    return data.StructLayout({"x": vector_layout(lanes, x_bits), "g": vector_layout(lanes, _G_BITS)})


def norm_out_layout(lanes):
    return data.StructLayout({"q": vector_layout(lanes, 8), "last": 1})


def norm_scale_layout(e_bits=E_BITS):
    return data.StructLayout({"sq": sfloat_layout(e_bits), "overflow": 1})


def _bitlen_registered(m, value, name, group=8):
    """Bit length of an unsigned value in two cycles: each ``group``-bit slice's "any bit set" flag and
    bit length (offset by the slice's position, 0 if the slice is zero) are registered every cycle,
    then a tree of 2:1 multiplexers picks the highest non-zero slice's. The result is valid two cycles
    after ``value`` settles. (A 63-bit priority encoder in one cycle is about 20 LUT levels.)"""
    nodes = []
    for g in range(-(-len(value) // group)):
        piece = value[group * g:group * (g + 1)]
        bl = Signal(range(len(value) + 1), name=f"{name}_bl{g}")
        for k in range(len(piece)):
            with m.If(piece[k]):
                m.d.comb += bl.eq(group * g + k + 1)
        nz_r = Signal(name=f"{name}_nz{g}")
        bl_r = Signal.like(bl, name=f"{name}_bl{g}_r")
        m.d.sync += [nz_r.eq(piece.any()), bl_r.eq(bl)]
        nodes.append((nz_r, bl_r))
    while len(nodes) > 1:
        nxt = [(lo[0] | hi[0], Mux(hi[0], hi[1], lo[1])) for lo, hi in zip(nodes[0::2], nodes[1::2])]
        if len(nodes) % 2:
            nxt.append(nodes[-1])
        nodes = nxt
    out = Signal(range(len(value) + 1), name=name)
    m.d.comb += out.eq(nodes[0][1])
    return out


def _tree(m, values, op, name):
    """Balanced reduction tree with every node a named signal.

    A Python ``reduce`` of an expression that uses its operand twice (``Mux(p > q, p, q)``) nests copies:
    2^lanes expression nodes, which Verilator then has to compile. Named nodes keep it linear.
    """
    level = 0
    while len(values) > 1:
        nxt = []
        for i in range(0, len(values) - 1, 2):
            node = op(values[i], values[i + 1])
            sig = Signal(node.shape(), name=f"{name}_{level}_{i // 2}")
            m.d.comb += sig.eq(node)
            nxt.append(sig)
        if len(values) % 2:
            nxt.append(values[-1])
        values, level = nxt, level + 1
    return values[0]


class NormQuant(wiring.Component):
    """Fused RMSNorm + int8 quantiser (see the module docstring).

    Parameters
    ----------
    lanes : int
        Elements per beat, 1 to 64.
    max_n : int
        Largest vector length (sets the on-chip buffer: ``ceil(max_n / lanes)`` words).
    x_bits : int
        Signed input width, 24 to 63.
    e_bits : int
        SFloat exponent width of ``cfg``, ``s`` and the internal scalar unit.
    multiplier : {"serial", "dsp"}
        Scalar-unit multiplier.
    """

    def __init__(self, lanes, max_n, *, x_bits=63, e_bits=E_BITS, multiplier="serial"):
        check_int("lanes", lanes, 1, 64)
        if not isinstance(max_n, int) or isinstance(max_n, bool) or not 1 <= max_n or max_n * (1 << 30) >= 1 << INT_BITS:
            raise ValueError(f"max_n must be an integer in [1, 2^18), got {max_n!r}")
        if not isinstance(x_bits, int) or not 24 <= x_bits <= 63:
            raise ValueError(f"x_bits must be in [24, 63], got {x_bits!r}")
        self.lanes, self.max_n, self.x_bits, self.e_bits = lanes, max_n, x_bits, e_bits
        self.multiplier = multiplier
        self.depth = -(-max_n // lanes)
        super().__init__({
            "cfg": In(stream.Signature(norm_cfg_layout(max_n, e_bits))),
            "i": In(stream.Signature(norm_in_layout(lanes, x_bits))),
            "o": Out(stream.Signature(norm_out_layout(lanes))),
            "s": Out(stream.Signature(norm_scale_layout(e_bits))),
        })

    def cycles_model(self, n, scalar=290):
        """Cycles per vector (``cfg`` transfer to the later of the last ``o`` and the ``s`` transfer) with
        no stalls: ``2 B + 32 + ceil(log2 lanes) + max(B + 9, scalar)``, ``B = ceil(n / lanes)``;
        ``scalar`` (the data-dependent scalar-unit sequence, about 280 to 310 cycles) is a typical value."""
        beats = -(-n // self.lanes)
        return 2 * beats + 32 + (self.lanes - 1).bit_length() + max(beats + 9, scalar)

    def elaborate(self, platform):
        m = Module()
        L, XB, E = self.lanes, self.x_bits, self.e_bits
        m.submodules.su = su = ScalarUnit(e_bits=E, multiplier=self.multiplier, cmd_register=True)

        # -- per-vector registers ----------------------------------------------------------------------
        n = Signal.like(self.cfg.payload.n)
        sx = Signal(sfloat_layout(E))
        eps = Signal(sfloat_layout(E))
        gshift = Signal(signed(GAIN_SHIFT_BITS))
        orx = Signal(XB)                 # OR of |x|
        b = Signal(range(XB + 1))        # bitlen(max|x|)
        ss = Signal(INT_BITS)
        mv = Signal(_V_BITS - 1)
        bv = Signal(range(_V_BITS))      # bitlen(mv)
        recip = Signal(_R_BITS)
        rem = Signal(31)
        dstep = Signal(range(_R_BITS + 1))
        dv = Signal(31)                  # mvn << (step - 1)

        # -- buffer ------------------------------------------------------------------------------------
        in_layout = norm_in_layout(L, XB)
        m.submodules.mem = mem = memory.Memory(shape=unsigned(in_layout.size), depth=self.depth, init=[])
        wr = mem.write_port()
        rd = mem.read_port(domain="sync")
        addr = Signal(range(self.depth + 1))
        left = Signal(range(self.max_n + L + 1))  # elements not yet loaded / issued, incl. this beat
        # `left <= L` (this is the last beat), registered with `left` wherever it is set: the compare's
        # carry chain, then the state machine's next-state logic, into the state register's enable were
        # 17.2 ns placed paths on the ECP5 shell (the LINEAR core's prologue).
        left_last = Signal(init=1)             # as left = 0
        # Which lanes of the beat are below n (`l < left`), registered the same way: the compares were
        # a carry chain ahead of each lane's |x| and its OR (11.7 ns placed in a trial build). Lane 0's
        # flag is `left != 0`.
        live = Signal(L)

        def set_left(value):
            m.d.sync += [left.eq(value), left_last.eq(value <= L), live.eq(Cat(*(value > l for l in range(L))))]

        ipay = self.i.payload
        m.d.comb += [wr.addr.eq(addr), wr.data.eq(ipay.as_value())]
        absx = []
        for l in range(L):
            x = lane(ipay.x, l)
            a = Signal(XB, name=f"absx{l}")
            m.d.comb += a.eq(Mux((x < 0) & live[l], -x, Mux(live[l], x, 0)))
            absx.append(a)
        # The beat's OR of |x| is registered before it joins orx (the |x| carry chains and the OR are a
        # cycle of their own); b is then formed in two more cycles (BITLEN00, BITLEN0).
        or_beat = Signal(XB, name="or_beat")
        m.d.sync += [or_beat.eq(Mux(self.i.valid & self.i.ready, reduce(lambda p, q: p | q, absx), 0)),
                     orx.eq(orx | or_beat)]
        b_comb = _bitlen_registered(m, orx, "b_comb")

        # -- pass 2 / 3 pipeline -----------------------------------------------------------------------
        pass3 = Signal()
        # Free-running: the stages load on every clock edge (no clock enables); pass 3's beats land in an
        # output FIFO (hw.vector.epilogue.output_fifo) that admits a beat only while it has room for every
        # beat in flight, so `o`'s backpressure never reaches the stages.
        room = Signal(init=1)
        issuing = Signal()
        vA, vA2, vB1, vB, vC, vC2, vD, vE, oV = (Signal(name=f"valid_{s}")
                                                 for s in ("A", "A2", "B1", "B", "C", "C2", "D", "E", "O"))
        liveA = Signal.like(live)
        lastA, lastA2, lastB1, lastB, lastC, lastC2, lastD, lastE = (
            Signal(name=f"last_{s}") for s in ("A", "A2", "B1", "B", "C", "C2", "D", "E"))
        m.d.comb += rd.addr.eq(addr)
        rview = data.View(in_layout, rd.data)

        xsB = [Signal(signed(_XS_BITS), name=f"xs{l}") for l in range(L)]
        gB = [Signal(signed(_G_BITS), name=f"g{l}") for l in range(L)]
        tC = []                          # xt^2 per lane (stage C)
        vCs = [Signal(signed(_V_BITS), name=f"v{l}") for l in range(L)]
        vnD = [Signal(signed(_VN_BITS), name=f"vn{l}") for l in range(L)]
        oq = Signal(norm_out_layout(L), reset_less=True)

        m.d.sync += [vA.eq(issuing), vA2.eq(vA), vB1.eq(vA2), vB.eq(vB1), vC.eq(vB), vC2.eq(vC),
                     vD.eq(vC2 & pass3), vE.eq(vD), oV.eq(vE),
                     lastA.eq(issuing & left_last), lastA2.eq(lastA), lastB1.eq(lastA2), lastB.eq(lastB1),
                     lastC.eq(lastB), lastC2.eq(lastC), lastD.eq(lastC2), lastE.eq(lastD), oq.last.eq(lastE)]
        with m.If(issuing):
            m.d.sync += liveA.eq(live)
        # The beat's live lanes, a stage later: lanes past n are zeroed on the way into B1.
        liveA2 = Signal.like(liveA, reset_less=True)
        m.d.sync += liveA2.eq(liveA)
        for l in range(L):
            # A2: the buffer word registered as it is (plain flip-flops, which the ECP5 build moves into
            # the block RAM's output register: hw.bram_output_registers); B1, B: lanes past n zeroed and the
            # shift by b in two halves (8, 16, 32, then 1, 2, 4), so no stage holds a block-RAM read or
            # six mux levels.
            xA2 = Signal(signed(XB), name=f"xa{l}", reset_less=True)
            gA2 = Signal(signed(_G_BITS), name=f"ga{l}", reset_less=True)
            xA2_live = Mux(liveA2[l], xA2, 0)
            coarse = Dequant._shift_window(Cat(Const(0, 23), xA2_live).as_signed(), b[3:], 3, _XS_BITS + 7)
            xB1 = Signal(signed(_XS_BITS + 7), name=f"xc{l}")
            gB1 = Signal(signed(_G_BITS), name=f"gc{l}")
            m.d.sync += [xA2.eq(lane(rview.x, l)), gA2.eq(lane(rview.g, l)),
                         xB1.eq(coarse), gB1.eq(gA2),
                         xsB[l].eq(Dequant._shift_window(xB1, b[:3], 0, _XS_BITS)), gB[l].eq(gB1)]
            # C: every product is registered in its multiplier block (hw.arith.dsp), nothing after it in
            # the stage. xs (24 bits) is wider than a block: v = (xs_hi * g) << 17 + xs_lo * g, the two
            # pieces summed in stage C2.
            xt = xsB[l][8:].as_signed()
            tC.append(registered_product(m, f"xt2_{l}", xt, xt, platform=platform)[:2 * _XT_BITS - 1])
            v_lo = registered_product(m, f"v_lo{l}", xsB[l][:17], gB[l], platform=platform)
            v_hi = registered_product(m, f"v_hi{l}", xsB[l][17:].as_signed(), gB[l], platform=platform)
            vw = Signal(signed(_V_BITS + 16), name=f"vw{l}")
            m.d.comb += vw.eq(Cat(Const(0, 16), vCs[l]).as_signed() >> bv)
            m.d.sync += [vCs[l].eq((v_hi << 17) + v_lo), vnD[l].eq(vw[:_VN_BITS])]
            pE = registered_product(m, f"p{l}", vnD[l], recip, platform=platform)
            r = Signal(signed(len(pE) - 24 + 1), name=f"r{l}")
            m.d.comb += r.eq((pE + (1 << 23)) >> 24)
            m.d.sync += lane(oq.q, l).eq(Mux(r > 127, 127, Mux(r < -127, -127, r)))

        # pass-2 reductions, pipelined (pass 2 never stalls: nothing goes to `o`): the beat's sum of
        # squares after stage C, then the running sum; |v| after stage C2, then one max level per stage,
        # then the running max.
        rv = Signal(name="ss_valid")
        m.d.sync += rv.eq(vC & ~pass3)
        rvm = Signal(name="red_valid_0")
        m.d.sync += rvm.eq(vC2 & ~pass3)
        red_valids = [rvm]
        absv = []
        for l in range(L):
            a = Signal(_V_BITS - 1, name=f"absv{l}")
            m.d.sync += a.eq(Mux(vCs[l] < 0, -vCs[l], vCs[l]))
            absv.append(a)
        beat_ss = Signal(INT_BITS, name="beat_ss")
        m.d.sync += beat_ss.eq(_tree(m, tC, lambda p, q: p + q, "beat_ss"))
        with m.If(rv):
            m.d.sync += ss.eq(ss + beat_ss)
        level = 0
        while len(absv) > 1:
            nxt = []
            for i in range(0, len(absv) - 1, 2):
                p, q = absv[i], absv[i + 1]
                r = Signal(_V_BITS - 1, name=f"beat_max_{level}_{i // 2}")
                m.d.sync += r.eq(Mux(p > q, p, q))
                nxt.append(r)
            if len(absv) % 2:
                r = Signal(_V_BITS - 1, name=f"beat_max_{level}_{len(absv) // 2}")
                m.d.sync += r.eq(absv[-1])
                nxt.append(r)
            absv, level = nxt, level + 1
            rv_n = Signal(name=f"red_valid_{level}")
            m.d.sync += rv_n.eq(red_valids[-1])
            red_valids.append(rv_n)
        with m.If(red_valids[-1]):
            m.d.sync += mv.eq(Mux(absv[0] > mv, absv[0], mv))

        # A read of `o` is counted back a cycle later (`back=1`, one FIFO entry more): the consumer's
        # ready (the fused core's gearbox, across the die) went into `room`'s count adder (10.84 ns placed
        # on the ECP5 shell at 956eb7e).
        output_fifo(m, room, issuing & pass3, oV, oq, self.o, _STAGES, back=1)
        drained = ~(vA | vA2 | vB1 | vB | vC | vC2 | vD | vE | oV | rv | Cat(*red_valids).any())

        # -- scalar-unit sequencer ---------------------------------------------------------------------
        seq_start = Signal()
        seq_busy = Signal()
        t1 = Signal(sfloat_layout(E))
        t2 = Signal(sfloat_layout(E))
        ovf = Signal()
        c127 = SFloat.from_int(127)
        C127 = Const({"m": int(c127.m), "e": int(c127.e)}, sfloat_layout(E))
        e16 = Signal(signed(9))
        m.d.comb += e16.eq(b - 15)
        # The scale exponents are registered (b and the shift settle long before the sequence starts): as
        # sums formed from `b` they ran into the scalar unit's command register, placed away from `b`
        # (11.44 ns placed on the ECP5 shell at 844f344).
        k_ss = Signal(signed(E))
        k_mv = Signal(signed(E))
        m.d.sync += [k_ss.eq(e16 * 2), k_mv.eq(b - 23 - gshift)]
        steps = [  # (op, a, b, k, i, dst)
            (Op.FROM_INT, None, None, None, ss, t1),
            (Op.SCALE_POW2, t1, None, k_ss, None, t1),
            (Op.MUL, sx, sx, None, None, t2),
            (Op.MUL, t1, t2, None, None, t1),
            (Op.FROM_INT, None, None, None, n, t2),
            (Op.DIV, t1, t2, None, None, t1),
            (Op.ADD, t1, eps, None, None, t1),
            (Op.SQRT, t1, None, None, None, t1),
            (Op.MUL, t1, C127, None, None, t1),
            (Op.FROM_INT, None, None, None, mv, t2),
            (Op.SCALE_POW2, t2, None, k_mv, None, t2),
            (Op.MUL, t2, sx, None, None, t2),
            (Op.DIV, t2, t1, None, None, t2),
        ]
        cmd = su.cmd.payload
        m.d.comb += self.s.payload.sq.eq(t2)
        m.d.comb += self.s.payload.overflow.eq(ovf)
        with m.FSM(name="seq"):
            with m.State("IDLE"):
                with m.If(seq_start):
                    m.d.sync += [seq_busy.eq(1), ovf.eq(0)]
                    m.next = "I0"
            for k, (op, sa, sb, sk, si, dst) in enumerate(steps):
                with m.State(f"I{k}"):
                    m.d.comb += [su.cmd.valid.eq(1), cmd.op.eq(op)]
                    if sa is not None:
                        m.d.comb += cmd.a.eq(sa)
                    if sb is not None:
                        m.d.comb += cmd.b.eq(sb)
                    if sk is not None:
                        m.d.comb += cmd.k.eq(sk)
                    if si is not None:
                        m.d.comb += cmd.i.eq(si)
                    with m.If(su.cmd.ready):
                        m.next = f"W{k}"
                with m.State(f"W{k}"):
                    m.d.comb += su.res.ready.eq(1)
                    with m.If(su.res.valid):
                        m.d.sync += [dst.eq(su.res.payload.value), ovf.eq(ovf | su.res.payload.overflow)]
                        m.next = f"I{k + 1}" if k + 1 < len(steps) else "OUT"
            with m.State("OUT"):
                m.d.comb += self.s.valid.eq(1)
                with m.If(self.s.ready):
                    m.d.sync += seq_busy.eq(0)
                    m.next = "IDLE"

        # -- main control ------------------------------------------------------------------------------
        bv_comb = _bitlen_registered(m, mv, "bv_comb")
        shifted_mv = Signal(_V_BITS + 16)
        m.d.comb += shifted_mv.eq(Cat(Const(0, 16), mv) >> bv)
        # mvn, registered in every cycle (SHIFT waits for it): the 40-bit shifter from `bv`, then `dv`'s
        # zero test, ran into `dv_zero` in one cycle (10.81 ns routed on the ECP5 shell at e8c64fe).
        mvn = Signal(16)
        m.d.sync += mvn.eq(shifted_mv[:16])
        trial = Signal(signed(32))
        m.d.comb += trial.eq(rem - dv)
        # The divider's end tests are flip-flops, set with each step (`dv == 0`, `dstep == 1`): compared in
        # the step, they reached the state register's enables through the trial subtraction's logic (10.66
        # ns placed on the ECP5 shell at 142dbaf).
        dv_zero, dstep_one = Signal(), Signal()

        load_on, pass_on = Signal(), Signal()    # the state is LOAD, PASS
        # The state is IDLE, a flip-flop of its own as well: the state register's decode drove the
        # configuration registers' enables and orx's clear (63 endpoints) through `left_last`'s logic,
        # two 4 ns routes (11.5 ns placed on the ECP5 shell at dfe4cdf, seed 5).
        idle_on = Signal(init=1)
        with m.If(idle_on):
            m.d.comb += self.cfg.ready.eq(1)
            # Loaded in every idle cycle, `valid` or not (the last load is the command taken): the
            # registers' enable is the state alone. With the handshake in it, it ran through the
            # LINEAR core's prologue and the unit's scale stream (12.8 ns placed on the ECP5 shell
            # at 183e789, 144 endpoints).
            c = self.cfg.payload
            m.d.sync += [n.eq(c.n), sx.eq(c.sx), eps.eq(c.eps), gshift.eq(c.shift), addr.eq(0), orx.eq(0)]
            set_left(c.n)
        with m.FSM(name="ctl"):
            with m.State("IDLE"):
                with m.If(self.cfg.valid):
                    m.d.sync += [load_on.eq(1), idle_on.eq(0)]
                    m.next = "LOAD"
            with m.State("LOAD"):
                with m.If(self.i.valid & left_last):
                    m.d.sync += load_on.eq(0)
                    m.next = "BITLEN00"
            with m.State("BITLEN00"):
                m.next = "BITLEN0"             # the last beat's OR joins orx
            with m.State("BITLEN0"):
                m.next = "BITLEN"              # orx's bit length is registered in two steps
            with m.State("BITLEN"):
                m.d.sync += [b.eq(b_comb), addr.eq(0), ss.eq(0), mv.eq(0), pass3.eq(0), pass_on.eq(1)]
                set_left(n)
                m.next = "PASS"
            with m.State("PASS"):
                with m.If(~live[0] & drained):
                    m.d.sync += pass_on.eq(0)
                    m.next = "AFTER"
            with m.State("AFTER"):
                with m.If(pass3):
                    with m.If(~seq_busy):
                        m.d.sync += idle_on.eq(1)
                        m.next = "IDLE"
                with m.Else():
                    m.next = "BV"              # mv's bit length is registered in two steps
            with m.State("BV"):
                m.d.sync += bv.eq(bv_comb)
                m.next = "SHIFT"
            with m.State("SHIFT"):
                m.next = "MVN"                 # mvn is registered from the new bv
            with m.State("MVN"):
                m.d.comb += seq_start.eq(1)
                dv_first = (mvn << (_R_BITS - 1))[:len(dv)]
                m.d.sync += [dv.eq(dv_first), rem.eq(127 << 24), recip.eq(0), dstep.eq(_R_BITS),
                             dv_zero.eq(dv_first == 0), dstep_one.eq(_R_BITS == 1)]
                m.next = "DIVIDE"
            with m.State("DIVIDE"):
                with m.If(dv_zero):
                    m.d.sync += recip.eq(0)
                    m.next = "START3"
                with m.Else():
                    with m.If(trial >= 0):
                        m.d.sync += rem.eq(trial)
                    m.d.sync += [recip.eq(Cat(trial >= 0, recip[:-1])), dstep.eq(dstep - 1), dv.eq(dv >> 1),
                                 dv_zero.eq(dv[1:] == 0), dstep_one.eq(dstep == 2)]
                    with m.If(dstep_one):
                        m.next = "START3"
            with m.State("START3"):
                m.d.sync += [addr.eq(0), pass3.eq(1), pass_on.eq(1)]
                set_left(n)
                m.next = "PASS"

        # The LOAD and PASS states' work, under flip-flops of their own rather than the state register's
        # decode: the decode, with the beat's handshake, went into the input slice's enables, the buffer's
        # write and `left` (13.08 ns placed, the state register 4.9 ns of route from its first gate, at
        # 6c79f98).
        with m.If(load_on):
            m.d.comb += [self.i.ready.eq(1), wr.en.eq(self.i.valid)]
            with m.If(self.i.valid):
                m.d.sync += addr.eq(addr + 1)
                set_left(left - L)
        m.d.comb += issuing.eq(pass_on & live[0] & (room | ~pass3))     # pass 2 sends nothing to `o`
        with m.If(issuing):
            m.d.sync += addr.eq(addr + 1)
            set_left(Mux(left_last, 0, left - L))
        return m
