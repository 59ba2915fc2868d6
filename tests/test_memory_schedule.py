"""The host-side weight layout and tile schedule (firmware/weight_schedule.py), and the memory benchmark."""

import numpy as np
import pytest

from firmware.weight_schedule import dram_image, layer_matrices, plan_for_config, plan_weights, stationary_order
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


def test_ports_pad_and_table_stationary_order():
    """Three ports: port-local tile addresses; a 24-byte bus holds whole 10-byte words of padding, which
    the last tile reports; table-stationary order permutes words inside each matrix only."""
    rng = np.random.default_rng(1)
    shapes = [("x", 11, 113), ("y", 3, 7)]
    ws = [rng.integers(-1, 2, (r, k), dtype=np.int8) for _, r, k in shapes]
    packed = [pack_ternary(w, 4, 4) for w in ws]
    plan = plan_weights(shapes, tables=4, lanes=4, data_bytes=24, buffer_bytes=24 * 16, ports=3, block_rows=2,
                        base=0x2000)
    assert plan.port_bytes == 8 and plan.weight_bytes == 310 and plan.beats == 13
    assert [t.addr for t in plan.tiles] == [0x2000, 0x2000 + 8 * 8]
    assert plan.tiles[-1].end and plan.tiles[-1].pad == 13 * 24 - 310 and plan.tiles[-1].as_dict()["pad"] == 2
    assert [t.pad for t in plan.tiles[:-1]] == [0]
    assert stationary_order(3, 2, 2) == [0, 2, 1, 3, 4, 5]
    blob = b"".join(w.to_bytes(24, "little") for w in dram_image(plan, packed))
    order = stationary_order(packed[0].row_tiles, packed[0].k_steps, 2)
    assert blob[:300] == packed[0].data[order].tobytes() and blob[300:310] == packed[1].to_bytes()
    # Block estimate: 15 fill cycles per block and k-step per token.
    est = plan.estimate(2, 8, 10)
    x = plan.matrices[0]
    assert x.row_tiles == 3 and x.k_steps == 10
    assert est["compute_cycles"] == 2 * (30 + 10 * 2 * 15) + 2 * (1 + 1 * 15)
    with pytest.raises(ValueError, match="power-of-two"):
        plan_weights(shapes, tables=4, lanes=4, data_bytes=24, buffer_bytes=1024)
    with pytest.raises(ValueError, match="ternary"):
        plan_weights([("z", 4, 4, 2)], tables=4, lanes=4, data_bytes=8, buffer_bytes=1024, block_rows=2)


def test_bench_memory_tiny():
    """The benchmark at tiny with its configured engine (lutram): bit-exact runs (checked inside), read
    amplification 1, cycles as estimated (decode is compute-bound there: table fills), the CLI's keys."""
    from firmware.bench_memory import bench_memory, format_memory

    res = bench_memory("tiny")
    assert res["engine"] == "lutram" and res["block_rows"] == 64
    assert res["prefill_read_amplification"] == pytest.approx(1.0, abs=1e-3)
    assert res["decode"]["estimate"]["bound"] == "compute"
    assert res["decode"]["cycles_vs_estimate"] == pytest.approx(1.0, abs=0.02)
    assert res["prefill"]["cycles_vs_estimate"] == pytest.approx(1.0, abs=0.02)
    assert res["sim_cycles_per_second"] > 0
    assert {"hw", "method", "dram_utilisation", "prefill_read_amplification", "sim_cycles_per_second"} <= set(res)
    assert "DRAM utilisation" in format_memory(res) and "lutram" in res["method"]


def test_bench_memory_tiny_mux():
    """With the mux engine (no table fills) decode at tiny is memory-bound: the port is busy >= 95 %."""
    from firmware.bench_memory import bench_memory

    res = bench_memory("tiny", engine="mux")
    assert res["decode"]["estimate"]["bound"] == "memory"
    assert res["dram_utilisation"] >= 0.95
    assert res["prefill_read_amplification"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
def test_bench_memory_sim_speed_goal():
    """>= 200k simulated cycles per second at tiny (machine-dependent, hence slow-marked)."""
    from firmware.bench_memory import bench_memory

    assert bench_memory("tiny")["sim_cycles_per_second"] >= 200_000
