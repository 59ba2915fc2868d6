"""The AXI4 burst reader (and a striped group of readers) on Verilator (cocotb) against cocotbext-axi's
AXI RAM, with protocol checks."""

import json

import pytest

from hw.memory import AxiBurstReader
from hw.memory.axi_group import AxiReaderGroup
from sim import build_component, run_cocotb
from sim.testbenches import TESTBENCH_DIR

TB = "tb_memory_axi"

READERS = {
    # 64-bit bus, short bursts: many bursts per command, many 4 KiB cuts, tight buffer.
    "w64-b16": dict(addr_bits=32, data_bits=64, max_burst=16, max_outstanding=4, buffer_words=40,
                    beats_bits=12, tag_bits=3),
    # 32-bit bus, full-length AXI4 bursts (256 beats) and only two bursts in flight.
    "w32-b256": dict(addr_bits=32, data_bits=32, max_burst=256, max_outstanding=2, buffer_words=512,
                     beats_bits=12, tag_bits=1),
    # Three 64-bit ports striped into a 192-bit stream (as 3 x 256 bits for tellme-kv260), each RAM
    # pausing on its own.
    "group3-w64": dict(addr_bits=32, data_bits=192, ports=3, max_burst=16, max_outstanding=3, buffer_words=40,
                       beats_bits=12, tag_bits=2),
}


@pytest.mark.parametrize("name", sorted(READERS))
def test_axi_reader_cocotb(name, tmp_path):
    p = READERS[name]
    kwargs = dict(buffer_words=p["buffer_words"], max_burst=p["max_burst"], max_outstanding=p["max_outstanding"],
                  beats_bits=p["beats_bits"], tag_bits=p["tag_bits"])
    if p.get("ports", 1) > 1:
        dut = AxiReaderGroup(p["addr_bits"], p["data_bits"], ports=p["ports"], **kwargs)
        build = build_component(dut, "axi_reader_group")
    else:
        dut = AxiBurstReader(p["addr_bits"], p["data_bits"], **kwargs)
        build = build_component(dut, "axi_burst_reader")
    res = run_cocotb(build, TB, test_dir=TESTBENCH_DIR, extra_env={"AXI_PARAMS": json.dumps(p)}, seed=11,
                     run_dir=tmp_path / "run", timeout_s=600)
    assert len(res.passed) == 3, res
