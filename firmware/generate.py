"""Text generation on a backend: prompt -> tokens, streamed, with timing.

Backends share one small interface (``new_cache(max_len)``, ``forward(tokens, cache, all_logits)``,
``config``). ``golden`` is the bit-exact integer model (what the accelerator computes), ``float`` the float
reference, ``isa`` the compiled program on the ISA simulator and ``verilator`` the same program on the
accelerator's RTL in Verilator (``firmware/accelerator.py``, with a hardware config). A board plugs in as
another device of the same driver.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from golden.model_float import FloatModel
from golden.model_int import ContextOverflowError, IntegerModel

from .sampling import SamplingParams, select_token

__all__ = ["BACKENDS", "DEVICE_BACKENDS", "make_backend", "GenerationResult", "Generator", "ContextOverflowError"]

BACKENDS = ("golden", "float", "isa", "verilator")
#: Backends that run compiled programs on a device (they take a hardware config).
DEVICE_BACKENDS = ("isa", "verilator")


class _GoldenBackend:
    name = "golden"

    def __init__(self, weights):
        self.model = IntegerModel(weights)
        self.config = weights.config

    def new_cache(self, max_len):
        return self.model.new_cache(max_len)

    def forward(self, tokens, cache, all_logits=False):
        return self.model.forward(tokens, cache, all_logits=all_logits) / 65536.0


class _FloatBackend:
    name = "float"

    def __init__(self, weights):
        self.model = FloatModel(weights, np.float32)
        self.config = weights.config

    def new_cache(self, max_len):
        return self.model.new_cache(max_len)

    def forward(self, tokens, cache, all_logits=False):
        return self.model.forward(tokens, cache, all_logits=all_logits).astype(np.float64)


class _DeviceBackend:
    def __init__(self, weights, device, hw, device_options=None):
        from hw.config import load_hw_config

        from .accelerator import Accelerator

        self.name = device
        self.hw = load_hw_config(hw) if isinstance(hw, str) else hw
        self.accel = Accelerator(weights, self.hw, device, device_options=device_options)
        self.config = weights.config

    @property
    def max_context(self):
        return self.accel.max_context

    def new_cache(self, max_len):
        return self.accel.new_cache(max_len)

    def forward(self, tokens, cache, all_logits=False):
        return self.accel.forward(tokens, cache, all_logits=all_logits) / 65536.0


def make_backend(name, weights, hw="tiny", device_options=None):
    """Build the named backend for loaded weights (``hw``: hardware config, and ``device_options``: keyword
    arguments of the device, such as ``waves``, for device backends)."""
    if name == "golden":
        return _GoldenBackend(weights)
    if name == "float":
        return _FloatBackend(weights)
    if name in DEVICE_BACKENDS:
        return _DeviceBackend(weights, name, hw, device_options)
    raise ValueError(f"unknown backend '{name}' (available: {', '.join(BACKENDS)})")


@dataclass
class GenerationResult:
    prompt_tokens: list
    tokens: list = field(default_factory=list)
    text: str = ""
    stop_reason: str = ""
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    def to_json(self):
        n = len(self.tokens)
        decode_steps = max(n - 1, 0)
        return {
            "prompt_tokens": self.prompt_tokens,
            "tokens": self.tokens,
            "text": self.text,
            "stop_reason": self.stop_reason,
            "timing": {
                "time_to_first_token_s": round(self.prefill_seconds, 4),
                "decode_s": round(self.decode_seconds, 4),
                "decode_tokens_per_s": round(decode_steps / self.decode_seconds, 3) if self.decode_seconds else None,
                "note": "host wall-clock time of the backend's software model, not accelerator time",
            },
        }


class Generator:
    """Generate text from a prompt on a backend.

    Parameters
    ----------
    backend : object
        From :func:`make_backend`.
    tokenizer : tokenizers.Tokenizer
    """

    def __init__(self, backend, tokenizer):
        self.backend = backend
        self.tokenizer = tokenizer
        self.config = backend.config

    def encode_prompt(self, prompt):
        """Token ids of the prompt, with the model's BOS token prepended if the tokenizer did not add it."""
        ids = list(self.tokenizer.encode(prompt).ids)
        bos = self.config.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        if not ids:
            raise ValueError("empty prompt, and the model defines no BOS token to start from")
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise ValueError(f"tokenizer produced id {bad[0]} outside the model's vocabulary of "
                             f"{self.config.vocab_size}: tokenizer and checkpoint do not match")
        return ids

    def generate(self, prompt, max_new_tokens=32, temperature=0.0, top_k=None, top_p=None, seed=None,
                 stop=(), max_context=None, on_token=None):
        """Generate up to ``max_new_tokens`` tokens; ``on_token(id, text_piece)`` streams them.

        Stops early on an end-of-sequence token or when the text ends with one of the ``stop`` strings.

        Raises
        ------
        ContextOverflowError
            If the prompt plus ``max_new_tokens`` exceeds the model's context.
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        params = SamplingParams(temperature, top_k, top_p, seed)
        prompt_ids = self.encode_prompt(prompt)
        limit = max_context or getattr(self.backend, "max_context", None) or self.config.max_position_embeddings
        need = len(prompt_ids) + max_new_tokens
        if need > limit:
            raise ContextOverflowError(
                f"prompt of {len(prompt_ids)} tokens + {max_new_tokens} new tokens = {need} exceeds the "
                f"context of {limit} tokens")
        cache = self.backend.new_cache(need)
        result = GenerationResult(prompt_tokens=prompt_ids)
        eos = set(self.config.eos_token_ids)
        t0 = time.perf_counter()
        logits = self.backend.forward(np.asarray(prompt_ids), cache, all_logits=False)[-1]
        result.prefill_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        text_so_far = ""
        for step in range(max_new_tokens):
            tok = select_token(logits, params)
            if tok in eos:
                result.stop_reason = "eos"
                break
            result.tokens.append(tok)
            full = self.tokenizer.decode(result.tokens)
            piece, text_so_far = full[len(text_so_far):], full
            if on_token:
                on_token(tok, piece)
            if any(s and text_so_far.endswith(s) for s in stop):
                result.stop_reason = "stop_string"
                break
            if step + 1 < max_new_tokens:
                logits = self.backend.forward(np.asarray([tok]), cache, all_logits=False)[-1]
        else:
            result.stop_reason = "max_new_tokens"
        result.decode_seconds = time.perf_counter() - t1
        result.text = self.tokenizer.decode(result.tokens)
        return result
