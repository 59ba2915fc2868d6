"""The numerics contract, executable: every element-wise and per-token step of the accelerator.

This module is the single definition of the integer arithmetic described in ``docs/numerics.md``. The
integer transformer (:mod:`golden.model_int`) is built from these functions, and every RTL vector unit is
tested against them. Nothing here depends on a hardware config: parallelism changes speed, never numbers.

Formats used below
------------------
* residual stream: int32, ``RES_FRAC`` = 16 fractional bits (Q15.16), saturating.
* linear inputs: int8 in [-127, 127] with one :class:`~golden.sfloat.SFloat` scale per token.
* accumulators: exact integers (int8 x ternary sums fit in 32 bits for K < 2^24 / 127).
* KV cache and attention operands: int8 with a per-(token, head) power-of-two exponent.
* softmax weights: unsigned Q1.15 from a 1024-entry exp2 table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .fixed import INT32_MAX, INT32_MIN, bitlen, round_shift, saturate, shift_floor
from .sfloat import SFloat

__all__ = [
    "RES_FRAC", "NORM_SQ_BITS", "NORM_V_BITS", "NORM_Q_BITS", "QUANT_SHIFT", "ACT_QMAX",
    "GAIN_BITS", "ROPE_PHASE_BITS", "ROPE_TABLE_BITS", "ROPE_FRAC", "EXP_TABLE_BITS", "EXP_FRAC",
    "SIG_STEP_BITS", "SIG_ENTRIES", "SIG_FRAC", "KV_QMAX", "ATTN_KEY_BLOCK",
    "NormGain", "quantise_gain", "norm_quant", "dequant_q16", "residual_add",
    "rope_freq_table", "sin_quarter_table", "rope_cos_sin", "rope_apply",
    "exp_table", "exp2_neg", "sigmoid_table", "silu_q16", "gate_silu", "gate_relu2",
    "quant_pow2", "RowQuant", "quantise_rows", "score_constant", "Q16_SCALE",
]

# -- contract constants (docs/numerics.md, section by section) ------------------------------------------
RES_FRAC = 16          # residual stream fractional bits
NORM_SQ_BITS = 16      # sum of squares uses x block-shifted to |x| < 2^15
NORM_V_BITS = 24       # x * gain uses x block-shifted to |x| < 2^23
NORM_Q_BITS = 16       # x * gain normalised to [2^15, 2^16) before the reciprocal multiply
QUANT_SHIFT = 24       # reciprocal R = floor(127 * 2^24 / max)
ACT_QMAX = 127         # int8 activations are symmetric: [-127, 127]
GAIN_BITS = 16         # RMSNorm weights: int16 with a per-tensor power-of-two exponent
ROPE_PHASE_BITS = 32   # rotary phase accumulator, in turns
ROPE_TABLE_BITS = 12   # 4096 angle steps per turn (quarter-wave table of 1025 entries)
ROPE_FRAC = 14         # cos/sin in Q1.14
EXP_TABLE_BITS = 10    # exp2 fraction table: 1024 entries
EXP_FRAC = 15          # softmax weights in Q1.15 (1.0 = 32768)
SIG_STEP_BITS = 7      # sigmoid table step 1/128
SIG_ENTRIES = 2048     # covers |x| < 16; beyond, sigmoid is 0 or 1
SIG_FRAC = 15
KV_QMAX = 127          # K, V, Q int8 with power-of-two scale
ATTN_KEY_BLOCK = 32    # online-softmax key block, aligned to absolute positions

Q16_SCALE = SFloat.pow2(np.int64(-RES_FRAC))  # the scale of a Q.16 integer


# -- RMSNorm + int8 quantise (the linear-layer prologue) ------------------------------------------------
@dataclass(frozen=True)
class NormGain:
    """A norm weight vector as the hardware stores it: ``g ~ q * 2^-shift``, ``q`` int16."""

    q: np.ndarray
    shift: int
    eps: SFloat


def quantise_gain(g, eps):
    """Quantise a float RMSNorm weight vector to int16 with the largest power-of-two scale that fits.

    The exponent is chosen so that ``max|q| <= 32767``; ``q = round_half_even(g * 2^shift)``.
    """
    g = np.asarray(g, dtype=np.float64)
    if not np.all(np.isfinite(g)):
        raise ValueError("norm weight has non-finite values")
    amax = float(np.max(np.abs(g))) if g.size else 0.0
    if amax == 0.0:
        shift = 0
    else:
        shift = (GAIN_BITS - 1) - math.frexp(amax)[1]
        if np.rint(amax * 2.0 ** shift) > (1 << (GAIN_BITS - 1)) - 1:
            shift -= 1
    q = np.rint(g * 2.0 ** shift).astype(np.int64)
    return NormGain(q=q, shift=int(shift), eps=SFloat.from_float(np.float64(eps)))


def norm_quant(x, sx, gain):
    """RMSNorm with a learned gain fused with per-token absmax int8 quantisation.

    Parameters
    ----------
    x : numpy.ndarray
        int64 ``(..., n)``: integer vectors (|x| < 2^62) whose real value is ``x * sx``.
    sx : SFloat
        Per-vector scale, shape ``(...)``.
    gain : NormGain

    Returns
    -------
    xq : numpy.ndarray
        int64 ``(..., n)`` in [-127, 127].
    sq : SFloat
        Per-vector scale with ``RMSNorm(x * sx) * g ~ xq * sq``.

    Notes
    -----
    The hardware makes two passes over the vector: pass 1 finds ``max|x|``; pass 2 block-shifts x to
    16 bits for the sum of squares and to 24 bits for ``x * g``, and finds ``max|x * g|``; pass 3
    multiplies by the reciprocal and rounds. The scalar unit computes the RMS and the output scale.
    """
    x = np.asarray(x, dtype=np.int64)
    n = x.shape[-1]
    mx = np.max(np.abs(x), axis=-1)
    b = bitlen(mx)
    e16 = b - (NORM_SQ_BITS - 1)
    e24 = b - (NORM_V_BITS - 1)
    xt = shift_floor(x, e16[..., None])
    xs = shift_floor(x, e24[..., None])
    ss = np.sum(xt * xt, axis=-1)
    v = xs * gain.q
    mv = np.max(np.abs(v), axis=-1)
    ev = bitlen(mv) - NORM_Q_BITS
    vn = shift_floor(v, ev[..., None])
    mvn = shift_floor(mv, ev)
    live = mv > 0
    recip = np.where(live, (np.int64(ACT_QMAX) << QUANT_SHIFT) // np.where(live, mvn, 1), 0)
    xq = np.clip((vn * recip[..., None] + (np.int64(1) << (QUANT_SHIFT - 1))) >> QUANT_SHIFT, -ACT_QMAX, ACT_QMAX)

    # Scalar unit: rms = sqrt(sx^2 * ss * 2^(2 e16) / n + eps); sq = mv * 2^(e24 - shift) * sx / (127 rms).
    ms = SFloat.from_int(ss).scale_pow2(2 * e16).mul(sx.mul(sx)).div(SFloat.from_int(np.full(mx.shape, n)))
    eps = SFloat(np.broadcast_to(gain.eps.m, ms.shape), np.broadcast_to(gain.eps.e, ms.shape))
    rms = ms.add(eps).sqrt()
    num = SFloat.from_int(mv).scale_pow2(e24 - gain.shift).mul(sx)
    sq = num.div(rms.mul(SFloat.from_int(np.full(mx.shape, ACT_QMAX))))
    return xq, sq


def dequant_q16(acc, scale):
    """Accumulators times a per-vector scale, to the Q.16 residual format (saturating int32)."""
    return saturate(scale.scale_pow2(RES_FRAC).apply(acc), 32)


def residual_add(x, y):
    """Residual stream update, saturating in int32."""
    return saturate(np.asarray(x, np.int64) + np.asarray(y, np.int64), 32)


# -- rotary embeddings --------------------------------------------------------------------------------
def rope_freq_table(head_dim, theta):
    """Per-frequency phase increments in turns per position, unsigned Q0.32.

    ``F_i = round(theta^(-2i/d) / (2 pi) * 2^32)``, computed in float64 by the compiler and loaded into the
    accelerator with the model, so gateware and golden use the same integers.
    """
    i = np.arange(head_dim // 2, dtype=np.float64)
    inv_freq = theta ** (-(2.0 * i) / head_dim)
    return np.rint(inv_freq / (2 * math.pi) * 2.0 ** ROPE_PHASE_BITS).astype(np.int64)


def sin_quarter_table():
    """``round(sin(2 pi k / 4096) * 2^14)`` for k = 0..1024 (a quarter wave, both ends included)."""
    quarter = 1 << (ROPE_TABLE_BITS - 2)
    k = np.arange(quarter + 1, dtype=np.float64)
    return np.rint(np.sin(2 * math.pi * k / (1 << ROPE_TABLE_BITS)) * (1 << ROPE_FRAC)).astype(np.int64)


_SIN_Q = sin_quarter_table()


def _sin_index(idx):
    quarter = 1 << (ROPE_TABLE_BITS - 2)
    quad = idx >> (ROPE_TABLE_BITS - 2)
    k = idx & (quarter - 1)
    mag = np.where(quad & 1, _SIN_Q[quarter - k], _SIN_Q[k])
    return np.where(quad >= 2, -mag, mag)


def rope_cos_sin(pos, freq):
    """Q1.14 cos and sin for positions ``pos`` (shape ``(T,)``) and the frequency table (``(d/2,)``).

    phase = ``pos * F_i mod 2^32``; angle index = phase rounded to 12 bits; sin from the quarter table.
    """
    pos = np.asarray(pos, dtype=np.int64)
    phase = (pos[:, None] * freq[None, :]) & ((1 << ROPE_PHASE_BITS) - 1)
    drop = ROPE_PHASE_BITS - ROPE_TABLE_BITS
    idx = ((phase + (1 << (drop - 1))) >> drop) & ((1 << ROPE_TABLE_BITS) - 1)
    sin = _sin_index(idx)
    cos = _sin_index((idx + (1 << (ROPE_TABLE_BITS - 2))) & ((1 << ROPE_TABLE_BITS) - 1))
    return cos, sin


def rope_apply(x, cos, sin):
    """Rotate Q.16 vectors ``x`` of shape ``(T, heads, d)`` in the "rotate half" pairing (i with i + d/2)."""
    x = np.asarray(x, dtype=np.int64)
    half = x.shape[-1] // 2
    lo, hi = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    out_lo = round_shift(lo * c - hi * s, ROPE_FRAC)
    out_hi = round_shift(hi * c + lo * s, ROPE_FRAC)
    return saturate(np.concatenate([out_lo, out_hi], axis=-1), 32)


# -- exp2 for softmax ------------------------------------------------------------------------------------
def exp_table():
    """``round(2^15 * 2^(-k/1024))`` for k = 0..1023."""
    k = np.arange(1 << EXP_TABLE_BITS, dtype=np.float64)
    return np.rint(2.0 ** EXP_FRAC * 2.0 ** (-k / (1 << EXP_TABLE_BITS))).astype(np.int64)


_EXP = exp_table()


def exp2_neg(d):
    """``2^(-d)`` in Q1.15 for ``d >= 0`` given in Q.16 log2 units.

    ``d`` is rounded to Q.10; the fraction indexes the table and the integer part shifts (floor).
    """
    d = np.asarray(d, dtype=np.int64)
    drop = RES_FRAC - EXP_TABLE_BITS
    dr = (d + (1 << (drop - 1))) >> drop
    di = np.minimum(dr >> EXP_TABLE_BITS, EXP_FRAC + 1)
    return _EXP[dr & ((1 << EXP_TABLE_BITS) - 1)] >> di


# -- gating -------------------------------------------------------------------------------------------
def sigmoid_table():
    """``round(2^15 * sigmoid(k / 128))`` for k = 0..2047."""
    k = np.arange(SIG_ENTRIES, dtype=np.float64)
    return np.rint(2.0 ** SIG_FRAC / (1.0 + np.exp(-k / (1 << SIG_STEP_BITS)))).astype(np.int64)


_SIG = sigmoid_table()


def silu_q16(g):
    """SiLU of Q.16 values: ``g * sigmoid(g)``, sigmoid from the table by odd symmetry."""
    g = np.asarray(g, dtype=np.int64)
    drop = RES_FRAC - SIG_STEP_BITS
    idx = (np.abs(g) + (1 << (drop - 1))) >> drop
    pos = np.where(idx < SIG_ENTRIES, _SIG[np.minimum(idx, SIG_ENTRIES - 1)], 1 << SIG_FRAC)
    sig = np.where(g >= 0, pos, (1 << SIG_FRAC) - pos)
    return round_shift(g * sig, SIG_FRAC)


def gate_silu(acc_gate, scale_gate, acc_up, scale_up):
    """``silu(gate) * up`` as an integer vector and its per-token scale.

    The gate is dequantised to Q.16 for the non-linearity; the up projection stays an exact accumulator,
    so ``h = silu_q16(gate) * acc_up`` (|h| < 2^53) with scale ``scale_up * 2^-16``.
    """
    g = dequant_q16(acc_gate, scale_gate)
    h = silu_q16(g) * np.asarray(acc_up, dtype=np.int64)
    return h, scale_up.scale_pow2(-RES_FRAC)


def gate_relu2(acc_gate, scale_gate, acc_up, scale_up):
    """``relu(gate)^2 * up`` computed exactly on accumulators: ``h = relu(ag)^2 * au`` (|h| < 2^61).

    The scale is ``scale_gate^2 * scale_up``; ReLU^2 never overflows because nothing is dequantised
    before the following RMSNorm, which divides the scale out again.
    """
    r = np.maximum(np.asarray(acc_gate, dtype=np.int64), 0)
    h = r * r * np.asarray(acc_up, dtype=np.int64)
    return h, scale_gate.mul(scale_gate).mul(scale_up)


# -- attention operands: int8 with power-of-two scales ----------------------------------------------------
def quant_pow2(x):
    """Quantise Q.16 vectors ``(..., d)`` to int8 with a shared power-of-two scale per vector.

    ``e = max(0, bitlen(max|x|) - 7)``; ``q = clamp(round_shift(x, e), -127, 127)``; real value
    ``q * 2^(e - 16)``. Returns ``(q, e)``.
    """
    x = np.asarray(x, dtype=np.int64)
    amax = np.max(np.abs(x), axis=-1)
    e = np.maximum(bitlen(amax) - 7, 0)
    q = np.clip(round_shift(x, e[..., None]), -KV_QMAX, KV_QMAX)
    return q, e


def score_constant(head_dim):
    """``log2(e) / sqrt(head_dim)`` as a 16-bit mantissa and shift: value ~ ``m * 2^-s``."""
    a = math.log2(math.e) / math.sqrt(head_dim)
    fr, ex = math.frexp(a)
    m = int(round(fr * (1 << 16)))
    if m == 1 << 16:
        m, ex = 1 << 15, ex + 1
    return m, 16 - ex


# -- embedding and LM head rows ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RowQuant:
    """A float matrix quantised per row: ``w[r] ~ q[r] * m16[r] * 2^e[r]``."""

    q: np.ndarray
    m16: np.ndarray
    e: np.ndarray
    bits: int


def quantise_rows(w, bits):
    """Symmetric per-row absmax quantisation to ``bits``-bit integers with a 16-bit mantissa row scale.

    ``q = round_half_even(w * qmax / max|w_row|)``, ``qmax = 2^(bits-1) - 1``; the row scale
    ``max|w_row| / qmax`` is stored as ``m16 * 2^e`` with ``2^15 <= m16 < 2^16`` (all-zero rows: 0).
    """
    if not 2 <= bits <= 16:
        raise ValueError(f"row quantisation needs 2..16 bits, got {bits}")
    w = np.asarray(w, dtype=np.float64)
    qmax = (1 << (bits - 1)) - 1
    amax = np.max(np.abs(w), axis=1)
    safe = np.where(amax > 0, amax, 1.0)
    q = np.clip(np.rint(w * (qmax / safe)[:, None]), -qmax, qmax).astype(np.int16 if bits <= 16 else np.int32)
    fr, ex = np.frexp(safe / qmax)
    m16 = np.rint(np.ldexp(fr, 16)).astype(np.int64)
    carry = m16 >= (1 << 16)
    m16 = np.where(carry, 1 << 15, m16)
    e = ex.astype(np.int64) - 16 + carry
    m16 = np.where(amax > 0, m16, 0)
    return RowQuant(q=q, m16=m16, e=e, bits=bits)


def clamp_int32(v):
    return np.clip(v, INT32_MIN, INT32_MAX)
