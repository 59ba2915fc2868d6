"""The weight path (fast DRAM model -> weight-buffer manager -> TLMM engine) on Verilator (cocotb):
bit-exact against golden TLMM for matrices larger than the buffer, under random DRAM latency and stalls."""

import json

from hw.memory.weight_path import WeightPath
from sim import build_component, run_cocotb
from sim.testbenches import TESTBENCH_DIR

TB = "tb_memory_weight_buffer"

#: tiny geometry (T = N = 4, 64-bit DRAM) with a 1 KiB ring, so every test wraps it several times.
PARAMS = {"tables": 4, "lanes": 4, "max_tokens": 4, "acc_bits": 32, "data_bits": 64, "buffer_words": 128,
          "dram_words": 1024}


def test_weight_path_cocotb(tmp_path):
    p = PARAMS
    dut = WeightPath(p["tables"], p["lanes"], data_bits=p["data_bits"], buffer_words=p["buffer_words"],
                     dram_words=p["dram_words"], latency=20, jitter=3, max_tokens=p["max_tokens"],
                     acc_bits=p["acc_bits"])
    build = build_component(dut, "weight_path")
    res = run_cocotb(build, TB, test_dir=TESTBENCH_DIR, extra_env={"WB_PARAMS": json.dumps(p)}, seed=5,
                     run_dir=tmp_path / "run", timeout_s=900)
    assert len(res.passed) == 3, res
