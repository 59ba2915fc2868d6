"""Placement seed sweeps for ``trillium build --seeds``: place one synthesised netlist under several nextpnr
seeds, rank the placements by their timing estimate, and keep (place only) or route the best.

Why: nextpnr's placement of one netlist differs by seed, and by more than most design changes (the shell's
estimates ran from 64.9 to 83.7 MHz over seeds of one netlist, docs/board.md). Synthesis is the same for
every seed, so it runs once; each trial is nextpnr with ``--no-route`` and the trial's ``--seed``, its
outputs (report, log, placed SDF and netlist, text config) in ``seed-<n>/`` of the build directory, then
the place-only analysis (:func:`firmware.fpga_build.placed_timing`). Trials may run side by side
(``jobs``): each is one nextpnr process.

A placed estimate is a draw too: routing has moved the shell's clock by -27.7 to +6.9 MHz from its
estimate. The best estimate is the best bet, not a promise; the sweep's table keeps every trial so the
spread is visible.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["MAX_SEEDS", "best_trial", "check_seeds", "format_sweep", "parse_seeds", "run_trials", "sweep_summary",
           "trial_argv", "trial_dir"]

#: More trials than this is a typo (``--seeds 1-1000``), not a plan: each is a full placement.
MAX_SEEDS = 64

#: nextpnr options naming files a trial writes, redirected into its directory.
_OUTPUT_OPTS = ("--report", "--log", "--textcfg")
#: Options a trial replaces with its own (placing only, its own seed).
_DROPPED_OPTS = {"--sdf": 1, "--write": 1, "--seed": 1, "--no-route": 0}


def parse_seeds(text):
    """Seeds from a command line: comma-separated integers and inclusive ranges (``"1,2,5"``,
    ``"1-4"``, ``"1-3,8"``), each from 0 to 2^31 - 1, distinct, at most :data:`MAX_SEEDS`. Returns a list
    in the given order; raises ValueError naming the bad part."""
    seeds = []
    for part in str(text).split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            first = int(lo)
            last = int(hi) if sep else first
        except ValueError:
            raise ValueError(f"build: --seeds takes integers and ranges like 1,2,5 or 1-4, not {part!r}") from None
        if last < first:
            raise ValueError(f"build: --seeds range {part!r} runs backwards")
        if last - first >= MAX_SEEDS:
            raise ValueError(f"build: --seeds range {part!r} is more than {MAX_SEEDS} placements")
        seeds.extend(range(first, last + 1))
    check_seeds(seeds)
    return seeds


def check_seeds(seeds):
    """Validate a list of seeds (what :func:`parse_seeds` returns, or an API caller's list)."""
    from hw.params import check_int

    seeds = list(seeds)
    if not seeds:
        raise ValueError("build: seeds must name at least one seed")
    if len(seeds) > MAX_SEEDS:
        raise ValueError(f"build: {len(seeds)} seeds is more than {MAX_SEEDS} placements")
    for s in seeds:
        check_int("seed", s, 0, (1 << 31) - 1, "build")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ValueError(f"build: seed {dup[0]} is given twice")
    return seeds


def trial_dir(seed):
    """The directory (relative to the build directory) of one trial's outputs."""
    return f"seed-{seed}"


def trial_argv(argv, seed, *, placed_sdf, placed_netlist):
    """The nextpnr command of one trial, from the flow's nextpnr command ``argv``: placing only
    (``--no-route``, ``placed_sdf`` and ``placed_netlist`` written), under ``--seed seed``, every output
    file (``--report``, ``--log``, ``--textcfg``, the SDF and netlist) inside :func:`trial_dir`. Inputs
    (``--json``, ``--lpf``, ...) stay where they are: nextpnr runs in the build directory either way (YoWASP
    tools see only files under their working directory)."""
    sub = trial_dir(seed)
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in _DROPPED_OPTS:
            i += 1 + _DROPPED_OPTS[arg]
            continue
        out.append(arg)
        if arg in _OUTPUT_OPTS and i + 1 < len(argv):
            out.append(f"{sub}/{argv[i + 1]}")
            i += 2
            continue
        i += 1
    return out + ["--no-route", "--sdf", f"{sub}/{placed_sdf}", "--write", f"{sub}/{placed_netlist}",
                  "--seed", str(seed)]


def _rank_key(trial):
    # Fastest worst path first (nextpnr's Fmax is the worst path's); then the fewest late endpoints, which
    # is how much the router has to save; then the seed, so ties are stable.
    pt = trial["placed_timing"]
    return (pt["worst_ns"], pt["failing"], trial["seed"])


def best_trial(trials):
    """The trial to keep: the shortest worst path of the placed-timing analysis, then the fewest late
    endpoints, then the lowest seed. ``trials`` are :func:`run_trials`'s dicts."""
    if not trials:
        raise ValueError("no placement trials to choose from")
    return min(trials, key=_rank_key)


def sweep_summary(trials, chosen):
    """The result's ``seed_sweep``: ``chosen`` (the seed kept) and per trial its seed, directory, placement
    seconds, nextpnr's Fmax estimate per clock and the analysis' ``worst_ns`` / ``fmax_mhz`` / ``failing``
    / ``endpoints`` (its paths are in each trial's ``placed-timing.txt`` and ``trial.json``)."""
    keep = ("period_ns", "worst_ns", "fmax_mhz", "failing", "endpoints")
    return {"chosen": chosen, "trials": [
        {"seed": t["seed"], "dir": t["dir"], "seconds": t["seconds"], "fmax_mhz": t["fmax_mhz"],
         "placed_timing": {k: t["placed_timing"][k] for k in keep}} for t in trials]}


def format_sweep(sweep):
    """The sweep's table (a result's ``seed_sweep``): one row per seed, best estimate first, the chosen one
    marked."""
    lines = [f"placement seeds ({len(sweep['trials'])} placed; estimates after placement only, routed delays "
             f"differ):",
             f"  {'seed':>10}  {'est. MHz':>9}  {'worst ns':>8}  {'late endpoints':>14}  {'place s':>8}"]
    for t in sorted(sweep["trials"], key=_rank_key):
        pt = t["placed_timing"]
        mark = "  <- chosen" if t["seed"] == sweep["chosen"] else ""
        lines.append(f"  {t['seed']:>10}  {pt['fmax_mhz']:>9.2f}  {pt['worst_ns']:>8.2f}  {pt['failing']:>14,}"
                     f"  {t['seconds']:>8.1f}{mark}")
    return lines


def run_trials(argv, seeds, *, build_dir, run, analyse, jobs=1, say=lambda msg: None, label=""):
    """Place the netlist once per seed and analyse each placement.

    Parameters
    ----------
    argv : list of str
        The flow's nextpnr command (its executable first).
    seeds : list of int
        The seeds, validated (:func:`check_seeds`).
    build_dir : Path
        Where nextpnr runs; each trial writes into its :func:`trial_dir` under it.
    run : callable
        ``run(argv, log_path) -> seconds``: runs one nextpnr command in ``build_dir`` (raising on failure).
    analyse : callable
        ``analyse(trial_path) -> (parsed, placed_timing dict, text path)``: the trial's report, its timing
        analysis and the analysis' text file.
    jobs : int
        Trials placed at once (each is a nextpnr process).

    Returns
    -------
    list of dict
        Per seed, in ``seeds`` order: ``seed``, ``dir``, ``seconds`` (placement), ``fmax_mhz`` (nextpnr's
        estimate per clock), ``placed_timing`` (the analysis, with its paths), ``placed_timing_report`` (its
        text, hop by hop), ``parsed`` (the trial's nextpnr report, parsed) and ``log`` (nextpnr's output).
        Each is also written to the trial's ``trial.json``.
    """
    from .fpga_build import PLACED_NETLIST, PLACED_SDF

    total = len(seeds)

    def one(k, seed):
        path = Path(build_dir) / trial_dir(seed)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.iterdir():  # an earlier sweep's outputs would pass for this one's
            if stale.is_file():
                stale.unlink()
        cmd = trial_argv(argv, seed, placed_sdf=PLACED_SDF, placed_netlist=PLACED_NETLIST)
        say(f"{label}seed {seed} ({k} of {total}): placing ... (log {path / 'nextpnr.log'})")
        seconds = run(cmd, path / "nextpnr.log")
        parsed, timing, text = analyse(path)
        say(f"{label}seed {seed} ({k} of {total}): {timing['fmax_mhz']:.2f} MHz estimated, worst "
            f"{timing['worst_ns']:.2f} ns, {timing['failing']:,} endpoints late (placed in {seconds:.1f} s)")
        trial = {"seed": seed, "dir": str(path), "seconds": round(seconds, 1), "fmax_mhz": parsed["fmax_mhz"],
                 "placed_timing": timing, "placed_timing_report": str(text), "parsed": parsed,
                 "log": str(path / "nextpnr.log")}
        (path / "trial.json").write_text(json.dumps(trial, indent=1) + "\n")
        return trial

    if jobs <= 1 or total == 1:
        return [one(k, s) for k, s in enumerate(seeds, 1)]
    with ThreadPoolExecutor(max_workers=min(jobs, total)) as pool:
        futures = [pool.submit(one, k, s) for k, s in enumerate(seeds, 1)]
        return [f.result() for f in futures]
