"""NormQuant (fused RMSNorm + int8 quantiser) against ``golden.numerics.norm_quant``.

Three layers: the Amaranth simulator on a few short vectors with stalls; cocotb on Verilator (lanes 1, 4,
16: random vectors, every corner case, random stalls on all streams, measured cycles per vector); and
Yosys ``synth_ecp5`` cost of ``NormQuant(4, 2560)``.
"""

import json

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden.sfloat import SFloat
from hw.vector.norm_quant import NormQuant
from sim.testbenches.tb_norm_quant import (_gain, check_vector, make_cases, pack_beats, pack_cfg,
                                           reference)


def test_reference_zero_cases():
    rng = np.random.default_rng(0)
    q, s = reference(np.zeros(5, np.int64), SFloat.pow2(np.int64(-16)), _gain(rng, 5))
    assert q == [0] * 5 and s == (0, 0)
    q, s = reference(np.arange(5, dtype=np.int64), SFloat.pow2(np.int64(-16)), _gain(rng, 5, "zero"))
    assert q == [0] * 5 and s == (0, 0)


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_parameters_are_validated():
    for bad in (0, 65, 2.0, True):
        with pytest.raises(ValueError, match="lanes"):
            NormQuant(bad, 64)
    with pytest.raises(ValueError, match="max_n"):
        NormQuant(4, 0)
    with pytest.raises(ValueError, match="x_bits"):
        NormQuant(4, 64, x_bits=64)


# -- Amaranth simulator ----------------------------------------------------------------------------------
def run_amaranth(lanes, max_n, cases, seed, p_stall):
    dut = NormQuant(lanes, max_n)
    rng = np.random.default_rng(seed)
    cfgs = [pack_cfg(len(x), sx, g, max_n) for x, sx, g in cases]
    beats = [w for x, sx, g in cases for w in pack_beats(x, g.q, lanes)]
    nbeats = [-(-len(x) // lanes) for x, _, _ in cases]
    outs = {"o": [], "s": []}

    async def bench(ctx):
        queues = {"cfg": cfgs, "i": beats}
        idx = {"cfg": 0, "i": 0}
        pend = {"cfg": False, "i": False}
        held = {"o": None, "s": None}
        for _ in range(2000 * len(cases)):
            for name, items in queues.items():
                port = getattr(dut, name)
                if not pend[name] and idx[name] < len(items) and rng.random() >= p_stall:
                    pend[name] = True
                    ctx.set(port.payload.as_value(), items[idx[name]])
                ctx.set(port.valid, pend[name])
            ready = {name: bool(rng.random() >= p_stall) for name in outs}
            for name in outs:
                port = getattr(dut, name)
                ctx.set(port.ready, ready[name])
                if ctx.get(port.valid):
                    pay = ctx.get(port.payload.as_value())
                    assert held[name] is None or pay == held[name]
                    held[name] = None if ready[name] else pay
                    if ready[name]:
                        outs[name].append(pay)
            for name in queues:
                if pend[name] and ctx.get(getattr(dut, name).ready):
                    pend[name], idx[name] = False, idx[name] + 1
            await ctx.tick()
            if len(outs["s"]) == len(cases) and len(outs["o"]) == len(beats):
                return

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(outs["s"]) == len(cases) and len(outs["o"]) == len(beats), {k: len(v) for k, v in outs.items()}
    pos = 0
    for k, case in enumerate(cases):
        check_vector(k, case, outs["o"][pos:pos + nbeats[k]], outs["s"][k], lanes)
        pos += nbeats[k]


@pytest.mark.parametrize("lanes", [1, 3])
def test_norm_quant_amaranth_sim(lanes):
    rng = np.random.default_rng(lanes)
    cases = make_cases(rng, lanes, 24, n_random=3)
    pick = [0, 1, 2, 3, 5, 9, 11]  # random, n = 1, all zero, huge, ReLU^2
    run_amaranth(lanes, 24, [cases[i] for i in pick], seed=lanes, p_stall=0.3)


# -- Verilator (cocotb) ----------------------------------------------------------------------------------
from sim import build_component, run_cocotb  # noqa: E402
from sim.testbenches import TESTBENCH_DIR  # noqa: E402

#: lanes -> max_n of the Verilator builds (lanes 16 at the bitnet hidden size 1536).
MAX_N = {1: 320, 4: 2560, 16: 1536}


@pytest.mark.parametrize("lanes", [1, 4, pytest.param(16, marks=pytest.mark.slow)])  # lanes 16: ~25 min cold build
def test_norm_quant_cocotb(lanes, tmp_path):
    max_n = MAX_N[lanes]
    dut = NormQuant(lanes, max_n)
    build = build_component(dut, f"norm_quant_{lanes}")
    report = tmp_path / "cycles.json"
    params = {"lanes": lanes, "max_n": max_n, "random": 12 if lanes < 16 else 6, "report": str(report)}
    res = run_cocotb(build, "tb_norm_quant", test_dir=TESTBENCH_DIR, seed=77 + lanes,
                     extra_env={"NORM_QUANT_PARAMS": json.dumps(params)}, run_dir=tmp_path / "run")
    assert len(res.passed) == 2, res
    rep = json.loads(report.read_text())
    for n, cyc in zip(rep["n"], rep["cycles"]):
        model = dut.cycles_model(n)
        print(f"lanes={lanes} n={n}: {cyc} cycles per vector (model {model})")
        assert abs(cyc - model) <= 40, (n, cyc, model)
    if lanes == 16:
        # TLMM time of the following 1536 x 1536 linear layer: 19 k-steps x 96 row tiles.
        n, cyc = rep["n"][-1], rep["cycles"][-1]
        assert n == 1536 and cyc < 1824 // 2, (n, cyc)


# -- ECP5 cost --------------------------------------------------------------------------------------------
def test_norm_quant_ecp5_cost():
    from hw.synth import synth_ecp5
    rep = synth_ecp5(NormQuant(4, 2560), "norm_quant")
    c = rep.counts()
    print(f"NormQuant(4, 2560): LUT4 {c['lut4']} CCU2C {c['ccu2c']} LUT4-eq {c['lut4_equivalent']} "
          f"FF {c['ff']} DSP {c['dsp']} BRAM {c['bram']}")
    assert c["bram"] > 0 and c["dsp"] > 0, c


def test_norm_quant_amaranth_sim_lanes16():
    """Lanes 16 (the Verilator build at 16 lanes is slow): a random vector and a huge one."""
    rng = np.random.default_rng(16)
    cases = make_cases(rng, 16, 40, n_random=1)
    run_amaranth(16, 40, [cases[i] for i in (0, 7)], seed=16, p_stall=0.3)
