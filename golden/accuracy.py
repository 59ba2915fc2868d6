"""Numerical loss of the integer model against the float reference, measured on the same checkpoint.

Logits are compared position by position over a teacher-forced token sequence that is run as a prefill
followed by single-token decode steps, so both attention paths are exercised.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from .model_config import MODEL_SHAPES
from .model_float import FloatModel
from .model_int import IntegerModel
from .weights import random_model

__all__ = ["compare_logits", "run_accuracy", "ACCURACY_MODELS", "accuracy_report"]


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def compare_logits(test, ref):
    """Per-position cosine, KL(ref || test) and top-1 agreement between two ``(T, vocab)`` logit arrays."""
    test = np.asarray(test, np.float64)
    ref = np.asarray(ref, np.float64)
    cos = np.sum(test * ref, axis=1) / (np.linalg.norm(test, axis=1) * np.linalg.norm(ref, axis=1) + 1e-300)
    p, q = _softmax(ref), _softmax(test)
    kl = np.sum(p * (np.log(np.maximum(p, 1e-300)) - np.log(np.maximum(q, 1e-300))), axis=1)
    return {
        "positions": int(test.shape[0]),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "kl_mean": float(max(kl.mean(), 0.0)),
        "kl_max": float(max(kl.max(), 0.0)),
        "top1_agreement": float(np.mean(test.argmax(1) == ref.argmax(1))),
        "ref_max_prob_mean": float(p.max(axis=1).mean()),
    }


def run_accuracy(weights, tokens, prefill, dtype=np.float64, integer=True):
    """Integer and float logits for ``tokens``: the first ``prefill`` in one chunk, the rest one by one.

    Returns ``(integer_logits or None, float_logits)``.
    """
    models = [FloatModel(weights, dtype)] + ([IntegerModel(weights)] if integer else [])
    n = len(tokens)
    outs = []
    for m in models:
        cache = m.new_cache(n)
        parts = [m.forward(tokens[:prefill], cache)]
        parts += [m.forward(tokens[i:i + 1], cache) for i in range(prefill, n)]
        outs.append(np.concatenate(parts).astype(np.float64))
    lf = outs[0]
    li = outs[1] / 65536.0 if integer else None
    return li, lf


def _small(act, kv_heads, **kw):
    base = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=64, hidden_act=act,
                max_position_embeddings=512, tie_word_embeddings=False)
    base.update(kw)
    return dataclasses.replace(MODEL_SHAPES["bitnet-large"], **base)


#: The accuracy suite: name -> (config, random_model keyword arguments, is-a-target).
#: "peaked" models have residual branches at half gain and a partly bigram LM head, so the float model
#: makes confident predictions (the target family); "chaotic" ones are fully random for comparison.
ACCURACY_MODELS = {
    "silu-mha-peaked": (_small("silu", 4), dict(branch_gain=0.5, bigram=0.5, logit_gain=12.0), True),
    "relu2-gqa-peaked": (_small("relu2", 2), dict(branch_gain=0.5, bigram=0.5, logit_gain=12.0), True),
    "silu-mha-chaotic": (_small("silu", 4), dict(logit_gain=12.0), False),
    "relu2-gqa-chaotic": (_small("relu2", 2), dict(logit_gain=12.0), False),
}


def accuracy_report(positions=256, prefill=128, seed=0, models=None, progress=None):
    """Run the accuracy suite; returns a JSON-ready dict with per-model figures and the targets."""
    results = {}
    names = list(models or ACCURACY_MODELS)
    for name in names:
        cfg, kw, target = ACCURACY_MODELS[name]
        w = random_model(cfg, seed=seed, **kw)
        tokens = np.random.default_rng(seed + 1).integers(0, cfg.vocab_size, positions)
        t0 = time.perf_counter()
        li, lf = run_accuracy(w, tokens, min(prefill, positions))
        fig = compare_logits(li, lf)
        # The floor set by the model itself: the same reference in float32 against float64.
        _, lf32 = run_accuracy(w, tokens, min(prefill, positions), dtype=np.float32, integer=False)
        base = compare_logits(lf32, lf)
        fig["float32_ref_top1_agreement"] = base["top1_agreement"]
        fig["float32_ref_cosine_min"] = base["cosine_min"]
        fig["seconds"] = round(time.perf_counter() - t0, 2)
        fig["target_family"] = target
        results[name] = fig
        if progress:
            progress(name)
    targets = {"cosine_min": 0.995, "top1_agreement": 0.98}
    met = all(r["cosine_min"] >= targets["cosine_min"] and r["top1_agreement"] >= targets["top1_agreement"]
              for r in results.values() if r["target_family"])
    return {
        "method": (f"random BitNet models (hidden 256, 4 layers, vocab 512), {positions} teacher-forced positions: "
                   f"{prefill}-token prefill then single-token decode; integer model (golden) vs float64 "
                   "reference forward of the same weights"),
        "targets": targets,
        "targets_met": met,
        "models": results,
    }
