# amaranth: UnusedElaboratable=no
"""The board link gateware (Amaranth simulator): the 8N1 UART in loopback, and the link bridge driven by
request frames from ``firmware/board_protocol.py`` in front of an AXI4-Lite CSR stub and the project's
``FastDramModel``. Every byte the link sends is compared with ``LinkModel``, the protocol's reference:
CSR writes and reads, unaligned DRAM bursts (across a 4 KiB boundary too), bus errors, a corrupted frame
(``BAD_CRC``, then the next frame works), a partial frame (``TIMEOUT``, then resync), garbage between
frames, retried writes that must not execute twice, and the whole path through two UARTs."""

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In
from amaranth.sim import Simulator

from firmware.board_protocol import (
    MAX_PAYLOAD,
    REQ_SYNC,
    Command,
    LinkModel,
    ResponseParser,
    Status,
    crc16_update,
    encode_request,
)
from hw.board.link import BoardLink, UartLink, crc16_next
from hw.board.uart import UartRx, UartTx, baud_divisor
from hw.control.axi_lite import AxiLiteSignature
from hw.memory.dram_model import FastDramModel

CSR_REGS = 16           # the stub's registers, at byte offsets 0, 4, ... 60
SLVERR_OFFSET = 0x40    # the stub answers SLVERR here
CSR_INIT = [0x1000 + 0x111 * i for i in range(CSR_REGS)]


class AxiLiteStub(wiring.Component):
    """AXI4-Lite slave: 16 registers, SLVERR at ``SLVERR_OFFSET``, other offsets read 0 and ignore writes;
    AW and W are accepted in random cycles (independently), and responses come after random delays."""

    def __init__(self, seed=1):
        self.seed = seed
        super().__init__({"axi": In(AxiLiteSignature(16))})

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        regs = [Signal(32, init=v, name=f"r{i}") for i, v in enumerate(CSR_INIT)]
        lfsr = Signal(16, init=self.seed | 1)
        m.d.sync += lfsr.eq((lfsr >> 1) ^ (-(lfsr & 1) & 0xB400))
        go = lfsr[0] | lfsr[3]
        have_aw, have_w = Signal(), Signal()
        waddr, wdata = Signal(16), Signal(32)
        bvalid, rvalid = Signal(), Signal()
        bresp, rresp, rdata = Signal(2), Signal(2), Signal(32)
        m.d.comb += [axi.bvalid.eq(bvalid), axi.bresp.eq(bresp), axi.rvalid.eq(rvalid), axi.rresp.eq(rresp),
                     axi.rdata.eq(rdata)]
        m.d.comb += [axi.awready.eq(~have_aw & ~bvalid & go), axi.wready.eq(~have_w & ~bvalid & lfsr[1])]
        with m.If(axi.awvalid & axi.awready):
            m.d.sync += [have_aw.eq(1), waddr.eq(axi.awaddr)]
        with m.If(axi.wvalid & axi.wready):
            m.d.sync += [have_w.eq(1), wdata.eq(axi.wdata)]
        with m.If(have_aw & have_w & ~bvalid & go):
            m.d.sync += [have_aw.eq(0), have_w.eq(0), bvalid.eq(1), bresp.eq(0)]
            with m.If(waddr == SLVERR_OFFSET):
                m.d.sync += bresp.eq(2)
            for i, r in enumerate(regs):
                with m.If(waddr == 4 * i):
                    m.d.sync += r.eq(wdata)
        with m.If(bvalid & axi.bready):
            m.d.sync += bvalid.eq(0)
        m.d.comb += axi.arready.eq(~rvalid & go)
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += [rvalid.eq(1), rresp.eq(0), rdata.eq(0)]
            with m.If(axi.araddr == SLVERR_OFFSET):
                m.d.sync += rresp.eq(2)
            for i, r in enumerate(regs):
                with m.If(axi.araddr == 4 * i):
                    m.d.sync += rdata.eq(r)
        with m.If(rvalid & axi.rready):
            m.d.sync += rvalid.eq(0)
        return m


def make_model(data_bits, depth, max_payload):
    return LinkModel(bytearray(depth * data_bits // 8), {4 * i: v for i, v in enumerate(CSR_INIT)},
                     bus_bytes=data_bits // 8, max_payload=max_payload, bus_error_csrs={SLVERR_OFFSET})


def run_link(script, *, data_bits=32, max_payload=64, timeout=120, depth=2048, seed=0, p_gap=0.3,
             p_stall=0.3, uart_divisor=None, max_cycles=200_000):
    """Drive the link (or, with ``uart_divisor``, the UartLink through two host-side UARTs) with the
    script; return the bytes it sent, the model's bytes, and the DRAM model's violation flag."""
    model = make_model(data_bits, depth, max_payload)
    # The answer bytes due after each step: through the UARTs the host waits for them before it sends
    # again (the link takes no bytes while it answers, so the UART would drop them).
    due, want = [], bytearray()
    for kind, arg in script:
        want += model.feed(arg) if kind == "bytes" else model.idle()
        due.append(len(want))
    want = bytes(want)
    m = Module()
    args = dict(data_bits=data_bits, max_payload=max_payload, timeout_cycles=timeout)
    if uart_divisor:
        dut = UartLink(uart_divisor, **args)
        host_tx, host_rx = UartTx(uart_divisor), UartRx(uart_divisor)
        m.submodules.host_tx, m.submodules.host_rx = host_tx, host_rx
        m.d.comb += [dut.rx.eq(host_tx.tx), host_rx.rx.eq(dut.tx)]
        src, sink = host_tx.data, host_rx.data
    else:
        dut = BoardLink(**args)
        src, sink = dut.rx, dut.tx
    dram = FastDramModel(32, data_bits, depth=depth, latency=3, writable=True, jitter=2, seed=seed + 7)
    csr = AxiLiteStub(seed=seed + 3)
    m.submodules.dut, m.submodules.dram, m.submodules.csr = dut, dram, csr
    wiring.connect(m, dut.axi_rd, dram.axi)
    wiring.connect(m, dut.axi_wr, dram.axi_wr)
    wiring.connect(m, dut.csr, csr.axi)
    rng = random.Random(seed)
    got = bytearray()
    state = {"cycles": 0}

    async def sender(ctx):
        for i, (kind, arg) in enumerate(script):
            if uart_divisor and i:
                while len(got) < due[i - 1]:
                    await ctx.tick()
            if kind == "quiet":
                # Quiet for longer than the timeout, counted from when the last byte left the host.
                if uart_divisor:
                    await ctx.tick().until(~host_tx.busy)
                await ctx.tick().repeat(arg)
                continue
            for b in arg:
                while not uart_divisor and rng.random() < p_gap:
                    await ctx.tick()
                ctx.set(src.payload, b)
                ctx.set(src.valid, 1)
                await ctx.tick().until(src.ready)
                ctx.set(src.valid, 0)

    async def receiver(ctx):
        for cycle in range(max_cycles):
            ready = 1 if uart_divisor else int(rng.random() >= p_stall)
            ctx.set(sink.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(sink.valid, sink.payload)
            if valid and ready:
                got.append(payload)
                if len(got) >= len(want):
                    break
        state["cycles"] = cycle
        # Nothing more may come.
        ctx.set(sink.ready, 1)
        for _ in range(4 * (uart_divisor or 1) * 12):
            _, _, valid = await ctx.tick().sample(sink.valid)
            if valid:
                state["extra"] = True
                break
        state["violation"] = ctx.get(dram.violation)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(sender, background=True)
    sim.add_testbench(receiver)
    sim.run()
    assert not state.get("extra"), "the link sent more bytes than the model"
    return bytes(got), want, state["violation"], model


def statuses(data):
    return [(Command(r.cmd).name if r.cmd in Command._value2member_map_ else r.cmd, r.status.name)
            for r in ResponseParser().feed(data)]


def req(cmd, seq, addr=0, length=None, payload=b""):
    return ("bytes", encode_request(cmd, seq, addr, length, payload))


def test_crc16_gateware_matches_protocol():
    crc, byte, out = Signal(16), Signal(8), Signal(16)
    m = Module()
    m.d.comb += out.eq(crc16_next(crc, byte))
    rng = random.Random(0)

    async def bench(ctx):
        for _ in range(300):
            c, b = rng.randrange(1 << 16), rng.randrange(256)
            ctx.set(crc, c)
            ctx.set(byte, b)
            assert ctx.get(out) == crc16_update(c, b), (c, b)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


# -- UART ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("divisor", [4, 5, 7])
def test_uart_loopback(divisor):
    """TX -> RX: random bytes with random gaps, and a consumer that sometimes stalls (no overrun as
    long as it takes each byte within a byte time)."""
    rng = random.Random(divisor)
    data = bytes([0x00, 0xFF, 0x55, 0xAA] + [rng.randrange(256) for _ in range(60)])
    m = Module()
    m.submodules.tx, m.submodules.rx = tx, rx = UartTx(divisor), UartRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    got, flags = [], []

    async def send(ctx):
        for b in data:
            if rng.random() < 0.3:
                await ctx.tick().repeat(rng.randrange(1, 3 * divisor))
            ctx.set(tx.data.payload, b)
            ctx.set(tx.data.valid, 1)
            await ctx.tick().until(tx.data.ready)
            ctx.set(tx.data.valid, 0)

    async def receive(ctx):
        for _ in range(len(data) * divisor * 16):
            ready = int(rng.random() < 0.5)
            ctx.set(rx.data.ready, ready)
            _, _, valid, payload, fe, ov = await ctx.tick().sample(rx.data.valid, rx.data.payload,
                                                                   rx.framing_error, rx.overrun)
            if valid and ready:
                got.append(payload)
            if fe or ov:
                flags.append((fe, ov))
            if len(got) == len(data):
                break

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(send, background=True)
    sim.add_testbench(receive)
    sim.run()
    assert bytes(got) == data and flags == []


def test_uart_rx_framing_error_glitch_and_overrun():
    """A byte with a 0 stop bit is dropped with ``framing_error``; the receiver then waits for the line to
    go high (a long break gives one error, not a stream of bytes); a short low glitch is not a start bit;
    a byte that arrives while the previous one is still held is dropped with ``overrun``."""
    d = 8
    m = Module()
    m.submodules.rx = rx = UartRx(d)
    events = []

    def frame(byte, stop=1):
        return [0] + [(byte >> i) & 1 for i in range(8)] + [stop]

    async def drive(ctx):
        async def bits(levels):
            for level in levels:
                ctx.set(rx.rx, level)
                await ctx.tick().repeat(d)

        ctx.set(rx.rx, 1)
        ctx.set(rx.data.ready, 1)
        await ctx.tick().repeat(3 * d)
        await bits(frame(0x3C, stop=0) + [0] * 30 + [1, 1])     # framing error, then a long break
        ctx.set(rx.rx, 0)                                       # a glitch of d/4 cycles
        await ctx.tick().repeat(d // 4)
        ctx.set(rx.rx, 1)
        await ctx.tick().repeat(3 * d)
        await bits(frame(0xA7) + [1, 1])                        # taken (ready is high)
        ctx.set(rx.data.ready, 0)
        await bits(frame(0x11) + [1] + frame(0x22) + [1, 1])    # 0x11 held, 0x22 overruns
        ctx.set(rx.data.ready, 1)
        await ctx.tick().repeat(2 * d)

    async def watch(ctx):
        async for _, _, valid, ready, payload, fe, ov in ctx.tick().sample(
                rx.data.valid, rx.data.ready, rx.data.payload, rx.framing_error, rx.overrun):
            if valid and ready:
                events.append(("byte", payload))
            if fe:
                events.append(("framing_error",))
            if ov:
                events.append(("overrun",))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.add_testbench(watch, background=True)
    sim.run()
    assert events == [("framing_error",), ("byte", 0xA7), ("overrun",), ("byte", 0x11)]


def test_uart_divisor_and_arguments():
    assert baud_divisor(50e6, 1_000_000) == 50
    assert baud_divisor(25e6, 115200) == 217
    with pytest.raises(ValueError, match="cannot make"):
        baud_divisor(25e6, 3_000_000)          # 8.33 cycles per bit: 4 % off
    with pytest.raises(ValueError, match="outside"):
        baud_divisor(10e6, 5_000_000)
    with pytest.raises(ValueError, match="positive"):
        baud_divisor(0, 9600)
    with pytest.raises(ValueError, match="divisor"):
        UartRx(3)
    with pytest.raises(ValueError, match="divisor"):
        UartTx(True)


# -- the link ------------------------------------------------------------------------------------------

def test_link_csr_dram_and_errors():
    """CSR write/read, DRAM write/read bursts (aligned, unaligned, one byte, the full payload, across a
    4 KiB boundary), PING, bus errors (SLVERR CSR, CSR offset beyond the port, DRAM beyond the memory)."""
    rng = random.Random(5)
    blob = bytes(rng.randrange(256) for _ in range(64))
    script = [
        req(Command.PING, 1),
        req(Command.CSR_WRITE, 2, 8, payload=(0xDEADBEEF).to_bytes(4, "little")),
        req(Command.CSR_READ, 3, 8),
        req(Command.CSR_READ, 4, 60),
        req(Command.DRAM_WRITE, 5, 0x100, payload=blob[:32]),
        req(Command.DRAM_READ, 6, 0x100, 32),
        req(Command.DRAM_WRITE, 7, 4096 - 13, payload=blob),            # unaligned, crosses 4 KiB
        req(Command.DRAM_READ, 8, 4096 - 21, 64),
        req(Command.DRAM_WRITE, 9, 0x201, payload=b"\x99"),             # one byte inside a word
        req(Command.DRAM_READ, 10, 0x200, 8),
        req(Command.CSR_READ, 11, SLVERR_OFFSET),
        req(Command.CSR_WRITE, 12, SLVERR_OFFSET, payload=bytes(4)),
        req(Command.CSR_READ, 13, 0x10000),                             # beyond the 16-bit CSR port
        req(Command.DRAM_READ, 14, 2048 * 4 - 4, 8),                    # runs off the memory
        req(Command.DRAM_WRITE, 15, 2048 * 4 - 2, payload=b"abcd"),
        req(Command.CSR_READ, 16, 8),
    ]
    got, want, violation, _ = run_link(script, seed=1)
    assert got == want
    assert violation == 0
    assert statuses(got) == [
        ("PING", "OK"), ("CSR_WRITE", "OK"), ("CSR_READ", "OK"), ("CSR_READ", "OK"), ("DRAM_WRITE", "OK"),
        ("DRAM_READ", "OK"), ("DRAM_WRITE", "OK"), ("DRAM_READ", "OK"), ("DRAM_WRITE", "OK"),
        ("DRAM_READ", "OK"), ("CSR_READ", "BUS_ERROR"), ("CSR_WRITE", "BUS_ERROR"), ("CSR_READ", "BUS_ERROR"),
        ("DRAM_READ", "BUS_ERROR"), ("DRAM_WRITE", "BUS_ERROR"), ("CSR_READ", "OK")]
    rsp = ResponseParser().feed(got)
    assert int.from_bytes(rsp[2].payload, "little") == 0xDEADBEEF
    assert rsp[5].payload == blob[:32]
    assert rsp[7].payload == bytes(8) + blob[:56]
    assert rsp[9].payload == b"\x00\x99" + bytes(6)     # the lanes around it are not written


@pytest.mark.parametrize("data_bits", [32, 64])
def test_link_bad_crc_timeout_garbage_and_retries(data_bits):
    """A corrupted frame gets BAD_CRC and the next frame works; a partial frame times out (TIMEOUT) and
    the link resyncs; a bad header (unknown command, over-long length) gets BAD_FRAME even with the
    rest of a frame behind it; garbage between frames is ignored; a retried write (same sequence number
    and header) is answered without running again, while a new write to the same place runs."""
    rng = random.Random(data_bits)
    blob = bytes(rng.randrange(256) for _ in range(48))
    bad = bytearray(encode_request(Command.DRAM_WRITE, 21, 0x40, payload=blob))
    bad[20] ^= 0x10
    partial = encode_request(Command.DRAM_WRITE, 22, 0x80, payload=blob)[:30]
    unknown = bytearray(encode_request(Command.CSR_READ, 23, 4))
    unknown[1] = 0x7E
    too_long = bytes([REQ_SYNC, Command.DRAM_READ, 24, 0, 0, 0, 0]) + (65).to_bytes(2, "little") + b"\x00\x00"
    q = ("quiet", 200)
    script = [
        ("bytes", bytes(bad)), q,
        req(Command.DRAM_WRITE, 21, 0x40, payload=blob),
        ("bytes", partial), q,
        req(Command.DRAM_READ, 22, 0x40, 48),
        ("bytes", bytes(unknown) + bytes(range(40))), q,
        ("bytes", too_long), q,
        ("bytes", b"\x00\x13\x5a\xff"),                                 # noise between frames
        req(Command.CSR_WRITE, 25, 12, payload=(7).to_bytes(4, "little")),
        # A retry (same command, sequence number, address, length): answered, not executed, so the
        # different payload (which a real retry would not have) shows whether it ran.
        req(Command.CSR_WRITE, 25, 12, payload=(8).to_bytes(4, "little")),
        req(Command.DRAM_WRITE, 26, 0x40, payload=b"xyz"),
        req(Command.DRAM_WRITE, 26, 0x40, payload=b"XYZ"),                    # a retry: skipped
        req(Command.DRAM_READ, 27, 0x3E, 8),
        req(Command.CSR_READ, 28, 12),
        req(Command.DRAM_WRITE, 28, 0x40, payload=b"XYZ"),                    # a new request
        req(Command.CSR_WRITE, 29, 12, payload=(8).to_bytes(4, "little")),
        req(Command.DRAM_READ, 30, 0x3E, 8),
        req(Command.CSR_READ, 31, 12),
    ]
    got, want, violation, model = run_link(script, data_bits=data_bits, timeout=120, seed=data_bits)
    assert got == want and violation == 0
    assert statuses(got) == [
        ("DRAM_WRITE", "BAD_CRC"), ("DRAM_WRITE", "OK"), ("DRAM_WRITE", "TIMEOUT"), ("DRAM_READ", "OK"),
        (0x7E, "BAD_FRAME"), ("DRAM_READ", "BAD_FRAME"), ("CSR_WRITE", "OK"), ("CSR_WRITE", "OK"),
        ("DRAM_WRITE", "OK"), ("DRAM_WRITE", "OK"), ("DRAM_READ", "OK"), ("CSR_READ", "OK"),
        ("DRAM_WRITE", "OK"), ("CSR_WRITE", "OK"), ("DRAM_READ", "OK"), ("CSR_READ", "OK")]
    rsp = ResponseParser().feed(got)
    assert rsp[3].payload == blob
    assert rsp[10].payload == bytes(2) + b"xyz" + blob[3:6]
    assert int.from_bytes(rsp[11].payload, "little") == 7
    assert rsp[14].payload == bytes(2) + b"XYZ" + blob[3:6]
    assert int.from_bytes(rsp[15].payload, "little") == 8
    assert model.executed == 10         # the two retries were not executed


@pytest.mark.parametrize("data_bits, seed", [(32, 99), (64, 7)])
def test_link_random_traffic_matches_model(data_bits, seed):
    """Random requests, some corrupted (a flipped bit, a dropped byte), against the model byte for byte."""
    rng = random.Random(seed)
    script, seq = [], 0
    for _ in range(40):
        seq = (seq + 1) & 0xFF
        kind = rng.choice(["csr_w", "csr_r", "dram_w", "dram_r", "ping"])
        if kind == "csr_w":
            frame = encode_request(Command.CSR_WRITE, seq, 4 * rng.randrange(18), payload=rng.randbytes(4))
        elif kind == "csr_r":
            frame = encode_request(Command.CSR_READ, seq, 4 * rng.randrange(18))
        elif kind == "dram_w":
            n = rng.randrange(1, 65)
            frame = encode_request(Command.DRAM_WRITE, seq, rng.randrange(0, 600), payload=rng.randbytes(n))
        elif kind == "dram_r":
            frame = encode_request(Command.DRAM_READ, seq, rng.randrange(0, 600), rng.randrange(1, 65))
        else:
            frame = encode_request(Command.PING, seq)
        frame = bytearray(frame)
        fault = rng.random()
        if fault < 0.15:
            frame[rng.randrange(1, len(frame))] ^= 1 << rng.randrange(8)
        elif fault < 0.25:
            del frame[rng.randrange(1, len(frame))]
        script.append(("bytes", bytes(frame)))
        if fault < 0.25:
            script.append(("quiet", 100))
    got, want, violation, _ = run_link(script, data_bits=data_bits, depth=256, timeout=80, seed=seed, p_gap=0.1,
                                       p_stall=0.2)
    assert got == want and violation == 0
    assert {s for _, s in statuses(got)} >= {"OK", "BAD_CRC"}


def test_link_through_uarts():
    """The whole path on the pins: host UART -> UartLink -> host UART, at 6 cycles per bit, with a
    corrupted frame in between."""
    blob = bytes(range(200, 240))
    bad = bytearray(encode_request(Command.CSR_WRITE, 2, 4, payload=b"\x01\x02\x03\x04"))
    bad[-1] ^= 0xFF
    script = [
        req(Command.PING, 1),
        ("bytes", bytes(bad)), ("quiet", 400),
        req(Command.CSR_WRITE, 2, 4, payload=b"\x01\x02\x03\x04"),
        req(Command.DRAM_WRITE, 3, 0x21, payload=blob),
        req(Command.DRAM_READ, 4, 0x20, 42),
        req(Command.CSR_READ, 5, 4),
    ]
    got, want, violation, _ = run_link(script, uart_divisor=6, timeout=300, seed=4)
    assert got == want and violation == 0
    rsp = ResponseParser().feed(got)
    assert [r.status for r in rsp] == [Status.OK, Status.BAD_CRC] + [Status.OK] * 4
    assert rsp[4].payload == b"\x00" + blob + b"\x00"
    assert rsp[5].payload == b"\x01\x02\x03\x04"


def test_link_arguments():
    with pytest.raises(ValueError, match="max_payload"):
        BoardLink(max_payload=MAX_PAYLOAD + 1)
    with pytest.raises(ValueError, match="data_bits"):
        BoardLink(data_bits=16)
    with pytest.raises(ValueError, match="power of two"):
        BoardLink(data_bits=96)
    with pytest.raises(ValueError, match="timeout_cycles"):
        BoardLink(timeout_cycles=0)
    link = BoardLink(data_bits=64, max_payload=100)
    assert link.buffer_words == 14 and link.ping_info()[4:] == bytes([1, 8, 100, 0])


def test_the_payload_buffer_reads_into_block_ram_output_registers(tmp_path):
    """On ECP5 the payload buffer is block RAM read through each block's own output register: no collision
    bypass between the block RAM and the register (``hw.collision``), and every read bit lands in a plain
    flip-flop that ``hw.bram_output_registers`` moves into the block (a 36-bit-wide block could not take
    half of them)."""
    import json
    import subprocess

    from amaranth.back import rtlil

    from hw.bram_output_registers import absorb_output_registers
    from hw.synth import ECP5_SYNTH_PLATFORM, YOSYS_AFTER_READ, yosys_command

    (tmp_path / "link.il").write_text(rtlil.convert(BoardLink(), name="link", platform=ECP5_SYNTH_PLATFORM,
                                                    emit_src=False))
    (tmp_path / "link.ys").write_text(f"read_rtlil link.il\n{YOSYS_AFTER_READ}\nsynth_ecp5 -top link\n"
                                      "write_json link.json\n")
    subprocess.run([*yosys_command(), "-q", "-s", "link.ys"], cwd=tmp_path, check=True, capture_output=True)
    net = json.loads((tmp_path / "link.json").read_text())
    assert absorb_output_registers(net) == 32
    brams = [c for c in net["modules"]["link"]["cells"].values() if c["type"] == "DP16KD"]
    assert len(brams) == 2
    assert all(b["parameters"]["REGMODE_B"] == "OUTREG" for b in brams)
