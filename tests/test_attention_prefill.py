# amaranth: UnusedElaboratable=no
"""Prefill attention: the attention engine with query tiles (hw.attention.engine) against golden
``attention``, bit for bit: causal masking inside tiles, chunks starting mid-sequence, GQA, stalls.

Amaranth simulator for short chunks; cocotb on Verilator for a longer chunk with random stalls.
"""

import json

import pytest

from hw.attention.engine import AttentionEngine
from sim.testbenches.tb_attention_decode import Case
from sim.testbenches.tb_attention_decode import amaranth_run as _amaranth_run


@pytest.mark.parametrize("heads, kv_heads, head_dim, lanes, query_block, pos, tq, kind", [
    (2, 1, 16, 16, 4, 0, 9, "random"),     # from position 0: the first tile's rows see 1..4 keys
    (2, 1, 16, 16, 4, 37, 10, "random"),   # chunk starting mid-sequence, mid-block; partial last tile
    (5, 1, 16, 8, 2, 30, 5, "random"),     # GQA 5, rows of two beats, a tile across a block boundary
    (2, 2, 16, 16, 8, 60, 8, "saturate"),  # saturating scores, tiles of 8
    (1, 1, 16, 16, 4, 95, 1, "peaked"),    # a one-query chunk through a prefill engine
])
def test_prefill_amaranth_sim(heads, kv_heads, head_dim, lanes, query_block, pos, tq, kind):
    case = Case(heads, kv_heads, head_dim, lanes, 128, pos, kind, seed=pos + tq, tq=tq, query_block=query_block)
    _amaranth_run(case, lanes, 128, p_stall=0.2, seed=tq)


def test_prefill_amaranth_sim_group_1_and_4_on_one_build():
    """One prefill build (max_group 4, max_kv_heads 2, query_block 4): a group-1 chunk (2 kv heads), a
    group-4 chunk (1 kv head) and a group-1 chunk again, back to back; group 1 uses 4 of the 16 rows."""
    mk = dict(head_dim=16, lanes=8, max_context=128, query_block=4, max_group=4, max_kv_heads=2)
    cases = [Case(2, 2, pos=29, tq=6, seed=1, **mk), Case(4, 1, pos=37, tq=9, seed=2, **mk),
             Case(2, 2, pos=0, tq=3, seed=3, **mk)]
    _amaranth_run(cases, 8, 128, p_stall=0.2, seed=4)


def test_query_block_is_validated():
    with pytest.raises(ValueError, match="query_block must be"):
        AttentionEngine(2, 1, 16, 8, query_block=0)


from sim import build_component, run_cocotb  # noqa: E402
from sim.testbenches import TESTBENCH_DIR  # noqa: E402


def test_prefill_cocotb_chunks(tmp_path):
    """Tiny-config geometry (8 lanes, query_block 4), GQA 4: chunks at 0, mid-sequence and long, stalls; then a
    group-1 chunk on the same build."""
    heads, kv_heads, head_dim, lanes, qb, ctx = 4, 1, 16, 8, 4, 512
    probe = Case(heads, kv_heads, head_dim, lanes, ctx, 0)
    dut = AttentionEngine(heads // kv_heads, kv_heads, head_dim, lanes, query_block=qb, max_context=ctx,
                          pad_chunks=probe.pad_chunks)
    build = build_component(dut, f"attn_tile_{heads}_{kv_heads}_{head_dim}_{lanes}_{qb}_{ctx}")
    cases = [{"pos": 0, "tq": 7, "kind": "random", "seed": 1}, {"pos": 201, "tq": 19, "kind": "random", "seed": 2},
             {"pos": 33, "tq": 6, "kind": "saturate", "seed": 3},
             {"pos": 70, "tq": 6, "kind": "random", "seed": 4, "heads": 1, "kv_heads": 1}]   # group 1, same build
    params = {"heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "lanes": lanes, "max_context": ctx,
              "query_block": qb, "max_group": heads // kv_heads, "max_kv_heads": kv_heads, "cases": cases,
              "p_stall": 0.3, "report": str(tmp_path / "report.json")}
    run_cocotb(build, "tb_attention_decode", test_dir=TESTBENCH_DIR, seed=6,
               extra_env={"ATTN_PARAMS": json.dumps(params)}, run_dir=tmp_path / "run", timeout_s=1800)
    assert len(json.loads((tmp_path / "report.json").read_text())) == 4
