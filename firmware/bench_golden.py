"""``trillium bench golden``: speed of the bit-exact integer model on a full-size random model."""

from __future__ import annotations

import time

import numpy as np

from golden.model_config import MODEL_SHAPES
from golden.model_int import IntegerModel
from golden.weights import random_model

__all__ = ["bench_golden"]


def bench_golden(shape="bitnet-large", prompt_tokens=8, decode_tokens=8, seed=0, progress=None):
    """Measure golden integer decode speed (tokens/s) on a random model of a published shape.

    Returns a JSON-ready dict. Decode is timed over ``decode_tokens`` single-token steps after a
    ``prompt_tokens`` prefill; build time (random weights + compile) is reported separately.
    """
    if shape not in MODEL_SHAPES:
        raise ValueError(f"unknown shape '{shape}' (available: {', '.join(MODEL_SHAPES)})")
    cfg = MODEL_SHAPES[shape]
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    say(f"building a random {shape} model ({cfg.ternary_weights_per_token / 1e6:.1f} M ternary weights)")
    weights = random_model(cfg, seed=seed)
    model = IntegerModel(weights)
    del weights
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, prompt_tokens + decode_tokens)
    cache = model.new_cache(prompt_tokens + decode_tokens)
    say(f"prefill of {prompt_tokens} tokens")
    t1 = time.perf_counter()
    model.forward(tokens[:prompt_tokens], cache, all_logits=False)
    prefill_s = time.perf_counter() - t1
    step_s = []
    for i in range(prompt_tokens, prompt_tokens + decode_tokens):
        t = time.perf_counter()
        model.forward(tokens[i:i + 1], cache, all_logits=False)
        step_s.append(time.perf_counter() - t)
        say(f"decode step {len(step_s)}/{decode_tokens}: {step_s[-1] * 1e3:.0f} ms")
    decode_s = float(np.sum(step_s))
    return {
        "shape": shape,
        "tokens_per_second": round(decode_tokens / decode_s, 3),
        "ms_per_token_median": round(float(np.median(step_s)) * 1e3, 1),
        "prefill_tokens": prompt_tokens,
        "prefill_seconds": round(prefill_s, 3),
        "decode_tokens": decode_tokens,
        "build_seconds": round(build_s, 1),
        "ternary_weights_per_token": cfg.ternary_weights_per_token,
        "method": ("bit-exact golden integer model (golden.model_int) on random weights of the published shape; "
                   "ternary matmuls in float32 BLAS, exact because every partial sum is an integer below 2^24; "
                   "int8 LM head in float64 BLAS (partial sums below 2^53); wall-clock on this machine"),
    }
