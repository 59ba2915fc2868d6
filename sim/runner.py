"""Run cocotb testbenches on cached Verilator models and check the outcome.

``cocotb_tools.runner`` is used for the run itself, with three adjustments
made in :class:`_Verilator`:

* values passed explicitly (``extra_env``, the seed, the test filter) win over
  the caller's environment (upstream lets ``os.environ`` overwrite them);
* the directory holding the test module goes first on ``PYTHONPATH``
  (upstream replaces ``PYTHONPATH`` with this process's ``sys.path``);
* an optional wall-clock limit, via coreutils ``timeout``.

The outcome is judged from the JUnit results file, not from exit codes, and a
run where no test executed counts as a failure, so that a typo in a module or
test name cannot pass silently.
"""

from __future__ import annotations

import os
import random
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from cocotb_tools.runner import Verilator

from .build import SimBuild, cache_root
from .toolchain import ToolchainError, env_flag, setup_verilator

__all__ = ["CocotbResults", "run_cocotb"]

# Grace period between SIGTERM and SIGKILL when a run exceeds timeout_s.
_KILL_AFTER_S = 10


class _Verilator(Verilator):
    """cocotb's Verilator runner with explicit settings taking precedence."""

    def __init__(self, python_paths: Sequence[Path] = (), timeout_s: float | None = None):
        super().__init__()
        self._python_paths = [str(p) for p in python_paths]
        self._timeout_s = timeout_s

    def _set_env_test(self) -> None:
        # At this point self.env holds only what test() was asked to set.
        explicit = dict(self.env)
        super()._set_env_test()
        self.env.update(explicit)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [*self._python_paths, self.env.get("PYTHONPATH", "")]
        )

    def _get_sim_cmd_prefix(self) -> list[str]:
        prefix = super()._get_sim_cmd_prefix()
        if self._timeout_s is None:
            return prefix
        return ["timeout", f"--kill-after={_KILL_AFTER_S}", f"{self._timeout_s:g}", *prefix]


@dataclass(frozen=True)
class CocotbResults:
    """Outcome of one :func:`run_cocotb` call.

    Attributes
    ----------
    passed, failed, skipped : tuple of str
        ``module.test`` names by outcome (``failed`` includes errors).
    seed : int
        Random seed the run used; pass it back as ``seed=`` to reproduce.
    run_dir : pathlib.Path
        Working directory of the simulator (results, log, waves).
    results_xml : pathlib.Path
        JUnit results file written by cocotb.
    log_path : pathlib.Path
        Simulator and cocotb output.
    waves_path : pathlib.Path or None
        Trace file, when tracing was on and a file was written.
    seconds : float
        Wall time of the run.
    """

    passed: tuple[str, ...]
    failed: tuple[str, ...]
    skipped: tuple[str, ...]
    seed: int
    run_dir: Path
    results_xml: Path
    log_path: Path
    waves_path: Path | None
    seconds: float

    @property
    def ran(self) -> int:
        """Number of tests that ran (passed or failed)."""
        return len(self.passed) + len(self.failed)


def _parse_results(path: Path) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    passed: list[str] = []
    failed: list[tuple[str, str]] = []
    skipped: list[str] = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        name = ".".join(filter(None, [case.get("classname"), case.get("name")]))
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            failed.append((name, problem.get("message") or problem.tag))
        elif case.find("skipped") is not None:
            skipped.append(name)
        else:
            passed.append(name)
    return passed, failed, skipped


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


def _new_run_dir(sim_build: SimBuild) -> Path:
    # One directory per run, so concurrent runs (xdist workers, repeated
    # parametrisations) never share a results file or a trace.
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return cache_root() / "runs" / sim_build.build_dir.name / name


def _check_env(extra_env: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(extra_env or {})
    bad = {k: type(v).__name__ for k, v in env.items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise TypeError(f"extra_env names and values must be str (JSON-encode structures); got {bad}")
    return env


def _choose_seed(seed: int | None) -> int:
    if seed is not None:
        return int(seed)
    if os.environ.get("COCOTB_RANDOM_SEED", "").strip():
        return int(os.environ["COCOTB_RANDOM_SEED"])
    # Pick the seed here rather than letting cocotb do it, so it can be
    # reported in failure messages and returned for reproduction.
    return random.SystemRandom().randrange(1, 2**31)


def run_cocotb(
    sim_build: SimBuild,
    test_module: str | Sequence[str],
    *,
    test_dir: str | os.PathLike[str] | None = None,
    testcase: str | Sequence[str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    seed: int | None = None,
    waves: bool = False,
    timeout_s: float | None = None,
    run_dir: str | os.PathLike[str] | None = None,
) -> CocotbResults:
    """Run cocotb tests on a compiled model and fail loudly if any fail.

    Parameters
    ----------
    sim_build : SimBuild
        Model from :func:`sim.build_verilog` / :func:`sim.build_component`;
        it is never recompiled here.
    test_module : str or sequence of str
        Name(s) of the Python module(s) holding ``@cocotb.test()`` functions.
    test_dir : path-like, optional
        Directory the test module is imported from; put first on the
        simulator's ``PYTHONPATH``.
    testcase : str or sequence of str, optional
        Run only these tests (by function name).
    extra_env : mapping of str to str, optional
        Extra environment for the simulator process, e.g. testbench
        parameters as JSON.  Overrides same-named variables of this process.
    seed : int, optional
        Random seed for cocotb (``COCOTB_RANDOM_SEED``).  Default: taken from
        ``COCOTB_RANDOM_SEED`` if set, else chosen at random; either way it is
        reported on failure and in the result.
    waves : bool, optional
        Record a trace (``dump.fst`` or ``dump.vcd`` in the run directory).
        The build must have been made with ``waves``; the ``WAVES``
        environment variable overrides this argument, as in cocotb.
    timeout_s : float, optional
        Kill the simulator after this many seconds of wall time.
    run_dir : path-like, optional
        Where to run; default a fresh directory under
        ``<cache root>/runs/<build name>/``.

    Returns
    -------
    CocotbResults
        Names of passed/failed/skipped tests, the seed and file locations.

    Raises
    ------
    AssertionError
        If any test failed or errored, if no test ran, or if the simulator
        ended without writing results (crash, timeout).  The message names the
        failing tests, the seed, and ends with the tail of the simulator log.
    ValueError
        If *waves* is requested from a build compiled without tracing.
    ToolchainError
        If the model's executable is missing.
    """
    start = time.monotonic()
    setup_verilator()
    if not sim_build.executable.is_file():
        raise ToolchainError(
            f"{sim_build.executable} is missing; was the cache cleared? Build again."
        )
    env = _check_env(extra_env)
    seed = _choose_seed(seed)
    override = env_flag("WAVES")
    waves = override if override is not None else bool(waves)
    if waves and sim_build.waves is None:
        raise ValueError(
            f"waves requested but {sim_build.build_dir.name} was built without tracing; "
            "build with waves=True"
        )
    if timeout_s is not None and shutil.which("timeout") is None:
        raise ToolchainError("timeout_s needs coreutils 'timeout' on PATH")

    run_path = Path(run_dir) if run_dir is not None else _new_run_dir(sim_build)
    run_path = run_path.resolve()
    run_path.mkdir(parents=True, exist_ok=True)
    results_xml = run_path / "results.xml"
    log_path = run_path / "sim.log"
    python_paths = [Path(test_dir).resolve()] if test_dir is not None else []
    modules = test_module if isinstance(test_module, str) else ",".join(test_module)

    runner = _Verilator(python_paths=python_paths, timeout_s=timeout_s)
    failure: str | None = None
    try:
        runner.test(
            test_module=modules,
            hdl_toplevel=sim_build.toplevel,
            # Without a preceding build() the runner cannot infer the language.
            hdl_toplevel_lang="verilog",
            build_dir=sim_build.build_dir,
            test_dir=run_path,
            # An absolute path, so the runner does not derive the name from
            # PYTEST_CURRENT_TEST.
            results_xml=str(results_xml),
            testcase=testcase,
            seed=seed,
            extra_env=env,
            waves=waves,
            log_file=log_path,
        )
    except (RuntimeError, SystemExit) as exc:
        # Under pytest the runner calls sys.exit() on failures; elsewhere a
        # non-zero simulator exit raises RuntimeError.  Either way the results
        # file, if any, is the authority.
        failure = str(exc)

    what = f"{modules} on {sim_build.toplevel} (seed={seed}, run dir {run_path})"
    if not results_xml.is_file():
        reason = f"simulator ended without writing results ({failure or 'exit status 0'})"
        # `timeout` exits 124 (or 137 after SIGKILL); the elapsed time is the
        # simpler, equally reliable sign.
        if timeout_s is not None and time.monotonic() - start >= timeout_s:
            reason = f"simulator timed out after {timeout_s:g} s"
        raise AssertionError(f"cocotb: {reason}: {what}\n{_tail(log_path)}")

    passed, failed, skipped = _parse_results(results_xml)
    if failed:
        lines = "\n".join(f"  - {name}: {message}" for name, message in failed)
        raise AssertionError(
            f"cocotb: {len(failed)} of {len(failed) + len(passed)} tests failed in {what}:\n"
            f"{lines}\n--- log tail ---\n{_tail(log_path)}"
        )
    if not passed:
        raise AssertionError(
            f"cocotb: no test ran in {what} (skipped: {skipped or 'none'}); "
            f"check the module name and testcase filter\n{_tail(log_path)}"
        )

    waves_path = None
    if waves:
        candidate = run_path / ("dump.fst" if sim_build.waves == "fst" else "dump.vcd")
        waves_path = candidate if candidate.is_file() else None
    return CocotbResults(
        passed=tuple(passed),
        failed=(),
        skipped=tuple(skipped),
        seed=seed,
        run_dir=run_path,
        results_xml=results_xml,
        log_path=log_path,
        waves_path=waves_path,
        seconds=time.monotonic() - start,
    )
