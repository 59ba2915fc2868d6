"""Combinational integer helpers with the golden model's rounding (``golden.fixed``), for attention.

Each function returns an Amaranth expression. Shift amounts are clamped to ranges that give the same
result as the golden model's (documented per function), so the barrel shifters stay small.
"""

from amaranth.hdl import Const, Mux, signed

from ..arith.tree import shift_add, tree_sum

__all__ = ["clamp", "const_mul", "mul_parts", "round_shift", "round_shift_right", "round_shift_span", "saturate",
           "tree_sum", "vmax"]


def clamp(v, lo, hi):
    """``min(max(v, lo), hi)`` for constants ``lo <= hi``."""
    return Mux(v < lo, lo, Mux(v > hi, hi, v))


def const_mul(v, c):
    """``v * c`` for a constant ``c >= 0`` as a sum of shifted copies of ``v`` (one per set bit of ``c``;
    :func:`hw.arith.tree.shift_add`).

    Yosys maps a ``$mul`` cell to DSP blocks (MULT18X18D on ECP5) even when one operand is a constant;
    address and count arithmetic by build-time constants needs only a few adders.
    """
    if c < 0:
        raise ValueError(f"const_mul: c = {c} is negative")
    return shift_add(v, c)


def mul_parts(a, b, cut=18):
    """The operand pairs ``((a_lo, b), (a_hi, b))`` of ``a * b == (a_hi * b << cut) + a_lo * b``: ``a``'s low
    ``cut`` bits (unsigned) and its high bits (with ``a``'s sign).

    Yosys splits a product wider than one 18 x 18 multiplier block itself, but sums the pieces in the same
    cycle; split by hand, each piece is registered in its block (``hw.arith.dsp.registered_product``) and
    the two are summed in the next cycle. Each piece fits one MULT18X18D when ``b`` has at most 17 bits
    (18 signed).
    """
    hi = a[cut:].as_signed() if a.shape().signed else a[cut:]
    return (a[:cut].as_unsigned(), b), (hi, b)


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


def round_shift_right(v, d, lo):
    """``golden.fixed.round_shift(v, lo + d)`` for a constant ``lo >= 1`` and an unsigned ``d``.

    ``((v >> (lo - 1)) + 2^d) >> (d + 1)``: the ``lo - 1`` low bits are dropped by wiring and the barrel
    shifter only spans the range of ``d``. Exact: with ``v = 2^(lo-1) w + f``, ``0 <= f < 2^(lo-1)``,
    ``(v + 2^(lo+d-1)) >> (lo+d) = floor((w + 2^d + f / 2^(lo-1)) / 2^(d+1))``, and adding a fraction
    below 1 to the integer ``w + 2^d`` cannot cross a multiple of ``2^(d+1)``.
    """
    if lo < 1:
        raise ValueError(f"round_shift_right: lo = {lo} must be at least 1")
    one = Const(1, 1)
    return ((v >> (lo - 1)) + (one << d)) >> (d + 1)


def round_shift_span(v, s, lo, hi):
    """``golden.fixed.round_shift(v, s)`` for a signed ``s`` known to lie in ``lo .. hi`` (``lo <= 1``).

    ``(((v << (1 - lo)) >> (s - lo)) + 1) >> 1``: one right barrel shifter over ``hi - lo + 1`` positions
    and an incrementer, instead of a left and a right shifter and a rounding constant. Exact: for
    ``s >= 1`` the inner shift is ``v >> (s - 1)`` and ``((v >> (s - 1)) + 1) >> 1`` is
    :func:`round_shift_right` with ``lo = 1``; for ``s <= 0`` it is ``v * 2^(1 - s)``, even, and the last
    step halves it to ``v << -s``. ``s`` outside ``lo .. hi`` is clamped (callers show it cannot be).
    """
    if lo > 1 or hi < lo:
        raise ValueError(f"round_shift_span: need lo <= 1 and lo <= hi, got {lo}, {hi}")
    amount = (clamp(s, lo, hi) - lo)[:(hi - lo).bit_length()].as_unsigned()
    return (((v << (1 - lo)) >> amount) + 1) >> 1


def saturate(v, bits):
    """Clamp to the signed ``bits``-bit range."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(v > hi, Const(hi, signed(bits)), Mux(v < lo, Const(lo, signed(bits)), v[:bits].as_signed()))


def vmax(a, b):
    return Mux(a > b, a, b)
