"""Write :class:`golden.weights.ModelWeights` as a Hugging Face BitNet b1.58 checkpoint directory.

The output is what :func:`firmware.checkpoint.load_checkpoint` (and ``transformers``) reads:
``config.json``, ``model.safetensors`` or numbered shards plus ``model.safetensors.index.json``, and
optionally ``tokenizer.json``. It exists to build test checkpoints in the exact published layouts and to
convert models, so it aims for loads that reproduce the in-memory model bit for bit.

Round-trip guarantees
---------------------
``save_checkpoint`` returns the :class:`~golden.weights.ModelWeights` a later ``load_checkpoint`` will
produce, computed with the loader's own arithmetic; tests compare against it. Relative to the input:

* Packed, ``autobitlinear``: exact (``weight_scale`` = scale, float32).
* Packed, ``bitlinear``: codes exact; ``weight_scale = float32(1) / scale`` and the loader inverts it in
  float32, so the loaded scale is ``float32(1) / (float32(1) / scale)``, which differs from ``scale`` by
  one ulp for about 17 % of float32 values.
* Float, ``float32``: writing ``codes * scale`` would not work, because absmean re-quantisation
  recovers ``mean|W| = scale * nnz / size``, not ``scale``. Instead every non-zero weight gets a
  magnitude near ``scale * size / nnz``, searched ulp by ulp (and, if one magnitude is not enough, a
  split of the non-zeros between two adjacent float32 magnitudes) until ``absmean_quantise`` of the
  written tensor gives back the codes and the scale. Codes are always exact (every non-zero is at
  least the mean magnitude, so it rounds to +-1). The scale is exact whenever absmean can produce it at
  all: a value is reachable only if ``float32(1) / (float32(1) / scale) == scale`` (the same rule as
  above; any scale that came out of ``absmean_quantise`` qualifies). Even then, for about 3 % of
  (scale, tensor size) pairs no float32 sum divided by the element count lands on it (the float32 mean
  skips values when the size is not a power of two); the closest reachable scale, one ulp off, is
  written then. A scale that came out of a load is reachable by the same construction, so saving a
  loaded model again reproduces it exactly (tested). An all-zero tensor is written as zeros and loads
  with the absmean floor scale; its output is zero either way.
* Float, ``float16`` / ``bfloat16``: the magnitude is rounded to the storage type, so codes are exact
  and the scale is within that type's precision. Norms, embedding and LM head are rounded to the
  storage type in every format (exact in float32).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from golden.weights import LINEAR_NAMES, LayerWeights, ModelWeights, TernaryLinear, absmean_quantise

from .checkpoint import CONFIG_FILE, INDEX_FILE, SINGLE_FILE, SUB_NORM_NAMES, bf16_bits_to_float32

__all__ = ["save_checkpoint", "pack_ternary", "float32_to_bf16_bits", "WEIGHT_FORMATS", "LINEAR_CLASSES",
           "STORAGE_DTYPES"]

WEIGHT_FORMATS = ("packed", "float")
LINEAR_CLASSES = ("autobitlinear", "bitlinear")
#: Storage dtypes for float tensors: ``{name: (safetensors dtype, bytes per element)}``.
STORAGE_DTYPES = {"float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2)}
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1}
_MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")
_ONE = np.float32(1.0)


# -- encodings ------------------------------------------------------------------------------------------
def pack_ternary(codes):
    """Pack int8 ternary codes ``(out, in)`` into the Hugging Face BitNet uint8 layout ``(out / 4, in)``.

    Bits ``2i..2i+1`` of packed row ``r`` hold ``code + 1`` of output row ``i * (out / 4) + r``.
    """
    out, inp = codes.shape
    if out % 4:
        raise ValueError(f"cannot pack {out} output rows: the 2-bit layout needs a multiple of 4")
    rows = out // 4
    packed = np.zeros((rows, inp), dtype=np.uint8)
    for i in range(4):
        field = codes[i * rows:(i + 1) * rows].astype(np.uint8)  # -1 wraps to 255; +1 below brings it to 0
        field += 1
        packed |= field << np.uint8(2 * i)
    return packed


def float32_to_bf16_bits(x):
    """Round finite float32 values to bfloat16 (nearest, ties to even) and return the uint16 bit patterns.

    Values beyond the bf16 range round to infinity; NaN input is not supported (callers reject it).
    """
    bits = np.array(x, dtype=np.float32).view(np.uint32)  # a private copy, modified in place below
    lsb = bits >> np.uint32(16)
    lsb &= np.uint32(1)
    bits += np.uint32(0x7FFF)  # cannot wrap for finite input: the largest pattern is 0xFF7FFFFF
    bits += lsb
    del lsb
    bits >>= np.uint32(16)
    return bits.astype(np.uint16)


def _encode_float(values, dtype, name):
    """Return ``(stored array, safetensors dtype, values as the loader will see them in float32)``."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError(f"tensor '{name}' has non-finite values")
    code = STORAGE_DTYPES[dtype][0]
    if dtype == "float32":
        stored = loaded = values
    elif dtype == "float16":
        stored = values.astype(np.float16)
        loaded = stored.astype(np.float32)
    else:
        stored = float32_to_bf16_bits(values)
        loaded = bf16_bits_to_float32(stored)
    if not np.all(np.isfinite(loaded)):
        raise ValueError(f"tensor '{name}' has values beyond the range of {dtype}")
    return stored, code, loaded


# -- float linears: find a tensor that re-quantises to the given codes and scale -------------------------
def _absmean_scale(abs_w):
    """The scale ``absmean_quantise`` derives from ``|W|`` (same float32 steps, same reduction)."""
    mean = abs_w.mean(dtype=np.float32)
    s = _ONE / np.maximum(mean, np.float32(1e-5))
    return _ONE / s


class _MagnitudeSearch:
    """Evaluates the re-quantised scale of ``|codes|`` times one or two magnitudes.

    The first ``cut`` elements (flat order) use magnitude ``hi`` and the rest ``lo``; with ``hi`` one ulp
    above ``lo`` this moves the float32 mean in steps far finer than changing one shared magnitude.
    """

    def __init__(self, codes):
        self.nonzero = np.abs(codes).astype(np.float32)
        self.buf = np.empty_like(self.nonzero)
        self.flat_nz, self.flat_buf = self.nonzero.reshape(-1), self.buf.reshape(-1)

    def fill(self, hi, lo, cut=0):
        np.multiply(self.flat_nz[:cut], hi, out=self.flat_buf[:cut])
        np.multiply(self.flat_nz[cut:], lo, out=self.flat_buf[cut:])
        return self.buf

    def scale(self, hi, lo, cut=0):
        return _absmean_scale(self.fill(hi, lo, cut))


def _bracket(search, start, target, max_steps=256):
    """Adjacent float32 magnitudes ``lo < hi`` with uniform scales ``f(lo) < target <= f(hi)``, or None."""
    up, down = np.float32(np.inf), np.float32(0)
    a = start
    if search.scale(a, a) >= target:
        for _ in range(max_steps):
            below = np.nextafter(a, down)
            if search.scale(below, below) < target:
                return below, a
            a = below
        return None
    for _ in range(max_steps):
        above = np.nextafter(a, up)
        if search.scale(above, above) >= target:
            return a, above
        a = above
    return None


def _float32_weight(codes, scale):
    """A float32 tensor whose absmean quantisation gives ``codes`` and (if reachable) ``scale``."""
    nnz = np.count_nonzero(codes)
    if nnz == 0:
        return np.zeros(codes.shape, np.float32)
    # The closest scale absmean can return at all (see the module notes).
    target = _ONE / (_ONE / np.float32(scale))
    search = _MagnitudeSearch(codes)
    start = np.float32(float(target) * codes.size / nnz)
    bracket = _bracket(search, start, target)
    if bracket is None:  # e.g. a scale below the absmean floor of 1e-5: settle for the estimate
        hi = lo = start
        cut = 0
    else:
        lo, hi = bracket
        cut = codes.size if search.scale(hi, hi) == target else _bisect_cut(search, hi, lo, target)
    w = search.fill(hi, lo, cut)
    np.multiply(w, codes, out=w)  # restore the signs
    return w


def _bisect_cut(search, hi, lo, target):
    """Smallest-ish split point whose scale reaches ``target``; the closer neighbour if it is skipped."""
    below, above = 0, search.nonzero.size  # scale(below) < target <= scale(above)
    while above - below > 1:
        mid = (below + above) // 2
        if search.scale(hi, lo, mid) < target:
            below = mid
        else:
            above = mid
    hit = search.scale(hi, lo, above)
    if hit == target:
        return above
    miss = search.scale(hi, lo, below)
    return below if abs(float(target) - float(miss)) < abs(float(hit) - float(target)) else above


def _float_linear(linear, dtype, name):
    """Return ``(float tensor in float32, TernaryLinear the loader will rebuild)`` for the float format."""
    codes = linear.codes
    if dtype == "float32":
        w = _float32_weight(codes, linear.scale)
    else:
        nnz = np.count_nonzero(codes)
        magnitude = np.float32(linear.scale * codes.size / nnz) if nnz else np.float32(0)
        # Round the magnitude to the storage type first so the written values are exact multiples.
        _, _, magnitude = _encode_float(np.array([magnitude]), dtype, name)
        w = codes.astype(np.float32) * magnitude[0]
    return w, absmean_quantise(w)


# -- the tensor plan ------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Entry:
    """One tensor to write: its layout is known up front, its data is produced when written."""

    name: str
    code: str
    shape: tuple
    produce: object  # () -> numpy array to store

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * _ITEMSIZE[self.code]


def _float_entry(name, values, dtype, loaded):
    def produce():
        stored, _, as_loaded = _encode_float(values, dtype, name)
        loaded[name] = as_loaded
        return stored
    return _Entry(name, STORAGE_DTYPES[dtype][0], tuple(values.shape), produce)


def _linear_entries(base, linear, weight_format, linear_class, dtype, loaded):
    name = base + ".weight"
    _check_codes(linear, name)
    if weight_format == "float":
        def produce_float():
            w, loaded[name] = _float_linear(linear, dtype, name)
            return _encode_float(w, dtype, name)[0]
        return [_Entry(name, STORAGE_DTYPES[dtype][0], linear.shape, produce_float)]

    scale = np.float32(linear.scale)
    weight_scale = _ONE / scale if linear_class == "bitlinear" else scale
    if not np.isfinite(weight_scale):
        raise ValueError(f"tensor '{name}': scale {float(scale)!r} has no finite float32 reciprocal")
    loaded[name] = TernaryLinear(linear.codes, _ONE / weight_scale if linear_class == "bitlinear" else scale)
    out, inp = linear.shape
    return [_Entry(name, "U8", (out // 4, inp), lambda: pack_ternary(linear.codes)),
            _Entry(base + ".weight_scale", "F32", (1,), lambda: np.array([weight_scale], np.float32))]


def _check_codes(linear, name):
    if linear.codes.size and (linear.codes.min() < -1 or linear.codes.max() > 1):
        raise ValueError(f"tensor '{name}': codes outside {{-1, 0, 1}}")


def _plan(weights, weight_format, linear_class, dtype, naming, loaded):
    """All tensors in Hugging Face order, with producers that record what the loader will see."""
    c = weights.config
    entries = [_float_entry("model.embed_tokens.weight", weights.embed, dtype, loaded)]
    attn_norm, ffn_norm = SUB_NORM_NAMES[naming]
    for i, layer in enumerate(weights.layers):
        p = f"model.layers.{i}."
        entries.append(_float_entry(p + "input_layernorm.weight", layer.input_norm, dtype, loaded))
        for lin in LINEAR_NAMES:
            base = p + ("mlp." if lin in _MLP_LINEARS else "self_attn.") + lin
            entries += _linear_entries(base, getattr(layer, lin), weight_format, linear_class, dtype, loaded)
        entries += [_float_entry(p + attn_norm, layer.attn_sub_norm, dtype, loaded),
                    _float_entry(p + "post_attention_layernorm.weight", layer.post_attention_norm, dtype, loaded),
                    _float_entry(p + ffn_norm, layer.ffn_sub_norm, dtype, loaded)]
    entries.append(_float_entry("model.norm.weight", weights.final_norm, dtype, loaded))
    if not c.tie_word_embeddings:
        entries.append(_float_entry("lm_head.weight", weights.lm_head, dtype, loaded))
    return entries


def _expected_weights(config, naming, loaded, path):
    """Assemble the ModelWeights the loader will return from the recorded per-tensor values."""
    attn_norm, ffn_norm = SUB_NORM_NAMES[naming]
    layers = []
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        layers.append(LayerWeights(
            input_norm=loaded[p + "input_layernorm.weight"],
            attn_sub_norm=loaded[p + attn_norm],
            post_attention_norm=loaded[p + "post_attention_layernorm.weight"],
            ffn_sub_norm=loaded[p + ffn_norm],
            **{lin: loaded[p + ("mlp." if lin in _MLP_LINEARS else "self_attn.") + lin + ".weight"]
               for lin in LINEAR_NAMES}))
    embed = loaded["model.embed_tokens.weight"]
    lm_head = embed if config.tie_word_embeddings else loaded["lm_head.weight"]
    return ModelWeights(config=config, embed=embed, layers=layers, final_norm=loaded["model.norm.weight"],
                        lm_head=lm_head, meta={"source": str(path)})


# -- files ----------------------------------------------------------------------------------------------
def _write_safetensors(path, entries, metadata):
    """Write one safetensors file, producing (and releasing) one tensor at a time.

    Layout: 8-byte little-endian header length, JSON header (space-padded to a multiple of 8) mapping
    names to dtype, shape and ``data_offsets`` relative to the data section, then the packed data.
    Wider dtypes come first, as the reference writer does, so every tensor stays aligned.
    """
    ordered = sorted(entries, key=lambda e: -_ITEMSIZE[e.code])  # stable: keeps model order within a dtype
    header, offset = {"__metadata__": metadata}, 0
    for e in ordered:
        header[e.name] = {"dtype": e.code, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for e in ordered:
            data = np.ascontiguousarray(e.produce())
            data = data.astype(data.dtype.newbyteorder("<"), copy=False)
            if data.shape != tuple(e.shape) or data.nbytes != e.nbytes:
                raise AssertionError(f"internal: tensor '{e.name}' produced {data.dtype} {data.shape}")
            f.write(memoryview(data).cast("B"))


def _shard(entries, max_shard_bytes):
    """Greedy split in model order; a tensor larger than the limit gets a shard of its own."""
    if max_shard_bytes is None:
        return [entries]
    shards, current, size = [], [], 0
    for e in entries:
        if current and size + e.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(e)
        size += e.nbytes
    return shards + ([current] if current else [])


def _write_weights(path, entries, max_shard_bytes):
    metadata = {"format": "pt"}  # transformers refuses safetensors files without a known format tag
    shards = _shard(entries, max_shard_bytes)
    if len(shards) == 1:
        _write_safetensors(path / SINGLE_FILE, shards[0], metadata)
        return [SINGLE_FILE]
    names = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        _write_safetensors(path / name, shard, metadata)
        weight_map.update({e.name: name for e in shard})
    index = {"metadata": {"total_size": sum(e.nbytes for e in entries)}, "weight_map": weight_map}
    (path / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return names


def _prepare_directory(path):
    path = Path(path)
    if path.exists():
        clash = [p.name for p in path.iterdir()
                 if p.name in (CONFIG_FILE, SINGLE_FILE, INDEX_FILE) or
                 (p.name.startswith("model-") and p.name.endswith(".safetensors"))]
        if clash:
            raise FileExistsError(f"{path}: already holds a checkpoint ({', '.join(sorted(clash))}); "
                                  "write to a new directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _check_arguments(weights, weight_format, linear_class, dtype, sub_norm_names):
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"weight_format={weight_format!r}: expected one of {', '.join(WEIGHT_FORMATS)}")
    if weight_format == "packed" and linear_class not in LINEAR_CLASSES:
        raise ValueError(f"linear_class={linear_class!r}: expected one of {', '.join(LINEAR_CLASSES)}")
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(STORAGE_DTYPES)}")
    if sub_norm_names not in SUB_NORM_NAMES:
        raise ValueError(f"sub_norm_names={sub_norm_names!r}: expected one of {', '.join(SUB_NORM_NAMES)}")
    weights.check_shapes()
    c = weights.config
    if c.tie_word_embeddings and weights.lm_head is not weights.embed and \
            not np.array_equal(weights.lm_head, weights.embed):
        raise ValueError("config ties the embeddings but lm_head differs from embed")


def save_checkpoint(weights, path, *, weight_format="packed", linear_class="autobitlinear", dtype="float32",
                    max_shard_bytes=None, tokenizer=None, sub_norm_names=None):
    """Write ``weights`` as a Hugging Face BitNet checkpoint directory.

    Parameters
    ----------
    weights : golden.weights.ModelWeights
    path : str or os.PathLike
        Output directory; created if needed, and must not already hold a checkpoint.
    weight_format : {"packed", "float"}
        ``"packed"``: uint8 2-bit codes plus ``weight_scale`` (Microsoft 2B-4T layout). ``"float"``: float
        linear weights that re-quantise to the same codes (1bitLLM layout).
    linear_class : {"autobitlinear", "bitlinear"}
        Packed only: ``weight_scale`` is the scale (autobitlinear) or its reciprocal (bitlinear).
    dtype : {"float32", "float16", "bfloat16"}
        Storage type of every float tensor (``weight_scale`` is always float32).
    max_shard_bytes : int, optional
        Split into ``model-0000k-of-0000n.safetensors`` shards of at most this many bytes (a larger tensor
        gets its own shard) with ``model.safetensors.index.json``; one ``model.safetensors`` if it all fits.
    tokenizer : tokenizers.Tokenizer, optional
        Saved as ``tokenizer.json``.
    sub_norm_names : {"bitnet", "1bitllm"}, optional
        Sub-norm tensor spelling; defaults to ``"bitnet"`` for packed and ``"1bitllm"`` for float, matching
        the published checkpoints of each format.

    Returns
    -------
    golden.weights.ModelWeights
        Exactly what ``load_checkpoint(path)`` will return (see the module notes for when it differs from
        ``weights``); arrays are shared with ``weights`` wherever nothing changed.
    """
    if sub_norm_names is None:
        sub_norm_names = "bitnet" if weight_format == "packed" else "1bitllm"
    _check_arguments(weights, weight_format, linear_class, dtype, sub_norm_names)
    if max_shard_bytes is not None and max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes={max_shard_bytes!r} must be positive")
    packed = weight_format == "packed"
    config = dataclasses.replace(weights.config, weight_format=weight_format,
                                 linear_class=linear_class if packed else None,
                                 model_type="bitnet" if packed else weights.config.model_type)
    path = _prepare_directory(path)
    loaded = {}
    entries = _plan(weights, weight_format, linear_class, dtype, sub_norm_names, loaded)
    _write_weights(path, entries, max_shard_bytes)
    hf = config.to_hf_dict()
    hf["torch_dtype"] = dtype
    (path / CONFIG_FILE).write_text(json.dumps(hf, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(str(path / "tokenizer.json"))
    return _expected_weights(config, sub_norm_names, loaded, path)
