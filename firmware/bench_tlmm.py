"""``trillium bench tlmm``: TLMM engine cost (Yosys synth_ecp5) against a plain adder-tree MAC array of the
same MACs/cycle, and its sustained throughput measured in RTL cycles on Verilator.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hw.baselines.adder_tree_mac import AdderTreeMac
from hw.config import load_hw_config
from hw.synth import synth_ecp5
from hw.tlmm import TlmmEngine
from sim import build_component, run_cocotb
from sim.testbenches import TESTBENCH_DIR

__all__ = ["bench_tlmm", "measure_throughput", "measure_cost"]

BENCH_TOKENS = 4  # accumulator slots of the benchmarked engine (a small prefill chunk)


def measure_throughput(tables, lanes, max_tokens=BENCH_TOKENS):
    """Act steps accepted per cycle over a long K (64 x 3T) with no stalls, measured on Verilator."""
    eng = TlmmEngine(tables, lanes, max_tokens=max_tokens)
    build = build_component(eng, "tlmm_engine")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "throughput.json"
        params = {"tables": tables, "lanes": lanes, "max_tokens": max_tokens, "acc_bits": eng.acc_bits,
                  "report": str(report)}
        run_cocotb(build, "tb_tlmm_engine", test_dir=TESTBENCH_DIR, testcase="test_throughput", seed=1,
                   extra_env={"TLMM_PARAMS": json.dumps(params)}, run_dir=Path(tmp) / "run")
        return json.loads(report.read_text())


def measure_cost(tables, lanes, max_tokens=BENCH_TOKENS):
    """Yosys synth_ecp5 of the engine and of the baseline; per-MAC/cycle counts and ratios."""
    macs = 3 * tables * lanes
    eng = synth_ecp5(TlmmEngine(tables, lanes, max_tokens=max_tokens), "tlmm_engine")
    base = synth_ecp5(AdderTreeMac(tables, lanes, max_tokens=max_tokens), "adder_tree_mac")
    e, b = eng.per_mac(macs), base.per_mac(macs)
    return {
        "macs_per_cycle": macs,
        "tlmm": {"cells": eng.counts(), "per_mac": e},
        "baseline": {"cells": base.counts(), "per_mac": b},
        "lut4_per_mac": e["lut4_equivalent"],
        "baseline_lut4_per_mac": b["lut4_equivalent"],
        "lut_ratio": e["lut4_equivalent"] / b["lut4_equivalent"],
        "ff_ratio": e["ff"] / b["ff"] if b["ff"] else None,
        "yosys": eng.yosys_version,
        "synth_seconds": round(eng.seconds + base.seconds, 1),
    }


def bench_tlmm(hw="tiny", cost=True, throughput=True, progress=None):
    """Run both measurements for a hardware config; returns a JSON-ready dict."""
    say = progress or (lambda msg: None)
    cfg = load_hw_config(hw)
    t, n = cfg.tlmm.tables, cfg.tlmm.lanes
    out = {"hw": cfg.name, "tables": t, "lanes": n, "macs_per_cycle": 3 * t * n}
    if throughput:
        say(f"Verilator: building the {t}x{n} engine and streaming a long-K matmul")
        tp = measure_throughput(t, n)
        out["steady_state_efficiency"] = tp["steady_state_efficiency"]
        out["throughput"] = tp
    if cost:
        say("Yosys synth_ecp5: engine and adder-tree baseline (cached after the first run)")
        out.update(measure_cost(t, n))
    out["method"] = (
        "cost: Yosys synth_ecp5 cell counts of TlmmEngine and of AdderTreeMac (a plain ternary adder-tree MAC "
        "array with the same 3*T*N MACs/cycle, stream interface and accumulators; comparison only), divided by "
        "MACs/cycle; LUT4 equivalents = LUT4 + 2*CCU2C + 6*DPR16X4. throughput: act steps accepted per cycle "
        "between the first and last accepted step of a 64-k-step matmul with no stalls, in Verilator RTL cycles")
    return out
