"""Amaranth-simulator unit tests of the TLMM engine's small parts and a short engine run."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden.tlmm import build_tables, encode_groups, lookup, reference_matmul
from hw.tlmm import SignedLookup, TableBuilder, TlmmEngine
from sim.tlmm_driver import expected_outputs, make_problem, schedule, words_as_ints

RNG = np.random.default_rng(99)


def run_sim(dut, bench, clock=True):
    sim = Simulator(dut)
    if clock:
        sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_table_builder_matches_golden():
    groups = 3
    dut = TableBuilder(groups)
    cases = [RNG.integers(-128, 128, 3 * groups) for _ in range(200)]
    cases += [np.full(3 * groups, -128), np.full(3 * groups, 127), np.tile([127, -128, -128], groups)]

    async def bench(ctx):
        for x in cases:
            ctx.set(dut.x, [int(v) for v in x])
            want = build_tables(x.astype(np.int8).reshape(groups, 3))
            got = ctx.get(dut.tables)
            assert [[got[t][e] for e in range(14)] for t in range(groups)] == want.tolist()

    run_sim(dut, bench, clock=False)


def test_signed_lookup_all_27_patterns_and_bad_magnitudes():
    dut = SignedLookup()
    patterns = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], np.int8)
    indices = encode_groups(patterns)

    async def bench(ctx):
        for _ in range(40):
            xg = RNG.integers(-128, 128, 3).astype(np.int8)
            table = build_tables(xg[None])[0]
            ctx.set(dut.table, [int(v) for v in table])
            for idx, w in zip(indices, patterns):
                ctx.set(dut.index, int(idx))
                assert ctx.get(dut.value) == int(np.dot(w.astype(np.int64), xg)) == int(lookup(table, idx))
            for bad in (14, 15, 30, 31):  # never produced by the packer: read as 0
                ctx.set(dut.index, bad)
                assert ctx.get(dut.value) == 0

    run_sim(dut, bench, clock=False)


@pytest.mark.parametrize("bits", [1, 3])
def test_engine_short_run_with_stalls(bits):
    tables, lanes, m_tokens = 2, 4, 3
    x, w, packed = make_problem(RNG, m_tokens, 5, 14, tables, lanes, bits=bits)
    dut = TlmmEngine(tables, lanes, max_tokens=4)
    words = words_as_ints(packed)
    steps = list(schedule(x, packed, bits=bits))
    expect = expected_outputs(reference_matmul(x, w), lanes)
    stall = np.random.default_rng(5)

    async def weights(ctx):
        for wi in dict.fromkeys(wi for wi, _ in steps):
            while stall.random() < 0.3:
                await ctx.tick()
            ctx.set(dut.weights.payload, words[wi])
            ctx.set(dut.weights.valid, 1)
            await ctx.tick().until(dut.weights.ready)
            ctx.set(dut.weights.valid, 0)

    async def acts(ctx):
        for _, step in steps:
            while stall.random() < 0.3:
                await ctx.tick()
            ctx.set(dut.acts.payload, step)
            ctx.set(dut.acts.valid, 1)
            await ctx.tick().until(dut.acts.ready)
            ctx.set(dut.acts.valid, 0)

    received = []

    async def sink(ctx):
        for tok, sums in expect:
            while True:
                ready = stall.random() >= 0.3
                ctx.set(dut.sums.ready, ready)
                _, _, valid, payload = await ctx.tick().sample(dut.sums.valid, dut.sums.payload)
                if ready and valid:
                    break
            assert (payload.slot, [payload.y[n] for n in range(lanes)]) == (tok, sums)
            received.append(tok)
        ctx.set(dut.sums.ready, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(weights, background=True)
    sim.add_testbench(acts, background=True)
    sim.add_testbench(sink, background=True)
    sim.run_until(2e-6 * (len(steps) + 50))  # bounded: a broken engine fails, never hangs
    assert len(received) == len(expect)
