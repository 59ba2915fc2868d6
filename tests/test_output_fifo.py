# amaranth: UnusedElaboratable=no
"""``output_fifo`` (Amaranth simulator, seeded): a free-running pipeline of a few stages ends in the FIFO,
and beats enter only while ``take`` is high. Under a producer that always wants to send and a consumer
with long random stalls, every beat comes out once and in order and the FIFO never holds more than its
depth (it overwrites silently when overfilled), for reads counted at once or late (``back``) and beats
counted at once or late (``lag``); with a consumer that is always ready, a beat goes through per cycle."""

import random

import pytest
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import stream
from amaranth.sim import Simulator

from hw.vector.epilogue import output_fifo

WIDTH = 16


class _Pipeline(Elaboratable):
    def __init__(self, stages, back, lag):
        self.stages, self.back, self.lag = stages, back, lag
        self.want = Signal()                     # the producer has a beat this cycle
        self.data = Signal(WIDTH)                # ... and this is it
        self.take = Signal(init=1)
        self.o = stream.Signature(WIDTH).create()
        self.fifo = None                         # the LandingFifo, once elaborated

    def elaborate(self, platform):
        m = Module()
        fire = Signal()
        m.d.comb += fire.eq(self.want & self.take)
        valid, beat = fire, self.data
        for k in range(self.stages):
            v, b = Signal(name=f"v{k}"), Signal(WIDTH, name=f"b{k}")
            m.d.sync += [v.eq(valid), b.eq(beat)]
            valid, beat = v, b
        output_fifo(m, self.take, fire, valid, beat, self.o, self.stages, back=self.back, lag=self.lag)
        self.fifo = m.submodules.out_fifo
        return m


def _run(stages, back, lag, cycles, p_ready, seed):
    """Sent and received beats, and the FIFO's largest level and its depth."""
    dut = _Pipeline(stages, back, lag)
    rng = random.Random(seed)
    sent, got, worst = [], [], [0]

    async def bench(ctx):
        count, stall = 0, 0
        for _ in range(cycles):
            ctx.set(dut.want, 1)
            ctx.set(dut.data, count)
            if stall:
                stall -= 1
                ready = 0
            else:
                ready = int(rng.random() < p_ready)
                if not ready and rng.random() < 0.2:
                    stall = rng.randrange(1, 30)   # a long stall fills the FIFO
            ctx.set(dut.o.ready, ready)
            if ctx.get(dut.take):
                sent.append(count)
                count = (count + 1) % (1 << WIDTH)
            if ready and ctx.get(dut.o.valid):
                got.append(ctx.get(dut.o.payload))
            await ctx.tick()
            worst[0] = max(worst[0], ctx.get(dut.fifo.level))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return sent, got, worst[0], dut.fifo.depth


@pytest.mark.parametrize("stages, back, lag", [(1, 0, 0), (4, 0, 0), (4, 1, 0), (4, 0, 1), (4, 1, 1), (7, 2, 1)])
def test_every_beat_once_in_order_and_never_overfilled(stages, back, lag):
    sent, got, worst, depth = _run(stages, back, lag, 3000, 0.6, seed=stages * 10 + back * 3 + lag)
    assert got == sent[:len(got)]
    assert len(sent) - len(got) <= depth + stages      # what is left is in flight or held
    assert worst == depth                               # long stalls filled the FIFO to the top
    assert len(got) > 500


@pytest.mark.parametrize("stages, back, lag", [(4, 0, 0), (4, 1, 0), (4, 1, 1)])
def test_a_beat_per_cycle_when_the_consumer_is_always_ready(stages, back, lag):
    sent, got, _, _ = _run(stages, back, lag, 400, 1.0, seed=1)
    assert got == sent[:len(got)]
    assert len(sent) == 400                             # `take` never dropped
