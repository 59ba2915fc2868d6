# amaranth: UnusedElaboratable=no
"""The top level (hw/top.py) and ``trillium export-verilog``: the Verilog file has the documented ports,
and configurations the top level cannot build are refused with a clear error. The top level's behaviour
is tested by co-simulation (tests/test_cosim.py)."""

import gc
import json
import re

import pytest

from firmware.cli import main
from hw.config import available_hw_configs, load_hw_config
from hw.top import READ_MASTERS, WRITE_MASTERS, TrilliumTop


def test_export_verilog_writes_the_documented_ports(capsys, tmp_path):
    out = tmp_path / "top.v"
    assert main(["export-verilog", "--hw", "tiny", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    hw = load_hw_config("tiny")
    assert report["module"] == "trillium_top" and report["config_hash"] == f"0x{hw.config_hash:08x}"
    text = out.read_text()
    header = re.search(r"^module trillium_top\((.*?)\);", text, re.S | re.M).group(1)
    ports = {p.strip() for p in header.split(",")}
    for want in ("clk", "rst", "irq", "csr__awaddr", "csr__rdata", "axi_rd__araddr", "axi_rd__rdata", "axi_rd__rid",
                 "axi_wr__awaddr", "axi_wr__wdata", "axi_wr__wstrb", "axi_wr__bid"):
        assert want in ports, want
    assert re.search(r"input \[63:0\] axi_rd__rdata;", text)


def test_top_refuses_what_it_cannot_build(capsys, tmp_path):
    with pytest.raises(TypeError, match="HwConfig"):
        TrilliumTop("tiny")
    assert TrilliumTop(load_hw_config("tellme-kv260")).bus_bits == 1024   # 3 x 256 bits, modelled as one port
    assert main(["export-verilog", "--hw", "tiny", "-o", str(tmp_path), "--name", "x"]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["export-verilog", "--hw", "tiny", "-o", str(tmp_path / "a.v"), "--name", "1x"]) == 2
    assert "Verilog identifier" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")   # built to inspect, not elaborated
def test_stash_units_have_their_own_masters():
    """LOAD_X reads and SAVE_X writes DRAM through their own arbiter ports (the last ones, so the other
    masters keep their IDs); SAVE_X asks the buffers with the LINEAR unit's request layout."""
    assert READ_MASTERS[-1] == "load_x" and WRITE_MASTERS[-1] == "save_x"
    for name, data_bits in (("tiny", 64), ("ecp5", 32), ("tellme-kv260", 1024)):
        top = TrilliumTop(load_hw_config(name))
        assert top.bus_bits == data_bits
        assert top.read_signature.id_bits == 1 + (len(READ_MASTERS) - 1).bit_length()
        assert top.write_signature.id_bits == 1 + (len(WRITE_MASTERS) - 1).bit_length()
        assert top.save_x.max_index == top.linear.max_index and top.load_x.max_beats == top.embed.max_beats
        del top
        gc.collect()           # the unused-elaboratable warnings now, while they are filtered


@pytest.mark.parametrize("name", available_hw_configs())
@pytest.mark.parametrize("platform", [None, "vendor"])
def test_every_bundled_config_elaborates(name, platform):
    """The whole top level elaborates for every bundled config, for simulation and for a vendor flow (a
    96-lane config once asked for more register replicas than hw.replica allowed, and only the KV260
    benchmark found out)."""
    from amaranth.hdl import Fragment

    from hw.synth import VENDOR_VERILOG_PLATFORM

    Fragment.get(TrilliumTop(load_hw_config(name)), VENDOR_VERILOG_PLATFORM if platform else None)
