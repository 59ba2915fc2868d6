"""Balanced reduction trees: the depth grows with the log of the operand count, not linearly as with
Python's left-to-right ``sum`` or ``functools.reduce``."""

import operator

__all__ = ["tree_reduce", "tree_sum", "tree_or"]


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
