"""The driver for a device that runs compiled programs: compile, load, then prefill and decode.

:class:`Accelerator` compiles a model for a hardware configuration (``firmware/compiler.py``), checks
the device's ID register against that configuration, loads the DRAM image once and then runs the
program for every prefill chunk and decode step, with the token count and position as run arguments.
Every run is recorded in :attr:`Accelerator.run_log` (tokens, position, the ``run_cycles`` CSR).
The KV cache stays in device DRAM between calls; :class:`DeviceCache` only tracks how many positions
it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from golden.model_int import ContextOverflowError, IntegerModel
from hw.config import HwConfig

from .compiler import compile_model
from .device import make_device

__all__ = ["Accelerator", "DeviceCache", "DEFAULT_MAX_CHUNK"]

#: Most tokens per run (a prefill longer than this runs in chunks).
DEFAULT_MAX_CHUNK = 16


@dataclass
class DeviceCache:
    """Positions held in the device's KV cache (its contents live in device DRAM)."""

    max_len: int
    length: int = 0
    owner: object = None


class Accelerator:
    """A model loaded on a device (see the module docstring).

    Parameters
    ----------
    weights : golden.weights.ModelWeights
    hw : HwConfig
    device : str
        Device name (``firmware.device.DEVICES``).
    max_context : int or None
        KV cache positions to reserve (default: the smaller of the model's and the hardware's context).
    max_chunk : int
        Most tokens per run (at most the build's ``limits.max_chunk``).
    device_options : dict, optional
        Keyword arguments of the device (for ``verilator``: ``waves``, ``timeout_cycles``).
    """

    def __init__(self, weights, hw: HwConfig, device="isa", *, max_context=None, max_chunk=DEFAULT_MAX_CHUNK,
                 device_options=None):
        c = weights.config
        self.config = c
        self.model = IntegerModel(weights)
        ctx = min(c.max_position_embeddings, hw.max_context) if max_context is None else max_context
        self.compiled = cm = compile_model(self.model, hw, max_context=ctx, max_chunk=min(max_chunk, ctx, hw.limits.max_chunk))
        self.max_context = ctx
        self.device = make_device(device, hw, len(cm.image), **(device_options or {}))
        self.device.check_id()
        self.device.write(0, bytes(cm.image))
        self.device.write_csr("program", cm.program)
        # Addresses at or beyond the image are errors (BAD_ADDRESS), not reads of whatever lies there.
        self.device.write_csr("dram_size", len(cm.image))
        self.runs = 0
        #: One dict per run: ``n_tokens``, ``pos``, ``run_cycles`` (the device's ``run_cycles`` CSR; the ISA
        #: simulator counts no cycles and reports 0) and ``work`` (the ISA simulator's
        #: :class:`golden.isa_sim.WorkCounts` of the run as a dict, or None on other devices).
        self.run_log = []

    def new_cache(self, max_len):
        if max_len > self.max_context:
            raise ContextOverflowError(f"{max_len} positions requested; the device's KV cache holds "
                                       f"{self.max_context}")
        return DeviceCache(max_len=max_len, owner=self)

    def forward(self, tokens, cache: DeviceCache, all_logits=False):
        """Run ``tokens`` from position ``cache.length``; int64 Q.16 logits of every token, or of the last."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError(f"tokens must be a non-empty 1-D sequence, got shape {tokens.shape}")
        if cache.owner is not self:
            raise ValueError("this cache belongs to another accelerator")
        if tokens.min() < 0 or tokens.max() >= self.config.vocab_size:
            raise ValueError(f"token id out of range 0..{self.config.vocab_size - 1}")
        if cache.length + tokens.size > cache.max_len:
            raise ContextOverflowError(f"context overflow: {cache.length} cached + {tokens.size} new tokens > "
                                       f"{cache.max_len} positions")
        cm, dev = self.compiled, self.device
        out = []
        for i in range(0, tokens.size, cm.max_chunk):
            chunk = tokens[i:i + cm.max_chunk]
            last = i + cm.max_chunk >= tokens.size
            want_all = bool(all_logits)
            dev.write(cm.tokens_addr, chunk.astype("<i4").tobytes())
            for name, value in (("tokens", cm.tokens_addr), ("n_tokens", chunk.size), ("pos", cache.length),
                                ("logits", cm.logits_addr), ("all_logits", int(want_all))):
                dev.write_csr(name, value)
            dev.run()
            self.runs += 1
            work = getattr(dev, "last_work", None)
            self.run_log.append({"n_tokens": int(chunk.size), "pos": int(cache.length),
                                 "run_cycles": int(dev.read_csr("run_cycles")),
                                 "work": work.to_dict() if work is not None else None})
            cache.length += chunk.size
            if want_all or last:
                n = chunk.size if want_all else 1
                raw = dev.read(cm.logits_addr, 4 * n * cm.logits_stride)
                rows = np.frombuffer(raw, "<i4").astype(np.int64).reshape(n, cm.logits_stride)
                out.append(rows[:, :cm.vocab])
        return np.concatenate(out)
