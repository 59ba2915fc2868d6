# amaranth: UnusedElaboratable=no
"""The EMBED unit (Amaranth simulator) against golden ``saturate(round_shift(q * m16, -(e + 16)), 32)``:
token ids and padded embedding rows read from a DRAM model, hidden sizes not a multiple of the lanes,
row scales that shift left (saturating) and right by up to 44 bits, zero rows, random output stalls, an
out-of-range id (the ``BAD_TOKEN`` fault, nothing emitted), and the row read addresses for ids and strides
beyond 2^18 (the split of ``id * stride`` into multiplier pieces)."""

import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from golden.fixed import round_shift, saturate
from golden.numerics import RES_FRAC, RowQuant
from hw.dram_format import embedding_stride, pack_embedding
from hw.isa import ErrorCode
from hw.memory.dram_model import FastDramModel
from hw.units.embed import EmbedUnit


def golden_embed(rq, ids):
    q = rq.q[ids].astype(np.int64)
    return saturate(round_shift(q * rq.m16[ids, None], -(rq.e[ids, None] + RES_FRAC)), 32)


def make_table(rng, vocab, hidden):
    q = rng.integers(-32767, 32768, (vocab, hidden)).astype(np.int16)
    m16 = rng.integers(1 << 15, 1 << 16, vocab)
    e = rng.integers(-60, 17, vocab)            # right shifts up to 44, left shifts up to 32 (saturating)
    e[:3] = [-31, 16, -49]
    q[1, :] = 32767                             # saturates at e = 16
    m16[4] = 0                                  # an all-zero row scale
    return RowQuant(q=q, m16=m16, e=e, bits=16)


def simulate(rq, ids, *, data_bits, lanes, hidden, max_tokens=8, p_stall=0.3, seed=0):
    bus = data_bits // 8
    align = max(64, bus)
    stride = embedding_stride(hidden, align)
    table = pack_embedding(rq, stride)
    tokens_at = 0
    table_at = align * (-(-(4 * max_tokens) // align))
    image = bytearray(table_at + len(table) + 4 * align)
    image[tokens_at:tokens_at + 4 * len(ids)] = np.asarray(ids, "<i4").tobytes()
    image[table_at:table_at + len(table)] = table
    words = [int.from_bytes(image[i:i + bus], "little") for i in range(0, len(image), bus)]
    unit = EmbedUnit(data_bits=data_bits, lanes=lanes, max_hidden=hidden + 3, max_tokens=max_tokens)
    dram = FastDramModel(32, data_bits, depth=len(words), init=words, latency=5)
    m = Module()
    m.submodules.unit, m.submodules.dram = unit, dram
    wiring.connect(m, unit.axi, dram.axi)
    rng = random.Random(seed)
    got, state = [], {}

    async def bench(ctx):
        ctx.set(unit.hidden, hidden)
        ctx.set(unit.tokens, tokens_at)
        ctx.set(unit.n_tokens, len(ids))
        ctx.set(unit.cmd.payload, {"table": table_at, "rows": rq.q.shape[0], "stride": stride})
        ctx.set(unit.cmd.valid, 1)
        await ctx.tick().until(unit.cmd.ready)
        ctx.set(unit.cmd.valid, 0)
        await ctx.tick()
        for cycle in range(20000):
            ready = int(rng.random() >= p_stall)
            ctx.set(unit.x.ready, ready)
            _, _, valid, pay, busy = await ctx.tick().sample(unit.x.valid, unit.x.payload, unit.busy)
            if valid and ready:
                got.append((int(pay.token), int(pay.beat), [int(pay.data[f"lane{n}"]) for n in range(lanes)]))
            if not busy:
                break
        else:
            raise AssertionError("unit never went idle")
        state["fault"] = ctx.get(unit.fault)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got, state["fault"]


@pytest.mark.parametrize("data_bits, lanes, hidden, n", [
    (64, 4, 32, 3),      # tiny config
    (64, 4, 30, 2),      # hidden not a multiple of the lanes: the last beat has 2 live lanes
    (32, 2, 11, 5),      # narrow bus, odd hidden, more tokens than ids per bus word
    (256, 8, 40, 8),     # wide bus: ids and several values per word; n a multiple of the ids per word
    (128, 16, 20, 1),    # more lanes than values in a bus word
])
def test_embed_matches_golden(data_bits, lanes, hidden, n):
    rng = np.random.default_rng(hidden * n)
    rq = make_table(rng, 37, hidden)
    # Out of order: a row read may run into the next row, and those bytes must not leak into the next id.
    ids = [2, 0, 4, 1, *rng.integers(0, 37, 8)][:n] if n > 1 else [1]
    got, fault = simulate(rq, ids, data_bits=data_bits, lanes=lanes, hidden=hidden, seed=n)
    assert fault == ErrorCode.NONE
    want = golden_embed(rq, np.array(ids))
    beats = -(-hidden // lanes)
    assert [(t, b) for t, b, _ in got] == [(t, b) for t in range(n) for b in range(beats)]
    for t, b, vals in got:
        for i, v in enumerate(vals):
            col = b * lanes + i
            assert v == (int(want[t, col]) if col < hidden else 0), (t, col)
    flat = want.reshape(-1)
    if 1 in ids:
        assert (1 << 31) - 1 in flat        # the saturating row took part


def test_bad_token_faults_and_emits_nothing():
    rng = np.random.default_rng(1)
    rq = make_table(rng, 10, 8)
    got, fault = simulate(rq, [3, 10, 2], data_bits=64, lanes=4, hidden=8)
    assert fault == ErrorCode.BAD_TOKEN and got == []


def test_row_addresses_wrap_with_large_ids_and_strides():
    """The row address ``table + id * stride`` (mod 2^32) is split into multiplier pieces at bit 18 of the id
    and of the stride; the tables above stay below both. Here a bus responder answers the id burst with the
    ids and every row read with zeros, and the row reads' addresses are checked."""
    bus, table, rows, stride = 8, 0x12345640, (1 << 24) - 1, (1 << 20) - 64
    ids = [rows - 1, (1 << 18) - 1, 1 << 18, 5, 0xABCDEF, 0]
    id_bytes = np.asarray(ids, "<i4").tobytes()
    unit = EmbedUnit(data_bits=8 * bus, lanes=4, max_hidden=8, max_tokens=8)
    axi, reads = unit.axi, []

    async def bench(ctx):
        ctx.set(unit.hidden, 8)
        ctx.set(unit.tokens, 0)
        ctx.set(unit.n_tokens, len(ids))
        ctx.set(unit.cmd.payload, {"table": table, "rows": rows, "stride": stride})
        ctx.set(unit.cmd.valid, 1)
        await ctx.tick().until(unit.cmd.ready)
        ctx.set(unit.cmd.valid, 0)
        ctx.set(unit.x.ready, 1)
        ctx.set(axi.arready, 1)
        bursts, beat = [], 0
        for _ in range(2000):
            if bursts:
                addr = bursts[0][0] + bus * beat
                ctx.set(axi.rdata, int.from_bytes(id_bytes[addr:addr + bus], "little"))
                ctx.set(axi.rlast, beat == bursts[0][1] - 1)
            ctx.set(axi.rvalid, bool(bursts))
            _, _, arvalid, araddr, arlen, rvalid, rready, busy = await ctx.tick().sample(
                axi.arvalid, axi.araddr, axi.arlen, axi.rvalid, axi.rready, unit.busy)
            if rvalid and rready:
                beat += 1
                if beat == bursts[0][1]:
                    bursts.pop(0)
                    beat = 0
            if arvalid:
                reads.append(araddr)
                bursts.append((araddr, arlen + 1))
            if not busy:
                break
        else:
            raise AssertionError("unit never went idle")

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert reads == [0] + [(table + i * stride) % (1 << 32) for i in ids]


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="power of two"):
        EmbedUnit(data_bits=96, lanes=4, max_hidden=8, max_tokens=4)
    with pytest.raises(ValueError, match="lanes"):
        EmbedUnit(data_bits=64, lanes=3, max_hidden=8, max_tokens=4)
