"""Formats of the records the accelerator reads from DRAM, defined once for the gateware, the host
compiler (:mod:`firmware.compiler`) and the ISA simulator (:mod:`golden.isa_sim`).

All little-endian. ``docs/isa.md`` lists them with the instructions that read them.

SFloat (8 bytes)
    ``m`` uint32 (24-bit mantissa, 0 for zero) then ``e`` int32 (0 for zero).
Parameter record of a LINEAR / LOGITS (``36 + 2k`` bytes, padded to 4)
    ``shift`` int8, 3 zero bytes, ``eps`` SFloat, ``sw0``, ``sw1``, ``sw2`` SFloat (weight scales of the
    scale groups), then the ``k`` RMSNorm gain values, int16.
Row scale (4 bytes)
    ``m16`` uint16, ``e`` int16: the row's scale ``m16 * 2^e`` (embedding rows, LM head rows).
Embedding row (``4 + 2 * hidden`` bytes, rows ``stride`` apart)
    The row scale first (the hardware needs it before the values stream past), then ``hidden`` int16
    values, then zero padding up to the stride (a multiple of the alignment the compiler uses, so that
    every row starts on a bus word).
RoPE table
    ``head_dim / 2`` uint32 phase increments (:func:`golden.numerics.rope_freq_table`).
Logits (written by ``LOGITS``)
    Per token ``logits_stride(vocab, lanes)`` int32: the vocabulary rounded up to whole TLMM row tiles
    (the padding is 0), so the hardware writes whole ``lanes``-wide beats.
Residual stash (written by ``SAVE_X``, read by ``LOAD_X``)
    Per token ``x_stash_stride(hidden, lanes)`` bytes: the Q.16 int32 residual vector rounded up to whole
    ``lanes``-wide beats (``SAVE_X`` writes the padding as 0, ``LOAD_X`` ignores it).
"""

import numpy as np

from golden.numerics import NormGain, RowQuant
from golden.sfloat import SFloat

__all__ = ["FormatError", "SFLOAT_BYTES", "PARAM_HEADER_BYTES", "ROW_SCALE_BYTES",
           "pack_sfloat", "unpack_sfloat", "pack_params", "unpack_params", "params_bytes",
           "pack_row_scales", "unpack_row_scales", "pack_embedding", "embedding_row_bytes", "embedding_stride", "unpack_embedding_rows",
           "pack_rope", "unpack_rope", "logits_stride", "x_stash_stride"]

SFLOAT_BYTES = 8
PARAM_HEADER_BYTES = 4 + 4 * SFLOAT_BYTES
ROW_SCALE_BYTES = 4


class FormatError(ValueError):
    """A value that does not fit its DRAM record, or a record of the wrong size."""


def _scalar(s):
    m, e = np.asarray(s.m).reshape(-1), np.asarray(s.e).reshape(-1)
    if m.size != 1:
        raise FormatError(f"expected one SFloat, got {m.size}")
    return int(m[0]), int(e[0])


def pack_sfloat(s):
    m, e = _scalar(s)
    if not (m == 0 or (1 << 23) <= m < (1 << 24)):
        raise FormatError(f"SFloat mantissa {m} is not normalised")
    e = 0 if m == 0 else e
    if not -(1 << 31) <= e < (1 << 31):
        raise FormatError(f"SFloat exponent {e} does not fit int32")
    return np.array([m], "<u4").tobytes() + np.array([e], "<i4").tobytes()


def unpack_sfloat(raw):
    if len(raw) != SFLOAT_BYTES:
        raise FormatError(f"an SFloat is {SFLOAT_BYTES} bytes, got {len(raw)}")
    m = int(np.frombuffer(raw[:4], "<u4")[0])
    e = int(np.frombuffer(raw[4:], "<i4")[0])
    if m == 0:
        return SFloat.from_int(np.int64(0))
    return SFloat(np.int64(m), np.int64(e))


def params_bytes(k):
    """Size of a parameter record for ``k`` inputs (padded to 4 bytes)."""
    return -(-(PARAM_HEADER_BYTES + 2 * k) // 4) * 4


def pack_params(gain: NormGain, scales=()):
    """The parameter record of a norm gain and up to three weight scales (missing ones are zero)."""
    scales = list(scales)
    if len(scales) > 3:
        raise FormatError(f"at most 3 weight scales, got {len(scales)}")
    if not -128 <= gain.shift <= 127:
        raise FormatError(f"gain shift {gain.shift} does not fit int8")
    q = np.asarray(gain.q, np.int64)
    if q.size and (q.min() < -(1 << 15) or q.max() >= 1 << 15):
        raise FormatError("gain values do not fit int16")
    zero = SFloat.from_int(np.int64(0))
    out = bytes([gain.shift & 0xFF, 0, 0, 0]) + pack_sfloat(gain.eps)
    out += b"".join(pack_sfloat(s) for s in scales + [zero] * (3 - len(scales)))
    out += q.astype("<i2").tobytes()
    return out + bytes(params_bytes(q.size) - len(out))


def unpack_params(raw, k):
    """``(NormGain, [sw0, sw1, sw2])`` from a parameter record of ``k`` inputs."""
    if len(raw) < params_bytes(k):
        raise FormatError(f"parameter record for k = {k} needs {params_bytes(k)} bytes, got {len(raw)}")
    shift = int(np.frombuffer(raw[:1], np.int8)[0])
    eps = unpack_sfloat(raw[4:12])
    sw = [unpack_sfloat(raw[12 + 8 * i:20 + 8 * i]) for i in range(3)]
    q = np.frombuffer(raw[PARAM_HEADER_BYTES:PARAM_HEADER_BYTES + 2 * k], "<i2").astype(np.int64)
    return NormGain(q=q, shift=shift, eps=eps), sw


def pack_row_scales(rq: RowQuant):
    m16, e = np.asarray(rq.m16, np.int64), np.asarray(rq.e, np.int64)
    if m16.size and (m16.min() < 0 or m16.max() >= 1 << 16):
        raise FormatError("row scale mantissa does not fit uint16")
    if e.size and (e.min() < -(1 << 15) or e.max() >= 1 << 15):
        raise FormatError("row scale exponent does not fit int16")
    rec = np.zeros((m16.size, 2), "<u2")
    rec[:, 0] = m16
    rec[:, 1] = (e & 0xFFFF).astype(np.uint16)
    return rec.tobytes()


def unpack_row_scales(raw, rows):
    rec = np.frombuffer(bytes(raw), "<u2").reshape(rows, 2)
    return rec[:, 0].astype(np.int64), rec[:, 1].view("<i2").astype(np.int64)


def logits_stride(rows, lanes):
    """int32 logits per token in DRAM: ``rows`` rounded up to a multiple of the TLMM ``lanes``."""
    return -(-rows // lanes) * lanes


def x_stash_stride(hidden, lanes):
    """Bytes per token of a residual stash: ``hidden`` int32 rounded up to whole ``lanes``-wide beats."""
    return 4 * logits_stride(hidden, lanes)


def embedding_row_bytes(hidden):
    return 2 * hidden + ROW_SCALE_BYTES


def embedding_stride(hidden, align):
    """Row stride: ``2 * hidden + 4`` rounded up to a multiple of ``align`` bytes."""
    return -(-embedding_row_bytes(hidden) // align) * align


def pack_embedding(rq: RowQuant, stride=None):
    """Embedding rows: each row's scale and int16 values, padded to ``stride`` bytes."""
    q = np.asarray(rq.q, np.int64)
    if q.size and (q.min() < -(1 << 15) or q.max() >= 1 << 15):
        raise FormatError("embedding values do not fit int16")
    rows, hidden = q.shape
    scales = np.frombuffer(pack_row_scales(rq), np.uint8).reshape(rows, ROW_SCALE_BYTES)
    rb = embedding_row_bytes(hidden)
    stride = rb if stride is None else stride
    if stride < rb:
        raise FormatError(f"embedding stride {stride} is shorter than a row ({rb} bytes)")
    pad = np.zeros((rows, stride - rb), np.uint8)
    return np.concatenate([scales, q.astype("<i2").view(np.uint8).reshape(rows, 2 * hidden), pad], axis=1).tobytes()


def unpack_embedding_rows(raw, hidden):
    """``(q (n, hidden), m16 (n,), e (n,))`` of ``n`` consecutive embedding rows."""
    rb = embedding_row_bytes(hidden)
    if len(raw) % rb:
        raise FormatError(f"embedding rows are {rb} bytes; got {len(raw)} bytes")
    rec = np.frombuffer(bytes(raw), np.uint8).reshape(-1, rb)
    m16, e = unpack_row_scales(rec[:, :ROW_SCALE_BYTES].tobytes(), rec.shape[0])
    q = rec[:, ROW_SCALE_BYTES:].copy().view("<i2").astype(np.int64)
    return q, m16, e


def pack_rope(freq):
    f = np.asarray(freq, np.int64)
    if f.size and (f.min() < 0 or f.max() >= 1 << 32):
        raise FormatError("RoPE phase increments must be uint32")
    return f.astype("<u4").tobytes()


def unpack_rope(raw):
    return np.frombuffer(bytes(raw), "<u4").astype(np.int64)
