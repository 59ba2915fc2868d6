"""cocotb testbench of ``hw.memory.axi_write.AxiBurstWriter`` against cocotbext-axi's ``AxiRamWrite``, on
Verilator.

Environment (from ``run_cocotb(extra_env=...)``):

``AXI_PARAMS``
    JSON: ``addr_bits``, ``data_bits``, ``max_burst``, ``max_outstanding``, ``beats_bits`` of the writer.

The RAM stalls ``awready``, ``wready`` and ``bvalid`` at random in runs (cocotbext-axi pause generators),
and the producer of the data stream pauses at random. Every cycle a checker verifies the AXI4 master
rules: AW payload stable while ``awvalid`` waits and ``awvalid`` held; INCR, full width, aligned, at
most ``max_burst`` beats, no 4 KiB crossing; W ``wvalid`` held and ``wdata``/``wlast`` stable while
waiting, all strobes set, ``wlast`` exactly on each burst's last beat, no W beat for a burst whose
address has not gone out; at most ``max_outstanding`` bursts without a B response; ``bready`` high.
At the end the RAM must hold exactly the words written, in command order, and nothing else.
"""

import json
import os
import random

import cocotb
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly
from cocotbext.axi import AxiRamWrite, AxiWriteBus

from sim import cocotb_streams as streams

P = json.loads(os.environ["AXI_PARAMS"])
BYTES = P["data_bits"] // 8
SIZE = BYTES.bit_length() - 1
RAM_BYTES = 1 << 16
AW_FIELDS = ("awaddr", "awlen", "awsize", "awburst", "awid")


def pack_cmd(addr, beats):
    return addr | (beats << P["addr_bits"])


def pauses(rng, p_pause, max_run):
    while True:
        if rng.random() < p_pause:
            yield from [True] * rng.randint(1, max_run)
        else:
            yield False


class FaultyRam(AxiRamWrite):
    """The AXI RAM, answering SLVERR for writes beyond its size."""

    async def _write(self, address, data):
        if address + len(data) > RAM_BYTES:
            raise IndexError(f"write beyond the RAM at {address:#x}")
        return await super()._write(address, data)


async def setup(dut, rng, p_aw, p_w, p_b):
    ram = FaultyRam(AxiWriteBus.from_prefix(dut, "axi_"), dut.clk, dut.rst, size=RAM_BYTES)
    ram.write(0, bytes(RAM_BYTES))
    ram.aw_channel.set_pause_generator(pauses(rng, p_aw, 6))
    ram.w_channel.set_pause_generator(pauses(rng, p_w, 8))
    ram.b_channel.set_pause_generator(pauses(rng, p_b, 10))
    await streams.reset(dut, inputs=("cmd", "data"))
    return ram


def random_commands(rng, n):
    """Non-overlapping commands (so the final RAM contents are well defined), some straddling 4 KiB."""
    cmds, used = [], set()
    while len(cmds) < n:
        if rng.random() < 0.3:
            addr = rng.randrange(1, RAM_BYTES // 4096) * 4096 - BYTES * rng.randint(1, 20)
        else:
            addr = rng.randrange(0, RAM_BYTES // BYTES) * BYTES
        beats = rng.choice([1, 2, rng.randint(1, 40), rng.randint(1, 3 * P["max_burst"])])
        beats = min(beats, (RAM_BYTES - addr) // BYTES)
        words = set(range(addr // BYTES, addr // BYTES + beats))
        if words & used:
            continue
        used |= words
        cmds.append((addr, beats))
    return cmds


class Checker:
    def __init__(self, dut):
        self.dut = dut
        self.aw_held = None
        self.w_held = None
        self.pending = []          # beats of bursts whose address went out, W not finished
        self.beat = 0
        self.outstanding = 0
        self.max_seen = 0
        self.bursts = []
        self.writes = 0

    def sig(self, name):
        return int(getattr(self.dut, f"axi__{name}").value)

    def sample(self):
        awvalid, awready = self.sig("awvalid"), self.sig("awready")
        aw = tuple(self.sig(f) for f in AW_FIELDS)
        if self.aw_held is not None:
            assert awvalid, "awvalid dropped before awready"
            assert aw == self.aw_held, f"AW payload changed while waiting: {self.aw_held} -> {aw}"
        self.aw_held = aw if awvalid and not awready else None
        if awvalid and awready:
            addr, awlen, awsize, awburst, _ = aw
            beats = awlen + 1
            assert awburst == 1 and awsize == SIZE, (awburst, awsize)
            assert addr % BYTES == 0, f"misaligned awaddr {addr:#x}"
            assert beats <= P["max_burst"], f"awlen {awlen} exceeds max_burst"
            assert addr // 4096 == (addr + beats * BYTES - 1) // 4096, f"burst {addr:#x}+{beats} crosses 4 KiB"
            self.bursts.append((addr, beats))
            self.pending.append(beats)
            self.outstanding += 1
        wvalid, wready = self.sig("wvalid"), self.sig("wready")
        w = (self.sig("wdata"), self.sig("wlast"), self.sig("wstrb"))
        if self.w_held is not None:
            assert wvalid, "wvalid dropped before wready"
            assert w == self.w_held, "W payload changed while waiting"
        self.w_held = w if wvalid and not wready else None
        if wvalid:
            assert w[2] == (1 << BYTES) - 1, f"wstrb {w[2]:#x}"
            # The W beat may share its cycle with its burst's AW handshake (counted just above).
            assert self.pending, "W beat before its burst's address"
            assert w[1] == int(self.beat == self.pending[0] - 1), \
                f"wlast {w[1]} on beat {self.beat} of a {self.pending[0]}-beat burst"
        if wvalid and wready:
            self.writes += 1
            self.beat += 1
            if w[1]:
                self.pending.pop(0)
                self.beat = 0
        assert self.sig("bready"), "bready low"
        if self.sig("bvalid"):
            self.outstanding -= 1
        assert 0 <= self.outstanding <= P["max_outstanding"], f"{self.outstanding} bursts without response"
        self.max_seen = max(self.max_seen, self.outstanding)


async def run_writes(dut, rng, cmds, words, p_stall, limit=200_000):
    checker = Checker(dut)
    i = j = cycles = 0
    while checker.writes < len(words) or checker.outstanding:
        assert cycles < limit, f"timeout: {checker.writes}/{len(words)} beats after {cycles} cycles"
        if i < len(cmds):
            dut.cmd__payload.value = pack_cmd(*cmds[i])
        dut.cmd__valid.value = int(i < len(cmds))
        # Data valid, once raised, holds until taken (stream rule).
        if j < len(words) and (int(dut.data__valid.value) or rng.random() >= p_stall):
            dut.data__payload.value = words[j]
            dut.data__valid.value = 1
        else:
            dut.data__valid.value = 0
        await ReadOnly()
        checker.sample()
        if i < len(cmds) and int(dut.cmd__ready.value):
            i += 1
        if j < len(words) and int(dut.data__valid.value) and int(dut.data__ready.value):
            j += 1
        await FallingEdge(dut.clk)
        cycles += 1
    dut.data__valid.value = 0
    await ClockCycles(dut.clk, 5)
    await ReadOnly()
    assert int(dut.idle.value) == 1
    await FallingEdge(dut.clk)
    return checker


@cocotb.test()
async def test_random_writes(dut):
    """Random commands (4 KiB straddles, multi-burst), random AW/W/B pauses, a pausing producer."""
    rng = random.Random(int(os.environ.get("COCOTB_RANDOM_SEED", "1")))
    ram = await setup(dut, rng, p_aw=0.3, p_w=0.2, p_b=0.3)
    cmds = random_commands(rng, 30)
    words = [rng.getrandbits(8 * BYTES) for _ in range(sum(b for _, b in cmds))]
    checker = await run_writes(dut, rng, cmds, words, p_stall=0.3)
    want = bytearray(RAM_BYTES)
    k = 0
    for addr, beats in cmds:
        for b in range(beats):
            want[addr + b * BYTES:addr + (b + 1) * BYTES] = words[k].to_bytes(BYTES, "little")
            k += 1
    got = ram.read(0, RAM_BYTES)
    for a in range(0, RAM_BYTES, BYTES):
        assert got[a:a + BYTES] == want[a:a + BYTES], \
            f"word at {a:#x}: {got[a:a + BYTES].hex()} != {want[a:a + BYTES].hex()}"
    beats = [b for _, b in checker.bursts]
    assert any(b == P["max_burst"] for b in beats) and any(b < P["max_burst"] for b in beats)
    assert checker.max_seen >= 2, "never more than one burst awaiting its response"
    assert int(dut.error.value) == 0


@cocotb.test()
async def test_slow_responses_limit_outstanding(dut):
    """B responses held back most of the time: the writer stops at max_outstanding bursts."""
    rng = random.Random(int(os.environ.get("COCOTB_RANDOM_SEED", "1")) + 1)
    await setup(dut, rng, p_aw=0.0, p_w=0.0, p_b=0.9)
    cmds = [(0, 6 * P["max_burst"] * P["max_outstanding"])]
    words = [rng.getrandbits(8 * BYTES) for _ in range(cmds[0][1])]
    checker = await run_writes(dut, rng, cmds, words, p_stall=0.0)
    assert checker.max_seen == P["max_outstanding"]


@cocotb.test()
async def test_error_response_is_flagged(dut):
    """A write past the end of the RAM is answered SLVERR: ``error`` goes high and stays."""
    rng = random.Random(3)
    await setup(dut, rng, p_aw=0.0, p_w=0.0, p_b=0.0)
    await run_writes(dut, rng, [(RAM_BYTES, 2)], [1, 2], p_stall=0.0)
    assert int(dut.error.value) == 1
    await run_writes(dut, rng, [(0, 1)], [3], p_stall=0.0)
    assert int(dut.error.value) == 1, "error is sticky"
