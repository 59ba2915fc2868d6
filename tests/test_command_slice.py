# amaranth: UnusedElaboratable=no
"""CommandSlice (Amaranth simulator): every command comes out once, whole and in order under random producer
gaps and consumer stalls, with payloads wider than a share of copies; ``i.ready`` and ``o.valid`` are
registers (they do not follow ``o.ready`` or ``i.valid`` within a cycle); a command takes at most two cycles
with a ready consumer; bad arguments are refused."""

import random

import pytest
from amaranth.sim import Simulator

from hw.dataflow.command_slice import CommandSlice

WIDTH = 250         # not a multiple of the copies: the last share is shorter


def run(p_gap, p_stall, *, n=120, copies=4, seed=0):
    dut = CommandSlice(WIDTH, copies=copies)
    rng = random.Random(seed)
    cmds = [rng.getrandbits(WIDTH) for _ in range(n - 2)] + [0, (1 << WIDTH) - 1]
    got, cycles = [], {"n": 0}

    async def producer(ctx):
        for c in cmds:
            while rng.random() < p_gap:
                ctx.set(dut.i.valid, 0)
                ctx.set(dut.i.payload, rng.getrandbits(WIDTH))      # junk while idle must not land
                await ctx.tick()
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, c)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        while len(got) < n:
            stall = rng.random() < p_stall
            before = ctx.get(dut.i.ready), ctx.get(dut.o.valid)
            ctx.set(dut.o.ready, 1 if stall else 0)
            assert (ctx.get(dut.i.ready), ctx.get(dut.o.valid)) == before
            ctx.set(dut.o.ready, 0 if stall else 1)
            assert (ctx.get(dut.i.ready), ctx.get(dut.o.valid)) == before
            if ctx.get(dut.o.valid) and not stall:
                got.append(ctx.get(dut.o.payload))
            await ctx.tick()
            cycles["n"] += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run_until(1e-6 * 30 * n)
    return cmds, got, cycles["n"]


@pytest.mark.parametrize("p_gap,p_stall,copies", [(0.0, 0.0, 4), (0.4, 0.0, 4), (0.0, 0.5, 1), (0.3, 0.6, 7)])
def test_every_command_once_whole_and_in_order(p_gap, p_stall, copies):
    cmds, got, _ = run(p_gap, p_stall, copies=copies, seed=copies + int(10 * p_gap + 100 * p_stall))
    assert got == cmds


def test_a_command_every_two_cycles_with_a_ready_consumer():
    cmds, got, cycles = run(0.0, 0.0, n=50)
    assert got == cmds and cycles == 2 * 50


@pytest.mark.parametrize("copies", [0, 65, True, 2.0])
def test_bad_copies_are_refused(copies):
    with pytest.raises(ValueError, match="copies"):
        CommandSlice(8, copies=copies)
