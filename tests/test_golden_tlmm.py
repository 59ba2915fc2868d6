"""Tests of the TLMM golden model (golden/tlmm.py) against the plain integer matmul oracle.

Every random generator is seeded, so failures reproduce. Case counts (per hardware config, three configs):
``RANDOM_CASES`` random shapes/values, the corner-case grid in ``test_corner_grid`` and
``BITSERIAL_CASES`` random bit-serial cases per width.
"""

import itertools
import time

import numpy as np
import pytest

from golden import tlmm
from golden.tlmm import (
    BINARY_MAGS,
    INDEX_BITS,
    MAG_TO_TRITS,
    TABLE_ENTRIES,
    TABLE_ENTRY_BITS,
    TABLE_ENTRY_MAX,
    TABLE_ENTRY_MIN,
    PackedBitSerial,
    PackedTernary,
    acc_bits_needed,
    bitserial_matmul,
    build_tables,
    decode_indices,
    encode_groups,
    group_activations,
    lookup,
    max_k_for_acc,
    pack_bitserial,
    pack_ternary,
    reference_matmul,
    tlmm_matmul,
    tree_bits,
    unpack_bitserial,
    unpack_ternary,
)
from hw.config import load_hw_config

CONFIGS = ["tiny", "ecp5", "tellme-kv260"]
RANDOM_CASES = 700
BITSERIAL_CASES = 60

# The table order as the TL2 reference writes it, entry m as a function of (b0, b1, b2).
SPEC_TABLE = [
    lambda b0, b1, b2: 0 * b0,
    lambda b0, b1, b2: b2,
    lambda b0, b1, b2: b1 - b2,
    lambda b0, b1, b2: b1,
    lambda b0, b1, b2: b1 + b2,
    lambda b0, b1, b2: b0 - b1 - b2,
    lambda b0, b1, b2: b0 - b1,
    lambda b0, b1, b2: b0 - b1 + b2,
    lambda b0, b1, b2: b0 - b2,
    lambda b0, b1, b2: b0,
    lambda b0, b1, b2: b0 + b2,
    lambda b0, b1, b2: b0 + b1 - b2,
    lambda b0, b1, b2: b0 + b1,
    lambda b0, b1, b2: b0 + b1 + b2,
]


@pytest.fixture(params=CONFIGS)
def geom(request):
    cfg = load_hw_config(request.param)
    return cfg.tlmm.tables, cfg.tlmm.lanes, cfg


def rng_for(*key):
    """A generator seeded from a readable key, so each test/config has its own reproducible stream."""
    return np.random.default_rng([hash_key(k) for k in key])


def hash_key(k):
    return sum((i + 1) * ord(c) for i, c in enumerate(str(k)))


def random_activations(rng, m, k):
    kind = rng.integers(5)
    if kind == 0:
        return rng.integers(-128, 128, (m, k), dtype=np.int8)
    if kind == 1:  # only the extremes
        return rng.choice(np.array([-128, 127], np.int8), (m, k))
    if kind == 2:  # small values with some extremes
        x = rng.integers(-4, 5, (m, k)).astype(np.int8)
        x[rng.random((m, k)) < 0.1] = -128
        return x
    if kind == 3:  # sparse
        x = rng.integers(-128, 128, (m, k), dtype=np.int8)
        x[rng.random((m, k)) < 0.7] = 0
        return x
    return np.full((m, k), rng.choice([-128, 127, 0, -1]), np.int8)


def random_ternary(rng, r, k):
    p0 = rng.random()
    p_pos = (1 - p0) * rng.random()
    return rng.choice(np.array([-1, 0, 1], np.int8), (r, k), p=[1 - p0 - p_pos, p0, p_pos])


def check_ternary(x, w, t, n):
    packed = pack_ternary(w, t, n)
    y = tlmm_matmul(x, packed)
    assert y.dtype == np.int64 and y.shape == (x.shape[0], w.shape[0])
    np.testing.assert_array_equal(y, reference_matmul(x, w))
    return packed


# ------------------------------------------------------------------------------------------------
# Encoding and tables
# ------------------------------------------------------------------------------------------------


def test_constants_and_digit_table():
    assert (TABLE_ENTRIES, INDEX_BITS, TABLE_ENTRY_BITS) == (14, 5, 10)
    for m in range(TABLE_ENTRIES):
        w0, w1, w2 = MAG_TO_TRITS[m]
        assert 9 * w0 + 3 * w1 + w2 == m
        assert set(MAG_TO_TRITS[m]) <= {-1, 0, 1}
    assert BINARY_MAGS == (0, 1, 3, 4, 9, 10, 12, 13)


def test_table_order_matches_spec():
    rng = np.random.default_rng(1)
    b = rng.integers(-128, 128, (500, 3), dtype=np.int8)
    tab = build_tables(b)
    assert tab.dtype == np.int16 and tab.shape == (500, 14)
    b0, b1, b2 = (b[:, i].astype(np.int64) for i in range(3))
    for m, f in enumerate(SPEC_TABLE):
        np.testing.assert_array_equal(tab[:, m], f(b0, b1, b2))
        np.testing.assert_array_equal(tab[:, m], b.astype(np.int64) @ MAG_TO_TRITS[m].astype(np.int64))


def test_table_entry_range_proof():
    # Every entry is linear in (b0, b1, b2) with coefficients in {-1, 0, 1}: its extremes over the box
    # [-128, 127]^3 are at the 8 corners, so checking the corners bounds all inputs.
    corners = np.array(list(itertools.product([-128, 127], repeat=3)), np.int8)
    tab = build_tables(corners).astype(np.int64)
    assert tab.min() == TABLE_ENTRY_MIN == -384
    assert tab.max() == TABLE_ENTRY_MAX == 383
    lo, hi = -(1 << (TABLE_ENTRY_BITS - 1)), (1 << (TABLE_ENTRY_BITS - 1)) - 1
    assert lo <= -TABLE_ENTRY_MAX and TABLE_ENTRY_MAX <= hi
    assert lo <= TABLE_ENTRY_MIN and -TABLE_ENTRY_MIN <= hi  # the negated lookup (384) fits too
    # b = (-128, -128, -128) with weights (+1, +1, +1) reaches -384 through encode -> lookup.
    idx = encode_groups(np.array([1, 1, 1]))
    assert int(idx) == 13
    assert int(lookup(build_tables(np.full((1, 3), -128, np.int8))[0], idx)) == -384
    # Weights (-1, -1, -1): +384 (sign bit set on the same entry).
    assert int(lookup(build_tables(np.full((1, 3), -128, np.int8))[0], encode_groups(np.array([-1, -1, -1])))) == 384


def test_all_27_patterns_through_lookup():
    rng = np.random.default_rng(2)
    b = rng.integers(-128, 128, (1000, 3), dtype=np.int8)
    b[:8] = np.array(list(itertools.product([-128, 127], repeat=3)), np.int8)
    tabs = build_tables(b)
    for w in itertools.product([-1, 0, 1], repeat=3):
        w = np.array(w, np.int8)
        idx = encode_groups(w)
        v = 9 * int(w[0]) + 3 * int(w[1]) + int(w[2])
        assert int(idx) == ((v < 0) << 4) | abs(v)
        np.testing.assert_array_equal(decode_indices(idx), w)
        np.testing.assert_array_equal(lookup(tabs, idx), b.astype(np.int64) @ w.astype(np.int64))


def test_encode_examples_and_negative_zero():
    assert int(encode_groups(np.array([1, -1, 0]))) == 6
    assert int(encode_groups(np.array([-1, 1, 0]))) == 0b10110
    assert int(encode_groups(np.array([0, 0, 0]))) == 0
    np.testing.assert_array_equal(decode_indices(16), [0, 0, 0])  # "negative zero" decodes to zero
    assert int(lookup(build_tables(np.array([[5, 6, 7]], np.int8))[0], 16)) == 0


@pytest.mark.parametrize("bad", [14, 15, 30, 31])
def test_decode_rejects_invalid_magnitudes(bad):
    with pytest.raises(ValueError, match="magnitudes 14 and 15"):
        decode_indices(np.array([0, 3, bad]))
    with pytest.raises(ValueError, match="magnitudes 14 and 15"):
        lookup(np.zeros(14, np.int16), bad)


def test_encode_rejects_non_ternary():
    with pytest.raises(ValueError, match=r"ternary weight 2 .* outside"):
        encode_groups(np.array([[0, 2, 1]]))
    with pytest.raises(ValueError, match="last axis of 3"):
        encode_groups(np.array([1, 0]))
    with pytest.raises(ValueError, match="5-bit"):
        decode_indices(np.array([32]))


def test_build_tables_validates():
    with pytest.raises(ValueError, match="int8"):
        build_tables(np.zeros((2, 3), np.int16))
    with pytest.raises(ValueError, match=r"\(\.\.\., G, 3\)"):
        build_tables(np.zeros((2, 4), np.int8))


def test_group_activations_pads_with_zeros():
    x = np.arange(1, 8, dtype=np.int8)[None]
    g = group_activations(x, 4)
    assert g.shape == (1, 4, 3)
    np.testing.assert_array_equal(g.reshape(-1), [1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0, 0])


# ------------------------------------------------------------------------------------------------
# Ternary matmul against the oracle
# ------------------------------------------------------------------------------------------------


def test_random_cases(geom):
    t, n, cfg = geom
    rng = rng_for("random", cfg.name)
    for _ in range(RANDOM_CASES):
        r = int(rng.integers(1, 3 * n + 2))
        k = int(rng.integers(1, 3 * 3 * t + 3))  # up to ~3 k-steps, any residue mod 3 and mod 3T
        m = int(rng.integers(1, 5))
        check_ternary(random_activations(rng, m, k), random_ternary(rng, r, k), t, n)


def corner_ks(t):
    ks = {1, 2, 3, 4, 5, 7, 8, 3 * t - 1, 3 * t, 3 * t + 1, 3 * t + 2, 6 * t + 4}
    return sorted(k for k in ks if k >= 1)


def corner_rs(n):
    return sorted({1, max(1, n - 1), n, n + 1, 2 * n + 3})


def corner_weights(kind, r, k):
    if kind == "zero":
        return np.zeros((r, k), np.int8)
    if kind == "plus":
        return np.ones((r, k), np.int8)
    if kind == "minus":
        return -np.ones((r, k), np.int8)
    # Checkerboard +1/-1: with alternating extreme activations this drives tables to +-383/384.
    return np.where((np.arange(r)[:, None] + np.arange(k)[None]) % 2 == 0, 1, -1).astype(np.int8)


def corner_activations(kind, m, k):
    if kind == "zero":
        return np.zeros((m, k), np.int8)
    if kind == "min":
        return np.full((m, k), -128, np.int8)
    if kind == "max":
        return np.full((m, k), 127, np.int8)
    alt = np.where(np.arange(k) % 2 == 0, -128, 127).astype(np.int8)
    if kind == "alt":
        return np.broadcast_to(alt, (m, k)).copy()
    return np.broadcast_to(np.where(np.arange(k) % 2 == 0, 127, -128).astype(np.int8), (m, k)).copy()


def test_corner_grid(geom):
    t, n, cfg = geom
    cases = 0
    for k, r, wk, xk, m in itertools.product(corner_ks(t), corner_rs(n), ["zero", "plus", "minus", "check"],
                                             ["zero", "min", "max", "alt", "alt2"], [1, 3]):
        check_ternary(corner_activations(xk, m, k), corner_weights(wk, r, k), t, n)
        cases += 1
    assert cases >= 1000


def test_extreme_outputs(geom):
    t, n, _ = geom
    k = 3 * t * 5 + 1
    x = np.full((2, k), -128, np.int8)
    y = tlmm_matmul(x, pack_ternary(np.ones((n + 1, k), np.int8), t, n))
    assert (y == -128 * k).all()
    y = tlmm_matmul(x, pack_ternary(-np.ones((n + 1, k), np.int8), t, n))
    assert (y == 128 * k).all()
    assert acc_bits_needed(k) >= int(128 * k).bit_length() + 1


def test_realistic_shape(geom):
    t, n, cfg = geom
    rng = rng_for("realistic", cfg.name)
    w = random_ternary(rng, 1536, 1536)
    x = rng.integers(-128, 128, (4, 1536), dtype=np.int8)
    packed = check_ternary(x, w, t, n)
    np.testing.assert_array_equal(unpack_ternary(packed), w)
    # Rectangular FFN-like shapes with ragged K.
    for r, k in [(4096, 1536), (1536, 4097)]:
        check_ternary(rng.integers(-128, 128, (2, k), dtype=np.int8), random_ternary(rng, r, k), t, n)


def test_speed_1536_square_8_tokens(geom):
    # Guards against a per-element Python loop (which would take minutes); the target is well under 1 s.
    t, n, cfg = geom
    rng = rng_for("speed", cfg.name)
    packed = pack_ternary(random_ternary(rng, 1536, 1536), t, n)
    x = rng.integers(-128, 128, (8, 1536), dtype=np.int8)
    start = time.perf_counter()
    tlmm_matmul(x, packed)
    assert time.perf_counter() - start < 3.0


def test_one_dimensional_activations(geom):
    t, n, _ = geom
    rng = np.random.default_rng(3)
    w = random_ternary(rng, 5, 11)
    x = rng.integers(-128, 128, 11, dtype=np.int8)
    y = tlmm_matmul(x, pack_ternary(w, t, n))
    assert y.shape == (5,)
    np.testing.assert_array_equal(y, reference_matmul(x[None], w)[0])


# ------------------------------------------------------------------------------------------------
# Packing, addressing, corrupt streams
# ------------------------------------------------------------------------------------------------


def word_as_int(packed, rt, ks, plane=0):
    return int.from_bytes(packed.word(rt, ks, plane).tobytes(), "little")


def test_pack_unpack_roundtrip_and_layout(geom):
    t, n, cfg = geom
    rng = rng_for("layout", cfg.name)
    for _ in range(30):
        r = int(rng.integers(1, 3 * n + 2))
        k = int(rng.integers(1, 9 * t + 3))
        w = random_ternary(rng, r, k)
        p = pack_ternary(w, t, n)
        np.testing.assert_array_equal(unpack_ternary(p), w)
        assert p.rows == r and p.cols == k and p.tables == t and p.lanes == n
        assert p.row_tiles == -(-r // n) and p.k_steps == -(-(-(-k // 3)) // t)
        assert p.word_bytes == cfg.tlmm.word_bytes and p.word_bits == cfg.tlmm.word_bits
        assert p.data.dtype == np.uint8 and p.data.shape == (p.row_tiles * p.k_steps, p.word_bytes)
        assert p.nbytes == p.row_tiles * p.k_steps * cfg.tlmm.word_bytes == len(p.to_bytes())
        assert p.cycles == p.row_tiles * p.k_steps and p.lookups == p.cycles * t * n
        # Field of (lane n, table t) at bit offset 5*(n*T + t), each equal to the encoded group.
        wpad = np.zeros((p.row_tiles * n, p.k_steps * t * 3), np.int8)
        wpad[:r, :k] = w
        for rt, ks in [(0, 0), (p.row_tiles - 1, p.k_steps - 1),
                       (int(rng.integers(p.row_tiles)), int(rng.integers(p.k_steps)))]:
            assert p.word_index(rt, ks) == rt * p.k_steps + ks
            np.testing.assert_array_equal(p.data[rt * p.k_steps + ks], p.word(rt, ks))
            word = word_as_int(p, rt, ks)
            for lane, tab in itertools.product(range(n), range(t)):
                row, col = rt * n + lane, 3 * (ks * t + tab)
                expect = int(encode_groups(wpad[row, col:col + 3]))
                assert (word >> (5 * (lane * t + tab))) & 31 == expect
                assert p.word_fields(rt, ks)[lane, tab] == expect
        # The flat stream survives a round trip through bytes.
        q = PackedTernary.from_bytes(p.to_bytes(), r, k, t, n)
        np.testing.assert_array_equal(unpack_ternary(q), w)


def test_word_index_bounds(geom):
    t, n, _ = geom
    p = pack_ternary(np.ones((n + 1, 3 * t + 1), np.int8), t, n)
    assert (p.row_tiles, p.k_steps) == (2, 2)
    assert p.word_index(1, 1) == 3
    with pytest.raises(IndexError, match="row_tile"):
        p.word_index(2, 0)
    with pytest.raises(IndexError, match="k_step"):
        p.word_index(0, -1)
    with pytest.raises(IndexError, match="plane"):
        p.word_index(0, 0, 1)


def set_field(packed, rt, ks, lane, tab, value, plane=0):
    """Overwrite one 5-bit index in place (the dataclass is frozen, its array is not)."""
    wi = packed.word_index(rt, ks, plane)
    word = int.from_bytes(packed.data[wi].tobytes(), "little")
    off = 5 * (lane * packed.tables + tab)
    word = (word & ~(31 << off)) | (value << off)
    packed.data[wi] = np.frombuffer(word.to_bytes(packed.word_bytes, "little"), np.uint8)


@pytest.mark.parametrize("bad", [14, 15, 30, 31])
def test_corrupt_stream_raises(geom, bad):
    t, n, _ = geom
    rng = np.random.default_rng(bad)
    w = random_ternary(rng, 2 * n + 1, 6 * t + 2)
    p = pack_ternary(w, t, n)
    set_field(p, 1, 1, n - 1, t - 1, bad)
    x = rng.integers(-128, 128, (2, w.shape[1]), dtype=np.int8)
    msg = rf"invalid index.*{bad}.*magnitude {bad & 15}.*row tile 1, k-step 1.*lane {n - 1}.*table {t - 1}"
    with pytest.raises(ValueError, match=msg):
        tlmm_matmul(x, p)
    with pytest.raises(ValueError, match=msg):
        unpack_ternary(p)


def test_flipped_index_changes_exactly_one_row(geom):
    # If the lookup path misread positions, signs or entries, this would move the wrong row or amount.
    t, n, cfg = geom
    rng = rng_for("flip", cfg.name)
    r, k = 3 * n + 1, 9 * t + 2
    w = random_ternary(rng, r, k)
    x = rng.integers(-128, 128, (3, k), dtype=np.int8)
    base = pack_ternary(w, t, n)
    y0 = tlmm_matmul(x, base)
    xg = group_activations(x, base.k_steps * t).astype(np.int64)  # (M, Gp, 3)
    for _ in range(60):
        p = PackedTernary.from_bytes(base.to_bytes(), r, k, t, n)
        rt, ks = int(rng.integers(p.row_tiles)), int(rng.integers(p.k_steps))
        lane, tab = int(rng.integers(n)), int(rng.integers(t))
        row, group = rt * n + lane, ks * t + tab
        old = int(p.word_fields(rt, ks)[lane, tab])
        new = int(rng.choice([i for i in range(32) if (i & 15) < 14 and i != old]))
        set_field(p, rt, ks, lane, tab, new)
        y = tlmm_matmul(x, p)
        delta = xg[:, group] @ (decode_indices(new).astype(np.int64) - decode_indices(old).astype(np.int64))
        expect = y0.copy()
        if row < r:
            expect[:, row] += delta
        np.testing.assert_array_equal(y, expect)
        if row < r and (delta != 0).any():
            changed = np.flatnonzero((y != y0).any(axis=0))
            assert changed.tolist() == [row]


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


def test_validation_errors():
    p = pack_ternary(np.ones((4, 7), np.int8), 4, 4)
    with pytest.raises(ValueError, match="int8"):
        tlmm_matmul(np.ones((1, 7), np.int16), p)
    with pytest.raises(ValueError, match="int8"):
        tlmm_matmul(np.ones((1, 7)), p)
    with pytest.raises(ValueError, match="int8"):
        tlmm_matmul([[1] * 7], p)
    with pytest.raises(ValueError, match=r"K = 8 does not match .* 7 columns"):
        tlmm_matmul(np.ones((1, 8), np.int8), p)
    with pytest.raises(ValueError, match="shape"):
        tlmm_matmul(np.ones((1, 1, 7), np.int8), p)
    with pytest.raises(ValueError, match=r"W\[1, 2\] = 2 is outside \{-1, 0, 1\}"):
        w = np.zeros((3, 4), np.int8)
        w[1, 2] = 2
        pack_ternary(w, 4, 4)
    with pytest.raises(ValueError, match=r"W\[0, 0\] = -2"):
        pack_ternary(np.full((1, 1), -2), 4, 4)
    with pytest.raises(ValueError, match="integer dtype"):
        pack_ternary(np.ones((2, 2)), 4, 4)
    with pytest.raises(ValueError, match="2-D"):
        pack_ternary(np.ones(3, np.int8), 4, 4)
    with pytest.raises(ValueError, match="whole bytes"):
        pack_ternary(np.ones((2, 2), np.int8), 3, 3)
    with pytest.raises(ValueError, match="PackedTernary"):
        tlmm_matmul(np.ones((1, 7), np.int8), pack_bitserial(np.ones((4, 7), np.int8), 2, 4, 4))
    with pytest.raises(ValueError, match="PackedBitSerial"):
        bitserial_matmul(np.ones((1, 7), np.int8), p)
    with pytest.raises(ValueError, match="expected 1 words"):
        PackedTernary.from_bytes(b"\0" * 11, 4, 7, 4, 4)


# ------------------------------------------------------------------------------------------------
# Widths
# ------------------------------------------------------------------------------------------------


def test_acc_bits():
    assert max_k_for_acc(32) == 16_777_215 == (2**31 - 1) // 128
    assert acc_bits_needed(16_777_215) == 32 and acc_bits_needed(16_777_216) == 33
    assert max_k_for_acc(32, weight_bits=8) == 131_071
    assert acc_bits_needed(131_071, weight_bits=8) == 32 and acc_bits_needed(131_072, weight_bits=8) == 33
    for k in [1, 2, 3, 100, 1536, 4096, 6912]:
        bits = acc_bits_needed(k)
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        assert lo <= -128 * k and 128 * k <= hi  # fits the largest |y|
        assert 128 * k > (1 << (bits - 2)) - 1  # and one bit fewer would not
    with pytest.raises(ValueError):
        acc_bits_needed(0)


def test_tree_bits_hold_extreme_tree_sums(geom):
    t, n, _ = geom
    bits = tree_bits(t)
    assert bits == 10 + int(np.ceil(np.log2(t)))
    assert 384 * t <= (1 << (bits - 1)) - 1  # T lookups of +-384 each
    # One k-step of all -128 activations against all -1 weights: every tree output is +384*T.
    x = np.full((1, 3 * t), -128, np.int8)
    p = pack_ternary(-np.ones((n, 3 * t), np.int8), t, n)
    sums = next(tlmm._engine_tree_sums(x, p, p.fields()))[1]
    assert (sums == 384 * t).all()


# ------------------------------------------------------------------------------------------------
# Bit-serial mode
# ------------------------------------------------------------------------------------------------


def check_bitserial(x, w, bits, t, n):
    p = pack_bitserial(w, bits, t, n)
    y = bitserial_matmul(x, p)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, reference_matmul(x, w))
    return p


@pytest.mark.parametrize("bits", range(2, 9))
def test_bitserial_random_and_extremes(geom, bits):
    t, n, cfg = geom
    rng = rng_for("bitserial", cfg.name, bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    for i in range(BITSERIAL_CASES):
        r = int(rng.integers(1, 2 * n + 3))
        k = int(rng.integers(1, 6 * t + 4))
        m = int(rng.integers(1, 4))
        kind = i % 4
        if kind == 0:
            w = rng.integers(lo, hi + 1, (r, k))
        elif kind == 1:
            w = rng.choice(np.array([lo, hi]), (r, k))
        elif kind == 2:
            w = np.full((r, k), lo if i % 8 == 2 else hi)
        else:
            w = rng.choice(np.array([lo, -1, 0, 1, hi]), (r, k))
        w = w.astype(rng.choice([np.int8, np.int16, np.int64]))
        p = check_bitserial(random_activations(rng, m, k), w, bits, t, n)
        np.testing.assert_array_equal(unpack_bitserial(p), w)
        assert p.bits == bits and p.cycles == p.row_tiles * p.k_steps * bits
        assert p.nbytes == p.cycles * p.word_bytes
    # Extreme activations x extreme weights: |y| reaches 128 * 2**(bits-1) * K.
    k = 3 * t + 2
    for xv, wv in itertools.product([-128, 127], [lo, hi]):
        check_bitserial(np.full((2, k), xv, np.int8), np.full((n + 1, k), wv), bits, t, n)
    assert acc_bits_needed(k, bits) == (128 * (1 << (bits - 1)) * k).bit_length() + 1


def test_bitserial_plane_layout(geom):
    t, n, cfg = geom
    rng = rng_for("planes", cfg.name)
    bits = 5
    r, k = n + 2, 3 * t + 4
    w = rng.integers(-16, 16, (r, k))
    p = pack_bitserial(w, bits, t, n)
    u = w & 31
    wpad = np.zeros((p.row_tiles * n, p.k_steps * t * 3), np.int64)
    wpad[:r, :k] = u
    for rt, ks, plane in itertools.product(range(p.row_tiles), range(p.k_steps), range(bits)):
        assert p.word_index(rt, ks, plane) == (rt * p.k_steps + ks) * bits + plane
        word = word_as_int(p, rt, ks, plane)
        for lane, tab in itertools.product(range(n), range(t)):
            c = 3 * (ks * t + tab)
            b = (wpad[rt * n + lane, c:c + 3] >> plane) & 1
            assert (word >> (5 * (lane * t + tab))) & 31 == 9 * b[0] + 3 * b[1] + b[2]
    q = PackedBitSerial.from_bytes(p.to_bytes(), r, k, t, n, bits=bits)
    np.testing.assert_array_equal(unpack_bitserial(q), w)


def test_bitserial_flip_plane_bit(geom):
    t, n, cfg = geom
    rng = rng_for("bsflip", cfg.name)
    bits = 8
    r, k = 2 * n, 3 * t * 2
    w = rng.integers(-128, 128, (r, k))
    x = rng.integers(-128, 128, (2, k), dtype=np.int8)
    base = pack_bitserial(w, bits, t, n)
    y0 = bitserial_matmul(x, base)
    for _ in range(20):
        row, col, plane = int(rng.integers(r)), int(rng.integers(k)), int(rng.integers(bits))
        w2 = w.copy()
        u = (int(w2[row, col]) & 255) ^ (1 << plane)
        w2[row, col] = u - 256 if u >= 128 else u
        p = PackedBitSerial.from_bytes(base.to_bytes(), r, k, t, n, bits=bits)
        rt, lane, ks, tab, j = row // n, row % n, col // 3 // t, col // 3 % t, col % 3
        old = int(p.word_fields(rt, ks, plane)[lane, tab])
        # Toggle bit j of the group's plane digits and re-encode (sign stays 0).
        set_field(p, rt, ks, lane, tab, int(encode_groups(decode_indices(old) ^ np.eye(3, dtype=np.int8)[j])), plane)
        y = bitserial_matmul(x, p)
        expect = y0.copy()
        expect[:, row] += x[:, col].astype(np.int64) * (int(w2[row, col]) - int(w[row, col]))
        np.testing.assert_array_equal(y, expect)
        np.testing.assert_array_equal(y, reference_matmul(x, w2))


def test_bitserial_validation():
    with pytest.raises(ValueError, match=r"W\[0, 1\] = 2 does not fit in 2 signed bits \(range -2\.\.1"):
        pack_bitserial(np.array([[1, 2]]), 2, 4, 4)
    with pytest.raises(ValueError, match=r"= -129 does not fit in 8 signed bits \(range -128\.\.127"):
        pack_bitserial(np.array([[-129]]), 8, 4, 4)
    for bits in (1, 9, 0):
        with pytest.raises(ValueError, match=r"bits = .* out of range 2\.\.8"):
            pack_bitserial(np.zeros((1, 1), np.int8), bits, 4, 4)
    with pytest.raises(ValueError, match="integer dtype"):
        pack_bitserial(np.zeros((1, 1)), 4, 4, 4)
    p = pack_bitserial(np.zeros((4, 12), np.int8), 3, 4, 4)
    with pytest.raises(ValueError, match="K = 11 does not match"):
        bitserial_matmul(np.zeros((1, 11), np.int8), p)


@pytest.mark.parametrize("bad", [2, 5, 16, 17, 14, 31])
def test_bitserial_corrupt_plane_index(bad):
    p = pack_bitserial(np.ones((4, 12), np.int8), 3, 4, 4)
    set_field(p, 0, 0, 2, 3, bad, plane=1)
    x = np.ones((1, 12), np.int8)
    with pytest.raises(ValueError, match=r"plane 1\), lane 2 \(row 2\), table 3"):
        bitserial_matmul(x, p)
    with pytest.raises(ValueError, match="corrupt"):
        unpack_bitserial(p)
