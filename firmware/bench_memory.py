"""``trillium bench memory``: the memory system measured in Verilator RTL cycles.

The design is ``hw.memory.MemoryBenchTop``: the fast DRAM model (the config's latency and bandwidth),
the weight-buffer manager with the config's ring size and the TLMM engine, fed by on-chip sequencers so
that no Python runs per cycle. Two workloads over scaled-down decoder layers (the seven linears of a
layer, ``BENCH_LAYER``):

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

from firmware.weight_schedule import dram_image, plan_for_config
from golden.tlmm import reference_matmul
from hw.config import load_hw_config
from hw.memory.bench_top import MemoryBenchTop, checksum
from sim import run_cocotb
from sim.clocked import build_clocked
from sim.testbenches import TESTBENCH_DIR
from sim.tlmm_driver import _k_step_activations, expected_outputs, make_problem

__all__ = ["bench_memory", "format_memory", "BENCH_LAYER", "DECODE_LAYERS", "PREFILL_TOKENS"]

#: A decoder layer scaled down for simulation: hidden 96, FFN 256 (bitnet-large is 1536 and 4096).
BENCH_LAYER = [("q_proj", 96, 96), ("k_proj", 96, 96), ("v_proj", 96, 96), ("o_proj", 96, 96),
               ("gate_proj", 256, 96), ("up_proj", 256, 96), ("down_proj", 96, 256)]
DECODE_LAYERS = 2
PREFILL_TOKENS = 8
DECODE_REPEAT = 20
PREFILL_REPEAT = 5
TB = "tb_memory_bench"


def _workload(name, cfg, layers, tokens, repeat, rng):
    """Problems, weight image, tile commands, sequencer tables and golden checksum of one workload."""
    T, N = cfg.tlmm.tables, cfg.tlmm.lanes
    shapes = [(f"layers.{i}.{n}", r, k) for i in range(layers) for n, r, k in BENCH_LAYER]
    plan = plan_for_config(shapes, cfg)
    problems = [make_problem(rng, tokens, r, k, T, N) for _, r, k in shapes]
    matrices, acts, sums = [], [], []
    for (x, w, packed), place in zip(problems, plan.matrices):
        xs = _k_step_activations(x, packed)                     # (tokens, k_steps, 3T)
        matrices.append({"row_tiles": place.row_tiles, "k_steps": place.k_steps, "tokens": tokens,
                         "act_base": len(acts)})
        acts += [[int(v) for v in xs[t, ks]] for ks in range(packed.k_steps) for t in range(tokens)]
        sums += [s for _, s in expected_outputs(reference_matmul(x, w), N)]
    run = {"name": name, "image": dram_image(plan, [p for _, _, p in problems]), "commands": plan.commands(),
           "matrices": matrices, "acts": acts, "n_sums": len(sums), "checksum": checksum(sums), "repeat": repeat}
    return plan, run


def _mean(results, key):
    return sum(r[key] for r in results) / len(results)


def bench_memory(hw="tiny", progress=None):
    """Measure DRAM-port utilisation, prefill read amplification and simulation speed; a JSON-ready dict."""
    say = progress or (lambda msg: None)
    cfg = load_hw_config(hw)
    if cfg.dram.data_bits & (cfg.dram.data_bits - 1):
        raise ValueError(f"{cfg.name}: dram.data_bits = {cfg.dram.data_bits} is not a power of two; one AXI4 "
                         "port cannot have this width (it needs a group of ports, not yet modelled)")
    rng = np.random.default_rng(2024)
    decode_plan, decode = _workload("decode", cfg, DECODE_LAYERS, 1, DECODE_REPEAT, rng)
    prefill_plan, prefill = _workload("prefill", cfg, 1, PREFILL_TOKENS, PREFILL_REPEAT, rng)
    runs = [decode, prefill]
    dram_words = 1 << max(len(r["image"]) for r in runs).bit_length()
    buffer_words = cfg.weight_buffer.kbytes * 1024 // cfg.dram.data_bytes
    top = MemoryBenchTop(cfg.tlmm.tables, cfg.tlmm.lanes, data_bits=cfg.dram.data_bits, buffer_words=buffer_words,
                         dram_words=dram_words, latency=max(2, cfg.dram.latency_cycles),
                         bytes_per_cycle=cfg.dram.bandwidth_bytes_per_cycle, max_tokens=PREFILL_TOKENS,
                         max_commands=max(len(r["commands"]) for r in runs),
                         max_matrices=max(len(r["matrices"]) for r in runs),
                         act_words=max(len(r["acts"]) for r in runs))
    say(f"Verilator: building the memory bench top for {cfg.name} (cached after the first run)")
    build = build_clocked(top, "memory_bench_top")
    say(f"Verilator: decode ({DECODE_LAYERS} layers x {DECODE_REPEAT}) and prefill "
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
        "dram": {"data_bits": cfg.dram.data_bits, "latency_cycles": lat, "bandwidth_bytes_per_cycle": bw,
                 "peak_bytes_per_cycle": data_bytes},
        "weight_buffer_bytes": buffer_words * data_bytes,
        "decode": {
            "layers": DECODE_LAYERS, "matrices": len(decode_plan.matrices), "weight_bytes": decode_plan.weight_bytes,
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
            "Verilator RTL cycles of MemoryBenchTop (fast DRAM model with the config's latency and bandwidth, "
            "AXI4 burst reader, weight buffer of the config's size, gearbox, mux TLMM engine, on-chip command and "
            "act-step sequencers, checksum sink; every run bit-exact against golden TLMM). dram_utilisation = DRAM "
            f"read beats / cycles from go to the last sum of a decode pass ({DECODE_LAYERS} scaled layers, one token), "
            "i.e. the fraction of the port's one-beat-per-cycle peak; prefill_read_amplification = bytes read / "
            f"packed weight bytes over a {PREFILL_TOKENS}-token prefill chunk of one layer; sim_cycles_per_second = "
            "simulated cycles / wall seconds of the timed waits (excluding build, start-up and memory loading; "
            "clock generated inside the Verilated model), for this weight path only, not the whole accelerator"),
    }


def format_memory(res):
    """A readable table of :func:`bench_memory`'s result."""
    d, p, s = res["decode"], res["prefill"], res["sim"]
    rows = [
        ("config", res["hw"]),
        ("DRAM port", f"{res['dram']['data_bits']} bit, {res['dram']['bandwidth_bytes_per_cycle']:g} B/cycle, "
                      f"latency {res['dram']['latency_cycles']} cycles"),
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
