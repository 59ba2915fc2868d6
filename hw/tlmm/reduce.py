"""The back half shared by every ternary MAC engine: adder tree, bit-plane shift, accumulation, output.

The TLMM engines (table lookups) and the adder-tree baseline (gated inputs) differ only in how they
produce each lane's terms; from the terms on, the datapath is this one function, so cost comparisons
between them measure the front ends alone.

Terms arrive as ``(value, negative)`` pairs per lane. Two ways of applying the signs, each the
cheaper one for one kind of front end (measured with Yosys synth_ecp5):

``"propagate"`` (table lookups)
    Signs travel up the tree: a node combines ``(a, sa)`` and ``(b, sb)`` into ``(a + b', sa)``, ``b'``
    being ``b`` or ``-b`` as ``sa ^ sb`` says, computed as ``a + (b ^ m) + m`` on one carry chain. The
    root's sign becomes an add/subtract in the accumulator adder. Leaves need no logic at all.
``"carry"`` (gated inputs)
    A negative leaf becomes its one's complement with a pending ``+1`` that a tree adder absorbs as its
    carry-in; the XOR merges with the leaf's own gating logic.

With ``adders`` (:class:`hw.tlmm.ecp5_adder.Adders`, propagate mode only; the lookup engine passes
them) the adders are built as ECP5 carry cells with the logic around them inside the cells' LUTs
(plain Amaranth arithmetic of the same structure off ECP5):

* every tree node's ``b ^ m`` (Yosys maps a dynamic XOR to a LUT4 per bit of its own);
* the root sign and the bit-plane shift: the lane sum is one's-complemented by its sign and shifted
  with the sign filling the vacated bits (``(v << k) ^ s``), the XOR merged into the first shift
  level; the last shift level (by 4) is the operand mux of the accumulator adder, whose carry-in is
  the sign.
"""

from amaranth.hdl import Cat, Const, Mux, Shape, Signal, signed
from amaranth.lib import data
from amaranth.lib.memory import Memory

from .layouts import SHIFT_BITS

__all__ = ["LEVELS_PER_STAGE", "tree_stages", "reduce_and_accumulate"]

#: Adder-tree levels between pipeline registers.
LEVELS_PER_STAGE = 2


def tree_stages(terms):
    """Pipeline register stages of a tree over ``terms`` leaves."""
    levels = max(0, (terms - 1).bit_length())
    return -(-levels // LEVELS_PER_STAGE)


def _flip(value, negative):
    """``value`` or its one's complement (``-value - 1``)."""
    return (value.as_unsigned() ^ negative.replicate(len(value))).as_signed()


def reduce_and_accumulate(m, advance, valid, meta, lanes, *, acc_bits, depth, sums, signs="propagate",
                          adders=None):
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
    lanes : list of list of (Value, Value)
        Per lane: ``(value, negative)`` terms; the lane sum is ``sum(-v if neg else v)``.
    acc_bits, depth : int
        Accumulator width and slots.
    signs : str
        ``"propagate"`` or ``"carry"`` (see the module docstring).
    sums : stream interface
        Output stream with payload fields ``y`` and ``slot``.
    adders : hw.tlmm.ecp5_adder.Adders, optional
        ``"propagate"`` only: build the tree adders and the accumulator adder with these, folding each
        node's operand XOR, the lane sign and the last shift level into the adders' LUTs (see the module
        docstring). ``None`` leaves every adder to Yosys.
    """
    def register(values, name):
        regs = []
        for i, v in enumerate(values):
            r = Signal(Shape.cast(v.shape()), name=f"{name}_{i}", reset_less=True)
            with m.If(advance):
                m.d.sync += r.eq(v)
            regs.append(r)
        return regs

    if signs not in ("propagate", "carry"):
        raise ValueError(f"signs must be 'propagate' or 'carry', got {signs!r}")
    if adders is not None and signs != "propagate":
        raise ValueError("adders need signs='propagate'")
    meta = list(meta)
    # Each term is (value, sign, pending carries); in carry mode signs are applied at the leaves.
    if signs == "carry":
        lanes = [[(Mux(g, -v, v) if i == 0 else _flip(v, g), Const(0), [] if i == 0 else [g])
                  for i, (v, g) in enumerate(terms)] for terms in lanes]
    else:
        lanes = [[(v, g, []) for v, g in terms] for terms in lanes]
    level = 0
    while len(lanes[0]) > 1:
        next_lanes = []
        for n, terms in enumerate(lanes):
            summed = []
            for i in range(0, len(terms) - 1, 2):
                (a, sa, ca), (b, sb, cb) = terms[i], terms[i + 1]
                # One named signal per adder: otherwise alumacc merges the tree into one $macc that
                # maccmap builds from LUTs at about twice the area of CCU2C chains.
                width = max(len(a), len(b)) + 1
                name = f"sum{level}_{n}_{i // 2}"
                pending = ca + cb
                if signs == "carry":
                    total = Signal(signed(width), name=name)
                    m.d.comb += total.eq(a + b + pending.pop(0))
                else:
                    sub = Signal(name=f"sub{level}_{n}_{i // 2}")
                    m.d.comb += sub.eq(sa ^ sb)
                    if adders is None:
                        total = Signal(signed(width), name=name)
                        m.d.comb += total.eq(a + _flip(b, sub) + sub)
                    else:
                        total = adders.xor_add(m, name, a, b, sub, sub, width)
                summed.append((total, sa, pending))
            if len(terms) % 2:
                summed.append(terms[-1])
            next_lanes.append(summed)
        lanes = next_lanes
        level += 1
        if level % LEVELS_PER_STAGE == 0 or len(lanes[0]) == 1:
            lanes = [[(register([v], f"l{level}_v{n}_{i}")[0], register([g], f"l{level}_s{n}_{i}")[0],
                       register(c, f"l{level}_c{n}_{i}")) for i, (v, g, c) in enumerate(t)]
                     for n, t in enumerate(lanes)]
            meta = register(meta, f"l{level}_meta")
            valid_r = Signal(name=f"l{level}_valid")
            with m.If(advance):
                m.d.sync += valid_r.eq(valid)
            valid = valid_r
    if level == 0:  # a single term per lane: still register it once
        lanes = [[(register([v], f"l0_v{n}")[0], register([g], f"l0_s{n}")[0], c) for v, g, c in t]
                 for n, t in enumerate(lanes)]
        meta = register(meta, "l0_meta")
        valid_r = Signal(name="l0_valid")
        with m.If(advance):
            m.d.sync += valid_r.eq(valid)
        valid = valid_r

    slot, first, last, shift = meta
    if adders is not None:
        _folded_accumulate(m, advance, valid, (slot, first, last, shift), lanes, acc_bits=acc_bits, depth=depth,
                           sums=sums, adders=adders)
        return
    # Bit-plane weight: a log shifter (one 2:1 mux level per shift bit), registered before the
    # accumulator adder so no mux sits in a carry-chain stage.
    scaled, lane_signs = [], []
    for n, terms in enumerate(lanes):
        v, negative, pending = terms[0]
        assert not pending, "every carry must be absorbed by an adder"
        lane_signs.append(negative)
        for i in range(SHIFT_BITS):
            nxt = Signal(signed(len(v) + (1 << i)), name=f"shift{i}_{n}")
            m.d.comb += nxt.eq(Mux(shift[i], v << (1 << i), v))
            v = nxt
        scaled.append(v)
    scaled = register(scaled, "scaled")
    lane_signs = register(lane_signs, "sign")
    c_slot, c_last = register([slot, last], "c_meta")
    c_valid = Signal()
    with m.If(advance):
        m.d.sync += c_valid.eq(valid)

    m.submodules.acc = acc = Memory(shape=data.ArrayLayout(signed(acc_bits), len(lanes)), depth=depth, init=[])
    wr = acc.write_port()
    rd = acc.read_port(domain="comb")
    base = _accumulator(m, advance, wr, rd, slot, first, c_valid, c_slot)
    for n in range(len(lanes)):
        # base - scaled as base + ~scaled + 1: the lane's sign is the adder's carry-in.
        m.d.comb += wr.data[n].eq(base[n] + _flip(scaled[n], lane_signs[n]) + lane_signs[n])
    _output(m, advance, sums, c_valid, c_last, c_slot, wr)


def _accumulator(m, advance, wr, rd, slot, first, c_valid, c_slot):
    """Accumulator read (with forwarding) and write; returns the registered ``base``."""
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
    return base


def _output(m, advance, sums, c_valid, c_last, c_slot, wr):
    """Output register: the sums stream payload."""
    with m.If(advance):
        m.d.sync += [
            sums.valid.eq(c_valid & c_last),
            sums.payload.y.eq(wr.data),
            sums.payload.slot.eq(c_slot),
        ]


def _folded_accumulate(m, advance, valid, meta, lanes, *, acc_bits, depth, sums, adders):
    """Shift, sign and accumulate with the sign and the last shift level inside the accumulator adder.

    The lane sum ``v`` with sign ``s`` becomes ``u = v ^ s`` (one's complement if negative), shifted
    with ``s`` filling the vacated low bits, so ``u << k`` is ``(v << k) ^ s`` and ``+ s`` (the carry-in)
    completes the negation. The XOR merges into the first shift level's LUTs (four inputs), the second
    level is a plain 2:1 mux, and the third (shift by 4) is the operand mux of the accumulator adder
    (:meth:`~hw.tlmm.ecp5_adder.Adders.mux_add`).
    """
    def register(value, name):
        r = Signal(Shape.cast(value.shape()), name=name, reset_less=True)
        with m.If(advance):
            m.d.sync += r.eq(value)
        return r

    slot, first, last, shift = meta
    scaled, lane_signs = [], []
    for n, terms in enumerate(lanes):
        v, s, pending = terms[0]
        assert not pending, "every carry must be absorbed by an adder"
        u = _flip(v, s)
        for i in range(SHIFT_BITS - 1):
            nxt = Signal(signed(len(u) + (1 << i)), name=f"shift{i}_{n}")
            m.d.comb += nxt.eq(Mux(shift[i], Cat(s.replicate(1 << i), u).as_signed(), u))
            u = nxt
        scaled.append(register(u, f"scaled_{n}"))
        lane_signs.append(register(s, f"sign_{n}"))
    c_slot, c_last, c_top = (register(v, f"c_meta_{i}") for i, v in enumerate((slot, last, shift[SHIFT_BITS - 1])))
    c_valid = Signal()
    with m.If(advance):
        m.d.sync += c_valid.eq(valid)

    m.submodules.acc = acc = Memory(shape=data.ArrayLayout(signed(acc_bits), len(lanes)), depth=depth, init=[])
    wr = acc.write_port()
    rd = acc.read_port(domain="comb")
    base = _accumulator(m, advance, wr, rd, slot, first, c_valid, c_slot)
    top = 1 << (SHIFT_BITS - 1)
    for n in range(len(lanes)):
        u, s = scaled[n], lane_signs[n]
        total = adders.mux_add(m, f"acc_add_{n}", base[n], Cat(s.replicate(top), u).as_signed(), u, c_top, s,
                               acc_bits)
        m.d.comb += wr.data[n].eq(total)
    _output(m, advance, sums, c_valid, c_last, c_slot, wr)

