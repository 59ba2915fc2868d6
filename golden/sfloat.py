"""SFloat: the per-token scalar arithmetic of the accelerator's scalar unit.

Scales (activation scale, RMS, dequantisation factors, softmax normaliser) are positive numbers with a
wide dynamic range but only a handful per token, so the hardware computes them in a small sequential
unit with a 24-bit mantissa and a signed exponent, using only integer multiply, shift-subtract divide
and digit-by-digit square root. This module defines that arithmetic bit-exactly; all operations are
vectorised over NumPy arrays of scalars (one per token, or per token and head).

A value is ``m * 2^e`` with ``m = 0`` (zero) or ``2^23 <= m < 2^24``. Every operation truncates
(rounds toward zero) when it normalises: cheap in gateware and biased by at most 2^-23 relative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .fixed import bitlen, round_shift

__all__ = ["MANT_BITS", "SFloat"]

MANT_BITS = 24
_ZERO_EXP = -(1 << 20)  # exponent stored for zero; keeps comparisons and shifts well defined


def _i64(v):
    return np.asarray(v, dtype=np.int64)


def _isqrt(n):
    """Exact integer square root (floor) of non-negative int64 values below 2^62."""
    n = _i64(n)
    r = np.floor(np.sqrt(n.astype(np.float64))).astype(np.int64)
    # float sqrt is within one of the truth for n < 2^62; step to the exact floor.
    r = np.where(r * r > n, r - 1, r)
    r = np.where((r + 1) * (r + 1) <= n, r + 1, r)
    return r


@dataclass(frozen=True)
class SFloat:
    """An array of non-negative scalars ``m * 2^e`` (see module docstring).

    Attributes
    ----------
    m : numpy.ndarray
        int64 mantissas, 0 or in ``[2^23, 2^24)``.
    e : numpy.ndarray
        int64 exponents, same shape.
    """

    m: np.ndarray
    e: np.ndarray

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def normalise(cls, mant, exp):
        """Normalise an arbitrary non-negative integer mantissa (< 2^62) and exponent, truncating."""
        mant, exp = np.broadcast_arrays(_i64(mant), _i64(exp))
        if np.any(mant < 0):
            raise ValueError("SFloat holds non-negative values only")
        n = bitlen(mant)
        sh = n - MANT_BITS
        m = np.where(sh >= 0, mant >> np.clip(sh, 0, 62), mant << np.clip(-sh, 0, 62))
        e = exp + sh
        zero = mant == 0
        return cls(np.where(zero, 0, m), np.where(zero, _ZERO_EXP, e))

    @classmethod
    def from_int(cls, v):
        return cls.normalise(v, 0)

    @classmethod
    def pow2(cls, k):
        """Exactly ``2^k``."""
        k = _i64(k)
        return cls(np.full(k.shape, 1 << (MANT_BITS - 1), dtype=np.int64), k - (MANT_BITS - 1))

    @classmethod
    def from_float(cls, x):
        """Convert positive floats (compile-time constants such as weight scales), truncating to 24 bits.

        Exact for float32 inputs, whose significand has 24 bits.
        """
        x = np.asarray(x, dtype=np.float64)
        if np.any(~np.isfinite(x)) or np.any(x < 0):
            raise ValueError(f"SFloat needs finite non-negative values, got {x}")
        fr, ex = np.frexp(x)  # x = fr * 2^ex, fr in [0.5, 1)
        m = np.floor(np.ldexp(fr, MANT_BITS)).astype(np.int64)
        e = ex.astype(np.int64) - MANT_BITS
        return cls.normalise(m, e)

    # -- views ---------------------------------------------------------------------------------------
    @property
    def shape(self):
        return self.m.shape

    def to_float(self):
        return np.ldexp(self.m.astype(np.float64), self.e.astype(np.int64).clip(-1100, 1100))

    def __getitem__(self, idx):
        return SFloat(self.m[idx], self.e[idx])

    def reshape(self, *shape):
        return SFloat(self.m.reshape(*shape), self.e.reshape(*shape))

    def is_zero(self):
        return self.m == 0

    # -- arithmetic (each op is one scalar-unit instruction) ------------------------------------------
    def mul(self, other):
        return SFloat.normalise(self.m * other.m, self.e + other.e)

    def div(self, other):
        """``self / other``; dividing by zero is a caller bug and raises."""
        if np.any(other.m == 0):
            raise ZeroDivisionError("SFloat division by zero")
        q = (self.m << MANT_BITS) // other.m  # in (2^23, 2^25) for normal operands
        return SFloat.normalise(q, self.e - other.e - MANT_BITS)

    def add(self, other):
        """Align to the larger exponent (truncating the smaller operand), add, normalise."""
        e = np.maximum(self.e, other.e)
        a = self.m >> np.clip(e - self.e, 0, 62)
        b = other.m >> np.clip(e - other.e, 0, 62)
        return SFloat.normalise(a + b, e)

    def sqrt(self):
        """Square root: ``isqrt(m << (24 + (e & 1))) * 2^((e - 24 - (e & 1)) / 2)``."""
        odd = self.e & 1
        r = _isqrt(self.m << (MANT_BITS + odd))
        out = SFloat.normalise(r, (self.e - MANT_BITS - odd) >> 1)
        return SFloat(np.where(self.m == 0, 0, out.m), np.where(self.m == 0, _ZERO_EXP, out.e))

    def scale_pow2(self, k):
        """Multiply by ``2^k`` exactly (exponent add)."""
        return SFloat(self.m, np.where(self.m == 0, _ZERO_EXP, self.e + _i64(k)))

    # -- use on vectors --------------------------------------------------------------------------------
    def multiplier(self):
        """The per-element form: a 16-bit mantissa ``m16`` and shift ``s`` with value ~ ``m16 * 2^-s``."""
        return self.m >> 8, -(self.e + 8)

    def apply(self, x, axis_broadcast=True):
        """Multiply integer vectors by this scale with one 16-bit multiplier and a rounding shift.

        ``x`` has one more trailing axis than the scale (the vector); returns int64 (caller saturates).
        """
        m16, s = self.multiplier()
        if axis_broadcast:
            m16, s = m16[..., None], s[..., None]
        return round_shift(_i64(x) * m16, s)


def sfloat_const(x):
    """A scalar compile-time constant as a 0-d SFloat."""
    if not (isinstance(x, (int, float)) and math.isfinite(x) and x >= 0):
        raise ValueError(f"bad SFloat constant {x!r}")
    return SFloat.from_float(np.float64(x))
