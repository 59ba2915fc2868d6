"""cocotb testbench of ``hw.memory.AxiBurstReader`` (or an ``AxiReaderGroup`` of several ports) against
cocotbext-axi's ``AxiRamRead``, on Verilator.

Environment (from ``run_cocotb(extra_env=...)``):

``AXI_PARAMS``
    JSON: ``addr_bits``, ``data_bits``, ``max_burst``, ``max_outstanding``, ``buffer_words``,
    ``beats_bits``, ``tag_bits`` of the reader under test, and ``ports`` for a group (default 1: a
    single reader with an ``axi`` port; else ``axi[p]``, one RAM each, ``data_bits`` the total width).

The RAM stalls ``arready`` and ``rvalid`` at random through cocotbext-axi's pause generators (in runs,
so a burst sees a random latency), and the consumer of the reader's data stream stalls at random. Every
cycle a protocol checker verifies the AXI4 master rules (AR payload stable while ``arvalid`` waits,
INCR, full width, aligned, at most ``max_burst`` beats, no 4 KiB crossing, at most ``max_outstanding``
bursts in flight), that ``rready`` is high whenever ``rvalid`` is (space is reserved before a burst is
issued), and the output stream rules (valid held, payload stable while stalled). The data must be the
RAM's words in command order, with ``last``/``tag`` on each command's last word; for a group, wide word
``j`` of a command at port-local address ``a`` is the ports' words at ``a + j * port bytes``, port 0 in
the low bits. Each port's RAM has its own pause generators, so the ports run out of step.
"""

import json
import os
import random

import cocotb
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly
from cocotbext.axi import AxiRamRead, AxiReadBus

from sim import cocotb_streams as streams

P = json.loads(os.environ["AXI_PARAMS"])
PORTS = P.get("ports", 1)
PREFIXES = ["axi_"] if PORTS == 1 else [f"axi__{p}_" for p in range(PORTS)]
BYTES = P["data_bits"] // 8 // PORTS          # one port's bus
SIZE = BYTES.bit_length() - 1
RAM_BYTES = 1 << 16
AR_FIELDS = ("araddr", "arlen", "arsize", "arburst", "arid")


def pack_cmd(addr, beats, tag):
    return addr | (beats << P["addr_bits"]) | (tag << (P["addr_bits"] + P["beats_bits"]))


def unpack_data(value):
    mask = (1 << P["data_bits"]) - 1              # the whole (group) width
    last = (value >> P["data_bits"]) & 1
    return value & mask, last, (value >> (P["data_bits"] + 1)) if last else 0   # the tag counts on last words


def pauses(rng, p_pause, max_run):
    """Pause-generator values: runs of pause (length 1..max_run) with probability p_pause."""
    while True:
        if rng.random() < p_pause:
            yield from [True] * rng.randint(1, max_run)
        else:
            yield False


class FaultyRam(AxiRamRead):
    """The AXI RAM, answering SLVERR beyond its size (the base model reads zeros there)."""

    async def _read(self, address, length):
        if address + length > RAM_BYTES:
            raise IndexError(f"read beyond the RAM at {address:#x}")
        return await super()._read(address, length)


async def setup(dut, rng, p_ar, p_r):
    rams = []
    for prefix in PREFIXES:
        ram = FaultyRam(AxiReadBus.from_prefix(dut, prefix), dut.clk, dut.rst, size=RAM_BYTES)
        ram.write(0, bytes(rng.getrandbits(8) for _ in range(RAM_BYTES)))
        ram.ar_channel.set_pause_generator(pauses(rng, p_ar, 6))
        ram.r_channel.set_pause_generator(pauses(rng, p_r, 12))
        rams.append(ram)
    await streams.reset(dut, inputs=("cmd",), outputs=("data",))
    return rams


def random_commands(rng, n):
    cmds = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.3:    # straddles a 4 KiB boundary
            addr = rng.randrange(1, RAM_BYTES // 4096) * 4096 - BYTES * rng.randint(1, 20)
        else:
            addr = rng.randrange(0, RAM_BYTES // BYTES) * BYTES
        beats = rng.choice([1, 2, rng.randint(1, 40), rng.randint(1, 3 * P["max_burst"])])
        beats = min(beats, (RAM_BYTES - addr) // BYTES)
        cmds.append((addr, beats, rng.getrandbits(P["tag_bits"])))
    return cmds


def expected(rams, cmds):
    out = []
    for addr, beats, tag in cmds:
        for k in range(beats):
            word = sum(int.from_bytes(ram.read(addr + k * BYTES, BYTES), "little") << (8 * BYTES * p)
                       for p, ram in enumerate(rams))
            last = int(k == beats - 1)
            out.append((word, last, tag if last else 0))
    return out


class Checker:
    """Per-cycle AXI master rules of one port (``prefix``: ``axi_`` or ``axi__<p>_``), and the
    output-stream rules (when ``stream`` is set: once per design)."""

    def __init__(self, dut, prefix="axi_", stream=True):
        self.dut = dut
        self.prefix = prefix
        self.stream = stream
        self.ar_held = None
        self.out_held = None
        self.outstanding = 0
        self.max_seen = 0
        self.bursts = []

    def sig(self, name):
        return int(getattr(self.dut, f"{self.prefix}_{name}").value)

    def sample(self, data_ready):
        d = self.dut
        arvalid, arready = self.sig("arvalid"), self.sig("arready")
        ar = tuple(self.sig(f) for f in AR_FIELDS)
        if self.ar_held is not None:
            assert arvalid, "arvalid dropped before arready"
            assert ar == self.ar_held, f"AR payload changed while waiting: {self.ar_held} -> {ar}"
        self.ar_held = ar if arvalid and not arready else None
        if arvalid and arready:
            addr, arlen, arsize, arburst, _ = ar
            beats = arlen + 1
            assert arburst == 1, f"arburst {arburst} (INCR expected)"
            assert arsize == SIZE, f"arsize {arsize} (full width {SIZE} expected)"
            assert addr % BYTES == 0, f"misaligned araddr {addr:#x}"
            assert beats <= P["max_burst"], f"arlen {arlen} exceeds max_burst {P['max_burst']}"
            assert addr // 4096 == (addr + beats * BYTES - 1) // 4096, f"burst {addr:#x}+{beats} crosses 4 KiB"
            self.bursts.append((addr, beats))
            self.outstanding += 1
        if self.sig("rvalid"):
            assert self.sig("rready"), f"{self.prefix}: rready low while rvalid (no space reserved?)"
            if self.sig("rlast"):
                self.outstanding -= 1
        self.max_seen = max(self.max_seen, self.outstanding)
        assert self.outstanding <= P["max_outstanding"], f"{self.outstanding} bursts in flight"
        if not self.stream:
            return
        if int(d.data__valid.value):
            payload = int(d.data__payload.value)
            if self.out_held is not None:
                assert payload == self.out_held, "data payload changed while stalled"
            self.out_held = None if data_ready else payload
        else:
            assert self.out_held is None, "data valid dropped while stalled"


async def run_commands(dut, rng, cmds, want, p_stall, limit=200_000):
    checkers = [Checker(dut, prefix, stream=p == 0) for p, prefix in enumerate(PREFIXES)]
    got = []
    i, cycles = 0, 0
    while len(got) < len(want):
        assert cycles < limit, f"timeout: {len(got)}/{len(want)} words after {cycles} cycles"
        if i < len(cmds):
            dut.cmd__payload.value = pack_cmd(*cmds[i])
        dut.cmd__valid.value = int(i < len(cmds))
        ready = rng.random() >= p_stall
        dut.data__ready.value = int(ready)
        await ReadOnly()
        for checker in checkers:
            checker.sample(ready)
        if i < len(cmds) and int(dut.cmd__ready.value):
            i += 1
        if ready and int(dut.data__valid.value):
            got.append(unpack_data(int(dut.data__payload.value)))
        await FallingEdge(dut.clk)
        cycles += 1
    for k, (g, e) in enumerate(zip(got, want)):
        assert g == e, f"word {k}: got {g}, expected {e}"
    await ClockCycles(dut.clk, 20)
    await ReadOnly()
    assert int(dut.data__valid.value) == 0, "data beyond the commands"
    assert int(dut.idle.value) == 1 and int(dut.error.value) == 0
    return checkers, cycles


@cocotb.test()
async def test_random_commands_random_latency(dut):
    """Random commands (4 KiB straddles, multi-burst), random AR/R pauses, consumer stalls 30 %."""
    rng = random.Random(int(os.environ.get("COCOTB_RANDOM_SEED", "1")))
    rams = await setup(dut, rng, p_ar=0.3, p_r=0.2)
    cmds = random_commands(rng, 40)
    checkers, _ = await run_commands(dut, rng, cmds, expected(rams, cmds), p_stall=0.3)
    for checker in checkers:
        bursts = [b for _, b in checker.bursts]
        assert any(b < P["max_burst"] for b in bursts) and any(b == P["max_burst"] for b in bursts)
        assert checker.max_seen >= 2, "never more than one burst in flight"


@cocotb.test()
async def test_slow_consumer_throttles_issue(dut):
    """A consumer that stalls 80 % of the time: AR issue waits for buffer space, rready never drops."""
    rng = random.Random(int(os.environ.get("COCOTB_RANDOM_SEED", "1")) + 1)
    rams = await setup(dut, rng, p_ar=0.1, p_r=0.05)
    cmds = [(0, 4 * P["buffer_words"], 1)]
    await run_commands(dut, rng, cmds, expected(rams, cmds), p_stall=0.8)


@cocotb.test()
async def test_error_response_is_flagged(dut):
    """A read past the end of the RAM comes back SLVERR: the data still flows and ``error`` is set."""
    rng = random.Random(3)
    await setup(dut, rng, p_ar=0.0, p_r=0.0)
    dut.data__ready.value = 1
    dut.cmd__payload.value = pack_cmd(RAM_BYTES, 2, 1)
    dut.cmd__valid.value = 1
    await FallingEdge(dut.clk)
    dut.cmd__valid.value = 0
    words = 0
    for _ in range(200):
        await ReadOnly()
        words += int(dut.data__valid.value)
        await FallingEdge(dut.clk)
    assert words == 2 and int(dut.error.value) == 1
