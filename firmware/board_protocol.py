"""The board link protocol: CSR and DRAM access over a byte link (the ULX3S's USB-UART), defined once.

The host sends one **request** frame and waits for its **response** frame. The gateware
(``hw/board/link.py``) imports the constants below, so this module is the single definition of the
format; :class:`LinkModel` is the byte-exact reference of what the gateware answers, and
``firmware/board_device.py`` is the host side.

Request (host -> board), all multi-byte fields little-endian except the CRC:

=========  =====  ===========================================================================
offset     bytes  field
=========  =====  ===========================================================================
0          1      ``REQ_SYNC`` = 0xA5
1          1      command (:class:`Command`)
2          1      sequence number (0..255); a retry repeats it
3          4      address: a CSR byte offset, or a DRAM byte address
7          2      length: 4 for CSR commands, 1..``max_payload`` bytes for DRAM commands, 0 for PING
9          N      payload: N = length for ``CSR_WRITE`` and ``DRAM_WRITE``, else N = 0
9 + N      2      CRC-16/CCITT-FALSE of bytes 1 .. 8 + N (everything but the sync byte), big-endian
=========  =====  ===========================================================================

Response (board -> host):

=========  =====  ===========================================================================
offset     bytes  field
=========  =====  ===========================================================================
0          1      ``RSP_SYNC`` = 0x5A
1          1      the request's command (as received)
2          1      the request's sequence number (as received)
3          1      status (:class:`Status`)
4          2      payload length N: 8 for PING, 4 for ``CSR_READ``, the length for ``DRAM_READ``
                  (only with status ``OK``), else 0
6          N      payload: PING info (:data:`PING_MAGIC`, :data:`VERSION`, bus bytes, max payload
                  as u16), the CSR value (u32), or the DRAM bytes
6 + N      2      CRC-16/CCITT-FALSE of bytes 1 .. 5 + N, big-endian
=========  =====  ===========================================================================

The CRC is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no reflection, no final
XOR; ``crc16(b"123456789") == 0x29B1``). Sent big-endian, it makes the CRC of a whole good frame
(after the sync byte) zero, which is what the gateware checks. It detects every error of up to 3 bits
and every burst of up to 16 bits in frames of up to 4 KiB.

What the board does with a request (the gateware and :class:`LinkModel` alike):

* Bytes other than ``REQ_SYNC`` between frames are ignored.
* After the 8 header bytes the request is checked: an unknown command, a length that is wrong for the
  command or above the board's ``max_payload``, a misaligned CSR offset or a DRAM range beyond 2**32
  make it ``BAD_FRAME``. A bad CRC makes it ``BAD_CRC``. Both then **drain**: every byte is dropped
  until the line has been quiet for the board's timeout, then the error response goes out (one per
  bad frame, however much garbage followed), and the board looks for ``REQ_SYNC`` again.
* A frame that stops arriving for the timeout mid-way is answered with ``TIMEOUT``.
* A good request is executed: CSR accesses as AXI4-Lite transactions, DRAM accesses as AXI4 bursts.
  An AXI error response (SLVERR/DECERR), or a CSR offset beyond the CSR port's address space, gives
  ``BUS_ERROR`` (a failed write may have written part of its bytes).
* **Retries are idempotent**: the board remembers the command, sequence number, address and length of
  the last request it executed. A ``CSR_WRITE`` or ``DRAM_WRITE`` equal to it in all four is a retry
  whose response was lost: it is not executed again (a second ``control.start`` would restart a run)
  and is answered with the status of the first execution. Reads and PING are always executed. The
  host changes the sequence number for every new request, and starts a session with a PING, so a new
  request is never taken for a retry.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "REQ_SYNC", "RSP_SYNC", "VERSION", "PING_MAGIC", "PING_INFO_BYTES", "MAX_PAYLOAD", "REQ_HEADER_BYTES",
    "RSP_HEADER_BYTES", "CRC_BYTES", "CRC_POLY", "CRC_INIT", "CSR_BYTES", "ADDR_SPACE",
    "Command", "Status", "RETRYABLE", "crc16", "crc16_update",
    "ProtocolError", "TruncatedFrameError", "SyncError", "CrcError", "UnknownCommandError", "LengthError",
    "UnknownStatusError",
    "Request", "Response", "PingInfo", "encode_request", "decode_request", "encode_response", "decode_response",
    "request_payload_bytes", "response_payload_bytes", "request_bytes", "response_bytes", "check_request",
    "ResponseParser", "LinkModel",
]

#: First byte of a request frame.
REQ_SYNC = 0xA5
#: First byte of a response frame (distinct from ``REQ_SYNC``: an echoing link is not mistaken for a board).
RSP_SYNC = 0x5A
#: Protocol version, in the PING answer.
VERSION = 1
#: First four bytes of the PING answer.
PING_MAGIC = b"TRLK"
#: PING answer: magic (4), version (1), DRAM bus bytes (1), max payload (2, little-endian).
PING_INFO_BYTES = 8
#: The largest DRAM payload the format allows; a board's own limit (``max_payload``, in the PING
#: answer) may be smaller.
MAX_PAYLOAD = 4096
#: Sync, command, sequence, address (4), length (2).
REQ_HEADER_BYTES = 9
#: Sync, command, sequence, status, length (2).
RSP_HEADER_BYTES = 6
CRC_BYTES = 2
#: CRC-16/CCITT-FALSE.
CRC_POLY = 0x1021
CRC_INIT = 0xFFFF
#: CSR accesses move one 32-bit register.
CSR_BYTES = 4
#: Addresses are 32 bits.
ADDR_SPACE = 1 << 32


class Command(enum.IntEnum):
    """Request commands."""

    PING = 0x01         #: answer with the link's info (:class:`PingInfo`); no bus access
    CSR_READ = 0x02     #: read the 32-bit CSR at byte offset ``addr``
    CSR_WRITE = 0x03    #: write the 4-byte payload to the CSR at ``addr``
    DRAM_READ = 0x04    #: read ``length`` bytes of DRAM from ``addr``
    DRAM_WRITE = 0x05   #: write the payload to DRAM at ``addr``


class Status(enum.IntEnum):
    """Response status."""

    OK = 0x00
    BAD_CRC = 0x01      #: the request's CRC did not match (not executed)
    BAD_FRAME = 0x02    #: malformed request: unknown command, bad length or address (not executed)
    TIMEOUT = 0x03      #: the request stopped arriving mid-frame (not executed)
    BUS_ERROR = 0x04    #: the AXI slave answered SLVERR/DECERR, or the CSR offset is out of range


#: Statuses after which a request is sent again: the request was damaged on its way, not executed.
RETRYABLE = frozenset({Status.BAD_CRC, Status.BAD_FRAME, Status.TIMEOUT})


# -- CRC ------------------------------------------------------------------------------------------------

def _crc_table():
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ CRC_POLY) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16_update(crc, byte):
    """One byte into a CRC-16/CCITT-FALSE register."""
    return ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]


def crc16(data, crc=CRC_INIT):
    """CRC-16/CCITT-FALSE of ``data`` (``crc16(b"123456789") == 0x29B1``)."""
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[(crc >> 8) ^ b]
    return crc


# -- errors ---------------------------------------------------------------------------------------------

class ProtocolError(ValueError):
    """A frame that cannot be encoded or decoded."""


class TruncatedFrameError(ProtocolError):
    """Fewer bytes than the frame needs; ``needed`` is the frame's total size when known."""

    def __init__(self, message, needed=None):
        self.needed = needed
        super().__init__(message)


class SyncError(ProtocolError):
    """The first byte is not the frame's sync byte."""


class CrcError(ProtocolError):
    """The frame's CRC does not match its contents."""

    def __init__(self, message, expected, received):
        self.expected, self.received = expected, received
        super().__init__(message)


class UnknownCommandError(ProtocolError):
    """A command byte that is not a :class:`Command`."""


class UnknownStatusError(ProtocolError):
    """A status byte that is not a :class:`Status`."""


class LengthError(ProtocolError):
    """A length wrong for the command, beyond the payload limit, or an address range beyond 2**32."""


# -- frames ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    cmd: Command
    seq: int
    addr: int = 0
    length: int = 0
    payload: bytes = b""


@dataclass(frozen=True)
class Response:
    cmd: int            # as received by the board (it may be corrupt in an error answer)
    seq: int
    status: Status
    payload: bytes = b""


@dataclass(frozen=True)
class PingInfo:
    version: int
    bus_bytes: int
    max_payload: int

    def encode(self):
        return PING_MAGIC + bytes([self.version, self.bus_bytes]) + self.max_payload.to_bytes(2, "little")

    @classmethod
    def decode(cls, payload):
        if len(payload) != PING_INFO_BYTES or payload[:4] != PING_MAGIC:
            raise ProtocolError(f"not a Trillium link PING answer: {bytes(payload)!r}")
        return cls(payload[4], payload[5], int.from_bytes(payload[6:8], "little"))


def request_payload_bytes(cmd, length):
    """Payload bytes that follow a request header."""
    return length if cmd in (Command.CSR_WRITE, Command.DRAM_WRITE) else 0


def response_payload_bytes(cmd, status, length):
    """Payload bytes of the response to a request (``length`` is the request's)."""
    if status != Status.OK:
        return 0
    return {Command.PING: PING_INFO_BYTES, Command.CSR_READ: CSR_BYTES,
            Command.DRAM_READ: length}.get(cmd, 0)


def request_bytes(cmd, length):
    """Total size of a request frame."""
    return REQ_HEADER_BYTES + request_payload_bytes(cmd, length) + CRC_BYTES


def response_bytes(cmd, status, length):
    """Total size of the response frame to a request."""
    return RSP_HEADER_BYTES + response_payload_bytes(cmd, status, length) + CRC_BYTES


def _command(value):
    try:
        return Command(value)
    except ValueError:
        raise UnknownCommandError(f"unknown command byte {value:#04x}") from None


def check_request(cmd, addr, length, max_payload=MAX_PAYLOAD):
    """Raise :class:`LengthError` (or :class:`UnknownCommandError`) unless the header is well formed for a
    board with ``max_payload``: the rule the board applies before it answers ``BAD_FRAME``."""
    cmd = _command(cmd)
    if not 0 <= addr < ADDR_SPACE:
        raise LengthError(f"{cmd.name}: address {addr:#x} does not fit 32 bits")
    if cmd == Command.PING:
        if length != 0:
            raise LengthError(f"PING: length must be 0, got {length}")
    elif cmd in (Command.CSR_READ, Command.CSR_WRITE):
        if length != CSR_BYTES:
            raise LengthError(f"{cmd.name}: length must be {CSR_BYTES}, got {length}")
        if addr % CSR_BYTES:
            raise LengthError(f"{cmd.name}: CSR offset {addr:#x} is not a multiple of {CSR_BYTES}")
    else:
        if not 1 <= length <= max_payload:
            raise LengthError(f"{cmd.name}: length must be in [1, {max_payload}], got {length}")
        if addr + length > ADDR_SPACE:
            raise LengthError(f"{cmd.name}: {length} bytes at {addr:#x} run past the 32-bit address space")
    return cmd


def encode_request(cmd, seq, addr=0, length=None, payload=b""):
    """A request frame. ``length`` defaults to ``len(payload)`` for writes, and must be given for
    ``DRAM_READ`` (CSR commands: 4, PING: 0)."""
    cmd = _command(cmd)
    payload = bytes(payload)
    if length is None:
        length = {Command.PING: 0, Command.CSR_READ: CSR_BYTES, Command.CSR_WRITE: CSR_BYTES}.get(cmd, len(payload))
    if not 0 <= seq < 256:
        raise ProtocolError(f"sequence number must be in [0, 255], got {seq}")
    check_request(cmd, addr, length)
    if len(payload) != request_payload_bytes(cmd, length):
        raise LengthError(f"{cmd.name}: payload of {len(payload)} bytes, the length field says "
                          f"{request_payload_bytes(cmd, length)}")
    body = bytes([cmd, seq]) + addr.to_bytes(4, "little") + length.to_bytes(2, "little") + payload
    return bytes([REQ_SYNC]) + body + crc16(body).to_bytes(2, "big")


def encode_response(cmd, seq, status, payload=b""):
    """A response frame (the board's side; used by the model and the tests)."""
    payload = bytes(payload)
    if len(payload) >= 1 << 16:
        raise LengthError(f"response payload of {len(payload)} bytes does not fit the 16-bit length")
    body = bytes([cmd & 0xFF, seq & 0xFF, Status(status)]) + len(payload).to_bytes(2, "little") + payload
    return bytes([RSP_SYNC]) + body + crc16(body).to_bytes(2, "big")


def _check_crc(frame, what):
    got = int.from_bytes(frame[-2:], "big")
    want = crc16(frame[1:-2])
    if got != want:
        raise CrcError(f"{what}: bad CRC (frame says {got:#06x}, contents give {want:#06x})", want, got)


def decode_request(buf, max_payload=MAX_PAYLOAD):
    """The request at the start of ``buf``: ``(Request, bytes consumed)``.

    Raises :class:`SyncError`, :class:`TruncatedFrameError`, :class:`UnknownCommandError`,
    :class:`LengthError` or :class:`CrcError`.
    """
    buf = bytes(buf)
    if not buf:
        raise TruncatedFrameError("empty request")
    if buf[0] != REQ_SYNC:
        raise SyncError(f"request starts with {buf[0]:#04x}, not the sync byte {REQ_SYNC:#04x}")
    if len(buf) < REQ_HEADER_BYTES:
        raise TruncatedFrameError(f"request header needs {REQ_HEADER_BYTES} bytes, got {len(buf)}")
    cmd = _command(buf[1])
    addr = int.from_bytes(buf[3:7], "little")
    length = int.from_bytes(buf[7:9], "little")
    check_request(cmd, addr, length, max_payload)
    total = request_bytes(cmd, length)
    if len(buf) < total:
        raise TruncatedFrameError(f"{cmd.name} request needs {total} bytes, got {len(buf)}", total)
    _check_crc(buf[:total], f"{cmd.name} request")
    n = request_payload_bytes(cmd, length)
    return Request(cmd, buf[2], addr, length, buf[REQ_HEADER_BYTES:REQ_HEADER_BYTES + n]), total


def decode_response(buf, max_payload=MAX_PAYLOAD):
    """The response at the start of ``buf``: ``(Response, bytes consumed)``.

    Raises :class:`SyncError`, :class:`TruncatedFrameError`, :class:`LengthError` (a payload above
    ``max_payload``, or more than :data:`PING_INFO_BYTES`), :class:`CrcError` or
    :class:`UnknownStatusError`.
    """
    buf = bytes(buf)
    if not buf:
        raise TruncatedFrameError("empty response")
    if buf[0] != RSP_SYNC:
        raise SyncError(f"response starts with {buf[0]:#04x}, not the sync byte {RSP_SYNC:#04x}")
    if len(buf) < RSP_HEADER_BYTES:
        raise TruncatedFrameError(f"response header needs {RSP_HEADER_BYTES} bytes, got {len(buf)}")
    n = int.from_bytes(buf[4:6], "little")
    if n > max(max_payload, PING_INFO_BYTES):
        raise LengthError(f"response payload of {n} bytes is over the limit of {max_payload}")
    total = RSP_HEADER_BYTES + n + CRC_BYTES
    if len(buf) < total:
        raise TruncatedFrameError(f"response needs {total} bytes, got {len(buf)}", total)
    _check_crc(buf[:total], "response")
    try:
        status = Status(buf[3])
    except ValueError:
        raise UnknownStatusError(f"unknown status byte {buf[3]:#04x}") from None
    return Response(buf[1], buf[2], status, buf[RSP_HEADER_BYTES:RSP_HEADER_BYTES + n]), total


class ResponseParser:
    """Host-side stream parser: feed received bytes, take whole responses.

    Bytes before a ``RSP_SYNC`` are skipped; a frame that fails its CRC (or has an impossible length
    or status) is dropped by skipping its sync byte, so the parser finds the next frame by itself.
    :attr:`dropped` counts the frames dropped.
    """

    def __init__(self, max_payload=MAX_PAYLOAD):
        self.max_payload = max_payload
        self.buf = bytearray()
        self.dropped = 0

    def clear(self):
        self.buf.clear()

    def feed(self, data):
        """Add bytes; return the list of whole good responses now available."""
        self.buf += data
        out = []
        while True:
            i = self.buf.find(RSP_SYNC)
            if i < 0:
                self.buf.clear()
                return out
            del self.buf[:i]
            try:
                rsp, n = decode_response(self.buf, self.max_payload)
            except TruncatedFrameError:
                return out
            except ProtocolError:
                self.dropped += 1
                del self.buf[:1]
                continue
            del self.buf[:n]
            out.append(rsp)


# -- the board's behaviour, byte for byte ---------------------------------------------------------------

class LinkModel:
    """What the link gateware answers, as a byte-level model (the tests' fake board and reference).

    Parameters
    ----------
    dram : bytearray
        The DRAM behind the link; accesses beyond it are bus errors (DECERR).
    csrs : dict
        CSR byte offset -> value; offsets not in it read as 0 and ignore writes (as
        ``hw/control/axi_lite.py`` does). ``csr_write_hook(offset, value)``, if given, is called on
        every CSR write that is executed.
    bus_bytes, max_payload, csr_addr_bits : int
        As the gateware's parameters: the PING answer, the length limit, and the CSR address space
        (offsets beyond it are ``BUS_ERROR``).
    bus_error_csrs : set
        CSR offsets whose accesses the bus answers with SLVERR.

    ``feed(data)`` gives the model received bytes and returns the bytes it sends; ``idle()`` tells it the
    line has been quiet for the board's timeout (a partial frame times out, a drain ends) and returns the
    bytes it sends then.
    """

    def __init__(self, dram, csrs=None, *, bus_bytes=4, max_payload=256, csr_addr_bits=16, bus_error_csrs=(),
                 csr_write_hook=None):
        self.dram = dram
        self.csrs = {} if csrs is None else csrs
        self.bus_bytes, self.max_payload, self.csr_addr_bits = bus_bytes, max_payload, csr_addr_bits
        self.bus_error_csrs = set(bus_error_csrs)
        self.csr_write_hook = csr_write_hook
        self.last = None            # (cmd, seq, addr, length, status) of the last executed request
        self.executed = 0           # requests executed (not counting skipped retries)
        self._reset()

    def _reset(self):
        self.state = "hunt"
        self.frame = bytearray()
        self.need = REQ_HEADER_BYTES - 1
        self.drain_status = None

    def _error_response(self, status):
        f = self.frame
        cmd = f[0] if len(f) > 0 else 0
        seq = f[1] if len(f) > 1 else 0
        return encode_response(cmd, seq, status)

    def idle(self):
        """The line went quiet for the board's timeout."""
        if self.state == "hunt":
            return b""
        status = self.drain_status if self.state == "drain" else Status.TIMEOUT
        out = self._error_response(status)
        self._reset()
        return out

    def feed(self, data):
        out = bytearray()
        for b in bytes(data):
            if self.state == "hunt":
                if b == REQ_SYNC:
                    self.state = "frame"
                    self.frame = bytearray()
                    self.need = REQ_HEADER_BYTES - 1
                continue
            if self.state == "drain":
                continue
            self.frame.append(b)
            if len(self.frame) == REQ_HEADER_BYTES - 1:
                cmd, length = self.frame[0], int.from_bytes(self.frame[6:8], "little")
                addr = int.from_bytes(self.frame[2:6], "little")
                try:
                    check_request(cmd, addr, length, self.max_payload)
                except ProtocolError:
                    self.state, self.drain_status = "drain", Status.BAD_FRAME
                    continue
                self.need = REQ_HEADER_BYTES - 1 + request_payload_bytes(cmd, length) + CRC_BYTES
            if len(self.frame) == self.need:
                if crc16(self.frame) != 0:
                    self.state, self.drain_status = "drain", Status.BAD_CRC
                    continue
                out += self._execute()
                self._reset()
        return bytes(out)

    def _execute(self):
        f = self.frame
        cmd, seq = Command(f[0]), f[1]
        addr, length = int.from_bytes(f[2:6], "little"), int.from_bytes(f[6:8], "little")
        payload = bytes(f[8:8 + request_payload_bytes(cmd, length)])
        key = (cmd, seq, addr, length)
        if cmd in (Command.CSR_WRITE, Command.DRAM_WRITE) and self.last is not None and self.last[:4] == key:
            return encode_response(cmd, seq, self.last[4])
        self.executed += 1
        status, data = Status.OK, b""
        if cmd == Command.PING:
            data = PingInfo(VERSION, self.bus_bytes, self.max_payload).encode()
        elif cmd in (Command.CSR_READ, Command.CSR_WRITE):
            if addr >> self.csr_addr_bits or addr in self.bus_error_csrs:
                status = Status.BUS_ERROR
            elif cmd == Command.CSR_READ:
                data = (self.csrs.get(addr, 0) & 0xFFFFFFFF).to_bytes(4, "little")
            else:
                value = int.from_bytes(payload, "little")
                if addr in self.csrs:
                    self.csrs[addr] = value
                if self.csr_write_hook is not None:
                    self.csr_write_hook(addr, value)
        elif cmd == Command.DRAM_READ:
            if addr + length > len(self.dram):
                status = Status.BUS_ERROR
            else:
                data = bytes(self.dram[addr:addr + length])
        else:
            # Bytes in words beyond the memory are dropped (DECERR), the others are written.
            end = min(addr + length, len(self.dram))
            if end > addr:
                self.dram[addr:end] = payload[:end - addr]
            if addr + length > len(self.dram):
                status = Status.BUS_ERROR
        self.last = (cmd, seq, addr, length, status)
        return encode_response(cmd, seq, status, data)
