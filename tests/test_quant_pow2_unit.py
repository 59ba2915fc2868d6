# amaranth: UnusedElaboratable=no
"""QuantPow2 (int8 with a power-of-two scale per head vector) against golden ``quant_pow2``.

Amaranth simulator: short seeded runs with interleaved slots and stalls. cocotb on Verilator: longer
runs, odd lane counts and lengths, and the measured no-stall throughput (one beat per cycle).
"""

import json

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.vector.quant_pow2 import QuantPow2
from sim.testbenches.tb_quant_pow2 import check_outputs, input_beats, make_vectors


def _amaranth_run(lanes, length, slots, tokens, vectors, seed, p_in, p_out):
    rng = np.random.default_rng(seed)
    dut = QuantPow2(lanes, length, slots)
    x = make_vectors(rng, tokens, vectors, length)
    beats = input_beats(x, lanes)
    out = []
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def source(ctx):
        for slot, vals in beats:
            while rng.random() < p_in:
                await ctx.tick()
            ctx.set(dut.i.payload, {"x": {f"lane{n}": v for n, v in enumerate(vals)}, "slot": slot})
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        cycles = 0
        while len(out) < len(beats):
            ready = int(rng.random() >= p_out)
            ctx.set(dut.o.ready, ready)
            _, _, valid, pay = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid and ready:
                out.append((int(pay.slot), [int(pay.q[f"lane{n}"]) for n in range(lanes)], int(pay.e),
                            int(pay.first), int(pay.last)))
            cycles += 1
            assert cycles < 50 * len(beats) + 100, "timeout"
        return cycles

    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    check_outputs(x, lanes, out)


@pytest.mark.parametrize("lanes, length, slots, tokens, vectors", [
    (4, 16, 1, 1, 8),      # decode: one slot
    (4, 10, 1, 1, 8),      # length not a multiple of lanes (padding lanes ignored)
    (4, 16, 4, 3, 5),      # prefill: three tokens interleaved per beat
    (3, 7, 3, 3, 4),       # odd everything; slot count not a power of two
    (1, 5, 2, 2, 4),
])
def test_quant_pow2_amaranth_sim(lanes, length, slots, tokens, vectors):
    _amaranth_run(lanes, length, slots, tokens, vectors, seed=lanes * 100 + length, p_in=0.3, p_out=0.4)


def test_slow_consumer_fills_every_region():
    # A consumer taking one beat in ten: every slot's next region is still queued when its vector
    # completes, so the input must wait on the per-slot free flags (a wrong flag overwrites a vector).
    _amaranth_run(4, 16, 4, 3, 8, seed=5, p_in=0.0, p_out=0.9)


def test_stimulus_reaches_the_corners():
    from golden.numerics import quant_pow2
    x = make_vectors(np.random.default_rng(0), 2, 8, 8)
    q, e = quant_pow2(x)
    assert e.max() == 25 and e.min() == 0
    assert 127 in q and -127 in q and 0 in e


@pytest.mark.parametrize("bad", [dict(lanes=0, length=4), dict(lanes=4, length=0), dict(lanes=4, length=4, slots=0)])
def test_arguments_are_validated(bad):
    with pytest.raises((ValueError, TypeError)):
        QuantPow2(**bad)


from sim import build_component, run_cocotb  # noqa: E402
from sim.testbenches import TESTBENCH_DIR  # noqa: E402


@pytest.mark.parametrize("lanes, length, slots, tokens", [(4, 64, 1, 1), (16, 128, 4, 4), (5, 26, 3, 3)])
def test_quant_pow2_cocotb(lanes, length, slots, tokens, tmp_path):
    dut = QuantPow2(lanes, length, slots)
    build = build_component(dut, f"quant_pow2_{lanes}_{length}_{slots}")
    report = tmp_path / "throughput.json"
    params = {"lanes": lanes, "length": length, "slots": slots, "tokens": tokens, "vectors": 24,
              "seed": 7 + lanes, "p_stall": 0.3, "report": str(report)}
    run_cocotb(build, "tb_quant_pow2", test_dir=TESTBENCH_DIR, seed=7,
               extra_env={"QUANT_PARAMS": json.dumps(params)}, run_dir=tmp_path / "run")
    res = json.loads(report.read_text())
    # Full rate: one beat per cycle, plus the fill of one vector per slot, the input slice, the queue of
    # complete vectors, the rounding stages and the output FIFO.
    assert res["cycles"] <= res["beats"] + dut.beats * tokens + dut.STAGES + 6, res
