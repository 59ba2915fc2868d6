# amaranth: UnusedElaboratable=no
"""The ATTEND unit (Amaranth simulator) against the ISA simulator's ``ATTEND``, bit for bit: KV cache
segments from a DRAM model (``FastDramModel`` with the config's latency and random jitter) through the
unit's AXI reader, queries from a real activation buffer (preloaded with the ISA simulator's q values)
and the ``ATT`` buffer read back and compared with ``IsaMachine.buffers["att"]``.

Geometry of the ``tiny`` hardware config (TLMM lanes 4, attention lanes 8, query block 4, 64-bit bus),
head_dim 8; one build runs MHA and GQA commands back to back. Also head_dim 16 on a 32-bit bus (the bus
narrower than a chunk), a 1024-bit bus (wider than a chunk, 64 padding bytes per segment), buffer beats
as wide as a chunk and wider than one, a compiled model's layer (q from the ISA simulator's QKV LINEAR),
and CONFIG_MISMATCH.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from firmware.kv_cache import KvCacheLayout
from golden.isa_sim import IsaMachine
from golden.numerics import quant_pow2, score_constant
from hw.config import load_hw_config
from hw.isa import ErrorCode
from hw.memory.dram_model import FastDramModel
from hw.units.attend import AttendUnit
from hw.units.buffers import Buffer
from sim.testbenches.unit_harness import BufferHarness, bus_words, pack_lanes, unpack_lanes

HW = load_hw_config("tiny")
N = HW.tlmm.lanes
LIMIT = 40000         # cycles per command before the test calls it a hang
MAX_TOKENS = 8
CTX = 64


def _quantised(rng, shape, lo=4, hi=24):
    bits = rng.integers(lo, hi + 1, shape[:-1])
    x = rng.integers(-(1 << 30), 1 << 30, shape) >> (31 - bits[..., None])
    return quant_pow2(x)


class Dram:
    """A DRAM image holding KV caches (random K/V at every position) for several (heads, kv_heads)."""

    def __init__(self, head_dim, bus_bytes, shapes, seed, layers=2):
        rng = np.random.default_rng(seed)
        self.d, self.bus = head_dim, bus_bytes
        self.caches = {}
        addr = max(256, 4 * head_dim)     # the (all-zero) RoPE table is at 0
        parts = []
        for kvh in sorted({kv for _, kv in shapes}):
            lay = KvCacheLayout(layers, kvh, head_dim, CTX, bus_bytes=bus_bytes, base=-(-addr // 256) * 256)
            img = bytearray(lay.total_bytes)
            for layer in range(layers):
                k8, ke = _quantised(rng, (CTX, kvh, head_dim))
                v8, ve = _quantised(rng, (CTX, kvh, head_dim), 0, 31)
                img[layer * lay.layer_bytes:(layer + 1) * lay.layer_bytes] = lay.pack_layer(k8, ke, v8, ve)
            parts.append((lay.base, img))
            self.caches[kvh] = lay
            addr = lay.base + lay.total_bytes
        self.image = bytearray(addr + 256)
        for base, img in parts:
            self.image[base:base + len(img)] = img

    def setup(self, heads, kv_heads, override=None):
        lay = self.caches[kv_heads]
        m, s = score_constant(self.d)
        fields = dict(hidden=heads * self.d, layers=lay.layers, heads=heads, kv_heads=kv_heads, head_dim=self.d,
                      max_context=CTX, kv_base=lay.base, rope=0, score_m=m, score_s=s)
        fields.update(override or {})
        return fields


def isa_attend(dram, setup, layer, pos, q8, qe, lanes=N):
    """``IsaMachine.buffers["att"]`` after the ISA simulator's SETUP and ATTEND."""
    isa = IsaMachine(bytearray(dram.image), HW.tlmm.tables, lanes, dram.bus)
    isa.args = dict(n_tokens=q8.shape[0], pos=pos, logits=0, all_logits=True)
    isa.buffers, isa._pc = {}, 0
    isa._op_setup(**setup)
    isa.buffers["q"] = (q8, qe)
    isa._op_attend(layer=layer)
    return isa.buffers["att"]


def run_commands(unit_args, bus_bytes, image, commands, seed=0, p_hold=0.2, jitter=2, lanes=N, max_tokens=MAX_TOKENS):
    """Run ATTEND ``commands`` on one unit instance, back to back. Each command is a dict with ``setup``,
    ``layer``, ``pos``, ``q8``, ``qe`` and ``want`` (the expected ATT values, or ``None`` for a command
    that must fault with ``CONFIG_MISMATCH``). Returns the cycles of each command."""
    unit = AttendUnit(lanes=lanes, data_bits=8 * bus_bytes, max_tokens=max_tokens, max_context=CTX, **unit_args)
    max_heads = unit.max_group * unit.max_kv_heads
    words = max_heads * unit.head_dim // lanes
    harness = BufferHarness(lanes=lanes, max_tokens=max_tokens, max_index=unit.max_index,
                            words={Buffer.X: 2, Buffer.ATT: words, Buffer.H: 2, Buffer.Q: words})
    init = bus_words(image, bus_bytes)
    dram = FastDramModel(32, 8 * bus_bytes, depth=len(init) + 8, init=init, latency=HW.dram.latency_cycles,
                         jitter=jitter)
    m = Module()
    m.submodules.unit, m.submodules.harness, m.submodules.dram = unit, harness, dram
    wiring.connect(m, unit.axi, dram.axi)
    wiring.connect(m, unit.rd_req, harness.rd_req)
    wiring.connect(m, harness.rd_data, unit.rd_data)
    m.d.comb += unit.rd_e.eq(harness.rd_e)
    wiring.connect(m, unit.wr, harness.wr)
    rng = random.Random(seed)
    failures, cycles = [], []

    async def bench(ctx):
        for k, c in enumerate(commands):
            q8, qe = c["q8"], c["qe"]
            t, heads, d = q8.shape
            dn = d // lanes
            # Preload Q (and poison ATT, so that unwritten beats show).
            for tt in range(t):
                for i in range(heads * dn):
                    h, b = divmod(i, dn)
                    ctx.set(harness.tb_wr.payload, {"buf": Buffer.Q, "token": tt, "index": i, "e": int(qe[tt, h]),
                                                    "data": pack_lanes(q8[tt, h, b * lanes:(b + 1) * lanes])})
                    ctx.set(harness.tb_wr.valid, 1)
                    await ctx.tick()
                    ctx.set(harness.tb_wr.payload, {"buf": Buffer.ATT, "token": tt, "index": i, "e": 0,
                                                    "data": pack_lanes([0x5A5A5A5A] * lanes)})
                    await ctx.tick()
            ctx.set(harness.tb_wr.valid, 0)
            ctx.set(unit.setup, c["setup"])
            ctx.set(unit.n_tokens, t)
            ctx.set(unit.pos, c["pos"])
            ctx.set(unit.cmd.payload, {"layer": c["layer"]})
            ctx.set(unit.cmd.valid, 1)
            await ctx.tick().until(unit.cmd.ready)
            ctx.set(unit.cmd.valid, 0)
            writes = 0
            for cycle in range(LIMIT):
                ctx.set(harness.hold, int(rng.random() < p_hold))
                _, _, busy, w_v, w_r, reading = await ctx.tick().sample(unit.busy, unit.wr.valid, unit.wr.ready,
                                                                         unit.rd_req.valid)
                writes += w_v and w_r
                if c["want"] is None and reading:
                    failures.append(f"command {k}: reads the Q buffer after a fault")
                if not busy:
                    break
            else:
                failures.append(f"command {k} did not finish")
                return
            cycles.append(cycle)
            ctx.set(harness.hold, 0)
            fault = ctx.get(unit.fault)
            if c["want"] is None:
                if fault != ErrorCode.CONFIG_MISMATCH or writes:
                    failures.append(f"command {k}: fault {fault}, {writes} writes; expected CONFIG_MISMATCH and none")
                continue
            if fault != ErrorCode.NONE:
                failures.append(f"command {k}: fault {fault}")
            # Read ATT back through the buffer's read port.
            ctx.set(harness.tb_rd, 1)
            got = np.zeros((t, heads * d), np.int64)
            ctx.set(harness.tb_rd_data.ready, 1)
            for tt in range(t):
                for i in range(heads * dn):
                    ctx.set(harness.tb_rd_req.payload, {"buf": Buffer.ATT, "token": tt, "index": i})
                    ctx.set(harness.tb_rd_req.valid, 1)
                    await ctx.tick().until(harness.tb_rd_req.ready)
                    ctx.set(harness.tb_rd_req.valid, 0)
                    while not ctx.get(harness.tb_rd_data.valid):
                        await ctx.tick()
                    word = ctx.get(harness.tb_rd_data.payload)
                    await ctx.tick()          # popped (ready is high)
                    got[tt, i * lanes:(i + 1) * lanes] = unpack_lanes(int(word), lanes)
            ctx.set(harness.tb_rd, 0)
            bad = np.argwhere(got != c["want"])
            if len(bad):
                tt, col = bad[0]
                failures.append(f"command {k} (pos {c['pos']}, {t} tokens, {heads}/{c['setup']['kv_heads']} heads): "
                                f"{len(bad)} ATT values differ, first token {tt} col {col}: "
                                f"{got[tt, col]} != {c['want'][tt, col]}")

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert not failures, failures
    return cycles


def _command(dram, rng, heads, kv_heads, layer, pos, n, override=None):
    """A command and its expected ATT values; ``override``: SETUP fields that make it fault."""
    q8, qe = _quantised(rng, (n, heads, dram.d))
    setup = dram.setup(heads, kv_heads, override)
    want = None if override else isa_attend(dram, setup, layer, pos, q8, qe)
    return dict(setup=setup, layer=layer, pos=pos, q8=q8, qe=qe, want=want)


TINY = dict(head_dim=8, att_lanes=HW.attention.lanes, query_block=HW.attention.query_block, max_group=4,
            max_kv_heads=2, max_index=63)


def test_decode_prefill_and_gqa_on_one_build():
    """One build: decode at position 0 (MHA) and mid-context (GQA 4), a prefill chunk of 7 tokens from 29
    (two query tiles, across a block boundary; MHA), GQA 2 and GQA 4 chunks, then group 1 again; random
    AXI jitter and buffer stalls."""
    dram = Dram(8, HW.dram.data_bytes, [(2, 2), (4, 1), (4, 2)], seed=1)
    rng = np.random.default_rng(2)
    cmds = [
        _command(dram, rng, 2, 2, 1, 0, 1),       # decode at position 0, MHA, layer 1
        _command(dram, rng, 4, 1, 0, 45, 1),      # decode mid-context, GQA 4
        _command(dram, rng, 2, 2, 1, 29, 7),      # prefill: tiles 29..32, 33..35
        _command(dram, rng, 4, 2, 0, 50, 5),      # GQA 2, a partial second tile
        _command(dram, rng, 4, 1, 1, 13, 8),      # GQA 4, two whole tiles
        _command(dram, rng, 1, 1, 0, 62, 2),     # group 1 on the one-kv-head cache, up to the last position
    ]
    run_commands(TINY, HW.dram.data_bytes, dram.image, cmds, seed=3)


def test_runs_of_three_and_more_tiles():
    """Runs of more than two query tiles (the sequencers describe each next tile from comparisons of the
    tokens left with constants): 4 + 4 + 3, 4 + 4 + 1 and 4 + 4 + 4 tokens, MHA and GQA 2."""
    dram = Dram(8, HW.dram.data_bytes, [(2, 2), (4, 2)], seed=4)
    rng = np.random.default_rng(5)
    cmds = [
        _command(dram, rng, 2, 2, 0, 20, 11),
        _command(dram, rng, 4, 2, 1, 3, 9),
        _command(dram, rng, 2, 2, 1, 40, 12),
    ]
    run_commands(TINY, HW.dram.data_bytes, dram.image, cmds, seed=6, max_tokens=12)


@pytest.mark.parametrize("head_dim, bus_bytes", [(16, 4), (8, 128)])
def test_other_buses(head_dim, bus_bytes):
    """head_dim 16 on a 32-bit bus (4 bus words per chunk), and a 1024-bit bus (a bus word holds 16 chunks;
    each segment ends in 64 padding bytes that the gearbox drops)."""
    dram = Dram(head_dim, bus_bytes, [(2, 1), (1, 1)], seed=head_dim + bus_bytes)
    rng = np.random.default_rng(bus_bytes)
    cmds = [_command(dram, rng, 2, 1, 1, 40, 1), _command(dram, rng, 1, 1, 0, 30, 6)]
    args = dict(TINY, head_dim=head_dim, max_group=2, max_kv_heads=1)
    run_commands(args, bus_bytes, dram.image, cmds, seed=4, jitter=1)


@pytest.mark.parametrize("head_dim, lanes", [(8, 8), (16, 16)])
def test_lane_ratios(head_dim, lanes):
    """Buffer beats as wide as a chunk (8 lanes, chunk 8) and wider than one (16 lanes, chunk 8)."""
    dram = Dram(head_dim, HW.dram.data_bytes, [(2, 1)], seed=lanes)
    rng = np.random.default_rng(lanes)
    cmds = [_command(dram, rng, 2, 1, 1, 40, 1), _command(dram, rng, 2, 1, 0, 30, 5)]
    args = dict(TINY, head_dim=head_dim, max_group=2, max_kv_heads=1, max_index=15)
    run_commands(args, HW.dram.data_bytes, dram.image, cmds, seed=5, jitter=1, lanes=lanes)


def test_config_mismatch():
    """SETUP shapes the build cannot run are refused with CONFIG_MISMATCH; nothing is read or written, and
    the next good command runs with the fault cleared."""
    dram = Dram(8, HW.dram.data_bytes, [(2, 2), (4, 1)], seed=5)
    rng = np.random.default_rng(6)
    m, s = score_constant(8)
    cmds = [
        _command(dram, rng, 2, 2, 0, 3, 1, override=dict(heads=3)),            # heads not a whole group of kv heads
        _command(dram, rng, 2, 2, 0, 3, 1, override=dict(head_dim=16)),        # head_dim differs from the build's
        _command(dram, rng, 4, 1, 0, 3, 1, override=dict(heads=8)),            # group 8 > max_group 4
        _command(dram, rng, 2, 2, 0, 3, 1, override=dict(score_m=m + 1)),      # not score_constant(head_dim)
        _command(dram, rng, 2, 2, 0, 3, 1, override=dict(score_s=s - 1)),
        _command(dram, rng, 2, 2, 0, 3, 1, override=dict(max_context=96)),     # beyond the build's max_context
        _command(dram, rng, 2, 2, 0, 3, 2),                     # a good one: runs, fault cleared
    ]
    run_commands(TINY, HW.dram.data_bytes, dram.image, cmds, seed=7)


def test_compiled_layer_matches_isa_simulator():
    """A compiled model's first layer: q from the ISA simulator's QKV LINEAR (whose K/V are in the cache),
    earlier positions filled with random K/V, then ATTEND for a 6-token chunk from position 21 (GQA 3)."""
    from firmware.compiler import compile_model
    from test_linear_unit import _model

    model = _model("relu2", 3, 1)
    cm = compile_model(model, HW, max_context=CTX, max_chunk=8)
    c = model.config
    pos, n = 21, 6
    isa = IsaMachine(bytearray(cm.image), HW.tlmm.tables, N, HW.dram.data_bytes)
    isa.args = dict(n_tokens=n, pos=pos, logits=cm.logits_addr, all_logits=True)
    isa.token_ids = np.random.default_rng(1).integers(0, c.vocab_size, n)
    isa.buffers, isa._pc = {}, 0
    setup = cm.instructions[0][1]
    isa._op_setup(**setup)
    rng = np.random.default_rng(8)
    for p in range(pos):
        k8, ke = _quantised(rng, (1, 1, 8))
        v8, ve = _quantised(rng, (1, 1, 8), 0, 31)
        for addr, data in cm.kv.token_writes(0, p, k8[0], ke[0], v8[0], ve[0]):
            isa._write(addr, data)
    isa._op_embed(**cm.instructions[1][1])
    isa._op_linear(**cm.instructions[2][1])
    image = bytes(isa.dram)
    q8, qe = isa.buffers["q"]
    isa._op_attend(**cm.instructions[3][1])
    cmd = dict(setup=setup, layer=cm.instructions[3][1]["layer"], pos=pos, q8=q8, qe=qe, want=isa.buffers["att"])
    run_commands(TINY, HW.dram.data_bytes, image, [cmd], seed=9)


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="not a multiple of lanes"):
        AttendUnit(**dict(TINY, head_dim=6), lanes=4, data_bits=64, max_tokens=8, max_context=64)
    with pytest.raises(ValueError, match="data_bits must be a power of two"):
        AttendUnit(**TINY, lanes=4, data_bits=96, max_tokens=8, max_context=64)
    with pytest.raises(ValueError, match="max_index must be"):
        AttendUnit(**dict(TINY, max_index=10), lanes=4, data_bits=64, max_tokens=8, max_context=64)
