"""The back half shared by every ternary MAC engine: adder tree, bit-plane shift, accumulation, output.

The TLMM engines (table lookups) and the adder-tree baseline (gated inputs) differ only in how they
produce each lane's terms; from the terms on, the datapath is this one function, so cost comparisons
between them measure the front ends alone.

Terms arrive as ``(terms, carries)`` per lane: a negative term is given as its one's complement plus a
pending ``+1`` carry, which an adder of the tree absorbs as its carry-in (free on ECP5 carry chains).
"""

from amaranth.hdl import Mux, Shape, Signal, signed
from amaranth.lib import data
from amaranth.lib.memory import Memory

from .layouts import SHIFT_BITS

__all__ = ["LEVELS_PER_STAGE", "tree_stages", "complement_term", "reduce_and_accumulate"]

#: Adder-tree levels between pipeline registers.
LEVELS_PER_STAGE = 2


def tree_stages(terms):
    """Pipeline register stages of a tree over ``terms`` leaves."""
    levels = max(0, (terms - 1).bit_length())
    return -(-levels // LEVELS_PER_STAGE)


def complement_term(value, negative):
    """``value`` or its one's complement: with a pending ``+1`` carry this is ``-value``."""
    return (value.as_unsigned() ^ negative.replicate(len(value))).as_signed()


def reduce_and_accumulate(m, advance, valid, meta, lanes, *, acc_bits, depth, sums):
    """Sum each lane's terms, weight by the bit-plane shift, accumulate per slot, emit finished slots.

    Parameters
    ----------
    m : Module
    advance : Value
        Pipeline advance (everything holds while it is low).
    valid : Value
        Valid bit of the step whose terms are in ``lanes``.
    meta : tuple
        ``(slot, first, last, shift)`` of that step.
    lanes : list of (list of Value, list of Value)
        Per lane: terms, and pending carries (one fewer than terms at most).
    acc_bits, depth : int
        Accumulator width and slots.
    sums : stream interface
        Output stream with payload fields ``y`` and ``slot``.
    """
    def register(values, name):
        regs = []
        for i, v in enumerate(values):
            r = Signal(Shape.cast(v.shape()), name=f"{name}_{i}", reset_less=True)
            with m.If(advance):
                m.d.sync += r.eq(v)
            regs.append(r)
        return regs

    meta = list(meta)
    level = 0
    while len(lanes[0][0]) > 1:
        next_lanes = []
        for n, (terms, carries) in enumerate(lanes):
            carries = list(carries)
            summed = []
            for i in range(0, len(terms) - 1, 2):
                # One named signal per adder: otherwise alumacc merges the tree into one $macc that
                # maccmap builds from LUTs at about twice the area of CCU2C chains.
                a, b = terms[i], terms[i + 1]
                total = Signal(signed(max(len(a), len(b)) + 1), name=f"sum{level}_{n}_{i // 2}")
                m.d.comb += total.eq(a + b + (carries.pop(0) if carries else 0))
                summed.append(total)
            if len(terms) % 2:
                summed.append(terms[-1])
            next_lanes.append((summed, carries))
        lanes = next_lanes
        level += 1
        if level % LEVELS_PER_STAGE == 0 or len(lanes[0][0]) == 1:
            lanes = [(register(t, f"l{level}_t"), register(cy, f"l{level}_c")) for t, cy in lanes]
            meta = register(meta, f"l{level}_meta")
            valid_r = Signal(name=f"l{level}_valid")
            with m.If(advance):
                m.d.sync += valid_r.eq(valid)
            valid = valid_r
    for terms, carries in lanes:
        assert len(terms) == 1 and not carries, "every carry must be absorbed by an adder"

    # Bit-plane weight: a log shifter (one 2:1 mux level per shift bit), registered before the
    # accumulator adder so no mux sits in a carry-chain stage.
    slot, first, last, shift = meta
    scaled = []
    for n, (terms, _) in enumerate(lanes):
        v = terms[0]
        for i in range(SHIFT_BITS):
            nxt = Signal(signed(len(v) + (1 << i)), name=f"shift{i}_{n}")
            m.d.comb += nxt.eq(Mux(shift[i], v << (1 << i), v))
            v = nxt
        scaled.append(v)
    scaled = register(scaled, "scaled")
    c_slot, c_last = register([slot, last], "c_meta")
    c_valid = Signal()
    with m.If(advance):
        m.d.sync += c_valid.eq(valid)

    m.submodules.acc = acc = Memory(shape=data.ArrayLayout(signed(acc_bits), len(lanes)), depth=depth, init=[])
    wr = acc.write_port()
    rd = acc.read_port(domain="comb")
    # The accumulator is read as a step enters the accumulate stage, into ``base``. A step for the slot
    # being written in the same cycle takes the written value (forwarding: consecutive updates of one
    # slot, e.g. decode). ``first`` clears ``base``, which maps to the flip-flops' synchronous reset.
    forward = Signal()
    base = Signal.like(rd.data, reset_less=True)
    m.d.comb += [
        rd.addr.eq(slot),
        forward.eq(c_valid & (c_slot == slot)),
        wr.addr.eq(c_slot),
        wr.en.eq(c_valid & advance),
    ]
    with m.If(advance):
        m.d.sync += base.eq(Mux(first, 0, Mux(forward, wr.data, rd.data)))
    for n in range(len(lanes)):
        m.d.comb += wr.data[n].eq(base[n] + scaled[n])

    # Output register: the sums stream payload.
    with m.If(advance):
        m.d.sync += [
            sums.valid.eq(c_valid & c_last),
            sums.payload.y.eq(wr.data),
            sums.payload.slot.eq(c_slot),
        ]
