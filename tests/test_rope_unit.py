# amaranth: UnusedElaboratable=no
"""hw.vector.rope.RopeUnit against golden.numerics.rope_cos_sin + rope_apply (Amaranth sim and Verilator)."""

import json

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden.numerics import rope_apply, rope_cos_sin, rope_freq_table
from hw.vector.rope import RopeUnit


def golden_rotate(x, pos, freq):
    """Rotated head vectors ``(T, d)`` for Q.16 head vectors ``x`` ``(T, d)`` at positions ``pos`` ``(T,)``."""
    cos, sin = rope_cos_sin(np.asarray(pos), np.asarray(freq, np.int64))
    return rope_apply(np.asarray(x, np.int64)[:, None, :], cos, sin)[:, 0, :]


def beats_of(x, lanes):
    """Split head vectors into beats: lists of (lo, hi) lane values, padded with 0 (see the unit's docs)."""
    half = x.shape[1] // 2
    nb = -(-half // lanes)
    pad = np.zeros((x.shape[0], 2, nb * lanes), np.int64)
    pad[:, 0, :half], pad[:, 1, :half] = x[:, :half], x[:, half:]
    return [[(pad[t, 0, b * lanes:(b + 1) * lanes].tolist(), pad[t, 1, b * lanes:(b + 1) * lanes].tolist())
             for b in range(nb)] for t in range(x.shape[0])]


def run_amaranth(head_dim, lanes, theta, pos, x, seed=0, p_stall=0.3, resync=True, pos_bits=16):
    freq = rope_freq_table(head_dim, theta)
    dut = RopeUnit(head_dim, lanes, freq.tolist(), pos_bits=pos_bits)
    want = golden_rotate(x, pos, freq)
    half = head_dim // 2
    rng = np.random.default_rng(seed)
    beats = beats_of(x, lanes)
    got = []

    async def source(ctx):
        for t, vec in enumerate(beats):
            for b, (lo, hi) in enumerate(vec):
                while rng.random() < p_stall:
                    await ctx.tick()
                ctx.set(dut.pairs.payload, {"lo": lo, "hi": hi, "pos": int(pos[t]),
                                            "first": int(b == 0 and (resync or t == 0))})
                ctx.set(dut.pairs.valid, 1)
                await ctx.tick().until(dut.pairs.ready)
                ctx.set(dut.pairs.valid, 0)

    async def sink(ctx):
        n = sum(len(v) for v in beats)
        while len(got) < n:
            ready = rng.random() >= p_stall
            ctx.set(dut.rotated.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.rotated.valid, dut.rotated.payload)
            if valid and ready:
                got.append(([payload.lo[i] for i in range(lanes)], [payload.hi[i] for i in range(lanes)],
                            payload.first, payload.last))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source, background=True)
    sim.add_testbench(sink, background=True)
    total = sum(len(v) for v in beats)
    sim.run_until(1e-6 * (4 * total + 40))  # bounded: a broken unit fails, never hangs
    assert len(got) == total
    k = 0
    for t, vec in enumerate(beats):
        for b, (lo, hi) in enumerate(vec):
            g_lo, g_hi, first, last = got[k]
            k += 1
            assert (first, last) == (int(b == 0), int(b == len(vec) - 1))
            for lane in range(lanes):
                i = b * lanes + lane
                if i < half:
                    assert (g_lo[lane], g_hi[lane]) == (want[t, i], want[t, half + i]), (t, i)
                else:  # padding passes through unchanged
                    assert (g_lo[lane], g_hi[lane]) == (lo[lane], hi[lane])


@pytest.mark.parametrize("head_dim,lanes,theta", [
    (16, 4, 10000.0),
    (20, 4, 500000.0),  # 10 pairs: the third beat holds 2 pairs and 2 padding lanes
    (12, 1, 10000.0),
    (8, 4, 10000.0),    # one beat per head vector
    (10, 8, 10000.0),   # one partial beat
])
def test_rope_unit_amaranth(head_dim, lanes, theta):
    rng = np.random.default_rng(head_dim * lanes)
    pos = np.array([0, 1, 2, 4095, 65535, *rng.integers(0, 1 << 16, 3)])
    x = rng.integers(-(1 << 22), 1 << 22, (len(pos), head_dim))
    x[3] = (1 << 31) - 1
    x[4, ::2] = -(1 << 31)
    x[4, 1::2] = (1 << 31) - 1
    run_amaranth(head_dim, lanes, theta, pos, x, seed=head_dim, resync=head_dim not in (20, 8))


@pytest.mark.parametrize("pos_bits", [20, 24])
def test_rope_unit_wide_positions(pos_bits):
    """Positions beyond 18 bits (the LINEAR unit's are 20): their high bits take the phase's shift-add term."""
    rng = np.random.default_rng(pos_bits)
    top = 1 << pos_bits
    pos = np.array([top - 1, 1 << 18, (1 << 18) - 1, top >> 1, *rng.integers(0, top, 4)])
    x = rng.integers(-(1 << 31), 1 << 31, (len(pos), 16))
    run_amaranth(16, 4, 10000.0, pos, x, seed=pos_bits, pos_bits=pos_bits)


@pytest.mark.parametrize("head_dim,lanes,tokens", [(16, 4, 3), (20, 4, 2), (12, 2, 5)])
def test_rope_unit_indexed_interleaved(head_dim, lanes, tokens):
    """Indexed mode: a prefill chunk's beats arrive beat-major (every token's beat 0, then beat 1, ...),
    each with its index and its token as the tag; every beat rotates by its own position."""
    freq = rope_freq_table(head_dim, 10000.0)
    dut = RopeUnit(head_dim, lanes, freq.tolist(), indexed=True, tag_bits=3)
    rng = np.random.default_rng(head_dim + tokens)
    pos = rng.integers(0, 1 << 16, tokens)
    pos[0] = 0
    x = rng.integers(-(1 << 31), 1 << 31, (tokens, head_dim))
    want = golden_rotate(x, pos, freq)
    beats = beats_of(x, lanes)
    order = [(b, t) for b in range(len(beats[0])) for t in range(tokens)]
    half = head_dim // 2
    got = []

    async def source(ctx):
        for b, t in order:
            while rng.random() < 0.3:
                await ctx.tick()
            lo, hi = beats[t][b]
            ctx.set(dut.pairs.payload, {"lo": lo, "hi": hi, "pos": int(pos[t]), "first": 0, "beat": b, "tag": t})
            ctx.set(dut.pairs.valid, 1)
            await ctx.tick().until(dut.pairs.ready)
            ctx.set(dut.pairs.valid, 0)

    async def sink(ctx):
        while len(got) < len(order):
            ready = rng.random() >= 0.3
            ctx.set(dut.rotated.ready, ready)
            _, _, valid, pay = await ctx.tick().sample(dut.rotated.valid, dut.rotated.payload)
            if valid and ready:
                got.append(([pay.lo[i] for i in range(lanes)], [pay.hi[i] for i in range(lanes)],
                            pay.first, pay.last, pay.tag))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source, background=True)
    sim.add_testbench(sink, background=True)
    sim.run_until(1e-6 * (4 * len(order) + 40))
    assert len(got) == len(order)
    nb = len(beats[0])
    for (b, t), (g_lo, g_hi, first, last, tag) in zip(order, got):
        assert (first, last, tag) == (int(b == 0), int(b == nb - 1), t)
        for lane in range(lanes):
            i = b * lanes + lane
            if i < half:
                assert (g_lo[lane], g_hi[lane]) == (want[t, i], want[t, half + i]), (t, i)


@pytest.mark.parametrize("head_dim, lanes", [(16, 4), (12, 2), (8, 1)])
def test_rope_unit_loadable_table(head_dim, lanes):
    """A loadable unit starts with no table; the model's frequencies (theta 500000) are written through
    ``load`` (out of order), then the rotation matches golden."""
    freq = rope_freq_table(head_dim, 500000.0)
    dut = RopeUnit(head_dim, lanes, None, loadable=True)
    rng = np.random.default_rng(head_dim)
    pos = np.array([0, 3, 4095, 65535])
    x = rng.integers(-(1 << 31), 1 << 31, (len(pos), head_dim))
    want = golden_rotate(x, pos, freq)
    beats = beats_of(x, lanes)
    half = head_dim // 2
    got = []

    async def bench(ctx):
        for i in rng.permutation(half):
            ctx.set(dut.load.payload, {"index": int(i), "value": int(freq[i])})
            ctx.set(dut.load.valid, 1)
            await ctx.tick()
        ctx.set(dut.load.valid, 0)
        ctx.set(dut.rotated.ready, 1)
        for t, vec in enumerate(beats):
            for b, (lo, hi) in enumerate(vec):
                ctx.set(dut.pairs.payload, {"lo": lo, "hi": hi, "pos": int(pos[t]), "first": int(b == 0)})
                ctx.set(dut.pairs.valid, 1)
                _, _, valid, pay = await ctx.tick().sample(dut.rotated.valid, dut.rotated.payload)
                if valid:
                    got.append(([pay.lo[i] for i in range(lanes)], [pay.hi[i] for i in range(lanes)]))
        ctx.set(dut.pairs.valid, 0)
        for _ in range(dut.latency + 1):
            _, _, valid, pay = await ctx.tick().sample(dut.rotated.valid, dut.rotated.payload)
            if valid:
                got.append(([pay.lo[i] for i in range(lanes)], [pay.hi[i] for i in range(lanes)]))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    flat = [(t, b) for t, vec in enumerate(beats) for b in range(len(vec))]
    assert len(got) == len(flat)
    for (t, b), (g_lo, g_hi) in zip(flat, got):
        for lane in range(lanes):
            i = b * lanes + lane
            if i < half:
                assert (g_lo[lane], g_hi[lane]) == (want[t, i], want[t, half + i]), (t, i)


def test_rope_unit_rejects_bad_arguments():
    freq = rope_freq_table(8, 10000.0).tolist()
    with pytest.raises(ValueError, match="head_dim"):
        RopeUnit(7, 2, freq)
    with pytest.raises(ValueError, match="entries"):
        RopeUnit(10, 2, freq)
    with pytest.raises(ValueError, match="lanes"):
        RopeUnit(8, 0, freq)
    with pytest.raises(ValueError, match="unsigned"):
        RopeUnit(8, 2, [1 << 32] + freq[1:])
    with pytest.raises(ValueError, match="unsigned"):
        RopeUnit(8, 2, [3.0] + freq[1:])
    with pytest.raises(ValueError, match="unsigned"):
        RopeUnit(8, 2, [-1] + freq[1:])
    with pytest.raises(ValueError, match="pos_bits"):
        RopeUnit(8, 2, freq, pos_bits=0)


# -- Verilator (cocotb) ------------------------------------------------------------------------------
from sim import build_component, run_cocotb  # noqa: E402
from sim.testbenches import TESTBENCH_DIR  # noqa: E402

COCOTB_CASES = [
    (64, 1, 10000.0),
    (96, 4, 500000.0),   # d/2 = 48: not a power of two
    (128, 4, 10000.0),
    (128, 16, 500000.0),
    (40, 16, 10000.0),   # d/2 = 20: the second beat is partial (4 of 16 lanes)
]


@pytest.mark.parametrize("head_dim,lanes,theta", COCOTB_CASES)
def test_rope_unit_cocotb(head_dim, lanes, theta, tmp_path):
    freq = rope_freq_table(head_dim, theta)
    dut = RopeUnit(head_dim, lanes, freq.tolist())
    build = build_component(dut, "rope_unit")
    report = tmp_path / "throughput.json"
    params = {"head_dim": head_dim, "lanes": lanes, "freq": freq.tolist(), "pos_bits": dut.pos_bits,
              "report": str(report)}
    res = run_cocotb(build, "tb_rope", test_dir=TESTBENCH_DIR, seed=head_dim * 100 + lanes,
                     extra_env={"ROPE_PARAMS": json.dumps(params)}, run_dir=tmp_path / "run")
    assert len(res.passed) == 3, res
    tp = json.loads(report.read_text())
    assert tp["beats_per_cycle"] == 1.0, tp
    assert tp["pairs_per_cycle"] == lanes, tp


# -- ECP5 cost (Yosys) ------------------------------------------------------------------------------------
from hw.synth import synth_ecp5  # noqa: E402


def test_rope_unit_synthesises():
    """Regression: with per-element names for the lane arrays, Yosys 0.70 abc9 failed an assertion on
    this configuration (see :class:`hw.vector.rope.LaneArray`). Also pins the DSP and BRAM count."""
    rep = synth_ecp5(RopeUnit(16, 2, rope_freq_table(16, 10000.0).tolist()), "rope_unit")
    assert (rep.dsp, rep.bram) == (2 * 8, 2), rep.cells


@pytest.mark.slow
@pytest.mark.parametrize("lanes", [4, 16])
def test_rope_unit_ecp5_cost(lanes):
    rep = synth_ecp5(RopeUnit(128, lanes, rope_freq_table(128, 500000.0).tolist()), "rope_unit")
    print(f"RopeUnit(128, {lanes}):", rep.cells)
    assert (rep.dsp, rep.bram) == (8 * lanes, lanes), rep.cells
    assert rep.lut4_equivalent < 700 * lanes, rep.cells
