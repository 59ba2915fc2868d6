"""Integer helpers shared by every golden model: bit lengths, shifts with defined rounding, saturation.

All functions work element-wise on int64 NumPy arrays (or Python ints) and define exactly what the
hardware computes. Rounding is always "round half up" (add half an LSB, then an arithmetic right shift),
the cheapest correct rounding in gateware. See ``docs/numerics.md``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bitlen", "shift_floor", "round_shift", "saturate", "INT32_MIN", "INT32_MAX"]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1

# numpy (like C) leaves shifts by >= 64 undefined; every shift amount is clamped to this first.
_MAX_SHIFT = 62


def bitlen(v):
    """Number of bits needed for the non-negative integers ``v`` (0 for 0), exactly, for values < 2^63."""
    v = np.asarray(v, dtype=np.int64)
    if np.any(v < 0):
        raise ValueError("bitlen is defined for non-negative values only")
    out = np.zeros(v.shape, dtype=np.int64)
    work = v.copy()
    for step in (32, 16, 8, 4, 2, 1):
        big = work >= (np.int64(1) << step)
        out = np.where(big, out + step, out)
        work = np.where(big, work >> step, work)
    return out + (work > 0)


def shift_floor(v, s):
    """``v * 2^-s`` rounded toward minus infinity (plain arithmetic shift); negative ``s`` shifts left."""
    v = np.asarray(v, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    right = np.clip(s, 0, _MAX_SHIFT)
    left = np.clip(-s, 0, _MAX_SHIFT)
    return np.where(s >= 0, v >> right, v << left)


def round_shift(v, s):
    """``v * 2^-s`` rounded half up: ``(v + 2^(s-1)) >> s`` for ``s > 0``; exact left shift for ``s <= 0``."""
    v = np.asarray(v, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    right = np.clip(s, 1, _MAX_SHIFT)
    half = np.int64(1) << (right - 1)
    left = np.clip(-s, 0, _MAX_SHIFT)
    return np.where(s > 0, (v + half) >> right, v << left)


def saturate(v, bits):
    """Clamp to the signed ``bits``-bit range."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return np.clip(np.asarray(v, dtype=np.int64), lo, hi)
