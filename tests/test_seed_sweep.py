"""Placement seed sweeps (firmware/seed_sweep.py): parsing ``--seeds``, each trial's nextpnr command, the
ranking and the table. The sweep inside ``trillium build`` is tested with the stand-in tools of
tests/test_fpga_build.py."""

import pytest

from firmware.seed_sweep import MAX_SEEDS, best_trial, check_seeds, format_sweep, parse_seeds, sweep_summary, \
    trial_argv

ROUTED_ARGV = ["nextpnr-ecp5", "--quiet", "--report", "report.json", "--timing-allow-fail", "--router", "router2",
               "--sdf", "routed.sdf", "--write", "routed.json", "--log", "top.tim", "--85k", "--json", "top.json",
               "--lpf", "top.lpf", "--textcfg", "top.config"]


@pytest.mark.parametrize("text, seeds", [
    ("5", [5]), ("1,2,5", [1, 2, 5]), ("1-4", [1, 2, 3, 4]), ("1-3, 8", [1, 2, 3, 8]), ("9,0", [9, 0]),
    ("2147483647", [2147483647]),
])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text, needle", [
    ("a", "integers and ranges"), ("", "integers and ranges"), ("1,,2", "integers and ranges"),
    ("-3", "integers and ranges"), ("4-1", "runs backwards"), ("1,2,1", "seed 1 is given twice"),
    ("1-3,2", "seed 2 is given twice"), (f"0-{MAX_SEEDS}", f"more than {MAX_SEEDS}"),
    ("2147483648", "seed must be an integer in"),
])
def test_parse_seeds_refuses(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_seeds(text)


def test_check_seeds_refuses_empty_and_non_integers():
    with pytest.raises(ValueError, match="at least one seed"):
        check_seeds([])
    with pytest.raises(ValueError, match="seed"):
        check_seeds([1, True])
    assert check_seeds((3, 1)) == [3, 1]


def test_trial_argv_places_only_into_its_directory():
    cmd = trial_argv(ROUTED_ARGV, 7, placed_sdf="placed.sdf", placed_netlist="placed.json")

    def opt(name):
        assert cmd.count(name) == 1, name
        return cmd[cmd.index(name) + 1]

    assert cmd[0] == "nextpnr-ecp5"
    assert (opt("--report"), opt("--log"), opt("--textcfg")) == ("seed-7/report.json", "seed-7/top.tim",
                                                                 "seed-7/top.config")
    assert (opt("--sdf"), opt("--write"), opt("--seed")) == ("seed-7/placed.sdf", "seed-7/placed.json", "7")
    assert "--no-route" in cmd and "routed.sdf" not in cmd and "routed.json" not in cmd
    # Inputs and every other option are kept, in order.
    assert (opt("--json"), opt("--lpf"), opt("--router")) == ("top.json", "top.lpf", "router2")
    assert cmd.index("--quiet") < cmd.index("--timing-allow-fail") < cmd.index("--85k")


def test_trial_argv_replaces_a_seed_and_place_only_options():
    argv = ["nextpnr-ecp5", "--no-route", "--sdf", "placed.sdf", "--write", "placed.json", "--seed", "3",
            "--json", "top.json"]
    cmd = trial_argv(argv, 4, placed_sdf="placed.sdf", placed_netlist="placed.json")
    assert cmd.count("--seed") == 1 and cmd[cmd.index("--seed") + 1] == "4"
    assert cmd.count("--no-route") == 1 and cmd.count("--sdf") == 1 and "3" not in cmd


def _trial(seed, worst, failing, seconds=10.0):
    return {"seed": seed, "dir": f"b/seed-{seed}", "seconds": seconds, "fmax_mhz": {"clk": 1e3 / worst},
            "placed_timing": {"period_ns": 10.0, "worst_ns": worst, "fmax_mhz": round(1e3 / worst, 2),
                              "failing": failing, "endpoints": 100, "paths": [{"ns": worst}]}}


def test_best_trial_is_the_shortest_worst_path_then_fewest_late_then_lowest_seed():
    assert best_trial([_trial(1, 12.0, 5), _trial(2, 11.0, 50), _trial(3, 13.0, 0)])["seed"] == 2
    assert best_trial([_trial(1, 11.0, 9), _trial(2, 11.0, 4)])["seed"] == 2
    assert best_trial([_trial(8, 11.0, 4), _trial(2, 11.0, 4)])["seed"] == 2
    with pytest.raises(ValueError):
        best_trial([])


def test_sweep_summary_and_table():
    trials = [_trial(1, 12.5, 30, 61.0), _trial(5, 11.0, 12, 59.5), _trial(9, 14.0, 80, 60.2)]
    summary = sweep_summary(trials, 5)
    assert summary["chosen"] == 5 and [t["seed"] for t in summary["trials"]] == [1, 5, 9]
    assert "paths" not in summary["trials"][0]["placed_timing"]  # those stay in each trial's files
    lines = format_sweep(summary)
    assert lines[0].startswith("placement seeds (3 placed; estimates after placement only")
    rows = lines[2:]
    assert [r.split()[0] for r in rows] == ["5", "1", "9"]      # best first
    assert rows[0].endswith("<- chosen") and not any(r.endswith("chosen") for r in rows[1:])
    assert "90.91" in rows[0] and "11.00" in rows[0] and "59.5" in rows[0]
