"""Bit-exact golden model of the table-lookup ternary matmul (TLMM) engine.

This module *defines* the TLMM weight format and arithmetic; the RTL engine is tested against it.
The lookup path below really builds the tables, decodes the packed 5-bit indices, looks up, sums and
accumulates exactly as the engine does. The plain integer matmul (:func:`reference_matmul`) is only
the oracle the tests compare against; it is never used on the lookup path.

Matmul
------
Activations ``x`` are int8 (-128..127), shape ``(M, K)`` (M tokens). Ternary weights ``W`` are
``(R, K)`` with values in {-1, 0, +1}. The engine computes, exactly::

    y[m, r] = sum_k x[m, k] * W[r, k]          (int64 here; see acc_bits_needed for the RTL width)

Groups
------
K is split into groups of three consecutive columns ``k = 3g, 3g+1, 3g+2`` and zero-padded to a
multiple of 3 (padding weights are 0, so padding activations never matter).

TL2 index (5 bits per 3 weights)
--------------------------------
A weight group ``(w0, w1, w2)`` (``w0`` multiplies activation ``3g``) is encoded as::

    v     = 9*w0 + 3*w1 + w2          in -13..13
    sign  = 1 if v < 0 else 0
    mag   = |v|                       in 0..13
    index = (sign << 4) | mag         5 bits

Magnitudes 14 and 15 are undefined: every decoder here rejects them with a ``ValueError``.
Index 16 ("negative zero", sign 1, mag 0) is never produced by the encoder; it decodes to the
all-zero group because the engine computes ``-table[0] = 0`` (documented, not an error).

Table (14 entries per activation group)
---------------------------------------
For an activation group ``(b0, b1, b2) = (x[3g], x[3g+1], x[3g+2])`` entry ``m`` is
``w0*b0 + w1*b1 + w2*b2`` where ``(w0, w1, w2)`` is the balanced-ternary decomposition of ``m``
(``m = 9*w0 + 3*w1 + w2``); in order::

    m :  0   1     2      3    4      5          6      7          8      9   10     11         12     13
         0   b2  b1-b2   b1  b1+b2  b0-b1-b2   b0-b1  b0-b1+b2   b0-b2  b0  b0+b2  b0+b1-b2   b0+b1  b0+b1+b2

Lookup: ``value = -table[mag] if sign else table[mag]``. Negating a weight group negates ``v`` and the
dot product, so 14 entries plus a sign cover all 27 patterns. Index 0 (all-zero weights) is free.

Table entry range (proof): each entry is linear in ``b`` with coefficients in {-1, 0, 1}, so its
extremes over the box ``[-128, 127]^3`` are attained at the corners. Over all 14 entries the minimum
is ``b0+b1+b2 = -384`` (all -128) and the maximum is ``b0-b1-b2 = 127+128+128 = 383``. So entries are
in -384..383 and fit in ``TABLE_ENTRY_BITS = 10`` signed bits (-512..511); the negated lookup value
lies in -384..384, also 10 bits. (``tests/test_golden_tlmm.py`` checks all 8 corners.)

Online table build (adder structure assumed for the RTL)
---------------------------------------------------------
Stage 1, two adders on (b1, b2): ``p = b1 + b2``, ``q = b1 - b2``. This gives the 5-entry "low"
table ``L = [0, b2, q, b1, p]`` (entries 0..4). Stage 2, eight adders with b0::

    entry 9 + j = b0 + L[j]      j = 0..4   (entries 9..13; j = 0 is b0 itself, no adder)
    entry 9 - j = b0 - L[j]      j = 1..4   (entries 8..5)

Ten adders per table; stage-1 results are 9-bit, stage-2 results 10-bit. Any other adder structure
gives identical numbers; this one is what :func:`build_tables` computes.

Hardware geometry and the packed weight stream
----------------------------------------------
From the hardware config: ``T = cfg.tlmm.tables`` (activation groups looked up per cycle) and
``N = cfg.tlmm.lanes`` (output rows per cycle). The matrix is cut into row tiles of N rows (rows
padded with zero weights to a multiple of N) and k-steps of T groups (groups padded with index 0 to a
multiple of T). One **weight word** holds the 5-bit indices of one (row tile, k-step): the index of
lane ``n`` (row ``row_tile*N + n``), table ``t`` (group ``k_step*T + t``) sits at bit offset
``5*(n*T + t)``, index bit 0 at the lowest offset. A word is ``5*T*N`` bits (a multiple of 8, checked
by the config validator), stored little-endian as ``word_bytes = 5*T*N/8`` bytes: word bit ``i`` is
bit ``i % 8`` of byte ``i // 8``. Word order in the stream is row-tile-major::

    for row_tile in range(row_tiles):
        for k_step in range(k_steps):
            word                          # ternary
            # bit-serial: for plane in range(bits): word

Engine step (one word, all M tokens)
------------------------------------
For each token the engine holds T tables (one per group of the current k-step). Each lane ``n``
looks up its T indices, negates by the sign bits, sums the T values in an adder tree
(``10 + ceil(log2 T)`` bits) and adds the tree output to its accumulator. The word is applied to all M
tokens (prefill reuse); after the last k-step of a row tile the N accumulators are the outputs of
rows ``row_tile*N .. row_tile*N + N-1``.

Accumulator width
-----------------
``|y| <= 128 * K`` for int8 x ternary (the largest magnitude is ``(-128)*(-1)*K = 128*K``), so a
signed accumulator needs ``bit_length(128*K) + 1`` bits (:func:`acc_bits_needed`). Partial sums are
sums over a subset of the columns, so the same bound holds at every step. Recommendation: 32-bit
accumulators; they hold any K up to ``(2**31 - 1) // 128 = 16_777_215`` (:func:`max_k_for_acc`).

Bit-serial mode (int-k weights, k = 2..8, e.g. the LM head) on the same tables
------------------------------------------------------------------------------
A signed ``bits``-bit weight is split into two's-complement bit-planes
``w = -2**(bits-1) * bit[bits-1] + sum_{p < bits-1} 2**p * bit[p]``. Each plane is a {0, 1} matrix
encoded with the same TL2 index (sign 0, ``mag = 9*c0 + 3*c1 + c2`` for the bits of three consecutive
columns, so only magnitudes {0, 1, 3, 4, 9, 10, 12, 13} occur; any other index in a bit-plane word is
rejected as corrupt) and looked up in the same 14-entry tables. Each (row tile, k-step) holds
``bits`` words, plane 0 (LSB) first. With ``S_p`` the adder-tree output of plane ``p`` the engine
does, in this order for each k-step::

    for p in range(bits - 1):  acc += S_p << p
    acc -= S_{bits-1} << (bits - 1)          # the MSB plane has negative weight

The shifted tree output needs ``10 + ceil(log2 T) + p`` bits; the accumulator needs
``bit_length(K * 128 * 2**(bits-1)) + 1`` bits (32 bits hold K <= 131_071 for bits = 8).

Work
----
``packed.cycles`` is the number of weight words, i.e. the engine's steady-state cycles for one token
batch: ``row_tiles * k_steps`` (ternary) or ``row_tiles * k_steps * bits`` (bit-serial).

Worked example (T = 4, N = 4, the ``tiny`` config): see ``docs/tlmm-format.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "GROUP_SIZE",
    "TABLE_ENTRIES",
    "INDEX_BITS",
    "SIGN_SHIFT",
    "MAG_MASK",
    "MAX_MAG",
    "TABLE_ENTRY_BITS",
    "TABLE_ENTRY_MIN",
    "TABLE_ENTRY_MAX",
    "ACC_BITS_RECOMMENDED",
    "MIN_BITSERIAL_BITS",
    "MAX_BITSERIAL_BITS",
    "MAG_TO_TRITS",
    "BINARY_MAGS",
    "PackedTernary",
    "PackedBitSerial",
    "encode_groups",
    "decode_indices",
    "group_activations",
    "build_tables",
    "lookup",
    "pack_ternary",
    "unpack_ternary",
    "tlmm_matmul",
    "pack_bitserial",
    "unpack_bitserial",
    "bitserial_matmul",
    "tree_bits",
    "acc_bits_needed",
    "max_k_for_acc",
    "reference_matmul",
]

GROUP_SIZE = 3
"""Activations (and weights) per table: one TL2 group."""
TABLE_ENTRIES = 14
"""Entries per table: magnitudes 0..13 (the sign bit covers the negative half)."""
INDEX_BITS = 5
"""Bits per TL2 index: 1 sign bit + 4 magnitude bits."""
SIGN_SHIFT = 4
"""Position of the sign bit inside an index."""
MAG_MASK = 0xF
"""Mask of the magnitude field inside an index."""
MAX_MAG = TABLE_ENTRIES - 1
"""Largest valid magnitude (13 = 9 + 3 + 1); 14 and 15 are invalid."""
TABLE_ENTRY_BITS = 10
"""Signed width of a table entry and of a (negated) lookup value: -384..384 fits in -512..511."""
TABLE_ENTRY_MIN = -384
"""Smallest table entry: b0+b1+b2 with all activations -128."""
TABLE_ENTRY_MAX = 383
"""Largest table entry: b0-b1-b2 with b0 = 127, b1 = b2 = -128."""
ACC_BITS_RECOMMENDED = 32
"""Recommended accumulator width (see :func:`max_k_for_acc`)."""
MIN_BITSERIAL_BITS = 2
MAX_BITSERIAL_BITS = 8

# Balanced-ternary digits (w0, w1, w2) of each magnitude m = 9*w0 + 3*w1 + w2, m = 0..13.
# Row m says which activations entry m adds (+1) or subtracts (-1).
MAG_TO_TRITS = np.array(
    [[(m + 13) // 9 - 1, ((m + 13) // 3) % 3 - 1, (m + 13) % 3 - 1] for m in range(TABLE_ENTRIES)],
    dtype=np.int8,
)
MAG_TO_TRITS.setflags(write=False)

# Magnitudes whose balanced-ternary digits are all in {0, 1}: the only ones a bit-plane can use.
BINARY_MAGS = tuple(int(m) for m in range(TABLE_ENTRIES) if MAG_TO_TRITS[m].min() >= 0)

# Lookup table: magnitude -> is it legal in a bit-plane word (indexed by the full 5-bit index).
_BINARY_INDEX = np.zeros(1 << INDEX_BITS, dtype=bool)
_BINARY_INDEX[list(BINARY_MAGS)] = True
# The same as a bit mask over the indices 0..15 (bit m set: index m is legal in a bit-plane word).
_BINARY_MASK = sum(1 << m for m in BINARY_MAGS)

_INT_KINDS = "iu"


# --------------------------------------------------------------------------------------------------
# Helpers: validation
# --------------------------------------------------------------------------------------------------


def _check_geometry(tables, lanes):
    for name, v in (("tables", tables), ("lanes", lanes)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if (INDEX_BITS * tables * lanes) % 8:
        raise ValueError(
            f"a weight word of 5 x tables x lanes = {INDEX_BITS * tables * lanes} bits is not whole bytes "
            f"(tables={tables}, lanes={lanes}; tables x lanes must be a multiple of 8)"
        )
    return int(tables), int(lanes)


def _check_int_matrix(w, what):
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (rows, cols) array, got shape {w.shape}")
    if w.dtype.kind not in _INT_KINDS:
        raise ValueError(f"{what} must have an integer dtype, got {w.dtype}")
    if w.shape[0] < 1 or w.shape[1] < 1:
        raise ValueError(f"{what} must have at least one row and one column, got shape {w.shape}")
    return w


def _check_activations(x, cols):
    """Validate int8 activations against a packed matrix of ``cols`` columns; return (x2d, was_1d)."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"activations must be a numpy int8 array, got {type(x).__name__}")
    if x.dtype != np.int8:
        raise ValueError(f"activations must be int8 (-128..127), got dtype {x.dtype}")
    was_1d = x.ndim == 1
    if was_1d:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"activations must have shape (M, K) or (K,), got {x.shape}")
    if x.shape[0] < 1:
        raise ValueError(f"activations need at least one token, got shape {x.shape}")
    if x.shape[1] != cols:
        raise ValueError(
            f"activation length K = {x.shape[1]} does not match the packed matrix's {cols} columns"
        )
    return x, was_1d


def _first_bad(mask):
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _bad_index_error(indices, mask, where, reason):
    pos = _first_bad(mask)
    idx = int(indices[pos])
    count = int(mask.sum())
    return ValueError(
        f"corrupt TLMM weight stream: {count} invalid index(es); first is {idx} "
        f"(sign {idx >> SIGN_SHIFT & 1}, magnitude {idx & MAG_MASK}) at {where(pos)}: {reason}"
    )


# --------------------------------------------------------------------------------------------------
# Encoding, tables, lookup
# --------------------------------------------------------------------------------------------------


def encode_groups(w_groups):
    """Encode ternary weight groups as 5-bit TL2 indices.

    Parameters
    ----------
    w_groups : array_like of int, shape (..., 3)
        ``(w0, w1, w2)`` per group, each in {-1, 0, 1}.

    Returns
    -------
    numpy.ndarray
        uint8, shape ``(...)``: ``(sign << 4) | |9*w0 + 3*w1 + w2|``.

    Raises
    ------
    ValueError
        If the last axis is not 3 or a weight is outside {-1, 0, 1}.
    """
    w = np.asarray(w_groups)
    if w.ndim < 1 or w.shape[-1] != GROUP_SIZE:
        raise ValueError(f"weight groups must have a last axis of 3, got shape {w.shape}")
    if w.dtype.kind not in _INT_KINDS:
        raise ValueError(f"weight groups must have an integer dtype, got {w.dtype}")
    bad = (w < -1) | (w > 1)
    if bad.any():
        pos = _first_bad(bad)
        raise ValueError(f"ternary weight {int(w[pos])} at {pos} is outside {{-1, 0, 1}}")
    w = w.astype(np.int8)
    v = 9 * w[..., 0] + 3 * w[..., 1] + w[..., 2]  # int8 is wide enough: |v| <= 13
    return ((v < 0).astype(np.uint8) << SIGN_SHIFT) | np.abs(v).astype(np.uint8)


def decode_indices(indices):
    """Decode 5-bit TL2 indices back to ternary weight groups.

    Parameters
    ----------
    indices : array_like of int, shape (...)
        Values 0..31; magnitudes (low 4 bits) 14 and 15 are invalid.

    Returns
    -------
    numpy.ndarray
        int8, shape ``(..., 3)``, the ``(w0, w1, w2)`` of each index. Index 16 ("negative zero")
        decodes to ``(0, 0, 0)``.

    Raises
    ------
    ValueError
        For an index outside 0..31 or with magnitude 14 or 15, naming its position.
    """
    idx = np.asarray(indices)
    if idx.dtype.kind not in _INT_KINDS:
        raise ValueError(f"indices must have an integer dtype, got {idx.dtype}")
    out_of_range = (idx < 0) | (idx >= 1 << INDEX_BITS)
    if out_of_range.any():
        pos = _first_bad(out_of_range)
        raise ValueError(f"TL2 index {int(idx[pos])} at {pos} is not a 5-bit value (0..31)")
    idx = idx.astype(np.uint8)
    mag = idx & MAG_MASK
    bad = mag > MAX_MAG
    if bad.any():
        raise _bad_index_error(idx, bad, lambda p: f"position {p}", "magnitudes 14 and 15 are undefined")
    trits = MAG_TO_TRITS[mag]
    neg = (idx >> SIGN_SHIFT).astype(bool)
    return np.where(neg[..., None], -trits, trits).astype(np.int8)


def group_activations(x, groups=None):
    """Cut activations into groups of three, zero-padding K.

    Parameters
    ----------
    x : numpy.ndarray
        int8, shape ``(..., K)``.
    groups : int, optional
        Number of groups to produce (at least ``ceil(K / 3)``); the extra groups are zero. Used to pad
        to a whole number of k-steps.

    Returns
    -------
    numpy.ndarray
        int8, shape ``(..., G, 3)``.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.int8:
        raise ValueError(f"activations must be a numpy int8 array, got {getattr(x, 'dtype', type(x).__name__)}")
    k = x.shape[-1]
    need = -(-k // GROUP_SIZE)
    groups = need if groups is None else int(groups)
    if groups < need:
        raise ValueError(f"{groups} groups cannot hold K = {k} activations (need {need})")
    pad = groups * GROUP_SIZE - k
    if pad:
        x = np.concatenate([x, np.zeros(x.shape[:-1] + (pad,), np.int8)], axis=-1)
    return x.reshape(x.shape[:-1] + (groups, GROUP_SIZE))


def build_tables(x_groups):
    """Build the 14-entry lookup table of every activation group, as the engine does online.

    Stage 1: ``p = b1 + b2``, ``q = b1 - b2`` give the low table ``L = [0, b2, q, b1, p]``.
    Stage 2: ``entry[9 + j] = b0 + L[j]`` (j = 0..4) and ``entry[9 - j] = b0 - L[j]`` (j = 1..4).

    Parameters
    ----------
    x_groups : numpy.ndarray
        int8, shape ``(..., G, 3)``: ``(b0, b1, b2)`` per group.

    Returns
    -------
    numpy.ndarray
        int16, shape ``(..., G, 14)``; entry ``m`` is ``MAG_TO_TRITS[m] . (b0, b1, b2)``, always in
        ``TABLE_ENTRY_MIN..TABLE_ENTRY_MAX`` (10-bit signed).
    """
    if not isinstance(x_groups, np.ndarray) or x_groups.dtype != np.int8:
        raise ValueError(
            f"activation groups must be a numpy int8 array, got {getattr(x_groups, 'dtype', type(x_groups).__name__)}"
        )
    if x_groups.ndim < 2 or x_groups.shape[-1] != GROUP_SIZE:
        raise ValueError(f"activation groups must have shape (..., G, 3), got {x_groups.shape}")
    b = x_groups.astype(np.int16)  # widen first: sums of int8 overflow int8
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    zero = np.zeros_like(b0)
    low = np.stack([zero, b2, b1 - b2, b1, b1 + b2], axis=-1)  # stage 1: entries 0..4
    b0e = b0[..., None]
    minus = b0e - low[..., :0:-1]  # entries 5..8 = b0 - L[4], b0 - L[3], b0 - L[2], b0 - L[1]
    plus = b0e + low  # entries 9..13 = b0 + L[0..4]
    return np.concatenate([low, minus, plus], axis=-1)


def lookup(tables, indices):
    """Look indices up in tables: ``-table[mag]`` if the sign bit is set, else ``table[mag]``.

    Parameters
    ----------
    tables : numpy.ndarray
        Shape ``(..., 14)``, from :func:`build_tables`.
    indices : array_like of int
        5-bit indices, shape broadcastable with ``tables.shape[:-1]``.

    Returns
    -------
    numpy.ndarray
        int16 looked-up values (-384..384).

    Raises
    ------
    ValueError
        For indices with magnitude 14 or 15 or outside 0..31.
    """
    idx = np.asarray(indices)
    decode_indices(idx)  # validation only; the lookup below does not use the decoded trits
    idx = idx.astype(np.uint8)
    mag = (idx & MAG_MASK).astype(np.intp)
    tables, mag = np.broadcast_arrays(tables, mag[..., None])
    val = np.take_along_axis(tables, mag[..., :1], axis=-1)[..., 0].astype(np.int16)
    sign = (idx >> SIGN_SHIFT).astype(bool)
    return np.where(sign, -val, val)


# --------------------------------------------------------------------------------------------------
# Packed words
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PackedTernary:
    """A ternary matrix packed as the TLMM engine reads it.

    Attributes
    ----------
    data : numpy.ndarray
        uint8, shape ``(n_words, word_bytes)``; row ``i`` is word ``i`` of the stream, little-endian.
        ``data.tobytes()`` (or :meth:`to_bytes`) is the flat DRAM image.
    rows, cols : int
        R and K of the original (unpadded) matrix.
    tables, lanes : int
        T and N of the hardware config.
    row_tiles : int
        ``ceil(rows / lanes)``.
    k_steps : int
        ``ceil(ceil(cols / 3) / tables)``.
    """

    data: np.ndarray
    rows: int
    cols: int
    tables: int
    lanes: int
    row_tiles: int
    k_steps: int

    # Words per (row tile, k-step); the bit-serial subclass overrides this with ``bits``.
    @property
    def planes(self):
        return 1

    def __post_init__(self):
        _check_geometry(self.tables, self.lanes)
        if self.rows < 1 or self.cols < 1:
            raise ValueError(f"packed matrix must be at least 1 x 1, got {self.rows} x {self.cols}")
        if self.row_tiles != -(-self.rows // self.lanes):
            raise ValueError(f"row_tiles = {self.row_tiles} but {self.rows} rows / {self.lanes} lanes "
                             f"need {-(-self.rows // self.lanes)}")
        if self.k_steps != -(-self.groups // self.tables):
            raise ValueError(f"k_steps = {self.k_steps} but {self.groups} groups / {self.tables} tables "
                             f"need {-(-self.groups // self.tables)}")
        if not isinstance(self.data, np.ndarray) or self.data.dtype != np.uint8:
            raise ValueError(f"packed data must be a numpy uint8 array, got {getattr(self.data, 'dtype', type(self.data))}")
        if self.data.shape != (self.n_words, self.word_bytes):
            raise ValueError(f"packed data has shape {self.data.shape}, expected "
                             f"(n_words, word_bytes) = ({self.n_words}, {self.word_bytes})")

    @classmethod
    def from_bytes(cls, buf, rows, cols, tables, lanes, **extra):
        """Wrap a flat little-endian word stream (e.g. read back from DRAM)."""
        tables, lanes = _check_geometry(tables, lanes)
        row_tiles = -(-rows // lanes)
        k_steps = -(-(-(-cols // GROUP_SIZE)) // tables)
        word_bytes = INDEX_BITS * tables * lanes // 8
        n_words = row_tiles * k_steps * extra.get("bits", 1)
        raw = np.frombuffer(bytes(buf), dtype=np.uint8)
        if raw.size != n_words * word_bytes:
            raise ValueError(f"stream has {raw.size} bytes, expected {n_words} words x {word_bytes} bytes "
                             f"= {n_words * word_bytes}")
        return cls(raw.reshape(n_words, word_bytes).copy(), rows, cols, tables, lanes, row_tiles, k_steps, **extra)

    @property
    def groups(self):
        """Groups of three columns before k-step padding: ``ceil(cols / 3)``."""
        return -(-self.cols // GROUP_SIZE)

    @property
    def word_bits(self):
        return INDEX_BITS * self.tables * self.lanes

    @property
    def word_bytes(self):
        return self.word_bits // 8

    @property
    def n_words(self):
        return self.row_tiles * self.k_steps * self.planes

    @property
    def nbytes(self):
        """Bytes of the packed stream: ``n_words * word_bytes``."""
        return self.n_words * self.word_bytes

    @property
    def cycles(self):
        """Steady-state engine cycles for one token batch: one per weight word."""
        return self.n_words

    @property
    def lookups(self):
        """Table lookups per token: T x N per word (zero indices included)."""
        return self.n_words * self.tables * self.lanes

    def to_bytes(self):
        """The flat stream in word order, as stored in DRAM."""
        return self.data.tobytes()

    def word_index(self, row_tile, k_step, plane=0):
        """Position of the word for ``(row_tile, k_step[, plane])`` in the stream.

        ``(row_tile * k_steps + k_step) * planes + plane``; the byte offset is this times ``word_bytes``.
        """
        for name, v, hi in (("row_tile", row_tile, self.row_tiles), ("k_step", k_step, self.k_steps),
                            ("plane", plane, self.planes)):
            if not 0 <= v < hi:
                raise IndexError(f"{name} = {v} out of range 0..{hi - 1}")
        return (row_tile * self.k_steps + k_step) * self.planes + plane

    def word(self, row_tile, k_step, plane=0):
        """The ``word_bytes`` bytes (uint8 view) of one word."""
        return self.data[self.word_index(row_tile, k_step, plane)]

    def word_fields(self, row_tile, k_step, plane=0):
        """The raw 5-bit indices of one word, uint8 shape ``(lanes, tables)`` (not validated)."""
        return _words_to_fields(self.word(row_tile, k_step, plane)[None], self.tables * self.lanes
                                )[0].reshape(self.lanes, self.tables)

    def fields(self):
        """All raw indices, uint8 shape ``(row_tiles, k_steps, planes, lanes, tables)`` (not validated)."""
        f = _words_to_fields(self.data, self.tables * self.lanes)
        return f.reshape(self.row_tiles, self.k_steps, self.planes, self.lanes, self.tables)

    def _where(self, pos):
        rt, ks, pl, n, t = pos
        plane = f", plane {pl}" if self.planes > 1 else ""
        return (f"word {self.word_index(rt, ks, pl)} (row tile {rt}, k-step {ks}{plane}), lane {n} "
                f"(row {rt * self.lanes + n}), table {t} (group {ks * self.tables + t})")


@dataclass(frozen=True, eq=False)
class PackedBitSerial(PackedTernary):
    """A signed ``bits``-bit integer matrix packed as bit-planes for the TLMM engine.

    Same fields as :class:`PackedTernary` plus ``bits``; ``data`` has ``row_tiles * k_steps * bits``
    words, plane 0 (LSB) first within each (row tile, k-step).
    """

    bits: int

    @property
    def planes(self):
        return self.bits

    def __post_init__(self):
        _check_bits(self.bits)
        super().__post_init__()


def _fields_to_words(fields):
    """(n_words, T*N) 5-bit indices -> (n_words, word_bytes) uint8, slot j at bit 5*j, little-endian.

    ``T*N`` is a multiple of 8 (:func:`_check_geometry`), so every 8 slots fill exactly 5 bytes: the
    bytes are assembled from the slots with uint8 shifts (bit-unpacking the whole stream would take
    five bytes per slot, gigabytes for a full-size LM head).
    """
    n_words, slots = fields.shape
    f = (fields & 0x1F).astype(np.uint8).reshape(n_words, slots // 8, 8)
    f0, f1, f2, f3, f4, f5, f6, f7 = (f[..., i] for i in range(8))
    out = np.empty((n_words, slots // 8, INDEX_BITS), np.uint8)
    # uint8 left shifts drop the bits that move into the next byte, as the little-endian layout needs.
    out[..., 0] = f0 | (f1 << 5)
    out[..., 1] = (f1 >> 3) | (f2 << 2) | (f3 << 7)
    out[..., 2] = (f3 >> 1) | (f4 << 4)
    out[..., 3] = (f4 >> 4) | (f5 << 1) | (f6 << 6)
    out[..., 4] = (f6 >> 2) | (f7 << 3)
    return out.reshape(n_words, slots // 8 * INDEX_BITS)


def _words_to_fields(words, slots):
    """Inverse of :func:`_fields_to_words`: (n_words, word_bytes) uint8 -> (n_words, slots) uint8."""
    b = np.asarray(words, np.uint8).reshape(words.shape[0], slots // 8, INDEX_BITS)
    b0, b1, b2, b3, b4 = (b[..., i] for i in range(INDEX_BITS))
    out = np.empty((words.shape[0], slots // 8, 8), np.uint8)
    out[..., 0] = b0 & 0x1F
    out[..., 1] = (b0 >> 5) | ((b1 & 0x03) << 3)
    out[..., 2] = (b1 >> 2) & 0x1F
    out[..., 3] = (b1 >> 7) | ((b2 & 0x0F) << 1)
    out[..., 4] = (b2 >> 4) | ((b3 & 0x01) << 4)
    out[..., 5] = (b3 >> 1) & 0x1F
    out[..., 6] = (b3 >> 6) | ((b4 & 0x07) << 2)
    out[..., 7] = b4 >> 3
    return out.reshape(words.shape[0], slots)


def _tile(idx, tables, lanes):
    """(R, G) indices -> (row_tiles, k_steps, lanes, tables), padding with index 0."""
    r, g = idx.shape
    row_tiles, k_steps = -(-r // lanes), -(-g // tables)
    full = np.zeros((row_tiles * lanes, k_steps * tables), np.uint8)
    full[:r, :g] = idx
    return full.reshape(row_tiles, lanes, k_steps, tables).transpose(0, 2, 1, 3), row_tiles, k_steps


def _weight_groups(w):
    """(R, K) -> (R, G, 3), zero-padding K to a multiple of 3."""
    r, k = w.shape
    g = -(-k // GROUP_SIZE)
    full = np.zeros((r, g * GROUP_SIZE), np.int8)
    full[:, :k] = w
    return full.reshape(r, g, GROUP_SIZE)


def pack_ternary(w, tables, lanes):
    """Pack a ternary matrix into the engine's weight-word stream.

    Parameters
    ----------
    w : array_like of int, shape (R, K)
        Values in {-1, 0, 1} (any integer dtype, e.g. the int8 codes of a ``TernaryLinear``).
    tables, lanes : int
        T and N, e.g. ``cfg.tlmm.tables``, ``cfg.tlmm.lanes``.

    Returns
    -------
    PackedTernary

    Raises
    ------
    ValueError
        For a weight outside {-1, 0, 1} (naming row and column), a non-integer or non-2-D array, or a
        geometry whose word is not whole bytes.
    """
    tables, lanes = _check_geometry(tables, lanes)
    w = _check_int_matrix(w, "ternary weights")
    bad = (w < -1) | (w > 1)
    if bad.any():
        r, c = _first_bad(bad)
        raise ValueError(f"ternary weight W[{r}, {c}] = {int(w[r, c])} is outside {{-1, 0, 1}} "
                         f"({int(bad.sum())} such value(s))")
    idx = encode_groups(_weight_groups(w.astype(np.int8)))
    tiled, row_tiles, k_steps = _tile(idx, tables, lanes)
    words = _fields_to_words(tiled.reshape(row_tiles * k_steps, lanes * tables))
    return PackedTernary(words, w.shape[0], w.shape[1], tables, lanes, row_tiles, k_steps)


def _checked_fields(packed, binary):
    """All indices of a packed stream, validated: (row_tiles, k_steps, planes, lanes, tables)."""
    f = packed.fields()
    # One cheap pass over the (possibly hundreds of millions of) indices first; the checks below find
    # and name the first bad index only when there is one. Magnitude > 13 is bits 1..3 all set.
    if binary:
        if f.max(initial=0) < 1 << SIGN_SHIFT and ((np.uint16(_BINARY_MASK) >> f) & 1).all():
            return f
    elif not ((f & 0b1110) == 0b1110).any():
        return f
    bad = (f & MAG_MASK) > MAX_MAG
    if bad.any():
        raise _bad_index_error(f, bad, packed._where, "magnitudes 14 and 15 are undefined")
    if binary:
        bad = ~_BINARY_INDEX[f]
        if bad.any():
            raise _bad_index_error(
                f, bad, packed._where,
                f"a bit-plane index must have sign 0 and magnitude in {list(BINARY_MAGS)} (digits 0/1)")
    return f


def unpack_ternary(packed):
    """Exact inverse of :func:`pack_ternary`.

    Returns
    -------
    numpy.ndarray
        int8, shape ``(rows, cols)``, values in {-1, 0, 1}.

    Raises
    ------
    ValueError
        For an index with magnitude 14 or 15, naming the word, lane and table.
    """
    if not isinstance(packed, PackedTernary) or isinstance(packed, PackedBitSerial):
        raise ValueError(f"expected a PackedTernary, got {type(packed).__name__}")
    f = _checked_fields(packed, binary=False)[:, :, 0]  # (rt, ks, N, T)
    trits = decode_indices(f)  # (rt, ks, N, T, 3)
    w = trits.transpose(0, 2, 1, 3, 4).reshape(packed.row_tiles * packed.lanes,
                                                packed.k_steps * packed.tables * GROUP_SIZE)
    return np.ascontiguousarray(w[: packed.rows, : packed.cols])


# --------------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------------

# Elements gathered per vectorised chunk of k-steps: bounds memory (~ 6 bytes each) for large shapes.
_CHUNK_ELEMS = 1 << 22


def _engine_tree_sums(x, packed, f):
    """Run the lookup path, yielding adder-tree outputs chunk by chunk.

    Yields ``(s0, sums)`` with ``sums`` int32 of shape ``(M, row_tiles, steps, planes, lanes)``: for each
    token, word and lane, the sum over the T tables of the signed lookups (the adder-tree output).

    The lookups use the whole 5-bit index on a 32-entry signed copy of each table: entry ``mag`` is
    ``table[mag]`` and entry ``16 + mag`` is ``-table[mag]`` (the sign bit's negation, done once per
    table instead of once per lookup; ``f`` is validated, so magnitudes 14 and 15 never occur). The
    tables are stored token-minor, so one lookup fetches the value of all M tokens.
    """
    m = x.shape[0]
    t, n, planes = packed.tables, packed.lanes, packed.planes
    n_tabs = packed.k_steps * t
    groups = group_activations(x, n_tabs)  # (M, Gp, 3)
    tabs = build_tables(groups)  # (M, Gp, 14)
    signed = np.zeros((n_tabs, 1 << INDEX_BITS, m), np.int16)  # (table, index, token)
    signed[:, :TABLE_ENTRIES] = tabs.transpose(1, 2, 0)
    signed[:, 1 << SIGN_SHIFT:(1 << SIGN_SHIFT) + TABLE_ENTRIES] = -signed[:, :TABLE_ENTRIES]  # |value| <= 384
    signed = signed.reshape(n_tabs << INDEX_BITS, m)
    # Table (k-step s, table t) starts at row (s*T + t) * 32.
    base = (np.arange(n_tabs, dtype=np.int32) << INDEX_BITS).reshape(packed.k_steps, 1, 1, t)
    per_step = m * packed.row_tiles * planes * n * t
    step_chunk = max(1, _CHUNK_ELEMS // per_step)
    for s0 in range(0, packed.k_steps, step_chunk):
        s1 = min(packed.k_steps, s0 + step_chunk)
        # Gather: vals[rt, s, p, n, t, m] = signed[(s*T + t)*32 + f[rt, s, p, n, t], m]
        vals = signed[f[:, s0:s1] + base[s0:s1]]  # (rt, steps, planes, N, T, M) int16
        sums = vals.sum(axis=-2, dtype=np.int32)  # adder tree over the T tables
        yield s0, np.moveaxis(sums, -1, 0)


def tlmm_matmul(x, packed):
    """The TLMM engine on ternary weights: ``y = x @ W.T`` through tables and packed indices.

    Parameters
    ----------
    x : numpy.ndarray
        int8, shape ``(M, K)`` (M tokens) or ``(K,)``.
    packed : PackedTernary
        From :func:`pack_ternary`; ``packed.cols`` must equal K.

    Returns
    -------
    numpy.ndarray
        int64, shape ``(M, R)`` (or ``(R,)`` for 1-D ``x``). Exact.

    Raises
    ------
    ValueError
        For non-int8 activations, a K mismatch, or a corrupt stream (magnitude 14/15).
    """
    if not isinstance(packed, PackedTernary) or isinstance(packed, PackedBitSerial):
        raise ValueError(f"tlmm_matmul needs a PackedTernary, got {type(packed).__name__} "
                         "(use bitserial_matmul for PackedBitSerial)")
    x, was_1d = _check_activations(x, packed.cols)
    f = _checked_fields(packed, binary=False)
    acc = np.zeros((x.shape[0], packed.row_tiles, packed.lanes), np.int64)  # one accumulator per lane
    for _, sums in _engine_tree_sums(x, packed, f):
        acc += sums[:, :, :, 0].sum(axis=2, dtype=np.int64)  # accumulate over the k-steps of the chunk
    y = acc.reshape(x.shape[0], -1)[:, : packed.rows]
    return y[0] if was_1d else y


def _check_bits(bits):
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or not (
            MIN_BITSERIAL_BITS <= bits <= MAX_BITSERIAL_BITS):
        raise ValueError(f"bit-serial weight width bits = {bits!r} is out of range "
                         f"{MIN_BITSERIAL_BITS}..{MAX_BITSERIAL_BITS}")
    return int(bits)


def pack_bitserial(w_int, bits, tables, lanes):
    """Pack a signed ``bits``-bit integer matrix as two's-complement bit-planes.

    Parameters
    ----------
    w_int : array_like of int, shape (R, K)
        Values in ``-2**(bits-1) .. 2**(bits-1) - 1``.
    bits : int
        2..8.
    tables, lanes : int
        T and N.

    Returns
    -------
    PackedBitSerial

    Raises
    ------
    ValueError
        For ``bits`` outside 2..8 or a weight that does not fit (naming it, its position and the range).
    """
    bits = _check_bits(bits)
    tables, lanes = _check_geometry(tables, lanes)
    w = _check_int_matrix(w_int, "bit-serial weights")
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    bad = (w < lo) | (w > hi)
    if bad.any():
        r, c = _first_bad(bad)
        raise ValueError(f"weight W[{r}, {c}] = {int(w[r, c])} does not fit in {bits} signed bits "
                         f"(range {lo}..{hi}; {int(bad.sum())} such value(s))")
    u = (w.astype(np.int16) & ((1 << bits) - 1)).astype(np.uint8)  # two's complement, bits wide
    planes = []
    for p in range(bits):
        plane = ((u >> p) & 1).astype(np.int8)  # {0, 1}: encodes with sign 0, binary digits
        idx = encode_groups(_weight_groups(plane))
        tiled, row_tiles, k_steps = _tile(idx, tables, lanes)
        planes.append(tiled)
    fields = np.stack(planes, axis=2)  # (rt, ks, plane, N, T): plane order inside each (rt, ks)
    words = _fields_to_words(fields.reshape(row_tiles * k_steps * bits, lanes * tables))
    return PackedBitSerial(words, w.shape[0], w.shape[1], tables, lanes, row_tiles, k_steps, bits)


def unpack_bitserial(packed):
    """Exact inverse of :func:`pack_bitserial`.

    Returns
    -------
    numpy.ndarray
        int8, shape ``(rows, cols)`` (``bits <= 8`` always fits int8).

    Raises
    ------
    ValueError
        For an index that is not a valid bit-plane index (magnitude 14/15, sign set, or a -1 digit).
    """
    if not isinstance(packed, PackedBitSerial):
        raise ValueError(f"expected a PackedBitSerial, got {type(packed).__name__}")
    f = _checked_fields(packed, binary=True)
    digits = decode_indices(f).astype(np.int16)  # (rt, ks, plane, N, T, 3) in {0, 1}
    weight = np.array([1 << p for p in range(packed.bits - 1)] + [-(1 << (packed.bits - 1))], np.int16)
    w = np.tensordot(digits, weight, axes=([2], [0]))  # (rt, ks, N, T, 3)
    w = w.transpose(0, 2, 1, 3, 4).reshape(packed.row_tiles * packed.lanes,
                                            packed.k_steps * packed.tables * GROUP_SIZE)
    return np.ascontiguousarray(w[: packed.rows, : packed.cols].astype(np.int8))


def bitserial_matmul(x, packed):
    """The TLMM engine in bit-serial mode: ``y = x @ W_int.T`` on the same tables.

    For each k-step the engine adds ``S_p << p`` for planes ``p < bits-1`` and subtracts
    ``S_{bits-1} << (bits-1)``, where ``S_p`` is the adder-tree output of plane ``p``.

    Parameters
    ----------
    x : numpy.ndarray
        int8, shape ``(M, K)`` or ``(K,)``.
    packed : PackedBitSerial

    Returns
    -------
    numpy.ndarray
        int64, shape ``(M, R)`` (or ``(R,)``). Exact.

    Raises
    ------
    ValueError
        For non-int8 activations, a K mismatch, or a corrupt stream.
    """
    if not isinstance(packed, PackedBitSerial):
        raise ValueError(f"bitserial_matmul needs a PackedBitSerial, got {type(packed).__name__}")
    x, was_1d = _check_activations(x, packed.cols)
    f = _checked_fields(packed, binary=True)
    bits = packed.bits
    shifts = np.arange(bits, dtype=np.int64)
    acc = np.zeros((x.shape[0], packed.row_tiles, packed.lanes), np.int64)
    for _, sums in _engine_tree_sums(x, packed, f):
        shifted = np.left_shift(sums.astype(np.int64), shifts[:, None])  # (M, rt, steps, plane, N)
        acc += shifted[:, :, :, : bits - 1].sum(axis=(2, 3))  # acc += S_p << p, p < bits-1
        acc -= shifted[:, :, :, bits - 1].sum(axis=2)  # acc -= S_msb << (bits-1)
    y = acc.reshape(x.shape[0], -1)[:, : packed.rows]
    return y[0] if was_1d else y


# --------------------------------------------------------------------------------------------------
# Widths
# --------------------------------------------------------------------------------------------------


def tree_bits(tables):
    """Signed width of the adder tree over ``tables`` lookups: ``10 + ceil(log2 T)``.

    Each lookup is in -384..384; ``384 * 2**c < 2**(9 + c)``, so T values need ``ceil(log2 T)`` more
    bits than one value.
    """
    if tables < 1:
        raise ValueError(f"tables must be >= 1, got {tables}")
    return TABLE_ENTRY_BITS + math.ceil(math.log2(tables))


def _max_abs_weight(weight_bits):
    if weight_bits is None:
        return 1
    return 1 << (_check_bits(weight_bits) - 1)


def acc_bits_needed(k, weight_bits=None):
    """Signed accumulator width that holds every partial and final sum of a K-long dot product.

    Parameters
    ----------
    k : int
        K, the number of columns (unpadded; padding contributes zero).
    weight_bits : int, optional
        None for ternary weights (``|w| <= 1``), else the bit-serial width (``|w| <= 2**(bits-1)``).

    Returns
    -------
    int
        ``bit_length(128 * K * max|w|) + 1``: int8 activations reach -128, so ``|y| <= 128*K*max|w|``.
    """
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}")
    return (128 * int(k) * _max_abs_weight(weight_bits)).bit_length() + 1


def max_k_for_acc(acc_bits=ACC_BITS_RECOMMENDED, weight_bits=None):
    """Largest K whose dot products fit a signed ``acc_bits`` accumulator.

    32 bits: 16_777_215 for ternary weights, 131_071 for 8-bit bit-serial weights.
    """
    return ((1 << (acc_bits - 1)) - 1) // (128 * _max_abs_weight(weight_bits))


def reference_matmul(x, w):
    """The test oracle: plain integer ``x @ w.T`` in int64 (not used on the lookup path)."""
    return np.asarray(x).astype(np.int64) @ np.asarray(w).astype(np.int64).T
