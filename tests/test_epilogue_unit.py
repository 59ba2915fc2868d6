"""The epilogue units (dequant, residual add, SiLU and ReLU^2 gates) against the golden model.

Three layers: the Amaranth simulator on short seeded runs with stalls (fast, every unit); cocotb on
Verilator for lanes 1, 4 and 16 (thousands of beats and every corner case, random stalls, measured
throughput); and Yosys ``synth_ecp5`` cost for lanes 4 and 16.
"""

import json

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden.numerics import RES_FRAC, dequant_q16, gate_relu2, gate_silu, sigmoid_table, silu_q16
from golden.sfloat import SFloat
from hw.vector.epilogue import (SHIFT_MIN, Dequant, GateRelu2, GateSilu, ResidualAdd, dequant_in_layout,
                                sigmoid_rom, vector_layout)
from sim.testbenches.tb_epilogue import (UNITS, exact_dequant, make_beats, pack, ref_dequant, reference,
                                         unit_class, unpack)


# -- helpers and references ------------------------------------------------------------------------------
def test_sigmoid_rom_holds_the_table():
    table = sigmoid_table()
    rom = sigmoid_rom()
    assert len(rom) == 1024 and max(rom) < 1 << 18
    decoded = [16384 + (w & 0x3FFF) for w in rom] + [32768 - (w >> 14) for w in rom]
    assert decoded == [int(v) for v in table]


def test_dequant_packing_matches_layout():
    lanes = 3
    acc, m16, shift = [-1, 5, -(1 << 31)], 40000, -7
    acc_fields = {f"lane{n}": v for n, v in enumerate(acc)}
    want = dequant_in_layout(lanes).const({"acc": acc_fields, "m16": m16, "shift": shift}).as_bits()
    assert pack("dequant", lanes, "i", (acc, m16, shift)) == want
    assert pack("silu", lanes, "up", acc) == vector_layout(lanes).const(acc_fields).as_bits()
    out = vector_layout(lanes, 64).const({f"lane{n}": v << 20 for n, v in enumerate(acc)}).as_bits()
    assert unpack("silu", lanes, out) == [v << 20 for v in acc]


def test_dequant_reference_is_golden_dequant_q16():
    """(m16, shift) = the multiplier form of scale * 2^16 gives dequant_q16; below -16 the clamp is exact."""
    rng = np.random.default_rng(5)
    for _ in range(300):
        scale = SFloat.from_float(np.float64(2.0 ** rng.uniform(-45, 25)))
        acc = rng.integers(-(1 << 31), 1 << 31, 8)
        m16, s = scale.scale_pow2(RES_FRAC).multiplier()
        s = int(np.clip(s, -128, 127))
        if s >= SHIFT_MIN:  # below, golden's int64 left shift wraps (a scale above 2^15: not a real one)
            assert list(ref_dequant(acc, m16, s)) == list(dequant_q16(acc[None, :], scale.reshape(1))[0])
        assert list(ref_dequant(acc, m16, s)) == exact_dequant(acc, m16, s)
    for s in range(-128, SHIFT_MIN):
        for m16 in (0, 1 << 15, 65535):
            acc = [0, 1, -1, (1 << 31) - 1, -(1 << 31)]
            assert list(ref_dequant(acc, m16, s)) == exact_dequant(acc, m16, s)


def test_gate_references_are_golden():
    """The unit references compose to golden.gate_silu / gate_relu2 (Dequant feeds GateSilu's gate)."""
    rng = np.random.default_rng(6)
    acc_g = rng.integers(-(1 << 20), 1 << 20, 64)
    acc_u = rng.integers(-(1 << 20), 1 << 20, 64)
    sg, su = SFloat.from_float(np.float64(3e-4)), SFloat.from_float(np.float64(2e-3))
    m16, s = sg.scale_pow2(RES_FRAC).multiplier()
    g = ref_dequant(acc_g, m16, int(s))
    h = reference("silu", {"gate": list(g), "up": list(acc_u)})
    assert h == list(gate_silu(acc_g, sg, acc_u, su)[0])
    assert h == list(silu_q16(g) * acc_u)
    h2 = reference("relu2", {"gate": list(acc_g), "up": list(acc_u)})
    assert h2 == list(gate_relu2(acc_g, sg, acc_u, su)[0])


def test_stimulus_reaches_the_corners():
    """The generated beats (as the cocotb runs use them) saturate both ways, hit both sigmoid-table ends
    and the ReLU^2 bound, so a pass means those paths were exercised."""
    rng = np.random.default_rng(0)
    outs = {u: [v for b in make_beats(u, 4, rng, 200) for v in reference(u, b)] for u in UNITS}
    for u in ("dequant", "residual"):
        assert (1 << 31) - 1 in outs[u] and -(1 << 31) in outs[u], u
        assert sum(abs(v) < 1 << 20 and v != 0 for v in outs[u]) > 100, u
    beats = make_beats("dequant", 4, rng, 200)
    shifts = {b["i"][2] for b in beats}
    assert {-16, 62, 63, 127, -128} <= shifts and {0, 65535} <= {b["i"][1] for b in beats}
    g = np.array([v for b in make_beats("silu", 4, rng, 200) for v in b["gate"]])
    idx = (np.abs(g) + 256) >> 9
    for sign in (1, -1):
        side = idx[np.sign(g) == sign]
        assert {2046, 2047, 2048} <= set(side.tolist()) and (side > 2048).any() and (side < 1024).any()
    a = np.array([v for b in make_beats("relu2", 4, rng, 200) for v in b["gate"]])
    assert {(1 << 20), (1 << 21) - 1, -(1 << 20)} <= set(a.tolist())
    assert max(outs["relu2"]) > 1 << 62 and min(outs["relu2"]) < -(1 << 62)


@pytest.mark.filterwarnings("ignore:.*created but never used")  # the rejected instances
@pytest.mark.parametrize("cls", [Dequant, ResidualAdd, GateSilu, GateRelu2])
def test_lanes_are_validated(cls):
    for bad in (0, 65, 2.0, True, "4"):
        with pytest.raises(ValueError, match="lanes"):
            cls(bad)


# -- Amaranth simulator ----------------------------------------------------------------------------------
def run_amaranth(unit, lanes, beats, seed, p_stall):
    """Stream ``beats`` through the unit in the Amaranth simulator with random stalls; check each output."""
    dut = unit_class(unit)(lanes)
    names = UNITS[unit][0]
    rng = np.random.default_rng(seed)
    want = [reference(unit, b) for b in beats]
    words = {n: [pack(unit, lanes, n, b[n]) for b in beats] for n in names}
    got = []

    async def bench(ctx):
        idx = {n: 0 for n in names}
        valid = {n: False for n in names}
        held = None
        for _ in range(40 * len(beats) + 100):
            for n in names:
                port = getattr(dut, n)
                if not valid[n] and idx[n] < len(beats) and rng.random() >= p_stall:
                    valid[n] = True
                    ctx.set(port.payload.as_value(), words[n][idx[n]])
                ctx.set(port.valid, valid[n])
            ready = rng.random() >= p_stall
            ctx.set(dut.o.ready, ready)
            if ctx.get(dut.o.valid):
                payload = ctx.get(dut.o.payload.as_value())
                assert held is None or payload == held, "output changed while stalled"
                held = None if ready else payload
                if ready:
                    got.append(unpack(unit, lanes, payload))
            else:
                assert held is None, "output valid dropped while stalled"
            for n in names:
                if valid[n] and ctx.get(getattr(dut, n).ready):
                    valid[n], idx[n] = False, idx[n] + 1
            await ctx.tick()
            if len(got) == len(beats):
                return

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"beat {k}: inputs {beats[k]}: got {g}, expected {w}"


def _sample(beats, n, rng):
    """The first ``n`` (random) beats plus a random subset of the rest (corner cases)."""
    corners = beats[n:]
    pick = rng.choice(len(corners), min(len(corners), 60), replace=False)
    return beats[:n] + [corners[i] for i in sorted(pick)]


@pytest.mark.parametrize("unit", list(UNITS))
@pytest.mark.parametrize("lanes", [1, 3])
def test_unit_amaranth_sim(unit, lanes):
    rng = np.random.default_rng(lanes * 10 + len(unit))
    beats = _sample(make_beats(unit, lanes, rng, 150), 150, rng)
    run_amaranth(unit, lanes, beats, seed=lanes, p_stall=0.3)


def test_dequant_shift_extremes_amaranth_sim():
    """Every corner shift with the saturating accumulators, no stalls (back-to-back scale changes)."""
    rng = np.random.default_rng(1)
    beats = make_beats("dequant", 2, rng, 0)
    run_amaranth("dequant", 2, beats[::3], seed=2, p_stall=0.0)


# -- Verilator (cocotb) ----------------------------------------------------------------------------------
from sim import build_component, run_cocotb  # noqa: E402
from sim.testbenches import TESTBENCH_DIR  # noqa: E402


@pytest.mark.parametrize("lanes", [1, 4, 16])
@pytest.mark.parametrize("unit", list(UNITS))
def test_unit_cocotb(unit, lanes, tmp_path):
    dut = unit_class(unit)(lanes)
    build = build_component(dut, f"epilogue_{unit}_{lanes}")
    report = tmp_path / "throughput.json"
    params = {"unit": unit, "lanes": lanes, "beats": 1500 if lanes < 16 else 600, "report": str(report)}
    res = run_cocotb(build, "tb_epilogue", test_dir=TESTBENCH_DIR, seed=2024 + lanes,
                     extra_env={"EPILOGUE_PARAMS": json.dumps(params)}, run_dir=tmp_path / "run")
    assert len(res.passed) == 2, res
    tp = json.loads(report.read_text())
    assert tp["latency"] == dut.latency, tp
    assert tp["elements_per_cycle"] == lanes, tp  # one beat per cycle, exactly
    print(f"{unit} lanes={lanes}: {tp['elements_per_cycle']} elements/cycle, latency {tp['latency']}")


# -- ECP5 cost --------------------------------------------------------------------------------------------
#: MULT18X18D per lane (see the hw.vector.epilogue docstring).
DSP_PER_LANE = {"dequant": 2, "residual": 0, "silu": 6, "relu2": 4}


@pytest.mark.parametrize("lanes", [4, 16])
@pytest.mark.parametrize("unit", list(UNITS))
def test_unit_ecp5_cost(unit, lanes):
    from hw.synth import synth_ecp5
    rep = synth_ecp5(unit_class(unit)(lanes), f"epilogue_{unit}_{lanes}")
    c = rep.counts()
    print(f"{unit} lanes={lanes}: LUT4 {c['lut4']} CCU2C {c['ccu2c']} LUT4-eq {c['lut4_equivalent']} "
          f"FF {c['ff']} DSP {c['dsp']} BRAM {c['bram']} PFUMX {c['pfumx']} "
          f"(per lane: LUT4-eq {c['lut4_equivalent'] / lanes:.0f}, FF {c['ff'] / lanes:.0f})")
    assert c["dsp"] == DSP_PER_LANE[unit] * lanes, c
    assert c["bram"] == ((lanes + 1) // 2 if unit == "silu" else 0), c
