"""Causal attention over an int8 KV cache with a block-ordered online softmax, bit-exact.

One definition serves prefill (a chunk of queries) and decode (one query): for every query row, keys are
visited in blocks of ``ATTN_KEY_BLOCK`` positions aligned to absolute positions, in ascending order, and
the running maximum / rescale happens once per block. Because the block boundaries are fixed by the
numerics contract (not by the hardware's tile sizes) and integer sums within a block are exact, the
result is the same whatever the hardware's parallelism, query tiling, or prefill chunking.
"""

from __future__ import annotations

import numpy as np

from .fixed import round_shift, saturate
from .numerics import ATTN_KEY_BLOCK, EXP_FRAC, RES_FRAC, exp2_neg, score_constant
from .sfloat import SFloat

__all__ = ["attention", "scores_log2"]

_NEG_INF = -(1 << 40)


def scores_log2(q8, qe, k8, ke, score_m, score_s):
    """Scores in log2 units, Q.16, saturated to int32.

    ``z = round_shift(dot(q, k) * m, s + 16 - qe - ke)`` where ``m * 2^-s ~ log2(e) / sqrt(d)`` and the
    real operands are ``q * 2^(qe - 16)`` and ``k * 2^(ke - 16)``.

    Shapes: ``q8 (Tq, Hkv, G, d)``, ``qe (Tq, Hkv, G)``, ``k8 (Tk, Hkv, d)``, ``ke (Tk, Hkv)``;
    returns ``(Tq, Hkv, G, Tk)``.
    """
    dot = np.einsum("qhgd,khd->qhgk", q8.astype(np.int64), k8.astype(np.int64))
    shift = score_s + RES_FRAC - qe[..., None] - ke.T[None, :, None, :]
    return saturate(round_shift(dot * score_m, shift), 32)


def attention(q8, qe, q_pos, k8, ke, v8, ve, head_dim):
    """Attention of a chunk of queries against the cache (which already holds the chunk's own keys).

    Parameters
    ----------
    q8, qe : numpy.ndarray
        Queries ``(Tq, H, d)`` int8 values and ``(Tq, H)`` exponents.
    q_pos : numpy.ndarray
        ``(Tq,)`` absolute positions; query i attends to keys ``j <= q_pos[i]``.
    k8, ke, v8, ve : numpy.ndarray
        Cache contents for positions ``0 .. Tk-1``: ``(Tk, Hkv, d)`` values and ``(Tk, Hkv)`` exponents.
    head_dim : int

    Returns
    -------
    numpy.ndarray
        int64 ``(Tq, H * d)``: the attention output in Q.16, heads concatenated.
    """
    tq, h, d = q8.shape
    tk, hkv, _ = k8.shape
    g = h // hkv
    q8 = q8.reshape(tq, hkv, g, d)
    qe = np.asarray(qe, np.int64).reshape(tq, hkv, g)
    ke = np.asarray(ke, np.int64)
    ve = np.asarray(ve, np.int64)
    score_m, score_s = score_constant(head_dim)
    z = scores_log2(q8, qe, k8, ke, score_m, score_s)  # (tq, hkv, g, tk)
    q_pos = np.asarray(q_pos, np.int64)

    run_max = np.full((tq, hkv, g), _NEG_INF, np.int64)
    run_ev = np.zeros((tq, hkv, g), np.int64)
    den = np.zeros((tq, hkv, g), np.int64)
    num = np.zeros((tq, hkv, g, d), np.int64)
    started = np.zeros((tq, hkv, g), bool)
    v64 = v8.astype(np.int64)
    n_blocks = -(-int(q_pos.max() + 1) // ATTN_KEY_BLOCK)
    for b in range(n_blocks):
        j0, j1 = b * ATTN_KEY_BLOCK, min((b + 1) * ATTN_KEY_BLOCK, tk)
        valid = (np.arange(j0, j1)[None, :] <= q_pos[:, None])[:, None, None, :]  # (tq,1,1,blk)
        row_live = valid.any(axis=-1)  # rows with at least one unmasked key in this block
        if not row_live.any():
            continue
        zb = np.where(valid, z[..., j0:j1], _NEG_INF)
        new_max = np.maximum(run_max, zb.max(axis=-1))
        # Rescale factor of what has been accumulated so far (zero for the first block).
        alpha = np.where(started, exp2_neg(new_max - run_max), 0)
        p = np.where(valid, exp2_neg(new_max[..., None] - zb), 0)  # Q1.15
        veb = np.broadcast_to(ve[j0:j1].T[None, :, None, :], p.shape)
        blk_ev = np.where(valid, veb, 0).max(axis=-1)
        new_ev = np.where(started, np.maximum(run_ev, blk_ev), blk_ev)
        pv = round_shift(p, new_ev[..., None] - veb)
        den_new = round_shift(den * alpha, EXP_FRAC) + p.sum(axis=-1)
        num_new = (round_shift(num * alpha[..., None], (EXP_FRAC + new_ev - run_ev)[..., None])
                   + np.einsum("qhgk,khd->qhgd", pv, v64[j0:j1]))
        live = np.broadcast_to(row_live, den.shape)
        den = np.where(live, den_new, den)
        num = np.where(live[..., None], num_new, num)
        run_max = np.where(live, new_max, run_max)
        run_ev = np.where(live, new_ev, run_ev)
        started |= live

    # Normalise: o = num * 2^ev / den, in Q.16 (v in Q.16 units is v8 * 2^ve).
    scale = SFloat.pow2(run_ev).div(SFloat.from_int(den))
    out = saturate(scale.apply(num), 32)
    return out.reshape(tq, h * d)
