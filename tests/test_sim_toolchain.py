"""Tests for the ``sim`` package: Verilator discovery, cached builds, cocotb runs.

The designs are compiled into the real build cache (``$TRILLIUM_SIM_CACHE`` or
``~/.cache/trillium/sim``), so a second pytest run reuses them; a cold cache
costs two full Verilator builds (plain and traced, ~8 s each on 2 cores) plus
a few incremental ones (~1.5 s each, runtime objects shared).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sim import (
    SimBuild,
    ToolchainError,
    build_component,
    build_verilog,
    cache_root,
    export_verilog,
    run_cocotb,
    setup_verilator,
)
from sim.toolchain import MIN_VERILATOR, fst_supported, verilator_bin_dir, verilator_version_tuple
from sim_designs.sat_accumulator import SatAccumulator

TESTS = Path(__file__).resolve().parent
COCOTB_DIR = TESTS / "cocotb_tests"
TB = "tb_sat_accumulator"
TOP = "sat_acc"


def build(width: int, **kw) -> SimBuild:
    return build_component(SatAccumulator(width), TOP, **kw)


def params_env(width: int) -> dict[str, str]:
    return {"SAT_ACC_PARAMS": json.dumps({"width": width})}


# -- (a) toolchain --------------------------------------------------------------


def test_verilator_found_and_recent():
    version = setup_verilator()
    assert verilator_version_tuple() >= MIN_VERILATOR, version
    assert shutil.which("verilator") == str(verilator_bin_dir() / "verilator")
    assert f"PYTHON3={sys.executable}" in os.environ["MAKEFLAGS"].split()


def test_setup_is_idempotent():
    setup_verilator()
    path, makeflags = os.environ["PATH"], os.environ["MAKEFLAGS"]
    setup_verilator()
    assert (os.environ["PATH"], os.environ["MAKEFLAGS"]) == (path, makeflags)


def test_bad_verilator_root_is_reported(monkeypatch):
    monkeypatch.setenv("VERILATOR_ROOT", "/nonexistent/verilator")
    with pytest.raises(ToolchainError, match="VERILATOR_ROOT"):
        setup_verilator()


def test_export_has_flattened_stream_ports():
    text = export_verilog(SatAccumulator(12), TOP)
    for port in ("clk", "rst", "clear", "i__payload", "i__valid", "i__ready", "acc"):
        assert port in text
    assert "src =" not in text  # no source paths: the cache key must not depend on them


# -- (b) build and run ----------------------------------------------------------


@pytest.mark.parametrize("width", [10, 14])
def test_cocotb_passes(width):
    results = run_cocotb(
        build(width), TB, test_dir=COCOTB_DIR, extra_env=params_env(width), seed=width
    )
    assert set(results.passed) == {f"{TB}.test_random_stream", f"{TB}.test_edges"}
    assert results.seed == width and results.results_xml.is_file()


# -- (c) caching ----------------------------------------------------------------


def test_second_build_is_reused_and_fast():
    first = build(10)
    exe_mtime = first.executable.stat().st_mtime_ns
    again = build(10)
    assert again.reused is True
    assert again.key == first.key and again.build_dir == first.build_dir
    assert again.seconds < 1.0, f"cache hit took {again.seconds:.2f} s"
    assert again.executable.stat().st_mtime_ns == exe_mtime  # not relinked


def test_key_changes_with_configuration():
    text = export_verilog(SatAccumulator(10), TOP)
    base = build(10)
    assert build(14).key != base.key
    assert base.build_dir.parent == cache_root()
    assert base.build_dir.name == f"{TOP}-{base.key[:16]}"
    # Only the key is compared here; nothing is built for the other variants.
    from sim.build import build_key_material

    a = build_key_material(text, TOP)
    assert build_key_material(text, TOP, build_args=["-Wno-fatal"]) != a
    assert build_key_material(text, TOP, parameters={"N": 3}) != a
    assert build_key_material(text, TOP, waves="vcd") != a
    assert build_key_material(text + "\n", TOP) != a


def test_concurrent_builders_share_one_build(tmp_path):
    # A private cache so the key is cold, with the shared runtime objects of
    # the real cache linked in so that the race costs ~2 s, not ~10 s.
    real_runtime = cache_root() / "_runtime"
    real_runtime.mkdir(parents=True, exist_ok=True)
    (tmp_path / "_runtime").symlink_to(real_runtime, target_is_directory=True)
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(TESTS)!r})
        from sim import build_component
        from sim_designs.sat_accumulator import SatAccumulator
        b = build_component(SatAccumulator(11), {TOP!r})
        print(json.dumps({{"reused": b.reused, "dir": str(b.build_dir)}}))
        """
    )
    env = dict(os.environ, TRILLIUM_SIM_CACHE=str(tmp_path))
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    stdouts = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], stdouts
    outs = [json.loads(out.strip().splitlines()[-1]) for out in stdouts]
    assert sorted(o["reused"] for o in outs) == [False, True]
    assert outs[0]["dir"] == outs[1]["dir"]


# -- (d) failures are loud -------------------------------------------------------


def test_failing_cocotb_test_raises_with_names():
    env = params_env(10) | {"SAT_ACC_INJECT_BUG": "1"}
    with pytest.raises(AssertionError) as info:
        run_cocotb(build(10), TB, test_dir=COCOTB_DIR, extra_env=env, seed=1)
    message = str(info.value)
    assert f"{TB}.test_random_stream" in message and f"{TB}.test_edges" in message
    assert "seed=1" in message


def test_no_tests_run_is_a_failure():
    with pytest.raises(AssertionError, match="no test ran"):
        run_cocotb(
            build(10), TB, test_dir=COCOTB_DIR, extra_env=params_env(10), testcase="no_such_test"
        )


def test_missing_test_module_is_a_failure():
    with pytest.raises(AssertionError, match="without writing results"):
        run_cocotb(build(10), "tb_does_not_exist", test_dir=COCOTB_DIR)


def test_timeout_kills_the_simulator():
    with pytest.raises(AssertionError, match="timed out"):
        run_cocotb(
            build(10), TB, test_dir=COCOTB_DIR, extra_env=params_env(10), timeout_s=0.01
        )


def test_explicit_env_beats_process_env(monkeypatch):
    # A stale value in the caller's environment must not leak into the run.
    monkeypatch.setenv("SAT_ACC_PARAMS", json.dumps({"width": 99}))
    results = run_cocotb(build(10), TB, test_dir=COCOTB_DIR, extra_env=params_env(10), seed=3)
    assert len(results.passed) == 2


def test_extra_env_must_be_strings():
    with pytest.raises(TypeError, match="extra_env"):
        run_cocotb(build(10), TB, test_dir=COCOTB_DIR, extra_env={"SAT_ACC_PARAMS": {"width": 10}})


def test_build_errors_are_readable():
    from sim import BuildError

    with pytest.raises(BuildError, match="broken"):
        build_verilog("module broken(input a); assign b = ; endmodule\n", "broken")


# -- (e) waves --------------------------------------------------------------------


def test_waves_written():
    traced = build(10, waves=True)
    assert traced.waves in ("fst", "vcd")
    results = run_cocotb(
        traced, TB, test_dir=COCOTB_DIR, extra_env=params_env(10), testcase="test_edges",
        waves=True, seed=1,
    )
    assert results.waves_path is not None and results.waves_path.stat().st_size > 0
    assert results.waves_path.suffix == f".{traced.waves}"


@pytest.mark.skipif(
    not fst_supported(),
    reason="FST needs Debian's liblz4-dev and zlib1g-dev (lz4.h / -llz4 not found); VCD is used",
)
def test_fst_waves_written():
    traced = build(10, waves="fst")
    results = run_cocotb(
        traced, TB, test_dir=COCOTB_DIR, extra_env=params_env(10), testcase="test_edges",
        waves=True, seed=1,
    )
    assert results.waves_path is not None and results.waves_path.name == "dump.fst"


def test_waves_need_a_traced_build():
    with pytest.raises(ValueError, match="without tracing"):
        run_cocotb(build(10), TB, test_dir=COCOTB_DIR, extra_env=params_env(10), waves=True)
