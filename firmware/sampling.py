"""Next-token selection from logits: greedy, temperature, top-k and top-p (nucleus), seeded."""

from __future__ import annotations

import numpy as np

__all__ = ["SamplingParams", "select_token"]


class SamplingParams:
    """Validated sampling settings.

    Parameters
    ----------
    temperature : float
        0 means greedy (argmax); otherwise logits are divided by it before the softmax.
    top_k : int or None
        Keep only the ``top_k`` most likely tokens (None or 0: all).
    top_p : float or None
        Keep the smallest set of tokens whose probability adds up to at least ``top_p`` (None or 1: all).
    seed : int or None
        Seed of the sampler's random generator (reproducible runs).
    """

    def __init__(self, temperature=0.0, top_k=None, top_p=None, seed=None):
        if not (isinstance(temperature, (int, float)) and 0.0 <= temperature <= 100.0):
            raise ValueError(f"temperature must be in [0, 100], got {temperature!r}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"top_k must be a non-negative integer, got {top_k!r}")
        if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        self.temperature = float(temperature)
        self.top_k = top_k or None
        self.top_p = top_p
        self.rng = np.random.default_rng(seed)

    @property
    def greedy(self):
        return self.temperature == 0.0


def select_token(logits, params):
    """Pick the next token id from a 1-D float logit vector."""
    logits = np.asarray(logits, dtype=np.float64)
    if params.greedy:
        return int(np.argmax(logits))
    z = logits / params.temperature
    order = np.argsort(-z, kind="stable")
    if params.top_k:
        order = order[:params.top_k]
    z = z[order] - z[order[0]]
    p = np.exp(z)
    p /= p.sum()
    if params.top_p is not None and params.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), params.top_p) + 1)
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(order[params.rng.choice(len(order), p=p)])
