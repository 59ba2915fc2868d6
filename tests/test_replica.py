"""hw.replica: register copies behave as one register in simulation and stay apart through synth_ecp5."""

import pytest
from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.replica import REPLICA_ATTR, load_in_shares, registered_copies
from hw.synth import synth_ecp5


class Fanout(wiring.Component):
    """One select bit gating ``width`` data bits, through ``copies`` replicas (or one plain register)."""

    def __init__(self, copies, width=16, replicate=True):
        self.copies, self.width, self.replicate = copies, width, replicate
        super().__init__({"sel": In(1), "d": In(width), "q": Out(width)})

    def elaborate(self, platform):
        m = Module()
        if self.replicate:
            regs = registered_copies(m, self.sel, self.copies, "sel")
        else:
            regs = []
            for i in range(self.copies):
                reg = Signal(name=f"sel_r{i}")
                m.d.sync += reg.eq(self.sel)
                regs.append(reg)
        per = self.width // self.copies
        parts = [self.d[i * per:(i + 1) * per] & regs[i].replicate(per) for i in range(self.copies)]
        m.d.sync += self.q.eq(Cat(*parts))
        return m


def test_copies_follow_the_value_a_cycle_late():
    m = Module()
    value = Signal(3)
    copies = registered_copies(m, value, 3, "v", init=5)
    assert [c.name for c in copies] == ["v_r0", "v_r1", "v_r2"]
    assert all(c.attrs[REPLICA_ATTR] == 1 and c.shape().width == 3 for c in copies)
    sim = Simulator(m)
    sim.add_clock(1e-6)
    seen = []

    async def bench(ctx):
        assert [ctx.get(c) for c in copies] == [5, 5, 5]
        for v in (1, 6, 2, 7):
            ctx.set(value, v)
            await ctx.tick()
            seen.append([ctx.get(c) for c in copies])

    sim.add_testbench(bench)
    sim.run()
    assert seen == [[1] * 3, [6] * 3, [2] * 3, [7] * 3]


@pytest.mark.parametrize("count", [0, 4097, 2.0, True])
def test_bad_count_is_refused(count):
    with pytest.raises(ValueError, match="count must be an integer in"):
        registered_copies(Module(), Signal(), count, "x")


def test_synthesis_keeps_the_copies_apart():
    # Without the attribute Yosys merges the four identical registers into one; with it all four stay.
    plain = synth_ecp5(Fanout(4, replicate=False), "fanout_plain")
    kept = synth_ecp5(Fanout(4), "fanout_kept")
    assert kept.ff - plain.ff == 3, (plain.ff, kept.ff)


def test_load_in_shares_loads_each_share_under_its_enable():
    """10 bits in 3 shares (4, 4, 2 bits): each enable loads exactly its share, the rest keep their bits."""
    m = Module()
    target, source, en = Signal(10), Signal(10), Signal(3)
    load_in_shares(m, target, source, [en[0], en[1], en[2]])
    seen = []

    async def bench(ctx):
        for enables, value in [(0b000, 0x3FF), (0b001, 0x3FF), (0b100, 0x155), (0b010, 0x2AA), (0b111, 0)]:
            ctx.set(en, enables)
            ctx.set(source, value)
            await ctx.tick()
            seen.append(ctx.get(target))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [0x000, 0x00F, 0x10F, 0x1AF, 0x000]


@pytest.mark.parametrize("width, enables", [(9, 2), (10, 0)])
def test_load_in_shares_refuses_a_width_mismatch_or_no_enables(width, enables):
    with pytest.raises(ValueError, match="load_in_shares"):
        load_in_shares(Module(), Signal(10), Signal(width), [Signal() for _ in range(enables)])
