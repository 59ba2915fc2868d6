# amaranth: UnusedElaboratable=no
"""Memory-system parts in the Amaranth simulator: gearbox, burst reader against the fast DRAM model,
and the model's latency and bandwidth. Small and quick; the Verilator tests cover the full paths."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.sim import Simulator

from hw.memory import AxiBurstReader, FastDramModel, Gearbox, WeightBufferManager
from hw.memory.axi_group import AxiReaderGroup, port_split
from hw.memory.lut_feed import LutWordFeed


def run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def gearbox_segments(rng, in_bits, out_bits, n):
    """``n`` random segments of whole output words, cut into input words whose top padding bytes
    (the flush word's ``pad``) hold random garbage. Returns (input beats, expected output words)."""
    beats, want = [], []
    for _ in range(n):
        words = [rng.getrandbits(out_bits) for _ in range(rng.randint(1, 9))]
        bits = sum(w << (k * out_bits) for k, w in enumerate(words))
        n_in = -(-len(words) * out_bits // in_bits)
        pad = (n_in * in_bits - len(words) * out_bits) // 8
        bits |= rng.getrandbits(8 * pad) << (len(words) * out_bits)       # garbage in the padding
        for k in range(n_in):
            last = k == n_in - 1
            beats.append({"data": (bits >> (k * in_bits)) & ((1 << in_bits) - 1), "flush": int(last),
                          "pad": pad if last else 0})
        want += words
    return beats, want


@pytest.mark.parametrize("in_bits,out_bits", [(64, 80), (16, 40), (64, 24), (32, 32), (24, 64), (192, 80), (768, 2240),
                                               (32, 160), (32, 128), (16, 32)])   # the last three: whole input words
def test_gearbox_repacks_with_flush_and_stalls(in_bits, out_bits):
    """Segments of whole output words; wide inputs (192 -> 80) carry whole output words of padding,
    which must not come out."""
    rng = random.Random(in_bits * 1000 + out_bits)
    beats, want = gearbox_segments(rng, in_bits, out_bits, 6)
    dut = Gearbox(in_bits, out_bits)
    got = []

    async def bench(ctx):
        i = 0
        for _ in range(20 * len(beats) + 40 * len(want) + 200):
            if i < len(beats) and rng.random() < 0.7:
                ctx.set(dut.i.payload, beats[i])
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


@pytest.mark.parametrize("in_bits,out_bits", [(64, 80), (32, 160)])
def test_gearbox_full_rate(in_bits, out_bits):
    """An always-ready consumer: the gearbox takes an input word every cycle."""
    dut = Gearbox(in_bits, out_bits)
    accepted = []

    async def bench(ctx):
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.o.ready, 1)
        for cycle in range(100):
            ctx.set(dut.i.payload, {"data": cycle, "flush": 0, "pad": 0})
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


# --- Port groups (several AXI4 ports striped into one wide word stream) ------------------------------

class GroupWithDrams(wiring.Component):
    def __init__(self, group, drams):
        self.group, self.drams = group, drams
        super().__init__({"cmd": wiring.In(stream.Signature(group.cmd_layout)),
                          "data": wiring.Out(stream.Signature(group.data_layout))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.group = self.group
        for p, dram in enumerate(self.drams):
            m.submodules[f"dram{p}"] = dram
            wiring.connect(m, self.group.axi[p], dram.axi)
        wiring.connect(m, wiring.flipped(self.cmd), self.group.cmd)
        wiring.connect(m, self.group.data, wiring.flipped(self.data))
        return m


def test_port_split():
    assert port_split(64) == (1, 64) and port_split(768) == (3, 256) and port_split(320) == (5, 64)
    assert port_split(2048) == (2, 1024)
    with pytest.raises(ValueError, match="multiple of ports"):
        AxiReaderGroup(32, 200, ports=3, buffer_words=64)
    with pytest.raises(ValueError, match="power of two"):
        AxiReaderGroup(32, 288, ports=3, buffer_words=64)         # 3 x 96 bits
    with pytest.raises(ValueError, match="power of two"):
        WeightBufferManager(80, data_bits=192, buffer_words=64)    # one port of 192 bits
    assert WeightBufferManager(80, data_bits=192, buffer_words=64, ports=3).axi_signature.data_bits == 64


@pytest.mark.parametrize("jitter", [0, 3])
def test_reader_group_stripes_and_joins(jitter):
    """Three 64-bit ports as one 192-bit stream: port-local addresses, 4 KiB cuts in every port, ports
    with different latencies and jitter seeds (so they take commands and return data at different
    times), a stalling consumer. Wide word j = the three ports' word j, port 0 in the low bits."""
    rng = random.Random(10 + jitter)
    P, depth = 3, 1024
    words = [[rng.getrandbits(64) for _ in range(depth)] for _ in range(P)]
    group = AxiReaderGroup(32, 64 * P, ports=P, buffer_words=40, max_burst=16, max_outstanding=3, beats_bits=12,
                           tag_bits=2)
    drams = [FastDramModel(32, 64, depth=depth, init=words[p], latency=4 + 5 * p, jitter=jitter,
                           bytes_per_cycle=8 - 2 * p, seed=1 + 77 * p) for p in range(P)]
    dut = GroupWithDrams(group, drams)
    cmds = [(4096 - 8 * 5, 12, 1), (0, 1, 2), (8 * 100, 40, 3), (8 * 7, 0, 1), (8 * 500, 30, 0), (8, 2, 3)]
    want = []
    for addr, n, tag in cmds:
        for k in range(n):
            j = addr // 8 + k
            wide = sum(words[p][j] << (64 * p) for p in range(P))
            want.append((wide, int(k == n - 1), tag if k == n - 1 else None))
    got = []

    async def bench(ctx):
        i = 0
        for _ in range(4000):
            if len(got) == len(want):
                break
            if i < len(cmds):
                ctx.set(dut.cmd.payload, dict(zip(("addr", "beats", "tag"), cmds[i])))
            ctx.set(dut.cmd.valid, int(i < len(cmds)))
            ctx.set(dut.data.ready, int(rng.random() < 0.6))
            _, _, cr, cv, dv, dr, dp, *rv = await ctx.tick().sample(
                dut.cmd.ready, dut.cmd.valid, dut.data.valid, dut.data.ready, dut.data.payload,
                *(group.axi[p].rvalid for p in range(P)), *(group.axi[p].rready for p in range(P)))
            if cv and cr:
                i += 1
            if dv and dr:
                got.append((dp.data, dp.last, dp.tag if dp.last else None))
            for p in range(P):
                assert not rv[p] or rv[P + p], f"port {p}: rready low with rvalid"
        for p in range(P):
            assert ctx.get(drams[p].violation) == 0
        assert ctx.get(group.error) == 0 and ctx.get(group.idle) == 1

    run(dut, bench)
    assert got == want


# --- The lutram engine's word feed ------------------------------------------------------------------

def lut_feed_model(mats, words, R):
    """Expected (word, slot, first, last, done) steps for matrices [(row_tiles, k_steps, tokens)]."""
    out, it = [], iter(words)
    for row_tiles, k_steps, tokens in mats:
        for b0 in range(0, row_tiles, R):
            rows = min(R, row_tiles - b0)
            for ks in range(k_steps):
                block = [next(it) for _ in range(rows)]
                for t in range(tokens):
                    out += [(block[r], t * R + r, int(ks == 0), int(ks == k_steps - 1), int(r == rows - 1))
                            for r in range(rows)]
    return out


@pytest.mark.parametrize("fifo_words", [0, 4])
def test_lut_feed_walks_and_replays(fifo_words):
    """Random matrices (partial last blocks, one k-step, one token, max tokens), words arriving with
    gaps, a stalling engine: each word is taken once and replayed for every token of the chunk."""
    rng = random.Random(fifo_words)
    R, max_tok = 3, 4
    mats = [(7, 2, 3), (1, 1, 1), (3, 4, 4), (5, 1, 2), (6, 3, 1)]
    n_words = sum(rt * ks for rt, ks, _ in mats)
    words = [rng.getrandbits(80) for _ in range(n_words)]
    want = lut_feed_model(mats, words, R)
    dut = LutWordFeed(4, 4, block_rows=R, max_tokens=max_tok, fifo_words=fifo_words)
    got = []

    async def bench(ctx):
        i = w = 0
        for _ in range(20 * len(want)):
            if len(got) == len(want):
                break
            if i < len(mats):
                ctx.set(dut.desc.payload, dict(zip(("row_tiles", "k_steps", "tokens"), mats[i])))
            ctx.set(dut.desc.valid, int(i < len(mats)))
            wv = w < len(words) and rng.random() < 0.7
            if wv:
                ctx.set(dut.words.payload, words[w])
            ctx.set(dut.words.valid, int(wv))
            ctx.set(dut.steps.ready, int(rng.random() < 0.7))
            _, _, dv, dr, wvv, wr, sv, sr, sp = await ctx.tick().sample(
                dut.desc.valid, dut.desc.ready, dut.words.valid, dut.words.ready, dut.steps.valid, dut.steps.ready,
                dut.steps.payload)
            if dv and dr:
                i += 1
            if wvv and wr:
                w += 1
            if sv and sr:
                got.append((sp.word, sp.slot, sp.first, sp.last, sp.done))
                assert sp.shift == 0 and sp.negate == 0
        assert w == len(words) and i == len(mats)

    run(dut, bench)
    assert got == want


def test_lut_feed_parameters():
    with pytest.raises(ValueError, match="block_rows"):
        LutWordFeed(4, 4, block_rows=0, max_tokens=4)
    assert LutWordFeed(4, 4, block_rows=16, max_tokens=8).slots == 128


def test_strip_zero_memory_init():
    """sim.clocked drops all-zero word initialisers of ``initial`` blocks only (Verilator zeroes them
    anyway); non-zero words and zero assignments outside ``initial`` blocks stay."""
    from sim.clocked import strip_zero_memory_init

    text = ("  reg [7:0] r = 8'h00;\n  initial begin\n    mem[0] = 8'h00;\n    mem[1] = 8'h5a;\n"
            "    \\x$y [12] = 16'h0000;\n  end\n  always @* begin\n    t[3] = 1'h0;\n  end\n")
    assert strip_zero_memory_init(text) == ("  reg [7:0] r = 8'h00;\n  initial begin\n    mem[1] = 8'h5a;\n"
                                            "  end\n  always @* begin\n    t[3] = 1'h0;\n  end\n")
