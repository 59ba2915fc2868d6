"""cocotb testbench running ``hw.memory.MemoryBenchTop`` at Verilator speed for the memory benchmark.

The model is built with ``sim.clocked.build_clocked``: its clock runs inside Verilator.

Environment (from ``run_cocotb(extra_env=...)``):

``BENCH_JOB``
    Path of a JSON job written by ``firmware.bench_memory``: ``runs``, a list of ``{name, image,
    commands, matrices, acts, n_sums, checksum, repeat}``, and ``report``, the path for the results.

For each run the memories are written through ``load`` (Python, one word per cycle, not timed), then
``go`` is pulsed ``repeat`` times; each time the testbench waits in ``Timer`` chunks of ``CHUNK`` cycles for
``done`` and checks the checksum of the sums against the golden one. The report holds, per run, the
cycles from ``go`` to ``done``, the DRAM beats in them, and the wall time and simulated cycles of the
timed part (the waits, including the overshoot of the last chunk).
"""

import json
import os
import time

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly, Timer
from cocotb.utils import get_sim_time

from hw.memory.bench_top import LoadTarget, matrix_entry_layout
from hw.memory.weight_buffer import tile_command_layout

JOB = json.loads(open(os.environ["BENCH_JOB"]).read())
P = JOB["params"]
CHUNK = 1000
PERIOD_NS = 10
CMD = tile_command_layout(32, 24)
ENTRY = matrix_entry_layout(P["max_tokens"])


def x_bits(xs):
    return sum((v & 0xFF) << (8 * i) for i, v in enumerate(xs))


async def load(dut, target, words):
    for addr, word in enumerate(words):
        dut.load__payload.value = target | (addr << 2) | (word << 22)
        dut.load__valid.value = 1
        await FallingEdge(dut.clk)
    dut.load__valid.value = 0


async def one_run(dut, run):
    await load(dut, LoadTarget.DRAM, run["image"])
    await load(dut, LoadTarget.COMMANDS, [CMD.const(c).as_bits() for c in run["commands"]])
    await load(dut, LoadTarget.MATRICES, [ENTRY.const(e).as_bits() for e in run["matrices"]])
    await load(dut, LoadTarget.ACTS, [x_bits(x) for x in run["acts"]])
    dut.n_commands.value = len(run["commands"])
    dut.n_matrices.value = len(run["matrices"])
    dut.n_sums.value = run["n_sums"]
    results = []
    for _ in range(run["repeat"]):
        dut.go.value = 1
        await FallingEdge(dut.clk)
        dut.go.value = 0
        start_ns, start_wall = get_sim_time("ns"), time.perf_counter()
        while True:
            # A Timer is one simulator callback; ClockCycles would call into Python on every edge.
            await Timer(CHUNK * PERIOD_NS, unit="ns")
            await ReadOnly()
            if int(dut.done.value):
                break
            assert (get_sim_time("ns") - start_ns) / PERIOD_NS < 100 * run["n_sums"] + 1_000_000, "timeout"
        wall = time.perf_counter() - start_wall
        sim_cycles = (get_sim_time("ns") - start_ns) / PERIOD_NS
        names = ("cycles", "beats", "sums_seen", "checksum", "violation", "error")
        got = {k: int(getattr(dut, k).value) for k in names}
        await FallingEdge(dut.clk)
        assert got["sums_seen"] == run["n_sums"], got
        assert got["checksum"] == run["checksum"], \
            f"{run['name']}: checksum {got['checksum']:#x}, golden {run['checksum']:#x}"
        assert got["violation"] == 0 and got["error"] == 0, got
        results.append({**got, "wall_s": wall, "sim_cycles": sim_cycles})
    return results


@cocotb.test()
async def test_bench(dut):
    """Every run of the job, bit-exact (checksum), with cycle and beat counts."""
    # The clock runs inside the model (sim.clocked): reset without starting a cocotb Clock.
    dut.rst.value = 1
    dut.load__valid.value = 0
    dut.go.value = 0
    for _ in range(3):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    report = {}
    for run in JOB["runs"]:
        report[run["name"]] = await one_run(dut, run)
    with open(JOB["report"], "w") as f:
        json.dump(report, f)
