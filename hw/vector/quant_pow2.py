"""Int8 quantisation with a power-of-two scale per vector: Q, K and V on their way to attention.

:class:`QuantPow2` is bit-exact with :func:`golden.numerics.quant_pow2` (``docs/numerics.md``, section
"Attention operands"): for one head vector ``x`` (``d`` Q.16 int32 values)::

    e = max(0, bitlen(max|x|) - 7)          q = clamp(round_shift(x, e), -127, 127)

so ``q * 2^(e - 16)`` is the real value. ``bitlen(max|x|) = bitlen(OR of |x|)``: one OR per beat, no
comparator tree.

Interleaved vectors (prefill)
-----------------------------
The TLMM engine emits a row tile for every token of a chunk before the next row tile, so the beats of
one token's head vector arrive interleaved with other tokens' beats. Every input beat therefore carries
the ``slot`` (token) it belongs to, and the unit keeps per-slot state: a beat counter, the OR of ``|x|``
and a phase choosing one of four buffer regions. A vector is complete after its
``beats = ceil(d / lanes)``-th beat; it is then queued for output while the slot's next vectors fill the
other regions. A beat whose region still holds a vector waiting for output is held
(``ready`` low), so nothing is overwritten under any backpressure.

Streams
-------
``i``: ``x`` (``lanes`` x int32 Q.16, :func:`~hw.vector.epilogue.vector_layout`) and ``slot``. Lanes of
a partial last beat beyond ``d`` are ignored.
``o``: ``q`` (``lanes`` x int8; lanes beyond ``d`` are 0), ``e`` (0..25), ``slot``, ``first``, ``last``:
the ``beats`` beats of one vector back to back, vectors in completion order.

Throughput: one beat in and one beat out per cycle (``lanes`` elements each way).
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.numerics import KV_QMAX

from .epilogue import lane, output_fifo, vector_layout
from ..collision import assert_no_collision, collision_free_memory
from ..dataflow.skid import SkidBuffer
from ..params import check_int
from ..tlmm.layouts import token_bits

__all__ = ["QuantPow2", "quant_in_layout", "quant_out_layout", "E_FIELD_BITS", "Q_BITS"]

_X_BITS = 32
#: Bits of the stored exponent ``e`` (at most 32 - 7 = 25).
E_FIELD_BITS = 5
#: Bits of the output values.
Q_BITS = 8
_QBITS_KEPT = 7   # e = bitlen - 7 keeps 7 magnitude bits
_REGIONS_PER_SLOT = 4


def quant_in_layout(lanes, slots):
    return data.StructLayout({"x": vector_layout(lanes, _X_BITS), "slot": unsigned(token_bits(slots))})


def quant_out_layout(lanes, slots):
    return data.StructLayout({
        "q": vector_layout(lanes, Q_BITS),
        "e": unsigned(E_FIELD_BITS),
        "slot": unsigned(token_bits(slots)),
        "first": 1,
        "last": 1,
    })


class QuantPow2(wiring.Component):
    """Per-vector power-of-two int8 quantiser for interleaved vectors (see the module docstring).

    Parameters
    ----------
    lanes : int
        Elements per beat, 1..64.
    length : int
        Vector length ``d`` (the head dimension), 1..4096.
    slots : int
        Vectors that may be in progress at once (tokens of a prefill chunk), 1..256. The buffer holds
        ``4 * 2^ceil(log2(slots)) * ceil(length / lanes)`` beats.

    Attributes
    ----------
    i : In(stream.Signature(quant_in_layout(lanes, slots)))
    o : Out(stream.Signature(quant_out_layout(lanes, slots)))
    """

    #: Free-running stages from a queued beat's read to the output FIFO.
    STAGES = 6

    def __init__(self, lanes, length, slots=1):
        self.lanes = check_int("lanes", lanes, 1, 64)
        self.length = check_int("length", length, 1, 4096)
        self.slots = check_int("slots", slots, 1, 256)
        self.beats = -(-length // lanes)
        super().__init__({
            "i": In(stream.Signature(quant_in_layout(lanes, slots))),
            "o": Out(stream.Signature(quant_out_layout(lanes, slots))),
        })

    def elaborate(self, platform):
        m = Module()
        L, B, S = self.lanes, self.beats, self.slots
        tail = self.length - (B - 1) * L       # live lanes of the last beat

        # Four regions per slot: one filling, one being sent, and two of slack so the output's start-up
        # latency (queue + read) never stalls the input. Region = (phase, slot) as bits, so slot counts
        # that are not powers of two leave holes.
        regions = _REGIONS_PER_SLOT << token_bits(S) if S > 1 else _REGIONS_PER_SLOT
        # Undefined collisions (no bypass logic in synthesis): a region is read only while busy and written
        # only while not (checked in simulation below).
        m.submodules.mem = mem = collision_free_memory(shape=unsigned(L * _X_BITS), depth=regions * B)
        wr = mem.write_port()
        rd = mem.read_port(domain="sync")
        m.submodules.done = done = fifo.SyncFIFOBuffered(
            width=len(Signal(range(regions))) + _X_BITS + 1, depth=max(regions, 4))  # >= 4: no 0-bit address

        # The input passes a skid buffer, so ``i.ready`` is a flip-flop: the ready below is a function of
        # the incoming slot's phase and region (placed at the far end of a route from RoPE's output on
        # ECP5, it was the shell's worst path).
        m.submodules.in_slice = isl = SkidBuffer(quant_in_layout(L, S))
        wiring.connect(m, wiring.flipped(self.i), isl.i)
        inp = isl.o

        # -- per-slot fill state ------------------------------------------------------------------------
        cnt = Array(Signal(range(B), name=f"cnt_{s}") for s in range(S))
        phase = Array(Signal(2, name=f"phase_{s}") for s in range(S))
        orx = Array(Signal(_X_BITS + 1, name=f"or_{s}") for s in range(S))
        busy = Signal(regions)          # region holds a complete vector not yet sent
        busy_set = Signal(regions)
        busy_clr = Signal(regions)
        busy_next = Signal(regions)
        m.d.comb += busy_next.eq((busy | busy_set) & ~busy_clr)
        m.d.sync += busy.eq(busy_next)

        ipay = inp.payload
        slot = ipay.slot if S > 1 else Const(0, 1)
        region = Signal(range(regions))
        m.d.comb += region.eq(Cat(slot, phase[slot]) if S > 1 else phase[0])
        beat = cnt[slot]
        is_last_beat = beat == B - 1
        # Whether the region each slot fills is free, for every slot side by side, then chosen by the beat's
        # slot: the slot's phase multiplexer and a choice among all regions' flags were in a row between
        # the slice's slot and the per-slot counters' enables (11.81 ns routed on the ECP5 shell at
        # dfe4cdf). Each slot's flag is a register (~busy[slot, phase[slot]], formed a cycle ahead, for the
        # region it fills now and the one after it, with the slot's advance choosing last): the slot choice
        # behind the slice's slot was still 10.92 ns routed at 9887928, on the slice's own load enable
        # (69 flip-flops). The flags take this cycle's sets but see a release (``busy_clr``) a cycle late,
        # which can only hold a beat back: the release comes from the output side's FIFO ready, beat count
        # and region decode, which sat in a row ahead of the busy flags and these multiplexers (11.36 ns
        # routed at e8c64fe).
        seen_busy = Signal(regions)
        m.d.comb += seen_busy.eq(busy | busy_set)
        slot_free = Signal(S, init=(1 << S) - 1)
        m.d.comb += inp.ready.eq((slot_free.bit_select(slot, 1) if S > 1 else slot_free[0]) & done.w_rdy)
        fire = inp.valid & inp.ready
        for s in range(S):
            stay = Cat(Const(s, token_bits(S)), phase[s]) if S > 1 else phase[0]
            move = Cat(Const(s, token_bits(S)), (phase[s] + 1)[:2]) if S > 1 else (phase[0] + 1)[:2]
            advance = fire & is_last_beat & ((slot == s) if S > 1 else 1)
            m.d.sync += slot_free[s].eq(Mux(advance, ~seen_busy.bit_select(move, 1), ~seen_busy.bit_select(stay, 1)))

        # OR of |x| over this beat's live lanes (padding lanes of the last beat are masked).
        beat_or = Signal(_X_BITS + 1)
        terms = []
        for n in range(L):
            x = lane(ipay.x, n)
            mag = Mux(x < 0, -x, x)[:_X_BITS + 1]
            live = Const(1) if n < tail else ~is_last_beat
            terms.append(Mux(live, mag, 0))
        m.d.comb += beat_or.eq(Cat(*[Cat(*[t[k] for t in terms]).any() for k in range(_X_BITS + 1)]))
        # The beat's OR goes through a register (stage 1) before it is merged into its slot's running OR
        # (stage 2), and a complete vector is queued with its OR, its exponent formed on the output side:
        # no stage holds the |x| carry chains, the OR tree, the per-slot multiplexer and the bit length
        # at once. Its region is marked busy a cycle later than the beat was taken, long before the slot
        # can come back to that region (four vectors later).
        v_1, first_1, last_1 = Signal(), Signal(), Signal()
        beat_or_1 = Signal(_X_BITS + 1)
        slot_1 = Signal.like(slot)
        region_1 = Signal.like(region)
        m.d.sync += v_1.eq(fire)
        with m.If(fire):
            m.d.sync += [beat_or_1.eq(beat_or), slot_1.eq(slot), region_1.eq(region), first_1.eq(beat == 0),
                         last_1.eq(is_last_beat)]
        total_or = Signal(_X_BITS + 1)
        m.d.comb += total_or.eq(Mux(first_1, 0, orx[slot_1]) | beat_or_1)

        # The beat's write passes a register: the slot's phase and count multiplexers and the region's busy
        # flag went into the block RAM's address and byte-enable pins (12.3 ns placed at 6c79f98). It lands
        # a cycle later; the vector is read only after it is queued in `done` (a cycle after its last beat,
        # then the queue's latency), which the simulation's collision check confirms.
        w_addr = Signal.like(wr.addr, reset_less=True)
        w_data = Signal.like(wr.data, reset_less=True)
        w_en = Signal()
        m.d.sync += [w_addr.eq(region * B + beat), w_data.eq(ipay.x.as_value()), w_en.eq(fire)]
        m.d.comb += [
            wr.addr.eq(w_addr),
            wr.data.eq(w_data),
            wr.en.eq(w_en),
            done.w_data.eq(Cat(region_1, total_or)),
            done.w_en.eq(v_1 & last_1),
        ]
        with m.If(v_1):
            m.d.sync += orx[slot_1].eq(total_or)
            with m.If(last_1):
                m.d.comb += busy_set.eq(1 << region_1)
        with m.If(fire):
            with m.If(is_last_beat):
                m.d.sync += [cnt[slot].eq(0), phase[slot].eq(phase[slot] + 1)]
            with m.Else():
                m.d.sync += cnt[slot].eq(beat + 1)

        # -- output: read a queued vector and round, 6 free-running stages --------------------------------
        # The stages load on every clock edge (no enable net across 600 flip-flops); a vector's beats
        # are read only while the output FIFO has room for them and every beat ahead (``take``).
        take = Signal(init=1)
        out_region = done.r_data[:len(region)]
        out_or = done.r_data[len(region):]
        out_beat = Signal(range(B))
        issue = Signal()
        m.d.comb += [issue.eq(done.r_rdy & take), rd.addr.eq(out_region * B + out_beat), rd.en.eq(1)]
        assert_no_collision(m, platform, wr, rd, issue, "quantiser vectors")
        with m.If(issue):
            with m.If(out_beat == B - 1):
                m.d.sync += out_beat.eq(0)
                m.d.comb += [done.r_en.eq(1), busy_clr.eq(1 << out_region)]
            with m.Else():
                m.d.sync += out_beat.eq(out_beat + 1)

        def stage(value, name, shape=None, reset_less=False):
            r = Signal(value.shape() if shape is None else shape, name=name, reset_less=reset_less)
            m.d.sync += r.eq(value)
            return r

        # Stage 1 (read data valid): flags and the vector's OR; stage 2: the read data registered, and e;
        # stage 3: 2^(e-1); stage 4: x + half; stage 5: shift; stage 6: clamp. (One carry chain, mux
        # tree or priority encoder per stage.)
        v1 = stage(issue, "v1")
        or1 = stage(out_or, "or1")
        slot1 = stage(out_region[:token_bits(S)] if S > 1 else Const(0, 1), "slot1")
        first1 = stage(out_beat == 0, "first1")
        last1 = stage(out_beat == B - 1, "last1")
        # e = max(0, bitlen(or) - 7) by a tree: each 4-bit group's e if its top set bit is the vector's,
        # then 2:1 multiplexers (the higher non-zero group wins), log depth instead of a priority chain.
        nodes = []
        for g in range(0, _X_BITS + 1, 4):
            piece = or1[g:g + 4]
            e_g = Signal(E_FIELD_BITS, name=f"e_grp{g // 4}")
            for k in range(len(piece)):                  # bitlen = g + k + 1
                with m.If(piece[k]):
                    m.d.comb += e_g.eq(max(0, g + k + 1 - _QBITS_KEPT))
            nodes.append((piece.any(), e_g))
        while len(nodes) > 1:
            nxt = [(lo[0] | hi[0], Mux(hi[0], hi[1], lo[1])) for lo, hi in zip(nodes[0::2], nodes[1::2])]
            if len(nodes) % 2:
                nxt.append(nodes[-1])
            nodes = nxt
        e_of = Signal(E_FIELD_BITS)
        m.d.comb += e_of.eq(nodes[0][1])
        words = data.View(vector_layout(L, _X_BITS), rd.data)
        e2 = stage(e_of, "e2")
        flags = [stage(f, f"{f.name}_2") for f in (v1, slot1, first1, last1)]
        # Plain flip-flops after the block RAM (no reset): the ECP5 build moves them into its output
        # register (hw.bram_output_registers).
        x2 = [stage(lane(words, n), f"x2_{n}", reset_less=True) for n in range(L)]
        x3 = [stage(x2[n], f"x3_{n}") for n in range(L)]
        half3 = stage((Const(1, _X_BITS) << e2)[1:], "half3", unsigned(_X_BITS))   # 2^(e-1), or 0 for e = 0
        e3 = stage(e2, "e3")
        flags = [stage(f, f"{f.name[:-2]}_3") for f in flags]
        biased = [stage(x3[n] + half3, f"biased_{n}", signed(_X_BITS + 1)) for n in range(L)]
        e4 = stage(e3, "e4")
        flags = [stage(f, f"{f.name[:-2]}_4") for f in flags]
        shifted = []
        for n in range(L):
            r = Signal(signed(_X_BITS + 1), name=f"shifted_{n}")
            m.d.comb += r.eq(biased[n] >> e4)
            shifted.append(stage(r, f"shifted_{n}_5"))
        e5 = stage(e4, "e5")
        v5, slot5, first5, last5 = (stage(f, f"{f.name[:-2]}_5") for f in flags)
        out = Signal(self.o.payload.shape())
        m.d.sync += [out.e.eq(e5), out.slot.eq(slot5 if S > 1 else 0), out.first.eq(first5), out.last.eq(last5)]
        for n in range(L):
            r = shifted[n]
            clamped = Mux(r > KV_QMAX, KV_QMAX, Mux(r < -KV_QMAX, -KV_QMAX, r))
            live = Const(1) if n < tail else ~last5
            m.d.sync += lane(out.q, n).eq(Mux(live, clamped, 0))
        v6 = stage(v5, "v6")
        output_fifo(m, take, issue, v6, out, self.o, self.STAGES)
        return m
