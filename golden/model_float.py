"""Float reference forward pass of a BitNet b1.58 model, following Hugging Face ``transformers``' BitNet.

What the model defines is kept exactly: absmean ternary weights, per-token absmax int8 activation
quantisation (round half to even, clamp to [-128, 127], scale ``127 / max(max|x|, 1e-5)``) at every
BitLinear input, RMSNorm with eps, sub-norms, rotate-half RoPE, float softmax attention, SiLU or ReLU^2
gating, and a float LM head. It computes in float32 by default, as the reference does, and serves as the
yardstick for the integer model's numerical loss.
"""

from __future__ import annotations

import numpy as np

from .model_int import ContextOverflowError
from .weights import ModelWeights

__all__ = ["FloatModel", "FloatCache"]


class FloatCache:
    def __init__(self, n_layers, max_len, kv_heads, head_dim, dtype):
        self.k = [np.zeros((max_len, kv_heads, head_dim), dtype) for _ in range(n_layers)]
        self.v = [np.zeros((max_len, kv_heads, head_dim), dtype) for _ in range(n_layers)]
        self.max_len = max_len
        self.length = 0


class FloatModel:
    """Reference forward pass.

    Parameters
    ----------
    weights : ModelWeights
    dtype : numpy dtype
        ``float32`` (like the reference implementation) or ``float64``.
    """

    def __init__(self, weights: ModelWeights, dtype=np.float32):
        weights.check_shapes()
        self.w = weights
        self.config = weights.config
        self.dt = np.dtype(dtype)
        c = self.config
        # Effective ternary weights as the reference forms them: codes times the per-tensor scale.
        self._lin = []
        for lw in weights.layers:
            self._lin.append({name: (lin.codes.T.astype(self.dt), self.dt.type(lin.scale))
                              for name, lin in lw.linears().items()})
        half = c.head_dim // 2
        self._inv_freq = (1.0 / (c.rope_theta ** (np.arange(0, c.head_dim, 2, dtype=np.int64)
                                                  .astype(np.float32) / c.head_dim))).astype(np.float32)
        assert self._inv_freq.shape == (half,)

    def new_cache(self, max_len=None):
        c = self.config
        max_len = c.max_position_embeddings if max_len is None else max_len
        return FloatCache(c.num_hidden_layers, max_len, c.num_key_value_heads, c.head_dim, self.dt)

    # -- building blocks ---------------------------------------------------------------------------------
    def _rms_norm(self, x, w):
        var = np.mean(x * x, axis=-1, keepdims=True)
        return w.astype(self.dt) * (x / np.sqrt(var + self.dt.type(self.config.rms_norm_eps)))

    def _bitlinear(self, x, lin):
        codes_t, scale = lin
        s = self.dt.type(127) / np.maximum(np.max(np.abs(x), axis=-1, keepdims=True), self.dt.type(1e-5))
        xq = np.clip(np.rint(x * s), -128, 127)
        return (xq @ codes_t) * (scale / s)

    def _rope(self, x, pos):
        freqs = pos[:, None].astype(np.float32) * self._inv_freq[None, :]
        emb = np.concatenate([freqs, freqs], axis=-1)
        cos, sin = np.cos(emb).astype(self.dt)[:, None, :], np.sin(emb).astype(self.dt)[:, None, :]
        half = x.shape[-1] // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rot * sin

    def _act(self, g):
        if self.config.hidden_act == "silu":
            return g / (1 + np.exp(-g))
        r = np.maximum(g, 0)
        return r * r

    # -- forward -----------------------------------------------------------------------------------------
    def forward(self, tokens, cache, all_logits=True):
        """Logits (float, shape ``(T, vocab)``, or ``(1, vocab)`` with ``all_logits=False``)."""
        c = self.config
        tokens = np.asarray(tokens, dtype=np.int64)
        start, t = cache.length, tokens.size
        if start + t > cache.max_len:
            raise ContextOverflowError(
                f"context overflow: {start} cached + {t} new tokens > {cache.max_len} positions")
        pos = np.arange(start, start + t)
        h_, hkv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        g = h_ // hkv
        x = self.w.embed[tokens].astype(self.dt)
        end = start + t
        causal = np.arange(end)[None, :] <= pos[:, None]
        for li, (lw, lin) in enumerate(zip(self.w.layers, self._lin)):
            hn = self._rms_norm(x, lw.input_norm)
            q = self._rope(self._bitlinear(hn, lin["q_proj"]).reshape(t, h_, d), pos)
            k = self._rope(self._bitlinear(hn, lin["k_proj"]).reshape(t, hkv, d), pos)
            v = self._bitlinear(hn, lin["v_proj"]).reshape(t, hkv, d)
            cache.k[li][pos], cache.v[li][pos] = k, v
            kk, vv = cache.k[li][:end], cache.v[li][:end]
            qg = q.reshape(t, hkv, g, d)
            scores = np.einsum("qhgd,khd->qhgk", qg, kk) * self.dt.type(1.0 / np.sqrt(d))
            scores = np.where(causal[:, None, None, :], scores, -np.inf)
            scores = scores - scores.max(axis=-1, keepdims=True)
            p = np.exp(scores)
            p = p / p.sum(axis=-1, keepdims=True)
            o = np.einsum("qhgk,khd->qhgd", p, vv).reshape(t, h_ * d)
            x = x + self._bitlinear(self._rms_norm(o, lw.attn_sub_norm), lin["o_proj"])
            hn = self._rms_norm(x, lw.post_attention_norm)
            hh = self._act(self._bitlinear(hn, lin["gate_proj"])) * self._bitlinear(hn, lin["up_proj"])
            x = x + self._bitlinear(self._rms_norm(hh, lw.ffn_sub_norm), lin["down_proj"])
        cache.length = end
        if not all_logits:
            x = x[-1:]
        return self._rms_norm(x, self.w.final_norm) @ self.w.lm_head.T.astype(self.dt)

    def logits(self, tokens):
        tokens = np.asarray(tokens, dtype=np.int64)
        return self.forward(tokens, self.new_cache(max(len(tokens), 1)))
