"""``trillium bench memory``: the memory system measured in Verilator RTL cycles.

The design is ``hw.memory.MemoryBenchTop``: the fast DRAM model (the config's latency and bandwidth; one
model per AXI4 port when the width needs several ports, sharing the bandwidth equally), the
weight-buffer manager with the config's ring size and the TLMM engine the config names
(``tlmm.table_storage``: ``lutram`` behind the replaying word feed, or ``mux``), fed by on-chip
sequencers so that no Python runs per cycle. Two workloads over decoder layers (the seven linears of a
layer: ``BENCH_LAYER``, scaled down, or a config's entry in ``BENCH_LAYERS``):

* **decode**: ``DECODE_LAYERS`` layers, one token. The engine needs one weight word per cycle, which is
  more than the port delivers at every bundled config, so the port should be busy all the time:
  ``dram_utilisation`` = DRAM beats / cycles from start to the last sum (1.0 = the port's peak of one
  beat per cycle).
* **prefill**: one layer, a chunk of ``PREFILL_TOKENS`` tokens. Each weight word serves every token
  while it is held, so ``prefill_read_amplification`` = bytes read from DRAM / weight bytes should be 1.

Every run is checked bit for bit: the design's checksum of all sums must equal the golden one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from firmware.weight_schedule import dram_image, layer_matrices, plan_for_config
from golden.tlmm import reference_matmul
from hw.config import load_hw_config
from hw.memory.axi_group import port_split
from hw.memory.bench_top import MemoryBenchTop, checksum
from sim import run_cocotb
from sim.clocked import build_clocked
from sim.testbenches import TESTBENCH_DIR
from sim.tlmm_driver import _k_step_activations, expected_outputs, make_problem

__all__ = ["bench_memory", "format_memory", "BENCH_LAYER", "DECODE_LAYERS", "PREFILL_TOKENS"]

#: A decoder layer scaled down for simulation: hidden 96, FFN 256 (bitnet-large is 1536 and 4096).
BENCH_LAYER = [("q_proj", 96, 96), ("k_proj", 96, 96), ("v_proj", 96, 96), ("o_proj", 96, 96),
               ("gate_proj", 256, 96), ("up_proj", 256, 96), ("down_proj", 96, 256)]
#: Configs whose engine is too wide for ``BENCH_LAYER`` to mean much (T = 28: two k-steps per matrix)
#: run one real layer of a model instead: ``(model, decode layers)``.
BENCH_LAYERS = {"tellme-kv260": ("bitnet-large", 1)}
DECODE_LAYERS = 2
PREFILL_TOKENS = 8
#: Row tiles per table-stationary block for the ``lutram`` engine (capped at the largest matrix's
#: row tiles): the engine holds ``block_rows * PREFILL_TOKENS`` accumulator slots, and each block costs
#: one 15-cycle table fill per k-step and token, so larger blocks amortise the fill.
LUT_BLOCK_ROWS = 64
DECODE_REPEAT = 20
PREFILL_REPEAT = 5
TB = "tb_memory_bench"


def _layer_shapes(cfg, layers):
    if cfg.name in BENCH_LAYERS:
        model, _ = BENCH_LAYERS[cfg.name]
        return layer_matrices(model, layers)
    return [(f"layers.{i}.{n}", r, k) for i in range(layers) for n, r, k in BENCH_LAYER]


def _sums_in_order(y, lanes, block_rows):
    """Lane sums in the engine's output order: row tile then token (``mux``, ``block_rows`` None), or
    per block of row tiles, token then row tile (``lutram``)."""
    if block_rows is None:
        return [s for _, s in expected_outputs(y, lanes)]
    m_tokens, rows = y.shape
    tiles = -(-rows // lanes)
    yp = np.zeros((m_tokens, tiles * lanes), np.int64)
    yp[:, :rows] = y
    return [[int(v) for v in yp[t, rt * lanes:(rt + 1) * lanes]]
            for b0 in range(0, tiles, block_rows) for t in range(m_tokens)
            for rt in range(b0, min(b0 + block_rows, tiles))]


def _workload(name, cfg, shapes, tokens, repeat, rng, block_rows):
    """Problems, weight image, tile commands, sequencer tables and golden checksum of one workload."""
    T, N = cfg.tlmm.tables, cfg.tlmm.lanes
    plan = plan_for_config(shapes, cfg, block_rows=block_rows)
    problems = [make_problem(rng, tokens, r, k, T, N) for _, r, k in shapes]
    matrices, acts, sums = [], [], []
    for (x, w, packed), place in zip(problems, plan.matrices):
        xs = _k_step_activations(x, packed)                     # (tokens, k_steps, 3T)
        matrices.append({"row_tiles": place.row_tiles, "k_steps": place.k_steps, "tokens": tokens,
                         "act_base": len(acts)})
        acts += [[int(v) for v in xs[t, ks]] for ks in range(packed.k_steps) for t in range(tokens)]
        sums += _sums_in_order(reference_matmul(x, w), N, block_rows)
    run = {"name": name, "image": dram_image(plan, [p for _, _, p in problems]), "commands": plan.commands(),
           "matrices": matrices, "acts": acts, "n_sums": len(sums), "checksum": checksum(sums), "repeat": repeat}
    return plan, run


def _mean(results, key):
    return sum(r[key] for r in results) / len(results)


def bench_memory(hw="tiny", progress=None, engine=None):
    """Measure DRAM-port utilisation, prefill read amplification and simulation speed; a JSON-ready dict.

    ``engine`` (``"mux"`` or ``"lutram"``) overrides the config's ``tlmm.table_storage``.
    """
    say = progress or (lambda msg: None)
    cfg = load_hw_config(hw)
    engine = engine or cfg.tlmm.table_storage
    if engine not in ("mux", "lutram"):
        raise ValueError(f"engine must be 'mux' or 'lutram', got {engine!r}")
    ports, port_bits = port_split(cfg.dram.data_bits)
    decode_layers = BENCH_LAYERS[cfg.name][1] if cfg.name in BENCH_LAYERS else DECODE_LAYERS
    decode_shapes, prefill_shapes = _layer_shapes(cfg, decode_layers), _layer_shapes(cfg, 1)
    max_tiles = max(-(-r // cfg.tlmm.lanes) for _, r, _ in decode_shapes + prefill_shapes)
    block_rows = min(LUT_BLOCK_ROWS, max_tiles) if engine == "lutram" else None
    rng = np.random.default_rng(2024)
    say(f"golden: {len(decode_shapes)} decode and {len(prefill_shapes)} prefill matrices")
    decode_plan, decode = _workload("decode", cfg, decode_shapes, 1, DECODE_REPEAT, rng, block_rows)
    prefill_plan, prefill = _workload("prefill", cfg, prefill_shapes, PREFILL_TOKENS, PREFILL_REPEAT, rng, block_rows)
    runs = [decode, prefill]
    dram_words = 1 << max(len(r["image"]) for r in runs).bit_length()
    buffer_words = cfg.weight_buffer.kbytes * 1024 // cfg.dram.data_bytes
    top = MemoryBenchTop(cfg.tlmm.tables, cfg.tlmm.lanes, data_bits=cfg.dram.data_bits, buffer_words=buffer_words,
                         dram_words=dram_words, latency=max(2, cfg.dram.latency_cycles),
                         bytes_per_cycle=cfg.dram.bandwidth_bytes_per_cycle, max_tokens=PREFILL_TOKENS,
                         max_commands=max(len(r["commands"]) for r in runs),
                         max_matrices=max(len(r["matrices"]) for r in runs),
                         act_words=max(len(r["acts"]) for r in runs),
                         ports=ports, engine=engine, block_rows=block_rows or 16)
    say(f"Verilator: building the memory bench top for {cfg.name}, {engine} engine, {ports} x {port_bits}-bit "
        "AXI4 port(s) (cached after the first run)")
    build = build_clocked(top, "memory_bench_top")
    say(f"Verilator: decode ({len(decode_shapes)} matrices x {DECODE_REPEAT}) and prefill "
        f"({PREFILL_TOKENS} tokens x {PREFILL_REPEAT})")
    with tempfile.TemporaryDirectory() as tmp:
        job, report = Path(tmp) / "job.json", Path(tmp) / "report.json"
        job.write_text(json.dumps({"params": {"max_tokens": PREFILL_TOKENS}, "runs": runs, "report": str(report)}))
        run_cocotb(build, TB, test_dir=TESTBENCH_DIR, extra_env={"BENCH_JOB": str(job)}, seed=1,
                   run_dir=Path(tmp) / "run", timeout_s=3600)
        measured = json.loads(report.read_text())

    bw, lat, data_bytes = cfg.dram.bandwidth_bytes_per_cycle, cfg.dram.latency_cycles, cfg.dram.data_bytes
    dec, pre = measured["decode"], measured["prefill"]
    dec_cycles, dec_beats = _mean(dec, "cycles"), _mean(dec, "beats")
    pre_cycles, pre_beats = _mean(pre, "cycles"), _mean(pre, "beats")
    all_runs = dec + pre
    sim_cycles = sum(r["sim_cycles"] for r in all_runs)
    wall = sum(r["wall_s"] for r in all_runs)
    decode_est = decode_plan.estimate(1, bw, lat)
    prefill_est = prefill_plan.estimate(PREFILL_TOKENS, bw, lat)
    return {
        "hw": cfg.name,
        "dram_utilisation": dec_beats / dec_cycles,
        "prefill_read_amplification": pre_beats * data_bytes / prefill_plan.weight_bytes,
        "sim_cycles_per_second": sim_cycles / wall,
        "bandwidth_utilisation": dec_beats * data_bytes / (dec_cycles * bw),
        "engine": engine,
        "block_rows": block_rows,
        "dram": {"data_bits": cfg.dram.data_bits, "latency_cycles": lat, "bandwidth_bytes_per_cycle": bw,
                 "peak_bytes_per_cycle": data_bytes, "ports": ports, "port_bits": port_bits},
        "weight_buffer_bytes": buffer_words * data_bytes,
        "decode": {
            "layers": decode_layers, "shapes": [list(x) for x in decode_shapes], "matrices": len(decode_plan.matrices),
            "weight_bytes": decode_plan.weight_bytes,
            "tiles": len(decode_plan.tiles), "cycles": dec_cycles, "dram_beats": dec_beats,
            "engine_words_per_cycle": decode_plan.words / dec_cycles,
            "estimate": decode_est, "cycles_vs_estimate": dec_cycles / decode_est["overlapped_cycles"],
        },
        "prefill": {
            "tokens": PREFILL_TOKENS, "matrices": len(prefill_plan.matrices),
            "weight_bytes": prefill_plan.weight_bytes, "read_bytes": pre_beats * data_bytes,
            "tiles": len(prefill_plan.tiles), "cycles": pre_cycles,
            "engine_steps_per_cycle": PREFILL_TOKENS * prefill_plan.words / pre_cycles,
            "estimate": prefill_est, "cycles_vs_estimate": pre_cycles / prefill_est["overlapped_cycles"],
        },
        "sim": {"cycles": sim_cycles, "wall_seconds": wall, "build_seconds": build.seconds,
                "build_reused": build.reused},
        "method": (
            f"Verilator RTL cycles of MemoryBenchTop (fast DRAM model with the config's latency and bandwidth"
            + (f", as {ports} AXI4 ports of {port_bits} bits striped word by word, each with 1/{ports} of the "
               "bandwidth" if ports > 1 else "")
            + ", AXI4 burst reader, weight buffer of the config's size, gearbox, "
            + ("lutram TLMM engine fed in table-stationary blocks of "
               f"{block_rows} row tiles with per-token word replay" if engine == "lutram" else "mux TLMM engine")
            + ", on-chip command and act-step sequencers, checksum sink; every run bit-exact against golden TLMM). "
            "dram_utilisation = DRAM read beats / cycles from go to the last sum of a decode pass "
            f"({_describe(cfg, decode_layers)}, one token, {DECODE_REPEAT} runs), i.e. the fraction of the port's "
            f"one-beat-per-cycle peak ({data_bytes} B/cycle; the DRAM behind it gives {bw:g} B/cycle, see "
            "bandwidth_utilisation); prefill_read_amplification = bytes read / packed weight bytes over a "
            f"{PREFILL_TOKENS}-token prefill chunk of {_describe(cfg, 1)}; sim_cycles_per_second = simulated "
            "cycles / wall seconds of the timed waits (excluding build, start-up and memory loading; clock "
            "generated inside the Verilated model), for this weight path only, not the whole accelerator"),
    }


def _describe(cfg, layers):
    if cfg.name in BENCH_LAYERS:
        return f"{layers} full {BENCH_LAYERS[cfg.name][0]} layer(s)"
    return f"{layers} scaled layer(s) of hidden 96, FFN 256"


def format_memory(res):
    """A readable table of :func:`bench_memory`'s result."""
    d, p, s = res["decode"], res["prefill"], res["sim"]
    rows = [
        ("config", res["hw"]),
        ("DRAM port", f"{res['dram']['data_bits']} bit ({res['dram']['ports']} x {res['dram']['port_bits']}-bit "
                      f"AXI4), {res['dram']['bandwidth_bytes_per_cycle']:g} B/cycle, "
                      f"latency {res['dram']['latency_cycles']} cycles"),
        ("TLMM engine", res["engine"] + (f" (blocks of {res['block_rows']} row tiles)" if res["block_rows"] else "")),
        ("weight buffer", f"{res['weight_buffer_bytes']} bytes"),
        ("decode: weights / tiles", f"{d['weight_bytes']} bytes / {d['tiles']} tiles ({d['matrices']} matrices)"),
        ("decode: cycles (estimate)", f"{d['cycles']:.0f} ({d['estimate']['overlapped_cycles']:.0f}, "
                                      f"{d['estimate']['bound']}-bound)"),
        ("DRAM utilisation (of port peak)", f"{res['dram_utilisation']:.4f}"),
        ("DRAM utilisation (of bandwidth)", f"{res['bandwidth_utilisation']:.4f}"),
        ("prefill: tokens / weights", f"{p['tokens']} / {p['weight_bytes']} bytes"),
        ("prefill: cycles (estimate)", f"{p['cycles']:.0f} ({p['estimate']['overlapped_cycles']:.0f}, "
                                       f"{p['estimate']['bound']}-bound)"),
        ("prefill read amplification", f"{res['prefill_read_amplification']:.4f}"),
        ("simulated cycles per second", f"{res['sim_cycles_per_second']:.0f} ({s['cycles']:.0f} cycles in "
                                        f"{s['wall_seconds']:.2f} s)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
