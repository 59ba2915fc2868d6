# amaranth: UnusedElaboratable=no
"""SkidBuffer (Amaranth simulator): every beat comes out once and in order under random producer gaps and
consumer stalls, ``i.ready`` never depends on ``o.ready`` in the same cycle, and with an always-ready
consumer one beat leaves per cycle after one cycle of latency."""

import random

import pytest
from amaranth.lib import data
from amaranth.sim import Simulator

from hw.dataflow.skid import SkidBuffer
from hw.replica import REPLICA_ATTR


def run(p_gap, p_stall, n=200, seed=0):
    dut = SkidBuffer(16)
    rng = random.Random(seed)
    beats = [rng.randrange(1 << 16) for _ in range(n)]
    got, cycles = [], {"n": 0}

    async def producer(ctx):
        for b in beats:
            while rng.random() < p_gap:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, b)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        while len(got) < n:
            stall = rng.random() < p_stall
            ctx.set(dut.o.ready, 0 if stall else 1)
            # Registered ready: it must not follow o.ready within the cycle.
            ready_before = ctx.get(dut.i.ready)
            ctx.set(dut.o.ready, 1 if stall else 0)
            assert ctx.get(dut.i.ready) == ready_before
            ctx.set(dut.o.ready, 0 if stall else 1)
            if ctx.get(dut.o.valid) and not stall:
                got.append(ctx.get(dut.o.payload))
            await ctx.tick()
            cycles["n"] += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run_until(1e-6 * 20 * n)
    return beats, got, cycles["n"]


@pytest.mark.parametrize("p_gap,p_stall", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.4), (0.3, 0.5)])
def test_every_beat_once_in_order(p_gap, p_stall):
    beats, got, _ = run(p_gap, p_stall, seed=int(10 * p_gap + 100 * p_stall))
    assert got == beats


def test_full_rate_after_one_cycle():
    beats, got, cycles = run(0.0, 0.0, n=100)
    assert got == beats and cycles == 100 + 1


def test_field_copies_always_equal_the_output_field():
    layout = data.StructLayout({"y": 12, "slot": 3})
    dut = SkidBuffer(layout, copy_field="slot", copies=2)
    assert all(c.attrs[REPLICA_ATTR] == 1 for c in dut.field_copies)
    rng = random.Random(7)
    checked = {"n": 0}

    async def bench(ctx):
        for _ in range(300):
            ctx.set(dut.i.valid, rng.random() < 0.7)
            ctx.set(dut.i.payload, {"y": rng.randrange(1 << 12), "slot": rng.randrange(8)})
            ctx.set(dut.o.ready, rng.random() < 0.6)
            await ctx.tick()
            slot = ctx.get(dut.o.payload.slot)
            assert [ctx.get(c) for c in dut.field_copies] == [slot, slot]
            checked["n"] += ctx.get(dut.o.valid)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert checked["n"] > 100


@pytest.mark.parametrize("kwargs,match", [
    ({"copy_field": "tile", "copies": 1}, "not a field"),
    ({"copy_field": "slot", "copies": 0}, r"copies must be an integer in \[1, 16\]"),
    ({"copies": 2}, r"copies must be an integer in \[0, 0\]"),
])
def test_bad_copy_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SkidBuffer(data.StructLayout({"y": 12, "slot": 3}), **kwargs)
