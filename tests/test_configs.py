"""Hardware and model configs: bundled files load, every bad input names the file, key and allowed range."""

import json

import pytest
import yaml

from golden.model_config import MODEL_SHAPES, ModelConfig, ModelConfigError
from hw.config import ConfigError, HwConfig, available_hw_configs, load_hw_config


def test_bundled_hw_configs():
    assert {"tiny", "ecp5", "tellme-kv260"} <= set(available_hw_configs())
    kv = load_hw_config("tellme-kv260")
    assert kv.tlmm.macs_per_cycle == 1344 and kv.dram.data_bits == 768
    hashes = {load_hw_config(n).config_hash for n in available_hw_configs()}
    assert len(hashes) == len(available_hw_configs())


def _write(tmp_path, data, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def _base():
    return yaml.safe_load(open(load_hw_config("tiny").source))


@pytest.mark.parametrize("mutate,expect", [
    (lambda d: d["tlmm"].__setitem__("tables", 0), r"'tlmm.tables' = 0 is out of range: expected int in \[1, 64\]"),
    (lambda d: d["tlmm"].__setitem__("lanes", "4"), r"'tlmm.lanes' = '4': expected int"),
    (lambda d: d["tlmm"].__setitem__("extra", 1), r"unknown key 'tlmm.extra'"),
    (lambda d: d.__setitem__("colour", "red"), r"unknown key 'colour'"),
    (lambda d: d.pop("dram"), r"missing section 'dram'"),
    (lambda d: d["vector"].pop("lanes"), r"missing key 'vector.lanes'"),
    (lambda d: d["vector"].__setitem__("lanes", 3), r"'vector.lanes' = 3 is out of range: .*power of two"),
    (lambda d: d["dram"].__setitem__("data_bits", 100), r"'dram.data_bits' = 100 is out of range"),
    (lambda d: d["dram"].__setitem__("bandwidth_bytes_per_cycle", 100.0), r"exceeds the port width"),
    (lambda d: d["tlmm"].update(tables=3, lanes=3), r"must be a multiple of 8"),
    (lambda d: d.__setitem__("clock_mhz", True), r"'clock_mhz' = True: expected float"),
    (lambda d: d["vector"].__setitem__("lanes", 8), r"'vector.lanes' = 8 must equal 'tlmm.lanes' = 4"),
    (lambda d: d["attention"].__setitem__("lanes", 6), r"'attention.lanes' = 6 does not suit 'limits.head_dim' = 8"),
    (lambda d: d["limits"].__setitem__("head_dim", 10), r"'limits.head_dim' = 10 must be a multiple of 'tlmm.lanes'"),
    (lambda d: d["limits"].__setitem__("max_group", 9), r"must not exceed 'limits.max_heads' = 8"),
    (lambda d: d.update(max_context=128) or d["limits"].__setitem__("max_chunk", 200),
     r"'limits.max_chunk' = 200 exceeds 'max_context' = 128"),
    (lambda d: d.pop("limits"), r"missing section 'limits'"),
    (lambda d: d["vector"].__setitem__("activations", ["gelu"]), r"'vector.activations' = \['gelu'\]: expected "
     r"a list of distinct names from silu, relu2"),
    (lambda d: d["vector"].__setitem__("activations", []), r"'vector.activations' = \[\]"),
    (lambda d: d["vector"].__setitem__("activations", ["silu", "silu"]), r"distinct names"),
    (lambda d: d["vector"].__setitem__("activations", "silu"), r"'vector.activations' = 'silu'"),
])
def test_bad_hw_config_names_file_and_key(tmp_path, mutate, expect):
    d = _base()
    mutate(d)
    p = _write(tmp_path, d)
    with pytest.raises(ConfigError, match=expect) as ei:
        load_hw_config(p)
    assert str(p) in str(ei.value)


def test_hw_config_unreadable_and_unknown(tmp_path):
    with pytest.raises(ConfigError, match="unknown hardware config 'nope'"):
        load_hw_config("nope")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_hw_config(_write(tmp_path, "a: [1,"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_hw_config(_write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_hw_config(tmp_path / "missing.yaml")


HF_LARGE = {  # the fields of 1bitLLM/bitnet_b1_58-large's config.json
    "architectures": ["BitnetForCausalLM"], "model_type": "llama", "hidden_act": "silu", "hidden_size": 1536,
    "intermediate_size": 4096, "max_position_embeddings": 2048, "num_attention_heads": 16,
    "num_hidden_layers": 24, "num_key_value_heads": 16, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "vocab_size": 32002, "bos_token_id": 1, "eos_token_id": 2,
    "input_bits": 8, "weight_bits": 1, "rope_scaling": None,
}
HF_2B4T = {  # the fields of microsoft/bitnet-b1.58-2B-4T's config.json
    "architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "hidden_act": "relu2", "hidden_size": 2560,
    "intermediate_size": 6912, "max_position_embeddings": 4096, "num_attention_heads": 20,
    "num_hidden_layers": 30, "num_key_value_heads": 5, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "tie_word_embeddings": True, "vocab_size": 128256, "bos_token_id": 128000, "eos_token_id": 128001,
    "head_dim": 128, "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                             "quantization_mode": "offline"},
}


def test_model_configs_from_hf():
    large = ModelConfig.from_hf_dict(HF_LARGE)
    assert large.head_dim == 96 and large.weight_format == "float" and large.hidden_act == "silu"
    assert large.ternary_weights_per_token == MODEL_SHAPES["bitnet-large"].ternary_weights_per_token
    b2 = ModelConfig.from_hf_dict(HF_2B4T)
    assert (b2.gqa_group, b2.weight_format, b2.linear_class, b2.tie_word_embeddings) == (4, "packed",
                                                                                         "autobitlinear", True)
    assert ModelConfig.from_hf_dict(b2.to_hf_dict()) == b2


@pytest.mark.parametrize("change,expect", [
    ({"hidden_act": "gelu"}, r"'hidden_act' = 'gelu' is not supported \(supported: silu, relu2\)"),
    ({"num_key_value_heads": 3}, r"'num_key_value_heads' = 3 must divide num_attention_heads = 16"),
    ({"rope_scaling": {"type": "linear", "factor": 2}}, r"'rope_scaling' .* is not supported"),
    ({"attention_bias": True}, r"'attention_bias' = true is not supported"),
    ({"hidden_size": 1537}, r"'head_dim' is missing and hidden_size 1537"),
    ({"vocab_size": -1}, r"'vocab_size' = -1 must be a positive integer"),
    ({"quantization_config": {"quant_method": "gptq"}}, r"'quantization_config' must have quant_method 'bitnet'"),
    ({"quantization_config": {"quant_method": "bitnet", "linear_class": "foo"}},
     r"'quantization_config.linear_class' = 'foo' is not supported"),
])
def test_bad_model_config(change, expect):
    with pytest.raises(ModelConfigError, match=expect):
        ModelConfig.from_hf_dict({**HF_LARGE, **change}, source="x/config.json")


def test_missing_field_and_bad_json(tmp_path):
    d = dict(HF_LARGE)
    d.pop("vocab_size")
    with pytest.raises(ModelConfigError, match="missing field 'vocab_size'"):
        ModelConfig.from_hf_dict(d)
    p = tmp_path / "config.json"
    p.write_text("{not json")
    with pytest.raises(ModelConfigError, match="not valid JSON"):
        ModelConfig.from_json_file(p)
    p.write_text(json.dumps(HF_2B4T))
    assert ModelConfig.from_json_file(p).num_hidden_layers == 30


def test_table_storage_choice(tmp_path):
    d = _base()
    d["tlmm"]["table_storage"] = "bram"
    with pytest.raises(ConfigError, match=r"'tlmm.table_storage' = 'bram' is not allowed: expected one of lutram, mux"):
        load_hw_config(_write(tmp_path, d))
    d["tlmm"].pop("table_storage")
    assert load_hw_config(_write(tmp_path, d, "b.yaml")).tlmm.table_storage == "lutram"  # the default


def test_activations_choice(tmp_path):
    d = _base()
    assert load_hw_config(_write(tmp_path, d)).vector.activations == ("silu", "relu2")   # the default
    d["vector"]["activations"] = ["relu2"]
    assert load_hw_config(_write(tmp_path, d, "b.yaml")).vector.activations == ("relu2",)
    assert load_hw_config("ecp5").vector.activations == ("silu",)
