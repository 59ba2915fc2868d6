"""Unit tests of the numerics primitives against independent float / big-integer formulas."""

import math
from fractions import Fraction

import numpy as np
import pytest

from golden.fixed import bitlen, round_shift, saturate, shift_floor
from golden.numerics import (
    ACT_QMAX, NormGain, exp2_neg, gate_relu2, norm_quant, quant_pow2, quantise_gain, quantise_rows,
    rope_apply, rope_cos_sin, rope_freq_table, score_constant, silu_q16,
)
from golden.sfloat import SFloat

RNG = np.random.default_rng(1234)


# -- fixed-point helpers ---------------------------------------------------------------------------------
def test_bitlen_matches_python():
    vals = [0, 1, 2, 3, 255, 256, (1 << 62) - 1, 1 << 62] + list(RNG.integers(0, 1 << 62, 2000))
    got = bitlen(np.array(vals, dtype=np.int64))
    assert [int(g) for g in got] == [int(v).bit_length() for v in vals]


def test_round_shift_and_floor_match_exact_rationals():
    v = RNG.integers(-(1 << 40), 1 << 40, 3000)
    s = RNG.integers(-8, 30, 3000)
    got_r = round_shift(v, s)
    got_f = shift_floor(v, s)
    for vi, si, r, f in zip(v, s, got_r, got_f):
        exact = Fraction(int(vi)) / Fraction(2) ** int(si)
        assert f == math.floor(exact)
        assert r == math.floor(exact + Fraction(1, 2))  # round half up


def test_saturate():
    assert list(saturate([-(1 << 40), -5, 1 << 40], 32)) == [-(1 << 31), -5, (1 << 31) - 1]


# -- SFloat ----------------------------------------------------------------------------------------------
def _exact(sf):
    return [Fraction(int(m)) * Fraction(2) ** int(e) if m else Fraction(0) for m, e in zip(sf.m, sf.e)]


def _rand_sf(n):
    mant = RNG.integers(1, 1 << 40, n)
    exp = RNG.integers(-60, 60, n)
    return SFloat.normalise(mant, exp)


@pytest.mark.parametrize("op", ["mul", "div", "add"])
def test_sfloat_ops_truncate_within_one_ulp(op):
    a, b = _rand_sf(500), _rand_sf(500)
    got = _exact(getattr(a, op)(b))
    ea, eb = _exact(a), _exact(b)
    for g, x, y in zip(got, ea, eb):
        want = {"mul": x * y, "div": x / y, "add": x + y}[op]
        assert g <= want, "SFloat must truncate (round toward zero)"
        # add truncates both the aligned operand and the sum: allow two ulps
        assert (want - g) / want < Fraction(2 if op == "add" else 1, 1 << 23)


def test_sfloat_sqrt_is_truncated_exact():
    a = _rand_sf(500)
    for g, x in zip(_exact(a.sqrt()), _exact(a)):
        assert g * g <= x and (x - g * g) / x < Fraction(4, 1 << 23)


def test_sfloat_normal_form_and_float32_exact():
    x = RNG.random(200).astype(np.float32) * np.float32(2.0) ** RNG.integers(-30, 30, 200).astype(np.float32)
    sf = SFloat.from_float(x)
    assert np.all((sf.m >= 1 << 23) & (sf.m < 1 << 24))
    assert np.array_equal(sf.to_float(), x.astype(np.float64))
    z = SFloat.from_int(np.array([0]))
    assert z.m[0] == 0 and z.sqrt().m[0] == 0


def test_sfloat_division_by_zero_raises():
    with pytest.raises(ZeroDivisionError):
        SFloat.from_int(np.array([3])).div(SFloat.from_int(np.array([0])))


# -- RMSNorm + quantisation ----------------------------------------------------------------------------
def _float_norm_quant(x_real, g, eps):
    rms = np.sqrt(np.mean(x_real ** 2, axis=-1, keepdims=True) + eps)
    y = x_real * g / rms
    mx = np.max(np.abs(y), axis=-1, keepdims=True)
    return y, mx


@pytest.mark.parametrize("n", [1, 7, 64, 1536, 2560])
@pytest.mark.parametrize("magnitude", [1e-4, 1.0, 1e4])
def test_norm_quant_matches_float_rmsnorm(n, magnitude):
    x_real = RNG.standard_normal((8, n)) * magnitude
    x = np.rint(x_real * 65536).astype(np.int64)
    x_real = x / 65536.0
    g = 1 + 0.3 * RNG.standard_normal(n)
    gain = quantise_gain(g, 1e-5)
    g_eff = gain.q / 2.0 ** gain.shift
    xq, sq = norm_quant(x, SFloat.pow2(np.int64(-16)), gain)
    y, mx = _float_norm_quant(x_real, g_eff, 1e-5)
    want_q = np.rint(y * 127 / mx)
    assert np.abs(xq).max() == 127
    assert np.max(np.abs(xq - want_q)) <= 1
    assert np.mean(xq != want_q) < 0.01  # only rounding near-ties may differ
    np.testing.assert_allclose(sq.to_float(), mx[:, 0] / 127, rtol=2e-4)


def test_norm_quant_zero_rows_and_zero_gain():
    n = 16
    x = np.zeros((2, n), np.int64)
    x[1] = RNG.integers(-1000, 1000, n)
    xq, sq = norm_quant(x, SFloat.pow2(np.int64(-16)), quantise_gain(np.ones(n), 1e-5))
    assert not xq[0].any() and sq.m[0] == 0
    assert np.abs(xq[1]).max() == 127
    xq, sq = norm_quant(x, SFloat.pow2(np.int64(-16)), quantise_gain(np.zeros(n), 1e-5))
    assert not xq.any() and not sq.m.any()


def test_norm_quant_eps_dominates_tiny_vectors():
    # |x| ~ 2^-16: mean square 2^-32 << eps = 1e-5, so rms ~ sqrt(eps) and the scale shows it.
    n = 32
    x = RNG.choice(np.array([-1, 1]), (1, n)).astype(np.int64)
    xq, sq = norm_quant(x, SFloat.pow2(np.int64(-16)), quantise_gain(np.ones(n), 1e-5))
    want = (2.0 ** -16 / math.sqrt(2.0 ** -32 + 1e-5)) / 127
    assert abs(sq.to_float()[0] / want - 1) < 1e-4


def test_norm_quant_wide_inputs_with_scale():
    # ReLU^2-sized integers (up to 2^60) with a non-trivial SFloat scale.
    n = 100
    x = (RNG.standard_normal((3, n)) * 2.0 ** 58).astype(np.int64)
    s = SFloat.from_float(np.array([1e-17, 3e-18, 2e-16]))
    xq, sq = norm_quant(x, s, quantise_gain(np.ones(n), 1e-5))
    y, mx = _float_norm_quant(x * s.to_float()[:, None], np.ones(n), 1e-5)
    assert np.max(np.abs(xq - np.rint(y * 127 / mx))) <= 1
    np.testing.assert_allclose(sq.to_float(), mx[:, 0] / 127, rtol=2e-4)


def test_quantise_gain_uses_full_int16_range():
    for amax in (0.01, 1.0, 1.9999, 37.5):
        g = RNG.uniform(-amax, amax, 50)
        g[3] = amax
        gain = quantise_gain(g, 1e-5)
        assert 16384 <= np.abs(gain.q).max() <= 32767
        np.testing.assert_allclose(gain.q / 2.0 ** gain.shift, g, atol=2.0 ** -gain.shift)


# -- RoPE --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("theta,d", [(10000.0, 64), (500000.0, 128), (10000.0, 96)])
def test_rope_tables_match_float(theta, d):
    freq = rope_freq_table(d, theta)
    pos = np.array([0, 1, 2, 100, 2047, 4095])
    cos, sin = rope_cos_sin(pos, freq)
    inv = theta ** (-np.arange(0, d, 2) / d)
    ang = pos[:, None] * inv[None, :]
    np.testing.assert_allclose(cos / 16384, np.cos(ang), atol=1.2e-3)
    np.testing.assert_allclose(sin / 16384, np.sin(ang), atol=1.2e-3)
    assert np.all(cos[0] == 16384) and np.all(sin[0] == 0)


def test_rope_apply_rotates_pairs_half_apart():
    d = 8
    x = RNG.integers(-(1 << 20), 1 << 20, (3, 2, d))
    cos, sin = rope_cos_sin(np.array([0, 5, 77]), rope_freq_table(d, 10000.0))
    out = rope_apply(x, cos, sin)
    assert np.array_equal(out[0], x[0])  # position 0: identity
    c, s = cos[:, None, :] / 16384, sin[:, None, :] / 16384
    lo, hi = x[..., :4], x[..., 4:]
    want = np.concatenate([lo * c - hi * s, hi * c + lo * s], axis=-1)
    assert np.max(np.abs(out - want)) <= 1


# -- exp, sigmoid, gating ------------------------------------------------------------------------------------
def test_exp2_neg_accuracy_and_monotone():
    t = np.arange(0, 20 << 16, 97, dtype=np.int64)
    p = exp2_neg(t)
    assert exp2_neg(np.array([0]))[0] == 32768
    assert np.all(np.diff(p) <= 0)
    want = 32768 * 2.0 ** (-t / 65536.0)
    assert np.max(np.abs(p - want)) <= 0.0011 * want.max() + 1
    assert np.all(p[t >= (17 << 16)] == 0)


def test_silu_close_to_float():
    g = RNG.integers(-(20 << 16), 20 << 16, 5000)
    gf = g / 65536.0
    want = gf / (1 + np.exp(-gf))
    got = silu_q16(g) / 65536.0
    assert np.all(np.abs(got - want) <= 0.0021 * np.maximum(np.abs(gf), 1))


def test_relu2_gate_is_exact_big_integer():
    ag = RNG.integers(-(1 << 20), 1 << 20, 300)
    au = RNG.integers(-(1 << 20), 1 << 20, 300)
    s = SFloat.from_float(np.array(0.5))
    h, _ = gate_relu2(ag, s, au, s)
    for a, u, got in zip(ag, au, h):
        assert int(got) == max(int(a), 0) ** 2 * int(u)


# -- attention operands, LM head rows -----------------------------------------------------------------------
def test_quant_pow2_bounds_and_error():
    x = (RNG.standard_normal((500, 64)) * 10.0 ** RNG.uniform(-3, 6, (500, 1))).astype(np.int64)
    x[0] = 0
    q, e = quant_pow2(x)
    assert np.abs(q).max() <= 127 and not q[0].any()
    err = np.abs(q * 2.0 ** e[:, None] - x)
    assert np.all(err <= 2.0 ** e[:, None] / 2 + (np.abs(x) > 127 * 2.0 ** e[:, None]) * 2.0 ** e[:, None])
    big = np.abs(x).max(1) >= 128
    assert np.all(np.abs(q[big]).max(1) >= 63)


def test_score_constant():
    for d in (64, 96, 100, 128):
        m, s = score_constant(d)
        assert 1 << 15 <= m < 1 << 16
        assert abs(m * 2.0 ** -s / (math.log2(math.e) / math.sqrt(d)) - 1) < 2e-5


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_quantise_rows(bits):
    w = RNG.standard_normal((20, 33))
    w[5] = 0
    rq = quantise_rows(w, bits)
    qmax = (1 << (bits - 1)) - 1
    assert np.abs(rq.q).max() == qmax and not rq.q[5].any()
    scale = rq.m16 * 2.0 ** rq.e
    live = np.arange(20) != 5
    np.testing.assert_allclose(scale[live], np.abs(w[live]).max(1) / qmax, rtol=2e-5)
