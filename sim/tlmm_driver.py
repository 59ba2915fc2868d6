"""Turns a matmul problem into the TLMM engine's act-step and weight-word streams, and back.

The order is the engine's contract (row tile, k-step, bit plane, then token; a word released after the
last token). The Amaranth-simulator tests, the cocotb testbench and the benchmarks all drive the engine
through these functions.
"""

import numpy as np

from golden.tlmm import GROUP_SIZE, pack_bitserial, pack_ternary


def words_as_ints(packed):
    """The packed words as Python ints (little-endian bytes)."""
    return [int.from_bytes(bytes(row), "little") for row in packed.data]


def _k_step_activations(x, packed):
    """Activations zero-padded to whole k-steps: shape ``(M, k_steps, 3T)``."""
    m_tokens, k = x.shape
    width = packed.tables * GROUP_SIZE
    xp = np.zeros((m_tokens, packed.k_steps * width), np.int64)
    xp[:, :k] = x
    return xp.reshape(m_tokens, packed.k_steps, width)


def schedule(x, packed, bits=1):
    """Yield ``(word_index, step)`` in engine order for activations ``x`` (M, K) int8.

    ``step`` is a dict for ``act_step_layout``; ``word_index`` indexes :func:`words_as_ints`.
    """
    m_tokens = x.shape[0]
    xp = _k_step_activations(x, packed)
    for rt in range(packed.row_tiles):
        for ks in range(packed.k_steps):
            xs = xp[:, ks]
            for plane in range(bits):
                word = (rt * packed.k_steps + ks) * bits + plane
                for tok in range(m_tokens):
                    yield word, {
                        "x": [int(v) for v in xs[tok]],
                        "token": tok,
                        "first": int(ks == 0 and plane == 0),
                        "last": int(ks == packed.k_steps - 1 and plane == bits - 1),
                        "release": int(tok == m_tokens - 1),
                        "shift": plane if bits > 1 else 0,
                        "negate": int(bits > 1 and plane == bits - 1),
                    }


def expected_outputs(y, lanes):
    """Expected ``(token, sums)`` in emission order for results ``y`` (M, R): row-tile-major, then token."""
    m_tokens, rows = y.shape
    tiles = -(-rows // lanes)
    yp = np.zeros((m_tokens, tiles * lanes), np.int64)
    yp[:, :rows] = y
    return [(tok, [int(v) for v in yp[tok, rt * lanes:(rt + 1) * lanes]])
            for rt in range(tiles) for tok in range(m_tokens)]


def make_problem(rng, m_tokens, rows, k, tables, lanes, bits=1, kind="random"):
    """A random (or corner-case) problem: returns ``(x, w, packed)``."""
    if kind == "extreme":
        x = rng.choice(np.array([-128, 127], np.int8), (m_tokens, k))
    else:
        x = rng.integers(-128, 128, (m_tokens, k), dtype=np.int8)
    if bits == 1:
        w = rng.integers(-1, 2, (rows, k), dtype=np.int8)
        if kind == "extreme":
            w = np.where(x[:1] < 0, -1, 1).repeat(rows, 0).astype(np.int8)  # every product at -128*-1 or 127
        return x, w, pack_ternary(w, tables, lanes)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    w = rng.integers(lo, hi + 1, (rows, k)).astype(np.int8)
    if kind == "extreme":
        w = np.full((rows, k), lo, np.int8)
    return x, w, pack_bitserial(w, bits, tables, lanes)


def schedule_stationary(x, packed, bits=1):
    """Table-stationary order for :class:`hw.tlmm.TlmmLutEngine`.

    Yields ``("acts", [3T ints])`` for each table set and ``("word", word_index, step)`` for each word:
    for each k-step, for each token: one table set, then every row tile (and bit plane) of that k-step.
    The accumulator slot of (token, row tile) is ``token * row_tiles + row_tile``.
    """
    m_tokens = x.shape[0]
    xp = _k_step_activations(x, packed)
    for ks in range(packed.k_steps):
        for tok in range(m_tokens):
            yield ("acts", [int(v) for v in xp[tok, ks]])
            for rt in range(packed.row_tiles):
                for plane in range(bits):
                    yield ("word", (rt * packed.k_steps + ks) * bits + plane, {
                        "slot": tok * packed.row_tiles + rt,
                        "first": int(ks == 0 and plane == 0),
                        "last": int(ks == packed.k_steps - 1 and plane == bits - 1),
                        "shift": plane if bits > 1 else 0,
                        "negate": int(bits > 1 and plane == bits - 1),
                        "done": int(rt == packed.row_tiles - 1 and plane == bits - 1),
                    })


def expected_outputs_stationary(y, lanes):
    """Expected ``(slot, sums)`` in emission order for the table-stationary order (token, then row tile)."""
    m_tokens, rows = y.shape
    tiles = -(-rows // lanes)
    yp = np.zeros((m_tokens, tiles * lanes), np.int64)
    yp[:, :rows] = y
    return [(tok * tiles + rt, [int(v) for v in yp[tok, rt * lanes:(rt + 1) * lanes]])
            for tok in range(m_tokens) for rt in range(tiles)]
