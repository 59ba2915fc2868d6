"""cocotb testbench of :class:`hw.dataflow.linear.LinearCore` (norm + quantise -> TLMM -> dequantise)
against the golden model composed of ``norm_quant``, a plain integer matmul and ``dequant_q16``.

Environment: ``LINEAR_PARAMS`` JSON with the core's constructor arguments (``tables``, ``lanes``,
``vec_lanes``, ``max_k``, ``max_rows``, ``max_tokens``, ``x_bits``), ``assembly`` (``core``,
``residual``, ``silu``, ``relu2`` or ``qkv``, the last with ``head_dim`` and ``theta``), ``cases`` (a
list of ``{"k", "rows", "tokens", "kind"}``; for ``qkv`` ``{"k", "heads", "kv_heads", "tokens", "pos",
"kind"}``), ``seed``, ``p_stall`` and optionally ``report`` (path: cycles per case are written there).

The same testbench covers the epilogue assemblies of ``hw/dataflow/epilogues.py``.

The stimulus, the reference and the packing need no simulator: ``tests/test_fused_linear.py`` uses them
for the Amaranth-simulator test too.
"""

import json
import os
import random

import numpy as np

from golden.fixed import round_shift, saturate
from golden.numerics import (dequant_q16, gate_relu2, gate_silu, norm_quant, quant_pow2, quantise_gain,
                             residual_add, rope_apply, rope_cos_sin, rope_freq_table)
from golden.sfloat import SFloat
from golden.tlmm import pack_bitserial, pack_ternary

__all__ = ["make_case", "make_qkv_case", "reference", "residual_reference", "gate_reference", "qkv_reference",
           "cfg_fields", "cfg_payload", "x_payloads", "sx_payloads", "token_sx", "weight_payloads", "unpack_o", "unpack_qkv", "KINDS"]

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


def make_qkv_case(rng, k, heads, kv_heads, head_dim, tokens, pos, kind="residual", lanes=4, theta=10000.0):
    """A fused q|k|v command: ``heads`` q heads and ``kv_heads`` k and v heads of ``head_dim``, for the
    chunk of ``tokens`` starting at position ``pos``. ``w`` is in packed order
    (:func:`~hw.dataflow.epilogues.qkv_row_order` for q and k); ``w_model`` in the model's."""
    from hw.dataflow.epilogues import qkv_row_order

    rows = (heads + 2 * kv_heads) * head_dim
    case = make_case(rng, k, rows, tokens, kind, lanes, interleave=False)
    qd, kd = heads * head_dim, kv_heads * head_dim
    order = (qkv_row_order(heads, head_dim, lanes) + [qd + r for r in qkv_row_order(kv_heads, head_dim, lanes)]
             + list(range(qd + kd, rows)))
    case.update(w_model=case["w"], w=case["w"][order], bounds=(qd // lanes, (qd + kd) // lanes), pos=pos,
                heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                freq=rope_freq_table(head_dim, theta))
    return case


def qkv_reference(case, lanes):
    """Expected ``o`` beats ``(q, e, slot, first, last)`` of a QkvLinear: golden norm_quant, matmul,
    dequant_q16 per group, rope_apply on q and k, quant_pow2 per head vector; vectors in order of head
    (q, k, v), then token; q and k elements in the packed (pair-tile) order."""
    x, w = case["x"], case["w_model"]
    tokens = x.shape[0]
    h, hkv, d = case["heads"], case["kv_heads"], case["head_dim"]
    sx = token_sx(case)
    xq, sq = norm_quant(x, sx, case["gain"])
    acc = xq @ w.T.astype(np.int64)
    parts = np.split(acc, [h * d, (h + hkv) * d], axis=1)
    cos, sin = rope_cos_sin(case["pos"] + np.arange(tokens), case["freq"])
    vectors = []
    for g, (part, nh) in enumerate(zip(parts, (h, hkv, hkv))):
        y = dequant_q16(part, sq.mul(case["sw"][g])).reshape(tokens, nh, d)
        if g < 2:
            y = rope_apply(y, cos, sin)
        q8, e = quant_pow2(y)
        half, hl = d // 2, lanes // 2
        perm = ([r for b in range(d // lanes) for r in list(range(b * hl, b * hl + hl))
                 + list(range(half + b * hl, half + b * hl + hl))] if g < 2 else list(range(d)))
        vectors += [(q8[t, j][perm], int(e[t, j]), t) for j in range(nh) for t in range(tokens)]
    out = []
    nb = d // lanes
    for vals, e, t in vectors:
        for b in range(nb):
            out.append(([int(v) for v in vals[b * lanes:(b + 1) * lanes]], e, t, int(b == 0), int(b == nb - 1)))
    return out


def unpack_qkv(dut, word):
    port = dut.qkv if hasattr(dut, "qkv") else dut.o      # FusedLinear's q|k|v port, or QkvLinear's
    view = port.payload.shape().from_bits(word)
    return ([int(view.q[f"lane{i}"]) for i in range(dut.lanes)], int(view.e), int(view.slot), int(view.first),
            int(view.last))


def _group(case, tile):
    if case["interleave"]:
        return tile & 1
    b0, b1 = case["bounds"]
    return int(tile >= b0) + int(tile >= b1)


def token_sx(case):
    """The input scale of every token: ``case["sx_tokens"]`` (a list of SFloats) or the command's ``sx``."""
    tokens = case["x"].shape[0]
    each = case.get("sx_tokens") or [case["sx"]] * tokens
    return SFloat(np.array([int(s.m) for s in each]), np.array([int(s.e) for s in each]))


def sx_payloads(core, case):
    """The ``sx`` stream of a core with ``token_scales``: one SFloat per token."""
    layout = core.sx.payload.shape()
    return [layout.const({"m": int(s.m), "e": int(s.e) if int(s.m) else 0}).as_bits() for s in case["sx_tokens"]]


def reference(case, lanes):
    """Expected ``o`` beats ``(acc, y, slot, tile)`` in emission order (row tile, then token)."""
    x, w = case["x"], case["w"]
    tokens, rows = x.shape[0], w.shape[0]
    sx = token_sx(case)
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
    sx = token_sx(case)
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


def cfg_fields(core, case):
    """The LinearCore command of ``case`` as a dict of field values (``core``: the core or an assembly)."""
    tokens, k = case["x"].shape
    rows = case["w"].shape[0]
    k_steps = -(-(-(-k // 3)) // core.tables)
    row_tiles = -(-rows // core.lanes)
    sfl = lambda s: {"m": int(s.m), "e": int(s.e) if int(s.m) else 0}  # noqa: E731
    return {
        "n": k, "k_steps": k_steps, "row_tiles": row_tiles, "tokens": tokens, "planes": case.get("bits", 1),
        "sx": sfl(case["sx"]), "shift": case["gain"].shift, "eps": sfl(case["gain"].eps),
        "sw0": sfl(case["sw"][0]), "sw1": sfl(case["sw"][1]), "sw2": sfl(case["sw"][2]),
        "interleave": int(case["interleave"]), "bound0": case["bounds"][0], "bound1": case["bounds"][1],
    }


def cfg_payload(core, case):
    """The ``cfg`` payload (int) for ``core`` (a LinearCore, or an assembly with the core's command; a
    :class:`~hw.dataflow.epilogues.QkvLinear` command also carries ``case["pos"]``)."""
    fields = cfg_fields(core, case)
    if "pos" in case:
        fields = {"core": fields, "pos": case["pos"]}
    return core.cfg.payload.shape().const(fields).as_bits()


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
    """The packed weight words (ints) in engine order: row tile, then k-step (then bit plane for int-k
    weights, ``case["bits"]``)."""
    if case.get("bits", 1) > 1:
        packed = pack_bitserial(case["w"].astype(np.int64), case["bits"], core.tables, core.lanes)
    else:
        packed = pack_ternary(case["w"], core.tables, core.lanes)
    return [int.from_bytes(bytes(row), "little") for row in packed.data]


def unpack_o(core, word):
    view = core.o.payload.shape().from_bits(word)
    n = core.lanes
    return ([int(view.acc[f"lane{i}"]) for i in range(n)], [int(view.y[f"lane{i}"]) for i in range(n)],
            int(view.slot), int(view.tile))


def fused_design():
    """The FusedLinear the fused-program tests run: the tiny config's T = N = 4, 4 vector lanes, head_dim 8."""
    from hw.dataflow.fused import FusedLinear
    dut = FusedLinear(4, 4, 4, 40, 48, 4, head_dim=8)
    dut._MustUse__silence = True
    return dut


def fused_program(dut, rng):
    """A command of every kind for one FusedLinear, in a row: q|k|v (prefill chunk at 40, GQA 2:1),
    o_proj, gate|up SiLU and ReLU^2, down_proj with per-token scales, the 8-bit LM head.

    Returns ``(freq, commands)``: the RoPE table to load first, and per command a dict with ``name``,
    ``sources`` (port -> payload ints), ``sink`` (output port), ``want`` (expected beats, unpacked),
    ``unpack`` (payload int -> beat) and ``scales`` (the ``sq`` values, ``(m, e)``).
    """
    from golden.fixed import INT32_MAX, INT32_MIN
    from golden.numerics import quantise_rows
    from hw.isa import Epilogue

    lanes, head_dim = dut.lanes, 8
    freq = rope_freq_table(head_dim, 10000.0)
    raw = []
    qkv = make_qkv_case(rng, 24, 2, 1, head_dim, 3, 40, "residual", lanes)
    raw.append(("qkv", Epilogue.QKV, qkv, {}, "qkv", qkv_reference(qkv, lanes), lambda w: unpack_qkv(dut, w)))
    res_case = make_case(rng, 16, 12, 3, "residual", lanes, interleave=False)
    res = rng.integers(INT32_MIN, INT32_MAX + 1, (3, 12), dtype=np.int64)
    beats = [pack_vector(res[t, rt * lanes:(rt + 1) * lanes], 32) for _a, _y, t, rt in reference(res_case, lanes)]
    raw.append(("o_proj", Epilogue.RESIDUAL, res_case, {"res": beats}, "residual",
                residual_reference(res_case, res, lanes), lambda w: unpack_vector(w, lanes, 32)))
    for ep, act in ((Epilogue.GATE_SILU, "silu"), (Epilogue.GATE_RELU2, "relu2")):
        g = make_case(rng, 20, 16, 2, "residual", lanes, interleave=True)
        raw.append((act, ep, g, {}, "h", gate_reference(g, lanes, act), lambda w: unpack_vector(w, lanes, 64)))
    down = make_case(rng, 40, 8, 2, "gate", lanes, 63, interleave=False)
    down["sx_tokens"] = [SFloat.from_float(np.float64(v)) for v in (3e-13, 5e-10)]
    raw.append(("down", Epilogue.RESIDUAL, down, {"res": [0] * 4}, "residual",
                residual_reference(down, np.zeros((2, 8), np.int64), lanes), lambda w: unpack_vector(w, lanes, 32)))
    # LM head: 8-bit rows, bit-serial, per-row scales; 3 tokens, 11 rows (the last tile is partial).
    lm = make_case(rng, 30, 11, 3, "residual", lanes, interleave=False)
    rq = quantise_rows(rng.normal(0, 1, (11, 30)), 8)
    rq.e[2] = -60                     # a row whose shift is large: the logit rounds to 0
    lm.update(w=rq.q.astype(np.int8), bits=8, logits=True)
    xq, sq = norm_quant(lm["x"], token_sx(lm), lm["gain"])
    acc = xq @ rq.q.T.astype(np.int64)
    m16q, shq = sq.multiplier()
    want_l = saturate(round_shift(acc * m16q[:, None] * rq.m16[None, :], shq[:, None] - rq.e[None, :] - 16), 32)
    rows_beats, lm_want = [], []
    for rt in range(-(-11 // lanes)):
        mm = ee = 0
        for n in range(lanes):
            r = rt * lanes + n
            if r < 11:
                mm |= int(rq.m16[r]) << (16 * n)
                ee |= (int(rq.e[r]) & 0xFFFF) << (16 * n)
        rows_beats.append(dut.rows.payload.shape().const({"m16": mm, "e": ee}).as_bits())
        for t in range(3):
            lm_want.append(([int(want_l[t, rt * lanes + n]) if rt * lanes + n < 11 else 0 for n in range(lanes)],
                            t, rt))
    mults = [dut.mult.payload.shape().const({"slot": t, "m16": int(m16q[t]), "sh": int(shq[t])}).as_bits()
             for t in range(3)]

    def unpack_logits(w):
        v = dut.logits.payload.shape().from_bits(w)
        return [int(v.data[f"lane{n}"]) for n in range(lanes)], int(v.slot), int(v.tile)
    raw.append(("lm_head", Epilogue.QKV, lm, {"mult": mults, "rows": rows_beats}, "logits", lm_want, unpack_logits))

    commands = []
    for name, ep, case, extra, sink, want, unpack in raw:
        fields = {"core": cfg_fields(dut.core, case), "epilogue": ep, "pos": int(case.get("pos", 0)),
                  "logits": int(case.get("logits", False))}
        sx = token_sx(case)
        sx_layout = dut.sx.payload.shape()
        sources = {"cfg": [dut.cfg.payload.shape().const(fields).as_bits()], "x": x_payloads(dut.core, case),
                   "weights": weight_payloads(dut.core, case),
                   "sx": [sx_layout.const({"m": int(m), "e": int(e) if int(m) else 0}).as_bits()
                          for m, e in zip(sx.m, sx.e)], **extra}
        _, sq_t = norm_quant(case["x"], sx, case["gain"])
        scales = [(int(m), int(e) if int(m) else 0) for m, e in zip(sq_t.m, sq_t.e)]
        commands.append({"name": name, "sources": sources, "sink": sink, "want": want, "unpack": unpack,
                         "scales": scales})
    return freq, commands


try:
    import cocotb
except ImportError:  # the helpers above are used without cocotb too
    cocotb = None

if cocotb is not None:
    from sim import cocotb_streams as streams

    def make_design(p):
        """The Python twin of the simulated design: ``p["assembly"]`` names it."""
        from hw.dataflow.epilogues import GateLinear, QkvLinear, ResidualLinear
        from hw.dataflow.linear import LinearCore
        args = (p["tables"], p["lanes"], p["vec_lanes"], p["max_k"], p["max_rows"], p["max_tokens"])
        kind = p.get("assembly", "core")
        if kind == "core":
            dut = LinearCore(*args, x_bits=p["x_bits"])
        elif kind == "residual":
            dut = ResidualLinear(*args, x_bits=p["x_bits"])
        elif kind in ("silu", "relu2"):
            dut = GateLinear(kind, *args, x_bits=p["x_bits"])
        elif kind == "qkv":
            dut = QkvLinear(*args, head_dim=p["head_dim"], freq_table=rope_freq_table(p["head_dim"], p["theta"]),
                            x_bits=p["x_bits"])
        else:
            raise ValueError(f"unknown assembly {kind!r}")
        dut._MustUse__silence = True
        return dut

    def _stimulus(p, dut, c, rng):
        """(case, extra input streams, expected output beats, unpack) of one command ``c``."""
        kind, lanes = p.get("assembly", "core"), dut.lanes
        if kind == "qkv":
            case = make_qkv_case(rng, c["k"], c["heads"], c["kv_heads"], p["head_dim"], c["tokens"], c["pos"],
                                 c["kind"], lanes, p["theta"])
            return case, {}, qkv_reference(case, lanes), lambda w: unpack_qkv(dut, w)
        case = make_case(rng, c["k"], c["rows"], c["tokens"], c["kind"], lanes, dut.x_bits,
                         interleave=True if kind in ("silu", "relu2") else None)
        if kind == "core":
            return case, {}, reference(case, lanes), lambda w: unpack_o(dut, w)
        if kind == "residual":
            res = rng.integers(-(1 << 31), 1 << 31, (c["tokens"], c["rows"]), dtype=np.int64)
            beats = [pack_vector(res[t, rt * lanes:(rt + 1) * lanes], 32)
                     for _acc, _y, t, rt in reference(case, lanes)]
            return (case, {"res": beats}, residual_reference(case, res, lanes),
                    lambda w: unpack_vector(w, lanes, 32))
        return case, {}, gate_reference(case, lanes, kind), lambda w: unpack_vector(w, lanes, 64)

    @cocotb.test()
    async def test_cases_with_stalls(dut):
        p = json.loads(os.environ["LINEAR_PARAMS"])
        if p.get("assembly") == "fused":
            await _fused_program(dut, p)
            return
        twin = make_design(p)
        rng = np.random.default_rng(p["seed"])
        extra_inputs = {"residual": ["res"]}.get(p.get("assembly", "core"), [])
        await streams.reset(dut, ["cfg", "x", "weights", *extra_inputs], ["o"])
        report = []
        for c in p["cases"]:
            case, extra, want, unpack = _stimulus(p, twin, c, rng)
            run = await streams.run_streams(
                dut, {"cfg": [cfg_payload(twin, case)], "x": x_payloads(twin, case),
                      "weights": weight_payloads(twin, case), **extra},
                "o", len(want), random.Random(p["seed"] + len(report)), p["p_stall"], p["p_stall"])
            got = [unpack(w) for w in run.received]
            for i, (g, e) in enumerate(zip(got, want)):
                assert g == e, f"case {c}: beat {i}: got {g}, want {e}"
            report.append({**c, "cycles": run.cycles})
        if p.get("report"):
            with open(p["report"], "w") as f:
                json.dump(report, f)

    async def _fused_program(dut, p):
        """Every command kind on one FusedLinear, back to back, 30 % stalls; the RoPE table is loaded with
        the first command (it is written within d/2 cycles; the norm takes hundreds)."""
        twin = fused_design()
        freq, program = fused_program(twin, np.random.default_rng(p["seed"]))
        load = twin.rope_load.payload.shape()
        loads = [load.const({"index": i, "value": int(f)}).as_bits() for i, f in enumerate(freq)]
        ports = ["cfg", "x", "weights", "sx", "res", "mult", "rows", "rope_load"]
        await streams.reset(dut, ports, ["qkv", "residual", "h", "logits", "sq"])
        report = []
        for i, c in enumerate(program):
            sources = dict(c["sources"], **({"rope_load": loads} if i == 0 else {}))
            run = await streams.run_streams(dut, sources, [c["sink"], "sq"], [len(c["want"]), len(c["scales"])],
                                            random.Random(p["seed"] + i), p["p_stall"], p["p_stall"])
            got = [c["unpack"](w) for w in run.outputs[c["sink"]]]
            assert got == c["want"], f"{c['name']}: first difference at beat " \
                f"{next(k for k, (g, w) in enumerate(zip(got, c['want'])) if g != w)}"
            sq_layout = twin.sq.payload.shape()
            scales = [(int(v.m), int(v.e)) for v in (sq_layout.from_bits(w) for w in run.outputs["sq"])]
            assert scales == c["scales"], c["name"]
            report.append({"name": c["name"], "cycles": run.cycles})
        if p.get("report"):
            with open(p["report"], "w") as f:
                json.dump(report, f)
