"""cocotb testbench of ``hw.tlmm.TlmmEngine`` against the golden TLMM model, on Verilator.

Environment (from ``run_cocotb(extra_env=...)``):

``TLMM_PARAMS``
    JSON: ``tables``, ``lanes``, ``max_tokens``, ``acc_bits``, and ``report`` (a path where the
    throughput test writes its measurement as JSON).

Streams are driven by ``sim.cocotb_streams.run_streams`` (falling-edge drive, ReadOnly sampling, valid
held until the transfer, output payload stable while stalled).
"""

import json
import os
import random

import cocotb
import numpy as np
from sim.tlmm_driver import expected_outputs, make_problem, schedule, words_as_ints

from golden.tlmm import reference_matmul
from hw.tlmm.layouts import act_step_layout, sums_layout
from sim import cocotb_streams as streams

P = json.loads(os.environ["TLMM_PARAMS"])
T, N, MAX_TOK, ACC = P["tables"], P["lanes"], P["max_tokens"], P["acc_bits"]
ACT = act_step_layout(T, MAX_TOK)
SUMS = sums_layout(N, ACC, MAX_TOK)


def pack_step(step):
    return ACT.const(step).as_bits()


def unpack_sums(bits):
    c = SUMS.from_bits(bits)
    return int(c.slot), [int(c.y[n]) for n in range(N)]


async def reset(dut):
    await streams.reset(dut, inputs=("acts", "weights"), outputs=("sums",))


async def run_problem(dut, x, w, packed, bits, rng, p_in_stall, p_out_stall):
    """Stream one matmul through the engine; returns (outputs, cycles, accepted act steps, accept span)."""
    steps = list(schedule(x, packed, bits=bits))
    want = expected_outputs(reference_matmul(x, w), N)
    run = await streams.run_streams(
        dut, {"weights": words_as_ints(packed), "acts": [pack_step(s) for _, s in steps]}, "sums", len(want),
        rng, p_in_stall, p_out_stall)
    got = [unpack_sums(p) for p in run.received]
    for k, (g, e) in enumerate(zip(got, want)):
        assert g == e, f"output {k}: got slot {g[0]} {g[1]}, expected slot {e[0]} {e[1]}"
    acc = run.accepted["acts"]
    return got, run.cycles, len(acc), acc[-1] - acc[0] + 1


CASES = [
    # (tokens M, rows R, K, bits, kind)
    (1, N, 3 * T, 1, "random"),
    (1, 1, 1, 1, "random"),                  # one row, one column
    (3, 2 * N + 1, 3 * T + 1, 1, "random"),  # rows not a multiple of N, K not a multiple of 3T
    (2, N - 1 if N > 1 else 1, 7, 1, "random"),
    (4, N, 6 * T + 5, 1, "extreme"),         # activations at -128/127, tables and sums at extremes
    (2, N, 2 * 3 * T, 1, "zero"),
    (1, N + 2, 3 * T + 2, 2, "random"),      # bit-serial int2 .. int8
    (2, N, 3 * T, 5, "random"),
    (1, N, 3 * T + 4, 8, "random"),
    (2, N, 3 * T, 8, "extreme"),
]


@cocotb.test()
async def test_matmuls_with_stalls(dut):
    """Random and corner-case matmuls, random stalls on all three streams, bit-exact vs golden."""
    await reset(dut)
    rng = np.random.default_rng(random.getrandbits(32))
    for m, r, k, bits, kind in CASES:
        m = min(m, MAX_TOK)
        x, w, packed = make_problem(rng, m, r, k, T, N, bits=bits, kind="random" if kind == "zero" else kind)
        if kind == "zero":
            x[:] = 0
        await run_problem(dut, x, w, packed, bits, rng, p_in_stall=0.3, p_out_stall=0.3)


@cocotb.test()
async def test_all_ones_weights_many_rows(dut):
    """All +1 and all -1 weights over many row tiles, several tokens, no stalls."""
    await reset(dut)
    rng = np.random.default_rng(random.getrandbits(32))
    for sign in (1, -1):
        x, _, _ = make_problem(rng, min(3, MAX_TOK), 4 * N, 3 * T + 2, T, N)
        w = np.full((4 * N, x.shape[1]), sign, np.int8)
        from golden.tlmm import pack_ternary
        await run_problem(dut, x, w, pack_ternary(w, T, N), 1, rng, 0.0, 0.0)


@cocotb.test()
async def test_throughput(dut):
    """Sustained act steps per cycle over a long K with no stalls: the engine's II."""
    await reset(dut)
    rng = np.random.default_rng(1)
    m = min(4, MAX_TOK)
    x, w, packed = make_problem(rng, m, N, 3 * T * 64, T, N)
    _, cycles, accepted, span = await run_problem(dut, x, w, packed, 1, rng, 0.0, 0.0)
    efficiency = accepted / span
    report = {"tables": T, "lanes": N, "act_steps": accepted, "accept_span_cycles": span,
              "total_cycles": cycles, "steady_state_efficiency": efficiency}
    if P.get("report"):
        with open(P["report"], "w") as f:
            json.dump(report, f)
    assert efficiency >= 0.97, report


@cocotb.test(skip=ACC >= 32)
async def test_accumulator_extremes(dut):
    """A narrow-accumulator build driven to exactly its most negative value and near its maximum."""
    await reset(dut)
    rng = np.random.default_rng(2)
    from golden.tlmm import pack_bitserial, pack_ternary
    lo = 1 << (ACC - 1)
    k_min = lo // 128                                   # 128 * K = 2^(acc-1): the most negative sum
    x = np.full((1, k_min), -128, np.int8)
    w = np.ones((N, k_min), np.int8)
    got, *_ = await run_problem(dut, x, w, pack_ternary(w, T, N), 1, rng, 0.1, 0.1)
    assert got[0][1][0] == -lo
    k_max = (lo - 1) // 127                             # 127 * K <= 2^(acc-1) - 1
    x = np.full((1, k_max), 127, np.int8)
    w = np.ones((N, k_max), np.int8)
    got, *_ = await run_problem(dut, x, w, pack_ternary(w, T, N), 1, rng, 0.1, 0.1)
    assert got[0][1][0] == 127 * k_max
    k8 = (lo - 1) // (128 * 128)                        # int8 bit-serial: (-128) * (-128) per column
    x = np.full((1, k8), -128, np.int8)
    w = np.full((N, k8), -128, np.int8)
    got, *_ = await run_problem(dut, x, w, pack_bitserial(w, 8, T, N), 8, rng, 0.1, 0.1)
    assert got[0][1][0] == 128 * 128 * k8
