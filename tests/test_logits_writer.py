# amaranth: UnusedElaboratable=no
"""The logits writer (Amaranth simulator): LM-head beats in (row tile, token) order land at
``logits + (token * stride + tile * lanes) * 4`` as int32, on buses narrower and wider than a beat, with a
stalling AXI slave and an always-ready one, beats offered back to back and sparsely; nothing else is
written, and ``idle`` rises only once every beat is written."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.dram_format import logits_stride
from hw.units.logits_writer import LogitsWriter


@pytest.mark.parametrize("ready_p, offer_p", [(0.7, 1.0), (1.0, 1.0), (1.0, 0.05)],
                         ids=["stalling", "always-ready", "sparse-beats"])
@pytest.mark.parametrize("data_bits, lanes, vocab, tokens", [(64, 4, 50, 3), (256, 4, 13, 2), (64, 16, 40, 1)])
def test_logits_land_where_the_driver_reads(data_bits, lanes, vocab, tokens, ready_p, offer_p):
    rng = np.random.default_rng(vocab)
    stride = logits_stride(vocab, lanes)
    tiles = stride // lanes
    logits = rng.integers(-(1 << 31), 1 << 31, (tokens, stride))
    base = 8192
    want = {}
    for t in range(tokens):
        for i, v in enumerate(logits[t]):
            for n in range(4):
                want[base + 4 * (t * stride + i) + n] = (int(v) >> (8 * n)) & 0xFF
    beats = [{"token": t, "tile": r, "data": sum((int(v) & 0xFFFFFFFF) << (32 * n)
                                                 for n, v in enumerate(logits[t, r * lanes:(r + 1) * lanes]))}
             for r in range(tiles) for t in range(tokens)]
    dut = LogitsWriter(data_bits=data_bits, lanes=lanes, max_tokens=8, max_row_tiles=64)
    axi, bus = dut.axi, data_bits // 8
    prng = random.Random(vocab)
    mem = {}

    async def bench(ctx):
        ctx.set(dut.start.payload, {"addr": base, "tiles": tiles})
        ctx.set(dut.start.valid, 1)
        await ctx.tick()
        ctx.set(dut.start.valid, 0)
        i, aws, beat, pending_b, offered = 0, [], 0, [], False
        for cycle in range(20000):
            if i < len(beats):
                ctx.set(dut.lg.payload, beats[i])
            # A beat offered is held until taken (AXI-stream rule); sparse offers leave the writer idle
            # between beats, so a premature `idle` ends the run with a beat unwritten.
            offered = offered or (i < len(beats) and prng.random() < offer_p)
            ctx.set(dut.lg.valid, int(offered))
            ctx.set(axi.awready, int(prng.random() < ready_p))
            ctx.set(axi.wready, int(prng.random() < ready_p))
            ctx.set(axi.bvalid, int(bool(pending_b) and pending_b[0] <= cycle))
            s = await ctx.tick().sample(dut.lg.valid, dut.lg.ready, axi.awvalid, axi.awready, axi.awaddr, axi.awlen,
                                        axi.wvalid, axi.wready, axi.wdata, axi.wstrb, axi.wlast, axi.bvalid, dut.idle)
            (_, _, lv, lr, awv, awr, awaddr, awlen, wv, wr_, wdata, wstrb, wlast, bv, idle) = s
            if lv and lr:
                i += 1
                offered = False
            if awv and awr:
                aws.append([awaddr, awlen + 1])
            if wv and wr_:
                a, n = aws[0]
                for k in range(bus):
                    if wstrb >> k & 1:
                        mem[a + bus * beat + k] = (wdata >> (8 * k)) & 0xFF
                beat += 1
                if wlast:
                    assert beat == n
                    aws.pop(0)
                    beat = 0
                    pending_b.append(cycle + prng.randint(1, 4))
            if bv:
                pending_b.pop(0)
            if i == len(beats) and idle and not pending_b and cycle > 5:
                break
        else:
            raise AssertionError("writer did not finish")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert mem == want
