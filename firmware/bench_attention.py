"""``trillium bench attention``: decode and prefill attention in Verilator RTL cycles against their bounds.

The design is ``hw.attention.bench_top.AttentionBenchTop``: the fast DRAM model with the config's latency
and bandwidth, the AXI4 burst reader, a gearbox and the attention engine with ``attention.lanes`` MACs
per cycle, over a KV cache in the layout of ``firmware.kv_cache`` for the model shape (``--shape``,
default bitnet-large), on random quantised q, K and V. Every output is checked bit for bit against
``golden.attention``. Context lengths: 512 and 2048, those that fit the config's ``max_context``.

* ``decode_ratio[c]``: one decode step at position ``c - 1``, all heads of one layer; measured cycles from
  the start to the last output, divided by ``KV bytes / dram.bandwidth_bytes_per_cycle`` with KV bytes =
  ``2 c kv_heads (head_dim + 1)`` (the values and exponent bytes the step must read). The layout's own
  overhead, the DRAM latency and every engine stall count against the ratio.
* ``prefill_ratio[c]``: a ``c``-token prompt from position 0, in tiles of ``attention.query_block``
  queries, for one kv head and its query heads (what was simulated; see ``method``); measured cycles
  divided by ``MACs / attention.lanes`` with MACs = ``2 group head_dim c (c + 1) / 2`` (QK and PV, causal).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from golden.attention import attention
from golden.model_config import MODEL_SHAPES
from golden.numerics import quant_pow2
from hw.attention.bench_top import AttentionBenchTop
from hw.attention.engine import chunk_geometry
from hw.config import load_hw_config
from sim import run_cocotb
from sim.clocked import build_clocked
from sim.testbenches import TESTBENCH_DIR

from .kv_cache import KvCacheLayout

__all__ = ["bench_attention", "format_attention", "CONTEXTS"]

CONTEXTS = (512, 2048)
TB = "tb_attention_bench"


def _quantised(rng, shape):
    bits = rng.integers(8, 24, shape[:-1])
    x = rng.integers(-(1 << 23), 1 << 23, shape) >> (24 - bits[..., None])
    return quant_pow2(x)


def _q_words(q8, qe, chunk, row_beats):
    words = []
    for hd in range(q8.shape[0]):
        for k in range(row_beats):
            w = 0
            for i, v in enumerate(q8[hd, k * chunk:(k + 1) * chunk]):
                w |= (int(v) & 0xFF) << (8 * i)
            words.append(w | int(qe[hd]) << (8 * chunk))
    return words


def _tile_rows(pos, count, query_block, kv_heads, group):
    """(query index, head) of every query row, in the engine's order: tiles, kv heads, rows."""
    out = []
    for t0 in range(0, count, query_block):
        n = min(query_block, count - t0)
        out += [(t0 + qi, h * group + g) for h in range(kv_heads) for qi in range(n) for g in range(group)]
    return out


def _case(q8, qe, out, pos, count, query_block, kv_heads, group, chunk, row_beats):
    rows = _tile_rows(pos, count, query_block, kv_heads, group)
    d = q8.shape[-1]
    q = []
    for qi, hd in rows:
        q += _q_words(q8[qi, hd:hd + 1], qe[qi, hd:hd + 1], chunk, row_beats)
    expected = [[int(v) for v in out[qi, hd * d + k * chunk:hd * d + (k + 1) * chunk]]
                for qi, hd in rows for k in range(row_beats)]
    return {"pos": pos, "count": count, "q": q, "expected": expected}


def _run(top, name, layout, k8, ke, v8, ve, cases, bus, chunk):
    build = build_clocked(top, name)
    with tempfile.TemporaryDirectory() as tmp:
        image, job, report = Path(tmp) / "image.bin", Path(tmp) / "job.json", Path(tmp) / "report.json"
        image.write_bytes(layout.pack_layer(k8, ke, v8, ve))
        job.write_text(json.dumps({"image": str(image), "bus_bytes": bus, "chunk": chunk, "cases": cases,
                                   "report": str(report)}))
        run_cocotb(build, TB, test_dir=TESTBENCH_DIR, extra_env={"BENCH_JOB": str(job)}, seed=1,
                   run_dir=Path(tmp) / "run", timeout_s=7200)
        return build, json.loads(report.read_text())


def bench_attention(hw="tiny", shape="bitnet-large", progress=None, contexts=CONTEXTS):
    """Measure decode and prefill attention cycles against their bounds; a JSON-ready dict (see the module
    docstring)."""
    say = progress or (lambda msg: None)
    cfg = load_hw_config(hw)
    if shape not in MODEL_SHAPES:
        raise ValueError(f"unknown model shape '{shape}' (known: {', '.join(MODEL_SHAPES)})")
    model = MODEL_SHAPES[shape]
    heads, kv_heads, d = model.num_attention_heads, model.num_key_value_heads, model.head_dim
    group = heads // kv_heads
    ctxs = [c for c in contexts if c <= cfg.max_context]
    if not ctxs:
        raise ValueError(f"{cfg.name}: max_context = {cfg.max_context} is below every benchmark context {contexts}")
    bus = cfg.dram.data_bytes
    port_note = ""
    if bus & (bus - 1):
        # One AXI4 port must be a power of two wide; the config's port (a group of ports) is modelled as
        # the next power of two, throttled to the config's bandwidth, which is what the bound uses.
        bus = 1 << (bus - 1).bit_length()
        port_note = (f" The config's {cfg.dram.data_bits}-bit port is modelled as one {8 * bus}-bit AXI4 port "
                     f"limited to {cfg.dram.bandwidth_bytes_per_cycle:g} B/cycle.")
    bw, lanes, qb = cfg.dram.bandwidth_bytes_per_cycle, cfg.attention.lanes, cfg.attention.query_block
    chunk, row_beats = chunk_geometry(d, lanes)
    reader = dict(latency=max(2, cfg.dram.latency_cycles), bytes_per_cycle=bw, max_burst=min(256, 4096 // bus),
                  max_outstanding=4, buffer_words=max(256, 4 * min(256, 4096 // bus)))
    tag = f"{cfg.name}_{shape}".replace("-", "_")
    rng = np.random.default_rng(2026)
    t = max(ctxs)

    # -- decode: all heads of one layer, one query at position c - 1 ------------------------------------
    layout = KvCacheLayout(1, kv_heads, d, t, bus_bytes=bus)
    k8, ke = _quantised(rng, (t, kv_heads, d))
    v8, ve = _quantised(rng, (t, kv_heads, d))
    cases = []
    for c in ctxs:
        q8, qe = _quantised(rng, (1, heads, d))
        out = attention(q8, qe, np.array([c - 1]), k8[:c], ke[:c], v8[:c], ve[:c], d)
        cases.append(_case(q8, qe, out, c - 1, 1, 1, kv_heads, group, chunk, row_beats))
    top = AttentionBenchTop(layout, heads, lanes, query_block=1, max_queries=1, **reader)
    say(f"Verilator: decode attention top for {cfg.name}, {shape} (lanes {lanes}, {8 * bus}-bit port; cached "
        f"after the first build); decode steps at contexts {', '.join(map(str, ctxs))}, {heads} heads")
    dbuild, measured = _run(top, f"attn_decode_bench_{tag}", layout, k8, ke, v8, ve, cases, bus, chunk)
    decode = {}
    for c, r in zip(ctxs, measured):
        kv_bytes = layout.useful_bytes(c)
        bound = kv_bytes / bw
        decode[c] = {"cycles": r["cycles"], "kv_bytes": kv_bytes, "bytes_read": r["dram_beats"] * bus,
                     "bound_cycles": bound, "ratio": r["cycles"] / bound,
                     "sim_cycles_per_second": r["sim_cycles"] / r["wall_s"]}

    # -- prefill: one kv head and its query heads, a whole prompt of c tokens from position 0 -----------
    play = KvCacheLayout(1, 1, d, t, bus_bytes=bus)
    pk8, pke = _quantised(rng, (t, 1, d))
    pv8, pve = _quantised(rng, (t, 1, d))
    pcases = []
    for c in ctxs:
        q8, qe = _quantised(rng, (c, group, d))
        out = attention(q8, qe, np.arange(c), pk8[:c], pke[:c], pv8[:c], pve[:c], d)
        pcases.append(_case(q8, qe, out, 0, c, qb, 1, group, chunk, row_beats))
    ptop = AttentionBenchTop(play, group, lanes, query_block=qb, max_queries=t, **reader)
    say(f"Verilator: prefill attention top (query_block {qb}, one kv head with its {group} query head(s)); "
        f"prompts of {', '.join(map(str, ctxs))} tokens")
    pbuild, pmeasured = _run(ptop, f"attn_prefill_bench_{tag}", play, pk8, pke, pv8, pve, pcases, bus, chunk)
    prefill = {}
    for c, r in zip(ctxs, pmeasured):
        macs = 2 * group * d * c * (c + 1) // 2   # QK and PV, causal: query i sees i + 1 keys
        bound = macs / lanes
        prefill[c] = {"cycles": r["cycles"], "macs": macs, "bound_cycles": bound, "ratio": r["cycles"] / bound,
                      "ratio_at_row_width": r["cycles"] / (macs / chunk), "bytes_read": r["dram_beats"] * bus,
                      "sim_cycles_per_second": r["sim_cycles"] / r["wall_s"]}
    return {
        "hw": cfg.name,
        "shape": shape,
        "decode_ratio": {c: decode[c]["ratio"] for c in ctxs},
        "prefill_ratio": {c: prefill[c]["ratio"] for c in ctxs},
        "decode": decode,
        "prefill": prefill,
        "engine": {"heads": heads, "kv_heads": kv_heads, "head_dim": d, "lanes": lanes, "query_block": qb,
                   "chunk_bytes": chunk, "row_beats": row_beats, "peak_kv_bytes_per_cycle": chunk / group,
                   "segment_bytes": layout.segment_bytes, "useful_segment_bytes": 2 * 32 * (d + 1)},
        "dram": {"bus_bytes_modelled": bus, "bandwidth_bytes_per_cycle": bw, "latency_cycles": cfg.dram.latency_cycles},
        "sim": {"decode_build_seconds": dbuild.seconds, "prefill_build_seconds": pbuild.seconds,
                "builds_reused": [dbuild.reused, pbuild.reused]},
        "method": (
            "Verilator RTL cycles of AttentionBenchTop: FastDramModel (config latency and bandwidth) -> AxiBurstReader "
            "-> Gearbox -> AttentionEngine (attention.lanes MACs per cycle), KV cache in the firmware.kv_cache layout, "
            "every output checked bit for bit against golden.attention. Decode: one layer, all "
            f"{heads} heads, one query at position c-1; decode_ratio[c] = cycles from go to the last output / "
            "(KV bytes / dram.bandwidth_bytes_per_cycle), KV bytes = 2 c kv_heads (head_dim + 1). Prefill: a c-token "
            f"prompt from position 0 in tiles of attention.query_block = {qb} queries, simulated for ONE kv head "
            f"and its {group} query head(s) (the engine runs the kv heads of a layer one after another, with "
            "data-independent timing); prefill_ratio[c] = cycles / (MACs / attention.lanes), MACs = 2 group "
            "head_dim c (c + 1) / 2 (QK and PV, causal); ratio_at_row_width uses min(lanes, head_dim) MACs per "
            "cycle instead, the widest a row-per-beat engine can use." + port_note),
    }


def format_attention(res):
    """A readable table of :func:`bench_attention`'s result."""
    e = res["engine"]
    rows = [
        ("config / shape", f"{res['hw']} / {res['shape']}"),
        ("engine", f"{e['heads']} heads, {e['kv_heads']} kv heads, d {e['head_dim']}, lanes {e['lanes']}: "
                   f"{e['chunk_bytes']} B/beat, {e['peak_kv_bytes_per_cycle']:g} KV B/cycle peak"),
        ("DRAM", f"{res['dram']['bandwidth_bytes_per_cycle']:g} B/cycle, latency {res['dram']['latency_cycles']}, "
                 f"modelled bus {res['dram']['bus_bytes_modelled']} B"),
    ]
    for c, d in res["decode"].items():
        rows.append((f"decode @ {c}: cycles / bound", f"{d['cycles']} / {d['bound_cycles']:.0f} = {d['ratio']:.4f} "
                                                       f"(read {d['bytes_read']} B for {d['kv_bytes']} KV B)"))
    for c, d in res["prefill"].items():
        rows.append((f"prefill @ {c}: cycles / bound", f"{d['cycles']} / {d['bound_cycles']:.0f} = {d['ratio']:.4f} "
                                                        f"(at row width: {d['ratio_at_row_width']:.4f})"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + f"\nmethod: {res['method']}"
