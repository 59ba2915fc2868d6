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
from golden.sfloat import SFloat
from hw.dataflow.epilogues import GateLinear, QkvLinear, ResidualLinear, qkv_row_order
from hw.dataflow.linear import LinearCore
from sim.testbenches.tb_linear import (cfg_payload, gate_reference, make_case, make_qkv_case, pack_vector,
                                       qkv_reference, reference, residual_reference, sx_payloads,
                                       unpack_o,
                                       unpack_qkv, unpack_vector, weight_payloads, x_payloads)


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


@pytest.mark.parametrize("tokens", [1, 3])
def test_linear_core_per_token_input_scales(tokens):
    """down_proj: the input h has a per-token scale (from the gate), taken from the ``sx`` stream; the
    scales differ by orders of magnitude between tokens."""
    core = LinearCore(2, 4, 4, 30, 12, 4, x_bits=63, token_scales=True)
    rng = np.random.default_rng(70 + tokens)
    case = make_case(rng, 30, 12, tokens, "gate", 4, 63, interleave=False)
    case["sx_tokens"] = [SFloat.from_float(np.float64(v)) for v in (3e-13, 2e-9, 7e-16)[:tokens]]
    got, _ = simulate(core, case, seed=6, extra={"sx": sx_payloads(core, case)})
    assert got == reference(case, 4)


@pytest.mark.parametrize("bits, tokens", [(8, 1), (3, 2), (2, 3)])
def test_linear_core_bit_serial_weights(bits, tokens):
    """int-k weights (the LM head) bit-serially on the same core: k bit planes per (row tile, k-step), the
    top plane negated; accumulators equal the integer matmul, weights at +-(2^(k-1) - 1) included."""
    core = LinearCore(2, 4, 4, 40, 16, 4)
    rng = np.random.default_rng(bits * 10 + tokens)
    case = make_case(rng, 37, 14, tokens, "residual", 4)
    qmax = (1 << (bits - 1)) - 1
    w = rng.integers(-qmax, qmax + 1, (14, 37)).astype(np.int8)
    w[0, :] = qmax
    w[1, :] = -qmax
    case.update(w=w, bits=bits)
    got, _ = simulate(core, case, seed=bits)
    assert got == reference(case, 4)


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


@pytest.mark.parametrize("heads, kv_heads, head_dim, tokens, pos, kind", [
    (2, 2, 8, 1, 0, "residual"),       # decode at position 0: RoPE is the identity everywhere
    (2, 1, 8, 3, 509, "residual"),     # prefill chunk mid-sequence, GQA 2:1, positions 509..511
    (4, 1, 16, 2, 65534, "huge"),      # GQA 4:1, the largest positions, values at the int32 limit
    (1, 1, 12, 2, 7, "tiny"),          # |x| <= 3: exponents 0
    (2, 1, 8, 2, 100, "zero"),         # all-zero rows: zero vectors, e = 0
])
def test_qkv_linear_amaranth_sim(heads, kv_heads, head_dim, tokens, pos, kind):
    """q|k|v + RoPE (q, k) + power-of-two int8 quantisation, against the golden chain."""
    lanes, k = 4, 22
    rows = (heads + 2 * kv_heads) * head_dim
    core = QkvLinear(2, lanes, 4, k, rows, 4, head_dim=head_dim,
                     freq_table=make_qkv_case(np.random.default_rng(0), 3, 1, 1, head_dim, 1, 0)["freq"])
    case = make_qkv_case(np.random.default_rng(60 + tokens), k, heads, kv_heads, head_dim, tokens, pos, kind, lanes)
    if kind == "huge":  # weight scales that saturate the dequantiser: int32 extremes into RoPE and quant
        case["sw"] = [SFloat.from_float(np.float64(v)) for v in (2.0 ** 14, 2.0 ** 13, 3.0)]
    want = qkv_reference(case, lanes)
    got, _ = simulate(core, case, seed=5, want=len(want), unpack=lambda w: unpack_qkv(core, w))
    assert got == want
    if kind == "huge":  # RoPE and the quantiser see int32 extremes: large exponents
        assert max(beat[1] for beat in want) >= 24


def test_qkv_row_order_pairs_rotate_half_partners():
    order = qkv_row_order(2, 8, 4)
    # Head 0: tile 0 = elements 0, 1 (lo) and 4, 5 (hi); tile 1 = 2, 3 and 6, 7. Head 1 is offset by 8.
    assert order == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    with pytest.raises(ValueError, match="multiple of the lanes"):
        qkv_row_order(1, 12, 8)


@pytest.mark.parametrize("bad", [dict(head_dim=6), dict(lanes=3, head_dim=12), dict(pos_bits=0)])
def test_qkv_linear_arguments_are_validated(bad):
    args = dict(tables=2, lanes=4, vec_lanes=4, max_k=16, max_rows=48, head_dim=8, freq_table=[1, 2, 3, 4])
    args.update(bad)
    if "head_dim" in bad:
        args["freq_table"] = list(range(args["head_dim"] // 2))
    with pytest.raises(ValueError):
        QkvLinear(**args)


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


def test_fused_linear_program_cocotb_tiny(tmp_path):
    """Verilator: one FusedLinear at the tiny geometry runs every command kind back to back (q|k|v with
    RoPE, o_proj, SiLU and ReLU^2 gates, down_proj with per-token scales, the bit-serial LM head) under
    30 % stalls on every stream, bit-exact, with every token's activation scale on ``sq``."""
    from sim.testbenches.tb_linear import fused_design

    params = {"assembly": "fused", "seed": 21, "p_stall": 0.3, "report": str(tmp_path / "report.json")}
    build = build_component(fused_design(), "fused_linear_tiny")
    run_cocotb(build, "tb_linear", test_dir=TESTBENCH_DIR, seed=21,
               extra_env={"LINEAR_PARAMS": json.dumps(params)}, run_dir=tmp_path / "run")
    names = [r["name"] for r in json.loads((tmp_path / "report.json").read_text())]
    assert names == ["qkv", "o_proj", "silu", "relu2", "down", "lm_head"]


def test_fused_linear_runs_every_epilogue_back_to_back():
    """Amaranth simulator: one FusedLinear (one core, all epilogues) runs q|k|v, o_proj (residual),
    gate|up SiLU and ReLU^2, down_proj (per-token input scales) and the bit-serial LM head one after
    another, each bit-exact against its golden chain, and emits every token's activation scale."""
    import random

    from sim.testbenches.tb_linear import fused_design, fused_program

    dut = fused_design()
    freq, program = fused_program(dut, np.random.default_rng(9))
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    pyrng = random.Random(4)
    results, scales = [], []

    async def bench(ctx):
        for i, f in enumerate(freq):
            ctx.set(dut.rope_load.payload, {"index": i, "value": int(f)})
            ctx.set(dut.rope_load.valid, 1)
            await ctx.tick()
        ctx.set(dut.rope_load.valid, 0)
        ctx.set(dut.sq.ready, 1)
        for c in program:
            srcs, port = c["sources"], getattr(dut, c["sink"])
            idx = {k: 0 for k in srcs}
            got = []
            for _ in range(100000):
                if len(got) == len(c["want"]):
                    break
                for name, items in srcs.items():
                    p = getattr(dut, name)
                    live = idx[name] < len(items) and pyrng.random() < 0.7
                    ctx.set(p.valid, int(live))
                    if live:
                        ctx.set(Value.cast(p.payload), items[idx[name]])
                ready = int(pyrng.random() < 0.7)
                ctx.set(port.ready, ready)
                sampled = await ctx.tick().sample(*(getattr(dut, n).valid for n in srcs),
                                                  *(getattr(dut, n).ready for n in srcs), port.valid, port.payload,
                                                  dut.sq.valid, dut.sq.payload)
                vals = sampled[2:]
                if vals[-2]:
                    scales.append((int(vals[-1].m), int(vals[-1].e)))
                n = len(srcs)
                for i, name in enumerate(srcs):
                    if vals[i] and vals[n + i]:
                        idx[name] += 1
                if vals[2 * n] and ready:
                    pay = vals[2 * n + 1]
                    got.append(c["unpack"](pay.as_bits() if hasattr(pay, "as_bits") else int(pay)))
            for name in srcs:
                ctx.set(getattr(dut, name).valid, 0)
            results.append((c["name"], got, c["want"]))

    sim.add_testbench(bench)
    sim.run()
    for name, got, want in results:
        assert got == want, name
    assert scales == [s for c in program for s in c["scales"]]
