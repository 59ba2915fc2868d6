"""cocotb testbench of ``hw.vector.rope.RopeUnit`` vs ``golden.numerics.rope_cos_sin`` + ``rope_apply``.

Environment: ``ROPE_PARAMS`` JSON with ``head_dim``, ``lanes``, ``freq`` (the d/2 phase increments the
unit was built with), ``pos_bits`` and optionally ``report`` (path for the throughput measurement).

Streams are driven at the falling edge and sampled in ReadOnly; valid is held until the transfer, and
the output payload must stay stable while stalled. Every output lane of every beat is compared,
padding lanes of a partial last beat included (they pass through unchanged).
"""

import json
import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly

from golden.numerics import rope_apply, rope_cos_sin
from hw.vector.rope import rope_pairs_layout, rope_rotated_layout

P = json.loads(os.environ["ROPE_PARAMS"])
D, N, POS_BITS = P["head_dim"], P["lanes"], P["pos_bits"]
FREQ = np.array(P["freq"], np.int64)
HALF = D // 2
BEATS = -(-HALF // N)
IN = rope_pairs_layout(N, POS_BITS)
OUT = rope_rotated_layout(N)
MASK32 = (1 << 32) - 1
MAX_POS = (1 << POS_BITS) - 1
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


def _offsets(layout):
    return {name: field.offset for name, field in layout}


IN_OFF, OUT_OFF = _offsets(IN), _offsets(OUT)


def pack_beat(lo, hi, pos, first):
    word = (pos << IN_OFF["pos"]) | (first << IN_OFF["first"])
    for n in range(N):
        word |= (int(lo[n]) & MASK32) << (IN_OFF["lo"] + 32 * n)
        word |= (int(hi[n]) & MASK32) << (IN_OFF["hi"] + 32 * n)
    return word


def unpack_out(word):
    def s32(v):
        return v - (1 << 32) if v >> 31 else v
    lo = [s32((word >> (OUT_OFF["lo"] + 32 * n)) & MASK32) for n in range(N)]
    hi = [s32((word >> (OUT_OFF["hi"] + 32 * n)) & MASK32) for n in range(N)]
    return lo, hi, (word >> OUT_OFF["first"]) & 1, (word >> OUT_OFF["last"]) & 1


def make_beats(x, pos, resync=True):
    """Input words and expected output (lo, hi, first, last) per beat for head vectors ``x`` at ``pos``."""
    cos, sin = rope_cos_sin(np.asarray(pos), FREQ)
    want = rope_apply(np.asarray(x, np.int64)[:, None, :], cos, sin)[:, 0, :]
    words, expect = [], []
    for t in range(x.shape[0]):
        lo_in = np.zeros(BEATS * N, np.int64)
        hi_in = np.zeros(BEATS * N, np.int64)
        lo_in[:HALF], hi_in[:HALF] = x[t, :HALF], x[t, HALF:]
        lo_out, hi_out = lo_in.copy(), hi_in.copy()  # padding lanes pass through
        lo_out[:HALF], hi_out[:HALF] = want[t, :HALF], want[t, HALF:]
        for b in range(BEATS):
            sl = slice(b * N, (b + 1) * N)
            words.append(pack_beat(lo_in[sl], hi_in[sl], int(pos[t]), int(b == 0 and (resync or t == 0))))
            expect.append((lo_out[sl].tolist(), hi_out[sl].tolist(), int(b == 0), int(b == BEATS - 1)))
    return words, expect


async def reset(dut):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.pairs__valid.value = 0
    dut.rotated__ready.value = 0
    await ClockCycles(dut.clk, 3)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


async def run_stream(dut, words, expect, rng, p_in_stall, p_out_stall):
    """Stream beats through the unit; returns (cycles, beats accepted, first-to-last accept span)."""
    wi, valid, got, held = 0, False, [], None
    cycles, first, last = 0, None, None
    limit = 10 * len(words) + 200
    while len(got) < len(expect):
        assert cycles < limit, f"timeout: {len(got)}/{len(expect)} beats after {cycles} cycles"
        if not valid and wi < len(words) and rng.random() >= p_in_stall:
            valid = True
            dut.pairs__payload.value = words[wi]
        dut.pairs__valid.value = int(valid)
        out_ready = rng.random() >= p_out_stall
        dut.rotated__ready.value = int(out_ready)
        await ReadOnly()
        if int(dut.rotated__valid.value):
            payload = int(dut.rotated__payload.value)
            if held is not None:
                assert payload == held, "rotated payload changed while stalled"
            held = None if out_ready else payload
            if out_ready:
                got.append(payload)
        if valid and int(dut.pairs__ready.value):
            first = cycles if first is None else first
            last = cycles
            valid, wi = False, wi + 1
        await FallingEdge(dut.clk)
        cycles += 1
    assert wi == len(words), "finished without consuming every input"
    for k, (g, e) in enumerate(zip(got, expect)):
        g = unpack_out(g)
        assert g == e, f"beat {k} (vector {k // BEATS}, beat {k % BEATS}): got {g}, expected {e}"
    return cycles, wi, last - first + 1


def random_q16(rng, t):
    """Residual-stream-like Q.16 values with a wide spread of magnitudes."""
    mag = rng.integers(0, 31, (t, D))
    return rng.integers(-(1 << 62), 1 << 62, (t, D), dtype=np.int64) >> (62 - mag)


def extreme_vectors(rng, t):
    x = rng.choice(np.array([I32_MIN, I32_MIN + 1, -1, 0, 1, I32_MAX - 1, I32_MAX], np.int64), (t, D))
    x[0] = I32_MAX
    x[1] = I32_MIN
    x[2, :HALF], x[2, HALF:] = I32_MIN, I32_MAX
    x[3, :HALF], x[3, HALF:] = I32_MAX, I32_MIN
    return x


def positions(rng, t):
    fixed = [0, 1, 2, 3, 4095, 4096, MAX_POS, MAX_POS - 1]
    return np.array(fixed + rng.integers(0, MAX_POS + 1, max(0, t - len(fixed))).tolist())[:t]


@cocotb.test()
async def test_random_vectors_with_stalls(dut):
    """Random Q.16 head vectors at corner and random positions, random stalls on both streams."""
    await reset(dut)
    rng = np.random.default_rng(random.getrandbits(32))
    t = 12
    x = random_q16(rng, t)
    words, expect = make_beats(x, positions(rng, t))
    await run_stream(dut, words, expect, rng, 0.3, 0.3)
    # `first` only on the very first beat: the beat counter wraps by itself.
    x = random_q16(rng, 4)
    words, expect = make_beats(x, rng.integers(0, MAX_POS + 1, 4), resync=False)
    await run_stream(dut, words, expect, rng, 0.2, 0.5)


@cocotb.test()
async def test_saturation_extremes(dut):
    """+-(2^31 - 1) and -2^31 inputs (the rotation saturates near 45 degrees), with stalls."""
    await reset(dut)
    rng = np.random.default_rng(random.getrandbits(32))
    t = 10
    x = extreme_vectors(rng, t)
    pos = positions(rng, t)
    words, expect = make_beats(x, pos)
    await run_stream(dut, words, expect, rng, 0.0, 0.0)
    words, expect = make_beats(extreme_vectors(rng, t)[::-1].copy(), pos)
    await run_stream(dut, words, expect, rng, 0.4, 0.4)


@cocotb.test()
async def test_throughput(dut):
    """Beats accepted per cycle over back-to-back head vectors with an always-ready sink."""
    await reset(dut)
    rng = np.random.default_rng(1)
    t = max(4, 256 // BEATS)
    words, expect = make_beats(random_q16(rng, t), rng.integers(0, MAX_POS + 1, t))
    cycles, beats, span = await run_stream(dut, words, expect, rng, 0.0, 0.0)
    report = {"head_dim": D, "lanes": N, "beats_per_vector": BEATS, "vectors": t, "beats": beats,
              "accept_span_cycles": span, "total_cycles": cycles, "beats_per_cycle": beats / span,
              "pairs_per_cycle": beats * N / span, "elements_per_cycle": t * D / span,
              "latency_cycles": cycles - span}
    dut._log.info("throughput: %s", report)
    if P.get("report"):
        with open(P["report"], "w") as f:
            json.dump(report, f)
