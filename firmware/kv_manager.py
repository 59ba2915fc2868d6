"""The KV-cache manager: per-session KV regions carved out of the KV arena in device DRAM.

The compiled image reserves one **KV arena** (``firmware/compiler.py``, region ``kv_cache``). Every
session owns one **KV region** of it: a whole KV cache in the ``firmware/kv_cache.py`` layout for its
own ``max_context`` (its ``max_len`` positions rounded up to blocks of 32), at its own ``kv_base``. The
size of a region is linear in its blocks::

    region bytes = blocks * block_bytes,   block_bytes = layers * kv_heads * segment_bytes

so the manager counts in blocks. Allocation is first fit over a free list sorted by address; ``free``
coalesces a region with its free neighbours, so freeing everything always gives back one extent the
size of the arena. A session's program carries its region's ``kv_base`` and ``max_context`` in
``SETUP`` (``firmware.compiler.session_program``), and the hardware writes the KV cache only at
``kv_base + layout(layer, head, pos)`` with ``pos < max_context``: a session's runs stay inside its
region.
"""

from __future__ import annotations

from dataclasses import dataclass

from golden.numerics import ATTN_KEY_BLOCK

from .kv_cache import KvCacheLayout

__all__ = ["KvMemoryError", "KvRegion", "KvManager", "blocks_for"]


class KvMemoryError(ValueError):
    """The KV arena cannot hold a requested region (more sessions than KV memory), or a bad free."""


def blocks_for(positions):
    """Blocks of 32 positions that hold ``positions`` positions."""
    return -(-int(positions) // ATTN_KEY_BLOCK)


def _mib(n):
    return f"{n / (1 << 20):.3f} MiB" if n >= 1 << 20 else f"{n} bytes"


@dataclass(frozen=True)
class KvRegion:
    """One session's KV cache: ``blocks`` blocks at ``base`` (``max_context = 32 * blocks`` positions)."""

    base: int
    blocks: int
    block_bytes: int
    tag: object = None

    @property
    def max_context(self):
        return self.blocks * ATTN_KEY_BLOCK

    @property
    def size(self):
        return self.blocks * self.block_bytes

    @property
    def end(self):
        return self.base + self.size


class KvManager:
    """First-fit allocator of :class:`KvRegion` in an arena of ``arena_bytes`` at ``base``.

    Parameters
    ----------
    base : int
        Byte address of the arena (bus-aligned).
    arena_bytes : int
        Arena size; whole blocks of it are used.
    layers, kv_heads, head_dim, bus_bytes : int
        The model's KV geometry (``firmware.kv_cache.KvCacheLayout``): they give ``block_bytes``.
    """

    def __init__(self, base, arena_bytes, *, layers, kv_heads, head_dim, bus_bytes):
        one = KvCacheLayout(layers, kv_heads, head_dim, ATTN_KEY_BLOCK, bus_bytes=bus_bytes, base=base)
        self.base, self.block_bytes = base, one.total_bytes
        self.geometry = dict(layers=layers, kv_heads=kv_heads, head_dim=head_dim, bus_bytes=bus_bytes)
        self.blocks = int(arena_bytes) // self.block_bytes
        if self.blocks < 1:
            raise KvMemoryError(f"KV arena of {arena_bytes} bytes holds no block of {ATTN_KEY_BLOCK} positions "
                                f"({self.block_bytes} bytes)")
        self._free = [(0, self.blocks)]          # (first block, blocks), sorted, never adjacent
        self._used = {}                          # first block -> KvRegion

    # -- queries ---------------------------------------------------------------------------------------
    @property
    def arena_bytes(self):
        return self.blocks * self.block_bytes

    @property
    def free_blocks(self):
        return sum(n for _, n in self._free)

    @property
    def largest_free_blocks(self):
        return max((n for _, n in self._free), default=0)

    @property
    def regions(self):
        """Regions in use, by address."""
        return [self._used[b] for b in sorted(self._used)]

    def layout(self, region: KvRegion):
        """The :class:`KvCacheLayout` of a region (what its session's ``SETUP`` describes)."""
        return KvCacheLayout(max_context=region.max_context, base=region.base, **self.geometry)

    def describe(self):
        return (f"KV arena {_mib(self.arena_bytes)} = {self.blocks} blocks of {ATTN_KEY_BLOCK} positions "
                f"({self.block_bytes} bytes each); {len(self._used)} region(s) in use, {self.free_blocks} blocks "
                f"free in {len(self._free)} extent(s), the largest {self.largest_free_blocks} blocks")

    # -- allocate and free -----------------------------------------------------------------------------
    def allocate(self, positions, tag=None):
        """A region for ``positions`` positions (rounded up to whole blocks), first fit.

        Raises
        ------
        KvMemoryError
            When no free extent is large enough, naming the request, the free space and the arena.
        """
        if not isinstance(positions, int) or isinstance(positions, bool) or positions < 1:
            raise KvMemoryError(f"a KV region needs a positive number of positions, got {positions!r}")
        need = blocks_for(positions)
        for i, (start, n) in enumerate(self._free):
            if n >= need:
                if n == need:
                    del self._free[i]
                else:
                    self._free[i] = (start + need, n - need)
                r = KvRegion(self.base + start * self.block_bytes, need, self.block_bytes, tag)
                self._used[start] = r
                return r
        why = ("fragmented: enough blocks free in total, but not contiguous"
               if self.free_blocks >= need else "not enough KV memory")
        raise KvMemoryError(
            f"KV arena exhausted ({why}): a session of {positions} positions needs {need} blocks "
            f"({need * ATTN_KEY_BLOCK} positions, {_mib(need * self.block_bytes)}); {self.describe()}")

    def free(self, region: KvRegion):
        """Return a region to the arena, merging it with free neighbours."""
        start = (region.base - self.base) // self.block_bytes
        if self._used.get(start) != region:
            raise KvMemoryError(f"free of a KV region at {region.base:#x} that is not allocated (double free?)")
        del self._used[start]
        end = start + region.blocks
        i = 0
        while i < len(self._free) and self._free[i][0] < start:
            i += 1
        self._free.insert(i, (start, region.blocks))
        if i + 1 < len(self._free) and self._free[i + 1][0] == end:                  # merge right
            self._free[i] = (start, region.blocks + self._free[i + 1][1])
            del self._free[i + 1]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == start:            # merge left
            self._free[i - 1] = (self._free[i - 1][0], self._free[i - 1][1] + self._free[i][1])
            del self._free[i]
