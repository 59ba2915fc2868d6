"""cocotb testbench of ``hw.tlmm.TlmmLutEngine`` (table-stationary, distributed-RAM tables) vs golden.

Environment: ``TLMM_PARAMS`` JSON with ``tables``, ``lanes``, ``slots``, ``acc_bits`` and optionally
``report`` (path for the throughput measurement) and ``rows``/``k`` (its matrix shape).

Streams are driven at the falling edge and sampled in ReadOnly; valid is held until the transfer, and
the output payload must stay stable while stalled.
"""

import json
import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly

from golden.tlmm import pack_ternary, reference_matmul
from hw.tlmm.layouts import sums_layout
from hw.tlmm.lut_engine import word_step_layout
from sim.tlmm_driver import expected_outputs_stationary, make_problem, schedule_stationary, words_as_ints

P = json.loads(os.environ["TLMM_PARAMS"])
T, N, SLOTS, ACC = P["tables"], P["lanes"], P["slots"], P["acc_bits"]
WORD = word_step_layout(T, N, SLOTS)
SUMS = sums_layout(N, ACC, SLOTS)


async def reset(dut):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for name in ("acts__valid", "weights__valid", "sums__ready"):
        getattr(dut, name).value = 0
    await ClockCycles(dut.clk, 3)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


def pack_acts(values):
    return sum((v & 0xFF) << (8 * i) for i, v in enumerate(values))


async def run_problem(dut, x, w, packed, bits, rng, p_in_stall, p_out_stall):
    """Stream one matmul; returns (cycles, words accepted, cycles from the first table set to the last word)."""
    words = words_as_ints(packed)
    items = list(schedule_stationary(x, packed, bits=bits))
    acts = [pack_acts(it[1]) for it in items if it[0] == "acts"]
    steps = [WORD.const({"word": words[it[1]], **it[2]}).as_bits() for it in items if it[0] == "word"]
    want = expected_outputs_stationary(reference_matmul(x, w), N)
    ai = wi = 0
    a_valid = w_valid = False
    got, held = [], None
    cycles, first, last = 0, None, None
    limit = 30 * (len(steps) + 20 * len(acts)) + 1000
    while len(got) < len(want):
        assert cycles < limit, f"timeout: {len(got)}/{len(want)} outputs after {cycles} cycles"
        if not a_valid and ai < len(acts) and rng.random() >= p_in_stall:
            a_valid = True
            dut.acts__payload.value = acts[ai]
        if not w_valid and wi < len(steps) and rng.random() >= p_in_stall:
            w_valid = True
            dut.weights__payload.value = steps[wi]
        dut.acts__valid.value = int(a_valid)
        dut.weights__valid.value = int(w_valid)
        out_ready = rng.random() >= p_out_stall
        dut.sums__ready.value = int(out_ready)
        await ReadOnly()
        if int(dut.sums__valid.value):
            payload = int(dut.sums__payload.value)
            if held is not None:
                assert payload == held, "sums payload changed while stalled"
            held = None if out_ready else payload
            if out_ready:
                c = SUMS.from_bits(payload)
                got.append((int(c.slot), [int(c.y[n]) for n in range(N)]))
        if a_valid and int(dut.acts__ready.value):
            first = cycles if first is None else first  # the span starts with the first table fill
            a_valid, ai = False, ai + 1
        if w_valid and int(dut.weights__ready.value):
            last = cycles
            w_valid, wi = False, wi + 1
        await FallingEdge(dut.clk)
        cycles += 1
    assert ai == len(acts) and wi == len(steps), "finished without consuming every input"
    for k, (g, e) in enumerate(zip(got, want)):
        assert g == e, f"output {k}: got slot {g[0]} {g[1]}, expected slot {e[0]} {e[1]}"
    return cycles, wi, last - first + 1


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
