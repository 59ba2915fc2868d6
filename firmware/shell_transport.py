"""A byte transport to the board shell simulated in Verilator: what :class:`firmware.board_device.BoardDevice`
uses instead of a serial port to test the whole board path without a board.

:class:`SimulatedUart` builds (or takes from the cache) the Verilator model of ``sim.shell_top.ShellSimTop``
(the shell: UART link, accelerator, arbiters, SDRAM controller, with a protocol-checking SDRAM model on its
pins), starts it as a long-lived cocotb process running ``sim/testbenches/tb_shell_server.py`` and moves
bytes to and from the shell's UART pins over a Unix socket (protocol in ``sim/shell_top.py``). It has the
transport interface of ``BoardDevice``: ``read(n)`` (at most ``n`` bytes, waiting at most ``read_timeout_s``
for the first), ``write(data)``, ``reset_input_buffer()`` and ``close()``::

    uart = SimulatedUart(load_hw_config("tiny"))
    dev = BoardDevice(hw, 1 << 20, transport=uart, baud=uart.nominal_baud, timeout_s=5.0)
    dev.check_id()
    uart.status()["violation"]      # the SDRAM model's protocol check: 0

For tests of the link's error handling, :meth:`damage_write` and :meth:`damage_read` flip bits of a byte of
the next bytes written or read, as a noisy cable would.
"""

from __future__ import annotations

import json
import os
import select
import socket
import tempfile
import time
import weakref

from .device import DeviceError
from .verilator_device import launch_simulator, log_tail, simulator_command, stop_process

__all__ = ["SimulatedUart"]

_TESTBENCH = "tb_shell_server"


class SimulatedUart:
    """The simulated shell's UART as a byte transport (see the module docstring).

    Parameters
    ----------
    hw : hw.config.HwConfig
        The accelerator in the shell.
    divisor : int
        Clock cycles per UART bit in the simulation.
    model_bytes : int
        Bytes of SDRAM modelled; the host must stay below.
    read_timeout_s : float
        The longest ``read`` waits for its first byte.
    start_timeout_s : float
        Seconds the simulator may take to start and connect.

    Attributes
    ----------
    build : sim.build.SimBuild
    build_seconds, start_seconds : float
    nominal_baud : float
        The simulated line rate (``50 MHz / divisor``); ``BoardDevice``'s wire-time allowance from it is
        negligible, so give it a ``timeout_s`` that covers the simulator's speed.
    log_path : pathlib.Path
        The simulator's log.
    """

    def __init__(self, hw, *, divisor=None, model_bytes=None, read_timeout_s=0.02, start_timeout_s=120.0):
        from sim.shell_top import SIM_CLK_HZ, SIM_DIVISOR, SIM_MODEL_BYTES, build_shell_sim

        self.hw = hw
        self.divisor = SIM_DIVISOR if divisor is None else int(divisor)
        self.model_bytes = SIM_MODEL_BYTES if model_bytes is None else int(model_bytes)
        self.nominal_baud = SIM_CLK_HZ / self.divisor
        self.read_timeout_s = float(read_timeout_s)
        self._rx = bytearray()
        self._status = None
        self._damage_w = []          # (offset in the next writes, xor mask)
        self._damage_r = []          # (offset in the next bytes read, xor mask)
        self._w_count = self._r_count = 0
        self.proc = self.sock = None
        self._tmpdir = None
        self.bytes_written = self.bytes_read = 0
        start = time.monotonic()
        self.build = build_shell_sim(hw, divisor=self.divisor, model_bytes=self.model_bytes)
        self.build_seconds = time.monotonic() - start
        start = time.monotonic()
        self._finalizer = weakref.finalize(self, SimulatedUart._shutdown, self.__dict__)
        self._start(start_timeout_s)
        self.start_seconds = time.monotonic() - start

    # -- process --------------------------------------------------------------------------------------------

    def _start(self, start_timeout_s):
        from sim.runner import _new_run_dir
        from sim.shell_top import SIM_CLK_HZ

        self.run_dir = _new_run_dir(self.build).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.run_dir / "sim.log"
        self._tmpdir = tempfile.mkdtemp(prefix="trillium-shell-")
        path = os.path.join(self._tmpdir, "sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            listener.listen(1)
            params = {"period_ns": round(1e9 / SIM_CLK_HZ), "divisor": self.divisor, "reset_cycles": 4}
            env_extra = {"TRILLIUM_SHELL_SOCKET": path, "TRILLIUM_SHELL_PARAMS": json.dumps(params)}
            cmd, env = simulator_command(self.build, self.run_dir, env_extra, testbench=_TESTBENCH)
            deadline = time.monotonic() + start_timeout_s
            self.proc, self.sock, why = launch_simulator(cmd, env, self.run_dir, self.log_path, listener,
                                                         start_timeout_s)
            if why is not None:
                self._fail(why)
        finally:
            listener.close()
        self.sock.settimeout(None)
        hello = self._next_message(deadline)
        if hello is None or hello[0].get("op") != "hello":
            self._fail(f"unexpected greeting {hello!r}")
        self.sim_pid = hello[0]["pid"]

    @staticmethod
    def _shutdown(state):
        from sim.cosim_top import send_message

        sock, proc = state.get("sock"), state.get("proc")
        if sock is not None:
            try:
                if proc is not None and proc.poll() is None:
                    send_message(sock, {"op": "quit"})
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass
            state["sock"] = None
        if proc is not None:
            stop_process(proc, 10)
        tmp = state.get("_tmpdir")
        if tmp is not None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            state["_tmpdir"] = None

    def close(self):
        """Stop the simulator (idempotent)."""
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fail(self, reason):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.close()
        raise DeviceError(f"simulated shell: {reason}; simulator log {self.log_path}:\n{log_tail(self.log_path, 30)}")

    # -- messages -----------------------------------------------------------------------------------------

    def _next_message(self, deadline):
        """One message from the simulator, or None if none came before ``deadline`` (monotonic seconds)."""
        from sim.cosim_top import ProtocolClosed, recv_message

        if self.sock is None:
            raise DeviceError("simulated shell: closed")
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self.sock], [], [], min(wait, 0.5) if wait is not None else 0.5)
            if readable:
                break
            if self.proc.poll() is not None:
                self._fail(f"the simulator exited with status {self.proc.returncode}")
            if deadline is not None and time.monotonic() >= deadline:
                return None
        try:
            return recv_message(self.sock)
        except (ProtocolClosed, OSError) as e:
            self._fail(f"lost the connection to the simulator ({e})")

    def _handle(self, header, payload):
        op = header.get("op")
        if op == "tx":
            data = bytearray(payload)
            for i in range(len(data)):
                pos = self._r_count + i
                for k, (at, mask) in enumerate(self._damage_r):
                    if at == pos:
                        data[i] ^= mask
            self._r_count += len(data)
            self._damage_r = [(at, mask) for at, mask in self._damage_r if at >= self._r_count]
            self.bytes_read += len(data)
            self._rx += data
        elif op == "status":
            self._status = header
        elif op == "error":
            raise DeviceError(f"simulated shell: {header.get('error')}")

    def _pump(self, deadline):
        """Handle messages until one arrives before ``deadline``, then whatever else is already there."""
        got = self._next_message(deadline)
        while got is not None:
            self._handle(*got)
            got = self._next_message(time.monotonic())

    # -- the transport interface ----------------------------------------------------------------------------

    def write(self, data):
        from sim.cosim_top import send_message

        data = bytearray(data)
        for at, mask in self._damage_w:
            if self._w_count <= at < self._w_count + len(data):
                data[at - self._w_count] ^= mask
        self._w_count += len(data)
        self._damage_w = [(at, mask) for at, mask in self._damage_w if at >= self._w_count]
        self.bytes_written += len(data)
        if self.sock is None:
            raise DeviceError("simulated shell: closed")
        try:
            send_message(self.sock, {"op": "rx"}, bytes(data))
        except OSError as e:
            self._fail(f"cannot send to the simulator ({e})")

    def read(self, n):
        """At most ``n`` bytes from the shell's ``tx``: what is there, else what arrives within
        ``read_timeout_s``."""
        if not self._rx:
            self._pump(time.monotonic() + self.read_timeout_s)
        else:
            self._pump(time.monotonic())
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out

    def reset_input_buffer(self):
        """Drop the bytes received and not read yet (as a serial port does)."""
        self._pump(time.monotonic())
        self._rx.clear()

    def status(self, timeout_s=60.0):
        """The simulation's state: ``violation`` (the SDRAM model's :class:`~hw.board.sdram_model.SdramViolation`
        code), ``sdram_initialized``, ``sdram_ready``, ``running``, ``irq``, ``link_busy``, ``cycles`` (simulated
        since start), ``tx_framing_errors``."""
        from sim.cosim_top import send_message

        self._status = None
        send_message(self.sock, {"op": "status"})
        deadline = time.monotonic() + timeout_s
        while self._status is None:
            got = self._next_message(deadline)
            if got is None:
                self._fail("no status answer")
            self._handle(*got)
        return dict(self._status)

    # -- fault injection ---------------------------------------------------------------------------------

    def damage_write(self, offset, mask=0x10):
        """XOR ``mask`` into byte ``offset`` of the bytes written from now on (0: the next byte written)."""
        self._damage_w.append((self._w_count + int(offset), int(mask) & 0xFF))

    def damage_read(self, offset, mask=0x10):
        """XOR ``mask`` into byte ``offset`` of the bytes received from now on."""
        self._damage_r.append((self._r_count + int(offset), int(mask) & 0xFF))
