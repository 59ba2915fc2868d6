"""The back half shared by the TLMM engines: adder tree, bit-plane weighting, accumulation, output.

Both engines produce N x T signed lookup values per step in registers; from there on the arithmetic and
the pipeline are identical, so they are built here once.
"""

from amaranth.hdl import Signal, signed
from amaranth.lib import data, memory

from golden.tlmm import TABLE_ENTRY_BITS

__all__ = ["tree_plan", "reduce_and_accumulate"]


def tree_plan(tables):
    """Adder levels per register stage of the lane adder tree: two levels per stage."""
    levels = max(0, (tables - 1).bit_length())
    return [min(2, levels - i) for i in range(0, levels, 2)]


def reduce_and_accumulate(m, stage, en, valid, ctrl, ctrl_layout, lookups, *, acc_bits, depth, sums):
    """Build stages D (tree), P (shift/negate + accumulator read), Q (accumulate) and O (output).

    Parameters
    ----------
    m : Module
    stage : callable
        ``stage(name, shape, value)`` returns a register loaded with ``value`` when ``en``.
    en : Value
        Pipeline advance.
    valid, ctrl :
        The registered valid bit and control struct (fields ``slot``, ``first``, ``last``, ``shift``,
        ``negate``) travelling with ``lookups``.
    lookups : list of list of Value
        ``lookups[n][t]``: registered signed lookup values of lane n.
    acc_bits, depth : int
        Accumulator width and number of accumulator slots.
    sums : stream interface
        The engine's output stream (payload fields ``y`` and ``slot``).
    """
    plan = tree_plan(len(lookups[0]))
    level = lookups
    for s, depth_s in enumerate(plan):
        for _ in range(depth_s):
            level = [[row[i] + row[i + 1] if i + 1 < len(row) else row[i] for i in range(0, len(row), 2)]
                     for row in level]
        width = TABLE_ENTRY_BITS + sum(plan[:s + 1])
        level = [[stage(f"d{s}_{n}_{i}", signed(width), v) for i, v in enumerate(row)]
                 for n, row in enumerate(level)]
        valid = stage(f"d{s}_valid", 1, valid)
        ctrl = stage(f"d{s}_ctrl", ctrl_layout, ctrl)
    lane_sums = [row[0] for row in level]

    # P: apply the bit-plane weight; issue the accumulator read for this step's slot.
    acc_shape = signed(acc_bits)
    p_valid = stage("p_valid", 1, valid)
    p_ctrl = stage("p_ctrl", ctrl_layout, ctrl)
    p_contrib = []
    for n, v in enumerate(lane_sums):
        shifted = Signal(acc_shape, name=f"shifted_{n}")
        m.d.comb += shifted.eq(v << ctrl.shift)
        with m.If(ctrl.negate):
            m.d.comb += shifted.eq(-(v << ctrl.shift))
        p_contrib.append(stage(f"p_{n}", acc_shape, shifted))

    lanes = len(lookups)
    acc_layout = data.ArrayLayout(acc_shape, lanes)
    m.submodules.acc = acc_mem = memory.Memory(shape=acc_layout, depth=depth, init=[])
    wr = acc_mem.write_port()
    # Transparent: a slot updated on consecutive cycles reads the value written in the same cycle.
    rd = acc_mem.read_port(domain="sync", transparent_for=(wr,))
    m.d.comb += [rd.addr.eq(p_ctrl.slot), rd.en.eq(en)]

    # Q: accumulate and write back; a finished slot goes to the output register.
    q_valid = stage("q_valid", 1, p_valid)
    q_ctrl = stage("q_ctrl", ctrl_layout, p_ctrl)
    q_contrib = [stage(f"q_{n}", acc_shape, v) for n, v in enumerate(p_contrib)]
    q_new = Signal(acc_layout)
    for n in range(lanes):
        m.d.comb += q_new[n].eq(q_contrib[n] + rd.data[n])
        with m.If(q_ctrl.first):
            m.d.comb += q_new[n].eq(q_contrib[n])
    m.d.comb += [wr.addr.eq(q_ctrl.slot), wr.data.eq(q_new), wr.en.eq(en & q_valid)]

    # O: output register (the sums stream payload).
    with m.If(en):
        m.d.sync += [
            sums.valid.eq(q_valid & q_ctrl.last),
            sums.payload.y.eq(q_new),
            sums.payload.slot.eq(q_ctrl.slot),
        ]
