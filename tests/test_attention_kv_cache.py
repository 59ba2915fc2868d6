"""The KV cache layout (firmware.kv_cache): addresses, packing, token writes, decode reads, validation."""

import numpy as np
import pytest

from firmware.kv_cache import KvCacheError, KvCacheLayout
from golden.numerics import quant_pow2


def _tensors(rng, t, hkv, d):
    k8, ke = quant_pow2(rng.integers(-(1 << 20), 1 << 20, (t, hkv, d)))
    v8, ve = quant_pow2(rng.integers(-(1 << 12), 1 << 12, (t, hkv, d)))
    return k8, ke, v8, ve


@pytest.mark.parametrize("hkv, d, ctx, bus", [(2, 16, 64, 8), (1, 96, 96, 128), (5, 128, 64, 16), (3, 8, 32, 64)])
def test_pack_unpack_round_trip(hkv, d, ctx, bus):
    rng = np.random.default_rng(d + hkv)
    lay = KvCacheLayout(1, hkv, d, ctx, bus_bytes=bus)
    t = ctx - 7
    k8, ke, v8, ve = _tensors(rng, t, hkv, d)
    img = lay.pack_layer(k8, ke, v8, ve)
    assert len(img) == lay.layer_bytes and lay.segment_bytes % bus == 0
    for a, b in zip(lay.unpack_layer(img, t), (k8, ke, v8, ve)):
        np.testing.assert_array_equal(a, b)


def test_token_writes_build_the_same_image():
    rng = np.random.default_rng(1)
    lay = KvCacheLayout(3, 2, 16, 64, bus_bytes=8, base=4096)
    k8, ke, v8, ve = _tensors(rng, 40, 2, 16)
    mem = bytearray(lay.base + lay.total_bytes)
    for p in range(40):
        for addr, data in lay.token_writes(1, p, k8[p], ke[p], v8[p], ve[p]):
            mem[addr:addr + len(data)] = data
    start = lay.base + lay.layer_bytes
    assert bytes(mem[start:start + lay.layer_bytes]) == lay.pack_layer(k8, ke, v8, ve)
    assert not any(mem[lay.base:start]) and not any(mem[start + lay.layer_bytes:])


def test_geometry_and_addresses():
    lay = KvCacheLayout(24, 16, 96, 4096, bus_bytes=128)
    assert lay.exp_rows == 1 and lay.rows_per_segment == 65
    assert lay.segment_bytes == 6272 and lay.pad_bytes == 32
    assert lay.segment_address(1, 2, 3) == ((1 * 16 + 2) * 128 + 3) * 6272
    k_row, v_row, kea, vea = lay.addresses(0, 0, 33)
    seg = lay.segment_address(0, 0, 1)
    assert (k_row, v_row, kea, vea) == (seg + 2 * 96, seg + 34 * 96, seg + 1, seg + 33)
    # Decode reads one segment per (kv head, block), kv head major, and every useful byte once.
    reads = lay.decode_reads(5, 100)
    assert len(reads) == 16 * 4 and reads[0] == (lay.segment_address(5, 0, 0), 6272)
    assert reads[4][0] == lay.segment_address(5, 1, 0)
    assert lay.useful_bytes(128) == 2 * 128 * 16 * 97 <= sum(n for _, n in reads)
    assert KvCacheLayout(1, 1, 8, 32).exp_rows == 8
    assert KvCacheLayout(1, 1, 96, 32, bus_bytes=16).pad_chunks(96) == 0
    assert KvCacheLayout(1, 1, 8, 32, bus_bytes=128).pad_chunks(8) == (640 - 8 * 72) // 8 == 8


def test_decode_chunks_follow_the_reads():
    rng = np.random.default_rng(2)
    lay = KvCacheLayout(1, 2, 16, 96, bus_bytes=32)
    img = lay.pack_layer(*_tensors(rng, 70, 2, 16))
    chunks = lay.decode_chunks(img, 69, 8)
    per_seg = lay.segment_bytes // 8
    assert len(chunks) == 2 * 3 * per_seg
    seg = np.frombuffer(img, np.uint8)[lay.segment_address(0, 1, 2):][:lay.segment_bytes].astype(np.int8)
    np.testing.assert_array_equal(np.concatenate(chunks[5 * per_seg:6 * per_seg]), seg[:per_seg * 8])


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_context=100), "multiple of 32"),
    (dict(kv_heads=0), "kv_heads must be"),
    (dict(base=12), "not a multiple of bus_bytes"),
    (dict(head_dim=True), "head_dim must be"),
])
def test_bad_geometry_is_refused(kwargs, match):
    args = dict(layers=1, kv_heads=2, head_dim=16, max_context=64, bus_bytes=8)
    args.update(kwargs)
    with pytest.raises(KvCacheError, match=match):
        KvCacheLayout(**args)


def test_bad_tensors_and_positions_are_refused():
    lay = KvCacheLayout(2, 2, 16, 64)
    rng = np.random.default_rng(3)
    k8, ke, v8, ve = _tensors(rng, 4, 2, 16)
    with pytest.raises(KvCacheError, match="position 64 outside"):
        lay.addresses(0, 0, 64)
    with pytest.raises(KvCacheError, match="layer 2 outside"):
        lay.token_writes(2, 0, k8[0], ke[0], v8[0], ve[0])
    with pytest.raises(KvCacheError, match=r"k8 has shape \(2, 8\)"):
        lay.token_writes(0, 0, k8[0][:, :8], ke[0], v8[0], ve[0])
    with pytest.raises(KvCacheError, match=r"ve has values outside \[0, 31\]"):
        lay.token_writes(0, 0, k8[0], ke[0], v8[0], ve[0] + 40)
    bad = v8.copy()
    bad[0, 0, 0] = -128
    with pytest.raises(KvCacheError, match=r"v8 has values outside \[-127, 127\]"):
        lay.pack_layer(k8, ke, bad, ve)
    with pytest.raises(KvCacheError, match="more than max_context"):
        lay.pack_layer(*_tensors(rng, 65, 2, 16))
    with pytest.raises(KvCacheError, match="layer image has 3 bytes"):
        lay.unpack_layer(b"abc", 1)
