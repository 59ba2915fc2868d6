# amaranth: UnusedElaboratable=no
"""``python -m hw.unit_cost``: per-unit ECP5 cells of the accelerator and their sum against the 85F."""

import pytest

from hw.unit_cost import ECP5_85F, UNIT_NAMES, format_costs, main, unit_costs


def test_units_are_the_tops_and_unknown_ones_are_refused():
    from hw.config import load_hw_config
    from hw.top import TrilliumTop

    top = TrilliumTop(load_hw_config("tiny"))
    assert all(hasattr(top, u) for u in UNIT_NAMES)
    with pytest.raises(ValueError, match="unknown unit\\(s\\) fpu"):
        unit_costs("tiny", ("bridge", "fpu"))


def test_table_sums_units_against_the_85f():
    rep = {"lut4": 100, "ccu2c": 10, "dpr16x4": 2, "ff": 50, "dsp": 3, "bram": 4}
    text = format_costs({"a": rep, "b": dict(rep, dsp=1)})
    lines = text.splitlines()
    assert lines[2].split() == ["a", "100", "10", "2", "132", "50", "3", "4"]      # 100 + 2*10 + 6*2 = 132
    assert lines[5].split() == ["sum", "200", "20", "4", "264", "100", "4", "8"]
    assert lines[6].split()[-4:] == [f"{round(100 * 264 / ECP5_85F['lut4_equivalent'])}%", "0%", "3%", "4%"]


def test_one_unit_synthesised(capsys):
    assert main(["--hw", "tiny", "--unit", "bridge", "-j", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2].startswith("bridge") and "of LFE5U-85F" in out
