"""The ``verilator`` device: the accelerator's RTL, co-simulated in Verilator, behind the driver's device API.

:class:`VerilatorDevice` wraps the top level (``hw.top.TrilliumTop`` unless ``top_factory`` says otherwise)
with a DRAM model in :class:`sim.cosim_top.CosimTop`, builds it once with Verilator (cached across processes
by the Verilog text, so only a changed design or hardware config rebuilds), and starts the simulator once as
a subprocess running ``sim/testbenches/tb_device_server.py``. The simulator stays up between calls: DRAM
and CSR accesses and runs are requests over a Unix socket (protocol in ``sim/cosim_top.py``).

Everything comes from the RTL: CSR reads (``id``, ``status``, ``cycles_lo``, ``error_pc``, ...) are
AXI4-Lite reads, a run is ``control.start`` and a wait for ``irq``. Failures never hang the driver:

* a run longer than its cycle budget (``timeout_cycles``, or ``run(max_cycles=...)``) or its wall-clock
  limit (``run(timeout_s=...)``) raises :class:`DeviceError` with the CSR state; the design is then reset
  (DRAM keeps its contents, the CSRs the driver wrote are written again) and the device stays usable;
* a simulator that dies, or does not answer a request in time, raises :class:`DeviceError` with the tail
  of its log, and the device is closed;
* the simulator exits when the driver closes the device, exits, or dies (it watches the socket).

Example::

    with VerilatorDevice(load_hw_config("tiny"), 1 << 20) as dev:
        dev.check_id()
        dev.write(0, image)
        dev.write_csr("program", program)
        dev.run()
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref

from hw.csr_map import CSR_BY_NAME, STATUS_ERROR_SHIFT
from hw.isa import ErrorCode

from .device import Device, DeviceError

__all__ = ["MIN_MODEL_BYTES", "TOPLEVEL", "VerilatorDevice", "launch_simulator", "log_tail", "simulator_command",
           "stop_process"]

#: Verilog name of the co-simulation top level (and of its build cache directories).
TOPLEVEL = "trillium_cosim"
#: The DRAM model is at least this large, and a power of two, so that devices of similar sizes share one build
#: (the size is part of the Verilog; the array costs only host memory).
MIN_MODEL_BYTES = 1 << 24
#: Clock period of the simulation in ns (only the cycle count matters).
PERIOD_NS = 10
_TESTBENCH = "tb_device_server"
#: Seconds a request other than ``run`` may take (plus a little per byte moved).
_REQUEST_S = 120.0
_LOG_LINES = 40


def _default_top(hw):
    from hw.top import TrilliumTop

    return TrilliumTop(hw)


def _model_bytes(dram_bytes):
    n = max(int(dram_bytes), MIN_MODEL_BYTES)
    return 1 << (n - 1).bit_length()


def log_tail(path, lines=_LOG_LINES):
    """The last ``lines`` lines of a simulator log (or a note that there is none)."""
    try:
        with open(path, errors="replace") as f:
            text = f.read().splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


def _format_csrs(csrs):
    return ", ".join(f"{k}={v:#x}" for k, v in csrs.items())



def stop_process(proc, grace_s):
    """Wait ``grace_s`` for a simulator process to exit on its own, then terminate it, then kill it."""
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

class _Captured(Exception):
    def __init__(self, cmds, env):
        super().__init__("captured")
        self.cmds, self.env = cmds, env


def simulator_command(build, run_dir, extra_env, waves=False, *, testbench=_TESTBENCH):
    """The command and environment cocotb's runner would use to run ``testbench`` (a module of
    ``sim/testbenches``) on ``build``, without running it."""
    from sim.runner import _Verilator
    from sim.testbenches import TESTBENCH_DIR

    class Launcher(_Verilator):
        def _execute(self, cmds, cwd):
            raise _Captured([list(c) for c in cmds], dict(self.env))

    runner = Launcher(python_paths=[TESTBENCH_DIR])
    try:
        runner.test(test_module=testbench, hdl_toplevel=build.toplevel, hdl_toplevel_lang="verilog",
                    build_dir=build.build_dir, test_dir=run_dir, results_xml=str(run_dir / "results.xml"),
                    seed=1, extra_env=extra_env, waves=waves)
    except _Captured as c:
        if len(c.cmds) != 1:
            raise DeviceError(f"unexpected simulator command {c.cmds!r}") from None
        return c.cmds[0], c.env
    raise DeviceError("cocotb's runner did not produce a simulator command")


def launch_simulator(cmd, env, run_dir, log_path, listener, start_timeout_s):
    """Start a simulator server (its own session, output to ``log_path``) and wait for it to connect to
    ``listener``: ``(proc, sock, None)``, or ``(proc, None, reason)`` if it exited or did not connect
    within ``start_timeout_s`` (the caller stops it and reports ``reason``)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + start_timeout_s
    listener.settimeout(0.2)
    while True:
        try:
            sock, _ = listener.accept()
            return proc, sock, None
        except TimeoutError:
            pass
        if proc.poll() is not None:
            return proc, None, f"the simulator exited with status {proc.returncode} before connecting"
        if time.monotonic() > deadline:
            return proc, None, f"the simulator did not connect within {start_timeout_s:g} s"


def _with_progress(what, fn, progress):
    """Run ``fn()`` in a thread; after a second, show a spinner with the elapsed time on stderr."""
    result, error = [], []

    def target():
        try:
            result.append(fn())
        except BaseException as e:  # noqa: BLE001 -- re-raised in the caller's thread
            error.append(e)

    thread = threading.Thread(target=target, name="verilator-build", daemon=True)
    thread.start()
    thread.join(1.0)
    if thread.is_alive() and progress:
        if sys.stderr.isatty():
            from tqdm import tqdm

            with tqdm(desc=what, bar_format="{desc}: {elapsed}", file=sys.stderr, leave=False) as bar:
                while thread.is_alive():
                    thread.join(0.5)
                    bar.refresh()
        else:
            start = time.monotonic() - 1.0
            print(f"{what} ...", file=sys.stderr, flush=True)
            thread.join()
            print(f"{what}: done in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    thread.join()
    if error:
        raise error[0]
    return result[0]


class _Process:
    """The simulator process and its socket; closed by :meth:`shutdown` (also from a finaliser)."""

    def __init__(self):
        self.proc = self.sock = self.listener = None
        self.tmpdir = None

    def shutdown(self, grace_s=10.0):
        proc, sock = self.proc, self.sock
        if sock is not None and proc is not None and proc.poll() is None:
            try:
                from sim.cosim_top import recv_message, send_message

                sock.settimeout(grace_s)
                send_message(sock, {"op": "quit"})
                recv_message(sock)
            except Exception:  # noqa: BLE001, S110 -- best effort; the process is stopped below anyway
                pass
        for s in (sock, self.listener):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self.sock = self.listener = None
        if proc is not None:
            stop_process(proc, grace_s)
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


class VerilatorDevice(Device):
    """The RTL in Verilator as a device (see the module docstring).

    Parameters
    ----------
    hw : hw.config.HwConfig
    dram_bytes : int
        DRAM the driver may address. The model behind it is a power of two of at least 16 MiB.
    waves : bool
        Record an FST trace (VCD where FST cannot be built) of the whole session; :attr:`waves_path`.
        A traced model is a separate, slower build.
    timeout_cycles : int or None
        Cycle budget of a run (default: 1 000 000 plus 64 per DRAM bus word).
    top_factory : callable or None
        ``top_factory(hw)`` returns the top component (default ``hw.top.TrilliumTop``).
    progress : bool
        Show the elapsed time on stderr while Verilator builds.
    start_timeout_s : float
        Seconds the simulator may take to start and connect.

    Attributes
    ----------
    build : sim.build.SimBuild
    run_dir : pathlib.Path
        The simulator's working directory (log ``sim.log``, trace).
    build_seconds, start_seconds : float
        Wall time of the build (or cache look-up) and of the simulator's start.
    last_run : dict or None
        ``cycles`` (start to ``irq``, from simulated time), ``wall_s`` and ``timed_out`` of the last run.
    """

    name = "verilator"

    def __init__(self, hw, dram_bytes, *, waves=False, timeout_cycles=None, top_factory=None, progress=True,
                 start_timeout_s=120.0):
        super().__init__(hw, dram_bytes)
        self.model_bytes = _model_bytes(dram_bytes)
        words = -(-dram_bytes // hw.dram.bus_bytes)
        self.timeout_cycles = int(timeout_cycles) if timeout_cycles is not None else 1_000_000 + 64 * words
        if self.timeout_cycles <= 0:
            raise ValueError(f"timeout_cycles must be positive, got {timeout_cycles}")
        self.top_factory = top_factory or _default_top
        self.waves = waves
        self.last_run = None
        self.violation = 0
        self._written = {}          # CSRs the driver wrote, restored after a reset
        self._p = _Process()
        self._finalizer = weakref.finalize(self, self._p.shutdown)
        self._closed = False
        start = time.monotonic()
        self.build = _with_progress(f"verilator: building {TOPLEVEL} for '{hw.name}'", self._build, progress)
        self.build_seconds = time.monotonic() - start
        start = time.monotonic()
        self._start(start_timeout_s)
        self.start_seconds = time.monotonic() - start

    # -- build and process ------------------------------------------------------------------------------

    def _build(self):
        from sim.cosim_top import CosimTop, build_cosim

        def make():
            top = self.top_factory(self.hw)
            return CosimTop(top, self.model_bytes, self.hw.dram.latency_cycles,
                            self.hw.dram.bandwidth_bytes_per_cycle)

        if self.top_factory is _default_top:
            # The default top's Verilog depends only on the config, the DRAM model and the sources: it is
            # cached, and nothing is elaborated (or even constructed) when it is.
            self._data_bits = self.hw.dram.bus_bits
            self._depth = -(-self.model_bytes // (self._data_bits // 8))
            key = json.dumps([self.hw.to_dict(), self.model_bytes], sort_keys=True)
            return build_cosim(make, TOPLEVEL, waves=self.waves, verilog_key=key)
        cosim = make()
        self._depth, self._data_bits = cosim.depth, cosim.data_bits
        return build_cosim(cosim, TOPLEVEL, waves=self.waves)

    def _start(self, start_timeout_s):
        from sim.runner import _new_run_dir

        p = self._p
        self.run_dir = _new_run_dir(self.build).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.run_dir / "sim.log"
        # Unix socket paths are limited to ~100 bytes: keep it in a short temporary directory.
        p.tmpdir = tempfile.mkdtemp(prefix="trillium-dev-")
        path = os.path.join(p.tmpdir, "sock")
        p.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        p.listener.bind(path)
        p.listener.listen(1)
        params = {"depth": self._depth, "data_bits": self._data_bits, "period_ns": PERIOD_NS, "reset_cycles": 4}
        import json

        env_extra = {"TRILLIUM_DEVICE_SOCKET": path, "TRILLIUM_DEVICE_PARAMS": json.dumps(params)}
        trace = self.build.waves is not None
        cmd, env = simulator_command(self.build, self.run_dir, env_extra, trace)
        deadline = time.monotonic() + start_timeout_s
        p.proc, p.sock, why = launch_simulator(cmd, env, self.run_dir, self.log_path, p.listener, start_timeout_s)
        if why is not None:
            self._fail(why, kill=True)          # (kill only if it is still running)
        p.listener.close()
        p.listener = None
        p.sock.settimeout(None)
        hello, _ = self._receive(deadline)
        if hello.get("op") != "hello":
            self._fail(f"unexpected greeting {hello!r}", kill=True)
        self.sim_pid = hello["pid"]

    @property
    def pid(self):
        """Process ID of the simulator (``None`` once closed)."""
        proc = self._p.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def waves_path(self):
        """The trace file (``None`` without ``waves``); complete once the device is closed."""
        if self.build.waves is None:
            return None
        return self.run_dir / ("dump.fst" if self.build.waves == "fst" else "dump.vcd")

    def close(self):
        """Stop the simulator (idempotent)."""
        self._closed = True
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fail(self, reason, *, kill=False):
        """Close the device and raise DeviceError with the simulator's log tail."""
        proc = self._p.proc
        if proc is not None and kill and proc.poll() is None:
            proc.kill()
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.close()
        raise DeviceError(f"verilator device: {reason}; simulator log {self.log_path}:\n{log_tail(self.log_path)}")

    # -- requests ----------------------------------------------------------------------------------------

    def _receive(self, deadline):
        from sim.cosim_top import ProtocolClosed, recv_message

        p = self._p
        while True:
            ready, _, _ = select.select([p.sock], [], [], 0.5)
            if ready:
                break
            if p.proc.poll() is not None:
                self._fail(f"the simulator exited with status {p.proc.returncode}")
            if deadline is not None and time.monotonic() > deadline:
                self._fail("the simulator did not answer in time (stopped it)", kill=True)
        try:
            p.sock.settimeout(max(30.0, (deadline - time.monotonic()) if deadline else 30.0))
            return recv_message(p.sock)
        except (ProtocolClosed, OSError) as e:
            self._fail(f"lost the connection to the simulator ({e})")
        finally:
            if p.sock is not None:
                p.sock.settimeout(None)

    def _request(self, header, payload=b"", *, seconds=None):
        from sim.cosim_top import send_message

        if self._closed or self._p.sock is None:
            raise DeviceError("the verilator device is closed")
        if seconds is None:
            seconds = _REQUEST_S + (len(payload) + int(header.get("n", 0))) / 2000
        deadline = None if seconds == float("inf") else time.monotonic() + seconds
        try:
            send_message(self._p.sock, header, payload)
            reply, data = self._receive(deadline)
        except DeviceError:
            raise
        except OSError as e:
            self._fail(f"cannot send to the simulator ({e})")
        except BaseException:
            # Interrupted (Ctrl-C) with a reply outstanding: the conversation is out of step, so stop the
            # simulator rather than read a stale reply later.
            if self._p.proc is not None and self._p.proc.poll() is None:
                self._p.proc.kill()
            self.close()
            raise
        self.violation = reply.get("violation", 0)
        if not reply.get("ok"):
            raise DeviceError(f"verilator device: {header.get('op')} failed in the simulator: {reply.get('error')}")
        return reply, data

    # -- the device API ------------------------------------------------------------------------------------

    def write(self, addr, data):
        data = bytes(data)
        self._check_range(addr, len(data))
        self._request({"op": "write", "addr": addr}, data)

    def read(self, addr, n):
        self._check_range(addr, n)
        _, data = self._request({"op": "read", "addr": addr, "n": n})
        return data

    def write_csr(self, name, value):
        super().write_csr(name, value)
        if CSR_BY_NAME[name].access == "rw":
            self._written[name] = value
        self._request({"op": "csr_write", "offset": CSR_BY_NAME[name].offset, "value": value})

    def _read_csrs(self, names):
        reply, _ = self._request({"op": "csr_read", "offsets": [CSR_BY_NAME[n].offset for n in names]})
        return dict(zip(names, reply["values"]))

    def read_csr(self, name):
        if name not in CSR_BY_NAME:
            raise DeviceError(f"no CSR named {name!r}")
        return self._read_csrs([name])[name]

    def csr_state(self):
        return self._read_csrs([c for c in CSR_BY_NAME if CSR_BY_NAME[c].access != "w"])

    def reset(self):
        """Reset the design (DRAM keeps its contents) and write back the CSRs the driver had written."""
        self._request({"op": "reset"})
        for name, value in self._written.items():
            self._request({"op": "csr_write", "offset": CSR_BY_NAME[name].offset, "value": value})

    def run(self, timeout_s=None, *, max_cycles=None):
        """Start the program and wait for ``irq``: :class:`DeviceError` on an error status (with its
        ``ErrorCode``, as the ``isa`` device), after ``max_cycles`` (default :attr:`timeout_cycles`) or
        ``timeout_s`` seconds of wall time."""
        budget = self.timeout_cycles if max_cycles is None else int(max_cycles)
        seconds = float("inf") if timeout_s is None else timeout_s + 60.0
        reply, _ = self._request({"op": "run", "max_cycles": budget, "wall_s": timeout_s}, seconds=seconds)
        self.last_run = {k: reply[k] for k in ("cycles", "wall_s", "timed_out")}
        if reply["timed_out"]:
            state = self.csr_state()
            self.reset()
            limit = (f"{budget} cycles" if reply["timed_out"] == "cycles"
                     else f"{timeout_s:g} s of wall time ({reply['cycles']} cycles)")
            raise DeviceError(f"run did not finish within {limit}; last CSR state: {_format_csrs(state)} "
                              f"(the design was reset; DRAM is kept)", csrs=state)
        state = self.csr_state()
        if self.violation:
            raise DeviceError(f"the DRAM model saw an AXI protocol violation during the run; CSR state: "
                              f"{_format_csrs(state)}", csrs=state)
        err = (state["status"] >> STATUS_ERROR_SHIFT) & 0xF
        if err != ErrorCode.NONE.value:
            try:
                code = ErrorCode(err)
                what = code.name
            except ValueError:
                code, what = None, f"unknown error code {err}"
            raise DeviceError(f"run failed: {what} at pc {state['error_pc']:#x} after {reply['cycles']} cycles",
                              code=code, csrs=state)
