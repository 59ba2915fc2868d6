"""ECP5 cost of each unit of the accelerator: where the LUTs, DSPs and block RAMs of a build go.

``python -m hw.unit_cost --hw ecp5 [--unit attend ...] [-j 2] [--json]`` synthesises every unit of
:class:`hw.top.TrilliumTop` (``cp``, ``embed``, ``linear``, ``attend``, ...) on its own with
:func:`hw.synth.synth_ecp5` (Yosys ``synth_ecp5``, flattened below the unit; reports cached by design
text) and prints one row per unit, the sum, and the sum against the LFE5U-85F's resources.

Why per unit: one flat ``synth_ecp5`` of the whole top takes several minutes and says nothing about where
the cost is, and ``-noflatten`` over the whole top takes half an hour. Units synthesise independently, in
parallel (``-j``), and an unchanged unit is a cache hit. The sum misses only the top level's own glue (a
few hundred LUTs of muxes between the units) and what Yosys would share or trim across unit boundaries,
so it is an estimate of the full build, not its result: ``trillium build`` gives that.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from concurrent.futures import ProcessPoolExecutor

__all__ = ["UNIT_NAMES", "ECP5_85F", "unit_costs", "format_costs"]

#: The units of :class:`hw.top.TrilliumTop`, in its elaboration order.
UNIT_NAMES = ("cp", "bridge", "embed", "linear", "attend", "buffers", "kv_writer", "logits_writer",
              "load_x", "save_x", "read_arbiter", "write_arbiter")

#: LFE5U-85F resources, in the units of :class:`hw.synth.SynthReport` (LUT4 sites, FFs, MULT18X18D,
#: DP16KD).
ECP5_85F = {"lut4_equivalent": 83640, "ff": 83640, "dsp": 156, "bram": 208}

_COLUMNS = (("lut4", "LUT4"), ("ccu2c", "CCU2C"), ("dpr16x4", "DPR16X4"), ("lut4_equivalent", "LUT4-eq"),
            ("ff", "FF"), ("dsp", "DSP"), ("bram", "BRAM"))


def _silence():
    import warnings

    from amaranth.hdl import UnusedElaboratable

    warnings.simplefilter("ignore", UnusedElaboratable)


def _synth_unit(args):
    hw_name, unit, use_cache = args
    from hw.config import load_hw_config
    from hw.synth import synth_ecp5
    from hw.top import TrilliumTop

    _silence()                      # only one unit is elaborated: the others would warn "never used"
    top = TrilliumTop(load_hw_config(hw_name))
    rep = synth_ecp5(getattr(top, unit), f"unit_{unit}", use_cache=use_cache)
    return unit, rep.to_json()


def unit_costs(hw_name, units=UNIT_NAMES, *, jobs=2, use_cache=True, progress=None):
    """``{unit: SynthReport.to_json()}`` for each unit of ``hw_name``'s accelerator."""
    unknown = [u for u in units if u not in UNIT_NAMES]
    if unknown:
        raise ValueError(f"unknown unit(s) {', '.join(unknown)}; units: {', '.join(UNIT_NAMES)}")
    say = progress or (lambda msg: None)
    work = [(hw_name, u, use_cache) for u in units]
    out = {}
    with ProcessPoolExecutor(max_workers=jobs) if jobs > 1 else contextlib.nullcontext() as pool:
        for unit, rep in (pool.map if pool else map)(_synth_unit, work):
            say(f"{unit}: {'cached' if rep.get('cached') else str(rep.get('seconds')) + ' s'}")
            out[unit] = rep
    return out


def _count(rep, key):
    if key == "lut4_equivalent":
        from hw.synth import LUT4_PER_CCU2C, LUT4_PER_DPR16X4

        return rep["lut4"] + LUT4_PER_CCU2C * rep["ccu2c"] + LUT4_PER_DPR16X4 * rep["dpr16x4"]
    return rep[key]


def format_costs(costs, budget=ECP5_85F):
    """A text table: one row per unit, the sum, and the sum as a share of ``budget``."""
    head = f"{'unit':14s}" + "".join(f"{title:>9s}" for _, title in _COLUMNS)
    lines = [head, "-" * len(head)]
    total = {k: 0 for k, _ in _COLUMNS}
    for unit, rep in costs.items():
        row = {k: _count(rep, k) for k, _ in _COLUMNS}
        for k in total:
            total[k] += row[k]
        lines.append(f"{unit:14s}" + "".join(f"{row[k]:9d}" for k, _ in _COLUMNS))
    lines.append("-" * len(head))
    lines.append(f"{'sum':14s}" + "".join(f"{total[k]:9d}" for k, _ in _COLUMNS))
    share = "".join(f"{(f'{100 * total[k] / budget[k]:.0f}%' if k in budget else ''):>9s}" for k, _ in _COLUMNS)
    lines.append(f"{'of LFE5U-85F':14s}" + share)
    return "\n".join(lines)


def main(argv=None):
    """``python -m hw.unit_cost --hw CONFIG``: ECP5 cells of each accelerator unit and their sum."""
    parser = argparse.ArgumentParser(prog="python -m hw.unit_cost", description=main.__doc__.splitlines()[0])
    parser.add_argument("--hw", default="ecp5", help="hardware config name or YAML path (default ecp5)")
    parser.add_argument("--unit", action="append", choices=UNIT_NAMES, help="only this unit (repeatable)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="Yosys runs in parallel (default 2)")
    parser.add_argument("--no-cache", action="store_true", help="synthesise even if a report is cached")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = parser.parse_args(argv)
    costs = unit_costs(args.hw, tuple(args.unit or UNIT_NAMES), jobs=args.jobs, use_cache=not args.no_cache,
                       progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(json.dumps(costs, indent=1) if args.json else format_costs(costs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
