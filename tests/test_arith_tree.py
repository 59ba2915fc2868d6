"""``hw.arith.tree``: balanced reductions give the same value as a left-to-right reduction, with a
logarithmic depth."""

import operator
import random

import pytest
from amaranth.hdl import Const, Module, Signal, signed
from amaranth.sim import Simulator

from hw.arith.tree import shift_add, tree_or, tree_reduce, tree_sum


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


def test_shift_add_is_the_product():
    """A signed ``a`` times a narrow unsigned signal, an int and a ``Const`` (0 included), on corner and
    random values."""
    a, b = Signal(signed(12)), Signal(5)
    consts = [0, 1, 20, 0b10110]
    m = Module()
    outs = [Signal(signed(20), name="by_signal")] + [Signal(signed(20), name=f"by_{c}") for c in consts]
    m.d.comb += outs[0].eq(shift_add(a, b))
    m.d.comb += [o.eq(shift_add(a, c if k % 2 else Const(c))) for k, (o, c) in enumerate(zip(outs[1:], consts))]
    rng = random.Random(5)
    cases = [(-2048, 31), (2047, 31), (0, 0), (-1, 1)] + [(rng.randint(-2048, 2047), rng.randint(0, 31))
                                                          for _ in range(100)]
    failures = []

    async def bench(ctx):
        for va, vb in cases:
            ctx.set(a, va)
            ctx.set(b, vb)
            got = [ctx.get(o) for o in outs]
            if got != [va * vb] + [va * c for c in consts]:
                failures.append((va, vb, got))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert not failures, failures[:3]


def test_shift_add_refuses_a_negative_constant():
    with pytest.raises(ValueError, match="negative"):
        shift_add(Signal(4), -3)
