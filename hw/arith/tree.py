"""Balanced reduction trees: the depth grows with the log of the operand count, not linearly as with
Python's left-to-right ``sum`` or ``functools.reduce``; and :func:`shift_add`, a product as such a sum."""

import operator

from amaranth.hdl import Const, Mux

__all__ = ["tree_reduce", "tree_sum", "tree_or", "shift_add"]


def tree_reduce(values, op):
    """``op`` over ``values`` as a balanced binary tree (pairs first, an odd one carried up).

    Raises
    ------
    ValueError
        For no values.
    """
    values = list(values)
    if not values:
        raise ValueError("tree_reduce: no values")
    while len(values) > 1:
        values = [op(values[i], values[i + 1]) if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


def tree_sum(values):
    """Balanced adder tree."""
    return tree_reduce(values, operator.add)


def tree_or(values):
    """Balanced OR tree."""
    return tree_reduce(values, operator.or_)


def shift_add(a, b):
    """``a * b`` as a balanced sum of shifted copies of ``a``, one per bit of ``b``: adders instead of a
    multiplier block and its long routes, for a constant ``b`` (an ``int >= 0`` or a ``Const``: one copy
    per set bit) or a narrow signal ``b`` (one masked copy per bit)."""
    if isinstance(b, int):
        b = Const(b)
    if isinstance(b, Const):
        if b.value < 0:
            raise ValueError(f"shift_add: constant {b.value} is negative")
        terms = [a << i for i in range(b.value.bit_length()) if b.value >> i & 1]
    else:
        terms = [Mux(b[i], a << i, 0) for i in range(len(b))]
    return tree_sum(terms) if terms else Const(0, 1)
