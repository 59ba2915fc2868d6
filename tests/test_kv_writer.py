# amaranth: UnusedElaboratable=no
"""The KV writer (Amaranth simulator): k and v beats in the LINEAR unit's order reach DRAM at the bytes
``firmware.kv_cache.KvCacheLayout.token_writes`` names, values and exponent bytes, through the AXI4
write master with byte strobes and a stalling slave; nothing else is written."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from firmware.kv_cache import KvCacheLayout
from hw.units.kv_writer import KvWriter


@pytest.mark.parametrize("data_bits, lanes, kv_heads, d, layer, positions", [
    (64, 4, 2, 8, 1, [5, 6, 7]),          # tiny: a prefill chunk of 3 in layer 1
    (64, 4, 1, 16, 0, [31, 32]),          # across a block boundary
    (128, 8, 3, 24, 2, [100]),            # d not a power of two: 3 exponent rows
    (32, 16, 2, 64, 1, [30, 31, 32, 33]),   # ecp5: a beat is a burst of 4 bus words
])
def test_writes_match_the_layout(data_bits, lanes, kv_heads, d, layer, positions):
    rng = np.random.default_rng(d + len(positions))
    bus = data_bits // 8
    lay = KvCacheLayout(layers=4, kv_heads=kv_heads, head_dim=d, max_context=256, bus_bytes=bus, base=4096)
    t = len(positions)
    k8 = rng.integers(-127, 128, (t, kv_heads, d))
    v8 = rng.integers(-127, 128, (t, kv_heads, d))
    ke = rng.integers(0, 26, (t, kv_heads))
    ve = rng.integers(0, 26, (t, kv_heads))
    want = {}
    for i, p in enumerate(positions):
        for addr, raw in lay.token_writes(layer, p, k8[i], ke[i], v8[i], ve[i]):
            for n, byte in enumerate(raw):
                want[addr + n] = byte
    # The LINEAR unit's order: k heads then v heads, each head's tokens in turn, d / lanes beats each.
    beats = []
    for is_v, vals, exps in ((0, k8, ke), (1, v8, ve)):
        for h in range(kv_heads):
            for i, p in enumerate(positions):
                for b in range(d // lanes):
                    data = sum((int(x) & 0xFF) << (8 * n) for n, x in enumerate(vals[i, h, b * lanes:(b + 1) * lanes]))
                    beats.append({"pos": p, "head": h, "is_v": is_v, "beat": b, "data": data,
                                  "e": int(exps[i, h]), "last": int(b == d // lanes - 1)})
    dut = KvWriter(data_bits=data_bits, lanes=lanes, pos_bits=20, max_heads=8)
    axi = dut.axi
    prng = random.Random(d)
    mem = {}

    async def bench(ctx):
        ctx.set(dut.setup, {"hidden": 0, "layers": 4, "heads": kv_heads, "kv_heads": kv_heads, "head_dim": d,
                            "max_context": 256, "kv_base": 4096, "rope": 0, "score_m": 0, "score_s": 0})
        ctx.set(dut.start.payload, {"layer": layer})
        ctx.set(dut.start.valid, 1)
        await ctx.tick()
        ctx.set(dut.start.valid, 0)
        i, aws, pending_b = 0, [], []
        for cycle in range(20000):
            if i < len(beats):
                ctx.set(dut.kv.payload, beats[i])
            ctx.set(dut.kv.valid, int(i < len(beats)))
            ctx.set(axi.awready, int(prng.random() < 0.7))
            ctx.set(axi.wready, int(prng.random() < 0.7))
            ctx.set(axi.bvalid, int(bool(pending_b) and pending_b[0] <= cycle))
            s = await ctx.tick().sample(dut.kv.valid, dut.kv.ready, axi.awvalid, axi.awready, axi.awaddr, axi.awlen,
                                        axi.wvalid, axi.wready, axi.wdata, axi.wstrb, axi.wlast, axi.bvalid,
                                        dut.idle)
            (_, _, kv_v, kv_r, awv, awr, awaddr, awlen, wv, wr_, wdata, wstrb, wlast, bv, idle) = s
            if kv_v and kv_r:
                i += 1
            if awv and awr:
                assert awlen == max(0, lanes // bus - 1) or awlen == 0
                assert awaddr % bus == 0 or awlen == 0
                aws.append([awaddr, awlen])
            if wv and wr_:
                burst = aws[0]
                base = burst[0]
                for n in range(bus):
                    if wstrb >> n & 1:
                        mem[base + n] = (wdata >> (8 * n)) & 0xFF
                assert wlast == (burst[1] == 0)
                if burst[1] == 0:
                    aws.pop(0)
                    pending_b.append(cycle + prng.randint(1, 5))
                else:
                    burst[0] += bus
                    burst[1] -= 1
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
