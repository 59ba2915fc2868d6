"""cocotb testbench of ``hw.tlmm.TlmmLutEngine`` (table-stationary, distributed-RAM tables) vs golden.

Environment: ``TLMM_PARAMS`` JSON with ``tables``, ``lanes``, ``slots``, ``acc_bits`` and optionally
``report`` (path for the throughput measurement) and ``rows``/``k`` (its matrix shape).

Streams are driven by ``sim.cocotb_streams.run_streams``.
"""

import json
import os
import random

import cocotb
import numpy as np

from golden.tlmm import pack_ternary, reference_matmul
from hw.tlmm.layouts import sums_layout
from hw.tlmm.lut_engine import word_step_layout
from sim import cocotb_streams as streams
from sim.tlmm_driver import expected_outputs_stationary, make_problem, schedule_stationary, words_as_ints

P = json.loads(os.environ["TLMM_PARAMS"])
T, N, SLOTS, ACC = P["tables"], P["lanes"], P["slots"], P["acc_bits"]
WORD = word_step_layout(T, N, SLOTS)
SUMS = sums_layout(N, ACC, SLOTS)


async def reset(dut):
    await streams.reset(dut, inputs=("acts", "weights"), outputs=("sums",))


def pack_acts(values):
    return sum((v & 0xFF) << (8 * i) for i, v in enumerate(values))


async def run_problem(dut, x, w, packed, bits, rng, p_in_stall, p_out_stall):
    """Stream one matmul; returns (cycles, words accepted, cycles from the first table set to the last word)."""
    words = words_as_ints(packed)
    items = list(schedule_stationary(x, packed, bits=bits))
    acts = [pack_acts(it[1]) for it in items if it[0] == "acts"]
    steps = [WORD.const({"word": words[it[1]], **it[2]}).as_bits() for it in items if it[0] == "word"]
    want = expected_outputs_stationary(reference_matmul(x, w), N)
    run = await streams.run_streams(dut, {"acts": acts, "weights": steps}, "sums", len(want), rng,
                                    p_in_stall, p_out_stall)
    got = []
    for payload in run.received:
        c = SUMS.from_bits(payload)
        got.append((int(c.slot), [int(c.y[n]) for n in range(N)]))
    for k, (g, e) in enumerate(zip(got, want)):
        assert g == e, f"output {k}: got slot {g[0]} {g[1]}, expected slot {e[0]} {e[1]}"
    # The span starts with the first table fill and ends with the last word.
    return run.cycles, len(steps), run.accepted["weights"][-1] - run.accepted["acts"][0] + 1


def fits(m, r):
    return m * -(-r // N) <= SLOTS


CASES = [
    (1, N, 3 * T, 1, "random"),
    (1, 1, 1, 1, "random"),
    (2, 2 * N + 1, 3 * T + 1, 1, "random"),
    (2, 3 * N, 6 * T + 5, 1, "extreme"),
    (1, N + 2, 3 * T + 2, 2, "random"),
    (2, N, 3 * T, 5, "random"),
    (1, 2 * N, 3 * T + 4, 8, "random"),
    (1, N, 3 * T, 8, "extreme"),
]


@cocotb.test()
async def test_matmuls_with_stalls(dut):
    """Random and corner-case matmuls with random stalls on all three streams, bit-exact vs golden."""
    await reset(dut)
    rng = np.random.default_rng(random.getrandbits(32))
    for m, r, k, bits, kind in CASES:
        while not fits(m, r):
            m = max(1, m - 1) if m > 1 else m
            r = max(1, r // 2)
        x, w, packed = make_problem(rng, m, r, k, T, N, bits=bits, kind=kind)
        await run_problem(dut, x, w, packed, bits, rng, 0.3, 0.3)


@cocotb.test()
async def test_zero_and_ones(dut):
    """All-zero activations, all +1 and all -1 weights, no stalls."""
    await reset(dut)
    rng = np.random.default_rng(random.getrandbits(32))
    rows = min(3 * N, SLOTS * N)
    x, _, _ = make_problem(rng, 1, rows, 3 * T + 2, T, N)
    for sign in (1, -1):
        w = np.full((rows, x.shape[1]), sign, np.int8)
        await run_problem(dut, x, w, pack_ternary(w, T, N), 1, rng, 0.0, 0.0)
    x[:] = 0
    w = rng.integers(-1, 2, (rows, x.shape[1])).astype(np.int8)
    await run_problem(dut, x, w, pack_ternary(w, T, N), 1, rng, 0.0, 0.0)


@cocotb.test()
async def test_throughput(dut):
    """Words accepted per cycle over a long matmul with no stalls, every table fill included."""
    await reset(dut)
    rng = np.random.default_rng(1)
    rows = P.get("rows", min(SLOTS, 64) * N)
    k = P.get("k", 3 * T * 8)
    x, w, packed = make_problem(rng, 1, rows, k, T, N)
    cycles, words, span = await run_problem(dut, x, w, packed, 1, rng, 0.0, 0.0)
    tiles = packed.row_tiles
    report = {"tables": T, "lanes": N, "rows": rows, "k": k, "row_tiles_per_table_set": tiles,
              "words": words, "accept_span_cycles": span, "total_cycles": cycles,
              "steady_state_efficiency": words / span,
              "fill_bound": tiles / (tiles + 16)}
    if P.get("report"):
        with open(P["report"], "w") as f:
            json.dump(report, f)
