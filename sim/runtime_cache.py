"""Share Verilator's runtime objects between builds of different designs.

Every Verilator model links a handful of runtime objects (``verilated.o``,
``verilated_vpi.o``, ...) compiled from the wheel's ``include`` directory.
They do not depend on the design, yet Verilator's makefile recompiles them for
every build directory, which is ~10 s of a ~13 s build of a small design on
this 2-core machine.  This module keeps one copy per distinct way of compiling
them and drops it into new build directories before ``make`` runs.

The key is the exact compiler commands ``make`` would run for those objects
(obtained with ``make -n``), plus the compiler's and Verilator's versions, so
any change of flags, defines (tracing, threads, coverage), compiler or
Verilator selects a different entry.  Objects are copied in with fresh
modification times, so ``make`` sees them as up to date; objects it does not
find are simply compiled as usual.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .locking import file_lock

__all__ = ["shared_runtime_objects"]

log = logging.getLogger(__name__)

_STAMP = ".complete"


def _global_objects(build_dir: Path) -> list[str]:
    # Vtop_classes.mk lists the runtime sources as
    #   VM_GLOBAL_FAST += \
    #     verilated \
    #     verilated_vpi \
    classes = next(build_dir.glob("*_classes.mk"), None)
    if classes is None:
        return []
    names: list[str] = []
    collecting = False
    for line in classes.read_text().splitlines():
        if re.match(r"VM_GLOBAL_(FAST|SLOW)\s*\+=", line):
            collecting = True
            continue
        if collecting:
            name = line.strip().rstrip("\\").strip()
            if not name:
                collecting = False
                continue
            names.append(f"{name}.o")
    return names


@functools.lru_cache(maxsize=None)
def _compiler_identity(cxx: str) -> str:
    try:
        return subprocess.run(
            [cxx, "--version"], capture_output=True, text=True, timeout=60
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"unknown {cxx}"


def _key(
    make_cmd: Sequence[str],
    build_dir: Path,
    objects: Sequence[str],
    env: Mapping[str, str],
    extra: str,
) -> str | None:
    dry_run = subprocess.run(
        [*make_cmd, "-n", "-B", *objects],
        cwd=build_dir,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if dry_run.returncode != 0:
        log.debug("make -n failed, not sharing runtime objects: %s", dry_run.stderr)
        return None
    # Keep only compiler invocations; make's "Entering directory" lines name
    # the build directory, which differs between designs.
    commands = [
        line.strip() for line in dry_run.stdout.splitlines() if " -c " in line and " -o " in line
    ]
    if len(commands) != len(objects):
        return None
    cxx = env.get("CXX") or "c++"
    material = "\n".join([extra, _compiler_identity(cxx), *commands])
    return hashlib.sha256(material.encode()).hexdigest()


def _entry(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:24]


@contextlib.contextmanager
def shared_runtime_objects(
    make_cmd: Sequence[str], build_dir: Path, cache_dir: Path, env: Mapping[str, str], extra: str
) -> Iterator[None]:
    """Provide cached runtime objects to the ``make`` run inside the block.

    Must be entered after Verilator has written the makefiles and before
    ``make`` runs.  On a cache hit the objects are copied into *build_dir*.
    On a miss the entry's lock is held while the block runs, so concurrent
    builds needing the same objects wait for this one instead of compiling
    them again on the same cores; if the block succeeds, the freshly compiled
    objects are stored.  The cache only ever saves time: its own failures are
    logged and the build goes ahead without it.

    Parameters
    ----------
    make_cmd : sequence of str
        The ``make`` command that will build the model.
    build_dir : pathlib.Path
        Verilator's output directory.
    cache_dir : pathlib.Path
        Root of the runtime-object cache.
    env : mapping
        Environment ``make`` will run with (``MAKEFLAGS`` matters).
    extra : str
        Additional key material (the Verilator version).
    """
    try:
        objects = _global_objects(build_dir)
        key = _key(make_cmd, build_dir, objects, env, extra) if objects else None
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("not sharing Verilator runtime objects: %s", exc)
        key = None
    if key is None:
        yield
        return
    entry = _entry(cache_dir, key)
    if not (entry / _STAMP).is_file():
        with file_lock(cache_dir / f"{entry.name}.lock"):
            if not (entry / _STAMP).is_file():
                yield
                try:
                    _save(build_dir, entry, objects, key)
                except OSError as exc:
                    log.warning("could not store Verilator runtime objects: %s", exc)
                return
    _restore(build_dir, entry, objects)
    yield


def _restore(build_dir: Path, entry: Path, objects: Sequence[str]) -> None:
    names = [n for obj in objects for n in (obj, obj[:-2] + ".d") if (entry / n).is_file()]
    try:
        for name in names:
            # copyfile, not copy2: the copy must be newer than the freshly
            # written Vtop.mk that these objects depend on.
            shutil.copyfile(entry / name, build_dir / name)
    except OSError as exc:
        # A truncated copy with a fresh mtime would look up to date to make:
        # remove them all and let make compile as usual.
        log.warning("could not copy Verilator runtime objects: %s", exc)
        for name in names:
            (build_dir / name).unlink(missing_ok=True)
        return
    log.info("reused Verilator runtime objects from %s", entry)


def _save(build_dir: Path, entry: Path, objects: Sequence[str], key: str) -> None:
    # Called with the entry's lock held.
    if not all((build_dir / obj).is_file() for obj in objects):
        return
    tmp = entry.with_name(f"{entry.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for obj in objects:
        for name in (obj, obj[:-2] + ".d"):
            if (build_dir / name).is_file():
                shutil.copyfile(build_dir / name, tmp / name)
    (tmp / _STAMP).write_text(key + "\n")
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(tmp, entry)
