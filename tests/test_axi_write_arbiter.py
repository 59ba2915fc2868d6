# amaranth: UnusedElaboratable=no
"""AXI4 write arbiter (Amaranth simulator): up to three burst writers share one write port; a slave model
with random AW/W/B stalls (and B responses out of order between masters) ends up with exactly every
writer's words, W beats follow the grant order, and every writer sees its own responses."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hw.bus.axi_write_arbiter import AxiWriteArbiter
from hw.memory.axi_write import AxiBurstWriter


@pytest.mark.parametrize("max_bursts", [2, 8])
@pytest.mark.parametrize("sliced", [False, True, "credit_w"])
@pytest.mark.parametrize("masters", [1, 2, 3])
def test_writers_share_one_port(masters, sliced, max_bursts):
    """With max_bursts 2 the grant FIFO fills (three writers keep two bursts each in flight): the grants
    pending on W never exceed it, and the arbiter's room flag never claims a full FIFO (its Assert)."""
    rng = random.Random(masters)
    arb = AxiWriteArbiter(masters, 32, 64, sliced=bool(sliced), credit_w=sliced == "credit_w",
                          max_bursts=max_bursts)
    writers = [AxiBurstWriter(32, 64, max_burst=4, max_outstanding=2, beats_bits=8) for _ in range(masters)]
    m = Module()
    m.submodules.arb = arb
    for i, w in enumerate(writers):
        m.submodules[f"w{i}"] = w
        wiring.connect(m, w.axi, arb.m[i])
    s = arb.s
    # Disjoint regions per master; commands of 1..9 words.
    cmds = [[(0x10000 * (i + 1) + 64 * k, rng.randint(1, 9)) for k in range(5)] for i in range(masters)]
    words = [[rng.getrandbits(64) for _ in range(sum(b for _, b in c))] for c in cmds]
    want = {}
    for i in range(masters):
        k = 0
        for addr, beats in cmds[i]:
            for b in range(beats):
                want[addr + 8 * b] = words[i][k]
                k += 1
    mem = {}

    def driver(i):
        async def run(ctx):
            j = 0
            for addr, beats in cmds[i]:
                ctx.set(writers[i].cmd.payload, {"addr": addr, "beats": beats})
                ctx.set(writers[i].cmd.valid, 1)
                await ctx.tick().until(writers[i].cmd.ready)
                ctx.set(writers[i].cmd.valid, 0)
                for _ in range(beats):
                    ctx.set(writers[i].data.payload, words[i][j])
                    ctx.set(writers[i].data.valid, 1)
                    await ctx.tick().until(writers[i].data.ready)
                    j += 1
                ctx.set(writers[i].data.valid, 0)
        return run

    async def slave(ctx):
        aws, beat, pending_b = [], 0, []
        for cycle in range(20000):
            ctx.set(s.awready, int(rng.random() < 0.6))
            ctx.set(s.wready, int(rng.random() < 0.6))
            # Answer any finished burst, not only the oldest: B may come out of order across IDs.
            ready_b = [k for k, (when, _) in enumerate(pending_b) if when <= cycle]
            pick = rng.choice(ready_b) if ready_b else None
            ctx.set(s.bvalid, int(pick is not None))
            if pick is not None:
                ctx.set(s.bid, pending_b[pick][1])
            smp = await ctx.tick().sample(s.awvalid, s.awready, s.awaddr, s.awlen, s.awid, s.wvalid, s.wready,
                                          s.wdata, s.wlast, s.bvalid, s.bready)
            (_, _, awv, awr, awaddr, awlen, awid, wv, wr_, wdata, wlast, bv, br) = smp
            if awv and awr:
                aws.append([awaddr, awlen + 1, awid])
                assert len(aws) <= max_bursts
            if wv and wr_:
                a, n, bid = aws[0]
                mem[a + 8 * beat] = wdata
                beat += 1
                assert wlast == (beat == n)
                if wlast:
                    aws.pop(0)
                    beat = 0
                    pending_b.append((cycle + rng.randint(1, 10), bid))
            if bv and br:
                pending_b.pop(pick)
            if len(mem) == len(want) and not pending_b and not aws and cycle > 50:
                return
        raise AssertionError("timeout")

    sim = Simulator(m)
    sim.add_clock(1e-8)
    for i in range(masters):
        sim.add_testbench(driver(i), background=True)
    sim.add_testbench(slave)
    sim.run()
    assert mem == want


def test_credit_w_needs_slices():
    with pytest.raises(ValueError, match="credit_w needs sliced"):
        AxiWriteArbiter(2, 32, 64, credit_w=True)
