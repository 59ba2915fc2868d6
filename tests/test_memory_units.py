# amaranth: UnusedElaboratable=no
"""Memory-system parts in the Amaranth simulator: gearbox, burst reader against the fast DRAM model,
and the model's latency and bandwidth. Small and quick; the Verilator tests cover the full paths."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.sim import Simulator

from hw.memory import AxiBurstReader, FastDramModel, Gearbox, WeightBufferManager


def run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def gearbox_model(segments, in_bits, out_bits):
    """Expected output words: each segment's bits (input words, LSB first) cut into whole words."""
    out = []
    for seg in segments:
        bits = 0
        for k, w in enumerate(seg):
            bits |= w << (k * in_bits)
        n = len(seg) * in_bits // out_bits
        out += [(bits >> (j * out_bits)) & ((1 << out_bits) - 1) for j in range(n)]
    return out


@pytest.mark.parametrize("in_bits,out_bits", [(64, 80), (16, 40), (64, 24), (32, 32), (24, 64)])
def test_gearbox_repacks_with_flush_and_stalls(in_bits, out_bits):
    rng = random.Random(in_bits * 1000 + out_bits)
    segments = [[rng.getrandbits(in_bits) for _ in range(rng.randint(1, 9))] for _ in range(6)]
    beats = [(w, int(k == len(seg) - 1)) for seg in segments for k, w in enumerate(seg)]
    want = gearbox_model(segments, in_bits, out_bits)
    dut = Gearbox(in_bits, out_bits)
    got = []

    async def bench(ctx):
        i = 0
        for _ in range(20 * len(beats) + 200):
            if i < len(beats) and rng.random() < 0.7:
                ctx.set(dut.i.payload, {"data": beats[i][0], "flush": beats[i][1]})
                ctx.set(dut.i.valid, 1)
            else:
                ctx.set(dut.i.valid, 0)
            ctx.set(dut.o.ready, int(rng.random() < 0.7))
            _, _, iv, ir, ov, orr, op = await ctx.tick().sample(dut.i.valid, dut.i.ready, dut.o.valid,
                                                                dut.o.ready, dut.o.payload)
            if iv and ir:
                i += 1
            if ov and orr:
                got.append(op)
        assert i == len(beats)

    run(dut, bench)
    assert got == want


def test_gearbox_full_rate():
    """64 -> 80 bits with an always-ready consumer takes an input word every cycle."""
    dut = Gearbox(64, 80)
    accepted = []

    async def bench(ctx):
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.o.ready, 1)
        for cycle in range(100):
            ctx.set(dut.i.payload, {"data": cycle, "flush": 0})
            _, _, ir = await ctx.tick().sample(dut.i.ready)
            accepted.append(ir)

    run(dut, bench)
    assert all(accepted)


class ReaderWithDram(wiring.Component):
    def __init__(self, reader, dram):
        self.reader, self.dram = reader, dram
        super().__init__({"cmd": wiring.In(stream.Signature(reader.cmd_layout)),
                          "data": wiring.Out(stream.Signature(reader.data_layout))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader, m.submodules.dram = self.reader, self.dram
        wiring.connect(m, self.reader.axi, self.dram.axi)
        wiring.connect(m, wiring.flipped(self.cmd), self.reader.cmd)
        wiring.connect(m, self.reader.data, wiring.flipped(self.data))
        return m


@pytest.mark.parametrize("jitter", [0, 3])
def test_reader_against_fast_model(jitter):
    """Commands crossing 4 KiB boundaries, bursts limited to 16 beats, a stalling consumer."""
    rng = random.Random(jitter)
    words = [rng.getrandbits(64) for _ in range(2048)]
    reader = AxiBurstReader(32, 64, buffer_words=48, max_burst=16, max_outstanding=3, beats_bits=12)
    dram = FastDramModel(32, 64, depth=2048, init=words, latency=6, jitter=jitter)
    dut = ReaderWithDram(reader, dram)
    cmds = [(4096 - 8 * 5, 12, 1), (0, 1, 0), (8 * 100, 40, 1), (8 * 511, 3, 0), (8 * 7, 0, 1), (8 * 1000, 70, 1)]
    want = []
    for addr, n, tag in cmds:
        for k in range(n):
            want.append((words[addr // 8 + k], int(k == n - 1), tag if k == n - 1 else None))
    got, bursts, outstanding_max = [], [], [0]

    async def bench(ctx):
        i, outstanding = 0, 0
        for _ in range(3000):
            if len(got) == len(want):
                break
            if i < len(cmds):
                ctx.set(dut.cmd.payload, dict(zip(("addr", "beats", "tag"), cmds[i])))
            ctx.set(dut.cmd.valid, int(i < len(cmds)))
            ctx.set(dut.data.ready, int(rng.random() < 0.6))
            sampled = await ctx.tick().sample(dut.cmd.ready, dut.data.valid, dut.data.ready, dut.data.payload,
                                               reader.axi.arvalid, reader.axi.arready, reader.axi.araddr,
                                               reader.axi.arlen, reader.axi.rvalid, reader.axi.rready,
                                               reader.axi.rlast)
            _, _, cr, dv, dr, dp, arv, arr, araddr, arlen, rv, rr, rl = sampled
            if i < len(cmds) and cr:
                i += 1
            if dv and dr:
                got.append((dp.data, dp.last, dp.tag if dp.last else None))
            if arv and arr:
                bursts.append((araddr, arlen + 1))
                outstanding += 1
            if rv:
                assert rr, "rready dropped with data in flight"
                if rl:
                    outstanding -= 1
            outstanding_max[0] = max(outstanding_max[0], outstanding)
        assert ctx.get(dram.violation) == 0
        assert ctx.get(reader.error) == 0

    run(dut, bench)
    assert got == want
    for addr, n in bursts:
        assert n <= 16 and addr // 4096 == (addr + 8 * n - 1) // 4096, (addr, n)
    assert outstanding_max[0] >= 2


@pytest.mark.parametrize("latency,bpc,expect_rate", [(2, 8, 1.0), (20, 8, 1.0), (9, 4, 0.5), (5, 2.5, 2.5 / 8)])
def test_fast_model_latency_and_bandwidth(latency, bpc, expect_rate):
    """First beat exactly `latency` cycles after the AR handshake; then beats at bpc / bus bytes."""
    reader = AxiBurstReader(32, 64, buffer_words=256, max_burst=64, max_outstanding=4, beats_bits=12)
    dram = FastDramModel(32, 64, depth=512, init=range(512), latency=latency, bytes_per_cycle=bpc)
    dut = ReaderWithDram(reader, dram)
    n = 120
    seen = {}

    async def bench(ctx):
        ctx.set(dut.cmd.payload, {"addr": 0, "beats": n, "tag": 0})
        ctx.set(dut.cmd.valid, 1)
        ctx.set(dut.data.ready, 1)
        beats = []
        for cycle in range(2000):
            _, _, cr, arv, arr, rv, rr = await ctx.tick().sample(dut.cmd.ready, reader.axi.arvalid,
                                                                  reader.axi.arready, reader.axi.rvalid,
                                                                  reader.axi.rready)
            if cr:
                ctx.set(dut.cmd.valid, 0)
            if arv and arr and "ar" not in seen:
                seen["ar"] = cycle
            if rv and rr:
                beats.append(cycle)
                if len(beats) == n:
                    break
        seen["beats"] = beats

    run(dut, bench)
    beats = seen["beats"]
    assert len(beats) == n
    assert beats[0] - seen["ar"] == latency
    rate = (n - 1) / (beats[-1] - beats[0])
    assert abs(rate - expect_rate) < 0.01, rate


def test_weight_buffer_manager_parameters():
    with pytest.raises(ValueError, match="buffer_words"):
        WeightBufferManager(80, data_bits=64, buffer_words=2)
    with pytest.raises(ValueError, match="power of two"):
        WeightBufferManager(80, data_bits=96, buffer_words=1024)
    with pytest.raises(ValueError, match="latency"):
        FastDramModel(32, 64, depth=16, latency=1)
    assert WeightBufferManager(80, data_bits=64, buffer_words=64).max_burst == 32
