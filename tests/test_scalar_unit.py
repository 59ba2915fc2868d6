# amaranth: UnusedElaboratable=no
"""The per-token scalar unit (hw.vector.ScalarUnit) against golden.sfloat: Amaranth simulator, Verilator, ECP5."""

import json

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.vector import Op, ScalarUnit
from hw.vector.scalar_unit import reference_result
from sim.testbenches.tb_scalar_unit import (HANG_CYCLES, command, corner_commands, expected,
                                            expected_latency, random_commands)


def run_amaranth(dut, cmds, seed=0, p_stall=0.0):
    """Drive ``cmds`` through ``dut`` in the Amaranth simulator; check results, latencies and no hangs."""
    rng = np.random.default_rng(seed)
    want = [expected(c, dut.e_bits) for c in cmds]
    got = []

    async def bench(ctx):
        for j, c in enumerate(cmds):
            while rng.random() < p_stall:
                await ctx.tick()
            ctx.set(dut.cmd.payload, {"op": c["op"], "a": dict(zip("me", c["a"])), "b": dict(zip("me", c["b"])),
                                      "k": c["k"], "i": c["i"]})
            ctx.set(dut.cmd.valid, 1)
            await ctx.tick().until(dut.cmd.ready)
            ctx.set(dut.cmd.valid, 0)
            latency, held = 0, None
            while True:
                ready = rng.random() >= p_stall
                ctx.set(dut.res.ready, ready)
                _, _, valid, payload = await ctx.tick().sample(dut.res.valid, dut.res.payload)
                if not valid:
                    latency += 1
                    assert held is None, "res.valid dropped before the transfer"
                    assert latency <= HANG_CYCLES, f"command {j} {c} hangs"
                    continue
                value = (payload.value.m, payload.value.e, payload.div_by_zero, payload.overflow)
                assert held in (None, value), "payload changed while stalled"
                held = value
                if ready:
                    break
            assert value == want[j], f"command {j} {c}: got {value}, expected {want[j]}"
            assert latency + 1 == expected_latency(dut, c), f"command {j} {c}: latency {latency + 1}"
            got.append(value)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(got) == len(cmds)


def test_random_ops_vs_golden():
    rng = np.random.default_rng(1)
    run_amaranth(ScalarUnit(), random_commands(rng, 400, 12), seed=2, p_stall=0.2)


def test_registered_command_vs_golden():
    """``cmd_register``: the same results, one cycle more per operation (the decode cycle)."""
    rng = np.random.default_rng(3)
    run_amaranth(ScalarUnit(cmd_register=True), corner_commands(12) + random_commands(rng, 300, 12), seed=4,
                 p_stall=0.2)


def test_corner_cases_vs_golden():
    cmds = corner_commands(12, dense=False)
    assert len(cmds) > 300
    run_amaranth(ScalarUnit(), cmds)


def test_dsp_multiplier_and_other_exponent_widths():
    rng = np.random.default_rng(3)
    cmds = random_commands(rng, 60, 8, ["MUL"]) + random_commands(rng, 100, 8)
    run_amaranth(ScalarUnit(e_bits=8, multiplier="dsp"), cmds, seed=4, p_stall=0.1)
    run_amaranth(ScalarUnit(e_bits=16), random_commands(rng, 100, 16), seed=5)


def test_flags_and_zero_convention():
    """div_by_zero, overflow wrap, zero results with e == 0, zero operands with any exponent."""
    big, small = (1 << 24) - 1, 1 << 23
    checks = [
        (command(Op.DIV, (small, 3), (0, 77)), (0, 0, 1, 0)),
        (command(Op.DIV, (0, 5), (big, 9)), (0, 0, 0, 0)),
        (command(Op.MUL, (big, 2000), (big, 100)), None),  # exponent 2124 wraps
        (command(Op.ADD, (0, 2047), (small, -5)), (small, -5, 0, 0)),
        (command(Op.ADD, (big, 7), (0, -2048)), (big, 7, 0, 0)),
        (command(Op.SQRT, (0, 33)), (0, 0, 0, 0)),
        (command(Op.SCALE_POW2, (0, 1), k=5), (0, 0, 0, 0)),
        (command(Op.TO_MULT, (big, -20)), (big >> 8, 12, 0, 0)),
        (command(Op.FROM_INT, i=(1 << 48) - 1), (big, 24, 0, 0)),
        (command(Op.FROM_INT, i=1), (small, -23, 0, 0)),
    ]
    r = reference_result(Op.MUL, (big, 2000), (big, 100))
    assert r[3] == 1 and -2048 <= r[1] <= 2047
    for c, want in checks:
        if want is not None:
            assert expected(c, 12) == want, c
    run_amaranth(ScalarUnit(), [c for c, _ in checks])


def test_constructor_validation():
    for bad in (7, 33, 12.0, True):
        with pytest.raises(ValueError, match="e_bits"):
            ScalarUnit(e_bits=bad)
    with pytest.raises(ValueError, match="multiplier"):
        ScalarUnit(multiplier="booth")


# -- Verilator (cocotb) and ECP5 cost ----------------------------------------------------------------------
from sim import build_component, run_cocotb  # noqa: E402
from sim.testbenches import TESTBENCH_DIR  # noqa: E402


@pytest.mark.parametrize("multiplier,n_random", [("serial", 3000), ("dsp", 500)])
def test_scalar_unit_cocotb(multiplier, n_random, tmp_path):
    unit = ScalarUnit(multiplier=multiplier)
    build = build_component(unit, f"scalar_unit_{multiplier}")
    report = tmp_path / "cycles.json"
    params = {"e_bits": unit.e_bits, "multiplier": multiplier, "n_random": n_random, "report": str(report)}
    res = run_cocotb(build, "tb_scalar_unit", test_dir=TESTBENCH_DIR, seed=2024,
                     extra_env={"SCALAR_PARAMS": json.dumps(params)}, run_dir=tmp_path / "run", timeout_s=300)
    assert len(res.passed) == 3, res
    cyc = json.loads(report.read_text())["ops"]
    print(json.dumps(cyc, indent=1))
    assert cyc["DIV"]["latency_max"] == cyc["SQRT"]["latency_max"] == 27
    assert cyc["MUL"]["latency_max"] == (27 if multiplier == "serial" else 4)
    assert cyc["SCALE_POW2"]["latency_max"] == cyc["TO_MULT"]["latency_max"] == 1


@pytest.mark.slow
def test_scalar_unit_ecp5_cost():
    from hw.synth import synth_ecp5

    serial = synth_ecp5(ScalarUnit(), "scalar_unit")
    dsp = synth_ecp5(ScalarUnit(multiplier="dsp"), "scalar_unit_dsp")
    print("serial:", serial.counts())
    print("dsp:", dsp.counts())
    assert serial.dsp == 0 and serial.bram == 0
    assert dsp.dsp > 0
    assert serial.lut4_equivalent < 1000
