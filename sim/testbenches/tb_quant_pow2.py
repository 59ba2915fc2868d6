"""cocotb testbench of :class:`hw.vector.quant_pow2.QuantPow2` against :func:`golden.numerics.quant_pow2`.

Environment: ``QUANT_PARAMS`` JSON with ``lanes``, ``length``, ``slots``, ``tokens``, ``vectors``,
``seed``, ``p_stall`` and optionally ``report`` (path: the no-stall throughput is written there).

The stimulus and the packing need no simulator: ``tests/test_quant_pow2_unit.py`` uses them for the
Amaranth-simulator tests too.
"""

import json
import os
import random

import numpy as np

from golden.numerics import quant_pow2

__all__ = ["make_vectors", "input_beats", "pack_in", "unpack_out", "check_outputs"]


def make_vectors(rng, tokens, vectors, length):
    """int32 Q.16 vectors ``(tokens, vectors, length)`` spanning every exponent, with the corners: an
    all-zero vector, ``-2^31`` and ``2^31 - 1`` (e = 25), values just below/at 128 (e = 0 / 1) and
    halves that round to +-128 (clamped to +-127)."""
    bits = rng.integers(0, 33, (tokens, vectors))
    x = np.empty((tokens, vectors, length), np.int64)
    for t in range(tokens):
        for v in range(vectors):
            hi = 1 << int(min(bits[t, v], 31))
            x[t, v] = rng.integers(-hi, hi, length)
    corners = [np.zeros(length, np.int64), np.full(length, -(1 << 31)), np.full(length, (1 << 31) - 1),
               np.full(length, 127), np.full(length, -128), np.full(length, 255),
               np.array([255] + [1] * (length - 1)), np.array([-255] + [-1] * (length - 1))]
    flat = x.reshape(-1, length)
    for i, c in enumerate(corners[:flat.shape[0]]):
        flat[i] = c
    return x


def input_beats(x, lanes):
    """Beats ``(slot, values)`` in TLMM emission order: vector, beat within it, then token; the padding
    lanes of a partial last beat hold a large value, which the unit must ignore."""
    tokens, vectors, length = x.shape
    beats = -(-length // lanes)
    out = []
    for v in range(vectors):
        for b in range(beats):
            for t in range(tokens):
                vals = [int(a) for a in x[t, v, b * lanes:(b + 1) * lanes]]
                out.append((t, vals + [(1 << 31) - 1] * (lanes - len(vals))))
    return out


def pack_in(lanes, slot_bits, slot, values):
    word = 0
    for n, a in enumerate(values):
        word |= (a & 0xFFFFFFFF) << (32 * n)
    return word | slot << (32 * lanes)


def unpack_out(lanes, slot_bits, word):
    """``(slot, q values, e, first, last)`` of an output payload."""
    q = [((word >> (8 * n)) & 0xFF) - (256 if (word >> (8 * n + 7)) & 1 else 0) for n in range(lanes)]
    base = 8 * lanes
    e = (word >> base) & 0x1F
    slot = (word >> (base + 5)) & ((1 << slot_bits) - 1)
    first = (word >> (base + 5 + slot_bits)) & 1
    last = (word >> (base + 6 + slot_bits)) & 1
    return slot, q, e, first, last


def check_outputs(x, lanes, outputs):
    """Check the unit's outputs ``[(slot, q, e, first, last)]`` against golden ``quant_pow2``."""
    tokens, vectors, length = x.shape
    beats = -(-length // lanes)
    q, e = quant_pow2(x)
    per_slot = {t: [] for t in range(tokens)}
    for o in outputs:
        assert o[0] in per_slot, f"output for unknown slot {o[0]}"
        per_slot[o[0]].append(o)
    for t in range(tokens):
        assert len(per_slot[t]) == vectors * beats, f"slot {t}: {len(per_slot[t])} beats"
        for v in range(vectors):
            chunk = per_slot[t][v * beats:(v + 1) * beats]
            vals = [a for o in chunk for a in o[1]]
            assert vals[:length] == [int(a) for a in q[t, v]], f"slot {t} vector {v}: q differs"
            assert all(a == 0 for a in vals[length:]), f"slot {t} vector {v}: padding not zero"
            assert [o[2] for o in chunk] == [int(e[t, v])] * beats, f"slot {t} vector {v}: e differs"
            assert [(o[3], o[4]) for o in chunk] == [(int(i == 0), int(i == beats - 1)) for i in range(beats)]


def _slot_bits(slots):
    return max(1, (slots - 1).bit_length())


try:
    import cocotb
except ImportError:  # the helpers above are used without cocotb too
    cocotb = None

if cocotb is not None:
    from sim import cocotb_streams as streams

    @cocotb.test()
    async def test_random_and_corners_with_stalls(dut):
        p = json.loads(os.environ["QUANT_PARAMS"])
        lanes, slots, sb = p["lanes"], p["slots"], _slot_bits(p["slots"])
        rng = np.random.default_rng(p["seed"])
        x = make_vectors(rng, p["tokens"], p["vectors"], p["length"])
        beats = input_beats(x, lanes)
        await streams.reset(dut, ["i"], ["o"])
        run = await streams.run_streams(dut, {"i": [pack_in(lanes, sb, s, v) for s, v in beats]}, "o",
                                        len(beats), random.Random(p["seed"]), p["p_stall"], p["p_stall"])
        check_outputs(x, lanes, [unpack_out(lanes, sb, w) for w in run.received])

    @cocotb.test()
    async def test_throughput(dut):
        """No stalls: beats per cycle from the first input to the last output (includes the fill)."""
        p = json.loads(os.environ["QUANT_PARAMS"])
        lanes, sb = p["lanes"], _slot_bits(p["slots"])
        rng = np.random.default_rng(p["seed"] + 1)
        x = make_vectors(rng, p["tokens"], 4 * p["vectors"], p["length"])
        beats = input_beats(x, lanes)
        await streams.reset(dut, ["i"], ["o"])
        run = await streams.run_streams(dut, {"i": [pack_in(lanes, sb, s, v) for s, v in beats]}, "o",
                                        len(beats), random.Random(0))
        check_outputs(x, lanes, [unpack_out(lanes, sb, w) for w in run.received])
        if p.get("report"):
            with open(p["report"], "w") as f:
                json.dump({"beats": len(beats), "cycles": run.cycles, "elements": int(x.size)}, f)
