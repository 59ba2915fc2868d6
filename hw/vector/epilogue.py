"""The TLMM engine's epilogue: dequantisation, residual add and the two FFN gates, ``lanes`` elements per cycle.

Four streaming units, each bit-exact with the golden model (``docs/numerics.md``, sections
"Dequantisation (the epilogue)", "Residual stream" and "Gating"):

:class:`Dequant`
    ``y = saturate32(round_shift(acc * m16, shift))``: TLMM accumulators to Q.16, as
    :func:`golden.numerics.dequant_q16` (whose scale's :meth:`~golden.sfloat.SFloat.multiplier` form,
    after ``scale_pow2(16)``, is ``(m16, shift)``).
:class:`ResidualAdd`
    ``x' = saturate32(x + y)``, as :func:`golden.numerics.residual_add`.
:class:`GateSilu`
    ``h = silu_q16(g) * u`` for a Q.16 gate ``g`` (the output of a :class:`Dequant`) and an up-projection
    accumulator ``u``, as :func:`golden.numerics.gate_silu`.
:class:`GateRelu2`
    ``h = max(ag, 0)^2 * au`` on raw accumulators, as :func:`golden.numerics.gate_relu2`.

Streams and beats
-----------------
Every stream beat carries ``lanes`` elements (lane ``l`` of a beat is one element of the vector), as a
:func:`vector_layout`: fields ``lane0`` .. ``lane{lanes-1}``, lane ``l`` at bits ``[l * w, (l + 1) * w)``
(``w`` = 32, or 64 for the gate outputs); :func:`lane` indexes one. A vector of ``n`` elements takes
``ceil(n / lanes)`` beats; the units have no notion of vectors, so a partial last beat simply carries
padding that comes out as some value the consumer ignores.

The two-input units (:class:`ResidualAdd`, :class:`GateSilu`, :class:`GateRelu2`) take two streams and
zip them: one beat of each makes one output beat. Each input's ``ready`` is asserted only when the other
input is valid (and the pipeline can advance), so both are consumed in the same cycle. A ``ready`` that
depends on the other stream's ``valid`` is allowed by the stream rules (``valid`` never waits for
``ready``).

:class:`Dequant` carries its scale on every beat (``m16``, ``shift`` fields next to the ``lanes``
accumulators): the producer holds them for all beats of one vector (the scale is per token), and nothing
else is needed to switch scales between vectors, even back to back.

Pipelines
---------
Every unit is one free-running pipeline of :attr:`stages` registers that load on every clock edge (no
clock enables), ending in a small output FIFO that drives ``o``. A beat is accepted only while the FIFO
has room for it and for every beat already in flight (a count of beats accepted and not yet read,
compared into a flip-flop ``room``), so backpressure never has to reach the pipeline's registers and
the inputs' ``ready`` is that flip-flop (for the two-input units, and the other input's ``valid``). A
unit accepts one beat per cycle (initiation interval 1, ``lanes`` elements per cycle) while ``o`` is
read every cycle; :attr:`latency` (``stages + 2``, :data:`FIFO_LATENCY`) cycles pass from a beat's acceptance to its output
beat, and the output payload is stable while stalled. (A stalling pipeline, every register enabled by
``~o.valid | o.ready``, put one enable net on every register of a unit: on ECP5 2,000-3,000 flip-flops
spread over the die, whose routing after the ready chain was the longest path of the placed design.)

Multipliers are split by hand into products that fit one ECP5 ``MULT18X18D`` (18 x 18, each operand
signed or unsigned: chunks of 18 bits, unsigned except the top chunk of a signed operand), each product
registered, then summed by registered adders (one carry chain per stage, only the overlapping bits of
two terms go through it), so no carry chain follows a multiplier in the same cycle. Products by a 3- or
4-bit chunk are shift-and-add in LUTs (Yosys would otherwise spend a whole DSP on each).

Arithmetic, per unit
--------------------
Dequant
    ``acc`` is int32 (any value), ``m16`` unsigned 16 bits, ``shift`` signed 8 bits. The product
    ``p = acc * m16`` is exact (48 bits). With ``s = shift``:

    * ``-16 <= s <= 62``: exactly golden's ``saturate(round_shift(p, s), 32)``; negative ``s`` is a left
      shift that saturates. ``s = -16`` is where golden's int64 arithmetic is still exact.
    * ``s > 62``: golden clamps the shift to 62; every ``s >= 48`` already gives 0 for ``|p| < 2^47``, and
      the unit outputs 0 for every ``s >= 48`` (it zeroes ``m16``).
    * ``s < -16`` is treated as ``s = -16``. For every ``m16`` an SFloat multiplier can have (0 or
      ``>= 2^15``) this is the exact saturated result: at ``s = -16`` every non-zero product already
      saturates (``|p| * 2^16 >= 2^31``). Golden's int64 shift wraps there, so it is no reference.

    The producer (scalar unit) clamps ``-(e + 8)`` into the signed 8-bit field; by the two rules above
    clamping to ``[-128, 127]`` (or ``[-16, 48]``) changes no result.

    Rounding: ``round_shift(p, s) = (q + 1) >> 1`` with ``q = floor(p * 2^(1 - s))``, for every ``s``
    (for ``s <= 0``, ``q`` is even and this is ``p << -s``). With ``a = s + 16`` in ``[0, 63]``,
    ``q = floor(p * 2^17 / 2^a)``. The odd part of ``a`` goes into the multiplier (``m16`` or
    ``2 m16``, 17 bits, still one DSP operand), leaving an even right shift ``b`` of ``p' * 2^16``: a
    5-level barrel shifter (steps 2 .. 32) that keeps only a 33-bit window. An overflow detector (are the
    bits of ``p'`` above the window all sign bits?) says whether ``q`` fits 33 bits; the output is
    ``(q + 1) >> 1``, or ``INT32_MAX`` / ``INT32_MIN`` by the sign if ``q`` overflowed or the result
    is ``2^31`` (the only overflow a 33-bit ``q`` can make).
GateSilu
    The sigmoid index is ``(|g| + 2^8) >> 9`` (``g`` Q.16, table step 1/128). ``idx >= 2048`` gives
    ``sig = 32768``; negative ``g`` uses ``32768 - sig``. ``silu = (g * sig + 2^14) >> 15`` fits int32
    (it lies between 0 and ``g``) and ``h = silu * u`` is int64 for any int32 ``u``.

    The 2048-entry table (:func:`golden.numerics.sigmoid_table`) sits in one 1024 x 18 ROM: entry ``k``
    (``k < 1024``) holds ``T[k] - 16384`` (14 bits; ``T[k] < 32768`` there) in its low bits and
    ``32768 - T[k + 1024]`` (at most 11) in its top 4 bits. One ROM, read through both ports of an ECP5
    ``DP16KD``, serves two lanes.
GateRelu2
    ``ag`` and ``au`` must satisfy ``|a| < 2^21``: int8 activations (``|x| <= 127``) times ternary
    weights over ``K <= 8192`` give ``|a| <= 127 * 8192 < 2^20``, so the bound leaves a factor of 2. Only
    the low 22 bits of each input are used (larger values wrap). Then ``r = max(ag, 0) < 2^21``,
    ``r^2 < 2^42`` and ``|h| < 2^63``: int64, exact.

    ``r = 8 rh + rl`` (``rh`` 18 bits, ``rl`` 3 bits): ``r^2 = 64 rh^2 + rl (16 rh + rl)``, one DSP and
    three LUT terms (``16 rh + rl`` is a concatenation). ``au = 16 ah + al`` (``ah`` 18 bits signed):
    ``h = 16 ah r^2 + al r^2``; ``ah r^2`` is three DSPs (``r^2`` in 18 + 18 + 6 bit chunks), ``al r^2``
    four LUT terms.

Cost
----
``MULT18X18D`` per lane: Dequant 2, GateSilu 6 (2 for ``g * sig``, 4 for the 32 x 32 ``silu * u``),
GateRelu2 4, ResidualAdd 0; GateSilu also one ``DP16KD`` per two lanes. Measured with Yosys 0.70
``synth_ecp5`` (``tests/test_epilogue_unit.py``), per lane at lanes 4 and 16 alike:

=============  =========  ======  =====  ====
unit           LUT4-eq    FF      DSP    BRAM
=============  =========  ======  =====  ====
Dequant        ~360       ~270    2      0
ResidualAdd    ~65        ~32     0      0
GateSilu       ~240       ~645    6      1/2
GateRelu2      ~545       ~750    4      0
=============  =========  ======  =====  ====

(LUT4-eq = LUT4 + 2 CCU2C.) Dequant's LUTs are mostly its barrel shifter; GateRelu2's are the adders
and the LUT products that save four DSPs per lane; the FFs are the one-carry-chain-per-stage pipeline.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.numerics import RES_FRAC, SIG_ENTRIES, SIG_FRAC, SIG_STEP_BITS, sigmoid_table

from ..arith.dsp import registered_product
from ..dataflow.landing_fifo import LATENCY as LANDING_LATENCY, LandingFifo
from ..params import check_int
from ..replica import REPLICA_ATTR

__all__ = [
    "Dequant", "ResidualAdd", "GateSilu", "GateRelu2",
    "dequant_in_layout", "vector_layout", "lane",
    "SHIFT_BITS", "SHIFT_MIN", "SHIFT_ZERO", "RELU2_INPUT_BITS", "sigmoid_rom",
]

#: Width of the signed shift field of :class:`Dequant`.
SHIFT_BITS = 8
#: Smallest shift the datapath applies; smaller shifts are treated as this one (see the module docstring).
SHIFT_MIN = -16
#: Shifts at or above this give 0 for every int32 accumulator and 16-bit mantissa.
SHIFT_ZERO = 48
#: GateRelu2 input bound: ``|a| < 2^(RELU2_INPUT_BITS - 1)``.
RELU2_INPUT_BITS = 22

ACC_BITS = 32
OUT_BITS = 64
# Operand chunks that fit one MULT18X18D (18 x 18 with a signed/unsigned flag per operand, which Yosys
# sets): 18 bits, unsigned or (the top chunk of a signed operand) signed.
_CHUNK = 18
# Sigmoid ROM: 1024 entries x (14 + 4) bits.
_SIG_HALF = SIG_ENTRIES // 2
_SIG_LO_BITS = 14
_SIG_HI_BITS = 4


def vector_layout(lanes, bits=ACC_BITS):
    """``lanes`` signed elements of ``bits`` bits, fields ``lane0`` .. ``lane{lanes-1}`` (lane ``n`` at
    bits ``[n * bits, (n + 1) * bits)``): the payload of the vector streams.

    Named fields rather than an ``ArrayLayout``: Amaranth gives every array element of a port a debug
    wire named ``<field>[<n>]``, which can collide with the names Yosys' ABC pass gives the bits of the
    ``<field>`` wire; ``synth_ecp5`` (Yosys 0.70) then fails an internal assertion in
    ``abc9_ops -reintegrate``. Use :func:`lane` to index.
    """
    return data.StructLayout({f"lane{n}": signed(bits) for n in range(lanes)})


def lane(view, n):
    """Element ``n`` of a :func:`vector_layout` view."""
    return view[f"lane{n}"]


def dequant_in_layout(lanes):
    """:class:`Dequant` input beat: ``lanes`` int32 accumulators and the vector's ``(m16, shift)``."""
    return data.StructLayout({
        "acc": vector_layout(lanes),
        "m16": unsigned(16),
        "shift": signed(SHIFT_BITS),
    })


def sigmoid_rom():
    """The 1024 x 18-bit ROM image of the 2048-entry sigmoid table (see the module docstring).

    Raises
    ------
    AssertionError
        If the table does not fit the packing (it always does for the contract's table).
    """
    t = [int(v) for v in sigmoid_table()]
    one = 1 << SIG_FRAC
    half = one >> 1
    rom = []
    for k in range(_SIG_HALF):
        lo, hi = t[k] - half, one - t[k + _SIG_HALF]
        assert 0 <= lo < 1 << _SIG_LO_BITS and 0 <= hi < 1 << _SIG_HI_BITS, (k, lo, hi)
        rom.append(lo | hi << _SIG_LO_BITS)
    return rom


# -- shared building blocks ------------------------------------------------------------------------------
class _Pipe:
    """Registers of a free-running pipeline: every register loads on every clock edge (no clock enables
    at all). ``take`` (a ``Signal(init=1)``, driven by :func:`output_fifo`) says when a new beat may
    enter; ``platform`` is the elaboration platform, for :meth:`product`."""

    def __init__(self, m, take, platform=None):
        self.m, self.take, self.platform = m, take, platform

    def reg(self, value, name, shape=None):
        """A register loaded with ``value`` on every clock edge (no reset: data only)."""
        shape = Shape.cast(value.shape()) if shape is None else shape
        r = Signal(shape, name=name, reset_less=True)
        self.m.d.sync += r.eq(value)
        return r

    def product(self, a, b, name):
        """``a * b`` registered like :meth:`reg`, in the multiplier block's own output register where it
        fits one (:func:`~hw.arith.dsp.registered_product`): no route out of the block before the register."""
        return registered_product(self.m, name, a, b, platform=self.platform)

    def valid(self, value, name):
        """A valid bit (reset to 0) loaded with ``value`` on every clock edge."""
        r = Signal(name=name)
        self.m.d.sync += r.eq(value)
        return r

    def delay(self, value, stages, name):
        """``value`` delayed by ``stages`` pipeline stages."""
        for i in range(stages):
            value = self.reg(value, f"{name}_d{i}")
        return value


def output_fifo(m, take, fire, last_valid, beat, o, stages, back=0, take_next=None, lag=0):
    """End a free-running pipeline of ``stages`` stages (registers that load on every clock edge, as
    :class:`_Pipe` with ``en`` None) in an output FIFO that drives the stream ``o``.

    ``fire`` is a beat entering the pipeline, ``last_valid`` and ``beat`` its last stage's valid bit and
    payload. The FIFO holds ``stages + FIFO_SLACK + back`` beats; ``take`` (a ``Signal(init=1)``, driven
    here: a flip-flop) is high while fewer beats than that are accepted and not yet counted back as read
    from ``o``, so the FIFO never overflows and no backpressure reaches the pipeline's registers. A read
    is counted ``back`` free-running register stages after it happens (0: at once), for a FIFO placed far
    from ``take`` (:class:`~hw.dataflow.credit_link.CreditLink`). From ``fire`` to ``o.valid`` is
    ``stages + FIFO_LATENCY`` cycles.
    ``take_next`` (a 1-bit signal, optional) is driven with the value ``take`` has after this cycle.
    ``lag`` (0 or 1): ``fire`` is counted a cycle late, from a register, for a ``fire`` formed late in its
    cycle; the FIFO then has one entry more than ``take`` counts, for the beat not yet counted, and the
    count one more for the longer loop. (``take_next`` needs ``lag`` 0.)
    Returns the count of beats accepted and not yet counted back (0 with ``lag`` 0: the pipeline and FIFO
    are empty).
    """
    assert lag in (0, 1) and not (lag and take_next is not None)
    depth = stages + FIFO_SLACK + back + lag
    # Never full when written (``take`` counts its room), so no full flag gates the write.
    m.submodules.out_fifo = q = LandingFifo(width=len(Value.cast(beat)), depth=depth + lag)
    m.d.comb += [q.w_en.eq(last_valid), q.w_data.eq(beat),
                 o.valid.eq(q.r_rdy), o.payload.eq(q.r_data), q.r_en.eq(o.ready)]
    returned = o.valid & o.ready
    # Replicas: the read pulse equals a consumer's own registered handshake (a credit link's first
    # forward valid), and Yosys merged the two: the attention reader's buffer then counted its reads from
    # a register by the consumer's link, 7.5 ns of route away (10.81 ns placed on the ECP5 shell at
    # 3642338).
    for k in range(back):
        r = Signal(name=f"read_back{k}", attrs={REPLICA_ATTR: 1})
        m.d.sync += r.eq(returned)
        returned = r
    if lag:
        fired = Signal(name="fire_late")
        m.d.sync += fired.eq(fire)
        fire = fired
    owed = Signal(range(depth + lag + 1))        # beats accepted and not yet counted back as read
    nxt = owed + fire - returned
    m.d.sync += [owed.eq(nxt), take.eq(nxt < depth)]
    if take_next is not None:
        m.d.comb += take_next.eq(nxt < depth)
    return owed


#: Cycles :func:`output_fifo` adds between a pipeline's last stage and ``o.valid``.
FIFO_LATENCY = LANDING_LATENCY
#: Output FIFO entries beyond a free-running pipeline's stages (:func:`output_fifo`): the FIFO's own
#: cycle from write to ``o`` and the cycle ``take`` needs to follow a read, so a pipeline whose ``o`` is
#: always ready takes a beat per cycle.
FIFO_SLACK = FIFO_LATENCY + 1


def _chunks(value, is_signed, widths):
    """Split ``value`` into ``(chunk, offset)`` pieces of the given widths (low first).

    Every chunk is unsigned except the top one of a signed value.
    """
    out, lo = [], 0
    for i, w in enumerate(widths):
        piece = value[lo:lo + w]
        if is_signed and i == len(widths) - 1:
            piece = piece.as_signed()
        out.append((piece, lo))
        lo += w
    assert lo == len(value), (lo, len(value))
    return out


def _extend(value, width):
    """``value`` sign- or zero-extended (per its shape) to at least ``width`` bits, as raw bits."""
    if len(value) >= width:
        return value
    fill = value[-1] if value.shape().signed else Const(0, 1)
    return Cat(value, fill.replicate(width - len(value)))


def _add_pair(a, b):
    """``(va, oa) + (vb, ob)`` as ``(value, offset)``: the bits of the lower term below the upper term's
    offset pass through, only the overlap goes through an adder."""
    (va, oa), (vb, ob) = sorted([a, b], key=lambda t: t[1])
    d = ob - oa
    signed_sum = va.shape().signed or vb.shape().signed
    if d == 0:
        return va + vb, oa
    ext = _extend(va, d + 1)
    low = ext[:d]
    high_a = ext[d:].as_signed() if va.shape().signed else ext[d:]
    total = Cat(low, high_a + vb)
    return (total.as_signed() if signed_sum else total), oa


def _sum_terms(pipe, terms, name):
    """Sum ``(value, offset)`` terms with a tree of registered adders (one carry chain per stage).

    Returns ``(value, offset, stages)``: the sum equals ``value * 2^offset``.
    """
    terms = list(terms)
    stages = 0
    while len(terms) > 1:
        terms.sort(key=lambda t: t[1])
        nxt = []
        for i in range(0, len(terms) - 1, 2):
            v, o = _add_pair(terms[i], terms[i + 1])
            nxt.append((pipe.reg(v, f"{name}_s{stages}_{i // 2}"), o))
        if len(terms) % 2:
            v, o = terms[-1]
            nxt.append((pipe.reg(v, f"{name}_s{stages}_{len(terms) // 2}"), o))
        terms = nxt
        stages += 1
    return terms[0][0], terms[0][1], stages


def _small_terms(big, big_offset, small, small_offset):
    """Shift-and-add terms of ``big * small`` for a small unsigned ``small`` (no DSP): one masked copy of
    ``big`` per bit, summed pairwise (unregistered); returns ``(value, offset)`` terms."""
    zero = Const(0, big.shape())
    parts = [(Mux(small[i], big, zero), big_offset + small_offset + i) for i in range(len(small))]
    out = []
    for i in range(0, len(parts) - 1, 2):
        out.append(_add_pair(parts[i], parts[i + 1]))
    if len(parts) % 2:
        out.append(parts[-1])
    return out


class _Unit(wiring.Component):
    """Common part: a free-running pipeline whose beats land in an output FIFO that drives ``o``.

    The pipeline's registers load on every clock edge (no clock enable: on ECP5 one enable net reached
    every register of a unit, 2,000-3,000 flip-flops spread over the die, 6-9 ns of routing after a
    ready chain). A beat enters only while the FIFO has room for it and every beat ahead of it
    (``room``, a flip-flop: so the inputs' ``ready`` is a register too), and ``o`` is the FIFO's
    registered output.
    """

    #: Register stages between a read of ``o`` and its count at ``room`` (:func:`output_fifo`'s ``back``):
    #: ``o.ready`` comes from the unit's consumer, often far away, and through the count's adder and
    #: compare into ``room`` it made 12.6-13.2 ns placed paths (the SiLU gate and RoPE on the ECP5 shell
    #: at 1fe27f9). It costs a FIFO entry, no latency and no rate.
    READ_BACK = 1

    @property
    def latency(self):
        """Cycles from a beat's acceptance to its output beat: the pipeline's :attr:`stages` and two of
        the output FIFO; the most beats accepted and not yet read from ``o`` is
        ``stages + FIFO_SLACK + READ_BACK``."""
        return self.stages + FIFO_LATENCY

    def _start(self, platform):
        m = Module()
        return m, _Pipe(m, Signal(init=1, name="room"), platform)

    def _join(self, m, pipe, a, b):
        """Zip two input streams; returns the fire signal (a beat of each accepted this cycle)."""
        fire = Signal()
        m.d.comb += [
            a.ready.eq(pipe.take & b.valid),
            b.ready.eq(pipe.take & a.valid),
            fire.eq(pipe.take & a.valid & b.valid),
        ]
        return fire

    def _finish(self, m, pipe, fire, values):
        """Write ``values`` (one per lane, registers of the last stage) to the output FIFO when the valid
        chain of :attr:`stages` stages that starts with ``fire`` (a beat accepted) says so; keep ``room``."""
        v = fire
        for i in range(self.stages):
            v = pipe.valid(v, f"valid_{i + 1}")
        beat = Signal(self.o.payload.shape())
        for n, value in enumerate(values):
            m.d.comb += lane(beat, n).eq(value)
        output_fifo(m, pipe.take, fire, v, beat, self.o, self.stages, back=self.READ_BACK)


# -- Dequant ---------------------------------------------------------------------------------------------
class Dequant(_Unit):
    """Accumulators to Q.16: ``y = saturate32(round_shift(acc * m16, shift))`` per lane.

    Parameters
    ----------
    lanes : int
        Elements per beat (and per cycle), 1..64.

    Attributes
    ----------
    i : In(stream.Signature(dequant_in_layout(lanes)))
        ``acc`` (``lanes`` x int32), ``m16`` (unsigned 16) and ``shift`` (signed 8) per beat.
    o : Out(stream.Signature(vector_layout(lanes)))
        ``lanes`` x int32 Q.16.
    latency : int
        Cycles from a beat's acceptance to its output beat (see :class:`_Unit`).

    Notes
    -----
    The shift range, its clamping and the rounding identity are in the module docstring. Cost per
    lane: 2 MULT18X18D, a 33-bit window barrel shifter, a 32-bit adder and a 33-bit incrementer.
    """

    stages = 6

    def __init__(self, lanes):
        self.lanes = check_int("lanes", lanes, 1, 64)
        super().__init__({
            "i": In(stream.Signature(dequant_in_layout(lanes))),
            "o": Out(stream.Signature(vector_layout(lanes))),
        })

    def elaborate(self, platform):
        m, pipe = self._start(platform)
        N = self.lanes
        m.d.comb += self.i.ready.eq(pipe.take)
        fire = Signal()
        m.d.comb += fire.eq(self.i.valid & pipe.take)
        pay = self.i.payload

        # Stage 1: operands; per-beat shift controls (shared by every lane).
        shift = pay.shift
        zero = shift >= SHIFT_ZERO
        clamped = Mux(shift < SHIFT_MIN, SHIFT_MIN, Mux(zero, SHIFT_ZERO - 1, shift))
        amount = Signal(range(64))                 # a = s + 16 in [0, 63]
        m.d.comb += amount.eq(clamped - SHIFT_MIN)
        # q = floor(p * 2^17 / 2^a) = floor(p' * 2^16 / 2^b) with p' = p * 2^(1 - a0) (the multiplier
        # takes m16 << 1: 17 bits still fit a DSP operand) and b = a - a0 even: one mux level less.
        even = amount[1:6]                         # b / 2
        m16x = Mux(zero, 0, Mux(amount[0], pay.m16, pay.m16 << 1))
        m16_1 = pipe.reg(m16x, "m16_1", unsigned(17))
        even_1 = pipe.reg(even, "shift_1")
        acc_1 = [pipe.reg(lane(pay.acc, n), f"acc_1_{n}") for n in range(N)]

        # Stage 2: partial products (one MULT18X18D each); stage 3: p' = acc * m16 * 2^(1 - a0).
        # q fits 33 bits iff the bits of p' (49 bits, sign at 48) from b + 16 up are all sign bits; the
        # mask of those bits is formed in stage 2, from the registered b (not behind stage 1's clamp).
        mask_2 = pipe.reg(Cat(*[(even_1 <= (i - 16) // 2) for i in range(16, 48)]), "mask_2")
        even_3 = pipe.delay(even_1, 2, "shift")
        mask_3 = pipe.reg(mask_2, "mask_3")
        even_4 = pipe.reg(even_3[:2], "shift_4")
        outs = []
        for n in range(N):
            terms = [(pipe.product(c, m16_1, f"pp_{n}_{off}"), off)
                     for c, off in _chunks(acc_1[n], True, (_CHUNK, ACC_BITS - _CHUNK))]
            p, off, st = _sum_terms(pipe, terms, f"p_{n}")
            assert off == 0 and st == 1
            p = p[:49].as_signed()

            # Stage 4: overflow flag and coarse shift (32, 16, 8); stage 5: fine shift (4, 2).
            ovf = Signal(name=f"ovf_{n}")
            m.d.comb += ovf.eq(((p[16:48] ^ p[48].replicate(32)) & mask_3).any())
            w = Cat(Const(0, 16), p).as_signed()         # p' * 2^16, 65 bits
            q = self._shift_window(w, even_3[2:5], 3, 33 + 6)
            q_4 = pipe.reg(q, f"q_4_{n}")
            ovf_4 = pipe.reg(ovf, f"ovf_4_{n}")
            sign_4 = pipe.reg(p[48], f"sign_4_{n}")
            q_5 = pipe.reg(self._shift_window(q_4.as_signed(), even_4, 1, 33), f"q_5_{n}", signed(33))
            ovf_5 = pipe.reg(ovf_4, f"ovf_5_{n}")
            sign_5 = pipe.reg(sign_4, f"sign_5_{n}")

            # Stage 6: y = (q + 1) >> 1; saturate if q overflowed 33 bits, or if y = 2^31 (the only
            # overflow of a 33-bit q).
            r = Signal(signed(34), name=f"r_{n}")
            m.d.comb += r.eq(q_5 + 1)
            sat = ovf_5 | (~r[33] & r[32])
            limit = Cat((~sign_5).replicate(31), sign_5)     # INT32_MAX, or INT32_MIN if negative
            outs.append(pipe.reg(Mux(sat, limit, r[1:33]).as_signed(), f"y_{n}", signed(32)))
        self._finish(m, pipe, fire, outs)
        return m

    @staticmethod
    def _shift_window(value, amount, lsb, width):
        """``value >> (amount << lsb)`` (arithmetic), keeping the low ``width`` bits: one mux level per
        amount bit, biggest first, each level only as wide as the bits still reachable."""
        cur = value
        bits = len(amount)
        for k in reversed(range(bits)):
            step = 1 << (k + lsb)
            remaining = sum(1 << (j + lsb) for j in range(k))
            need = width + remaining
            ext = _extend(cur, step + need)
            cur = Mux(amount[k], ext[step:step + need], ext[:need]).as_signed()
        return cur


# -- ResidualAdd -----------------------------------------------------------------------------------------
class ResidualAdd(_Unit):
    """Residual stream update ``x' = saturate32(x + y)`` per lane.

    Parameters
    ----------
    lanes : int
        Elements per beat, 1..64.

    Attributes
    ----------
    x, y : In(stream.Signature(vector_layout(lanes)))
        The residual stream and the branch output (Q.16), zipped beat by beat.
    o : Out(stream.Signature(vector_layout(lanes)))
    latency : int
    """

    stages = 1

    def __init__(self, lanes):
        self.lanes = check_int("lanes", lanes, 1, 64)
        layout = vector_layout(lanes)
        super().__init__({
            "x": In(stream.Signature(layout)),
            "y": In(stream.Signature(layout)),
            "o": Out(stream.Signature(layout)),
        })

    def elaborate(self, platform):
        m, pipe = self._start(platform)
        fire = self._join(m, pipe, self.x, self.y)
        outs = []
        for n in range(self.lanes):
            s = Signal(signed(33), name=f"sum_{n}")
            m.d.comb += s.eq(lane(self.x.payload, n) + lane(self.y.payload, n))
            over = s[32] ^ s[31]
            sat = Cat(s[32].replicate(31) ^ Const((1 << 31) - 1, 31), s[32])  # MAX or MIN by the sign
            outs.append(pipe.reg(Mux(over, sat, s[:32]).as_signed(), f"o_{n}", signed(32)))
        self._finish(m, pipe, fire, outs)
        return m


# -- GateSilu --------------------------------------------------------------------------------------------
class _Gate(_Unit):
    """The two gating units' common ports: ``gate`` and ``up`` zipped beat by beat, int64 out, and
    ``room`` (a flip-flop): high while a ``gate``/``up`` pair would be taken, so an owner can offer
    ``ready`` without looking at the beat (:class:`~hw.dataflow.epilogues.GateEpilogue`)."""

    def __init__(self, lanes):
        self.lanes = check_int("lanes", lanes, 1, 64)
        super().__init__({
            "gate": In(stream.Signature(vector_layout(lanes))),
            "up": In(stream.Signature(vector_layout(lanes))),
            "o": Out(stream.Signature(vector_layout(lanes, OUT_BITS))),
            "room": Out(1),
        })

    def _start(self, platform):
        m, pipe = super()._start(platform)
        m.d.comb += self.room.eq(pipe.take)
        return m, pipe


class GateSilu(_Gate):
    """SiLU gating ``h = silu_q16(g) * u`` per lane (int64 out).

    Parameters
    ----------
    lanes : int
        Elements per beat, 1..64.

    Attributes
    ----------
    gate : In(stream.Signature(vector_layout(lanes)))
        ``g``: the gate projection dequantised to Q.16 (int32), e.g. by a :class:`Dequant`.
    up : In(stream.Signature(vector_layout(lanes)))
        ``u``: the up projection's raw accumulators (int32); zipped with ``gate`` beat by beat.
    o : Out(stream.Signature(vector_layout(lanes, 64)))
        ``h`` (int64; ``|h| < 2^62`` for any int32 inputs, ``< 2^53`` in the model).
    room : Out(1)
        High while a ``gate``/``up`` pair would be taken (a flip-flop).
    latency : int
    """

    stages = 9

    def elaborate(self, platform):
        m, pipe = self._start(platform)
        N = self.lanes
        fire = self._join(m, pipe, self.gate, self.up)
        drop = RES_FRAC - SIG_STEP_BITS  # 9: idx = (|g| + 2^8) >> 9
        one = 1 << SIG_FRAC

        # Stage 1: operands.
        g1 = [pipe.reg(lane(self.gate.payload, n), f"g_1_{n}") for n in range(N)]
        u1 = [pipe.reg(lane(self.up.payload, n), f"u_1_{n}") for n in range(N)]

        # One ROM per lane pair (its two read ports map onto one DP16KD).
        ports = []
        for pair in range(0, N, 2):
            rom = memory.Memory(shape=unsigned(_SIG_LO_BITS + _SIG_HI_BITS), depth=_SIG_HALF,
                                init=sigmoid_rom())
            m.submodules[f"sigmoid_rom_{pair // 2}"] = rom
            for _ in range(min(2, N - pair)):
                ports.append(rom.read_port(domain="sync"))

        outs = []
        for n in range(N):
            g = g1[n]
            neg = g[31]
            # |g| >> (drop - 1), then + 1, then >> 1 (round half up). For negative g, |g| = ~g + 1 and
            # (~g + 1) >> 8 = (~g >> 8) + (g's low 8 bits are all 0).
            mag = Mux(neg, ~g, g).as_unsigned()
            carry = neg & (g[:drop - 1] == 0)
            t = Signal(unsigned(14), name=f"sig_t_{n}")
            m.d.comb += t.eq(mag[drop - 1:drop - 1 + 12] + carry + 1)
            idx = t[1:]                                   # 0 .. 2048
            over = (mag[drop - 1 + 12:31] != 0) | (idx >= SIG_ENTRIES)
            m.d.comb += ports[n].addr.eq(idx[:10])
            # Stage 2: the ROM word arrives with these; it is registered as it comes (stage 3), so no
            # logic follows the block RAM's clock-to-output in its cycle.
            over_3 = pipe.delay(over, 2, f"over_{n}")
            upper_3 = pipe.delay(idx[10], 2, f"upper_{n}")
            neg_3 = pipe.delay(neg, 2, f"neg_{n}")
            g3 = pipe.delay(g, 2, f"g_{n}")
            word = pipe.reg(ports[n].data, f"word_3_{n}")
            lo, hi = word[:_SIG_LO_BITS], word[_SIG_LO_BITS:]
            # sig(g) for g >= 0: over ? 1 : upper ? 1 - hi : 1/2 + lo; for g < 0: 1 - that.
            sig_pos = Mux(over_3, Const(one, 17), Mux(upper_3, Const(one, 17) - hi, Const(one // 2, 17) + lo))
            sig_neg = Mux(over_3, Const(0, 17), Mux(upper_3, hi, Const(one // 2, 17) - lo))
            sig = Signal(unsigned(16), name=f"sig_{n}")
            m.d.comb += sig.eq(Mux(neg_3, sig_neg, sig_pos))
            # Stage 4: sig.
            sig_3 = pipe.reg(sig, f"sig_4_{n}")
            g3 = pipe.reg(g3, f"g_4_{n}")
            # Stage 5: g * sig partial products; stage 6: silu = (g * sig + 2^14) >> 15 in one adder:
            # with g * sig = lo + hi 2^18, it is bits 2.. of (2 (lo >> 14) + 1) + (2 hi 2^4 + 1).
            (c0, _), (c1, _) = _chunks(g3, True, (_CHUNK, ACC_BITS - _CHUNK))
            lo_p = pipe.product(c0, sig_3, f"gs_lo_{n}")
            hi_p = pipe.product(c1, sig_3, f"gs_hi_{n}")
            a = Cat(Const(1, 1), lo_p[SIG_FRAC - 1:])
            b = Cat(Const(1, 1), Const(0, _CHUNK - SIG_FRAC + 1), hi_p).as_signed()
            s = Signal(signed(36), name=f"silu_sum_{n}")
            m.d.comb += s.eq(a + b)
            silu = pipe.reg(s[2:34].as_signed(), f"silu_6_{n}", signed(32))
            u5 = pipe.delay(u1[n], 5, f"u_{n}")
            # Stage 7: the four partial products (17/15-bit chunks: an unsigned 17-bit chunk times a
            # signed one still fits one block, an 18-bit one would not); stages 8, 9: two adder levels.
            terms = []
            for ca, oa in _chunks(silu, True, (_CHUNK - 1, ACC_BITS - _CHUNK + 1)):
                for cb, ob in _chunks(u5, True, (_CHUNK - 1, ACC_BITS - _CHUNK + 1)):
                    terms.append((pipe.product(ca, cb, f"h_pp_{n}_{oa}_{ob}"), oa + ob))
            h, off, st = _sum_terms(pipe, terms, f"h_{n}")
            assert off == 0 and st == 2
            outs.append(h[:OUT_BITS].as_signed())
        self._finish(m, pipe, fire, outs)
        return m


# -- GateRelu2 -------------------------------------------------------------------------------------------
class GateRelu2(_Gate):
    """ReLU^2 gating on accumulators, ``h = max(ag, 0)^2 * au`` per lane (exact int64).

    Parameters
    ----------
    lanes : int
        Elements per beat, 1..64.

    Attributes
    ----------
    gate, up : In(stream.Signature(vector_layout(lanes)))
        Raw gate and up accumulators (int32 fields, ``|a| < 2^21`` required: only the low 22 bits are
        used), zipped beat by beat.
    o : Out(stream.Signature(vector_layout(lanes, 64)))
        ``h``, ``|h| < 2^63``.
    room : Out(1)
        High while a ``gate``/``up`` pair would be taken (a flip-flop).
    latency : int
    """

    stages = 8

    def elaborate(self, platform):
        m, pipe = self._start(platform)
        N = self.lanes
        fire = self._join(m, pipe, self.gate, self.up)
        B = RELU2_INPUT_BITS
        outs = []
        for n in range(N):
            ag = lane(self.gate.payload, n)[:B].as_signed()
            # Stage 1: r = max(ag, 0) (21 bits), au (22 bits signed).
            r = pipe.reg(Mux(ag[-1], 0, ag[:B - 1]), f"r_1_{n}", unsigned(B - 1))
            au = pipe.reg(lane(self.up.payload, n)[:B].as_signed(), f"au_1_{n}")
            # Stage 2: rh^2 (DSP) and rl * (16 rh + rl) (LUT terms, first adder level).
            rl, rh = r[:3], r[3:]
            terms = [(pipe.product(rh, rh, f"rh2_{n}"), 6)]
            cat = Cat(rl, Const(0, 1), rh)              # 16 rh + rl
            terms += [(pipe.reg(v, f"rsq_t_{n}_{o}"), o) for v, o in _small_terms(cat, 0, rl, 0)]
            r2, off, st = _sum_terms(pipe, terms, f"r2_{n}")
            assert off == 0 and st == 2
            r2 = r2[:2 * (B - 1)]
            au4 = pipe.delay(au, 1 + st, f"au_{n}")
            # Stage 5: r^2 * ah (three DSPs) and r^2 * al (LUT terms); stages 6..8: adder tree.
            al, ah = au4[:4], au4[4:].as_signed()
            terms = [(pipe.product(c, ah, f"h_pp_{n}_{o}"), 4 + o)
                     for c, o in _chunks(r2, False, (_CHUNK, _CHUNK, 2 * (B - 1) - 2 * _CHUNK))]
            terms += [(pipe.reg(v, f"h_t_{n}_{o}"), o) for v, o in _small_terms(r2, 0, al, 0)]
            h, off, st2 = _sum_terms(pipe, terms, f"h_{n}")
            assert off == 0 and st2 == 3, (off, st2)
            outs.append(h[:OUT_BITS].as_signed())
        self._finish(m, pipe, fire, outs)
        return m
