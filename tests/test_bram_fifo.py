# amaranth: UnusedElaboratable=no
"""BlockRamFifo (Amaranth simulator, seeded): every word comes out once and in order under random writes
(never beyond ``depth`` unread) and random consumer stalls, including a full FIFO; a word per cycle with a
ready consumer; a word is readable :data:`LATENCY` cycles after its write; the simulation's collision
check holds; on ECP5 the read goes through the block RAM's output register (Yosys + the flow's rewrite)."""

import json
import random
import subprocess

import pytest
from amaranth.back import rtlil
from amaranth.lib import data
from amaranth.sim import Simulator

from hw.bram_output_registers import absorb_output_registers
from hw.memory.bram_fifo import LATENCY, BlockRamFifo
from hw.synth import ECP5_SYNTH_PLATFORM, YOSYS_AFTER_READ, yosys_command

LAYOUT = data.StructLayout({"data": 32, "last": 1, "tag": 2})


def run(depth, p_write, p_stall, n=300, seed=0):
    dut = BlockRamFifo(LAYOUT, depth=depth)
    rng = random.Random(seed)
    words = [rng.getrandbits(LAYOUT.size) for _ in range(n)]
    got, log = [], {"reads": 0, "max_unread": 0}

    async def writer(ctx):
        i = 0
        while i < n:
            unread = i - log["reads"]
            if unread < depth and rng.random() < p_write:
                ctx.set(dut.w_en, 1)
                ctx.set(dut.w_data.as_value(), words[i])
                i += 1
                log["max_unread"] = max(log["max_unread"], unread + 1)
            else:
                ctx.set(dut.w_en, 0)
            await ctx.tick()
        ctx.set(dut.w_en, 0)

    async def reader(ctx):
        while len(got) < n:
            stall = rng.random() < p_stall
            ctx.set(dut.o.ready, 0 if stall else 1)
            if ctx.get(dut.o.valid) and not stall:
                got.append(ctx.get(dut.o.payload.as_value()))
                log["reads"] += 1
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(writer)
    sim.add_testbench(reader)
    sim.run_until(1e-6 * 40 * n)
    return words, got, log


@pytest.mark.parametrize("depth,p_write,p_stall", [(4, 1.0, 0.0), (4, 1.0, 0.7), (16, 0.5, 0.3), (7, 0.9, 0.5),
                                                   (256, 1.0, 0.9)])
def test_every_word_once_and_in_order(depth, p_write, p_stall):
    words, got, log = run(depth, p_write, p_stall, seed=depth + int(10 * p_write + 100 * p_stall))
    assert got == words
    if p_stall >= 0.7:
        assert log["max_unread"] == depth          # the writer filled it


def _cycles_to_first_and_rate(depth):
    dut = BlockRamFifo(8, depth=depth)
    out = {"first": None, "reads": []}

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for cycle in range(40):
            ctx.set(dut.w_en, cycle < 20)
            ctx.set(dut.w_data, cycle)
            if ctx.get(dut.o.valid):
                out["reads"].append((cycle, ctx.get(dut.o.payload)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return out["reads"]


def test_latency_and_a_word_per_cycle():
    reads = _cycles_to_first_and_rate(8)
    assert [v for _, v in reads] == list(range(20))
    assert reads[0][0] == LATENCY                           # written in cycle 0
    assert [c for c, _ in reads] == list(range(LATENCY, LATENCY + 20))


@pytest.mark.parametrize("depth", [1, 1 << 21, 3.0])
def test_bad_depth_is_refused(depth):
    with pytest.raises(ValueError, match="depth"):
        BlockRamFifo(8, depth=depth)


def test_the_read_goes_through_the_block_rams_output_register(tmp_path):
    (tmp_path / "f.il").write_text(rtlil.convert(BlockRamFifo(LAYOUT, depth=256), name="f",
                                                 platform=ECP5_SYNTH_PLATFORM, emit_src=False))
    (tmp_path / "f.ys").write_text(f"read_rtlil f.il\n{YOSYS_AFTER_READ}\nsynth_ecp5 -top f\nwrite_json f.json\n")
    subprocess.run([*yosys_command(), "-q", "-s", "f.ys"], cwd=tmp_path, check=True, capture_output=True)
    net = json.loads((tmp_path / "f.json").read_text())
    assert absorb_output_registers(net) == LAYOUT.size
