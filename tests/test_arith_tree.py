"""``hw.arith.tree``: balanced reductions give the same value as a left-to-right reduction, with a
logarithmic depth."""

import operator

import pytest

from hw.arith.tree import tree_or, tree_reduce, tree_sum


class Depth:
    """A value that counts the operator levels above its leaves."""

    def __init__(self, depth=0):
        self.depth = depth

    def __add__(self, other):
        return Depth(max(self.depth, other.depth) + 1)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_values_and_depth(n):
    assert tree_sum(range(1, n + 1)) == n * (n + 1) // 2
    assert tree_or([1 << k for k in range(n)]) == (1 << n) - 1
    assert tree_reduce([str(k) for k in range(n)], operator.add) == "".join(str(k) for k in range(n))
    assert tree_sum([Depth() for _ in range(n)]).depth == (n - 1).bit_length()


def test_no_values_is_an_error():
    with pytest.raises(ValueError, match="no values"):
        tree_reduce([], operator.add)
