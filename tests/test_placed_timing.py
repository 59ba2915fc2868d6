"""``hw.placed_timing``: static timing over nextpnr's SDF, checked against nextpnr's own number.

The saved files (``tests/data/fpga/tiny-placed.*``) are nextpnr 0.11.1's output for a small ECP5 design
(two registered 12-bit inputs, their sum into a register behind an enable), placed on an LFE5U-25F with
``--no-route --sdf placed.sdf --write placed.json``; ``tiny-placed-fmax.log`` is the post-placement
Fmax line of the same run.
"""

import json
import re
from pathlib import Path

import pytest

from hw.placed_timing import analyse, format_report, late_nets, main, read_netlist, read_sdf, to_json

DATA = Path(__file__).parent / "data" / "fpga"


@pytest.fixture(scope="module")
def sdf_text():
    return (DATA / "tiny-placed.sdf").read_text()


@pytest.fixture(scope="module")
def netlist():
    return read_netlist(json.loads((DATA / "tiny-placed.json").read_text()))


def test_worst_path_is_nextpnrs_fmax(sdf_text):
    fmax = float(re.search(r"([\d.]+) MHz", (DATA / "tiny-placed-fmax.log").read_text()).group(1))
    report = analyse(read_sdf(sdf_text), 10.0)
    assert report.fmax_mhz == pytest.approx(fmax, abs=0.01)
    assert report.failing() == 0 and len(report.endpoints) == sum(report.histogram.values())


def test_paths_are_named_and_monotonic(sdf_text, netlist):
    report = analyse(read_sdf(sdf_text), 10.0)
    t, ep = report.endpoints[0]
    hops = report.paths[ep]
    assert netlist.cell_type[ep[0]] == "TRELLIS_FF" and ep[1] == "DI"       # the sum's register
    assert all(a <= b for (_, _, a), (_, _, b) in zip(hops, hops[1:]))
    assert hops[-1][2] <= t                                                  # plus the setup time
    assert any(netlist.cell_type[c] == "TRELLIS_COMB" and p == "FCI" for c, p, _ in hops)  # the carry chain
    text = format_report(report, netlist, paths=2, nets=5)
    assert "414.94 MHz" in text and "path 1:" in text and "TRELLIS_COMB.FCI" in text


def test_a_slower_net_moves_the_worst_path(sdf_text):
    """Adding 5 ns to one interconnect on the worst path adds 5 ns to the worst endpoint."""
    base = analyse(read_sdf(sdf_text), 10.0)
    t, ep = base.endpoints[0]
    cell, port, _ = base.paths[ep][-1]
    pat = re.compile(r"(\(INTERCONNECT \S+ " + re.escape(cell) + "/" + port + r" )\((\d+):(\d+):(\d+)\)")
    m = pat.search(sdf_text)
    assert m, "the worst endpoint's net is in the SDF"
    d = int(m.group(4)) + 5000
    slower = sdf_text[:m.start()] + f"{m.group(1)}({d}:{d}:{d})" + sdf_text[m.end():]
    report = analyse(read_sdf(slower), 10.0)
    assert report.worst_ns == pytest.approx(t + 5.0, abs=0.01)


def test_late_nets_count_endpoints_behind_a_net(sdf_text, netlist):
    report = analyse(read_sdf(sdf_text), 1.0)                                # everything is late at 1 GHz
    rows = late_nets(report, netlist, limit=50)
    assert sum(n for _, n, _, _ in rows) == report.failing() == len(report.endpoints)
    assert all(fanout >= late for _, late, fanout, _ in rows)
    doc = to_json(report, netlist, paths=3, nets=3)
    assert doc["failing"] == len(report.endpoints) and len(doc["paths"]) == 3 and doc["paths"][0]["hops"]


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="not an SDF"):
        read_sdf("module top; endmodule")
    with pytest.raises(ValueError, match="no CELL"):
        read_sdf("(DELAYFILE (SDFVERSION \"3.0\"))")
    with pytest.raises(ValueError, match="no 'modules'"):
        read_netlist({"creator": "x"})
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    assert main([str(DATA / "tiny-placed.sdf"), str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert main([str(tmp_path / "missing.sdf"), str(bad)]) == 2
