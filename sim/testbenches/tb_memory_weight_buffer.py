"""cocotb testbench of the weight path (``hw.memory.WeightPath``: fast DRAM model, weight-buffer manager,
TLMM engine) against the golden TLMM model, on Verilator.

Environment (from ``run_cocotb(extra_env=...)``):

``WB_PARAMS``
    JSON: ``tables``, ``lanes``, ``max_tokens``, ``acc_bits``, ``data_bits``, ``buffer_words``,
    ``dram_words`` of the build, and optionally ``engine`` (``mux``, the default, or ``lutram``),
    ``block_rows`` (``lutram``) and ``ports`` (AXI4 ports striping the bus, default 1).

With ``lutram`` the weight image is in table-stationary order, the testbench also drives the word
feed's matrix descriptors, the act steps are bare table sets (block, k-step, token order), and the sums
come out per block, token-major.

Each test writes a weight image (``firmware.weight_schedule``) into the DRAM model through its
``load`` port, then drives the tile commands and the engine's act steps and collects its sums with
``sim.cocotb_streams.run_streams`` (random stalls on every stream; the DRAM model of the build adds
random latency and beat gaps). The matrices are larger than the weight buffer, the sums must equal
``golden.tlmm`` bit for bit, and the DRAM beats counted in the design must equal the schedule's: every
weight byte read once per pass, however many tokens use it.
"""

import json
import os

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly
from sim.tlmm_driver import _k_step_activations, expected_outputs, make_problem, schedule

from firmware.weight_schedule import dram_image, plan_weights
from golden.tlmm import reference_matmul
from hw.memory.dram_model import load_layout
from hw.memory.lut_feed import lut_matrix_layout
from hw.memory.weight_buffer import tile_command_layout
from hw.tlmm.layouts import act_step_layout, sums_layout
from sim import cocotb_streams as streams

P = json.loads(os.environ["WB_PARAMS"])
T, N, MAX_TOK, ACC = P["tables"], P["lanes"], P["max_tokens"], P["acc_bits"]
LUT = P.get("engine", "mux") == "lutram"
R = P.get("block_rows") if LUT else None
PORTS = P.get("ports", 1)
DATA_BYTES = P["data_bits"] // 8
ACT = act_step_layout(T, MAX_TOK)
SUMS = sums_layout(N, ACC, R * MAX_TOK if LUT else MAX_TOK)
DESC = lut_matrix_layout(MAX_TOK)
CMD = tile_command_layout(32, 24)
LOAD = load_layout(P["dram_words"], P["data_bits"])


def unpack_sums(bits):
    c = SUMS.from_bits(bits)
    return int(c.slot), [int(c.y[n]) for n in range(N)]


async def reset(dut):
    await streams.reset(dut, inputs=("cmd", "acts", "load") + (("desc",) if LUT else ()), outputs=("sums",))


def lut_streams(x, w, packed):
    """Table sets and expected (slot, sums) of one matrix for the lutram engine, block by block."""
    xs = _k_step_activations(x, packed)
    tokens, tiles = x.shape[0], packed.row_tiles
    y = reference_matmul(x, w)
    yp = np.zeros((tokens, tiles * N), np.int64)
    yp[:, :y.shape[1]] = y
    acts, want = [], []
    for b0 in range(0, tiles, R):
        for ks in range(packed.k_steps):
            for t in range(tokens):
                acts.append(sum((int(v) & 0xFF) << (8 * i) for i, v in enumerate(xs[t, ks])))
        want += [(t * R + rt - b0, [int(v) for v in yp[t, rt * N:(rt + 1) * N]])
                 for t in range(tokens) for rt in range(b0, min(b0 + R, tiles))]
    return acts, want


async def load_image(dut, words):
    for addr, word in enumerate(words):
        dut.load__payload.value = LOAD.const({"addr": addr, "data": word}).as_bits()
        dut.load__valid.value = 1
        await FallingEdge(dut.clk)
    dut.load__valid.value = 0


async def read_counter(dut, name):
    await ReadOnly()
    value = int(getattr(dut, name).value)
    await FallingEdge(dut.clk)
    return value


def problems_for(rng, shapes, tokens):
    return [make_problem(rng, tokens, r, k, T, N) for r, k in shapes]


async def run_pass(dut, rng, problems, p_in_stall, p_out_stall, load=True):
    """One pass over ``problems`` [(x, w, packed)]; returns (schedule, DRAM beats read)."""
    plan = plan_weights([(f"m{i}", w.shape[0], w.shape[1]) for i, (_, w, _) in enumerate(problems)], tables=T, lanes=N,
                        data_bytes=DATA_BYTES, buffer_bytes=P["buffer_words"] * DATA_BYTES, ports=PORTS,
                        block_rows=R)
    assert plan.weight_bytes > P["buffer_words"] * DATA_BYTES, "the test wants weights larger than the buffer"
    image = dram_image(plan, [p for _, _, p in problems])
    assert len(image) <= P["dram_words"]
    if load:
        await load_image(dut, image)
    steps, want, descs = [], [], []
    for x, w, packed in problems:
        if LUT:
            acts, expect = lut_streams(x, w, packed)
            steps += acts
            want += expect
            descs.append(DESC.const({"row_tiles": packed.row_tiles, "k_steps": packed.k_steps,
                                     "tokens": x.shape[0]}).as_bits())
        else:
            steps += [ACT.const(s).as_bits() for _, s in schedule(x, packed)]
            want += expected_outputs(reference_matmul(x, w), N)
    cmds = [CMD.const(c).as_bits() for c in plan.commands()]
    before = await read_counter(dut, "dram_beats")
    sources = {"cmd": cmds, "acts": steps, **({"desc": descs} if LUT else {})}
    run = await streams.run_streams(dut, sources, "sums", len(want), rng, p_in_stall, p_out_stall)
    got = [unpack_sums(p) for p in run.received]
    for k, (g, e) in enumerate(zip(got, want)):
        assert g == e, f"output {k}: got slot {g[0]} {g[1]}, expected slot {e[0]} {e[1]}"
    beats = await read_counter(dut, "dram_beats") - before
    assert int(dut.violation.value) == 0 and int(dut.error.value) == 0
    return plan, beats


def rng_from_seed(offset=0):
    return np.random.default_rng(int(os.environ.get("COCOTB_RANDOM_SEED", "1")) + offset)


@cocotb.test()
async def test_decode_sequence_larger_than_buffer(dut):
    """Three matrices (odd shapes, words straddling bus words and matrix boundaries), one token,
    random stalls everywhere; then the same schedule again (the next token) with new activations."""
    await reset(dut)
    rng = rng_from_seed()
    shapes = [(2 * N + 3, 3 * T * 9 + 5), (N - 1 if N > 1 else 1, 7), (8 * N, 3 * T * 16)]
    problems = problems_for(rng, shapes, 1)
    plan, beats = await run_pass(dut, rng, problems, p_in_stall=0.3, p_out_stall=0.3)
    assert beats == plan.beats, (beats, plan.beats)
    # The next token: same weights (no reload), new activations.
    problems = [(rng.integers(-128, 128, x.shape, dtype=np.int8), w, packed) for x, w, packed in problems]
    plan, beats = await run_pass(dut, rng, problems, p_in_stall=0.1, p_out_stall=0.5, load=False)
    assert beats == plan.beats


@cocotb.test()
async def test_prefill_chunk_reads_each_byte_once(dut):
    """A prefill chunk of ``max_tokens`` tokens: each word serves every token, DRAM beats = image."""
    await reset(dut)
    rng = rng_from_seed(1)
    shapes = [(6 * N + 1, 3 * T * 12 + 2), (3 * N, 3 * T * 5)]
    plan, beats = await run_pass(dut, rng, problems_for(rng, shapes, MAX_TOK), p_in_stall=0.2, p_out_stall=0.2)
    assert beats == plan.beats
    assert plan.padding_bytes < DATA_BYTES


@cocotb.test()
async def test_no_stalls_full_rate(dut):
    """No stalls anywhere: the engine waits only for DRAM (compute faster than memory in decode)."""
    await reset(dut)
    rng = rng_from_seed(2)
    shapes = [(8 * N, 3 * T * 24)]
    plan, beats = await run_pass(dut, rng, problems_for(rng, shapes, 1), p_in_stall=0.0, p_out_stall=0.0)
    assert beats == plan.beats
