"""The host-side weight layout and tile schedule (firmware/weight_schedule.py), and the memory benchmark."""

import numpy as np
import pytest

from firmware.weight_schedule import dram_image, layer_matrices, plan_for_config, plan_weights
from golden.tlmm import pack_ternary
from hw.config import load_hw_config


def test_tiles_cover_the_image_once_in_order():
    mats = [("a", 11, 113), ("b", 3, 7), ("c", 32, 192)]
    plan = plan_weights(mats, tables=4, lanes=4, data_bytes=8, buffer_bytes=1024, base=0x10000)
    # words: 3*10 + 1*1 + 8*16 = 159, of 10 bytes, back to back.
    assert [p.words for p in plan.matrices] == [30, 1, 128]
    assert [p.offset for p in plan.matrices] == [0, 300, 310]
    assert plan.weight_bytes == 1590 and plan.beats == 199 and plan.padding_bytes == 2
    addrs = [t.addr for t in plan.tiles]
    assert addrs[0] == 0x10000
    for prev, t in zip(plan.tiles, plan.tiles[1:]):
        assert t.addr == prev.addr + 8 * prev.beats                # contiguous, no re-read
    assert all(t.beats <= plan.tile_beats == 64 for t in plan.tiles)
    assert [t.end for t in plan.tiles] == [False] * (len(plan.tiles) - 1) + [True]
    # b (bytes 300..309) lies in bus words 37..38: word 37 is shared with a and read in a's tile,
    # word 38 is shared with c and read in b's.
    assert [t.matrix for t in plan.tiles] == [0, 1, 2, 2, 2]
    assert plan.prefetch_tiles == 2


def test_image_is_the_packed_matrices_back_to_back():
    rng = np.random.default_rng(0)
    ws = [rng.integers(-1, 2, (r, k), dtype=np.int8) for r, k in [(5, 13), (9, 40)]]
    packed = [pack_ternary(w, 4, 4) for w in ws]
    plan = plan_weights([("x", 5, 13), ("y", 9, 40)], tables=4, lanes=4, data_bytes=8, buffer_bytes=256)
    words = dram_image(plan, packed)
    blob = b"".join(w.to_bytes(8, "little") for w in words)
    want = packed[0].to_bytes() + packed[1].to_bytes()
    assert blob[:len(want)] == want and set(blob[len(want):]) <= {0}
    assert len(words) == plan.beats
    with pytest.raises(ValueError):
        dram_image(plan, packed[:1])


def test_estimate_and_bitnet_large_on_kv260():
    cfg = load_hw_config("tellme-kv260")
    plan = plan_for_config(layer_matrices("bitnet-large"), cfg)
    assert [m.name for m in plan.matrices][:2] == ["layers.0.q_proj", "layers.0.k_proj"]
    assert plan.weight_bytes == 6_083_840 and plan.words == 21_728
    est = plan.estimate(1, cfg.dram.bandwidth_bytes_per_cycle, cfg.dram.latency_cycles)
    assert est["bound"] == "memory" and est["compute_cycles"] == 21_728
    assert est["overlapped_cycles"] == pytest.approx(64 + plan.read_bytes / 76.8)
    assert est["serial_cycles"] > est["overlapped_cycles"]
    assert plan.estimate(128, 76.8, 64)["bound"] == "compute"
    with pytest.raises(ValueError, match="4 KiB"):
        plan_weights([("a", 4, 4)], tables=4, lanes=4, data_bytes=8, buffer_bytes=1024, base=100)


def test_bench_memory_tiny():
    """The benchmark at tiny: bit-exact runs (checked inside), the issue's goals, the CLI's keys."""
    from firmware.bench_memory import bench_memory, format_memory

    res = bench_memory("tiny")
    assert res["dram_utilisation"] >= 0.95
    assert res["prefill_read_amplification"] == pytest.approx(1.0, abs=1e-3)
    assert res["sim_cycles_per_second"] > 0
    assert {"hw", "method", "dram_utilisation", "prefill_read_amplification", "sim_cycles_per_second"} <= set(res)
    assert "DRAM utilisation" in format_memory(res)


@pytest.mark.slow
def test_bench_memory_sim_speed_goal():
    """>= 200k simulated cycles per second at tiny (machine-dependent, hence slow-marked)."""
    from firmware.bench_memory import bench_memory

    assert bench_memory("tiny")["sim_cycles_per_second"] >= 200_000
