# amaranth: UnusedElaboratable=no
"""Decode attention (hw.attention) against golden ``attention``, bit for bit.

Amaranth simulator: the exp2_neg unit over its whole input range, and short decode steps (GQA ratios 1,
4 and 5, position 0, several blocks, chunked rows). cocotb on Verilator: long contexts, saturating
scores, head_dim 64 and 128, random stalls on every stream.
"""

import json

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden.numerics import exp2_neg
from hw.attention.decode import DecodeAttention, chunk_geometry
from hw.attention.exp2 import Exp2Neg
from sim.testbenches.tb_attention_decode import Case, amaranth_run as _amaranth_run


@pytest.mark.parametrize("latency", [1, 2, 3])
def test_exp2_neg_unit_matches_golden(latency):
    dut = Exp2Neg(latency=latency)
    rng = np.random.default_rng(3)
    # Every table entry and rounding boundary near 0, the shift limit (t >= 16 * 2^16) and large values.
    ts = np.concatenate([np.arange(0, 1 << 17, 7), np.arange(16 << 16, (17 << 16) + 200),
                         rng.integers(0, 1 << 33, 3000), [(1 << 33) - 1, 31, 32, 33, 95, 96]])
    want = exp2_neg(ts)
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def bench(ctx):
        # ``latency`` cycles: after the tick that takes t_i, p is exp2_neg(t_{i + 1 - latency}).
        for i, t in enumerate(ts):
            ctx.set(dut.t, int(t))
            await ctx.tick()
            if i + 1 >= latency:
                assert ctx.get(dut.p) == int(want[i + 1 - latency]), f"exp2_neg({ts[i + 1 - latency]})"

    sim.add_testbench(bench)
    sim.run()


def test_rounding_shift_helpers_match_golden():
    """``arith.round_shift_span`` (normaliser, scores) and ``arith.round_shift_right`` (rescale) equal
    ``golden.fixed.round_shift`` over their spans, with values at the widths the engine uses."""
    from amaranth.hdl import Module, Signal, signed

    from golden.fixed import round_shift as golden_round_shift
    from hw.attention.arith import round_shift_right, round_shift_span

    m = Module()
    v = Signal(signed(52))
    s = Signal(signed(8))
    d = Signal(5)
    span = Signal(signed(60))
    right = Signal(signed(60))
    m.d.comb += [span.eq(round_shift_span(v, s, -1, 44)), right.eq(round_shift_right(v, d, 15))]
    rng = np.random.default_rng(7)
    vs = np.concatenate([rng.integers(-(1 << 51), 1 << 51, 400), rng.integers(-5000, 5000, 200),
                         [0, 1, -1, (1 << 51) - 1, -(1 << 51)]])
    sim = Simulator(m)

    async def bench(ctx):
        for x in vs:
            for sh in range(-1, 45, 3):
                ctx.set(v, int(x))
                ctx.set(s, sh)
                ctx.set(d, min(max(sh, 0), 31))
                assert ctx.get(span) == int(golden_round_shift(x, sh)), (x, sh)
                assert ctx.get(right) == int(golden_round_shift(x, 15 + min(max(sh, 0), 31))), (x, sh)

    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("heads, kv_heads, head_dim, lanes, pos, kind", [
    (2, 2, 16, 8, 0, "random"),       # position 0: one key, one block
    (2, 2, 16, 8, 45, "random"),      # one row of two beats: a row's scores two cycles apart (forwarded)
    (1, 1, 16, 16, 40, "random"),     # two blocks, the last one partial
    (1, 1, 16, 16, 100, "random"),    # one row of one beat: a row's scores in consecutive cycles (forwarded)
    (4, 1, 16, 16, 70, "random"),     # GQA ratio 4
    (5, 1, 16, 8, 33, "random"),      # GQA ratio 5, two beats per row
    (2, 2, 32, 8, 95, "saturate"),    # scores saturate int32, exp2_neg shifts reach the limit
    (3, 3, 16, 16, 63, "peaked"),
    (2, 1, 8, 16, 31, "zero"),        # head_dim 8: two exponent rows; all-zero K and V
    (4, 2, 24, 8, 100, "random"),     # head_dim 24 = 3 beats of 8 lanes
    (2, 2, 128, 16, 40, "random"),    # head_dim 128 = 8 beats of 16 lanes
    (4, 1, 64, 8, 35, "saturate"),    # head_dim 64 = 8 beats of 8 lanes, GQA 4
])
def test_decode_amaranth_sim(heads, kv_heads, head_dim, lanes, pos, kind):
    case = Case(heads, kv_heads, head_dim, lanes, 128, pos, kind, seed=pos + 17 * heads)
    _amaranth_run(case, lanes, 128, p_stall=0.2, seed=pos)


def test_decode_amaranth_sim_segment_padding():
    """A 128-byte bus: each segment ends in 8 padding chunks, which the engine must skip."""
    case = Case(2, 1, 8, 8, 64, 45, "random", seed=9, bus_bytes=128)
    assert case.pad_chunks == 8
    _amaranth_run(case, 8, 64, p_stall=0.1, seed=1)


def test_stimulus_reaches_the_corners():
    """The saturating stimulus really saturates scores and drives exp2_neg to its shift limit."""
    from golden.attention import scores_log2
    from golden.numerics import score_constant
    case = Case(2, 2, 32, 8, 128, 95, "saturate", seed=1)
    m, s = score_constant(32)
    z = scores_log2(case.q8.reshape(1, 2, 1, 32), case.qe.reshape(1, 2, 1), case.k8, case.ke, m, s)
    assert z.max() == 2**31 - 1 and z.min() == -2**31
    assert (z.max(axis=-1, keepdims=True) - z >= 16 << 16).any()


def test_chunk_geometry():
    assert chunk_geometry(96, 128) == (96, 1)
    assert chunk_geometry(64, 8) == (8, 8)
    with pytest.raises(ValueError, match="not a multiple of lanes"):
        chunk_geometry(40, 16)


@pytest.mark.parametrize("bad, match", [
    (dict(max_group=0), "max_group must be"),
    (dict(max_kv_heads=0), "max_kv_heads must be"),
    (dict(head_dim=40, lanes=16), "not a multiple of lanes"),
    (dict(max_context=100), "multiple of 32"),
    (dict(lanes=0), "lanes must be"),
])
def test_arguments_are_validated(bad, match):
    args = dict(max_group=2, max_kv_heads=2, head_dim=16, lanes=8)
    args.update(bad)
    lanes = args.pop("lanes")
    with pytest.raises(ValueError, match=match):
        DecodeAttention(args.pop("max_group"), args.pop("max_kv_heads"), args.pop("head_dim"), lanes, **args)


def test_decode_amaranth_sim_group_changes_at_run_time():
    """One build (max_group 4, max_kv_heads 2): MHA (group 1, 2 kv heads), GQA 4 (1 kv head), GQA 2 and
    MHA again, back to back."""
    mk = dict(head_dim=16, lanes=8, max_context=128, max_group=4, max_kv_heads=2)
    cases = [Case(2, 2, pos=40, seed=1, **mk), Case(4, 1, pos=70, seed=2, **mk), Case(4, 2, pos=5, seed=3, **mk),
             Case(1, 1, pos=33, seed=4, **mk)]
    _amaranth_run(cases, 8, 128, p_stall=0.2, seed=3)


from sim import build_component, run_cocotb  # noqa: E402
from sim.testbenches import TESTBENCH_DIR  # noqa: E402


def _cocotb(tmp_path, heads, kv_heads, head_dim, lanes, max_context, cases, p_stall=0.3):
    probe = Case(heads, kv_heads, head_dim, lanes, max_context, 0)
    dut = DecodeAttention(heads // kv_heads, kv_heads, head_dim, lanes, max_context=max_context,
                          pad_chunks=probe.pad_chunks)
    build = build_component(dut, f"attn_decode_{heads}_{kv_heads}_{head_dim}_{lanes}_{max_context}")
    report = tmp_path / "report.json"
    params = {"heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "lanes": lanes,
              "max_context": max_context, "cases": cases, "p_stall": p_stall, "report": str(report)}
    run_cocotb(build, "tb_attention_decode", test_dir=TESTBENCH_DIR, seed=5,
               extra_env={"ATTN_PARAMS": json.dumps(params)}, run_dir=tmp_path / "run", timeout_s=1800)
    return json.loads(report.read_text())


def test_decode_cocotb_gqa5_long_context(tmp_path):
    """Tiny-config lanes (8), GQA ratio 5, 600- and 4096-key contexts, saturating scores, position 0,
    with stalls."""
    cases = [{"pos": 599, "kind": "random", "seed": 1}, {"pos": 0, "kind": "random", "seed": 2},
             {"pos": 300, "kind": "saturate", "seed": 3}, {"pos": 64, "kind": "peaked", "seed": 4},
             {"pos": 4095, "kind": "random", "seed": 5}]
    rep = _cocotb(tmp_path, 5, 1, 16, 8, 4096, cases, p_stall=0.2)
    assert [r["pos"] for r in rep] == [599, 0, 300, 64, 4095]


@pytest.mark.slow
@pytest.mark.parametrize("heads, kv_heads, head_dim, lanes", [(4, 1, 64, 8), (2, 2, 128, 16), (1, 1, 128, 128)])
def test_decode_cocotb_head_dims(tmp_path, heads, kv_heads, head_dim, lanes):
    cases = [{"pos": 200, "kind": "random", "seed": 11}, {"pos": 31, "kind": "saturate", "seed": 12},
             {"pos": 32, "kind": "random", "seed": 13}]
    _cocotb(tmp_path, heads, kv_heads, head_dim, lanes, 512, cases)
