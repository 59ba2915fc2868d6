"""Combinational integer helpers with the golden model's rounding (``golden.fixed``), for attention.

Each function returns an Amaranth expression. Shift amounts are clamped to ranges that give the same
result as the golden model's (documented per function), so the barrel shifters stay small.
"""

from amaranth.hdl import Const, Mux, signed

__all__ = ["clamp", "round_shift", "saturate", "tree_sum", "vmax"]


def clamp(v, lo, hi):
    """``min(max(v, lo), hi)`` for constants ``lo <= hi``."""
    return Mux(v < lo, lo, Mux(v > hi, hi, v))


def round_shift(v, s, *, max_left, max_right):
    """``golden.fixed.round_shift(v, s)``: ``(v + 2^(s-1)) >> s`` for ``s > 0``, ``v << -s`` otherwise.

    ``v`` is a signed (or unsigned) value and ``s`` a signed shift. The left shift is clamped to
    ``max_left`` and the right shift to ``max_right``. Callers pick the clamps so that they cannot change
    the final result: a non-zero value shifted left by ``max_left`` already saturates the caller's output,
    and ``|v| < 2^(max_right - 1)`` makes every right shift of ``max_right`` or more round to zero, as in
    the golden model.
    """
    if isinstance(s, int):
        return v << -s if s <= 0 else (v + (1 << (s - 1))) >> s
    # Clamped, then cut to the few bits the clamp leaves: small unsigned shift amounts.
    right = clamp(s, 1, max_right)[:max_right.bit_length()].as_unsigned()
    left = clamp(-s, 0, max_left)[:max(1, max_left.bit_length())].as_unsigned()
    half = (Const(1, 1) << right) >> 1
    return Mux(s > 0, (v + half) >> right, v << left)


def saturate(v, bits):
    """Clamp to the signed ``bits``-bit range."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(v > hi, Const(hi, signed(bits)), Mux(v < lo, Const(lo, signed(bits)), v[:bits].as_signed()))


def tree_sum(values):
    """Balanced adder tree (shallower than Python's left-to-right ``sum``)."""
    values = list(values)
    while len(values) > 1:
        values = [values[i] + values[i + 1] if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


def vmax(a, b):
    return Mux(a > b, a, b)
