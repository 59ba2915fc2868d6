"""Model configuration read from a Hugging Face BitNet ``config.json``.

Two families are supported and recognised by their fields:

* 1bitLLM ``bitnet_b1_58-large`` / ``-3B``: LLaMA layout, SiLU, float weights quantised at load time.
* Microsoft ``BitNet-b1.58-2B-4T``: ``model_type: bitnet``, ReLU^2, grouped-query attention,
  packed ternary weights described by ``quantization_config``.

Anything the accelerator cannot run exactly (RoPE scaling, biases, other activations) is refused with a
:class:`ModelConfigError` naming the file and field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["ModelConfigError", "ModelConfig", "MODEL_SHAPES"]

SUPPORTED_ACTS = ("silu", "relu2")
SUPPORTED_LINEAR_CLASSES = ("bitlinear", "autobitlinear")


class ModelConfigError(ValueError):
    """A model ``config.json`` is missing a field, malformed, or describes an unsupported model."""


@dataclass(frozen=True)
class ModelConfig:
    """Shapes and hyper-parameters of a BitNet b1.58 decoder-only transformer.

    Attributes
    ----------
    weight_format : str
        ``"float"`` (quantise with absmean at load) or ``"packed"`` (uint8 codes + ``weight_scale``).
    linear_class : str or None
        For packed checkpoints, how ``weight_scale`` is applied: ``"bitlinear"`` divides the output by
        it, ``"autobitlinear"`` multiplies the output by it.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    hidden_act: str
    tie_word_embeddings: bool
    bos_token_id: int | None = None
    eos_token_ids: tuple = ()
    weight_format: str = "float"
    linear_class: str | None = None
    model_type: str = "bitnet"

    def __post_init__(self):
        self.validate()

    # -- derived shapes ------------------------------------------------------------------------------
    @property
    def q_dim(self):
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self):
        return self.num_key_value_heads * self.head_dim

    @property
    def gqa_group(self):
        """Query heads served by one key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    def linear_shapes(self):
        """``{name: (out_features, in_features)}`` of the seven ternary linears of one layer."""
        h, f = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (self.q_dim, h),
            "k_proj": (self.kv_dim, h),
            "v_proj": (self.kv_dim, h),
            "o_proj": (h, self.q_dim),
            "gate_proj": (f, h),
            "up_proj": (f, h),
            "down_proj": (h, f),
        }

    @property
    def ternary_weights_per_token(self):
        return self.num_hidden_layers * sum(o * i for o, i in self.linear_shapes().values())

    def to_dict(self):
        d = asdict(self)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    # -- validation ----------------------------------------------------------------------------------
    def validate(self, source="<config>"):
        def bad(field, msg):
            raise ModelConfigError(f"{source}: field '{field}' {msg}")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, f"= {v!r} must be a positive integer")
        if self.hidden_act not in SUPPORTED_ACTS:
            bad("hidden_act", f"= {self.hidden_act!r} is not supported (supported: {', '.join(SUPPORTED_ACTS)})")
        if self.num_attention_heads % self.num_key_value_heads:
            bad("num_key_value_heads", f"= {self.num_key_value_heads} must divide num_attention_heads "
                f"= {self.num_attention_heads}")
        if self.head_dim % 2:
            bad("head_dim", f"= {self.head_dim} must be even for rotary embeddings")
        if not 8 <= self.head_dim <= 256:
            bad("head_dim", f"= {self.head_dim} is out of range: expected 8..256")
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 1):
            bad("rope_theta", f"= {self.rope_theta!r} must be a number > 1")
        if not (isinstance(self.rms_norm_eps, (int, float)) and 0 < self.rms_norm_eps < 1):
            bad("rms_norm_eps", f"= {self.rms_norm_eps!r} must be in (0, 1)")
        if self.weight_format not in ("float", "packed"):
            bad("weight_format", f"= {self.weight_format!r} must be 'float' or 'packed'")
        if self.weight_format == "packed" and self.linear_class not in SUPPORTED_LINEAR_CLASSES:
            bad("quantization_config.linear_class", f"= {self.linear_class!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_LINEAR_CLASSES)})")
        if self.weight_format == "packed":
            for name, (out, _) in self.linear_shapes().items():
                if out % 4:
                    bad(name, f"output size {out} must be a multiple of 4 for the packed 2-bit layout")

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, data, source="config.json"):
        """Build from the parsed contents of a Hugging Face ``config.json``."""
        if not isinstance(data, dict):
            raise ModelConfigError(f"{source}: top level must be a JSON object")

        def need(key):
            if key not in data:
                raise ModelConfigError(f"{source}: missing field '{key}'")
            return data[key]

        if data.get("rope_scaling") not in (None, {}):
            raise ModelConfigError(f"{source}: field 'rope_scaling' = {data['rope_scaling']!r} is not supported")
        for flag in ("attention_bias", "mlp_bias"):
            if data.get(flag):
                raise ModelConfigError(f"{source}: field '{flag}' = true is not supported (BitNet has no biases)")
        heads = need("num_attention_heads")
        hidden = need("hidden_size")
        head_dim = data.get("head_dim")
        if head_dim is None:
            if not isinstance(hidden, int) or not isinstance(heads, int) or heads < 1 or hidden % heads:
                raise ModelConfigError(f"{source}: field 'head_dim' is missing and hidden_size {hidden!r} "
                                       f"is not a multiple of num_attention_heads {heads!r}")
            head_dim = hidden // heads
        qcfg = data.get("quantization_config")
        weight_format, linear_class = "float", None
        if qcfg:
            if not isinstance(qcfg, dict) or qcfg.get("quant_method") != "bitnet":
                raise ModelConfigError(f"{source}: field 'quantization_config' must have quant_method 'bitnet', "
                                       f"got {qcfg!r}")
            mode = qcfg.get("quantization_mode", "offline")
            if mode != "offline":
                raise ModelConfigError(f"{source}: field 'quantization_config.quantization_mode' = {mode!r} is not "
                                       "supported (only 'offline', i.e. packed ternary weights)")
            weight_format, linear_class = "packed", qcfg.get("linear_class", "bitlinear")
        eos = data.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        act = need("hidden_act")
        act = {"relu_squared": "relu2", "swish": "silu"}.get(act, act)
        cfg_kwargs = dict(
            vocab_size=need("vocab_size"),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size"),
            num_hidden_layers=need("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=data.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            max_position_embeddings=data.get("max_position_embeddings", 2048),
            rope_theta=float(data.get("rope_theta", 10000.0)),
            rms_norm_eps=float(data.get("rms_norm_eps", 1e-5)),
            hidden_act=act,
            tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
            bos_token_id=data.get("bos_token_id"),
            eos_token_ids=eos_ids,
            weight_format=weight_format,
            linear_class=linear_class,
            model_type=str(data.get("model_type", "bitnet")),
        )
        try:
            obj = cls.__new__(cls)
            for k, v in cfg_kwargs.items():
                object.__setattr__(obj, k, v)
            obj.validate(source)
        except ModelConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ModelConfigError(f"{source}: {exc}") from None
        return obj

    @classmethod
    def from_json_file(cls, path):
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelConfigError(f"{path}: no such file (a model directory needs config.json)") from None
        except json.JSONDecodeError as exc:
            raise ModelConfigError(f"{path}: not valid JSON: {exc}") from None
        return cls.from_hf_dict(data, source=str(path))

    def to_hf_dict(self):
        """A Hugging Face style ``config.json`` mapping for this config (used to write test checkpoints)."""
        d = {
            "architectures": ["BitNetForCausalLM"] if self.weight_format == "packed" else ["BitnetForCausalLM"],
            # transformers loads packed ternary checkpoints only as model_type "bitnet".
            "model_type": "bitnet" if self.weight_format == "packed" else self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "hidden_act": self.hidden_act,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids) if len(self.eos_token_ids) != 1 else self.eos_token_ids[0],
            "torch_dtype": "float32",
        }
        if self.weight_format == "packed":
            d["quantization_config"] = {
                "quant_method": "bitnet",
                "linear_class": self.linear_class,
                "quantization_mode": "offline",
            }
        return d


def _shape(**kw):
    base = dict(max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5, bos_token_id=1,
                eos_token_ids=(2,))
    base.update(kw)
    return ModelConfig(**base)


#: Published model shapes, for benchmarks on random weights of the same size.
MODEL_SHAPES = {
    "bitnet-large": _shape(vocab_size=32002, hidden_size=1536, intermediate_size=4096, num_hidden_layers=24,
                           num_attention_heads=16, num_key_value_heads=16, head_dim=96, hidden_act="silu",
                           tie_word_embeddings=False, model_type="llama"),
    "bitnet-3b": _shape(vocab_size=32002, hidden_size=3200, intermediate_size=8640, num_hidden_layers=26,
                        num_attention_heads=32, num_key_value_heads=32, head_dim=100, hidden_act="silu",
                        tie_word_embeddings=False, model_type="llama"),
    "bitnet-2b4t": _shape(vocab_size=128256, hidden_size=2560, intermediate_size=6912, num_hidden_layers=30,
                          num_attention_heads=20, num_key_value_heads=5, head_dim=128, hidden_act="relu2",
                          tie_word_embeddings=True, max_position_embeddings=4096, rope_theta=500000.0,
                          bos_token_id=128000, eos_token_ids=(128001,), weight_format="packed",
                          linear_class="autobitlinear"),
}
