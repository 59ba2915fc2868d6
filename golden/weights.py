"""In-memory model weights: what a checkpoint loader produces and the golden models consume.

Ternary linears are kept as their codes and one per-tensor scale, exactly as the model defines them:
``W_effective = codes * scale``. Norm weights, the embedding and the LM head stay float32; the
integer model quantises them following ``docs/numerics.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .model_config import ModelConfig

__all__ = ["TernaryLinear", "LayerWeights", "ModelWeights", "LINEAR_NAMES", "absmean_quantise", "random_model"]

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TernaryLinear:
    """One BitLinear layer.

    Attributes
    ----------
    codes : numpy.ndarray
        int8, shape ``(out_features, in_features)``, values in {-1, 0, +1}.
    scale : float
        Effective weight multiplier (``1 / s_w`` = absmean of the float weight), a positive float32 value.
    """

    codes: np.ndarray
    scale: float

    def __post_init__(self):
        if self.codes.dtype != np.int8 or self.codes.ndim != 2:
            raise ValueError(f"ternary codes must be a 2-D int8 array, got {self.codes.dtype} {self.codes.shape}")
        self.scale = float(np.float32(self.scale))
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"ternary weight scale must be a positive finite number, got {self.scale}")

    @property
    def shape(self):
        return self.codes.shape


@dataclass
class LayerWeights:
    input_norm: np.ndarray
    q_proj: TernaryLinear
    k_proj: TernaryLinear
    v_proj: TernaryLinear
    o_proj: TernaryLinear
    attn_sub_norm: np.ndarray
    post_attention_norm: np.ndarray
    gate_proj: TernaryLinear
    up_proj: TernaryLinear
    down_proj: TernaryLinear
    ffn_sub_norm: np.ndarray

    def linears(self):
        return {name: getattr(self, name) for name in LINEAR_NAMES}


@dataclass
class ModelWeights:
    """A whole model. ``lm_head`` is the same array object as ``embed`` when embeddings are tied."""

    config: ModelConfig
    embed: np.ndarray
    layers: list
    final_norm: np.ndarray
    lm_head: np.ndarray
    meta: dict = field(default_factory=dict)

    def check_shapes(self):
        """Raise ``ValueError`` naming the first tensor whose shape does not match the config."""
        c = self.config
        expect = {"embed": (c.vocab_size, c.hidden_size), "lm_head": (c.vocab_size, c.hidden_size),
                  "final_norm": (c.hidden_size,)}
        for name, shape in expect.items():
            got = getattr(self, name).shape
            if got != shape:
                raise ValueError(f"{name}: shape {got} does not match the config's {shape}")
        if len(self.layers) != c.num_hidden_layers:
            raise ValueError(f"{len(self.layers)} layers present, config has {c.num_hidden_layers}")
        norms = {"input_norm": c.hidden_size, "attn_sub_norm": c.q_dim, "post_attention_norm": c.hidden_size,
                 "ffn_sub_norm": c.intermediate_size}
        for i, layer in enumerate(self.layers):
            for name, n in norms.items():
                if getattr(layer, name).shape != (n,):
                    raise ValueError(f"layers.{i}.{name}: shape {getattr(layer, name).shape} != ({n},)")
            for name, shape in c.linear_shapes().items():
                if getattr(layer, name).shape != shape:
                    raise ValueError(f"layers.{i}.{name}: shape {getattr(layer, name).shape} != {shape}")


def absmean_quantise(w):
    """BitNet b1.58 weight quantisation, as the reference implementations compute it in float32.

    ``s = 1 / max(mean|W|, 1e-5)``; ``codes = clamp(round_half_even(W * s), -1, 1)``; scale = ``1 / s``.

    Returns
    -------
    TernaryLinear
    """
    w = np.asarray(w, dtype=np.float32)
    s = np.float32(1.0) / np.maximum(np.abs(w).mean(dtype=np.float32), np.float32(1e-5))
    codes = np.clip(np.rint(w * s), -1, 1).astype(np.int8)
    return TernaryLinear(codes, float(np.float32(1.0) / s))


#: Normal samples drawn at a time by :func:`random_model` for the embedding (float64 scratch).
_DRAW_SLICE_ELEMS = 1 << 22


def random_model(config, seed=0, *, embed_std=1.0, logit_gain=1.0, norm_spread=0.1, sparsity=1 / 3,
                 branch_gain=1.0, bigram=0.0):
    """A random model of the given shape for tests and benchmarks.

    Parameters
    ----------
    config : ModelConfig
    seed : int
    embed_std : float
        Standard deviation of embedding entries.
    logit_gain : float
        Multiplies the LM head so the output distribution is peaked (larger is sharper).
    norm_spread : float
        Norm weights are ``1 + norm_spread * N(0, 1)``.
    sparsity : float
        Fraction of zero ternary codes.
    branch_gain : float
        Multiplies the scales of ``o_proj`` and ``down_proj``: the size of each residual branch's update
        relative to the residual stream (trained networks add small updates; 1.0 makes a chaotic model).
    bigram : float
        Strength of a random token-to-token map built into an untied LM head: 0 gives a purely random
        head (near-tied top logits are common), larger values make predictions peaked.
    """
    rng = np.random.default_rng(seed)
    c = config

    def linear(out, inp):
        if abs(sparsity - 1 / 3) < 1e-12:  # uniform codes: the fast path for full-size benchmark models
            codes = (rng.integers(0, 3, size=(out, inp), dtype=np.int8) - 1).astype(np.int8)
        else:
            p_nz = (1 - sparsity) / 2
            codes = rng.choice(np.array([-1, 0, 1], np.int8), size=(out, inp), p=[p_nz, sparsity, p_nz])
        # Scale so the output variance roughly matches the input's (absmean weight ~ 1/sqrt(in)).
        scale = np.float32(1.0 / np.sqrt(inp * (1 - sparsity)))
        return TernaryLinear(codes, scale)

    def branch(lin):
        return TernaryLinear(lin.codes, np.float32(lin.scale * branch_gain))

    def norm(n):
        return (1.0 + norm_spread * rng.standard_normal(n)).astype(np.float32)

    layers = []
    for _ in range(c.num_hidden_layers):
        shapes = c.linear_shapes()
        layers.append(LayerWeights(
            input_norm=norm(c.hidden_size),
            q_proj=linear(*shapes["q_proj"]), k_proj=linear(*shapes["k_proj"]),
            v_proj=linear(*shapes["v_proj"]), o_proj=branch(linear(*shapes["o_proj"])),
            attn_sub_norm=norm(c.q_dim), post_attention_norm=norm(c.hidden_size),
            gate_proj=linear(*shapes["gate_proj"]), up_proj=linear(*shapes["up_proj"]),
            down_proj=branch(linear(*shapes["down_proj"])), ffn_sub_norm=norm(c.intermediate_size),
        ))
    # Drawn in slices of rows straight into the float32 array: the same numbers as one float64 draw of
    # the whole matrix (the generator's stream is sequential), without its gigabytes for a large vocabulary.
    embed = np.empty((c.vocab_size, c.hidden_size), np.float32)
    rows = max(1, _DRAW_SLICE_ELEMS // max(c.hidden_size, 1))
    draw = np.empty((rows, c.hidden_size))
    for r0 in range(0, c.vocab_size, rows):
        d = draw[:min(rows, c.vocab_size - r0)]
        rng.standard_normal(out=d)
        embed[r0:r0 + len(d)] = embed_std * d
    if c.tie_word_embeddings:
        lm_head = embed
        if logit_gain != 1.0 or bigram:
            raise ValueError("logit_gain and bigram need untied embeddings")
    else:
        head = rng.standard_normal((c.vocab_size, c.hidden_size))
        head /= np.linalg.norm(head, axis=1, keepdims=True)
        if bigram:
            # Row perm[t] points along token t's embedding, so the model tends to predict perm[t] after t.
            inv = np.argsort(rng.permutation(c.vocab_size))
            unit = embed / np.maximum(np.linalg.norm(embed, axis=1, keepdims=True), 1e-12)
            head += bigram * unit[inv]
        lm_head = (logit_gain * head).astype(np.float32)
    m = ModelWeights(config=c, embed=embed, layers=layers, final_norm=norm(c.hidden_size), lm_head=lm_head)
    m.check_shapes()
    return m
