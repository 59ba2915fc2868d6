"""AdderTreeMac (the synthesis-cost baseline) against the golden integer matmul, in Amaranth's simulator."""

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from golden.tlmm import reference_matmul
from hw.baselines import AdderTreeMac


def make_program(rng, tables, lanes, tokens, k_steps, *, row_tiles=1, bits=None, max_tokens=16,
                 neg_zero=False):
    """Weight words, act steps and expected outputs for ``y = x @ W.T`` in the engine's step order.

    Ternary weights (``bits=None``) send one word per (row tile, k-step); ``bits``-bit weights send
    one word per plane, with ``shift = plane`` and ``negate`` on the sign plane.
    """
    cols = 3 * tables
    k = k_steps * cols
    x = rng.integers(-128, 128, size=(tokens, k), dtype=np.int64)
    x[0, :cols] = -128  # the corner case of the exact negation and of -x = ~x + 1
    if bits is None:
        w = rng.integers(-1, 2, size=(row_tiles * lanes, k))
        planes = [w & 3]  # code = two's complement of w in 2 bits
        if neg_zero:  # code 0b10 must decode to 0
            planes[0] = np.where((w == 0) & (rng.random(w.shape) < 0.5), 2, planes[0])
    else:
        w = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=(row_tiles * lanes, k))
        planes = [(w >> p) & 1 for p in range(bits)]
    ids = [int(t) for t in rng.choice(max_tokens, size=tokens, replace=False)]
    words, steps, expected = [], [], []
    y = reference_matmul(x, w)
    for rt in range(row_tiles):
        for s in range(k_steps):
            for p, plane in enumerate(planes):
                block = plane[rt * lanes:(rt + 1) * lanes, s * cols:(s + 1) * cols]
                words.append(sum(int(code) << (2 * i) for i, code in enumerate(block.reshape(-1))))
                for i, tok in enumerate(ids):
                    steps.append({
                        "x": [int(v) for v in x[i, s * cols:(s + 1) * cols]],
                        "token": tok,
                        "first": int(s == 0 and p == 0),
                        "last": int(s == k_steps - 1 and p == len(planes) - 1),
                        "release": int(i == tokens - 1),
                        "shift": p if bits else 0,
                        "negate": int(bits is not None and p == bits - 1),
                    })
        expected += [(tok, [int(v) for v in y[i, rt * lanes:(rt + 1) * lanes]]) for i, tok in enumerate(ids)]
    return words, steps, expected


def run(dut, words, steps, expected, *, seed=0, p_valid=1.0, p_ready=1.0):
    """Drive both inputs and drain ``sums`` with random stalls; return (outputs, cycles)."""
    rng = np.random.default_rng(seed)
    got = []
    cycles = [0]

    async def weights(ctx):
        for word in words:
            while rng.random() >= p_valid:
                await ctx.tick()
            ctx.set(dut.weights.payload, word)
            ctx.set(dut.weights.valid, 1)
            await ctx.tick().until(dut.weights.ready)
            ctx.set(dut.weights.valid, 0)

    async def acts(ctx):
        for step in steps:
            while rng.random() >= p_valid:
                await ctx.tick()
            ctx.set(dut.acts.payload, step)
            ctx.set(dut.acts.valid, 1)
            await ctx.tick().until(dut.acts.ready)
            ctx.set(dut.acts.valid, 0)

    async def sums(ctx):
        while len(got) < len(expected):
            ctx.set(dut.sums.ready, int(rng.random() < p_ready))
            _, _, valid, ready, payload = await ctx.tick().sample(dut.sums.valid, dut.sums.ready,
                                                                   dut.sums.payload)
            cycles[0] += 1
            if valid and ready:
                got.append((int(payload.slot), [int(v) for v in payload.y]))
            assert cycles[0] < 20 * len(steps) + 100, "pipeline hung"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(weights, background=True)
    sim.add_testbench(acts, background=True)
    sim.add_testbench(sums)
    sim.run()
    return got, cycles[0]


@pytest.mark.parametrize("tables,lanes,tokens,k_steps,bits,seed", [
    (2, 2, 1, 5, None, 1),  # decode: the same token updated every cycle
    (2, 2, 3, 3, None, 2),  # prefill: one word serves three tokens
    (4, 4, 3, 2, None, 3),
    (2, 2, 1, 2, 3, 4),     # bit-serial int3: shift/negate planes, consecutive updates
    (4, 4, 3, 2, 4, 5),
])
def test_matches_reference_under_random_stalls(tables, lanes, tokens, k_steps, bits, seed):
    rng = np.random.default_rng(seed)
    program = make_program(rng, tables, lanes, tokens, k_steps, row_tiles=2, bits=bits)
    dut = AdderTreeMac(tables, lanes, acc_bits=24, max_tokens=16)
    got, _ = run(dut, *program, seed=seed, p_valid=0.7, p_ready=0.6)
    assert got == program[2]


def test_full_rate_and_single_token_memory():
    """No stalls: one act step per cycle (II = 1); max_tokens = 1 reuses one accumulator set."""
    rng = np.random.default_rng(7)
    words, steps, expected = make_program(rng, 1, 3, 1, 12, row_tiles=2, bits=2, max_tokens=1,
                                          neg_zero=False)
    dut = AdderTreeMac(1, 3, acc_bits=16, max_tokens=1)
    got, cycles = run(dut, words, steps, expected)
    assert got == expected
    assert cycles <= len(steps) + 8  # pipeline latency is a few cycles


def test_negative_zero_code_decodes_to_zero():
    rng = np.random.default_rng(8)
    program = make_program(rng, 2, 2, 2, 2, neg_zero=True)
    got, _ = run(AdderTreeMac(2, 2), *program, seed=8, p_ready=0.5)
    assert got == program[2]


def test_accumulator_wraps_at_acc_bits():
    """8-bit accumulators wrap (two's complement) rather than saturate."""
    rng = np.random.default_rng(9)
    words, steps, expected = make_program(rng, 2, 2, 1, 3)
    got, _ = run(AdderTreeMac(2, 2, acc_bits=8), words, steps, expected)
    wrapped = [(t, [((v + 128) % 256) - 128 for v in y]) for t, y in expected]
    assert got == wrapped


def test_interface_shapes():
    dut = AdderTreeMac(4, 3, acc_bits=20, max_tokens=5)
    assert dut.weights.payload.shape().width == 2 * 12 * 3
    act = dut.acts.payload.shape()
    assert act["x"].shape.size == 8 * 12 and act["token"].shape.width == 3
    assert [name for name, _ in act] == ["x", "token", "first", "last", "release", "shift", "negate"]
    assert dut.sums.payload.shape()["y"].shape.size == 20 * 3
    one = AdderTreeMac(2, 8, max_tokens=1)
    assert one.acts.payload.shape()["token"].shape.width == 1
    assert dut.macs_per_cycle == 36
    for d in (dut, one):
        Fragment.get(d, None)  # elaborates (and so marks the designs used)


@pytest.mark.parametrize("kwargs,match", [
    ({"tables": 0, "lanes": 2}, "tables"),
    ({"tables": 2, "lanes": 65}, "lanes"),
    ({"tables": 2, "lanes": 2, "acc_bits": 4}, "acc_bits"),
    ({"tables": 2, "lanes": 2, "max_tokens": 0}, "max_tokens"),
    ({"tables": 2.0, "lanes": 2}, "tables"),
])
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdderTreeMac(**kwargs)


def test_same_streams_as_tlmm_engine():
    """Only the weight word differs from the product engine's interface (2-bit codes vs 5-bit indices)."""
    from hw.tlmm import TlmmEngine

    ours, engine = AdderTreeMac(4, 4, acc_bits=24, max_tokens=8), TlmmEngine(4, 4, acc_bits=24, max_tokens=8)
    for name in ("acts", "sums"):
        assert ours.signature.members[name] == engine.signature.members[name]
    assert ours.signature.members["weights"].flow == engine.signature.members["weights"].flow
    for d in (ours, engine):
        d._MustUse__silence = True
