# amaranth: UnusedElaboratable=no
"""The residual stash units (Amaranth simulator) against the ISA simulator's ``LOAD_X`` / ``SAVE_X``
(``golden/isa_sim.py``): random int32 vectors with INT32_MIN / MAX, hidden sizes not a multiple of the
lanes, one token and the most tokens, beats wider than the bus (32-bit bus, 16 lanes), equal to it and
narrower than it (a 1024-bit bus: two beats per bus word, and a stash ending in half a word), random
back-pressure (output stalls, DRAM jitter and write bandwidth, buffer request stalls).

``LOAD_X`` zeroes the padding lanes whatever DRAM holds there; ``SAVE_X`` writes them as 0 and writes no
byte outside the stash. A misaligned ``addr`` and a DRAM error response fault ``BAD_ADDRESS`` (as the ISA
simulator does), and the next command on the same unit runs clean."""

import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from golden.isa_sim import IsaMachine, IsaRuntimeError
from hw.dram_format import x_stash_stride
from hw.isa import ErrorCode
from hw.memory.dram_model import FastDramModel
from hw.units.buffers import Buffer
from hw.units.stash import LoadXUnit, SaveXUnit, stash_alignment
from sim.testbenches.unit_harness import BufferHarness, bus_words, pack_lanes

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

#: (data_bits, lanes, hidden, n_tokens, max_tokens)
CASES = [
    (64, 4, 30, 1, 6),        # tiny-like: 2 bus words per beat, hidden not a multiple of the lanes, one token
    (64, 4, 30, 6, 6),        # ... the most tokens
    (64, 4, 32, 2, 4),        # hidden a multiple of the lanes: no padding
    (32, 16, 40, 4, 4),       # 16 bus words per beat, 8 of 16 lanes live in the last beat
    (128, 4, 13, 3, 5),       # one beat per bus word
    (1024, 16, 40, 5, 5),     # two beats per bus word: 15 beats, the stash ends in half a word
    (256, 4, 9, 1, 3),        # two beats per word, one token of 3 beats (a half word again)
    (64, 4, 3, 3, 4),         # one beat per token: every beat ends its token
]
_IDS = [f"bus{d}-lanes{l}-hidden{h}-n{n}" for d, l, h, n, _ in CASES]


def _int32(rng, shape):
    v = rng.integers(INT32_MIN, INT32_MAX + 1, shape, dtype=np.int64)
    flat = v.reshape(-1)
    flat[:2] = [INT32_MIN, INT32_MAX]
    if flat.size > 3:
        flat[rng.integers(2, flat.size, 2)] = [INT32_MAX, INT32_MIN]
    return v


def _machine(dram, lanes, bus_bytes, hidden, n):
    """The ISA simulator between instructions of a run: after SETUP (only ``hidden`` matters here)."""
    mach = IsaMachine(dram, tables=4, lanes=lanes, bus_bytes=bus_bytes)
    mach._pc, mach.setup, mach.args, mach.buffers = 0, {"hidden": hidden}, {"n_tokens": n}, {}
    return mach


def golden_load(image, addr, *, lanes, bus_bytes, hidden, n):
    """``x`` (n, hidden) after ``LOAD_X addr``, or the error code."""
    mach = _machine(bytearray(image), lanes, bus_bytes, hidden, n)
    try:
        mach._op_load_x(addr)
    except IsaRuntimeError as e:
        return e.code
    return mach.buffers["x"]


def golden_save(image, addr, x, *, lanes, bus_bytes, hidden):
    """The DRAM image after ``SAVE_X addr`` of ``x``, or the error code."""
    mach = _machine(bytearray(image), lanes, bus_bytes, hidden, x.shape[0])
    mach.buffers["x"] = x
    try:
        mach._op_save_x(addr)
    except IsaRuntimeError as e:
        return e.code
    return bytes(mach.dram)


def _image(rng, data_bits, lanes, hidden, max_tokens):
    """Random DRAM bytes (padding lanes included), room for two stashes, and a good stash address."""
    align = stash_alignment(data_bits, lanes)
    stash = max_tokens * x_stash_stride(hidden, lanes)
    size = -(-(3 * align + 2 * stash) // align) * align
    return bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes()), 2 * align


def _issue(ctx, unit, addr):
    ctx.set(unit.cmd.payload, {"addr": addr})
    ctx.set(unit.cmd.valid, 1)


async def _command(ctx, unit, addr):
    _issue(ctx, unit, addr)
    await ctx.tick().until(unit.cmd.ready)
    ctx.set(unit.cmd.valid, 0)
    await ctx.tick()


def simulate_load(image, addrs, *, data_bits, lanes, hidden, n, max_tokens, seed, p_stall=0.3):
    """Run ``LOAD_X`` at each of ``addrs`` in turn; per command, the beats out and the fault."""
    unit = LoadXUnit(data_bits=data_bits, lanes=lanes, max_hidden=hidden + 5, max_tokens=max_tokens)
    words = bus_words(image, data_bits // 8)
    dram = FastDramModel(32, data_bits, depth=len(words), init=words, latency=5, jitter=2, seed=seed + 1)
    m = Module()
    m.submodules.unit, m.submodules.dram = unit, dram
    wiring.connect(m, unit.axi, dram.axi)
    rng = random.Random(seed)
    results = []

    async def bench(ctx):
        ctx.set(unit.hidden, hidden)
        ctx.set(unit.n_tokens, n)
        for addr in addrs:
            await _command(ctx, unit, addr)
            got = []
            for _ in range(50000):
                ready = int(rng.random() >= p_stall)
                ctx.set(unit.x.ready, ready)
                _, _, valid, pay, busy = await ctx.tick().sample(unit.x.valid, unit.x.payload, unit.busy)
                if valid and ready:
                    got.append((int(pay.token), int(pay.beat), [int(pay.data[f"lane{i}"]) for i in range(lanes)]))
                if not busy:
                    break
            else:
                raise AssertionError("LOAD_X never went idle")
            results.append((got, ctx.get(unit.fault)))
        assert not ctx.get(dram.violation)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


def simulate_save(image, x_buffer, addrs, *, data_bits, lanes, hidden, n, max_tokens, seed, p_hold=0.3):
    """Preload the X buffer with ``x_buffer`` (max_tokens, beats * lanes), run ``SAVE_X`` at each of ``addrs``
    in turn; the fault of each command and the DRAM image at the end."""
    beats = -(-hidden // lanes)
    max_beats = -(-(hidden + 5) // lanes)
    unit = SaveXUnit(data_bits=data_bits, lanes=lanes, max_hidden=hidden + 5, max_tokens=max_tokens)
    harness = BufferHarness(lanes=lanes, max_tokens=max_tokens,
                            words={Buffer.X: max_beats, Buffer.ATT: 1, Buffer.H: 1, Buffer.Q: 1},
                            max_index=unit.max_index)
    bus = data_bits // 8
    words = bus_words(image, bus)
    dram = FastDramModel(32, data_bits, depth=len(words), init=words, latency=5, writable=True,
                         write_bytes_per_cycle=bus / 3, write_latency=4, peekable=True)
    m = Module()
    m.submodules.unit, m.submodules.buffers, m.submodules.dram = unit, harness, dram
    wiring.connect(m, unit.rd_req, harness.rd_req)
    wiring.connect(m, harness.rd_data, unit.rd_data)
    wiring.connect(m, unit.axi, dram.axi_wr)
    rng = random.Random(seed)
    faults, out = [], {}

    async def bench(ctx):
        for t in range(max_tokens):
            for b in range(beats):
                ctx.set(harness.tb_wr.payload, {"buf": Buffer.X, "token": t, "index": b, "e": 0,
                                                "data": pack_lanes(x_buffer[t, b * lanes:(b + 1) * lanes])})
                ctx.set(harness.tb_wr.valid, 1)
                await ctx.tick()
        ctx.set(harness.tb_wr.valid, 0)
        ctx.set(unit.hidden, hidden)
        ctx.set(unit.n_tokens, n)
        for addr in addrs:
            await _command(ctx, unit, addr)
            for _ in range(50000):
                ctx.set(harness.hold, int(rng.random() < p_hold))
                _, _, busy = await ctx.tick().sample(unit.busy)
                if not busy:
                    break
            else:
                raise AssertionError("SAVE_X never went idle")
            faults.append(ctx.get(unit.fault))
        assert not ctx.get(dram.violation)
        mem = bytearray()
        for i in range(len(words)):
            ctx.set(dram.peek.addr, i)
            mem += ctx.get(dram.peek.data).to_bytes(bus, "little")
        out["dram"] = bytes(mem[:len(image)])

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return faults, out["dram"]


def _want_beats(x, lanes, hidden):
    beats = -(-hidden // lanes)
    return [(t, b, [int(x[t, b * lanes + i]) if b * lanes + i < hidden else 0 for i in range(lanes)])
            for t in range(x.shape[0]) for b in range(beats)]


@pytest.mark.parametrize("data_bits, lanes, hidden, n, max_tokens", CASES, ids=_IDS)
def test_load_x_matches_golden(data_bits, lanes, hidden, n, max_tokens):
    rng = np.random.default_rng(data_bits * 1000 + hidden * 10 + n)
    image, addr = _image(rng, data_bits, lanes, hidden, max_tokens)
    stride = x_stash_stride(hidden, lanes)
    # The stash: random int32 with the extremes; the padding lanes keep their random (non-zero) bytes.
    vals = _int32(rng, (n, hidden))
    for t in range(n):
        image[addr + t * stride:addr + t * stride + 4 * hidden] = vals[t].astype("<i4").tobytes()
    pad = [image[addr + t * stride + 4 * hidden:addr + (t + 1) * stride] for t in range(n)]
    assert stride == 4 * hidden or any(any(p) for p in pad)
    want = golden_load(image, addr, lanes=lanes, bus_bytes=data_bits // 8, hidden=hidden, n=n)
    np.testing.assert_array_equal(want, vals)
    (got, fault), = simulate_load(image, [addr], data_bits=data_bits, lanes=lanes, hidden=hidden, n=n,
                                  max_tokens=max_tokens, seed=n + hidden)
    assert fault == ErrorCode.NONE
    assert got == _want_beats(want, lanes, hidden)


@pytest.mark.parametrize("data_bits, lanes, hidden, n, max_tokens", CASES, ids=_IDS)
def test_save_x_matches_golden(data_bits, lanes, hidden, n, max_tokens):
    rng = np.random.default_rng(data_bits * 1000 + hidden * 10 + n + 7)
    image, addr = _image(rng, data_bits, lanes, hidden, max_tokens)
    beats = -(-hidden // lanes)
    # The X buffer holds int32; its padding lanes hold garbage (SAVE_X must write 0 there).
    x_buffer = _int32(rng, (max_tokens, beats * lanes))
    x = x_buffer[:n, :hidden]
    want = golden_save(image, addr, x, lanes=lanes, bus_bytes=data_bits // 8, hidden=hidden)
    faults, got = simulate_save(image, x_buffer, [addr], data_bits=data_bits, lanes=lanes, hidden=hidden, n=n,
                                max_tokens=max_tokens, seed=n + hidden)
    assert faults == [ErrorCode.NONE]
    assert got == want                               # the stash, padding 0, and not a byte elsewhere
    stride = x_stash_stride(hidden, lanes)
    back = golden_load(got, addr, lanes=lanes, bus_bytes=data_bits // 8, hidden=hidden, n=n)
    np.testing.assert_array_equal(back, x)          # and it loads back
    assert got[addr + n * stride:] == bytes(image[addr + n * stride:])


def _bad_addresses(image, addr, data_bits, lanes, hidden, n):
    """A misaligned stash (4-byte aligned, beat-aligned where the bus is wider than a beat), one running
    off the end of DRAM, and one wholly beyond it."""
    align = stash_alignment(data_bits, lanes)
    stride = x_stash_stride(hidden, lanes)
    misaligned = addr + (4 * lanes if align > 4 * lanes else 4)
    off_end = (len(image) - n * stride // 2) // align * align
    beyond = -(-len(image) // align) * align + align
    return [misaligned, off_end, beyond]


@pytest.mark.parametrize("data_bits, lanes, hidden, n, max_tokens", [CASES[1], CASES[5]], ids=[_IDS[1], _IDS[5]])
def test_load_x_faults_then_runs_clean(data_bits, lanes, hidden, n, max_tokens):
    rng = np.random.default_rng(11)
    image, addr = _image(rng, data_bits, lanes, hidden, max_tokens)
    bus = data_bits // 8
    bad = _bad_addresses(image, addr, data_bits, lanes, hidden, n)
    for a in bad:
        assert golden_load(image, a, lanes=lanes, bus_bytes=bus, hidden=hidden, n=n) is ErrorCode.BAD_ADDRESS
    results = simulate_load(image, [*bad, addr], data_bits=data_bits, lanes=lanes, hidden=hidden, n=n,
                            max_tokens=max_tokens, seed=5)
    assert [f for _, f in results] == [ErrorCode.BAD_ADDRESS] * 3 + [ErrorCode.NONE]
    assert results[0][0] == [] and results[2][0] == []      # nothing read, or nothing but errors
    want = golden_load(image, addr, lanes=lanes, bus_bytes=bus, hidden=hidden, n=n)
    assert results[3][0] == _want_beats(want, lanes, hidden)


@pytest.mark.parametrize("data_bits, lanes, hidden, n, max_tokens", [CASES[1], CASES[5]], ids=[_IDS[1], _IDS[5]])
def test_save_x_faults_then_runs_clean(data_bits, lanes, hidden, n, max_tokens):
    rng = np.random.default_rng(12)
    image, addr = _image(rng, data_bits, lanes, hidden, max_tokens)
    bus = data_bits // 8
    beats = -(-hidden // lanes)
    x_buffer = _int32(rng, (max_tokens, beats * lanes))
    x = x_buffer[:n, :hidden]
    misaligned, off_end, beyond = _bad_addresses(image, addr, data_bits, lanes, hidden, n)
    for a in (misaligned, off_end, beyond):
        assert golden_save(image, a, x, lanes=lanes, bus_bytes=bus, hidden=hidden) is ErrorCode.BAD_ADDRESS
    # Misaligned, then wholly beyond DRAM (a DECERR on every write), then a good one.
    faults, got = simulate_save(image, x_buffer, [misaligned, beyond, addr], data_bits=data_bits, lanes=lanes,
                                hidden=hidden, n=n, max_tokens=max_tokens, seed=6)
    assert faults == [ErrorCode.BAD_ADDRESS, ErrorCode.BAD_ADDRESS, ErrorCode.NONE]
    assert got == golden_save(image, addr, x, lanes=lanes, bus_bytes=bus, hidden=hidden)


def test_arguments_are_validated():
    for cls in (LoadXUnit, SaveXUnit):
        with pytest.raises(ValueError, match="power of two"):
            cls(data_bits=96, lanes=4, max_hidden=8, max_tokens=4)
        with pytest.raises(ValueError, match="lanes"):
            cls(data_bits=64, lanes=3, max_hidden=8, max_tokens=4)
        with pytest.raises(ValueError, match="max_tokens"):
            cls(data_bits=64, lanes=4, max_hidden=8, max_tokens=0)
        with pytest.raises(ValueError, match="max_hidden"):
            cls(data_bits=64, lanes=4, max_hidden=0, max_tokens=4)
    with pytest.raises(ValueError, match="max_index"):
        SaveXUnit(data_bits=64, lanes=4, max_hidden=32, max_tokens=4, max_index=3)   # 8 beats need index 7
    assert stash_alignment(1024, 16) == 128 and stash_alignment(32, 16) == 64
