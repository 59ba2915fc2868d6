"""``trillium bench tlmm``: TLMM engine cost (Yosys synth_ecp5) against a plain adder-tree MAC array of the
same MACs/cycle, and sustained throughput measured in RTL cycles on Verilator.

Both TLMM engines are measured: ``lutram`` (distributed-RAM tables, table-stationary) and ``mux``
(tables in registers, rebuilt every step). The top-level keys describe the engine the hardware config
selects (``tlmm.table_storage``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hw.baselines.adder_tree_mac import AdderTreeMac
from hw.config import load_hw_config
from hw.synth import synth_ecp5
from hw.tlmm import TlmmEngine, TlmmLutEngine
from sim import build_component, run_cocotb
from sim.testbenches import TESTBENCH_DIR

__all__ = ["bench_tlmm", "measure_throughput", "measure_cost", "ACC_SLOTS", "THROUGHPUT_ROWS"]

#: Accumulator slots of every design in the cost comparison (BRAM-backed in all three).
ACC_SLOTS = 64
#: Throughput matrix rows: bitnet_b1_58-large's fused gate+up projection (2 x 4096 rows), the shape the
#: table-stationary engine streams per table set.
THROUGHPUT_ROWS = 8192


def _run_throughput(eng, top, tb, params):
    build = build_component(eng, top)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "throughput.json"
        run_cocotb(build, tb, test_dir=TESTBENCH_DIR, testcase="test_throughput", seed=1,
                   extra_env={"TLMM_PARAMS": json.dumps({**params, "report": str(report)})},
                   run_dir=Path(tmp) / "run")
        return json.loads(report.read_text())


def measure_throughput(tables, lanes, storage):
    """Sustained steps (mux) or words (lutram) accepted per cycle with no stalls, on Verilator."""
    if storage == "mux":
        eng = TlmmEngine(tables, lanes, max_tokens=4)
        return _run_throughput(eng, "tlmm_engine", "tb_tlmm_engine",
                               {"tables": tables, "lanes": lanes, "max_tokens": 4, "acc_bits": eng.acc_bits})
    tiles = -(-THROUGHPUT_ROWS // lanes)
    eng = TlmmLutEngine(tables, lanes, slots=tiles)
    return _run_throughput(eng, "tlmm_lut_engine", "tb_tlmm_lut_engine",
                           {"tables": tables, "lanes": lanes, "slots": tiles, "acc_bits": eng.acc_bits,
                            "rows": THROUGHPUT_ROWS, "k": 3 * tables * 4})


def measure_cost(tables, lanes):
    """Yosys synth_ecp5 of both engines and the baseline: counts per MAC/cycle and ratios."""
    macs = 3 * tables * lanes
    designs = {
        "baseline": (AdderTreeMac(tables, lanes, max_tokens=ACC_SLOTS), "adder_tree_mac"),
        "mux": (TlmmEngine(tables, lanes, max_tokens=ACC_SLOTS), "tlmm_engine"),
        "lutram": (TlmmLutEngine(tables, lanes, slots=ACC_SLOTS), "tlmm_lut_engine"),
    }
    out = {}
    for key, (dut, top) in designs.items():
        rep = synth_ecp5(dut, top)
        out[key] = {"cells": rep.counts(), "per_mac": rep.per_mac(macs), "synth_seconds": round(rep.seconds, 1)}
        out["yosys"] = rep.yosys_version
    base = out["baseline"]["per_mac"]["lut4_equivalent"]
    for key in ("mux", "lutram"):
        out[key]["lut_ratio"] = out[key]["per_mac"]["lut4_equivalent"] / base
    return out


def bench_tlmm(hw="tiny", progress=None):
    """Cost and throughput for a hardware config; returns a JSON-ready dict."""
    say = progress or (lambda msg: None)
    cfg = load_hw_config(hw)
    t, n, storage = cfg.tlmm.tables, cfg.tlmm.lanes, cfg.tlmm.table_storage
    say("Yosys synth_ecp5: both TLMM engines and the adder-tree baseline (cached after the first run)")
    cost = measure_cost(t, n)
    engines = {}
    for key in ("lutram", "mux"):
        say(f"Verilator: throughput of the {key} engine ({t} x {n})")
        tp = measure_throughput(t, n, key)
        engines[key] = {**cost[key], "steady_state_efficiency": tp["steady_state_efficiency"], "throughput": tp}
    chosen = engines[storage]
    return {
        "hw": cfg.name, "tables": t, "lanes": n, "macs_per_cycle": 3 * t * n, "table_storage": storage,
        "lut4_per_mac": chosen["per_mac"]["lut4_equivalent"],
        "baseline_lut4_per_mac": cost["baseline"]["per_mac"]["lut4_equivalent"],
        "lut_ratio": chosen["lut_ratio"],
        "steady_state_efficiency": chosen["steady_state_efficiency"],
        "engines": engines,
        "baseline": cost["baseline"],
        "yosys": cost["yosys"],
        "method": (
            "cost: Yosys synth_ecp5 cell counts divided by 3*T*N MACs/cycle, LUT4 equivalents = LUT4 + 2*CCU2C "
            f"+ 6*DPR16X4; the baseline is a plain ternary adder-tree MAC array with the same MACs/cycle, streams "
            f"and shared accumulate back half; all three with {ACC_SLOTS} accumulator slots; synth_ecp5 elaborates "
            "with an ECP5 platform, so the lutram engine places its own CCU2C carry cells (signs and the last "
            "shift level in their LUTs) while the baseline and the mux engine stay plain Amaranth arithmetic. "
            "throughput: "
            "accepted steps (mux) or weight words (lutram) per cycle between the first and last one of a "
            f"stall-free matmul on Verilator; lutram streams {THROUGHPUT_ROWS} rows per table set (bitnet-large "
            "gate+up), so its 15-cycle table fills are included"),
    }
