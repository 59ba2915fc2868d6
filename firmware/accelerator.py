"""The driver for a device that runs compiled programs: compile, load, then prefill and decode.

:class:`Accelerator` compiles a model for a hardware configuration (``firmware/compiler.py``), checks
the device's ID register against that configuration, loads the DRAM image once and then runs the
program for every prefill chunk and decode step, with the token count and position as run arguments.
Every run is recorded in :attr:`Accelerator.run_log` (tokens, position, session, the ``run_cycles`` CSR).

Sessions (docs/driver.md): a :class:`DeviceCache` is a session. It owns a KV region of the **KV arena**
in device DRAM (``firmware/kv_manager.py``; ``kv_positions`` sizes the arena) and a **program slot**
holding the program with that region's ``kv_base`` and ``max_context`` in ``SETUP``
(``firmware.compiler.session_program``). Every run of a session starts at its own program, so a run
writes KV data only inside its own region. :meth:`Accelerator.free` (or dropping the last reference to
the cache) returns the region and the slot. The KV contents stay in device DRAM between calls; the
cache object tracks how many positions it holds.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from golden.model_int import ContextOverflowError, IntegerModel
from golden.numerics import ATTN_KEY_BLOCK
from hw.config import HwConfig

from .compiler import compile_model, group_program, session_program
from .device import DeviceError, make_device
from .kv_cache import KvCacheLayout
from .kv_manager import KvManager, KvMemoryError, blocks_for

__all__ = ["Accelerator", "DeviceCache", "DEFAULT_MAX_CHUNK", "KvMemoryError", "MAX_PROGRAM_SLOTS"]

#: Most tokens per run (a prefill longer than this runs in chunks).
DEFAULT_MAX_CHUNK = 16
#: Default cap of program slots (sessions at once) when ``max_sessions`` is not given.
MAX_PROGRAM_SLOTS = 64


@dataclass(eq=False)
class DeviceCache:
    """A session: positions held in its KV region of device DRAM, the region and its program slot.

    ``region`` is a :class:`firmware.kv_manager.KvRegion` (``base``, ``max_context``), ``slot`` the
    program slot and ``program`` its byte address; ``session`` numbers the sessions of an accelerator.
    """

    max_len: int
    length: int = 0
    owner: object = None
    region: object = None
    slot: int = None
    program: int = None
    session: int = None
    #: What the program slot holds now: (first layer, last layer + 1, with LOGITS).
    slot_holds: tuple = None

    @property
    def freed(self):
        return self.region is None

    def free(self):
        """Return the KV region and the program slot (see :meth:`Accelerator.free`)."""
        if self.owner is not None and self.region is not None:
            self.owner.free(self)


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
    kv_positions : int or None
        Positions of the KV arena that all sessions share (rounded up to blocks of 32; default
        ``max_context``: one session of the whole context, or several shorter ones).
    max_sessions : int or None
        Program slots, the most sessions at once (default: as many as the arena has blocks, at most
        :data:`MAX_PROGRAM_SLOTS`).

    Raises
    ------
    firmware.compiler.DramCapacityError
        If the model, the KV arena and the program slots do not fit ``hw.dram.capacity_bytes``.
    """

    def __init__(self, weights, hw: HwConfig, device="isa", *, max_context=None, max_chunk=DEFAULT_MAX_CHUNK,
                 device_options=None, kv_positions=None, max_sessions=None):
        c = weights.config
        self.config = c
        self.hw = hw
        self.model = IntegerModel(weights)
        ctx = min(c.max_position_embeddings, hw.max_context) if max_context is None else max_context
        if not isinstance(ctx, int) or ctx < 1:
            raise ValueError(f"max_context must be a positive integer, got {ctx!r}")
        kv_positions = ctx if kv_positions is None else kv_positions
        if not isinstance(kv_positions, int) or kv_positions < 1:
            raise ValueError(f"kv_positions must be a positive integer, got {kv_positions!r}")
        arena_blocks = max(blocks_for(kv_positions), blocks_for(ctx))
        if max_sessions is None:
            max_sessions = min(arena_blocks, MAX_PROGRAM_SLOTS)
        if not isinstance(max_sessions, int) or max_sessions < 1:
            raise ValueError(f"max_sessions must be a positive integer, got {max_sessions!r}")
        # One 32-position block of every layer and kv head (firmware/kv_manager.py).
        block_bytes = KvCacheLayout(len(self.model.layers), c.num_key_value_heads, c.head_dim, ATTN_KEY_BLOCK,
                                    bus_bytes=hw.dram.bus_bytes).total_bytes
        self.compiled = cm = compile_model(self.model, hw, max_context=ctx,
                                           max_chunk=min(max_chunk, ctx, hw.limits.max_chunk),
                                           kv_arena_bytes=arena_blocks * block_bytes, program_slots=max_sessions)
        self.max_context = ctx
        arena = cm.regions["kv_cache"]
        self.kv = KvManager(arena.addr, arena.size, layers=cm.kv.layers, kv_heads=cm.kv.kv_heads,
                            head_dim=cm.kv.head_dim, bus_bytes=cm.kv.bus_bytes)
        self._free_slots = list(range(max_sessions))
        self._sessions = 0
        self.device = make_device(device, hw, len(cm.image), **(device_options or {}))
        self.device.check_id()
        base = self.device.allocate(len(cm.image), name="image")
        assert base == 0, "the image is linked at address 0"
        self.device.write(base, bytes(cm.image))
        self.device.write_csr("program", cm.program)
        # Addresses at or beyond the image are errors (BAD_ADDRESS), not reads of whatever lies there.
        self.device.write_csr("dram_size", len(cm.image))
        self.runs = 0
        #: One dict per run (``error``: the error code's name, on a run the device refused):
        #: ``n_tokens``, ``pos``, ``session``, ``kv_base``, ``run_cycles`` (the device's ``run_cycles`` CSR; the ISA
        #: simulator counts no cycles and reports 0) and ``work`` (the ISA simulator's
        #: :class:`golden.isa_sim.WorkCounts` of the run as a dict, or None on other devices).
        self.run_log = []

    @property
    def max_sessions(self):
        return self.compiled.program_slots

    def new_cache(self, max_len):
        """A new session of ``max_len`` positions: a KV region and a program slot.

        Raises
        ------
        ContextOverflowError
            If ``max_len`` exceeds the accelerator's ``max_context``.
        KvMemoryError
            If the KV arena has no room for the region, or every program slot is taken.
        """
        if not isinstance(max_len, (int, np.integer)) or max_len < 1:
            raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
        max_len = int(max_len)
        if max_len > self.max_context:
            raise ContextOverflowError(f"{max_len} positions requested; the device's KV cache holds "
                                       f"{self.max_context}")
        if not self._free_slots:
            raise KvMemoryError(f"all {self.max_sessions} program slots are in use ({self.max_sessions} sessions "
                                f"at once; Accelerator(max_sessions=...)); {self.kv.describe()}")
        region = self.kv.allocate(max_len, tag=self._sessions)
        slot = self._free_slots.pop(0)
        addr = self.compiled.slot_address(slot)
        try:
            self.device.write(addr, session_program(self.compiled, region.base, region.max_context))
        except BaseException:
            self.kv.free(region)
            self._free_slots.insert(0, slot)
            raise
        cache = DeviceCache(max_len=max_len, owner=self, region=region, slot=slot, program=addr,
                            session=self._sessions, slot_holds=(0, self.compiled.layers, True))
        self._sessions += 1
        # A session dropped without free() gives its region back when it is garbage collected.
        cache._finalizer = weakref.finalize(cache, self._release, region, slot)
        cache._finalizer.atexit = False
        return cache

    def _release(self, region, slot):
        self.kv.free(region)
        self._free_slots.append(slot)
        self._free_slots.sort()

    def free(self, cache: DeviceCache):
        """End a session: its KV region and program slot go back to the accelerator."""
        if cache.owner is not self:
            raise ValueError("this cache belongs to another accelerator")
        if cache.region is None:
            raise KvMemoryError(f"session {cache.session} is already freed")
        cache._finalizer()          # runs _release once
        cache.region = cache.program = cache.slot = None

    def kv_bytes(self, cache: DeviceCache):
        """The bytes of a session's KV region as they are in device DRAM."""
        r = cache.region
        return self.device.read(r.base, r.size)

    def forward(self, tokens, cache: DeviceCache, all_logits=False):
        """Run ``tokens`` from position ``cache.length``; int64 Q.16 logits of every token, or of the last."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError(f"tokens must be a non-empty 1-D sequence, got shape {tokens.shape}")
        self._check_session(cache)
        if tokens.min() < 0 or tokens.max() >= self.config.vocab_size:
            raise ValueError(f"token id out of range 0..{self.config.vocab_size - 1}")
        if cache.length + tokens.size > cache.max_len:
            raise ContextOverflowError(f"context overflow: {cache.length} cached + {tokens.size} new tokens > "
                                       f"{cache.max_len} positions")
        cm = self.compiled
        out = []
        for i in range(0, tokens.size, cm.max_chunk):
            chunk = tokens[i:i + cm.max_chunk]
            last = i + cm.max_chunk >= tokens.size
            rows = self.run_chunk(chunk, cache, all_logits=all_logits, read_logits=bool(all_logits) or last)
            if rows is not None:
                out.append(rows)
        return np.concatenate(out)

    def _check_session(self, cache):
        if cache.owner is not self:
            raise ValueError("this cache belongs to another accelerator")
        if cache.region is None:
            raise ValueError(f"session {cache.session} has been freed")

    def _load_program(self, cache, first, last, logits):
        """Make the session's program slot hold layers ``first .. last - 1`` (with or without LOGITS)."""
        want = (first, last, logits)
        if cache.slot_holds == want:
            return
        cm, r = self.compiled, cache.region
        if want == (0, cm.layers, True):
            raw = session_program(cm, r.base, r.max_context)
        else:
            raw = group_program(cm, r.base, r.max_context, first, last, cm.stash_address(cache.slot), logits=logits)
        cache.slot_holds = None           # unknown if the write fails half way
        self.device.write(cache.program, raw)
        cache.slot_holds = want

    def run_chunk(self, chunk, cache: DeviceCache, all_logits=False, read_logits=True, layers=None):
        """One device run of at most ``max_chunk`` tokens of a session at ``cache.length``, with no host-side
        checks of the token ids or the context: the device checks them (``BAD_TOKEN``, ``CONTEXT_OVERFLOW``
        raise :class:`firmware.device.DeviceError`). Returns the logits rows (or None if not read).

        ``layers = (first, last)`` runs only layers ``first .. last - 1`` (a layer group, docs/driver.md): the
        residual stream comes from the session's stash when ``first > 0`` and goes back to it when ``last``
        is below the layer count; the session's length advances, and logits are read, only after the last
        layer. The same tokens must be given to every group of a chunk. Without logits to read, the program
        leaves out the LM head.
        """
        self._check_session(cache)
        cm, dev = self.compiled, self.device
        chunk = np.asarray(chunk, dtype=np.int64)
        if chunk.ndim != 1 or not 1 <= chunk.size <= cm.max_chunk:
            raise ValueError(f"a run takes 1..{cm.max_chunk} tokens, got shape {chunk.shape}")
        first, last = (0, cm.layers) if layers is None else layers
        if not (isinstance(first, (int, np.integer)) and isinstance(last, (int, np.integer))
                and 0 <= first < last <= cm.layers):
            raise ValueError(f"layers must be (first, last) with 0 <= first < last <= {cm.layers}, got {layers!r}")
        first, last = int(first), int(last)
        ends = last == cm.layers
        read_logits = read_logits and ends
        self._load_program(cache, first, last, read_logits)
        want_all = bool(all_logits)
        dev.write(cm.tokens_addr, (chunk & 0xFFFFFFFF).astype("<u4").tobytes())
        for name, value in (("program", cache.program), ("tokens", cm.tokens_addr), ("n_tokens", chunk.size),
                            ("pos", cache.length), ("logits", cm.logits_addr), ("all_logits", int(want_all))):
            dev.write_csr(name, value)
        entry = {"n_tokens": int(chunk.size), "pos": int(cache.length), "session": cache.session,
                 "kv_base": cache.region.base, "layers": (first, last), "logits": read_logits}
        try:
            dev.run()
        except DeviceError as e:
            # A refused run is logged too (with its error code); the session's length does not advance.
            self.runs += 1
            self.run_log.append(dict(entry, run_cycles=int(dev.read_csr("run_cycles")), work=None,
                                     error=e.code.name if e.code is not None else str(e)))
            raise
        self.runs += 1
        work = getattr(dev, "last_work", None)
        self.run_log.append(dict(entry, run_cycles=int(dev.read_csr("run_cycles")),
                                 work=work.to_dict() if work is not None else None))
        if ends:
            cache.length += chunk.size
        if not read_logits:
            return None
        n = chunk.size if want_all else 1
        raw = dev.read(cm.logits_addr, 4 * n * cm.logits_stride)
        rows = np.frombuffer(raw, "<i4").astype(np.int64).reshape(n, cm.logits_stride)
        return rows[:, :cm.vocab]
