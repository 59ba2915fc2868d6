"""Load a Hugging Face BitNet b1.58 checkpoint directory into :class:`golden.weights.ModelWeights`.

Two layouts are understood, chosen by the directory's ``config.json`` (see :mod:`golden.model_config`):

* ``weight_format == "float"`` (1bitLLM ``bitnet_b1_58-*``): every linear ``weight`` is a float tensor
  (fp32, fp16 or bf16) that is quantised here with :func:`golden.weights.absmean_quantise`.
* ``weight_format == "packed"`` (Microsoft ``BitNet-b1.58-2B-4T``): every linear ``weight`` is uint8 of
  shape ``(out / 4, in)`` holding ``code + 1`` in 2-bit fields; bits ``2i..2i+1`` of packed row ``r``
  hold output row ``i * (out / 4) + r``. A one-element ``weight_scale`` tensor sits next to it; with
  ``linear_class == "bitlinear"`` the layer output is divided by it (``scale = 1 / weight_scale``,
  computed in float32), with ``"autobitlinear"`` it is multiplied (``scale = weight_scale``).

Only safetensors files are read (``model.safetensors`` or shards listed in
``model.safetensors.index.json``); pickled checkpoints are refused because unpickling can run code.

Decisions worth knowing
-----------------------
* The checkpoint must contain exactly the tensors the config implies. Anything else is an error, with
  one exception: ``model.layers.{i}.self_attn.rotary_emb.inv_freq`` buffers, which older
  ``transformers`` versions saved, are ignored (the rotary table is recomputed from ``rope_theta``).
* Sub-norms may be spelled the Microsoft way (``self_attn.attn_sub_norm`` / ``mlp.ffn_sub_norm``) or the
  1bitLLM way (``self_attn.inner_attn_ln`` / ``mlp.ffn_layernorm``), chosen per layer; a layer holding
  both spellings is an error because it is ambiguous which one the model uses.
* Tied embeddings: ``lm_head.weight`` is normally absent. If it is present anyway it is accepted only
  when it is bit-identical (after conversion to float32) to ``model.embed_tokens.weight``, and then
  dropped, so ``lm_head`` is the same array object as ``embed``; a different matrix is an error.
* When both ``model.safetensors`` and an index exist, the single file wins, as in ``transformers``.

Every failure raises :class:`CheckpointError` (a :class:`ValueError`) with a one-line message naming
the file and the tensor involved.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from golden.model_config import ModelConfig, ModelConfigError
from golden.weights import LINEAR_NAMES, LayerWeights, ModelWeights, TernaryLinear, absmean_quantise

__all__ = [
    "CheckpointError",
    "CheckpointConfigError",
    "load_checkpoint",
    "load_model_config",
    "unpack_ternary",
    "SUB_NORM_NAMES",
    "SINGLE_FILE",
    "INDEX_FILE",
    "PICKLE_SUFFIXES",
]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

#: The two spellings of the per-layer sub-norm tensors: ``{naming: (attention sub-norm, FFN sub-norm)}``.
SUB_NORM_NAMES = {
    "bitnet": ("self_attn.attn_sub_norm.weight", "mlp.ffn_sub_norm.weight"),
    "1bitllm": ("self_attn.inner_attn_ln.weight", "mlp.ffn_layernorm.weight"),
}

# Buffers some exporters write that carry no information the accelerator needs.
_IGNORED_TENSOR = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")

_FLOAT_DTYPES = ("F32", "F16", "BF16")
_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "U8": np.uint8}
_MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete, inconsistent or corrupt."""


class CheckpointConfigError(CheckpointError, ModelConfigError):
    """``config.json`` is malformed or unsupported (catchable as either parent class)."""


def _one_line(text):
    """Collapse whitespace so library messages never break a one-line error."""
    return " ".join(str(text).split())


# -- file discovery --------------------------------------------------------------------------------------
def _check_directory(path):
    """Return ``path`` as a :class:`Path` after checking it is a model directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not path.is_dir():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise CheckpointError(_pickle_message(path.parent, [path.name]))
        raise CheckpointError(f"{path}: expected a checkpoint directory (holding config.json and "
                              f"{SINGLE_FILE}), got a file")
    return path


def _pickle_message(directory, names):
    return (f"{directory}: only pickled checkpoint file(s) found ({', '.join(names)}); pickled checkpoints "
            f"can execute arbitrary code when loaded and are refused: safetensors is required "
            f"({SINGLE_FILE} or {INDEX_FILE})")


def load_model_config(path):
    """Read ``config.json`` from a checkpoint directory.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint directory.

    Returns
    -------
    golden.model_config.ModelConfig

    Raises
    ------
    CheckpointError
        The directory or its ``config.json`` is missing; :class:`CheckpointConfigError` (also a
        :class:`~golden.model_config.ModelConfigError`) when the config is malformed or unsupported.
    """
    directory = _check_directory(path)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing (a checkpoint directory needs config.json)")
    try:
        return ModelConfig.from_json_file(config_path)
    except ModelConfigError as exc:
        raise CheckpointConfigError(_one_line(exc)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointConfigError(f"{config_path}: unreadable: {_one_line(exc)}") from exc


def _resolve_weight_files(directory):
    """Map every tensor name in the checkpoint to the safetensors file holding it.

    Returns
    -------
    tensor_files : dict or None
        ``{tensor name: Path}`` as the index declares it; None for a single file, which lists its own
        tensors once opened.
    files : list of Path
        The distinct files, in order of first use.
    """
    single = directory / SINGLE_FILE
    index = directory / INDEX_FILE
    if single.is_file():
        return None, [single]
    if index.is_file():
        return _read_index(index)
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise CheckpointError(_pickle_message(directory, pickled))
    raise CheckpointError(f"{directory}: no weights found (expected {SINGLE_FILE} or {INDEX_FILE})")


def _read_index(index):
    try:
        data = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{index}: unreadable index: {_one_line(exc)}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: 'weight_map' must be a non-empty object mapping tensor names to files")
    tensor_files, files = {}, {}
    for name, shard in weight_map.items():
        # A shard name is a plain file name; anything else could point outside the checkpoint.
        if not isinstance(shard, str) or Path(shard).name != shard or not shard:
            raise CheckpointError(f"{index}: tensor '{name}' maps to {shard!r}, which is not a file name")
        shard_path = index.parent / shard
        if shard_path not in files:
            if not shard_path.is_file():
                raise CheckpointError(f"{index}: shard '{shard}' (holding tensor '{name}') does not exist")
            files[shard_path] = None
        tensor_files[name] = shard_path
    return tensor_files, list(files)


# -- safetensors access ----------------------------------------------------------------------------------
class _SafetensorsFile:
    """One open safetensors file: tensor names, dtypes, shapes and data, with errors naming the file.

    The ``safetensors`` library reads everything but bf16, which numpy has no type for; bf16 tensors
    are read from the raw bytes (located through the file header) and widened to float32 exactly.
    """

    def __init__(self, path, stack):
        self.path = path
        try:
            self._handle = stack.enter_context(safe_open(str(path), framework="numpy"))
            self.names = set(self._handle.keys())
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: corrupt or unreadable safetensors file: {_one_line(exc)}") from None
        self._offsets = None

    def dtype(self, name):
        return self._handle.get_slice(name).get_dtype()

    def shape(self, name):
        return tuple(self._handle.get_slice(name).get_shape())

    def read(self, name):
        """The tensor as a numpy array (bf16 becomes float32)."""
        try:
            if self.dtype(name) == "BF16":
                return self._read_bf16(name)
            return self._handle.get_tensor(name)
        except (SafetensorError, OSError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.path}: tensor '{name}' is unreadable: {_one_line(exc)}") from None

    def _read_bf16(self, name):
        if self._offsets is None:
            self._offsets = _data_offsets(self.path)
        start, end = self._offsets[name]
        count = int(np.prod(self.shape(name), dtype=np.int64))
        if end - start != 2 * count:
            raise CheckpointError(f"{self.path}: tensor '{name}' has {end - start} data bytes for {count} bf16 values")
        raw = np.fromfile(self.path, dtype="<u2", count=count, offset=start)
        return bf16_bits_to_float32(raw).reshape(self.shape(name))


def _data_offsets(path):
    """``{tensor name: (absolute begin, absolute end)}`` byte ranges, from the safetensors header.

    The format is an 8-byte little-endian header length, a JSON header whose ``data_offsets`` are
    relative to the end of the header, then the data. The library has already validated the header.
    """
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    base = 8 + header_len
    return {name: (base + info["data_offsets"][0], base + info["data_offsets"][1])
            for name, info in header.items() if name != "__metadata__"}


def bf16_bits_to_float32(bits):
    """Widen raw bfloat16 bit patterns (uint16) to float32; bf16 is the top half of a float32."""
    wide = np.asarray(bits, dtype=np.uint16).astype(np.uint32)
    wide <<= np.uint32(16)  # in place: a 2B model's embedding is large enough for a copy to matter
    return wide.view(np.float32)


# -- packed codes ---------------------------------------------------------------------------------------
def unpack_ternary(packed, source="<packed>"):
    """Unpack 2-bit ternary codes from the Hugging Face BitNet layout.

    Parameters
    ----------
    packed : numpy.ndarray
        uint8, shape ``(out / 4, in)``; bits ``2i..2i+1`` of row ``r`` hold ``code + 1`` of output row
        ``i * (out / 4) + r``.
    source : str
        Names the tensor in error messages.

    Returns
    -------
    numpy.ndarray
        int8 codes of shape ``(out, in)`` in {-1, 0, +1}.

    Raises
    ------
    CheckpointError
        A field holds 3, which encodes no ternary value.
    """
    rows, cols = packed.shape
    fields = np.empty((4 * rows, cols), dtype=np.uint8)
    for i in range(4):
        np.right_shift(packed, 2 * i, out=fields[i * rows:(i + 1) * rows])
    fields &= 3
    if fields.max(initial=0) == 3:
        out_row, col = np.unravel_index(int(np.argmax(fields == 3)), fields.shape)
        raise CheckpointError(
            f"{source}: invalid 2-bit code 3 (not ternary) for weight [{out_row}, {col}], stored in packed byte "
            f"[{out_row % rows}, {col}] bits {2 * (out_row // rows)}..{2 * (out_row // rows) + 1}")
    # Reinterpret in place rather than allocating a second out x in array: 0..2 -> -1..1.
    codes = fields.view(np.int8)
    codes -= 1
    return codes


# -- the loader ------------------------------------------------------------------------------------------
class _Reader:
    """Validating tensor access across the checkpoint's files."""

    def __init__(self, directory, tensor_files, files, stack):
        self.directory = directory
        self.files = {path: _SafetensorsFile(path, stack) for path in files}
        if tensor_files is None:  # single file: it declares its own contents
            (only,) = self.files.values()
            tensor_files = {name: only.path for name in only.names}
        else:
            self._check_index(tensor_files)
        self.where = tensor_files
        self.dtype_counts = {}

    def _check_index(self, tensor_files):
        index = self.directory / INDEX_FILE
        for name, path in tensor_files.items():
            if name not in self.files[path].names:
                raise CheckpointError(f"{path}: tensor '{name}' is listed in {index.name} but absent from this shard")
        for path, f in self.files.items():
            for name in sorted(f.names):
                if tensor_files.get(name) != path:
                    raise CheckpointError(f"{path}: tensor '{name}' is not listed for this shard in {index.name}")

    def has(self, name):
        return name in self.where

    def describe_missing(self, name):
        files = ", ".join(sorted({p.name for p in self.where.values()} or {SINGLE_FILE}))
        return f"{self.directory}: missing tensor '{name}' (looked in {files})"

    def read(self, name, shape, dtypes):
        """Read ``name`` after checking its dtype is one of ``dtypes`` and its shape is ``shape``."""
        f = self.files[self.where[name]]
        dtype = f.dtype(name)
        if dtype not in dtypes:
            raise CheckpointError(f"{f.path}: tensor '{name}' has dtype {dtype}, expected {' or '.join(dtypes)}")
        got = f.shape(name)
        if shape is not None and got != tuple(shape):
            raise CheckpointError(f"{f.path}: tensor '{name}' has shape {got}, expected {tuple(shape)}")
        self.dtype_counts[dtype] = self.dtype_counts.get(dtype, 0) + 1
        return f.read(name)

    def read_float(self, name, shape):
        return np.asarray(self.read(name, shape, _FLOAT_DTYPES), dtype=np.float32)

    def file_of(self, name):
        return self.where[name]


def _sub_norm_naming(reader, layer):
    """Which sub-norm spelling layer ``layer`` uses; errors if neither or both are present."""
    found = {key: [f"model.layers.{layer}.{n}" for n in names if reader.has(f"model.layers.{layer}.{n}")]
             for key, names in SUB_NORM_NAMES.items()}
    present = [key for key, names in found.items() if names]
    if len(present) == 2:
        listed = ", ".join(f"'{n}'" for key in present for n in found[key])
        raise CheckpointError(f"{reader.file_of(found['1bitllm'][0])}: layer {layer} mixes the Microsoft "
                              f"(attn_sub_norm/ffn_sub_norm) and 1bitLLM (inner_attn_ln/ffn_layernorm) sub-norm "
                              f"spellings: {listed}; use one")
    return present[0] if present else "bitnet"  # absent: report the Microsoft names as missing


def _expected_names(config, namings):
    """Every tensor name the config implies, in checkpoint order."""
    names = ["model.embed_tokens.weight"]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        attn_norm, ffn_norm = SUB_NORM_NAMES[namings[i]]
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight", p + attn_norm, p + ffn_norm]
        for lin in LINEAR_NAMES:
            base = p + ("mlp." if lin in _MLP_LINEARS else "self_attn.") + lin
            names.append(base + ".weight")
            if config.weight_format == "packed":
                names.append(base + ".weight_scale")
    names.append("model.norm.weight")
    if not config.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def _check_tensor_set(config, reader, expected):
    """Fail on the first missing or unexpected tensor; return ignorable tensors found."""
    expected_set = set(expected)
    for name in expected:
        if not reader.has(name):
            raise CheckpointError(reader.describe_missing(name))
    ignored = []
    for name in sorted(reader.where):
        if name in expected_set:
            continue
        if _IGNORED_TENSOR.fullmatch(name):
            ignored.append(name)
        elif name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # checked against the embedding once that is loaded
        else:
            raise CheckpointError(f"{reader.file_of(name)}: unexpected tensor '{name}' (not part of a "
                                  f"{config.weight_format} {config.model_type} model with this config)")
    return ignored


def _read_scale(reader, name, linear_class):
    raw = reader.read(name, None, _FLOAT_DTYPES)
    path = reader.file_of(name)
    if raw.size != 1 or raw.ndim > 1:
        raise CheckpointError(f"{path}: tensor '{name}' has shape {tuple(raw.shape)}, expected (1,) or ()")
    value = np.float32(raw.reshape(()))
    if not (np.isfinite(value) and value > 0):
        raise CheckpointError(f"{path}: tensor '{name}' = {float(value)!r} is not a positive finite weight scale")
    # bitlinear divides the output by weight_scale; the reciprocal is taken in float32 so a
    # writer storing float32(1 / scale) and this loader agree bit for bit.
    with np.errstate(over="ignore"):  # an overflow to inf is reported below, not warned about
        scale = np.float32(1.0) / value if linear_class == "bitlinear" else value
    if not np.isfinite(scale):
        raise CheckpointError(f"{path}: tensor '{name}' = {float(value)!r} has no finite float32 reciprocal")
    return scale


def _read_linear(reader, config, base, shape):
    out, inp = shape
    name = base + ".weight"
    if config.weight_format == "float":
        return absmean_quantise(reader.read_float(name, shape))
    packed = reader.read(name, (out // 4, inp), ("U8",))
    codes = unpack_ternary(packed, f"{reader.file_of(name)}: tensor '{name}'")
    del packed  # keep only the unpacked codes alive
    return TernaryLinear(codes, _read_scale(reader, base + ".weight_scale", config.linear_class))


def _read_layer(reader, config, i, naming):
    c, p = config, f"model.layers.{i}."
    attn_norm, ffn_norm = SUB_NORM_NAMES[naming]
    shapes = c.linear_shapes()
    lin = {name: _read_linear(reader, c, p + ("mlp." if name in _MLP_LINEARS else "self_attn.") + name,
                              shapes[name])
           for name in LINEAR_NAMES}
    return LayerWeights(
        input_norm=reader.read_float(p + "input_layernorm.weight", (c.hidden_size,)),
        attn_sub_norm=reader.read_float(p + attn_norm, (c.q_dim,)),
        post_attention_norm=reader.read_float(p + "post_attention_layernorm.weight", (c.hidden_size,)),
        ffn_sub_norm=reader.read_float(p + ffn_norm, (c.intermediate_size,)),
        **lin,
    )


def _read_lm_head(reader, config, embed):
    shape = (config.vocab_size, config.hidden_size)
    if not config.tie_word_embeddings:
        return reader.read_float("lm_head.weight", shape), False
    if reader.has("lm_head.weight"):
        head = reader.read_float("lm_head.weight", shape)
        if not np.array_equal(head, embed):
            raise CheckpointError(f"{reader.file_of('lm_head.weight')}: tensor 'lm_head.weight' differs from "
                                  "'model.embed_tokens.weight' but config.json ties them (tie_word_embeddings)")
        return embed, True
    return embed, False


def load_checkpoint(path):
    """Load a BitNet b1.58 checkpoint directory.

    Parameters
    ----------
    path : str or os.PathLike
        Directory with ``config.json`` and ``model.safetensors`` (or ``model.safetensors.index.json``
        plus its shards).

    Returns
    -------
    golden.weights.ModelWeights
        Ternary linears as codes and float32 scale, float32 norms/embedding/LM head. ``meta`` holds
        ``source``, ``format``, ``linear_class``, ``dtypes`` (``{safetensors dtype: tensor count}``),
        ``shards``, ``files``, ``sub_norm_names``, ``tied_lm_head_in_file`` and ``ignored_tensors``.

    Raises
    ------
    CheckpointError
        Anything missing, extra, mis-shaped, mistyped, non-ternary or corrupt (see the module notes).
    """
    directory = _check_directory(path)
    config = load_model_config(directory)
    tensor_files, files = _resolve_weight_files(directory)
    with contextlib.ExitStack() as stack:
        reader = _Reader(directory, tensor_files, files, stack)
        namings = [_sub_norm_naming(reader, i) for i in range(config.num_hidden_layers)]
        ignored = _check_tensor_set(config, reader, _expected_names(config, namings))
        embed = reader.read_float("model.embed_tokens.weight", (config.vocab_size, config.hidden_size))
        layers = [_read_layer(reader, config, i, namings[i]) for i in range(config.num_hidden_layers)]
        final_norm = reader.read_float("model.norm.weight", (config.hidden_size,))
        lm_head, tied_in_file = _read_lm_head(reader, config, embed)
    meta = {
        "source": str(directory),
        "format": config.weight_format,
        "linear_class": config.linear_class,
        "dtypes": dict(sorted(reader.dtype_counts.items())),
        "shards": len(files),
        "files": [p.name for p in files],
        "sub_norm_names": sorted(set(namings)),
        "tied_lm_head_in_file": tied_in_file,
        "ignored_tensors": ignored,
    }
    weights = ModelWeights(config=config, embed=embed, layers=layers, final_norm=final_norm, lm_head=lm_head,
                           meta=meta)
    weights.check_shapes()  # shapes were checked per tensor; this guards the assembly itself
    return weights
