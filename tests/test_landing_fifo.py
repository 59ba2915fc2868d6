# amaranth: UnusedElaboratable=no
"""LandingFifo (Amaranth simulator): entries come out in order under random writes (never beyond the
room the writer counts) and random reads, at depths 1, 2, 5 (not a power of two), 8, 32 (the deepest
whose ``r_rdy`` comes from a thermometer) and 33 (from the level's adder), the write-heavy cases filled to the top; an
entry is readable the cycle after its write; ``level`` and ``r_rdy`` follow the count in every cycle;
arguments are checked."""

import random

import pytest
from amaranth.sim import Simulator

from hw.dataflow.landing_fifo import LATENCY, LandingFifo


def _run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("depth, p_write, p_read", [(1, 0.7, 0.5), (2, 0.9, 0.9), (5, 0.8, 0.4), (8, 0.5, 0.8),
                                                   (32, 0.9, 0.3), (33, 0.9, 0.3)])
def test_order_under_random_traffic(depth, p_write, p_read):
    dut = LandingFifo(width=12, depth=depth)
    rng = random.Random(depth)
    sent, got, levels = [], [], set()

    async def bench(ctx):
        held = 0                               # the writer's count: written and not yet read
        for _ in range(600):
            write = held < depth and rng.random() < p_write
            value = rng.getrandbits(12)
            ctx.set(dut.w_en, write)
            ctx.set(dut.w_data, value)
            ctx.set(dut.r_en, rng.random() < p_read)
            assert ctx.get(dut.level) == held
            assert ctx.get(dut.r_rdy) == (held != 0)
            levels.add(held)
            read = ctx.get(dut.r_rdy) and ctx.get(dut.r_en)
            if read:
                got.append(ctx.get(dut.r_data))
            if write:
                sent.append(value)
            await ctx.tick()
            held += write - read
        assert got == sent[:len(got)]
        assert len(got) > 100
        if p_write > p_read:                        # the traffic meant to fill it: every level visited
            assert levels == set(range(depth + 1))

    _run(dut, bench)


def test_latency_and_one_entry_per_cycle():
    dut = LandingFifo(width=8, depth=2)

    async def bench(ctx):
        assert not ctx.get(dut.r_rdy)
        ctx.set(dut.w_en, 1)
        ctx.set(dut.w_data, 1)
        await ctx.tick()                       # written
        assert LATENCY == 1 and ctx.get(dut.r_rdy) and ctx.get(dut.r_data) == 1
        # Read and write in every cycle: the head changes every cycle, the level stays 1.
        ctx.set(dut.r_en, 1)
        for v in range(2, 12):
            ctx.set(dut.w_data, v)
            await ctx.tick()
            assert ctx.get(dut.r_rdy) and ctx.get(dut.r_data) == v and ctx.get(dut.level) == 1
        ctx.set(dut.w_en, 0)
        await ctx.tick()
        assert not ctx.get(dut.r_rdy) and ctx.get(dut.level) == 0

    _run(dut, bench)


@pytest.mark.parametrize("bad", [{"width": 0, "depth": 4}, {"width": 8, "depth": 0}, {"width": 8, "depth": 2.0}])
def test_arguments_are_validated(bad):
    with pytest.raises((ValueError, TypeError)):
        LandingFifo(**bad)
