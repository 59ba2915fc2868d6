"""The ``board`` device: the accelerator on an FPGA board, reached over a serial link (the ULX3S's USB-UART).

:class:`BoardDevice` speaks the protocol of ``firmware/board_protocol.py`` to the link gateware
(``hw/board/link.py``) and offers the driver's device API (``firmware/device.py``): ``allocate``,
``write``/``read`` (DRAM, cut into requests of at most the board's ``max_payload`` bytes),
``write_csr``/``read_csr``, ``check_id`` and ``run``.

Failures never hang the driver:

* every request waits at most ``timeout_s`` (plus the time its bytes take on the wire) for its answer;
* a request that gets no answer, a damaged answer, or an answer ``BAD_CRC``, ``BAD_FRAME`` or
  ``TIMEOUT`` (the board saw a damaged request) is sent again, up to ``retries`` times, with the same
  sequence number: the board does not execute a write twice, so a retry after a lost answer is safe;
* after the last retry, or on ``BUS_ERROR`` (not retried: the address is wrong, not the link), a
  :class:`~firmware.device.DeviceError` with a one-line message says what failed and why;
* ``run`` starts the program (``control.start``) and polls ``status`` until ``done``, for at most its
  ``timeout_s`` (default :attr:`BoardDevice.run_timeout_s`).

Example::

    with BoardDevice(load_hw_config("ecp5"), 32 << 20, port="/dev/ttyUSB0", baud=1_000_000) as dev:
        dev.check_id()
        dev.write(0, image)
        dev.write_csr("program", program)
        dev.run(timeout_s=60)

pyserial is imported only when no ``transport`` is given. A ``transport`` is any object with
``read(n) -> bytes`` (at most ``n`` bytes, possibly none; it should not block for long) and
``write(data)``; ``reset_input_buffer()`` and ``close()`` are used when it has them.
"""

from __future__ import annotations

import time

from hw.csr_map import CSR_BY_NAME, STATUS_DONE, STATUS_ERROR_SHIFT
from hw.isa import ErrorCode

from .board_protocol import (
    CSR_BYTES,
    MAX_PAYLOAD,
    RETRYABLE,
    VERSION,
    Command,
    PingInfo,
    ProtocolError,
    ResponseParser,
    Status,
    encode_request,
    response_bytes,
)
from .device import Device, DeviceError

__all__ = ["DEFAULT_BAUD", "BoardDevice", "make_board_device"]

#: The default line rate: exact at 50 MHz (50 cycles per bit) and within the FT231X's 3 Mbaud.
DEFAULT_BAUD = 1_000_000
#: Seconds a serial ``read`` may block: the granularity of the timeouts.
_READ_SLICE_S = 0.02


def _open_serial(port, baud):
    try:
        import serial  # pyserial, only needed for a real board
    except ImportError:
        raise DeviceError("the board device needs pyserial (pip install pyserial), or a transport") from None
    try:
        return serial.Serial(port, baudrate=baud, bytesize=8, parity="N", stopbits=1, timeout=_READ_SLICE_S,
                             write_timeout=10.0)
    except (serial.SerialException, ValueError, OSError) as e:
        raise DeviceError(f"board: cannot open serial port {port!r} at {baud} baud: {e}") from None


class BoardDevice(Device):
    """The accelerator on a board behind the link protocol (see the module docstring).

    Parameters
    ----------
    hw : hw.config.HwConfig
    dram_bytes : int
        DRAM the driver may address (the board's SDRAM, e.g. 32 MiB on the ULX3S).
    port : str or None
        Serial port (``/dev/ttyUSB0``, ``COM3``); needed unless ``transport`` is given.
    baud : int
        Line rate; the bitstream's UART divisor must match it.
    timeout_s : float
        Seconds to wait for an answer, beyond the time its bytes take on the wire.
    retries : int
        Times a request is sent again after a lost or damaged exchange.
    transport : object or None
        Instead of a serial port: ``read(n)``, ``write(data)`` (tests, other links).
    run_timeout_s : float
        ``run``'s limit when it is called without one.
    poll_s : float
        Pause between two ``status`` reads while a run is going.

    Attributes
    ----------
    info : firmware.board_protocol.PingInfo
        The link's version, DRAM bus bytes and ``max_payload``, from the PING at connection.
    chunk_bytes : int
        DRAM bytes per request (the board's ``max_payload``).
    stats : dict
        ``requests``, ``retries`` and ``dropped`` (damaged answers) so far.
    """

    name = "board"

    def __init__(self, hw, dram_bytes, *, port=None, baud=DEFAULT_BAUD, timeout_s=0.5, retries=3, transport=None,
                 run_timeout_s=600.0, poll_s=0.001):
        super().__init__(hw, dram_bytes)
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
        for what, v in (("timeout_s", timeout_s), ("run_timeout_s", run_timeout_s), ("baud", baud)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{what} must be a positive number, got {v!r}")
        self.timeout_s, self.retries, self.baud = float(timeout_s), retries, baud
        self.run_timeout_s, self.poll_s = float(run_timeout_s), float(poll_s)
        self.port = port
        self._own_transport = transport is None
        if transport is None:
            if port is None:
                raise DeviceError("board: no serial port given (port='/dev/ttyUSB0', or --device-option port=...)")
            transport = _open_serial(port, baud)
        self.transport = transport
        self.where = port or type(transport).__name__
        self._parser = ResponseParser()
        self._seq = 0
        self.stats = {"requests": 0, "retries": 0, "dropped": 0}
        self.last_run = None
        try:
            rsp = self._transact(Command.PING, 0, 0, what="PING")
            self.info = PingInfo.decode(rsp.payload)
        except ProtocolError as e:
            self.close()
            raise DeviceError(f"board at {self.where}: {e}") from None
        except DeviceError:
            self.close()
            raise
        if self.info.version != VERSION:
            self.close()
            raise DeviceError(f"board at {self.where} speaks link protocol version {self.info.version}, "
                              f"this driver {VERSION}: rebuild the bitstream or update the driver")
        if not 1 <= self.info.max_payload <= MAX_PAYLOAD:
            self.close()
            raise DeviceError(f"board at {self.where} announces max_payload {self.info.max_payload}, "
                              f"outside [1, {MAX_PAYLOAD}]")
        self._parser.max_payload = self.info.max_payload
        self.chunk_bytes = self.info.max_payload

    # -- the link ------------------------------------------------------------------------------------------

    def close(self):
        """Close the serial port (if this device opened it)."""
        t, self.transport = getattr(self, "transport", None), None
        if t is not None and self._own_transport and hasattr(t, "close"):
            t.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _wire_s(self, nbytes):
        return 10.0 * nbytes / self.baud

    def _exchange(self, frame, cmd, seq, length, deadline):
        """Send ``frame``; return its answer (same command and sequence number), or None at ``deadline``.

        Answers to other requests (a late answer to an earlier attempt) are skipped; damaged frames are
        dropped by the parser, which finds the next frame by itself.
        """
        self.transport.write(frame)
        want = response_bytes(cmd, Status.OK, length)
        while True:
            data = self.transport.read(want)
            if data:
                dropped = self._parser.dropped
                got = self._parser.feed(data)
                self.stats["dropped"] += self._parser.dropped - dropped
                for rsp in got:
                    if rsp.cmd == cmd and rsp.seq == seq:
                        self._parser.clear()
                        return rsp
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not data:
                time.sleep(min(0.001, remaining))

    def _transact(self, cmd, addr, length, payload=b"", *, what):
        """One request, with retries; the OK response or :class:`DeviceError`."""
        if self.transport is None:
            raise DeviceError(f"board at {self.where}: the device is closed")
        self._seq = (self._seq + 1) & 0xFF
        seq = self._seq
        frame = encode_request(cmd, seq, addr, length, payload)
        wait = self.timeout_s + self._wire_s(len(frame) + response_bytes(cmd, Status.OK, length))
        reason = None
        self.stats["requests"] += 1
        for attempt in range(self.retries + 1):
            # Whatever is still in the input (the rest of a damaged or late answer) is of no use now.
            reset = getattr(self.transport, "reset_input_buffer", None)
            if reset is not None:
                reset()
            self._parser.clear()
            if attempt:
                self.stats["retries"] += 1
            rsp = self._exchange(frame, cmd, seq, length, time.monotonic() + wait)
            if rsp is None:
                reason = f"no answer within {wait:.3g} s"
                continue
            if rsp.status == Status.OK:
                return rsp
            if rsp.status in RETRYABLE:
                reason = f"the board answered {rsp.status.name}"
                continue
            raise DeviceError(f"board at {self.where}: {what} failed: {rsp.status.name} (the bus answered with "
                              f"an error: address not backed by memory or a register?)")
        raise DeviceError(f"board at {self.where}: {what} failed after {self.retries + 1} attempts, last: "
                          f"{reason} (check the cable, the port, the baud rate ({self.baud}) and the bitstream)")

    # -- the device API ------------------------------------------------------------------------------------

    def write(self, addr, data):
        data = bytes(data)
        self._check_range(addr, len(data))
        for off in range(0, len(data), self.chunk_bytes):
            chunk = data[off:off + self.chunk_bytes]
            self._transact(Command.DRAM_WRITE, addr + off, len(chunk), chunk,
                           what=f"DRAM write of {len(chunk)} bytes at {addr + off:#x}")

    def read(self, addr, n):
        self._check_range(addr, n)
        out = bytearray()
        for off in range(0, n, self.chunk_bytes):
            k = min(self.chunk_bytes, n - off)
            rsp = self._transact(Command.DRAM_READ, addr + off, k, what=f"DRAM read of {k} bytes at {addr + off:#x}")
            if len(rsp.payload) != k:
                raise DeviceError(f"board at {self.where}: DRAM read at {addr + off:#x} returned "
                                  f"{len(rsp.payload)} bytes, not {k}")
            out += rsp.payload
        return bytes(out)

    def write_csr(self, name, value):
        super().write_csr(name, value)
        off = CSR_BY_NAME[name].offset
        self._transact(Command.CSR_WRITE, off, CSR_BYTES, int(value).to_bytes(4, "little"),
                       what=f"CSR write of {name} (offset {off:#x})")

    def read_csr(self, name):
        csr = CSR_BY_NAME.get(name)
        if csr is None:
            raise DeviceError(f"no CSR named {name!r}")
        rsp = self._transact(Command.CSR_READ, csr.offset, CSR_BYTES,
                             what=f"CSR read of {name} (offset {csr.offset:#x})")
        if len(rsp.payload) != CSR_BYTES:
            raise DeviceError(f"board at {self.where}: CSR read of {name} returned {len(rsp.payload)} bytes")
        return int.from_bytes(rsp.payload, "little")

    def csr_state(self):
        return {c: self.read_csr(c) for c in CSR_BY_NAME if CSR_BY_NAME[c].access != "w"}

    def run(self, timeout_s=None):
        """Start the program and poll ``status`` until ``done``: :class:`DeviceError` on an error status
        (with its ``ErrorCode``) or after ``timeout_s`` seconds (default :attr:`run_timeout_s`)."""
        limit = self.run_timeout_s if timeout_s is None else float(timeout_s)
        start = time.monotonic()
        self.write_csr("control", 1)
        polls = 0
        while True:
            status = self.read_csr("status")
            polls += 1
            if status & STATUS_DONE:
                break
            if time.monotonic() - start > limit:
                state = self.csr_state()
                raise DeviceError(f"board at {self.where}: run did not finish within {limit:g} s; CSR state: "
                                  + ", ".join(f"{k}={v:#x}" for k, v in state.items()), csrs=state)
            if self.poll_s:
                time.sleep(self.poll_s)
        self.last_run = {"wall_s": time.monotonic() - start, "polls": polls}
        err = (status >> STATUS_ERROR_SHIFT) & 0xF
        if err != ErrorCode.NONE.value:
            state = self.csr_state()
            try:
                code = ErrorCode(err)
                what = code.name
            except ValueError:
                code, what = None, f"unknown error code {err}"
            raise DeviceError(f"run failed: {what} at pc {state['error_pc']:#x} after {state['run_cycles']} cycles",
                              code=code, csrs=state)


def make_board_device(hw, dram_bytes, **options):
    """The ``board`` device (for ``firmware.device.DEVICES``): ``options`` are :class:`BoardDevice`'s
    keyword arguments (``port``, ``baud``, ``timeout_s``, ``retries``, ``transport``, ...)."""
    return BoardDevice(hw, dram_bytes, **options)
