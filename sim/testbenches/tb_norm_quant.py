"""cocotb testbench of :class:`hw.vector.norm_quant.NormQuant` against ``golden.numerics.norm_quant``.

Environment: ``NORM_QUANT_PARAMS`` JSON with ``lanes``, ``max_n``, ``x_bits`` (default 63), ``e_bits``
(default 12), optionally ``random`` (number of random vectors, default 12), ``p_stall`` (default 0.3),
``seed`` and ``report`` (path for the cycle measurement).

The helpers (stimulus, references, packing) need no simulator; ``tests/test_norm_quant_unit.py`` uses
them for the Amaranth-simulator test too.
"""

import json
import os
import random

import numpy as np

from golden.numerics import NormGain, norm_quant, quantise_gain
from golden.sfloat import SFloat

SFLOAT_M = 24
SHIFT_BITS = 8


# -- stimulus ------------------------------------------------------------------------------------------
def _gain(rng, n, kind="normal"):
    if kind == "zero":
        return quantise_gain(np.zeros(n), 1e-5)
    if kind == "uniform":
        return quantise_gain(rng.uniform(-3, 3, n), 1e-6)
    return quantise_gain(rng.normal(1.0, 0.3, n), 1e-5)


def _sx(value):
    return SFloat.from_float(np.float64(value))


def _mixed(rng, n, max_bits):
    bits = rng.integers(0, max_bits + 1, n)
    mag = np.array([int(rng.integers(0, 1 << int(b))) if b else 0 for b in bits], dtype=np.int64)
    return np.where(rng.random(n) < 0.5, -mag, mag)


def make_cases(rng, lanes, max_n, x_bits=63, n_random=12):
    """A list of ``(x, sx, gain)`` vectors: random ones, then the corner cases."""
    lim = (1 << (x_bits - 1)) - 1  # |x| <= lim (also < 2^62)
    lim = min(lim, (1 << 62) - 1)
    cases = []
    for k in range(n_random):
        n = int(rng.integers(1, max_n + 1))
        if n % lanes == 0 and lanes > 1 and n > 1:
            n -= 1
        kind = k % 4
        if kind == 0:    # residual stream, Q.16, sx = 2^-16
            x = rng.normal(0, 3 * 65536, n).astype(np.int64)
            sx = SFloat.pow2(np.int64(-16))
        elif kind == 1:  # every magnitude up to the limit
            x = _mixed(rng, n, x_bits - 1)
            sx = _sx(2.0 ** rng.uniform(-40, 10))
        elif kind == 2:  # ReLU^2-sized products, non-trivial scale
            x = rng.integers(-(1 << 50), 1 << 50, n)
            sx = _sx(3.7e-12)
        else:            # small integers
            x = rng.integers(-300, 301, n)
            sx = _sx(rng.uniform(1e-4, 1e-1))
        cases.append((x.astype(np.int64), sx, _gain(rng, n, "uniform" if k % 3 == 0 else "normal")))
    n = min(max_n, 3 * lanes + 1)
    cases += [
        (np.array([12345], np.int64), SFloat.pow2(np.int64(-16)), _gain(rng, 1)),            # n = 1
        (np.array([-7], np.int64), _sx(0.5), _gain(rng, 1)),
        (np.zeros(n, np.int64), SFloat.pow2(np.int64(-16)), _gain(rng, n)),                    # eps case
        (rng.integers(-1000, 1000, n), SFloat.pow2(np.int64(-16)), _gain(rng, n, "zero")),      # zero gain
        (rng.choice([-1, 0, 1], n).astype(np.int64), _sx(1.0), _gain(rng, n)),                 # tiny
        (np.full(n, 1, np.int64), _sx(2.0 ** -20), _gain(rng, n)),
        (rng.choice([-lim, lim, -(lim >> 1), 1, 0], n).astype(np.int64), _sx(2.0 ** -60), _gain(rng, n)),  # huge
        (rng.integers(-lim, lim, n, endpoint=True), _sx(1e-18), _gain(rng, n, "uniform")),
        (np.full(n, -(1 << 20), np.int64), SFloat.pow2(np.int64(-16)), _gain(rng, n)),        # -2^k max
        (rng.integers(-(1 << 50), 1 << 50, n), _sx(3.7e-12), _gain(rng, n)),                  # ReLU^2
    ]
    g = _gain(rng, n)
    q = g.q.copy()
    q[0] = -32768  # int16 extreme (a gain quantise_gain would not produce, still int16)
    cases.append((np.full(n, -(1 << 30), np.int64), SFloat.pow2(np.int64(-16)), NormGain(q, g.shift, g.eps)))
    return [(np.asarray(x, np.int64), sx, gain) for x, sx, gain in cases]


def reference(x, sx, gain):
    """``(xq list, (m, e))`` as the unit returns them (a zero scale is ``(0, 0)``)."""
    sxa = SFloat(np.array([int(sx.m)]), np.array([int(sx.e)]))
    xq, sq = norm_quant(np.asarray(x, np.int64)[None, :], sxa, gain)
    m, e = int(sq.m[0]), int(sq.e[0])
    return [int(v) for v in xq[0]], (m, e if m else 0)


# -- packing ---------------------------------------------------------------------------------------------
def _field(v, bits):
    return int(v) & ((1 << bits) - 1)


def pack_cfg(n, sx, gain, max_n, e_bits=12):
    nb = max(1, int(max_n).bit_length())
    fields = [(n, nb), (int(sx.m), SFLOAT_M), (int(sx.e), e_bits), (gain.shift, SHIFT_BITS),
              (int(gain.eps.m), SFLOAT_M), (int(gain.eps.e), e_bits)]
    word, pos = 0, 0
    for v, bits in fields:
        word |= _field(v, bits) << pos
        pos += bits
    return word


def pack_beats(x, q, lanes, x_bits=63):
    """Input beats: ``lanes`` x values then ``lanes`` gain values per beat (padding 0)."""
    beats = []
    for s in range(0, len(x), lanes):
        xs = list(x[s:s + lanes]) + [0] * (lanes - len(x[s:s + lanes]))
        gs = list(q[s:s + lanes]) + [0] * (lanes - len(q[s:s + lanes]))
        w = 0
        for k, v in enumerate(xs):
            w |= _field(v, x_bits) << (k * x_bits)
        for k, v in enumerate(gs):
            w |= _field(v, 16) << (lanes * x_bits + 16 * k)
        beats.append(w)
    return beats


def unpack_out(word, lanes):
    q = []
    for k in range(lanes):
        v = (word >> (8 * k)) & 0xFF
        q.append(v - 256 if v & 0x80 else v)
    return q, (word >> (8 * lanes)) & 1


def unpack_scale(word, e_bits=12):
    m = word & ((1 << SFLOAT_M) - 1)
    e = (word >> SFLOAT_M) & ((1 << e_bits) - 1)
    e -= (1 << e_bits) if e >> (e_bits - 1) else 0
    return (m, e), (word >> (SFLOAT_M + e_bits)) & 1


def check_vector(k, case, qbeats, scale, lanes, e_bits=12):
    """Compare one vector's output beats and scale word with the golden model."""
    x, sx, gain = case
    want_q, want_s = reference(x, sx, gain)
    got, lasts = [], []
    for w in qbeats:
        q, last = unpack_out(w, lanes)
        got += q
        lasts.append(last)
    n = len(x)
    assert lasts == [0] * (len(qbeats) - 1) + [1], f"vector {k}: last flags {lasts}"
    assert got[:n] == want_q, f"vector {k} (n={n}): xq mismatch\n got {got[:n]}\n want {want_q}"
    assert all(v == 0 for v in got[n:]), f"vector {k}: padding lanes {got[n:]}"
    s, ovf = unpack_scale(scale, e_bits)
    assert s == want_s and not ovf, f"vector {k} (n={n}): sq {s} (overflow {ovf}), expected {want_s}"


# -- cocotb ----------------------------------------------------------------------------------------------
try:
    import cocotb
    from cocotb.triggers import FallingEdge, ReadOnly
except ImportError:  # pragma: no cover
    cocotb = None


def _params():
    return json.loads(os.environ["NORM_QUANT_PARAMS"])


async def run_vectors(dut, cases, P, rng, p_stall):
    """Drive all vectors (cfg and i queues), collect o and s; check; return per-vector cycle counts."""
    lanes, max_n, xb, eb = P["lanes"], P["max_n"], P.get("x_bits", 63), P.get("e_bits", 12)
    cfgs = [pack_cfg(len(x), sx, g, max_n, eb) for x, sx, g in cases]
    beats = [w for x, sx, g in cases for w in pack_beats(x, g.q, lanes, xb)]
    nbeats = [-(-len(x) // lanes) for x, _, _ in cases]
    qi = {"cfg": cfgs, "i": beats}
    idx = {"cfg": 0, "i": 0}
    pend = {"cfg": False, "i": False}
    outs = {"o": [], "s": []}
    held = {"o": None, "s": None}
    start, done = [], {"o": [], "s": []}
    cycles = 0
    limit = 600 * len(cases) + 20 * len(beats) + 1000
    while len(outs["s"]) < len(cases) or len(outs["o"]) < len(beats):
        assert cycles < limit, f"timeout: {len(outs['o'])}/{len(beats)} beats, {len(outs['s'])} scales"
        for name, items in qi.items():
            if not pend[name] and idx[name] < len(items) and rng.random() >= p_stall:
                pend[name] = True
                getattr(dut, f"{name}__payload").value = items[idx[name]]
            getattr(dut, f"{name}__valid").value = int(pend[name])
        ready = {name: rng.random() >= p_stall for name in outs}
        for name in outs:
            getattr(dut, f"{name}__ready").value = int(ready[name])
        await ReadOnly()
        for name in outs:
            if int(getattr(dut, f"{name}__valid").value):
                pay = int(getattr(dut, f"{name}__payload").value)
                assert held[name] is None or pay == held[name], f"{name} payload changed while stalled"
                held[name] = None if ready[name] else pay
                if ready[name]:
                    outs[name].append(pay)
                    done[name].append(cycles)
            else:
                assert held[name] is None, f"{name} valid dropped while stalled"
        for name in qi:
            if pend[name] and int(getattr(dut, f"{name}__ready").value):
                pend[name] = False
                idx[name] += 1
                if name == "cfg":
                    start.append(cycles)
        await FallingEdge(dut.clk)
        cycles += 1
    assert idx["i"] == len(beats) and idx["cfg"] == len(cfgs)
    pos = 0
    per_vector = []
    for k, case in enumerate(cases):
        check_vector(k, case, outs["o"][pos:pos + nbeats[k]], outs["s"][k], lanes, eb)
        end = max(done["o"][pos + nbeats[k] - 1], done["s"][k])
        per_vector.append(end - start[k] + 1)
        pos += nbeats[k]
    return per_vector


if cocotb is not None:
    from sim.cocotb_streams import reset

    @cocotb.test()
    async def test_vectors_with_stalls(dut):
        """Random vectors and every corner case, random stalls on all four streams; bit-exact."""
        P = _params()
        await reset(dut, ("cfg", "i"), ("o", "s"))
        rng = np.random.default_rng(P.get("seed", random.getrandbits(32)))
        cases = make_cases(rng, P["lanes"], P["max_n"], P.get("x_bits", 63), P.get("random", 12))
        await run_vectors(dut, cases, P, rng, P.get("p_stall", 0.3))

    @cocotb.test()
    async def test_cycles(dut):
        """No stalls: cycles per vector (cfg transfer to the last o/s transfer) for a few lengths."""
        P = _params()
        await reset(dut, ("cfg", "i"), ("o", "s"))
        rng = np.random.default_rng(11)
        lanes, max_n = P["lanes"], P["max_n"]
        ns = sorted({1, lanes + 1, max_n // 2, max_n})
        cases = [(rng.normal(0, 65536, n).astype(np.int64), SFloat.pow2(np.int64(-16)), _gain(rng, n))
                 for n in ns]
        per = await run_vectors(dut, cases, P, rng, 0.0)
        if P.get("report"):
            with open(P["report"], "w") as f:
                json.dump({"lanes": lanes, "n": ns, "cycles": per}, f)
