"""The bit-exact integer transformer: what the accelerator computes, token for token.

Built only from the primitives of :mod:`golden.numerics` and :mod:`golden.attention`, in the dataflow
order of ``docs/numerics.md``. Ternary matmuls run through float32 BLAS, which is exact here: every
partial sum of int8 x {-1, 0, 1} products is an integer below ``127 * K < 2^24`` (checked at
construction), the range float32 represents exactly. The int8 LM head uses float64 for the same reason
(``127 * 127 * K < 2^53``). The TLMM golden model (:mod:`golden.tlmm`) is proven equal to a plain integer
matmul by its own tests, so using BLAS here changes no number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .attention import attention
from .fixed import round_shift, saturate
from .numerics import (
    Q16_SCALE, RES_FRAC, RowQuant, dequant_q16, gate_relu2, gate_silu, norm_quant, quant_pow2, quantise_gain,
    quantise_rows, residual_add, rope_apply, rope_cos_sin, rope_freq_table,
)
from .sfloat import SFloat
from .weights import ModelWeights

__all__ = ["ContextOverflowError", "KVCache", "IntegerModel"]

_F32_EXACT = 1 << 24
_F64_EXACT = 1 << 53


class ContextOverflowError(ValueError):
    """A prompt plus generated tokens would exceed the context the cache was sized for."""


@dataclass
class KVCache:
    """Per-layer int8 keys/values with one power-of-two exponent per (position, kv head)."""

    k8: list
    ke: list
    v8: list
    ve: list
    max_len: int
    length: int = 0

    @classmethod
    def empty(cls, n_layers, max_len, kv_heads, head_dim):
        def vals():
            return [np.zeros((max_len, kv_heads, head_dim), np.int8) for _ in range(n_layers)]

        def exps():
            return [np.zeros((max_len, kv_heads), np.int16) for _ in range(n_layers)]

        return cls(vals(), exps(), vals(), exps(), max_len)

    @property
    def nbytes(self):
        return sum(a.nbytes for group in (self.k8, self.ke, self.v8, self.ve) for a in group)


@dataclass
class _Linear:
    wt: np.ndarray   # float32 (in, out) codes, for exact BLAS
    scale: SFloat    # per-tensor weight scale


@dataclass
class _Layer:
    g_in: object
    qkv: _Linear
    q_scale: SFloat
    k_scale: SFloat
    v_scale: SFloat
    g_attn_sub: object
    o: _Linear
    g_post: object
    gate_up: _Linear
    gate_scale: SFloat
    up_scale: SFloat
    g_ffn_sub: object
    down: _Linear


#: Rows quantised at a time by :func:`_quantise_rows_sliced`.
_QUANT_SLICE_ROWS = 8192


def _quantise_rows_sliced(w, bits):
    """:func:`golden.numerics.quantise_rows` on slices of rows (each row is quantised on its own, so the
    result is the same): it works in float64 with several full-size temporaries, gigabytes for a
    128,256-row vocabulary at once."""
    w = np.asarray(w)
    n = w.shape[0]
    if w.ndim != 2 or n <= _QUANT_SLICE_ROWS:
        return quantise_rows(w, bits)
    q = m16 = e = None
    for r0 in range(0, n, _QUANT_SLICE_ROWS):
        part = quantise_rows(w[r0:r0 + _QUANT_SLICE_ROWS], bits)
        if q is None:
            q = np.empty((n, w.shape[1]), part.q.dtype)
            m16, e = np.empty(n, part.m16.dtype), np.empty(n, part.e.dtype)
        r1 = r0 + len(part.q)
        q[r0:r1], m16[r0:r1], e[r0:r1] = part.q, part.m16, part.e
    return RowQuant(q=q, m16=m16, e=e, bits=part.bits)


def _matmul_exact(xq, wt):
    return (np.asarray(xq, np.float32) @ wt).astype(np.int64)


class IntegerModel:
    """Integer (accelerator) forward pass of a BitNet b1.58 model.

    Parameters
    ----------
    weights : ModelWeights
    lm_head_bits : int
        Bits of the per-row-quantised LM head, run bit-serially on the TLMM engine (2..8).
    """

    def __init__(self, weights: ModelWeights, lm_head_bits=8):
        weights.check_shapes()
        c = self.config = weights.config
        if not 2 <= lm_head_bits <= 8:
            raise ValueError(f"lm_head_bits must be 2..8, got {lm_head_bits}")
        for name, (out, k) in c.linear_shapes().items():
            if 127 * k >= _F32_EXACT:
                raise ValueError(f"{name}: in_features {k} too large for exact 24-bit accumulation")
        if c.hidden_act == "relu2" and (127 * c.hidden_size) ** 3 >= (1 << 62):
            raise ValueError(f"hidden_size {c.hidden_size} too large for the exact ReLU^2 product")
        if 127 * 127 * c.hidden_size >= _F64_EXACT:
            raise ValueError("hidden_size too large for the LM head")
        self.lm_head_bits = lm_head_bits
        eps = c.rms_norm_eps
        sf = SFloat.from_float
        self.layers = []
        for lw in weights.layers:
            q, k, v = lw.q_proj, lw.k_proj, lw.v_proj
            g, u = lw.gate_proj, lw.up_proj
            self.layers.append(_Layer(
                g_in=quantise_gain(lw.input_norm, eps),
                qkv=_Linear(np.concatenate([q.codes, k.codes, v.codes]).T.astype(np.float32, order="C"), None),
                q_scale=sf(q.scale), k_scale=sf(k.scale), v_scale=sf(v.scale),
                g_attn_sub=quantise_gain(lw.attn_sub_norm, eps),
                o=_Linear(lw.o_proj.codes.T.astype(np.float32, order="C"), sf(lw.o_proj.scale)),
                g_post=quantise_gain(lw.post_attention_norm, eps),
                gate_up=_Linear(np.concatenate([g.codes, u.codes]).T.astype(np.float32, order="C"), None),
                gate_scale=sf(g.scale), up_scale=sf(u.scale),
                g_ffn_sub=quantise_gain(lw.ffn_sub_norm, eps),
                down=_Linear(lw.down_proj.codes.T.astype(np.float32, order="C"), sf(lw.down_proj.scale)),
            ))
        self.g_final = quantise_gain(weights.final_norm, eps)
        self.embed = _quantise_rows_sliced(weights.embed, 16)
        self.lm_head = _quantise_rows_sliced(weights.lm_head, lm_head_bits)
        self._lm_wt_cache = None
        self.rope_freq = rope_freq_table(c.head_dim, c.rope_theta)

    # -- public API ----------------------------------------------------------------------------------------
    def new_cache(self, max_len=None):
        c = self.config
        max_len = c.max_position_embeddings if max_len is None else max_len
        return KVCache.empty(c.num_hidden_layers, max_len, c.num_key_value_heads, c.head_dim)

    def embed_tokens(self, tokens):
        """Embedding rows in Q.16: ``round_shift(q * m16, -(e + 16))`` per row."""
        e = self.embed
        rows = np.asarray(tokens, dtype=np.int64)
        return saturate(round_shift(e.q[rows].astype(np.int64) * e.m16[rows, None], -(e.e[rows, None] + RES_FRAC)), 32)

    def forward(self, tokens, cache, all_logits=True):
        """Run a chunk of tokens (a prefill chunk, or one decode token) and append to the cache.

        Returns
        -------
        numpy.ndarray
            int64 logits in Q.16 (divide by 65536 for real values), shape ``(T, vocab)``, or ``(1, vocab)``
            for the last position only when ``all_logits`` is false.
        """
        c = self.config
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError(f"tokens must be a non-empty 1-D sequence, got shape {tokens.shape}")
        if tokens.min() < 0 or tokens.max() >= c.vocab_size:
            raise ValueError(f"token id out of range 0..{c.vocab_size - 1}")
        start, t = cache.length, tokens.size
        if start + t > cache.max_len:
            raise ContextOverflowError(
                f"context overflow: {start} cached + {t} new tokens > {cache.max_len} positions")
        pos = np.arange(start, start + t)
        cos, sin = rope_cos_sin(pos, self.rope_freq)
        x = self.embed_tokens(tokens)
        unit = Q16_SCALE
        h_, hkv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        for li, ly in enumerate(self.layers):
            # Attention block.
            xq, sq = norm_quant(x, unit, ly.g_in)
            acc = _matmul_exact(xq, ly.qkv.wt)
            aq, ak, av = np.split(acc, [c.q_dim, c.q_dim + c.kv_dim], axis=1)
            q16 = rope_apply(dequant_q16(aq, sq.mul(ly.q_scale)).reshape(t, h_, d), cos, sin)
            k16 = rope_apply(dequant_q16(ak, sq.mul(ly.k_scale)).reshape(t, hkv, d), cos, sin)
            v16 = dequant_q16(av, sq.mul(ly.v_scale)).reshape(t, hkv, d)
            q8, qe = quant_pow2(q16)
            k8, ke = quant_pow2(k16)
            v8, ve = quant_pow2(v16)
            cache.k8[li][pos], cache.ke[li][pos] = k8, ke
            cache.v8[li][pos], cache.ve[li][pos] = v8, ve
            end = start + t
            o = attention(q8, qe, pos, cache.k8[li][:end], cache.ke[li][:end],
                          cache.v8[li][:end], cache.ve[li][:end], d)
            oq, so = norm_quant(o, unit, ly.g_attn_sub)
            x = residual_add(x, dequant_q16(_matmul_exact(oq, ly.o.wt), so.mul(ly.o.scale)))
            # Feed-forward block.
            hq, sh = norm_quant(x, unit, ly.g_post)
            ag, au = np.split(_matmul_exact(hq, ly.gate_up.wt), 2, axis=1)
            gate = gate_silu if c.hidden_act == "silu" else gate_relu2
            hh, s_h = gate(ag, sh.mul(ly.gate_scale), au, sh.mul(ly.up_scale))
            fq, sf_ = norm_quant(hh, s_h, ly.g_ffn_sub)
            x = residual_add(x, dequant_q16(_matmul_exact(fq, ly.down.wt), sf_.mul(ly.down.scale)))
        cache.length = start + t
        if not all_logits:
            x = x[-1:]
        return self.lm_head_logits(x)

    def lm_head_logits(self, x):
        """Final RMSNorm, int8 quantise, LM head (int-k per-row scaled), logits in Q.16 (saturating)."""
        xq, sq = norm_quant(x, Q16_SCALE, self.g_final)
        acc = (xq.astype(np.float64) @ self._lm_wt()).astype(np.int64)
        m16q, sh = sq.multiplier()
        lm = self.lm_head
        prod = acc * m16q[:, None] * lm.m16[None, :]
        return saturate(round_shift(prod, sh[:, None] - lm.e[None, :] - RES_FRAC), 32)

    def _lm_wt(self):
        """The LM head as float64 ``(hidden, vocab)`` for exact BLAS, built on first use: 2.6 GB for a
        128,256 x 2560 head, which compiling the model for the accelerator never needs."""
        if self._lm_wt_cache is None:
            self._lm_wt_cache = self.lm_head.q.T.astype(np.float64, order="C")
        return self._lm_wt_cache

    def logits(self, tokens, chunk=None):
        """Logits for every position of ``tokens`` (prefill in chunks of ``chunk`` tokens, default all)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        cache = self.new_cache(max(len(tokens), 1))
        chunk = chunk or len(tokens)
        parts = [self.forward(tokens[i:i + chunk], cache) for i in range(0, len(tokens), chunk)]
        return np.concatenate(parts)
