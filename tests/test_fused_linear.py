# amaranth: UnusedElaboratable=no
"""LinearCore: RMSNorm + int8 quantise -> TLMM -> dequantise as one stream, against the golden chain
``norm_quant`` -> integer matmul -> ``dequant_q16``.

Amaranth simulator: every case kind (residual-stream values, huge and tiny magnitudes, all-zero rows,
extreme accumulators, 63-bit gate products with interleaved scale groups), prefill chunks of several
tokens, K not a multiple of 3T or of the vector lanes, R not a multiple of N, random stalls on every
stream. cocotb on Verilator: the same at the tiny config, several commands back to back.
"""

import json

import numpy as np
import pytest
from amaranth.hdl import Value
from amaranth.sim import Simulator

from golden.fixed import INT32_MAX, INT32_MIN
from hw.dataflow.epilogues import GateLinear, ResidualLinear
from hw.dataflow.linear import LinearCore
from sim.testbenches.tb_linear import (cfg_payload, gate_reference, make_case, pack_vector, reference,
                                       residual_reference, unpack_o, unpack_vector, weight_payloads, x_payloads)


def simulate(core, case, seed, p_stall=0.3, extra=None, want=None, unpack=None):
    """Run one command through ``core`` (a LinearCore or an epilogue assembly) in the Amaranth
    simulator; ``extra`` adds input streams. Returns (outputs, cycles)."""
    rng = np.random.default_rng(seed)
    want = len(reference(case, core.lanes)) if want is None else want
    unpack = unpack or (lambda word: unpack_o(core, word))
    sources = {"cfg": [cfg_payload(core, case)], "x": x_payloads(core, case),
               "weights": weight_payloads(core, case), **(extra or {})}
    got, cycles = [], []
    sim = Simulator(core)
    sim.add_clock(1e-6)

    def source(name):
        port = getattr(core, name)

        async def drive(ctx):
            for word in sources[name]:
                while rng.random() < p_stall:
                    await ctx.tick()
                ctx.set(Value.cast(port.payload), word)
                ctx.set(port.valid, 1)
                await ctx.tick().until(port.ready)
                ctx.set(port.valid, 0)
        return drive

    async def sink(ctx):
        n = 0
        while len(got) < want:
            ready = int(rng.random() >= p_stall)
            ctx.set(core.o.ready, ready)
            _, _, valid, pay = await ctx.tick().sample(core.o.valid, core.o.payload)
            if valid and ready:
                got.append(unpack(pay.as_bits() if hasattr(pay, "as_bits") else int(pay)))
            n += 1
            assert n < 100 * (want + len(sources["x"])) + 5000, "timeout"
        cycles.append(n)

    for name in sources:
        sim.add_testbench(source(name))
    sim.add_testbench(sink)
    sim.run()
    return got, cycles[0]


@pytest.mark.parametrize("tables, lanes, vec_lanes, k, rows, tokens, kind, x_bits", [
    (2, 4, 4, 20, 10, 1, "residual", 32),    # decode; R not a multiple of N
    (4, 4, 4, 37, 13, 3, "residual", 32),    # prefill chunk of 3; K not a multiple of 3T or the lanes
    (4, 4, 5, 24, 8, 2, "zero", 32),         # all-zero rows: eps clamp, zero scale, zero outputs
    (2, 4, 8, 40, 12, 2, "extreme", 32),     # every activation +-127, accumulators at their extreme
    (8, 1, 3, 17, 19, 2, "huge", 32),        # values at the int32 limit; one lane
    (2, 4, 4, 12, 16, 1, "tiny", 32),        # |x| <= 3
    (4, 4, 4, 30, 16, 3, "gate", 63),        # 63-bit gate products, tiny scale, interleaved groups
])
def test_linear_core_amaranth_sim(tables, lanes, vec_lanes, k, rows, tokens, kind, x_bits):
    core = LinearCore(tables, lanes, vec_lanes, k + 5, rows + 3, max(tokens, 2), x_bits=x_bits)
    case = make_case(np.random.default_rng(k * rows + tokens), k, rows, tokens, kind, lanes, x_bits)
    got, _ = simulate(core, case, seed=k + rows)
    want = reference(case, lanes)
    assert len(got) == len(want)
    for i, (g, e) in enumerate(zip(got, want)):
        assert g == e, f"beat {i} (tile {e[3]}, token {e[2]}): got {g}, want {e}"


def test_reference_exercises_saturation_and_extremes():
    """The extreme case drives accumulators to 127 * K and the huge case saturates the dequantiser, so
    the tests above cover those paths."""
    rng = np.random.default_rng(1)
    case = make_case(rng, 40, 12, 2, "extreme", 4, 32)
    assert max(abs(v) for beat in reference(case, 4) for v in beat[0]) == 127 * 40
    zero = make_case(rng, 24, 8, 2, "zero", 4, 32)
    assert all(v == 0 for beat in reference(zero, 4) for v in beat[0] + beat[1])


@pytest.mark.parametrize("bad", [dict(tables=0), dict(lanes=65), dict(max_tokens=0), dict(x_bits=16)])
def test_arguments_are_validated(bad):
    args = dict(tables=4, lanes=4, vec_lanes=4, max_k=64, max_rows=64, max_tokens=1)
    with pytest.raises((ValueError, TypeError)):
        LinearCore(**{**args, **bad})


@pytest.mark.parametrize("tokens", [1, 3])
def test_residual_linear_amaranth_sim(tokens):
    """o_proj / down: the residual add saturates both ways (the residual holds int32 extremes)."""
    lanes, k, rows = 4, 26, 12
    core = ResidualLinear(2, lanes, 4, k, rows, 4)
    rng = np.random.default_rng(40 + tokens)
    case = make_case(rng, k, rows, tokens, "residual", lanes)
    res = rng.integers(INT32_MIN, INT32_MAX + 1, (tokens, rows), dtype=np.int64)
    y = np.zeros((tokens, rows), np.int64)
    for _acc, yb, t, rt in reference(case, lanes):
        y[t, rt * lanes:(rt + 1) * lanes] = yb
    # First tile: the residual at the limit on y's side, so every non-zero y saturates.
    res[:, :lanes] = np.where(y[:, :lanes] >= 0, INT32_MAX, INT32_MIN)
    order = [(t, rt) for rt in range(rows // lanes) for t in range(tokens)]
    beats = [pack_vector(res[t, rt * lanes:(rt + 1) * lanes], 32) for t, rt in order]
    want = residual_reference(case, res, lanes)
    got, _ = simulate(core, case, seed=3, extra={"res": beats}, want=len(want),
                      unpack=lambda w: unpack_vector(w, lanes, 32))
    assert got == want
    flat = [v for beat in want for v in beat]
    assert INT32_MAX in flat and INT32_MIN in flat


@pytest.mark.parametrize("activation, tokens, kind", [("silu", 1, "residual"), ("silu", 3, "huge"),
                                                      ("relu2", 2, "residual"), ("relu2", 1, "extreme")])
def test_gate_linear_amaranth_sim(activation, tokens, kind):
    """gate|up with tile-interleaved rows against golden gate_silu / gate_relu2 (both activation kinds)."""
    lanes, k, rows = 4, 30, 16
    core = GateLinear(activation, 4, lanes, 4, k, rows, 4)
    case = make_case(np.random.default_rng(50 + tokens), k, rows, tokens, kind, lanes, interleave=True)
    want = gate_reference(case, lanes, activation)
    got, _ = simulate(core, case, seed=4, want=len(want), unpack=lambda w: unpack_vector(w, lanes, 64))
    assert got == want


def test_gate_linear_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        GateLinear("gelu", 4, 4, 4, 16, 16)


from sim import build_component, run_cocotb  # noqa: E402
from sim.testbenches import TESTBENCH_DIR  # noqa: E402


def test_linear_core_cocotb_tiny(tmp_path):
    """tiny config (T = 4, N = 4, 4 vector lanes), several commands back to back under 30 % stalls."""
    params = {"tables": 4, "lanes": 4, "vec_lanes": 4, "max_k": 96, "max_rows": 64, "max_tokens": 4,
              "x_bits": 32, "seed": 11, "p_stall": 0.3, "report": str(tmp_path / "report.json"),
              "cases": [{"k": 96, "rows": 64, "tokens": 1, "kind": "residual"},
                        {"k": 61, "rows": 22, "tokens": 4, "kind": "residual"},
                        {"k": 33, "rows": 9, "tokens": 2, "kind": "zero"},
                        {"k": 48, "rows": 16, "tokens": 3, "kind": "extreme"},
                        {"k": 50, "rows": 30, "tokens": 2, "kind": "huge"},
                        {"k": 7, "rows": 5, "tokens": 1, "kind": "tiny"}]}
    core = LinearCore(4, 4, 4, 96, 64, 4)
    build = build_component(core, "linear_core_tiny")
    run_cocotb(build, "tb_linear", test_dir=TESTBENCH_DIR, seed=11,
               extra_env={"LINEAR_PARAMS": json.dumps(params)}, run_dir=tmp_path / "run")
    assert len(json.loads((tmp_path / "report.json").read_text())) == len(params["cases"])
