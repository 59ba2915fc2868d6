"""The TLMM engine on Verilator (cocotb) against the golden model, for three hardware configs."""

import json

import pytest

from hw.config import load_hw_config
from hw.tlmm import TlmmEngine
from sim import build_component, run_cocotb
from sim.testbenches import TESTBENCH_DIR as COCOTB_DIR
TB = "tb_tlmm_engine"


def engine_for(cfg_name, max_tokens=4):
    cfg = load_hw_config(cfg_name)
    return TlmmEngine(cfg.tlmm.tables, cfg.tlmm.lanes, acc_bits=32, max_tokens=max_tokens)


# The mux engine at the tellme-kv260 geometry (T=28, N=16) takes 2-3 minutes to build and run; that config
# uses the lutram engine, which test_tlmm_lut_engine.py runs at all three configs in the default suite.
@pytest.mark.parametrize("cfg_name", ["tiny", "ecp5", pytest.param("tellme-kv260", marks=pytest.mark.slow)])
def test_tlmm_engine_cocotb(cfg_name, tmp_path):
    eng = engine_for(cfg_name)
    build = build_component(eng, "tlmm_engine")
    report = tmp_path / "throughput.json"
    params = {"tables": eng.tables, "lanes": eng.lanes, "max_tokens": eng.max_tokens,
              "acc_bits": eng.acc_bits, "report": str(report)}
    res = run_cocotb(build, TB, test_dir=COCOTB_DIR, extra_env={"TLMM_PARAMS": json.dumps(params)},
                     seed=1234, run_dir=tmp_path / "run")
    assert len(res.passed) == 3 and len(res.skipped) == 1, res
    assert json.loads(report.read_text())["steady_state_efficiency"] >= 0.97


def test_tlmm_engine_accumulator_extremes(tmp_path):
    """A 20-bit accumulator build: sums reach exactly -2^19 and just below 2^19 (no wrap, no loss)."""
    eng = TlmmEngine(4, 4, acc_bits=20, max_tokens=2)
    build = build_component(eng, "tlmm_engine")
    params = {"tables": 4, "lanes": 4, "max_tokens": 2, "acc_bits": 20}
    res = run_cocotb(build, TB, test_dir=COCOTB_DIR, extra_env={"TLMM_PARAMS": json.dumps(params)},
                     seed=7, testcase="test_accumulator_extremes", run_dir=tmp_path / "run")
    assert tuple(res.passed) == (f"{TB}.test_accumulator_extremes",), res
