"""The board link protocol (``firmware/board_protocol.py``): codec round trips and every error path, the
reference model's behaviour, and ``BoardDevice`` (``firmware/board_device.py``) against a pure-Python fake
board that can corrupt or drop bytes either way, or go silent: retries succeed, a write is never executed
twice, and persistent faults give a one-line ``DeviceError`` within the time limit, never a hang."""

import random
import sys
import time

import pytest

from firmware.board_device import BoardDevice
from firmware.board_protocol import (
    CRC_INIT,
    MAX_PAYLOAD,
    PING_INFO_BYTES,
    REQ_SYNC,
    RSP_SYNC,
    Command,
    CrcError,
    LengthError,
    LinkModel,
    PingInfo,
    ProtocolError,
    Request,
    Response,
    ResponseParser,
    Status,
    SyncError,
    TruncatedFrameError,
    UnknownCommandError,
    UnknownStatusError,
    crc16,
    crc16_update,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    request_bytes,
    response_bytes,
)
from firmware.device import DeviceError
from hw.config import load_hw_config
from hw.csr_map import CSR_BY_NAME, CSRS, STATUS_BUSY, STATUS_DONE, STATUS_ERROR_SHIFT
from hw.isa import ErrorCode

HW = load_hw_config("tiny")


# -- codec -----------------------------------------------------------------------------------------------

def test_crc16_is_ccitt_false():
    assert crc16(b"123456789") == 0x29B1
    assert crc16(b"") == CRC_INIT
    crc = CRC_INIT
    for b in b"123456789":
        crc = crc16_update(crc, b)
    assert crc == 0x29B1
    # A frame with its CRC appended big-endian has a CRC of zero (what the gateware checks).
    body = b"\x03\x07\x10\x00\x00\x00\x04\x00abcd"
    assert crc16(body + crc16(body).to_bytes(2, "big")) == 0


@pytest.mark.parametrize("req", [
    Request(Command.PING, 0),
    Request(Command.CSR_READ, 1, 0x24, 4),
    Request(Command.CSR_WRITE, 255, 0xFFFC, 4, b"\x01\x02\x03\x04"),
    Request(Command.DRAM_READ, 17, 0xFFFF_FF00, 256),
    Request(Command.DRAM_WRITE, 18, 0x1234_5677, 5, b"hello"),
    Request(Command.DRAM_WRITE, 19, 0, MAX_PAYLOAD, bytes(range(256)) * (MAX_PAYLOAD // 256)),
])
def test_request_round_trip(req):
    frame = encode_request(req.cmd, req.seq, req.addr, req.length, req.payload)
    assert frame[0] == REQ_SYNC and len(frame) == request_bytes(req.cmd, req.length)
    got, n = decode_request(frame + b"\xA5trailing")
    assert got == req and n == len(frame)


def test_request_defaults():
    assert decode_request(encode_request(Command.CSR_READ, 3, 8))[0].length == 4
    assert decode_request(encode_request(Command.DRAM_WRITE, 3, 8, payload=b"xy"))[0].length == 2
    assert len(encode_request(Command.PING, 0)) == 11


@pytest.mark.parametrize("status, payload", [(Status.OK, b""), (Status.OK, bytes(range(200))),
                                             (Status.BAD_CRC, b""), (Status.BUS_ERROR, b"")])
def test_response_round_trip(status, payload):
    frame = encode_response(Command.DRAM_READ, 9, status, payload)
    assert frame[0] == RSP_SYNC
    assert decode_response(frame) == (Response(Command.DRAM_READ, 9, status, payload), len(frame))
    assert len(frame) == response_bytes(Command.DRAM_READ, status, len(payload)) or status != Status.OK


def test_ping_info_round_trip():
    info = PingInfo(1, 8, 256)
    assert len(info.encode()) == PING_INFO_BYTES and PingInfo.decode(info.encode()) == info
    with pytest.raises(ProtocolError, match="not a Trillium"):
        PingInfo.decode(b"XXXX\x01\x08\x00\x01")


def test_decode_request_errors():
    good = encode_request(Command.DRAM_WRITE, 5, 0x100, payload=b"abcdef")
    with pytest.raises(TruncatedFrameError, match="empty"):
        decode_request(b"")
    with pytest.raises(TruncatedFrameError, match="header"):
        decode_request(good[:5])
    with pytest.raises(TruncatedFrameError, match="needs 17 bytes") as e:
        decode_request(good[:-1])
    assert e.value.needed == len(good)
    with pytest.raises(SyncError):
        decode_request(b"\x00" + good[1:])
    bad = bytearray(good)
    bad[12] ^= 0x04
    with pytest.raises(CrcError, match="bad CRC") as e:
        decode_request(bytes(bad))
    assert e.value.expected != e.value.received
    unknown = bytearray(good)
    unknown[1] = 0x42
    with pytest.raises(UnknownCommandError, match="0x42"):
        decode_request(bytes(unknown))
    # Over-long: the header says more than the limit (of the format, or of the board).
    over = bytes([REQ_SYNC, Command.DRAM_READ, 1, 0, 0, 0, 0]) + (MAX_PAYLOAD + 1).to_bytes(2, "little")
    with pytest.raises(LengthError, match="length must be in"):
        decode_request(over + b"\x00\x00")
    with pytest.raises(LengthError, match=r"\[1, 64\]"):
        decode_request(encode_request(Command.DRAM_READ, 1, 0, 65), max_payload=64)
    zero = bytes([REQ_SYNC, Command.DRAM_READ, 1, 0, 0, 0, 0, 0, 0])
    with pytest.raises(LengthError):
        decode_request(zero + crc16(zero[1:]).to_bytes(2, "big"))
    csr5 = bytes([REQ_SYNC, Command.CSR_READ, 1, 0, 0, 0, 0, 5, 0])
    with pytest.raises(LengthError, match="must be 4"):
        decode_request(csr5 + crc16(csr5[1:]).to_bytes(2, "big"))


def test_encode_request_errors():
    with pytest.raises(LengthError, match="multiple of 4"):
        encode_request(Command.CSR_READ, 0, 6)
    with pytest.raises(LengthError, match="past the 32-bit"):
        encode_request(Command.DRAM_READ, 0, 0xFFFF_FFF0, 32)
    with pytest.raises(LengthError, match="32 bits"):
        encode_request(Command.DRAM_READ, 0, 1 << 32, 4)
    with pytest.raises(LengthError, match="length must be in"):
        encode_request(Command.DRAM_WRITE, 0, 0, payload=bytes(MAX_PAYLOAD + 1))
    with pytest.raises(LengthError, match="payload of 3 bytes"):
        encode_request(Command.DRAM_WRITE, 0, 0, 4, b"abc")
    with pytest.raises(LengthError, match="payload"):
        encode_request(Command.DRAM_READ, 0, 0, 4, b"abcd")
    with pytest.raises(ProtocolError, match="sequence"):
        encode_request(Command.PING, 256)
    with pytest.raises(UnknownCommandError):
        encode_request(9, 0)
    with pytest.raises(LengthError, match="PING"):
        encode_request(Command.PING, 0, 0, 1)


def test_decode_response_errors():
    good = encode_response(Command.CSR_READ, 7, Status.OK, b"\x01\x02\x03\x04")
    with pytest.raises(TruncatedFrameError):
        decode_response(good[:3])
    with pytest.raises(TruncatedFrameError, match="needs 12"):
        decode_response(good[:-2])
    with pytest.raises(SyncError):
        decode_response(b"\xA5" + good[1:])
    bad = bytearray(good)
    bad[7] ^= 0x80
    with pytest.raises(CrcError):
        decode_response(bytes(bad))
    weird = bytes([7, 7, 0x66, 0, 0])
    with pytest.raises(UnknownStatusError, match="0x66"):
        decode_response(bytes([RSP_SYNC]) + weird + crc16(weird).to_bytes(2, "big"))
    with pytest.raises(LengthError, match="over the limit"):
        decode_response(encode_response(Command.DRAM_READ, 1, Status.OK, bytes(100)), max_payload=64)


def test_response_parser_resyncs():
    a = encode_response(Command.PING, 1, Status.OK, PingInfo(1, 4, 64).encode())
    b = encode_response(Command.CSR_READ, 2, Status.OK, b"\x5a\x5a\x5a\x5a")
    c = encode_response(Command.DRAM_WRITE, 3, Status.BUS_ERROR)
    damaged = bytearray(b)
    damaged[-1] ^= 1
    p = ResponseParser(max_payload=64)
    stream = b"\x00\x5a\xff" + a + bytes(damaged) + c + b
    got = []
    for i in range(0, len(stream), 5):          # in small pieces
        got += p.feed(stream[i:i + 5])
    assert [(r.seq, r.status) for r in got] == [(1, Status.OK), (3, Status.BUS_ERROR), (2, Status.OK)]
    assert p.dropped >= 2


def test_link_model_duplicates_drain_and_timeout():
    dram = bytearray(64)
    writes = []
    model = LinkModel(dram, {0: 5}, csr_write_hook=lambda o, v: writes.append((o, v)))
    w = encode_request(Command.CSR_WRITE, 9, 0, payload=b"\x01\x00\x00\x00")
    assert decode_response(model.feed(w))[0].status == Status.OK
    assert decode_response(model.feed(w))[0].status == Status.OK     # the retry: answered, not executed
    assert writes == [(0, 1)]
    w2 = encode_request(Command.CSR_WRITE, 10, 0, payload=b"\x01\x00\x00\x00")
    model.feed(w2)
    assert writes == [(0, 1), (0, 1)]
    # A bad CRC drains everything until the line is quiet, then answers once.
    bad = bytearray(encode_request(Command.DRAM_WRITE, 11, 0, payload=b"abc"))
    bad[-1] ^= 1
    assert model.feed(bytes(bad) + encode_request(Command.PING, 12)) == b""
    rsp, _ = decode_response(model.idle())
    assert (rsp.seq, rsp.status) == (11, Status.BAD_CRC) and dram[:3] == bytes(3)
    # A partial frame times out; then the link is back in sync.
    assert model.feed(encode_request(Command.PING, 13)[:5]) == b""
    assert decode_response(model.idle())[0].status == Status.TIMEOUT
    assert model.idle() == b""
    assert decode_response(model.feed(encode_request(Command.PING, 14)))[0].status == Status.OK


# -- a fake board ---------------------------------------------------------------------------------------

class FakeBoard:
    """A transport that behaves like the board: :class:`LinkModel` with DRAM and the accelerator's CSRs,
    and a run that is ``done`` after a few ``status`` reads. Faults, from a seeded generator: a request
    byte flipped or dropped, a response byte flipped or the response lost, or silence."""

    def __init__(self, dram_bytes=1 << 16, *, seed=0, p_req_flip=0.0, p_req_drop=0.0, p_rsp_flip=0.0,
                 p_rsp_lost=0.0, silent=False, max_payload=64, run_polls=3, run_error=ErrorCode.NONE,
                 finishes=True, board_dram_bytes=None):
        self.rng = random.Random(seed)
        self.p_req_flip, self.p_req_drop = p_req_flip, p_req_drop
        self.p_rsp_flip, self.p_rsp_lost = p_rsp_flip, p_rsp_lost
        self.silent = silent
        self.csrs = {c.offset: 0 for c in CSRS}
        self.csrs[CSR_BY_NAME["id"].offset] = HW.config_hash
        self.starts = 0
        self.run_polls, self.run_error, self.finishes = run_polls, run_error, finishes
        self._polls_left = None
        self.dram = bytearray(board_dram_bytes or dram_bytes)
        self.model = LinkModel(self.dram, _Csrs(self), bus_bytes=8, max_payload=max_payload,
                               csr_write_hook=self._csr_write)
        self.out = bytearray()
        self.bytes_in = 0

    def _csr_write(self, offset, value):
        if offset == CSR_BY_NAME["control"].offset and value & 1:
            self.starts += 1
            self._polls_left = self.run_polls
            self.csrs[CSR_BY_NAME["status"].offset] = STATUS_BUSY

    def status(self):
        if self._polls_left is not None and self.finishes:
            self._polls_left -= 1
            if self._polls_left <= 0:
                self._polls_left = None
                self.csrs[CSR_BY_NAME["status"].offset] = STATUS_DONE | (self.run_error.value << STATUS_ERROR_SHIFT)
                self.csrs[CSR_BY_NAME["error_pc"].offset] = 0x40 if self.run_error != ErrorCode.NONE else 0
        return self.csrs[CSR_BY_NAME["status"].offset]

    def _answer(self, data):
        if not data:
            return
        if self.rng.random() < self.p_rsp_lost:
            return
        data = bytearray(data)
        if self.rng.random() < self.p_rsp_flip:
            data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        self.out += data

    def write(self, data):
        self.bytes_in += len(data)
        if self.silent:
            return
        data = bytearray(data)
        if self.rng.random() < self.p_req_flip:
            data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        if self.rng.random() < self.p_req_drop:
            del data[self.rng.randrange(len(data))]
        self._answer(self.model.feed(data))

    def read(self, n):
        if self.silent:
            return b""
        if not self.out:
            # The host is waiting, so the line is quiet: the board's timeout passes.
            self._answer(self.model.idle())
        data = bytes(self.out[:n])
        del self.out[:n]
        return data

    def reset_input_buffer(self):
        self.out.clear()


class _Csrs(dict):
    """The fake's CSR file as LinkModel sees it: ``status`` reads advance the fake run."""

    def __init__(self, board):
        super().__init__()
        self.board = board

    def get(self, offset, default=0):
        if offset == CSR_BY_NAME["status"].offset:
            return self.board.status()
        return self.board.csrs.get(offset, default)

    def __contains__(self, offset):
        return offset in self.board.csrs

    def __setitem__(self, offset, value):
        self.board.csrs[offset] = value


def board_device(fake, **kw):
    kw.setdefault("timeout_s", 0.02)
    return BoardDevice(HW, 1 << 16, transport=fake, **kw)


def test_board_device_clean_link():
    fake = FakeBoard()
    from firmware.device import make_device

    dev = make_device("board", HW, 1 << 16, transport=fake, timeout_s=0.05)     # registered with the devices
    assert isinstance(dev, BoardDevice)
    assert dev.info == PingInfo(1, 8, 64) and dev.chunk_bytes == 64
    dev.check_id()
    rng = random.Random(1)
    blob = rng.randbytes(1000)
    dev.write(13, blob)                       # unaligned, 16 requests
    assert fake.dram[13:1013] == blob
    assert dev.read(13, 1000) == blob
    assert dev.read(0, 14) == bytes(13) + blob[:1]
    dev.write_csr("program", 0x1230)
    assert dev.read_csr("program") == 0x1230
    dev.run(timeout_s=1)
    assert fake.starts == 1 and dev.last_run["polls"] == 3
    assert dev.stats["retries"] == 0
    with pytest.raises(DeviceError, match="outside"):
        dev.read((1 << 16) - 2, 4)
    with pytest.raises(DeviceError, match="read-only"):
        dev.write_csr("status", 0)
    with pytest.raises(DeviceError, match="no CSR"):
        dev.read_csr("nope")


def test_board_device_check_id_mismatch():
    fake = FakeBoard()
    fake.csrs[0] ^= 1
    with pytest.raises(DeviceError, match="does not match"):
        board_device(fake).check_id()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_board_device_retries_through_faults(seed):
    """Every kind of fault at 15-20 %: all transfers come out right, and a lost answer to the
    ``control.start`` write does not start the run twice."""
    fake = FakeBoard(seed=seed, p_req_flip=0.2, p_req_drop=0.15, p_rsp_flip=0.2, p_rsp_lost=0.15)
    dev = board_device(fake, retries=12)
    rng = random.Random(seed)
    blob = rng.randbytes(700)
    dev.write(101, blob)
    assert dev.read(101, 700) == blob and fake.dram[101:801] == blob
    for i in range(10):
        dev.write_csr("tokens", 1000 + i)
        assert dev.read_csr("tokens") == 1000 + i
    for _ in range(3):
        dev.run(timeout_s=5)
    assert fake.starts == 3
    assert dev.stats["retries"] > 5
    assert fake.model.executed < dev.stats["requests"] + dev.stats["retries"]


def test_board_device_lost_answer_to_start_is_not_a_second_start():
    fake = FakeBoard()
    dev = board_device(fake)
    real = fake._answer
    state = {"lost": False}

    def lose_first_start_answer(data):
        if not state["lost"] and data and data[1] == Command.CSR_WRITE:
            state["lost"] = True
            return
        real(data)

    fake._answer = lose_first_start_answer
    dev.run(timeout_s=1)
    assert state["lost"] and fake.starts == 1 and dev.stats["retries"] == 1


def test_board_device_persistent_corruption_gives_device_error_in_time():
    fake = FakeBoard()
    dev = board_device(fake, retries=3, timeout_s=0.05)
    fake.p_req_flip = 1.0
    t0 = time.monotonic()
    with pytest.raises(DeviceError) as e:
        dev.write(0, bytes(32))
    took = time.monotonic() - t0
    msg = str(e.value)
    assert "\n" not in msg and "DRAM write of 32 bytes at 0x0" in msg and "after 4 attempts" in msg, msg
    assert took < 4 * (0.05 + 0.01) + 1.0
    # The damaged requests were answered BAD_CRC / BAD_FRAME / TIMEOUT or not at all: never executed.
    assert fake.dram[:32] == bytes(32)
    # Corrupt answers only (the requests all arrive): the same, and the device recovers once they stop.
    fake.p_req_flip, fake.p_rsp_flip = 0.0, 1.0
    with pytest.raises(DeviceError, match="no answer within"):
        dev.read_csr("status")
    fake.p_rsp_flip = 0.0
    assert dev.read_csr("id") == HW.config_hash


def test_board_device_silent_link():
    # Silent from the start: the PING at connection fails.
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match=r"PING failed after 3 attempts, last: no answer within") as e:
        board_device(FakeBoard(silent=True), retries=2, timeout_s=0.05)
    assert time.monotonic() - t0 < 3 * 0.06 + 1.0
    assert "\n" not in str(e.value)
    # Silent later (cable pulled): every call fails in time, nothing hangs.
    fake = FakeBoard()
    dev = board_device(fake, retries=1, timeout_s=0.03)
    fake.silent = True
    t0 = time.monotonic()
    for call in (lambda: dev.read(0, 100), lambda: dev.write_csr("pos", 1), lambda: dev.run(timeout_s=10)):
        with pytest.raises(DeviceError, match="no answer"):
            call()
    assert time.monotonic() - t0 < 3 * 2 * 0.04 + 1.0


def test_board_device_bus_error_is_not_retried():
    fake = FakeBoard(board_dram_bytes=1024)          # the driver thinks there is more DRAM than there is
    dev = board_device(fake)
    with pytest.raises(DeviceError, match="BUS_ERROR"):
        dev.read(1000, 100)
    assert dev.stats["retries"] == 0


def test_board_device_run_errors_and_timeout():
    fake = FakeBoard(run_error=ErrorCode.BAD_ADDRESS)
    dev = board_device(fake)
    with pytest.raises(DeviceError, match="run failed: BAD_ADDRESS at pc 0x40") as e:
        dev.run(timeout_s=1)
    assert e.value.code == ErrorCode.BAD_ADDRESS and e.value.csrs["error_pc"] == 0x40
    fake = FakeBoard(finishes=False)
    dev = board_device(fake, poll_s=0.005)
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="did not finish within 0.1 s") as e:
        dev.run(timeout_s=0.1)
    assert 0.1 <= time.monotonic() - t0 < 1.5
    assert e.value.csrs["status"] == STATUS_BUSY


def test_board_device_connection_errors(monkeypatch):
    with pytest.raises(DeviceError, match="no serial port"):
        BoardDevice(HW, 1 << 16)
    monkeypatch.setitem(sys.modules, "serial", None)        # pyserial missing (import fails)
    with pytest.raises(DeviceError, match="pip install pyserial"):
        BoardDevice(HW, 1 << 16, port="/dev/ttyNOPE")
    with pytest.raises(ValueError, match="retries"):
        BoardDevice(HW, 1 << 16, transport=FakeBoard(), retries=-1)
    with pytest.raises(ValueError, match="timeout_s"):
        BoardDevice(HW, 1 << 16, transport=FakeBoard(), timeout_s=0)


def test_board_device_refuses_other_protocol_versions():
    class OldBoard(FakeBoard):
        def read(self, n):
            data = super().read(n)
            if data[:1] == bytes([RSP_SYNC]) and data[1] == Command.PING:
                body = bytearray(data[1:-2])
                body[9] = 7                    # the version byte of the PING info
                data = bytes([RSP_SYNC]) + bytes(body) + crc16(bytes(body)).to_bytes(2, "big")
            return data

    with pytest.raises(DeviceError, match="protocol version 7"):
        board_device(OldBoard())
