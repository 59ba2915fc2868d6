"""Checkpoint loading and writing: exact round trips in the published layouts, and one precise error per fault.

The tests build their own small checkpoints. Faults are injected by rewriting the written safetensors
files, and the packed layout is checked against bytes assembled by hand from the documented bit layout.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from firmware.checkpoint import (CheckpointConfigError, CheckpointError, load_checkpoint, load_model_config,
                                 unpack_ternary)
from firmware.checkpoint_writer import pack_ternary, save_checkpoint
from golden.model_config import ModelConfig, ModelConfigError
from golden.weights import LINEAR_NAMES, TernaryLinear, absmean_quantise, random_model

ONE = np.float32(1)
Q_PROJ = "model.layers.0.self_attn.q_proj"


# -- fixtures and helpers ---------------------------------------------------------------------------------
def small_config(variant):
    """``"1bitllm"``: SiLU, float weights, untied; ``"2b4t"``: ReLU^2, packed autobitlinear, tied."""
    base = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, max_position_embeddings=128, rope_theta=10000.0,
                rms_norm_eps=1e-5, bos_token_id=0, eos_token_ids=(1,))
    if variant == "1bitllm":
        return ModelConfig(**base, hidden_act="silu", tie_word_embeddings=False, model_type="llama")
    return ModelConfig(**base, hidden_act="relu2", tie_word_embeddings=True, weight_format="packed",
                       linear_class="autobitlinear")


def model(variant, seed=0):
    return random_model(small_config(variant), seed)


def write(tmp_path, weights, name="ckpt", **kwargs):
    path = tmp_path / name
    expected = save_checkpoint(weights, path, **kwargs)
    return path, expected


def linears(weights):
    for i, layer in enumerate(weights.layers):
        for name in LINEAR_NAMES:
            yield f"layers.{i}.{name}", getattr(layer, name)


def floats(weights):
    yield "embed", weights.embed
    yield "lm_head", weights.lm_head
    yield "final_norm", weights.final_norm
    for i, layer in enumerate(weights.layers):
        for name in ("input_norm", "attn_sub_norm", "post_attention_norm", "ffn_sub_norm"):
            yield f"layers.{i}.{name}", getattr(layer, name)


def assert_same(got, want):
    """Bit-exact equality of two ModelWeights (config, every float array, codes and scales)."""
    assert got.config == want.config
    for (name, a), (_, b) in zip(floats(got), floats(want)):
        assert a.dtype == np.float32 and a.shape == b.shape, name
        assert np.array_equal(a.view(np.uint32), np.asarray(b, np.float32).view(np.uint32)), name
    for (name, a), (_, b) in zip(linears(got), linears(want)):
        assert a.codes.dtype == np.int8 and np.array_equal(a.codes, b.codes), name
        assert a.scale == b.scale, name


def assert_codes_equal(got, want):
    for (name, a), (_, b) in zip(linears(got), linears(want)):
        assert np.array_equal(a.codes, b.codes), name


def with_scales(weights, fn):
    """A copy of ``weights`` whose linear scales are ``fn(scale)`` (codes shared)."""
    layers = [dataclasses.replace(layer, **{n: TernaryLinear(getattr(layer, n).codes, fn(getattr(layer, n).scale))
                                            for n in LINEAR_NAMES}) for layer in weights.layers]
    return dataclasses.replace(weights, layers=layers)


def reachable(scale):
    """The scale absmean quantisation reproduces: float32(1) / (float32(1) / scale)."""
    return float(ONE / (ONE / np.float32(scale)))


def rewrite(file, mutate):
    """Load every tensor of a float32/uint8 safetensors file, let ``mutate`` edit the dict, write it back."""
    tensors = load_file(str(file))
    mutate(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def raw_safetensors(file, entries):
    """Minimal independent safetensors writer: ``entries`` = {name: (dtype code, shape, raw bytes)}."""
    header, data, offset = {}, b"", 0
    for name, (code, shape, raw) in entries.items():
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    file.write_bytes(len(text).to_bytes(8, "little") + text + data)


def load_error(path):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def packed_ckpt(tmp_path):
    """A tied 2B-4T style packed checkpoint (autobitlinear) and its weights."""
    weights = model("2b4t")
    path, _ = write(tmp_path, weights)
    return path, weights


@pytest.fixture
def float_ckpt(tmp_path):
    """An untied 1bitLLM style float32 checkpoint."""
    weights = model("1bitllm")
    path, _ = write(tmp_path, weights, weight_format="float")
    return path, weights


# -- round trips ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [True, False])
def test_packed_autobitlinear_round_trip_is_exact(tmp_path, tied):
    weights = random_model(dataclasses.replace(small_config("2b4t"), tie_word_embeddings=tied), seed=1)
    path, expected = write(tmp_path, weights, weight_format="packed", linear_class="autobitlinear")
    got = load_checkpoint(path)
    assert_same(got, weights)
    assert_same(expected, weights)
    assert (got.lm_head is got.embed) == tied
    assert got.meta["format"] == "packed" and got.meta["linear_class"] == "autobitlinear"
    assert got.meta["dtypes"] == {"F32": 2 + 7 * 2 + 4 * 2 + (0 if tied else 1), "U8": 14}
    assert got.meta["shards"] == 1 and got.meta["sub_norm_names"] == ["bitnet"]


def test_packed_bitlinear_round_trip(tmp_path):
    weights = model("2b4t", seed=2)
    path, expected = write(tmp_path, weights, linear_class="bitlinear")
    got = load_checkpoint(path)
    assert_same(got, expected)
    assert_codes_equal(got, weights)
    for (name, a), (_, b) in zip(linears(got), linears(weights)):
        assert a.scale == reachable(b.scale), name  # stored 1/s, inverted in float32 at load
    with safe_open(str(path / "model.safetensors"), framework="numpy") as f:
        stored = f.get_tensor(f"{Q_PROJ}.weight_scale")
    assert stored.dtype == np.float32 and stored.shape == (1,)
    assert stored[0] == ONE / np.float32(weights.layers[0].q_proj.scale)


def test_float32_round_trip_reproduces_codes_and_reachable_scales(tmp_path):
    # Scales of the form 1/(1/s) are the only ones absmean can return; canonicalise to them.
    weights = with_scales(model("1bitllm", seed=3), reachable)
    path, expected = write(tmp_path, weights, weight_format="float")
    got = load_checkpoint(path)
    assert_same(got, expected)
    assert_same(got, weights)
    # The written tensors are real float weights whose absmean quantisation gives the codes and scale.
    with safe_open(str(path / "model.safetensors"), framework="numpy") as f:
        w = f.get_tensor(f"{Q_PROJ}.weight")
    assert w.dtype == np.float32
    q = absmean_quantise(w)
    assert np.array_equal(q.codes, weights.layers[0].q_proj.codes) and q.scale == weights.layers[0].q_proj.scale


def test_float32_round_trip_of_arbitrary_scales_is_within_one_ulp_and_idempotent(tmp_path):
    weights = model("1bitllm", seed=4)
    path, expected = write(tmp_path, weights, name="a", weight_format="float")
    once = load_checkpoint(path)
    assert_same(once, expected)
    assert_codes_equal(once, weights)
    for (name, a), (_, b) in zip(linears(once), linears(weights)):
        gap = abs(int(np.float32(a.scale).view(np.int32)) - int(np.float32(b.scale).view(np.int32)))
        assert gap <= 1, name
    path2, _ = write(tmp_path, once, name="b", weight_format="float")
    assert_same(load_checkpoint(path2), once)


@pytest.mark.parametrize("dtype,rel", [("float16", 2.0 ** -11), ("bfloat16", 2.0 ** -8)])
def test_low_precision_float_round_trip(tmp_path, dtype, rel):
    weights = model("1bitllm", seed=5)
    path, expected = write(tmp_path, weights, weight_format="float", dtype=dtype)
    got = load_checkpoint(path)
    assert_same(got, expected)
    assert got.meta["dtypes"] == {"BF16" if dtype == "bfloat16" else "F16": 2 + 2 * (4 + 7) + 1}
    # Codes survive any rounding of the magnitude; the scale and the float tensors are rounded.
    assert_codes_equal(got, weights)
    for (name, a), (_, b) in zip(linears(got), linears(weights)):
        assert abs(a.scale - b.scale) <= 2 * rel * b.scale, name
    for (name, a), (_, b) in zip(floats(got), floats(weights)):
        assert np.all(np.abs(a - b) <= rel * np.abs(b)), name
        if dtype == "float16":
            assert np.array_equal(a, b.astype(np.float16).astype(np.float32)), name
        else:
            assert not np.any(a.view(np.uint32) & 0xFFFF), name  # representable in bf16
    # The loader re-quantises exactly what was stored.
    with safe_open(str(path / "model.safetensors"), framework="numpy") as f:
        assert f.get_slice(f"{Q_PROJ}.weight").get_dtype() == ("BF16" if dtype == "bfloat16" else "F16")


def test_bf16_packed_checkpoint_keeps_float32_scales(tmp_path):
    weights = model("2b4t", seed=6)
    path, expected = write(tmp_path, weights, dtype="bfloat16")
    got = load_checkpoint(path)
    assert_same(got, expected)
    assert_codes_equal(got, weights)
    for (name, a), (_, b) in zip(linears(got), linears(weights)):
        assert a.scale == b.scale, name


def test_sharded_checkpoint_with_index(tmp_path):
    weights = model("1bitllm", seed=7)
    single, _ = write(tmp_path, weights, name="single", weight_format="float")
    sharded, expected = write(tmp_path, weights, name="sharded", weight_format="float", max_shard_bytes=4096)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted({*index["weight_map"].values()})
    assert len(shards) >= 5 and not (sharded / "model.safetensors").exists()
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    total, names = 0, set()
    for shard in shards:
        with safe_open(str(sharded / shard), framework="numpy") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                total += t.nbytes
                names.add(name)
                assert index["weight_map"][name] == shard
    assert index["metadata"]["total_size"] == total and names == set(index["weight_map"])
    got = load_checkpoint(sharded)
    assert_same(got, expected)
    assert_same(got, load_checkpoint(single))
    assert got.meta["shards"] == len(shards) and got.meta["files"] == shards


def test_config_json_describes_what_was_written(tmp_path):
    path, _ = write(tmp_path, model("1bitllm"), linear_class="bitlinear", dtype="bfloat16")
    hf = json.loads((path / "config.json").read_text())
    assert hf["quantization_config"] == {"quant_method": "bitnet", "linear_class": "bitlinear",
                                         "quantization_mode": "offline"}
    assert hf["torch_dtype"] == "bfloat16" and hf["hidden_act"] == "silu"
    config = load_model_config(path)
    assert config == dataclasses.replace(small_config("1bitllm"), weight_format="packed", linear_class="bitlinear",
                                         model_type="bitnet")  # packed checkpoints are model_type bitnet
    float_path, _ = write(tmp_path, model("2b4t"), name="f", weight_format="float")
    assert "quantization_config" not in json.loads((float_path / "config.json").read_text())
    assert load_model_config(float_path).weight_format == "float"


@pytest.mark.parametrize("variant,fmt", [("1bitllm", "float"), ("2b4t", "packed"), ("1bitllm", "packed"),
                                         ("2b4t", "float")])
@pytest.mark.parametrize("naming", ["bitnet", "1bitllm"])
def test_sub_norm_spellings(tmp_path, variant, fmt, naming):
    weights = with_scales(model(variant, seed=8), reachable)
    path, expected = write(tmp_path, weights, weight_format=fmt, linear_class="autobitlinear",
                           sub_norm_names=naming)
    with safe_open(str(path / "model.safetensors"), framework="numpy") as f:
        keys = set(f.keys())
    spelled = {"bitnet": ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm"),
               "1bitllm": ("self_attn.inner_attn_ln", "mlp.ffn_layernorm")}[naming]
    assert {f"model.layers.1.{s}.weight" for s in spelled} <= keys
    got = load_checkpoint(path)
    assert_same(got, expected)
    assert got.meta["sub_norm_names"] == [naming]
    assert np.array_equal(got.layers[1].ffn_sub_norm, weights.layers[1].ffn_sub_norm)


def test_writer_default_spelling_follows_the_format(tmp_path):
    assert load_checkpoint(write(tmp_path, model("1bitllm"), name="f", weight_format="float")[0]
                           ).meta["sub_norm_names"] == ["1bitllm"]
    assert load_checkpoint(write(tmp_path, model("1bitllm"), name="p")[0]).meta["sub_norm_names"] == ["bitnet"]


# -- the packed layout, checked independently ------------------------------------------------------------
def test_unpack_single_byte_by_hand():
    # 0b10_01_00_10: field 0 = 2 (+1, row 0), field 1 = 0 (-1, row 1), field 2 = 1 (0, row 2), field 3 = 2.
    packed = np.array([[0b10_01_00_10]], dtype=np.uint8)
    assert unpack_ternary(packed).tolist() == [[1], [-1], [0], [1]]


def test_hand_packed_weight_loads_to_the_documented_codes(packed_ckpt):
    path, weights = packed_ckpt
    out, inp = weights.layers[0].q_proj.shape
    rows = out // 4
    codes = np.array([[(3 * r + 5 * c + r * c) % 3 - 1 for c in range(inp)] for r in range(out)], dtype=np.int8)
    packed = bytearray()
    for r in range(rows):  # row-major over the packed (out/4, in) array, one byte at a time
        for c in range(inp):
            byte = 0
            for i in range(4):  # bits 2i..2i+1 hold output row i * (out/4) + r, stored as code + 1
                byte |= (int(codes[i * rows + r, c]) + 1) << (2 * i)
            packed.append(byte)
    hand = np.frombuffer(bytes(packed), dtype=np.uint8).reshape(rows, inp)
    assert np.array_equal(pack_ternary(codes), hand)
    rewrite(path / "model.safetensors", lambda t: t.__setitem__(f"{Q_PROJ}.weight", hand))
    got = load_checkpoint(path)
    assert np.array_equal(got.layers[0].q_proj.codes, codes)
    assert np.array_equal(got.layers[0].k_proj.codes, weights.layers[0].k_proj.codes)


@pytest.mark.parametrize("linear_class", ["autobitlinear", "bitlinear"])
def test_hand_written_bf16_checkpoint_with_scalar_scales(tmp_path, linear_class):
    """A file in the 2B-4T dtypes (bf16 floats, bf16 0-d weight_scale) written by an independent writer."""
    weights = model("2b4t", seed=9)
    path, _ = write(tmp_path, weights, linear_class=linear_class)
    tensors = load_file(str(path / "model.safetensors"))
    (path / "model.safetensors").unlink()
    entries, truncated = {}, {}
    for name, t in tensors.items():
        if t.dtype == np.uint8:
            entries[name] = ("U8", t.shape, t.tobytes())
        else:
            bits = (t.view(np.uint32) >> 16).astype("<u2")  # bf16 by truncation
            if name.endswith("weight_scale"):
                bits = np.array([0x3EC0], "<u2")  # bf16 0.375, as a 0-d tensor
                entries[name] = ("BF16", (), bits.tobytes())
                continue
            entries[name] = ("BF16", t.shape, bits.tobytes())
            truncated[name] = (bits.astype(np.uint32) << 16).view(np.float32)
    raw_safetensors(path / "model.safetensors", entries)
    got = load_checkpoint(path)
    want_scale = 0.375 if linear_class == "autobitlinear" else float(ONE / np.float32(0.375))
    for name, lin in linears(got):
        assert lin.scale == want_scale, name
    assert_codes_equal(got, weights)
    assert np.array_equal(got.embed, truncated["model.embed_tokens.weight"])
    assert np.array_equal(got.layers[1].attn_sub_norm, truncated["model.layers.1.self_attn.attn_sub_norm.weight"])
    assert got.meta["dtypes"] == {"BF16": 2 + 2 * (4 + 7), "U8": 14}


# -- tolerated extras --------------------------------------------------------------------------------------
def test_tied_lm_head_identical_to_embedding_is_accepted(packed_ckpt):
    path, weights = packed_ckpt
    rewrite(path / "model.safetensors", lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"]))
    got = load_checkpoint(path)
    assert got.lm_head is got.embed and got.meta["tied_lm_head_in_file"]


def test_rotary_inv_freq_buffers_are_ignored(float_ckpt):
    path, weights = float_ckpt
    name = "model.layers.1.self_attn.rotary_emb.inv_freq"
    rewrite(path / "model.safetensors", lambda t: t.__setitem__(name, np.ones(4, np.float32)))
    assert load_checkpoint(path).meta["ignored_tensors"] == [name]


def test_safetensors_preferred_over_pickles(float_ckpt):
    path, _ = float_ckpt
    (path / "pytorch_model.bin").write_bytes(b"not read")
    load_checkpoint(path)


# -- errors ------------------------------------------------------------------------------------------------
def test_missing_directory(tmp_path):
    assert "no_such_model" in load_error(tmp_path / "no_such_model")


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    message = load_error(tmp_path)
    assert "config.json" in message and str(tmp_path) in message


@pytest.mark.parametrize("name", ["pytorch_model.bin", "consolidated.pth", "model.ckpt", "weights.pt"])
def test_pickled_only_checkpoint_is_refused(tmp_path, name):
    (tmp_path / "config.json").write_text(json.dumps(small_config("1bitllm").to_hf_dict()))
    (tmp_path / name).write_bytes(b"\x80\x04pickle")
    for target in (tmp_path, tmp_path / name):
        message = load_error(target)
        assert name in message and "safetensors" in message and "execute" in message


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(small_config("1bitllm").to_hf_dict()))
    assert "model.safetensors" in load_error(tmp_path)


@pytest.mark.parametrize("name", [f"{Q_PROJ}.weight", "model.layers.1.mlp.down_proj.weight_scale",
                                  "model.norm.weight", "model.layers.1.self_attn.attn_sub_norm.weight",
                                  "model.embed_tokens.weight"])
def test_missing_tensor(packed_ckpt, name):
    path, _ = packed_ckpt
    rewrite(path / "model.safetensors", lambda t: t.pop(name))
    message = load_error(path)
    assert f"missing tensor '{name}'" in message and "model.safetensors" in message


def test_missing_lm_head_of_untied_model(float_ckpt):
    path, _ = float_ckpt
    rewrite(path / "model.safetensors", lambda t: t.pop("lm_head.weight"))
    assert "'lm_head.weight'" in load_error(path)


@pytest.mark.parametrize("name", ["model.layers.0.mlp.extra.weight", "model.layers.2.input_layernorm.weight",
                                  f"{Q_PROJ}.bias"])
def test_unexpected_tensor(packed_ckpt, name):
    path, _ = packed_ckpt
    rewrite(path / "model.safetensors", lambda t: t.__setitem__(name, np.zeros(4, np.float32)))
    message = load_error(path)
    assert f"unexpected tensor '{name}'" in message and "model.safetensors" in message


def test_weight_scale_in_a_float_checkpoint_is_unexpected(float_ckpt):
    path, _ = float_ckpt
    rewrite(path / "model.safetensors", lambda t: t.__setitem__(f"{Q_PROJ}.weight_scale", np.ones(1, np.float32)))
    assert f"'{Q_PROJ}.weight_scale'" in load_error(path)


def test_tied_lm_head_that_differs_is_refused(packed_ckpt):
    path, _ = packed_ckpt
    rewrite(path / "model.safetensors", lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"] + 1))
    message = load_error(path)
    assert "'lm_head.weight'" in message and "tie_word_embeddings" in message


def test_both_sub_norm_spellings_are_refused(packed_ckpt):
    path, _ = packed_ckpt
    rewrite(path / "model.safetensors", lambda t: t.__setitem__(
        "model.layers.1.mlp.ffn_layernorm.weight", t["model.layers.1.mlp.ffn_sub_norm.weight"]))
    message = load_error(path)
    assert "model.layers.1.mlp.ffn_layernorm.weight" in message and "model.layers.1.mlp.ffn_sub_norm.weight" in message


@pytest.mark.parametrize("name,bad,expected", [
    ("model.layers.0.input_layernorm.weight", np.ones(31, np.float32), "(32,)"),
    ("model.layers.1.mlp.ffn_sub_norm.weight", np.ones(32, np.float32), "(64,)"),
    ("model.embed_tokens.weight", np.ones((95, 32), np.float32), "(96, 32)"),
    (f"{Q_PROJ}.weight", np.ones((32, 32), np.uint8), "(8, 32)"),  # unpacked shape in a packed file
    ("model.layers.1.mlp.down_proj.weight", np.ones((8, 64, 1), np.uint8), "(8, 64)"),
])
def test_mis_shaped_tensor(packed_ckpt, name, bad, expected):
    path, _ = packed_ckpt
    rewrite(path / "model.safetensors", lambda t: t.__setitem__(name, bad))
    message = load_error(path)
    assert f"'{name}'" in message and f"shape {bad.shape}" in message and f"expected {expected}" in message


def test_mis_shaped_float_linear(float_ckpt):
    path, _ = float_ckpt
    name = "model.layers.1.self_attn.k_proj.weight"
    rewrite(path / "model.safetensors", lambda t: t.__setitem__(name, np.ones((32, 32), np.float32)))
    message = load_error(path)
    assert f"'{name}'" in message and "expected (16, 32)" in message


@pytest.mark.parametrize("name,bad,want", [
    (f"{Q_PROJ}.weight", np.ones((8, 32), np.int8), "U8"),  # packed weight must be uint8
    (f"{Q_PROJ}.weight", np.ones((32, 32), np.float32), "U8"),  # float linear in a packed checkpoint
    ("model.norm.weight", np.ones(32, np.int32), "F32 or F16 or BF16"),
    (f"{Q_PROJ}.weight_scale", np.ones(1, np.int32), "F32 or F16 or BF16"),
])
def test_wrong_dtype_packed(packed_ckpt, name, bad, want):
    path, _ = packed_ckpt
    rewrite(path / "model.safetensors", lambda t: t.__setitem__(name, bad))
    message = load_error(path)
    assert f"'{name}'" in message and "dtype" in message and want in message


def test_wrong_dtype_float(float_ckpt):
    path, _ = float_ckpt
    name = "model.layers.0.mlp.up_proj.weight"
    rewrite(path / "model.safetensors", lambda t: t.__setitem__(name, np.ones((16, 64), np.uint8)))
    message = load_error(path)
    assert f"'{name}'" in message and "dtype U8" in message


def test_non_ternary_packed_code(packed_ckpt):
    path, _ = packed_ckpt
    name = "model.layers.1.mlp.gate_proj.weight"  # packed (16, 32): output row i * 16 + r
    def corrupt(t):
        t[name] = t[name].copy()
        t[name][3, 5] |= 0b11 << 4  # field 2 of byte [3, 5] -> output row 2 * 16 + 3 = 35
        t[name][9, 30] |= 0b11 << 6  # a later weight row (3 * 16 + 9), so not reported first
    rewrite(path / "model.safetensors", corrupt)
    message = load_error(path)
    assert f"'{name}'" in message and "model.safetensors" in message
    assert "weight [35, 5]" in message and "packed byte [3, 5] bits 4..5" in message


@pytest.mark.parametrize("value", [0.0, -0.5, np.nan, np.inf, -np.inf])
def test_bad_weight_scale_value(packed_ckpt, value):
    path, _ = packed_ckpt
    name = "model.layers.1.self_attn.o_proj.weight_scale"
    rewrite(path / "model.safetensors", lambda t: t.__setitem__(name, np.array([value], np.float32)))
    message = load_error(path)
    assert f"'{name}'" in message and "positive finite" in message


def test_bad_weight_scale_shape(packed_ckpt):
    path, _ = packed_ckpt
    name = f"{Q_PROJ}.weight_scale"
    rewrite(path / "model.safetensors", lambda t: t.__setitem__(name, np.ones(2, np.float32)))
    message = load_error(path)
    assert f"'{name}'" in message and "(2,)" in message


def test_weight_scale_without_float32_reciprocal(tmp_path):
    weights = model("2b4t")
    path, _ = write(tmp_path, weights, linear_class="bitlinear")
    name = f"{Q_PROJ}.weight_scale"
    tiny = np.array([1e-45], np.float32)  # subnormal: 1 / tiny overflows float32
    rewrite(path / "model.safetensors", lambda t: t.__setitem__(name, tiny))
    assert f"'{name}'" in load_error(path)


@pytest.mark.parametrize("corruption", ["truncated", "empty", "garbage header", "huge header length"])
def test_corrupt_safetensors_file(packed_ckpt, corruption):
    path, _ = packed_ckpt
    file = path / "model.safetensors"
    data = file.read_bytes()
    data = {"truncated": data[:-100], "empty": b"", "garbage header": data[:8] + b"#" * 16 + data[24:],
            "huge header length": (1 << 40).to_bytes(8, "little") + data[8:]}[corruption]
    file.write_bytes(data)
    message = load_error(path)
    assert str(file) in message and "corrupt" in message


def _sharded(tmp_path):
    path, _ = write(tmp_path, model("2b4t", seed=10), max_shard_bytes=4096)
    index_file = path / "model.safetensors.index.json"
    return path, index_file, json.loads(index_file.read_text())


def test_index_pointing_to_a_missing_shard(tmp_path):
    path, _, index = _sharded(tmp_path)
    shard = index["weight_map"]["model.norm.weight"]
    (path / shard).unlink()
    message = load_error(path)
    assert shard in message and "does not exist" in message


def test_tensor_listed_in_index_but_absent_from_shard(tmp_path):
    path, _, index = _sharded(tmp_path)
    name = "model.layers.1.post_attention_layernorm.weight"
    shard = index["weight_map"][name]
    rewrite(path / shard, lambda t: t.pop(name))
    message = load_error(path)
    assert f"'{name}'" in message and shard in message and "index" in message


def test_tensor_in_shard_but_not_in_index(tmp_path):
    path, index_file, index = _sharded(tmp_path)
    name = "model.layers.1.post_attention_layernorm.weight"
    shard = index["weight_map"].pop(name)
    index_file.write_text(json.dumps(index))
    message = load_error(path)
    assert f"'{name}'" in message and shard in message


@pytest.mark.parametrize("text", ["{not json", '{"weight_map": []}', '{"weight_map": {"a": "../x.safetensors"}}'])
def test_malformed_index(tmp_path, text):
    path, index_file, _ = _sharded(tmp_path)
    index_file.write_text(text)
    assert "model.safetensors.index.json" in load_error(path)


def test_corrupt_shard_is_named(tmp_path):
    path, _, index = _sharded(tmp_path)
    shard = index["weight_map"]["model.norm.weight"]
    (path / shard).write_bytes(b"\x00" * 4)
    assert shard in load_error(path)


@pytest.mark.parametrize("edit,field", [
    (lambda d: d.update(hidden_act="gelu"), "hidden_act"),
    (lambda d: d.update(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
    (lambda d: d.pop("vocab_size"), "vocab_size"),
    (lambda d: d["quantization_config"].update(linear_class="fp8linear"), "linear_class"),
])
def test_unsupported_config(packed_ckpt, edit, field):
    path, _ = packed_ckpt
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelConfigError) as info:
        load_checkpoint(path)
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, CheckpointConfigError)
    message = str(info.value)
    assert "config.json" in message and field in message and "\n" not in message


def test_config_that_is_not_json(packed_ckpt):
    path, _ = packed_ckpt
    (path / "config.json").write_text("{\n  'single quotes': 1,\n}")
    message = load_error(path)
    assert "config.json" in message and "\n" not in message


# -- writer argument checks --------------------------------------------------------------------------------
def test_writer_refuses_to_overwrite_a_checkpoint(packed_ckpt):
    path, weights = packed_ckpt
    with pytest.raises(FileExistsError, match="model.safetensors"):
        save_checkpoint(weights, path)


@pytest.mark.parametrize("kwargs", [dict(weight_format="gguf"), dict(linear_class="linear"), dict(dtype="int8"),
                                    dict(sub_norm_names="llama"), dict(max_shard_bytes=0)])
def test_writer_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        save_checkpoint(model("2b4t"), tmp_path / "x", **kwargs)
