"""cocotb testbench of the epilogue units (``hw.vector.epilogue``) against the golden model.

Environment: ``EPILOGUE_PARAMS`` JSON with ``unit`` (one of :data:`UNITS`), ``lanes``, optionally
``beats`` (random beats before the corner cases, default 1500), ``p_stall`` (default 0.3),
``throughput_beats`` (default 1000) and ``report`` (path for the throughput measurement).

The module's helpers (stimulus, references, packing) need no simulator; ``tests/test_epilogue_unit.py``
uses them for the Amaranth-simulator tests too.

Streams are driven at the falling edge and sampled in ReadOnly; every input's valid is held until its
transfer, each input stalls independently, and the output must hold valid and payload while stalled.
"""

import json
import os
import random

import numpy as np

from golden.fixed import INT32_MAX, INT32_MIN, round_shift, saturate
from golden.numerics import RES_FRAC, residual_add, silu_q16
from golden.sfloat import SFloat

#: Unit name -> (input stream names, output element bits).
UNITS = {
    "dequant": (("i",), 32),
    "residual": (("x", "y"), 32),
    "silu": (("gate", "up"), 64),
    "relu2": (("gate", "up"), 64),
}

SHIFT_MIN, SHIFT_BITS = -16, 8
RELU2_LIMIT = 1 << 20  # |a| < 2^21: the tests use up to 2^21 - 1


def unit_class(unit):
    from hw.vector import epilogue
    return {"dequant": epilogue.Dequant, "residual": epilogue.ResidualAdd,
            "silu": epilogue.GateSilu, "relu2": epilogue.GateRelu2}[unit]


# -- references ----------------------------------------------------------------------------------------
def ref_dequant(acc, m16, shift):
    """Per beat: ``saturate32(round_shift(acc * m16, shift))``, the shift clamped below at -16 (golden's
    int64 arithmetic is exact from there; see ``hw.vector.epilogue``)."""
    acc = np.asarray(acc, np.int64)
    s = max(int(shift), SHIFT_MIN)
    return saturate(round_shift(acc * np.int64(m16), np.int64(s)), 32)


def exact_dequant(acc, m16, shift):
    """The same in unbounded Python integers, for any shift (the mathematical definition)."""
    out = []
    for a in acc:
        p = int(a) * int(m16)
        v = (p + (1 << (shift - 1))) >> shift if shift > 0 else p << -shift
        out.append(min(max(v, INT32_MIN), INT32_MAX))
    return out


def reference(unit, beat):
    """Expected output lanes for one input beat (a dict of stream name -> payload)."""
    if unit == "dequant":
        acc, m16, shift = beat["i"]
        return [int(v) for v in ref_dequant(acc, m16, shift)]
    if unit == "residual":
        return [int(v) for v in residual_add(beat["x"], beat["y"])]
    if unit == "silu":
        g, u = np.asarray(beat["gate"], np.int64), np.asarray(beat["up"], np.int64)
        return [int(v) for v in silu_q16(g) * u]
    if unit == "relu2":
        ag, au = np.asarray(beat["gate"], np.int64), np.asarray(beat["up"], np.int64)
        r = np.maximum(ag, 0)
        return [int(v) for v in r * r * au]
    raise ValueError(unit)


# -- stimulus --------------------------------------------------------------------------------------------
def _pick(rng, values, n):
    return [int(v) for v in rng.choice(np.asarray(values, np.int64), n)]


def _int32(rng, n):
    return [int(v) for v in rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True)]


def _mixed32(rng, n):
    """int32 values of every magnitude: uniform bit length, random sign."""
    bits = rng.integers(0, 32, n)
    mag = [int(rng.integers(0, 1 << int(b))) if b else 0 for b in bits]
    return [max(INT32_MIN, min(INT32_MAX, -m if rng.random() < 0.5 else m)) for m in mag]


ACC_CORNERS = [0, 1, -1, 2, -2, INT32_MAX, INT32_MIN, INT32_MIN + 1, INT32_MAX - 1, 1 << 20, -(1 << 20),
               (1 << 16) - 1, -(1 << 16), 12345, -54321]
M16_CORNERS = [0, 1, 2, (1 << 15) - 1, 1 << 15, (1 << 15) + 1, 65534, 65535]
SHIFT_CORNERS = [-16, -15, -14, -8, -1, 0, 1, 2, 14, 15, 16, 17, 30, 31, 32, 33, 46, 47, 48, 49, 61, 62, 63, 127]

# Sigmoid-table edges in Q.16: index k is selected by |g| in [512 k - 256, 512 k + 256).
_SIG_EDGES = [0, 1, 255, 256, 257, 511, 512, 513, 767, 768, 65536, 524031, 524032, 524288,
              1048064 - 513, 1048064 - 512, 1048064 - 1, 1048064, 1048064 + 1, (1 << 20) - 1, 1 << 20,
              (1 << 20) + 1, 16 << 16, 17 << 16, 1 << 24, INT32_MAX]
G_CORNERS = sorted(set(_SIG_EDGES + [-v for v in _SIG_EDGES] + [INT32_MIN]))
U_CORNERS = [0, 1, -1, INT32_MAX, INT32_MIN, INT32_MIN + 1, 1 << 20, -(1 << 20), 127 * 8192, -127 * 8192]
R_LIM = (1 << 21) - 1
A_CORNERS = [0, 1, -1, 2, -2, RELU2_LIMIT, -RELU2_LIMIT, RELU2_LIMIT - 1, RELU2_LIMIT + 1, R_LIM, -R_LIM,
             127 * 8192, -127 * 8192, 1 << 17, (1 << 17) - 1, 15, 16, 17]


def make_beats(unit, lanes, rng, n_random):
    """Random beats (seeded by ``rng``) followed by corner-case beats; a list of dicts stream -> payload.

    A dequant payload is ``(acc list, m16, shift)``; the others are lists of ``lanes`` ints.
    """
    beats = []
    if unit == "dequant":
        for i in range(n_random):
            kind = i % 4
            if kind == 0:    # a real SFloat scale in multiplier form (scale_pow2(16) as dequant_q16)
                scale = SFloat.from_float(np.float64(2.0 ** rng.uniform(-40, 12)))
                m16, s = scale.scale_pow2(RES_FRAC).multiplier()
                m16, s = int(m16), int(s)
            elif kind == 1:  # normalised mantissa, shift where the outputs are interesting
                m16, s = int(rng.integers(1 << 15, 1 << 16)), int(rng.integers(8, 48))
            else:            # anything in the documented range
                m16, s = int(rng.integers(0, 1 << 16)), int(rng.integers(SHIFT_MIN, 63))
            s = max(-(1 << (SHIFT_BITS - 1)), min((1 << (SHIFT_BITS - 1)) - 1, s))
            acc = _mixed32(rng, lanes) if i % 3 else _int32(rng, lanes)
            beats.append({"i": (acc, m16, s)})
        for s in SHIFT_CORNERS:
            for m16 in M16_CORNERS:
                beats.append({"i": (_pick(rng, ACC_CORNERS, lanes), m16, s)})
        # Below the datapath's range: exact saturation for SFloat mantissas (0 or >= 2^15).
        for s in (-17, -31, -64, -128):
            for m16 in (0, 1 << 15, 65535):
                beats.append({"i": (_pick(rng, ACC_CORNERS, lanes), m16, s)})
    elif unit == "residual":
        for i in range(n_random):
            f = _int32 if i % 2 else _mixed32
            beats.append({"x": f(rng, lanes), "y": f(rng, lanes)})
        edges = [0, 1, -1, INT32_MAX, INT32_MIN, INT32_MAX - 1, INT32_MIN + 1, 1 << 30, -(1 << 30)]
        for a in edges:
            for b in edges:
                beats.append({"x": [a] * lanes, "y": [b] * lanes})
    elif unit == "silu":
        for i in range(n_random):
            if i % 3 == 0:
                g = [int(v) for v in rng.normal(0, 6 * 65536, lanes).clip(INT32_MIN, INT32_MAX)]
            elif i % 3 == 1:
                g = [int(v) for v in rng.integers(-(20 << 16), 20 << 16, lanes)]
            else:
                g = _mixed32(rng, lanes)
            u = _int32(rng, lanes) if i % 2 else _mixed32(rng, lanes)
            beats.append({"gate": g, "up": u})
        for k in range(0, len(G_CORNERS), lanes):
            for u in U_CORNERS:
                g = (G_CORNERS[k:k + lanes] + _pick(rng, G_CORNERS, lanes))[:lanes]
                beats.append({"gate": g, "up": [u] * lanes})
    elif unit == "relu2":
        for i in range(n_random):
            if i % 2:
                ag, au = [[int(v) for v in rng.integers(-R_LIM, R_LIM, lanes, endpoint=True)] for _ in range(2)]
            else:
                ag, au = [[int(v) for v in rng.integers(-1000, 1000, lanes)] for _ in range(2)]
            beats.append({"gate": ag, "up": au})
        for a in A_CORNERS:
            for b in A_CORNERS:
                beats.append({"gate": [a] * lanes, "up": [b] * lanes})
    else:
        raise ValueError(unit)
    return beats


# -- packing ---------------------------------------------------------------------------------------------
def _pack_lanes(values, bits):
    mask = (1 << bits) - 1
    return sum((int(v) & mask) << (bits * i) for i, v in enumerate(values))


def pack(unit, lanes, name, payload):
    """An input payload as the integer on the ``<name>__payload`` port."""
    if unit == "dequant":
        acc, m16, shift = payload
        base = 32 * lanes
        return _pack_lanes(acc, 32) | (int(m16) << base) | ((int(shift) & 0xFF) << (base + 16))
    return _pack_lanes(payload, 32)


def unpack(unit, lanes, word):
    """The ``o__payload`` integer as a list of signed lane values."""
    bits = UNITS[unit][1]
    out = []
    for i in range(lanes):
        v = (word >> (bits * i)) & ((1 << bits) - 1)
        out.append(v - (1 << bits) if v >> (bits - 1) else v)
    return out


# -- cocotb ----------------------------------------------------------------------------------------------
try:
    import cocotb
    from cocotb.clock import Clock
    from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly
except ImportError:  # pragma: no cover - the helpers above work without cocotb
    cocotb = None


def _params():
    return json.loads(os.environ["EPILOGUE_PARAMS"])


async def _reset(dut, names):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for name in names:
        getattr(dut, f"{name}__valid").value = 0
    dut.o__ready.value = 0
    await ClockCycles(dut.clk, 3)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


async def run_stream(dut, unit, lanes, beats, rng, p_stall):
    """Drive ``beats`` through the unit with independent random stalls; check every output beat.

    Returns ``(cycles, first_out_cycle, last_out_cycle)``.
    """
    names = UNITS[unit][0]
    words = {n: [pack(unit, lanes, n, b[n]) for b in beats] for n in names}
    want = [reference(unit, b) for b in beats]
    idx = {n: 0 for n in names}
    valid = {n: False for n in names}
    ports = {n: (getattr(dut, f"{n}__valid"), getattr(dut, f"{n}__ready"), getattr(dut, f"{n}__payload"))
             for n in names}
    got = 0
    held = None
    cycles, first, last = 0, None, None
    limit = 40 * len(beats) + 200
    while got < len(want):
        assert cycles < limit, f"timeout: {got}/{len(want)} outputs after {cycles} cycles"
        for n in names:
            if not valid[n] and idx[n] < len(beats) and rng.random() >= p_stall:
                valid[n] = True
                ports[n][2].value = words[n][idx[n]]
            ports[n][0].value = int(valid[n])
        ready = rng.random() >= p_stall
        dut.o__ready.value = int(ready)
        await ReadOnly()
        o_valid = int(dut.o__valid.value)
        if held is not None:
            assert o_valid, "output valid dropped while stalled"
        if o_valid:
            payload = int(dut.o__payload.value)
            if held is not None:
                assert payload == held, "output payload changed while stalled"
            held = None if ready else payload
            if ready:
                out = unpack(unit, lanes, payload)
                assert out == want[got], f"beat {got}: inputs {beats[got]}: got {out}, expected {want[got]}"
                first = cycles if first is None else first
                last = cycles
                got += 1
        for n in names:
            if valid[n] and int(ports[n][1].value):
                valid[n], idx[n] = False, idx[n] + 1
        await FallingEdge(dut.clk)
        cycles += 1
    assert all(i == len(beats) for i in idx.values()), idx
    return cycles, first, last


if cocotb is not None:
    @cocotb.test()
    async def test_random_and_corners_with_stalls(dut):
        """Seeded random beats, then every corner case, random stalls on every stream; bit-exact."""
        P = _params()
        unit, lanes = P["unit"], P["lanes"]
        await _reset(dut, UNITS[unit][0])
        rng = np.random.default_rng(random.getrandbits(32))
        beats = make_beats(unit, lanes, rng, P.get("beats", 1500))
        await run_stream(dut, unit, lanes, beats, rng, P.get("p_stall", 0.3))

    @cocotb.test()
    async def test_throughput(dut):
        """No stalls: output beats per cycle over a long run (one beat = ``lanes`` elements)."""
        P = _params()
        unit, lanes = P["unit"], P["lanes"]
        await _reset(dut, UNITS[unit][0])
        rng = np.random.default_rng(7)
        n = P.get("throughput_beats", 1000)
        beats = make_beats(unit, lanes, rng, n)[:n]
        cycles, first, last = await run_stream(dut, unit, lanes, beats, rng, 0.0)
        span = last - first + 1
        report = {"unit": unit, "lanes": lanes, "beats": n, "cycles": cycles, "latency": first,
                  "output_span_cycles": span, "beats_per_cycle": n / span,
                  "elements_per_cycle": lanes * n / span}
        if P.get("report"):
            with open(P["report"], "w") as f:
                json.dump(report, f)
