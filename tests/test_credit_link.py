# amaranth: UnusedElaboratable=no
"""CreditLink (hw/dataflow/credit_link.py): order and data under random stalls at both ends, a beat per
cycle with an always-ready consumer, `i.ready` a flip-flop, argument checks. Amaranth simulator, seeded."""

import random

import pytest
from amaranth.sim import Simulator

from hw.dataflow.credit_link import CreditLink


def _run(dut, beats, p_in, p_out, seed):
    rng = random.Random(seed)
    got, cycles = [], [0]

    async def source(ctx):
        for value in beats:
            while rng.random() < p_in:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.payload, value)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        while len(got) < len(beats):
            ready = int(rng.random() >= p_out)
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid and ready:
                got.append(payload)
            cycles[0] += 1
            assert cycles[0] < 20 * len(beats) + 100, "timeout"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return got, cycles[0]


@pytest.mark.parametrize("forward, back", [(1, 1), (2, 1), (3, 2)])
@pytest.mark.parametrize("p_in, p_out", [(0.3, 0.5), (0.0, 0.8), (0.6, 0.0)])
def test_beats_arrive_in_order_under_stalls(forward, back, p_in, p_out):
    rng = random.Random(forward * 10 + back)
    beats = [rng.getrandbits(37) for _ in range(300)] + [0, (1 << 37) - 1]
    got, _ = _run(CreditLink(37, forward=forward, back=back), beats, p_in, p_out, seed=forward + 7 * back)
    assert got == beats


@pytest.mark.parametrize("forward, back", [(1, 1), (2, 1), (3, 3)])
def test_a_beat_per_cycle(forward, back):
    dut = CreditLink(8, forward=forward, back=back)
    beats = [k % 256 for k in range(400)]
    got, cycles = _run(dut, beats, 0.0, 0.0, seed=1)
    assert got == beats
    assert cycles <= len(beats) + dut.latency + 2, cycles


def test_idle_follows_the_beats_in_flight():
    """`idle` is low from a beat's acceptance until it has been read (and its pulse is back)."""
    dut = CreditLink(8, forward=2, back=2)
    trace = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        trace.append((ctx.get(dut.idle), 0))
        ctx.set(dut.i.payload, 5)
        ctx.set(dut.i.valid, 1)
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for _ in range(12):
            trace.append((ctx.get(dut.idle), ctx.get(dut.o.valid)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    read = next(k for k, (_, v) in enumerate(trace) if v)
    assert trace[0][0] == 1
    assert all(idle == 0 for idle, _ in trace[1:read + 1]), trace
    assert read <= 1 + dut.latency and trace[-1][0] == 1, trace


def test_ready_is_a_register():
    """`i.ready` must not follow `o.ready` within a cycle: the link's point."""
    dut = CreditLink(8, forward=2, back=1)
    seen = []

    async def bench(ctx):
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.o.ready, 0)
        for _ in range(3 * dut.depth):
            await ctx.tick()
        # Full now: flip o.ready and look at i.ready in the same cycle, before any edge.
        before = ctx.get(dut.i.ready)
        ctx.set(dut.o.ready, 1)
        await ctx.delay(1e-9)
        seen.append((before, ctx.get(dut.i.ready)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [(0, 0)]


@pytest.mark.parametrize("bad", [dict(forward=0), dict(back=0), dict(forward=9)])
def test_arguments_are_checked(bad):
    with pytest.raises((ValueError, TypeError)):
        CreditLink(8, **bad)
