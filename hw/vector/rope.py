"""Streaming rotary position embedding (RoPE), bit-exact with :func:`golden.numerics.rope_apply`.

One head vector of ``head_dim = d`` Q.16 values streams through as ``d/2`` (lo, hi) pairs: pair ``i``
is element ``i`` (lo) and element ``i + d/2`` (hi) of the head ("rotate half" pairing). Each beat of
the ``pairs`` stream carries ``lanes`` consecutive pairs, so a head vector takes
``beats = ceil(d/2 / lanes)`` beats; lane ``l`` of beat ``b`` is pair ``i = b * lanes + l``.

Beat structure
--------------
* ``first`` marks the first beat of a head vector; it restarts the unit's beat counter. The counter
  also wraps by itself after the last beat, so ``first`` is only needed to resynchronise (a driver
  that sets it on every head vector's first beat is always right).
* ``pos`` is the token position of the beat, sampled on every beat (the driver holds it for the
  whole head vector). It is ``pos_bits`` wide, 16 by default.
* If ``d/2`` is not a multiple of ``lanes``, the last beat is partial: its lanes
  ``l >= d/2 - (beats - 1) * lanes`` are padding. The frequency ROM holds 0 for them, so they rotate
  by angle 0 and come out as ``round_shift(x * 2^14, 14) = x``: the padding passes through
  unchanged, and the consumer ignores it.
* The ``rotated`` stream has the same beat structure (one output beat per input beat, in order),
  with ``first`` and ``last`` flags of the head vector.

Indexed mode (``indexed=True``) is for head vectors whose beats arrive interleaved with other
vectors' beats, as a prefill chunk leaves the TLMM engine (row tile by row tile, every token of the
chunk in turn): each beat then carries its index ``beat`` in the head vector, which selects the
frequencies instead of the counter (``first`` is ignored; the output flags follow ``beat``). With
``tag_bits`` a tag (say, the token slot) rides along with every beat to the output.

Arithmetic (``docs/numerics.md``, "Rotary embeddings")
-------------------------------------------------------
Per lane, exactly as :func:`golden.numerics.rope_cos_sin` and :func:`golden.numerics.rope_apply`:

* ``phase = (pos * F_i) mod 2^32`` with ``F_i`` from a ROM of the constructor's frequency table
  (:func:`golden.numerics.rope_freq_table`, one read per beat, ``lanes`` x 32 bits wide);
* angle index ``idx = ((phase + 2^19) >> 20) mod 4096``, quadrant ``q = idx >> 10``, ``k = idx mod 1024``;
* ``sin`` and ``cos`` magnitudes are ``S[k]`` and ``S[1024 - k]`` (swapped in odd quadrants) from the
  quarter-wave Q1.14 table :func:`golden.numerics.sin_quarter_table`. The table has 1025 entries; the
  ROM keeps the first 1024 (one 1024 x 15 block RAM with two read ports per lane) and
  ``S[1024] = 2^14`` is a constant for ``k = 0``. ``sin`` is negative in quadrants 2, 3 and ``cos``
  in quadrants 1, 2;
* the complex product ``(lo + j hi)(c + j s)`` with three multiplications (Gauss):
  ``k1 = c (lo + hi)``, ``k2 = lo (s - c)``, ``k3 = hi (c + s)``; ``lo * c - hi * s = k1 - k3`` and
  ``hi * c + lo * s = k1 + k2``, exact in integers;
* ``lo' = sat32((k1 - k3 + 2^13) >> 14)``, ``hi' = sat32((k1 + k2 + 2^13) >> 14)`` (round half up).
  For int32 inputs ``|lo*c - hi*s| <= 2^31 * max(|c| + |s|) < 2^46``, so products and sums are kept
  modulo 2^47 (:data:`SUM_BITS`) and the wrapped results are exact.

Pipeline
--------
Free-running: every stage loads on every clock edge (no clock enables), and the beats land in an output
FIFO (:func:`~hw.vector.epilogue.output_fifo`) that admits a beat only while it has room for every beat in
flight, so backpressure never reaches the stages and ``pairs.ready`` is a flip-flop. The unit accepts one
beat (``lanes`` pairs, ``2 lanes`` elements) per cycle while ``rotated`` is read, and presents it
:attr:`RopeUnit.latency` cycles later.

Cost
----
Per lane: two multipliers for the phase (16 x 32 bits, low 32 bits kept) and three for the rotation
(33 x 16 and 2 x 32 x 16), each two MULT18X18D on ECP5 (8 per lane; four real multiplications would
take 10), and one 1024 x 15 ROM with two read ports (one DP16KD). ``synth_ecp5`` of
``RopeUnit(128, lanes, rope_freq_table(128, 10000.0))`` (Yosys 0.70; other theta differ by a few LUT4s):

=====  =====  =====  ======  =====  ====
lanes  LUT4   CCU2C  FF      DSP    BRAM
=====  =====  =====  ======  =====  ====
4      684    780    3046    32     4
16     2044   3120   11608   128    16
=====  =====  =====  ======  =====  ====

About 130 LUT4 + 195 CCU2C + 725 FF per lane; the frequency ROM is LUT4s (``beats`` x ``32 lanes``
bits). The flip-flops are mostly the (lo, hi) values carried while the angle is computed and the
product/sum registers. (Measured before the phase product, the sine ROM read and the rotation products
were each given a stage of their own for timing, latency 8 -> 11: those add the carried values of two
more stages and the partial products, roughly 200 FF per lane.)
"""

import numbers

from amaranth.hdl import Cat, Const, Format, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from golden.numerics import RES_FRAC, ROPE_FRAC, ROPE_PHASE_BITS, ROPE_TABLE_BITS, sin_quarter_table

from ..arith.dsp import registered_product
from ..arith.tree import shift_add
from ..params import check_int
from .epilogue import FIFO_LATENCY, output_fifo

__all__ = ["RopeUnit", "LaneArray", "rope_pairs_layout", "rope_rotated_layout", "rope_load_layout"]

#: Width of the Q.16 residual-stream values rotated by the unit.
VALUE_BITS = 32
#: Quarter-wave table steps (1024): the angle index is ``ROPE_TABLE_BITS`` = 12 bits, 2 of them quadrant.
QUARTER = 1 << (ROPE_TABLE_BITS - 2)
#: Bits of a sin/cos magnitude (0 ..= 2^14).
MAG_BITS = ROPE_FRAC + 1
#: Bits of a signed Q1.14 cos/sin (and of s - c, c + s, whose magnitudes stay below 2^15).
TRIG_BITS = ROPE_FRAC + 2

#: Largest |cos| + |sin| in the table (about 2^14 sqrt 2, at 45 degrees).
MAX_COS_PLUS_SIN = max(int(a) + int(b) for a, b in zip(sin_quarter_table(), sin_quarter_table()[::-1]))
#: Signed width of ``lo*c - hi*s + 2^13`` and ``hi*c + lo*s + 2^13`` for any int32 lo, hi (47).
SUM_BITS = ((1 << (VALUE_BITS - 1)) * MAX_COS_PLUS_SIN + (1 << (ROPE_FRAC - 1))).bit_length() + 1

assert RES_FRAC == 16  # the values are Q.16 int32; the rotation is independent of the fraction


class LaneArray(data.ArrayLayout):
    """``ArrayLayout(signed(32), lanes)`` whose netlist and waveform format is the flat value.

    Amaranth names each element of an array-typed field ``<field>[i]``, the same name Yosys gives to bit
    ``i`` of the field's own wire. Yosys 0.70 ``abc9`` (in ``synth_ecp5``) then fails an assertion
    (``GetSize(conn.first) == GetSize(conn.second)``) when it reconnects such a bit, depending on the
    mapping: with ``lanes = 8`` it always does. Without per-element names there is no clash; the
    layout is otherwise an ordinary :class:`~amaranth.lib.data.ArrayLayout` (``payload.lo[n]``).
    """

    def __init__(self, lanes):
        super().__init__(signed(VALUE_BITS), lanes)

    def format(self, value, format_spec):
        if format_spec != "":
            raise ValueError(f"Format specifier {format_spec!r} is not supported for layouts")
        return Format("{}", Value.cast(value))


def rope_pairs_layout(lanes, pos_bits=16, *, beat_bits=0, tag_bits=0):
    """Payload of the input stream: ``lanes`` (lo, hi) pairs, the position and the first-beat flag;
    with ``beat_bits`` the beat's index in its head vector (indexed mode), with ``tag_bits`` a tag that
    travels with the beat."""
    fields = {"lo": LaneArray(lanes), "hi": LaneArray(lanes), "pos": unsigned(pos_bits), "first": 1}
    if beat_bits:
        fields["beat"] = unsigned(beat_bits)
    if tag_bits:
        fields["tag"] = unsigned(tag_bits)
    return data.StructLayout(fields)


def rope_load_layout(head_dim):
    """A run-time frequency write: entry ``index`` (0 .. d/2 - 1) gets ``value`` (unsigned Q0.32)."""
    return data.StructLayout({"index": unsigned(max(1, (head_dim // 2 - 1).bit_length())),
                              "value": unsigned(ROPE_PHASE_BITS)})


def rope_rotated_layout(lanes, *, tag_bits=0):
    """Payload of the output stream: ``lanes`` rotated (lo', hi') pairs, the head-vector flags and the
    input beat's tag (with ``tag_bits``)."""
    fields = {"lo": LaneArray(lanes), "hi": LaneArray(lanes), "first": 1, "last": 1}
    if tag_bits:
        fields["tag"] = unsigned(tag_bits)
    return data.StructLayout(fields)


class RopeUnit(wiring.Component):
    """Fully pipelined rotary embedding of one head vector at a time, ``lanes`` pairs per cycle.

    Parameters
    ----------
    head_dim : int
        Elements per head vector ``d`` (even); the unit rotates ``d/2`` pairs.
    lanes : int
        Pairs per beat (each pair is two elements, so ``2 * lanes`` elements per cycle).
    freq_table : sequence of int
        The ``d/2`` phase increments ``F_i`` in turns per position, unsigned Q0.32, as made by
        :func:`golden.numerics.rope_freq_table` from the model's ``theta``. Stored in a ROM.
    pos_bits : int
        Width of the token position ``pos``.
    indexed : bool
        Take the beat index from the ``beat`` field of each beat (see the module docstring).
    tag_bits : int
        Width of the ``tag`` carried from ``pairs`` to ``rotated`` (0: none).
    loadable : bool
        Add a ``load`` port that writes frequencies at run time (the model's theta comes from DRAM);
        ``freq_table`` is then only the initial contents (``None``: zeros).

    Attributes
    ----------
    pairs : In(stream.Signature(rope_pairs_layout(lanes, pos_bits)))
        Input pairs (see the module docstring for the beat structure).
    rotated : Out(stream.Signature(rope_rotated_layout(lanes)))
        Rotated pairs, one beat per input beat.
    beats : int
        Beats per head vector, ``ceil(d/2 / lanes)``.
    latency : int
        Cycles from accepting a beat to presenting it on ``rotated`` (no stalls).
    """

    def __init__(self, head_dim, lanes, freq_table, *, pos_bits=16, indexed=False, tag_bits=0, loadable=False):
        check_int("head_dim", head_dim, 2, 1 << 16)
        if head_dim % 2:
            raise ValueError(f"head_dim must be even, got {head_dim}")
        check_int("lanes", lanes, 1, 64)
        check_int("pos_bits", pos_bits, 1, 32)
        check_int("tag_bits", tag_bits, 0, 64)
        if not isinstance(indexed, bool):
            raise TypeError(f"indexed must be a bool, got {indexed!r}")
        if not isinstance(loadable, bool):
            raise TypeError(f"loadable must be a bool, got {loadable!r}")
        if freq_table is None:
            if not loadable:
                raise ValueError("freq_table is required unless the unit is loadable")
            freq_table = [0] * (head_dim // 2)
        self.loadable = loadable
        freq = list(freq_table)
        if len(freq) != head_dim // 2:
            raise ValueError(f"freq_table must hold head_dim/2 = {head_dim // 2} entries, got {len(freq)}")
        for i, f in enumerate(freq):
            if not isinstance(f, numbers.Integral) or isinstance(f, bool) or not 0 <= f < 1 << ROPE_PHASE_BITS:
                raise ValueError(f"freq_table[{i}] = {f!r} is not an unsigned {ROPE_PHASE_BITS}-bit integer")
        freq = [int(f) for f in freq]
        self.head_dim, self.lanes, self.pos_bits = head_dim, lanes, pos_bits
        self.indexed, self.tag_bits = indexed, tag_bits
        self.freq_table = tuple(freq)
        self.half = head_dim // 2
        self.beats = -(-self.half // lanes)
        self.beat_bits = max(1, (self.beats - 1).bit_length()) if indexed else 0
        super().__init__({
            "pairs": In(stream.Signature(rope_pairs_layout(lanes, pos_bits, beat_bits=self.beat_bits,
                                                           tag_bits=tag_bits))),
            "rotated": Out(stream.Signature(rope_rotated_layout(lanes, tag_bits=tag_bits))),
            **({"load": In(stream.Signature(rope_load_layout(head_dim)))} if loadable else {}),
        })

    #: Pipeline registers between the input and the output FIFO (see :meth:`elaborate`).
    STAGES = 11
    #: Cycles from accepting a beat to presenting it on ``rotated``: the stages and the output FIFO's.
    latency = STAGES + FIFO_LATENCY

    @property
    def pairs_per_cycle(self):
        """Peak (and sustained, without backpressure) pairs per cycle."""
        return self.lanes

    def freq_rom_init(self):
        """ROM words: beat ``b`` holds ``F[b * lanes + l]`` in bits ``32 l`` .. ``32 l + 31`` (0 = padding)."""
        words = []
        for b in range(self.beats):
            word = 0
            for lane in range(self.lanes):
                i = b * self.lanes + lane
                if i < self.half:
                    word |= self.freq_table[i] << (ROPE_PHASE_BITS * lane)
            words.append(word)
        return words

    def elaborate(self, platform):
        m = Module()
        N = self.lanes
        inp = self.pairs.payload

        # Free-running: every stage loads on every clock edge (no clock enables) and the output beats go
        # through a FIFO that admits a beat only while it has room for every beat in flight.
        room = Signal(init=1)
        m.d.comb += self.pairs.ready.eq(room)
        fire = Signal()
        m.d.comb += fire.eq(self.pairs.valid & room)

        def stage(name, shape, value, reset_less=False):
            reg = Signal(shape, name=name, reset_less=reset_less)
            m.d.sync += reg.eq(value)
            return reg

        # Beat in the head vector: from the payload (indexed), or a counter that restarts on `first`
        # and wraps after the last beat.
        cur = Signal(range(self.beats), name="cur_beat")
        last = Signal()
        m.d.comb += last.eq(cur == self.beats - 1)
        if self.indexed:
            m.d.comb += cur.eq(inp.beat)
        else:
            beat = Signal(range(self.beats), name="beat")
            m.d.comb += cur.eq(Mux(inp.first, 0, beat))
            with m.If(fire):
                m.d.sync += beat.eq(Mux(last, 0, cur + 1))

        # Stage 1: the beat's frequencies are read from the ROM; register the inputs.
        freq_rom = memory.Memory(shape=unsigned(ROPE_PHASE_BITS * N), depth=self.beats,
                                 init=self.freq_rom_init())
        m.submodules.freq_rom = freq_rom
        if self.loadable:
            # One frequency per transfer, into its lane of its beat's word (32-bit write granularity).
            wr_f = freq_rom.write_port(granularity=ROPE_PHASE_BITS)
            idx = self.load.payload.index
            m.d.comb += [self.load.ready.eq(1), wr_f.addr.eq(idx // N if N & (N - 1) else idx >> exact_log2(N)),
                         wr_f.data.eq(self.load.payload.value.replicate(N))]
            lane_of = idx % N if N & (N - 1) else idx[:exact_log2(N)]
            for n in range(N):
                m.d.comb += wr_f.en[n].eq(self.load.valid & (lane_of == n))
        rd_f = freq_rom.read_port()
        m.d.comb += rd_f.addr.eq(cur)
        valid = [stage("v1", 1, fire)]
        # Flags: first, last and the tag, carried to the output.
        tag = inp.tag if self.tag_bits else Const(0, 0)
        nflags = 2 + self.tag_bits
        flags = [stage("flags1", nflags, Cat(cur == 0, last, tag))]
        pos1 = stage("pos1", unsigned(self.pos_bits), inp.pos)
        # The lanes' values travel alongside until the multipliers (stage 5).
        lo_hi = stage("x1", unsigned(2 * VALUE_BITS * N), Cat(inp.lo.as_value(), inp.hi.as_value()))

        def value(x, j):
            """Value ``j`` of the carried bits: lo of lane ``j`` for ``j < N``, else hi of lane ``j - N``."""
            return x[VALUE_BITS * j:VALUE_BITS * (j + 1)].as_signed()

        def carry(s, bits):
            """Pass the valid bit, flags and values on by one stage."""
            valid.append(stage(f"v{s}", 1, valid[-1]))
            flags.append(stage(f"flags{s}", nflags, flags[-1]))
            return stage(f"x{s}", unsigned(len(bits)), bits)

        # Stage 2: the partial products of phase = pos * F mod 2^32, each registered in its multiplier
        # block (two 18 x 18 per lane: pos's low 18 bits times F's low 18 and high 14 bits); pos's bits
        # from 18 up only reach F's low 14 bits modulo 2^32: a few masked copies (no multiplier), also
        # registered. Stage 3: their sum. No stage holds a multiplier and a carry chain together.
        hi_bits = ROPE_PHASE_BITS - 18
        pp2 = []
        for n in range(N):
            f = rd_f.data[ROPE_PHASE_BITS * n:ROPE_PHASE_BITS * (n + 1)]
            lo_p = registered_product(m, f"phase_lo_{n}", pos1[:18], f[:18], platform=platform)
            hi_p = registered_product(m, f"phase_hi_{n}", pos1[:18], f[18:], platform=platform)
            top = Const(0, 1)
            if self.pos_bits > 18:
                top = stage(f"phase_top_{n}", unsigned(hi_bits),
                            shift_add(f[:hi_bits], pos1[18:self.pos_bits]))
            pp2.append((lo_p, hi_p, top))
        x2 = carry(2, lo_hi)
        phase = [stage(f"phase_{n}", unsigned(ROPE_PHASE_BITS),
                       Cat(lo_p[:18], lo_p[18:ROPE_PHASE_BITS] + hi_p[:hi_bits] + top_p))
                 for n, (lo_p, hi_p, top_p) in enumerate(pp2)]
        x2 = carry(3, x2)

        # Stage 4: angle index; the two ROM reads per lane are S[k] and S[1024 - k] (S[1024] = 2^14 for
        # k = 0 is not in the ROM). Registered here: the quadrant and the k = 0 flag; stage 5: the ROM
        # words registered as they come (no logic behind the block RAM's output in its cycle).
        drop = ROPE_PHASE_BITS - ROPE_TABLE_BITS
        table = [int(v) for v in sin_quarter_table()]
        quad3, zero3, mags = [], [], []
        for n in range(N):
            idx = Signal(unsigned(ROPE_TABLE_BITS), name=f"idx_{n}")
            # ((phase + 2^19) >> 20) mod 4096 = ((phase >> 19) + 1) >> 1 mod 4096
            m.d.comb += idx.eq(((phase[n][drop - 1:] + 1) >> 1)[:ROPE_TABLE_BITS])
            k = idx[:ROPE_TABLE_BITS - 2]
            rom = memory.Memory(shape=unsigned(MAG_BITS), depth=QUARTER, init=table[:QUARTER])
            m.submodules[f"sin_rom_{n}"] = rom
            rd_a, rd_b = rom.read_port(), rom.read_port()
            m.d.comb += [rd_a.addr.eq(k), rd_b.addr.eq(-k)]
            quad = stage(f"quad_{n}", 2, idx[ROPE_TABLE_BITS - 2:])
            zero = stage(f"kzero_{n}", 1, k == 0)
            quad3.append(stage(f"quad5_{n}", 2, quad))
            zero3.append(stage(f"kzero5_{n}", 1, zero))
            # Reset-less: plain flip-flops, which the ECP5 build moves into the ROM's output registers.
            mags.append((stage(f"s_k_{n}", unsigned(MAG_BITS), rd_a.data, reset_less=True),
                         stage(f"s_mk_{n}", unsigned(MAG_BITS), rd_b.data, reset_less=True)))
        x3 = carry(4, x2)
        x3 = carry(5, x3)

        # Stage 6: signed cos and sin.
        cs4 = []
        for n in range(N):
            s_k = mags[n][0]
            s_mk = Mux(zero3[n], table[QUARTER], mags[n][1])  # S[1024 - k]
            odd, q = quad3[n][0], quad3[n]
            sin_mag = Mux(odd, s_mk, s_k)
            cos_mag = Mux(odd, s_k, s_mk)
            sin_neg = q[1]
            cos_neg = q[0] ^ q[1]
            c = stage(f"cos_{n}", signed(TRIG_BITS), Mux(cos_neg, -cos_mag, cos_mag))
            s = stage(f"sin_{n}", signed(TRIG_BITS), Mux(sin_neg, -sin_mag, sin_mag))
            cs4.append((c, s))
        x4 = carry(6, x3)

        # Stage 7: the multiplicands of the three-multiplication complex product.
        pre5 = []
        for n in range(N):
            c, s = cs4[n]
            lo, hi = value(x4, n), value(x4, N + n)
            pre5.append((stage(f"c5_{n}", signed(TRIG_BITS), c),
                         stage(f"s_minus_c_{n}", signed(TRIG_BITS), s - c),
                         stage(f"c_plus_s_{n}", signed(TRIG_BITS), c + s),
                         stage(f"lo_plus_hi_{n}", signed(VALUE_BITS + 1), lo + hi)))
        x5 = carry(7, x4)

        # Stage 8: partial products (the wide operand in an unsigned 17-bit chunk and a signed upper
        # chunk, one MULT18X18D each, registered in the block: a signed operand times an unsigned one
        # fits only up to 17 unsigned bits); stage 9: the products, kept modulo 2^SUM_BITS: the sums
        # below fit in SUM_BITS signed bits, so their wrapped values are exact (narrower adders, fewer
        # registers).
        def partial(name, a, wide):
            return (registered_product(m, f"{name}_lo", a, wide[:17], platform=platform),
                    registered_product(m, f"{name}_hi", a, wide[17:].as_signed(), platform=platform))

        pp8 = []
        for n in range(N):
            c, s_minus_c, c_plus_s, lo_plus_hi = pre5[n]
            lo, hi = value(x5, n), value(x5, N + n)
            pp8.append((partial(f"k1_{n}", c, lo_plus_hi), partial(f"k2_{n}", s_minus_c, lo),
                        partial(f"k3_{n}", c_plus_s, hi)))
        valid.append(stage("v8", 1, valid[-1]))
        flags.append(stage("flags8", nflags, flags[-1]))
        prod6 = [tuple(stage(f"k{j + 1}_{n}", signed(SUM_BITS), lo_p + (hi_p << 17))
                       for j, (lo_p, hi_p) in enumerate(pp8[n])) for n in range(N)]
        valid.append(stage("v9", 1, valid[-1]))
        flags.append(stage("flags9", nflags, flags[-1]))

        # Stage 10: lo*c - hi*s and hi*c + lo*s. The rounding half is added in the next stage: written
        # here as a third operand, Yosys turns each sum into a LUT4 adder ($macc), which measured about
        # 135 LUT4-equivalents per lane more than the separate 17-CCU2C incrementers.
        sum7 = []
        for n in range(N):
            k1, k2, k3 = prod6[n]
            sum7.append((stage(f"re_{n}", signed(SUM_BITS), k1 - k3),
                         stage(f"im_{n}", signed(SUM_BITS), k1 + k2)))
        valid.append(stage("v10", 1, valid[-1]))
        flags.append(stage("flags10", nflags, flags[-1]))

        # Stage 11 (the output register): round half up, shift and saturate to int32.
        lim_hi, lim_lo = (1 << (VALUE_BITS - 1)) - 1, -(1 << (VALUE_BITS - 1))

        def round_sat(v, name):
            rounded = Signal(signed(SUM_BITS), name=name)
            m.d.comb += rounded.eq(v + (1 << (ROPE_FRAC - 1)))
            shifted = rounded[ROPE_FRAC:]
            top = shifted[VALUE_BITS - 1:]  # all ones or all zeros when it fits in int32
            fits = (top == 0) | (top == (1 << len(top)) - 1)
            return Mux(fits, shifted[:VALUE_BITS], Mux(rounded[-1], lim_lo, lim_hi))

        beat = Signal(self.rotated.payload.shape(), reset_less=True)
        m.d.sync += [beat.first.eq(flags[-1][0]), beat.last.eq(flags[-1][1])]
        if self.tag_bits:
            m.d.sync += beat.tag.eq(flags[-1][2:])
        for n in range(N):
            re, im = sum7[n]
            m.d.sync += [beat.lo[n].eq(round_sat(re, f"re_rounded_{n}")),
                         beat.hi[n].eq(round_sat(im, f"im_rounded_{n}"))]
        valid.append(stage("v11", 1, valid[-1]))
        assert len(valid) == self.STAGES
        # Reads counted a cycle late: `rotated`'s ready is a flip-flop of a credit link placed far from
        # here (7.8 ns of route into the count's adder and `room`, 12.6 ns placed on the ECP5 shell at
        # 1fe27f9). A FIFO entry more; no latency, no rate.
        output_fifo(m, room, fire, valid[-1], beat, self.rotated, self.STAGES, back=1)
        return m
