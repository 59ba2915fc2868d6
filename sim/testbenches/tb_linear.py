"""cocotb testbench of :class:`hw.dataflow.linear.LinearCore` (norm + quantise -> TLMM -> dequantise)
against the golden model composed of ``norm_quant``, a plain integer matmul and ``dequant_q16``.

Environment: ``LINEAR_PARAMS`` JSON with the core's constructor arguments (``tables``, ``lanes``,
``vec_lanes``, ``max_k``, ``max_rows``, ``max_tokens``, ``x_bits``), ``cases`` (a list of
``{"k", "rows", "tokens", "kind"}``), ``seed``, ``p_stall`` and optionally ``report`` (path: cycles per
case are written there).

The stimulus, the reference and the packing need no simulator: ``tests/test_fused_linear.py`` uses them
for the Amaranth-simulator test too.
"""

import json
import os
import random

import numpy as np

from golden.numerics import dequant_q16, gate_relu2, gate_silu, norm_quant, quantise_gain, residual_add
from golden.sfloat import SFloat
from golden.tlmm import pack_ternary

__all__ = ["make_case", "reference", "residual_reference", "gate_reference", "cfg_payload", "x_payloads",
           "weight_payloads", "unpack_o", "KINDS"]

#: Case kinds: how the input vectors, gains and weights are drawn.
KINDS = ("residual", "huge", "tiny", "zero", "extreme", "gate")


def _sf(v):
    return SFloat.from_float(np.float64(v))


def make_case(rng, k, rows, tokens, kind="residual", lanes=4, x_bits=32, interleave=None):
    """One command's data: ``x`` (tokens, k), ``sx``, ``gain``, ternary ``w`` (rows, k), three weight
    scales and the row-tile grouping.

    Kinds: ``residual`` (Q.16 residual-stream values), ``huge`` (values near the ``x_bits`` limit),
    ``tiny`` (|x| <= 3), ``zero`` (all-zero rows: the eps clamp and a zero scale), ``extreme`` (every
    activation quantises to +-127 and every weight is +-1 with the sign of x: the accumulators' largest
    magnitude), ``gate`` (63-bit gate products with a tiny scale, interleaved scale groups).
    """
    lim = (1 << (x_bits - 1)) - 1
    sx = SFloat.pow2(np.int64(-16))
    if kind == "residual":
        x = np.clip(rng.normal(0, 2 * 65536, (tokens, k)), -lim, lim).astype(np.int64)
    elif kind == "huge":
        x = rng.integers(-lim, lim + 1, (tokens, k), dtype=np.int64)
        x[:, 0] = -lim
    elif kind == "tiny":
        x = rng.integers(-3, 4, (tokens, k), dtype=np.int64)
    elif kind == "zero":
        x = np.zeros((tokens, k), np.int64)
    elif kind == "extreme":
        x = rng.choice(np.array([-lim, lim], np.int64), (tokens, k))
    elif kind == "gate":
        x = rng.integers(-(1 << 52), 1 << 52, (tokens, k), dtype=np.int64)
        sx = _sf(3e-13)
    else:
        raise ValueError(kind)
    gain = quantise_gain(np.ones(k) if kind == "extreme" else rng.normal(1.0, 0.25, k), 1e-5)
    if kind == "extreme":
        w = np.where(x[:1] < 0, -1, 1).repeat(rows, 0).astype(np.int8)
    else:
        w = rng.integers(-1, 2, (rows, k), dtype=np.int8)
    tiles = -(-rows // lanes)
    interleave = kind == "gate" if interleave is None else interleave
    b0, b1 = (tiles // 3, 2 * tiles // 3) if tiles >= 3 else (tiles, tiles)
    sw = [_sf(v) for v in rng.uniform(0.3, 3.0, 3)]
    return {"x": x, "sx": sx, "gain": gain, "w": w, "sw": sw, "interleave": interleave, "bounds": (b0, b1)}


def _group(case, tile):
    if case["interleave"]:
        return tile & 1
    b0, b1 = case["bounds"]
    return int(tile >= b0) + int(tile >= b1)


def reference(case, lanes):
    """Expected ``o`` beats ``(acc, y, slot, tile)`` in emission order (row tile, then token)."""
    x, w = case["x"], case["w"]
    tokens, rows = x.shape[0], w.shape[0]
    sx = SFloat(np.full(tokens, int(case["sx"].m)), np.full(tokens, int(case["sx"].e)))
    xq, sq = norm_quant(x, sx, case["gain"])
    acc = xq @ w.T.astype(np.int64)
    tiles = -(-rows // lanes)
    out = []
    for rt in range(tiles):
        cols = slice(rt * lanes, min((rt + 1) * lanes, rows))
        y = dequant_q16(acc[:, cols], sq.mul(case["sw"][_group(case, rt)]))
        for t in range(tokens):
            pad = lanes - (cols.stop - cols.start)
            out.append(([int(v) for v in acc[t, cols]] + [0] * pad, [int(v) for v in y[t]] + [0] * pad, t, rt))
    return out


def residual_reference(case, res, lanes):
    """Expected ``o`` of a ResidualLinear: ``residual_add(res, y)`` per beat (``res`` is (tokens, tiles*N))."""
    out = []
    for _acc, y, t, rt in reference(case, lanes):
        out.append([int(v) for v in residual_add(res[t, rt * lanes:(rt + 1) * lanes], np.array(y))])
    return out


def gate_reference(case, lanes, activation):
    """Expected ``o`` of a GateLinear with golden ``gate_silu`` / ``gate_relu2`` on tile-interleaved
    rows: pair ``j`` is gate tile ``2j`` (scale ``sw0``) and up tile ``2j+1`` (scale ``sw1``)."""
    x, w = case["x"], case["w"]
    tokens, rows = x.shape[0], w.shape[0]
    assert rows % (2 * lanes) == 0, "gate|up rows come in whole tile pairs"
    sx = SFloat(np.full(tokens, int(case["sx"].m)), np.full(tokens, int(case["sx"].e)))
    xq, sq = norm_quant(x, sx, case["gain"])
    acc = xq @ w.T.astype(np.int64)
    fn = gate_silu if activation == "silu" else gate_relu2
    out = []
    for j in range(rows // (2 * lanes)):
        g = acc[:, 2 * j * lanes:(2 * j + 1) * lanes]
        u = acc[:, (2 * j + 1) * lanes:(2 * j + 2) * lanes]
        h, _scale = fn(g, sq.mul(case["sw"][0]), u, sq.mul(case["sw"][1]))
        out += [[int(v) for v in h[t]] for t in range(tokens)]
    return out


def unpack_vector(word, lanes, bits):
    """Lane values of a :func:`~hw.vector.epilogue.vector_layout` payload."""
    out = []
    for n in range(lanes):
        v = (word >> (bits * n)) & ((1 << bits) - 1)
        out.append(v - (1 << bits) if v >> (bits - 1) else v)
    return out


def pack_vector(values, bits):
    word = 0
    for n, v in enumerate(values):
        word |= (int(v) & ((1 << bits) - 1)) << (bits * n)
    return word


def cfg_payload(core, case):
    """The ``cfg`` payload (int) for ``core`` (a LinearCore)."""
    tokens, k = case["x"].shape
    packed = pack_ternary(case["w"], core.tables, core.lanes)
    sfl = lambda s: {"m": int(s.m), "e": int(s.e) if int(s.m) else 0}  # noqa: E731
    return core.cfg.payload.shape().const({
        "n": k, "k_steps": packed.k_steps, "row_tiles": packed.row_tiles, "tokens": tokens,
        "sx": sfl(case["sx"]), "shift": case["gain"].shift, "eps": sfl(case["gain"].eps),
        "sw0": sfl(case["sw"][0]), "sw1": sfl(case["sw"][1]), "sw2": sfl(case["sw"][2]),
        "interleave": int(case["interleave"]), "bound0": case["bounds"][0], "bound1": case["bounds"][1],
    }).as_bits()


def x_payloads(core, case):
    """The ``x`` beats (ints): every token's vector, ``vec_lanes`` values and gains per beat."""
    layout = core.x.payload.shape()
    vl = core.vec_lanes
    g = [int(v) for v in case["gain"].q]
    out = []
    for row in case["x"]:
        for s in range(0, len(row), vl):
            xs = [int(v) for v in row[s:s + vl]]
            gs = g[s:s + vl]
            out.append(layout.const({
                "x": {f"lane{n}": v for n, v in enumerate(xs)},
                "g": {f"lane{n}": v for n, v in enumerate(gs)},
            }).as_bits())
    return out


def weight_payloads(core, case):
    """The packed weight words (ints) in engine order: row tile, then k-step."""
    packed = pack_ternary(case["w"], core.tables, core.lanes)
    return [int.from_bytes(bytes(row), "little") for row in packed.data]


def unpack_o(core, word):
    view = core.o.payload.shape().from_bits(word)
    n = core.lanes
    return ([int(view.acc[f"lane{i}"]) for i in range(n)], [int(view.y[f"lane{i}"]) for i in range(n)],
            int(view.slot), int(view.tile))


try:
    import cocotb
except ImportError:  # the helpers above are used without cocotb too
    cocotb = None

if cocotb is not None:
    from sim import cocotb_streams as streams

    def _core(p):
        from hw.dataflow.linear import LinearCore
        core = LinearCore(p["tables"], p["lanes"], p["vec_lanes"], p["max_k"], p["max_rows"], p["max_tokens"],
                          x_bits=p["x_bits"])
        core._MustUse__silence = True
        return core

    @cocotb.test()
    async def test_cases_with_stalls(dut):
        p = json.loads(os.environ["LINEAR_PARAMS"])
        core = _core(p)
        rng = np.random.default_rng(p["seed"])
        await streams.reset(dut, ["cfg", "x", "weights"], ["o"])
        report = []
        for c in p["cases"]:
            case = make_case(rng, c["k"], c["rows"], c["tokens"], c["kind"], core.lanes, core.x_bits)
            want = reference(case, core.lanes)
            run = await streams.run_streams(
                dut, {"cfg": [cfg_payload(core, case)], "x": x_payloads(core, case),
                      "weights": weight_payloads(core, case)},
                "o", len(want), random.Random(p["seed"] + len(report)), p["p_stall"], p["p_stall"])
            got = [unpack_o(core, w) for w in run.received]
            for i, (g, e) in enumerate(zip(got, want)):
                assert g == e, f"case {c}: beat {i} (tile {e[3]}, token {e[2]}): got {g}, want {e}"
            report.append({**c, "cycles": run.cycles})
        if p.get("report"):
            with open(p["report"], "w") as f:
                json.dump(report, f)
