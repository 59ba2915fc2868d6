"""The KV cache in DRAM: byte layout, addresses, packing, and the decode read stream (host side).

Storage format (``docs/numerics.md``, "Q, K, V and the KV cache"): per layer, position and kv head, ``d``
int8 values plus one exponent byte, for K and for V. The layout groups them into **segments**, one per
(layer, kv head, block of ``ATTN_KEY_BLOCK`` = 32 absolute positions), so that decode attention reads
every byte it needs exactly once, in long bursts, in the order it uses them::

    segment (layer, kv head h, block b), segment_bytes long, bus-aligned:
      exponent rows   ceil(64 / d) rows of d bytes: ke[0..31] at bytes 0..31, ve[0..31] at 32..63, rest 0
      K rows          32 rows of d bytes: row j = k8 of position 32 b + j
      V rows          32 rows of d bytes
      padding         up to the next multiple of the bus width

    address(layer, h, b) = base + ((layer * kv_heads + h) * blocks + b) * segment_bytes

Why this order: the contract's online softmax works in the same fixed blocks of 32 positions and needs,
per block, every score before any weight (the block maximum) and ``E' = max(E, max ev_j)`` before any V
row is accumulated. With the exponents first, then K, then V, one pass over a segment is one softmax
block. Segments of one kv head are consecutive, so a head's whole cache is one address range. Inside a
segment the rows are token-major (position j at row j), as the contract says.

A new token is two small writes per kv head (its K and V rows) plus two exponent bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from golden.numerics import ATTN_KEY_BLOCK

__all__ = ["KvCacheError", "KvCacheLayout", "EXP_BYTES", "EXP_MAX"]

#: Exponent bytes per segment: 32 for K, then 32 for V.
EXP_BYTES = 2 * ATTN_KEY_BLOCK
#: Largest exponent the attention engines accept (5 bits; quant_pow2 makes at most 25).
EXP_MAX = 31


class KvCacheError(ValueError):
    """A KV cache geometry, position or tensor is outside what the layout supports."""


def _check(name, value, lo, hi):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not lo <= value <= hi:
        raise KvCacheError(f"KvCacheLayout: {name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


@dataclass(frozen=True)
class KvCacheLayout:
    """Byte layout of the KV cache of a model (see the module docstring).

    Parameters
    ----------
    layers, kv_heads, head_dim, max_context : int
        ``max_context`` must be a multiple of 32.
    bus_bytes : int
        DRAM bus width in bytes: every segment starts on a bus word.
    base : int
        Byte address of the cache in DRAM (a multiple of ``bus_bytes``).
    """

    layers: int
    kv_heads: int
    head_dim: int
    max_context: int
    bus_bytes: int = 8
    base: int = 0

    def __post_init__(self):
        _check("layers", self.layers, 1, 1024)
        _check("kv_heads", self.kv_heads, 1, 256)
        _check("head_dim", self.head_dim, 1, 1024)
        _check("max_context", self.max_context, ATTN_KEY_BLOCK, 1 << 20)
        if self.max_context % ATTN_KEY_BLOCK:
            raise KvCacheError(f"KvCacheLayout: max_context = {self.max_context} must be a multiple of "
                               f"{ATTN_KEY_BLOCK}")
        _check("bus_bytes", self.bus_bytes, 1, 1024)
        _check("base", self.base, 0, 1 << 48)
        if self.base % self.bus_bytes:
            raise KvCacheError(f"KvCacheLayout: base = {self.base:#x} is not a multiple of bus_bytes = "
                               f"{self.bus_bytes}")

    # -- geometry ------------------------------------------------------------------------------------
    @property
    def blocks(self):
        return self.max_context // ATTN_KEY_BLOCK

    @property
    def exp_rows(self):
        """Rows of ``head_dim`` bytes holding the 64 exponent bytes of a segment."""
        return -(-EXP_BYTES // self.head_dim)

    @property
    def rows_per_segment(self):
        return self.exp_rows + 2 * ATTN_KEY_BLOCK

    @property
    def segment_bytes(self):
        raw = self.rows_per_segment * self.head_dim
        return -(-raw // self.bus_bytes) * self.bus_bytes

    @property
    def pad_bytes(self):
        return self.segment_bytes - self.rows_per_segment * self.head_dim

    @property
    def layer_bytes(self):
        return self.kv_heads * self.blocks * self.segment_bytes

    @property
    def total_bytes(self):
        return self.layers * self.layer_bytes

    def useful_bytes(self, positions):
        """Bytes of K and V values and exponents that ``positions`` tokens occupy in one layer."""
        return 2 * positions * self.kv_heads * (self.head_dim + 1)

    # -- addresses -----------------------------------------------------------------------------------
    def _check_pos(self, pos):
        if not isinstance(pos, (int, np.integer)) or not 0 <= pos < self.max_context:
            raise KvCacheError(f"position {pos!r} outside [0, {self.max_context})")

    def _check_layer(self, layer):
        if not isinstance(layer, (int, np.integer)) or not 0 <= layer < self.layers:
            raise KvCacheError(f"layer {layer!r} outside [0, {self.layers})")

    def _check_head(self, head):
        if not isinstance(head, (int, np.integer)) or not 0 <= head < self.kv_heads:
            raise KvCacheError(f"kv head {head!r} outside [0, {self.kv_heads})")

    def segment_address(self, layer, head, block):
        self._check_layer(layer)
        self._check_head(head)
        if not 0 <= block < self.blocks:
            raise KvCacheError(f"block {block!r} outside [0, {self.blocks})")
        return self.base + ((layer * self.kv_heads + head) * self.blocks + block) * self.segment_bytes

    def addresses(self, layer, head, pos):
        """Byte addresses of ``(k row, v row, k exponent, v exponent)`` of one position and kv head."""
        self._check_pos(pos)
        seg = self.segment_address(layer, head, pos // ATTN_KEY_BLOCK)
        j, d = pos % ATTN_KEY_BLOCK, self.head_dim
        k_row = seg + (self.exp_rows + j) * d
        v_row = seg + (self.exp_rows + ATTN_KEY_BLOCK + j) * d
        return k_row, v_row, seg + j, seg + ATTN_KEY_BLOCK + j

    # -- packing -------------------------------------------------------------------------------------
    def _check_tensors(self, k8, ke, v8, ve, lead):
        shapes = {"k8": lead + (self.kv_heads, self.head_dim), "v8": lead + (self.kv_heads, self.head_dim),
                  "ke": lead + (self.kv_heads,), "ve": lead + (self.kv_heads,)}
        out = {}
        for name, arr in (("k8", k8), ("ke", ke), ("v8", v8), ("ve", ve)):
            a = np.asarray(arr)
            if a.shape != shapes[name]:
                raise KvCacheError(f"{name} has shape {a.shape}, expected {shapes[name]}")
            if not np.issubdtype(a.dtype, np.integer):
                raise KvCacheError(f"{name} must hold integers, got {a.dtype}")
            a = a.astype(np.int64)
            lo, hi = (-127, 127) if name.endswith("8") else (0, EXP_MAX)
            if a.size and (a.min() < lo or a.max() > hi):
                raise KvCacheError(f"{name} has values outside [{lo}, {hi}]")
            out[name] = a
        return out["k8"], out["ke"], out["v8"], out["ve"]

    def token_writes(self, layer, pos, k8, ke, v8, ve):
        """The DRAM writes of one new token: a list of ``(address, bytes)``.

        ``k8, v8``: ``(kv_heads, head_dim)``; ``ke, ve``: ``(kv_heads,)``.
        """
        k8, ke, v8, ve = self._check_tensors(k8, ke, v8, ve, ())
        writes = []
        for h in range(self.kv_heads):
            ka, va, kea, vea = self.addresses(layer, h, pos)
            writes += [(ka, (k8[h] & 0xFF).astype(np.uint8).tobytes()),
                       (va, (v8[h] & 0xFF).astype(np.uint8).tobytes()),
                       (kea, bytes([int(ke[h])])), (vea, bytes([int(ve[h])]))]
        return writes

    def pack_layer(self, k8, ke, v8, ve):
        """A whole layer's cache image (``layer_bytes`` bytes) for positions ``0 .. T-1``.

        ``k8, v8``: ``(T, kv_heads, head_dim)``; ``ke, ve``: ``(T, kv_heads)``; unused space is zero.
        """
        t = np.asarray(k8).shape[0] if np.ndim(k8) else -1
        if not 0 <= t <= self.max_context:
            raise KvCacheError(f"k8 holds {t} positions, more than max_context = {self.max_context}")
        k8, ke, v8, ve = self._check_tensors(k8, ke, v8, ve, (t,))
        d, x, blk = self.head_dim, self.exp_rows, ATTN_KEY_BLOCK
        img = np.zeros((self.kv_heads, self.blocks, self.segment_bytes), np.uint8)
        for b in range(-(-t // blk)):
            p0, p1 = b * blk, min(t, (b + 1) * blk)
            n = p1 - p0
            for h in range(self.kv_heads):
                seg = img[h, b]
                seg[:n] = ke[p0:p1, h]
                seg[blk:blk + n] = ve[p0:p1, h]
                seg[x * d:(x + n) * d] = (k8[p0:p1, h] & 0xFF).reshape(-1)
                seg[(x + blk) * d:(x + blk + n) * d] = (v8[p0:p1, h] & 0xFF).reshape(-1)
        return img.tobytes()

    def unpack_layer(self, image, positions):
        """Inverse of :meth:`pack_layer`: ``(k8, ke, v8, ve)`` of positions ``0 .. positions-1``."""
        if len(image) != self.layer_bytes:
            raise KvCacheError(f"layer image has {len(image)} bytes, expected {self.layer_bytes}")
        if not 0 <= positions <= self.max_context:
            raise KvCacheError(f"positions = {positions} outside [0, {self.max_context}]")
        d, x, blk = self.head_dim, self.exp_rows, ATTN_KEY_BLOCK
        img = np.frombuffer(image, np.uint8).reshape(self.kv_heads, self.blocks, self.segment_bytes)
        k8 = np.zeros((positions, self.kv_heads, d), np.int64)
        v8 = np.zeros_like(k8)
        ke = np.zeros((positions, self.kv_heads), np.int64)
        ve = np.zeros_like(ke)
        for p in range(positions):
            b, j = divmod(p, blk)
            for h in range(self.kv_heads):
                seg = img[h, b]
                k8[p, h] = seg[(x + j) * d:(x + j + 1) * d].astype(np.int8)
                v8[p, h] = seg[(x + blk + j) * d:(x + blk + j + 1) * d].astype(np.int8)
                ke[p, h], ve[p, h] = seg[j], seg[blk + j]
        return k8, ke, v8, ve

    # -- decode ----------------------------------------------------------------------------------------
    def decode_reads(self, layer, pos):
        """DRAM reads of one decode step at position ``pos`` (keys ``0 .. pos``): ``[(address, bytes)]``,
        one whole segment per (kv head, block), kv head major, in the order the engine uses them."""
        self._check_pos(pos)
        nb = pos // ATTN_KEY_BLOCK + 1
        return [(self.segment_address(layer, h, b), self.segment_bytes)
                for h in range(self.kv_heads) for b in range(nb)]

    def decode_chunks(self, layer_image, pos, chunk_bytes):
        """What the decode engine's ``kv`` stream carries for :meth:`decode_reads` of ``layer_image``:
        each segment cut into ``chunk_bytes`` pieces, a partial tail (padding) dropped. Returns a list of
        int8 arrays of ``chunk_bytes``."""
        if len(layer_image) != self.layer_bytes:
            raise KvCacheError(f"layer image has {len(layer_image)} bytes, expected {self.layer_bytes}")
        buf = np.frombuffer(layer_image, np.uint8)
        out = []
        for addr, n in self.decode_reads(0, pos):
            seg = buf[addr - self.base:addr - self.base + n].astype(np.int8)
            whole = n // chunk_bytes
            out += [seg[i * chunk_bytes:(i + 1) * chunk_bytes] for i in range(whole)]
        return out

    def pad_chunks(self, chunk_bytes):
        """Whole ``chunk_bytes`` pieces of padding at the end of a segment (the engine skips them)."""
        return self.segment_bytes // chunk_bytes - self.rows_per_segment * self.head_dim // chunk_bytes
