"""Compile Verilog into cached Verilator models for cocotb.

A Verilator build of even a small design takes seconds, and a test-suite asks
for the same design configuration many times (several tests, several pytest
runs, several xdist workers).  Each configuration is therefore compiled once
into ``<cache root>/<toplevel>-<hash16>/`` and reused for as long as nothing
that affects the compiled model changes; see :func:`build_key_material` for
what goes into the key.

A build directory counts as complete only once its stamp file exists; the
stamp is written last, atomically, so an interrupted build is never reused.
Concurrent builders of the same key serialise on an ``fcntl.flock`` lock file
next to the directory: the first one compiles, the others wait and then reuse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cocotb
import cocotb_tools.config
from cocotb_tools.runner import Verilator

from .locking import file_lock
from .runtime_cache import shared_runtime_objects
from .toolchain import ToolchainError, env_flag, fst_supported, setup_verilator, verilator_version
from .verilog import export_verilog, waiver_text

__all__ = [
    "BuildError",
    "SimBuild",
    "build_component",
    "build_key_material",
    "build_verilog",
    "cache_root",
    "resolve_waves",
]

log = logging.getLogger(__name__)

#: Bump when the build recipe below changes in a way the key cannot see.
CACHE_SCHEMA = 1

#: Environment variable overriding the cache location.
CACHE_ENV = "TRILLIUM_SIM_CACHE"

#: Written into a build directory after a successful build, and only then.
STAMP_NAME = ".trillium-build-ok"

WAIVER_NAME = "lint_waiver.vlt"

#: Subdirectory of the cache root holding shared runtime objects.
RUNTIME_DIR_NAME = "_runtime"

# Amaranth's Verilog carries no `timescale; cocotb clocks are specified in ns
# and need sub-ns precision to express duty cycles, so fix one for all builds.
TIMESCALE = ("1ns", "1ps")

#: Verilator options every build gets: ``--assert`` makes a failing immediate assertion in the design (the
#: checks of :mod:`hw.collision`) stop the simulation with its message instead of passing unseen.
BASE_ARGS = ("--assert",)

# MAKEFLAGS / environment entries that change the compiled model.
_MAKE_VARS = ("OPT_FAST", "OPT_SLOW", "OPT_GLOBAL")
_ENV_VARS = ("CXX", "CXXFLAGS", "LDFLAGS")


class BuildError(ToolchainError):
    """Verilator or the C++ compiler rejected a design."""


@dataclass(frozen=True)
class SimBuild:
    """A compiled Verilator model ready for :func:`sim.run_cocotb`.

    Attributes
    ----------
    build_dir : pathlib.Path
        Verilator's ``-Mdir``; holds the simulator executable ``<toplevel>``.
    toplevel : str
        Top-level module name.
    verilog_path : pathlib.Path
        The Verilog that was compiled (kept for reading and for waveforms).
    key : str
        SHA-256 (hex) of the build's key material.
    reused : bool
        ``True`` if an existing build was reused instead of compiled.
    seconds : float
        Wall time this call took, including any wait for another builder.
    waves : str or None
        Trace format compiled in: ``"fst"``, ``"vcd"`` or ``None``.
    """

    build_dir: Path
    toplevel: str
    verilog_path: Path
    key: str
    reused: bool
    seconds: float
    waves: str | None = None

    @property
    def executable(self) -> Path:
        """Path of the compiled simulator."""
        return self.build_dir / self.toplevel


def cache_root() -> Path:
    """Return the build cache directory.

    Returns
    -------
    pathlib.Path
        ``$TRILLIUM_SIM_CACHE`` if set, else ``~/.cache/trillium/sim``.
    """
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "trillium" / "sim"


def resolve_waves(waves: bool | str) -> str | None:
    """Decide which trace format a build gets.

    cocotb lets the ``WAVES`` environment variable override the ``waves``
    argument; this function applies the same override so that the cache key
    always describes what was really compiled.

    Parameters
    ----------
    waves : bool or {"fst", "vcd"}
        ``False`` for no tracing, ``True`` for FST when the system can build it
        (else VCD, with a warning), or an explicit format.

    Returns
    -------
    str or None
        ``"fst"``, ``"vcd"`` or ``None``.

    Raises
    ------
    ToolchainError
        If ``"fst"`` is asked for explicitly but lz4/zlib headers are missing.
    ValueError
        If *waves* is not one of the accepted values.
    """
    override = env_flag("WAVES")
    if override is not None:
        waves = waves if (override and waves) else override
    if waves is False or waves is None:
        return None
    if waves is True:
        if fst_supported():
            return "fst"
        log.warning(
            "FST traces need liblz4-dev and zlib1g-dev (apt-get install liblz4-dev "
            "zlib1g-dev); writing VCD instead"
        )
        return "vcd"
    if waves == "vcd":
        return "vcd"
    if waves == "fst":
        if not fst_supported():
            raise ToolchainError(
                "FST traces need the lz4 and zlib development headers "
                "(apt-get install liblz4-dev zlib1g-dev); use waves='vcd' instead"
            )
        return "fst"
    raise ValueError(f"waves must be True, False, 'fst' or 'vcd', got {waves!r}")


def _makeflag_values() -> dict[str, str]:
    values = {}
    for word in os.environ.get("MAKEFLAGS", "").split():
        name, sep, value = word.partition("=")
        if sep and name in _MAKE_VARS:
            values[name] = value
    return values


def build_key_material(
    verilog_text: str,
    toplevel: str,
    *,
    build_args: Sequence[str] = (),
    parameters: Mapping[str, object] | None = None,
    waves: str | None = None,
) -> dict[str, object]:
    """Collect everything that determines a compiled model.

    Parameters
    ----------
    verilog_text, toplevel, build_args, parameters
        As for :func:`build_verilog`.
    waves : str or None
        Resolved trace format (see :func:`resolve_waves`).

    Returns
    -------
    dict
        JSON-serialisable key material; its SHA-256 is the build key.
    """
    return {
        "schema": CACHE_SCHEMA,
        "verilog_sha256": hashlib.sha256(verilog_text.encode()).hexdigest(),
        "toplevel": toplevel,
        "build_args": [*BASE_ARGS, *(str(a) for a in build_args)],
        "parameters": {str(k): str(v) for k, v in sorted((parameters or {}).items())},
        "verilator": verilator_version(),
        "waves": waves,
        "waiver_sha256": hashlib.sha256(waiver_text().encode()).hexdigest(),
        "timescale": list(TIMESCALE),
        "make": _makeflag_values(),
        "env": {name: os.environ.get(name, "") for name in _ENV_VARS},
        # The model links cocotb's VPI library by absolute path (rpath), so a
        # build belongs to one cocotb installation.
        "cocotb": [cocotb.__version__, str(cocotb_tools.config.libs_dir)],
    }


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


class _BuildRunner(Verilator):
    """cocotb's Verilator runner with the shared runtime objects slotted in.

    cocotb runs ``verilator`` and then ``make``; between the two, objects from
    :mod:`sim.runtime_cache` are copied in, and after a successful ``make``
    new ones are saved.  The cache only saves time: any failure in it is
    logged and the build proceeds as cocotb would run it.
    """

    def __init__(self, runtime_dir: Path):
        super().__init__()
        self._runtime_dir = runtime_dir

    def _execute_cmds(self, cmds, cwd, stdout=None) -> None:
        __tracebackhide__ = True
        for cmd in cmds:
            if Path(cmd[0]).name != "make":
                super()._execute_cmds([cmd], cwd, stdout)
                continue
            with shared_runtime_objects(
                cmd, self.build_dir, self._runtime_dir, self.env, verilator_version()
            ):
                super()._execute_cmds([cmd], cwd, stdout)


def _compile(
    build_dir: Path,
    verilog_path: Path,
    toplevel: str,
    build_args: Sequence[str],
    parameters: Mapping[str, object],
    waves: str | None,
) -> None:
    waiver = build_dir / WAIVER_NAME
    waiver.write_text(waiver_text())
    args = [*BASE_ARGS, *build_args]
    if waves == "fst":
        # cocotb adds --trace for waves=True; --trace-fst given after it wins
        # and makes Verilator define VM_TRACE_FST for cocotb's main().
        args.append("--trace-fst")
    log_path = build_dir / "build.log"

    runner = _BuildRunner(cache_root() / RUNTIME_DIR_NAME)
    try:
        runner.build(
            # The waiver must come before the sources it applies to.
            sources=[waiver, verilog_path],
            hdl_toplevel=toplevel,
            build_args=args,
            parameters=dict(parameters),
            build_dir=build_dir,
            waves=waves is not None,
            timescale=TIMESCALE,
            log_file=log_path,
        )
    except (RuntimeError, SystemExit) as exc:
        raise BuildError(
            f"Verilator build of {toplevel!r} failed ({exc}); log {log_path}:\n{_tail(log_path)}"
        ) from None
    if not (build_dir / toplevel).is_file():
        raise BuildError(
            f"Verilator build of {toplevel!r} produced no {build_dir / toplevel}; "
            f"log {log_path}:\n{_tail(log_path)}"
        )


def build_verilog(
    verilog_text: str,
    toplevel: str,
    *,
    build_args: Sequence[str] = (),
    parameters: Mapping[str, object] | None = None,
    waves: bool | str = False,
) -> SimBuild:
    """Compile Verilog into a Verilator model for cocotb, or reuse a cached one.

    Parameters
    ----------
    verilog_text : str
        Complete Verilog source defining *toplevel* and everything it uses.
    toplevel : str
        Name of the top-level module.
    build_args : sequence of str, optional
        Extra ``verilator`` arguments, e.g. ``("-Wno-fatal",)``.  Lint
        warnings that Amaranth output always raises are waived already; any
        other warning stops the build unless ``-Wno-fatal`` is given.
    parameters : mapping, optional
        Verilog parameters of *toplevel* (``-G<name>=<value>``).
    waves : bool or {"fst", "vcd"}, optional
        Compile in signal tracing (see :func:`resolve_waves`).  A traced model
        is a separate cache entry; it is slower, so only ask when needed.

    Returns
    -------
    SimBuild
        The compiled (or reused) model.

    Raises
    ------
    ValueError
        If *toplevel* is not a Verilog identifier or *waves* is invalid.
    ToolchainError
        If Verilator is missing or too old.
    BuildError
        If Verilator or the C++ compiler fails; the message ends with the tail
        of the build log.
    """
    start = time.monotonic()
    if not toplevel.isidentifier():
        raise ValueError(f"toplevel must be a Verilog identifier, got {toplevel!r}")
    setup_verilator()
    fmt = resolve_waves(waves)
    material = build_key_material(
        verilog_text, toplevel, build_args=build_args, parameters=parameters, waves=fmt
    )
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    root = cache_root()
    build_dir = root / f"{toplevel}-{key[:16]}"
    verilog_path = build_dir / f"{toplevel}.v"
    stamp = build_dir / STAMP_NAME

    def result(reused: bool) -> SimBuild:
        return SimBuild(
            build_dir=build_dir,
            toplevel=toplevel,
            verilog_path=verilog_path,
            key=key,
            reused=reused,
            seconds=time.monotonic() - start,
            waves=fmt,
        )

    # Fast path: no lock needed to read a finished build, the stamp is final.
    if stamp.is_file():
        return result(reused=True)

    with file_lock(root / f"{build_dir.name}.lock"):
        if stamp.is_file():  # another process finished it while we waited
            return result(reused=True)
        # Leftovers of an interrupted or failed build: start afresh.
        shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir(parents=True)
        verilog_path.write_text(verilog_text)
        (build_dir / "key.json").write_text(json.dumps(material, indent=2, sort_keys=True) + "\n")
        log.info("building %s in %s", toplevel, build_dir)
        _compile(build_dir, verilog_path, toplevel, build_args, parameters or {}, fmt)
        seconds = time.monotonic() - start
        tmp = stamp.with_name(f"{STAMP_NAME}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "seconds": round(seconds, 3), "python": sys.executable}) + "\n")
        os.replace(tmp, stamp)
    return result(reused=False)


def build_component(
    component,
    toplevel: str,
    *,
    ports=None,
    build_args: Sequence[str] = (),
    parameters: Mapping[str, object] | None = None,
    waves: bool | str = False,
) -> SimBuild:
    """Export an Amaranth design to Verilog and build it with :func:`build_verilog`.

    Parameters
    ----------
    component : amaranth.lib.wiring.Component or amaranth.hdl.Elaboratable
        Design to simulate; elaborated afresh on every call (the export is
        what tells whether a cached build matches).
    toplevel : str
        Name for the top-level Verilog module.
    ports : sequence of amaranth.hdl.Value, optional
        Ports of a plain ``Elaboratable`` (see :func:`sim.export_verilog`).
    build_args, parameters, waves
        As for :func:`build_verilog`.

    Returns
    -------
    SimBuild
        The compiled (or reused) model.
    """
    text = export_verilog(component, toplevel, ports=ports)
    return build_verilog(
        text, toplevel, build_args=build_args, parameters=parameters, waves=waves
    )
