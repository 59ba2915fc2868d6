"""The weight path (fast DRAM model(s) -> weight-buffer manager -> TLMM engine) on Verilator (cocotb):
bit-exact against golden TLMM for matrices larger than the buffer, under random DRAM latency and stalls."""

import json

import pytest

from hw.memory.weight_path import WeightPath
from sim import build_component, run_cocotb
from sim.testbenches import TESTBENCH_DIR

TB = "tb_memory_weight_buffer"

BUILDS = {
    # tiny geometry (T = N = 4, 64-bit DRAM) with a 1 KiB ring, so every test wraps it several times.
    "mux-1port": {"tables": 4, "lanes": 4, "max_tokens": 4, "acc_bits": 32, "data_bits": 64, "buffer_words": 128,
                  "dram_words": 1024},
    # The lutram engine behind the replaying word feed (blocks of 3 row tiles, so matrices have partial
    # last blocks), over three 64-bit AXI4 ports striped into a 192-bit bus with a 960-byte ring.
    "lutram-3port": {"tables": 4, "lanes": 4, "max_tokens": 4, "acc_bits": 32, "data_bits": 192, "ports": 3,
                     "buffer_words": 40, "dram_words": 512, "engine": "lutram", "block_rows": 3},
}


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_weight_path_cocotb(name, tmp_path):
    p = BUILDS[name]
    dut = WeightPath(p["tables"], p["lanes"], data_bits=p["data_bits"], buffer_words=p["buffer_words"],
                     dram_words=p["dram_words"], latency=20, jitter=3, max_tokens=p["max_tokens"],
                     acc_bits=p["acc_bits"], ports=p.get("ports", 1), engine=p.get("engine", "mux"),
                     block_rows=p.get("block_rows", 16))
    build = build_component(dut, f"weight_path_{name.replace('-', '_')}")
    res = run_cocotb(build, TB, test_dir=TESTBENCH_DIR, extra_env={"WB_PARAMS": json.dumps(p)}, seed=5,
                     run_dir=tmp_path / "run", timeout_s=900)
    assert len(res.passed) == 3, res
