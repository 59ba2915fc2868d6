# amaranth: UnusedElaboratable=no
"""``hw.unit_timing``: the path estimate over a Yosys-mapped netlist ranks a deep path above a shallow one,
names its registers, and the command line runs on a real unit."""

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.unit_timing import _group, _squeeze, estimate_paths, main, synth_netlist


class _TwoPaths(wiring.Component):
    """``shallow`` registers an input; ``deep`` registers a product of two registered values plus a third
    (a multiplier and a carry chain after the registers)."""

    a: In(16)
    b: In(16)
    c: In(32)
    shallow: Out(16)
    deep: Out(32)

    def elaborate(self, platform):
        m = Module()
        ra, rb, rc = Signal(16, name="ra"), Signal(16, name="rb"), Signal(32, name="rc")
        m.d.sync += [ra.eq(self.a), rb.eq(self.b), rc.eq(self.c)]
        m.d.sync += [self.shallow.eq(ra), self.deep.eq(ra * rb + rc)]
        return m


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory):
    netlist = synth_netlist(_TwoPaths(), "two_paths", tmp_path_factory.mktemp("timing"))
    return estimate_paths(netlist, "two_paths")


def test_the_deep_path_is_ranked_first_and_named(endpoints):
    worst = endpoints[0]
    assert worst.sink.startswith("deep")
    assert worst.start.startswith(("ra", "rb"))
    shallow = next(e for e in endpoints if e.sink.startswith("shallow"))
    # A multiplier (10 ns in the model) and a carry chain against one register-to-register hop.
    assert worst.arrival > shallow.arrival + 4.0
    assert shallow.levels == 0 and worst.levels >= 2


def test_names_are_grouped_and_squeezed():
    assert _group("acc[3].DI") == "acc"
    assert _group("buf.storage.0.0_DOA7[0].CE") == "buf.storage.0.0"
    assert _group("DP16KD mem.storage.0.3.ADA13") == "DP16KD mem.ADA"
    assert _group("output s__araddr[29]") == "output s__araddr"
    assert _squeeze(["$12", "x[0]", "x[1]", "y_LUT4_Z_B[3]", "y_CCU2C_S0"]) == ["x", "y~"]


def test_command_line_on_a_unit(capsys, tmp_path):
    assert main(["--hw", "tiny", "--unit", "bridge", "--paths", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bridge:") and "endpoints" in out and " ns " in out
