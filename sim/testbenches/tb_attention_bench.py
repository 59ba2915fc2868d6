"""cocotb testbench running ``hw.attention.bench_top.AttentionBenchTop`` at Verilator speed (clock inside the
model, ``sim.clocked.build_clocked``) for ``trillium bench attention``.

Environment: ``BENCH_JOB``, the path of a JSON job written by ``firmware.bench_attention``: ``image``
(path of the raw DRAM image), ``bus_bytes``, ``chunk``, ``cases`` (a list of ``{"pos", "count", "q",
"expected"}``: first position, number of queries, query words and golden output beats in the engine's
order) and ``report``.

The DRAM image and the queries are written through ``load`` (Python, one word per cycle, not timed); then
``go`` is pulsed and the testbench waits in ``Timer`` chunks for ``done``, reads the counters and every
output beat, and checks them against the golden ones.
"""

import json
import os
import time

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly, Timer
from cocotb.utils import get_sim_time

from hw.attention.bench_top import LoadTarget

with open(os.environ["BENCH_JOB"]) as _f:
    JOB = json.load(_f)
CHUNK_CYCLES = 2000
PERIOD_NS = 10


async def load(dut, target, words):
    for addr, word in enumerate(words):
        dut.load__payload.value = target | (addr << 1) | (word << 27)
        dut.load__valid.value = 1
        await FallingEdge(dut.clk)
    dut.load__valid.value = 0


def _signed32(v):
    return v - (1 << 32) if v >> 31 else v


@cocotb.test()
async def test_bench(dut):
    bus = JOB["bus_bytes"]
    with open(JOB["image"], "rb") as f:
        raw = f.read()
    dut.go.value = 0
    dut.rst.value = 1
    await FallingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    await load(dut, LoadTarget.DRAM, [int.from_bytes(raw[i:i + bus], "little") for i in range(0, len(raw), bus)])
    report = []
    for case in JOB["cases"]:
        await load(dut, LoadTarget.QUERIES, case["q"])
        dut.pos.value = case["pos"]
        dut.count.value = case["count"]
        dut.n_out.value = len(case["expected"])
        dut.go.value = 1
        await FallingEdge(dut.clk)
        dut.go.value = 0
        start_ns, start_wall = get_sim_time("ns"), time.perf_counter()
        while True:
            await Timer(CHUNK_CYCLES * PERIOD_NS, unit="ns")
            await ReadOnly()
            if int(dut.done.value):
                break
            assert (get_sim_time("ns") - start_ns) / PERIOD_NS < 100_000_000, "timeout"
        wall = time.perf_counter() - start_wall
        sim_cycles = (get_sim_time("ns") - start_ns) / PERIOD_NS
        got = {k: int(getattr(dut, k).value) for k in ("cycles", "dram_beats", "violation", "error")}
        await FallingEdge(dut.clk)
        assert got["violation"] == 0 and got["error"] == 0, got
        for addr, want in enumerate(case["expected"]):
            dut.out_addr.value = addr
            await Timer(1, unit="ns")
            word = int(dut.out_data.value)
            beat = [_signed32((word >> (32 * i)) & 0xFFFFFFFF) for i in range(JOB["chunk"])]
            assert beat == want, f"pos {case['pos']}: output beat {addr} differs from golden"
        await FallingEdge(dut.clk)
        report.append({"pos": case["pos"], "count": case["count"], **got, "wall_s": wall, "sim_cycles": sim_cycles})
    with open(JOB["report"], "w") as f:
        json.dump(report, f)
