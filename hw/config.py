"""The hardware configuration: one validated YAML file drives gateware, golden models, driver and reports.

A hardware config changes speed, never numbers: nothing here may influence a computed value
(see ``docs/numerics.md``). Every field is range-checked on load, and an error names the file, the
key and the allowed values.

Examples
--------
>>> from hw.config import load_hw_config
>>> cfg = load_hw_config("tiny")
>>> cfg.tlmm.macs_per_cycle
48
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import yaml

from .isa import GATE_EPILOGUES

__all__ = [
    "ConfigError",
    "TlmmConfig",
    "DramConfig",
    "WeightBufferConfig",
    "VectorConfig",
    "AttentionConfig",
    "LimitsConfig",
    "HwConfig",
    "CONFIG_DIR",
    "ACTIVATIONS",
    "available_hw_configs",
    "load_hw_config",
]

CONFIG_DIR = Path(__file__).parent / "configs"


#: Gate activations a build can have epilogues for (``vector.activations``).
ACTIVATIONS = tuple(GATE_EPILOGUES)


class ConfigError(ValueError):
    """A configuration file is missing, malformed, or holds a value outside its allowed range."""


def _pow2(v):
    return v > 0 and v & (v - 1) == 0


@dataclass(frozen=True)
class _Field:
    kind: type
    lo: float
    hi: float
    check: object = None  # optional (predicate, description)

    def describe(self):
        if self.kind in (str, tuple):
            return f"str, {self.check[1]}"
        text = f"{self.kind.__name__} in [{self.lo}, {self.hi}]"
        if self.check is not None:
            text += f", {self.check[1]}"
        return text


@dataclass(frozen=True)
class TlmmConfig:
    """Table-lookup ternary matmul engine geometry.

    Parameters
    ----------
    tables : int
        T, activation groups of three looked up per lane per cycle.
    lanes : int
        N, output rows computed in parallel.
    table_storage : str
        ``"lutram"``: tables in distributed RAM, table-stationary (cheapest in LUTs; a 15-cycle fill per
        table set). ``"mux"``: tables in registers, rebuilt every step (no fill, about 2x the LUTs).
        See docs/tlmm-engine.md for the measurements behind the choice. It selects the engine of the
        memory system's weight path (``trillium bench memory``); the whole accelerator's LINEAR unit uses
        the ``mux`` engine for now (docs/tlmm-engine.md, "Not yet in the accelerator").
    """

    tables: int
    lanes: int
    table_storage: str = "lutram"

    _schema = {
        "tables": _Field(int, 1, 64),
        "lanes": _Field(int, 1, 64),
        "table_storage": _Field(str, 0, 0, (lambda v: v in ("lutram", "mux"), "one of lutram, mux")),
    }

    @property
    def macs_per_cycle(self):
        """Peak ternary multiply-accumulates per cycle: 3 x T x N."""
        return 3 * self.tables * self.lanes

    @property
    def word_bits(self):
        """Bits of weight indices consumed per cycle: 5 x T x N."""
        return 5 * self.tables * self.lanes

    @property
    def word_bytes(self):
        return self.word_bits // 8


@dataclass(frozen=True)
class DramConfig:
    """The AXI4 DRAM port and the simulation model behind it.

    Parameters
    ----------
    data_bits : int
        AXI4 data width, a power of two times 8 or a multiple of 64 (768 for three 256-bit ports).
    latency_cycles : int
        Read latency of the simulation DRAM model, in accelerator cycles.
    bandwidth_bytes_per_cycle : float
        Sustained bytes per accelerator cycle of the DRAM behind the port (the roofline's bandwidth).
    capacity_mbytes : int
        DRAM the accelerator may use, in MiB (the board's memory): the model image, the KV caches of every
        session and the token and logits areas must fit.
    """

    data_bits: int
    latency_cycles: int
    bandwidth_bytes_per_cycle: float
    capacity_mbytes: int

    _schema = {
        "data_bits": _Field(int, 16, 1024, (lambda v: v % 64 == 0 or v in (16, 32), "16, 32 or a multiple of 64")),
        "latency_cycles": _Field(int, 1, 1000),
        "bandwidth_bytes_per_cycle": _Field(float, 0.5, 256.0),
        "capacity_mbytes": _Field(int, 1, 4096),
    }

    @property
    def data_bytes(self):
        return self.data_bits // 8

    @property
    def capacity_bytes(self):
        return self.capacity_mbytes << 20

    @property
    def bus_bits(self):
        """The AXI word of the accelerator's top level: ``data_bits`` rounded up to a power of two.

        ``tellme-kv260``'s 768 bits (three 256-bit ports of the KV260) become one 1024-bit port whose
        simulation model is limited to ``bandwidth_bytes_per_cycle``; the compiler aligns the DRAM image and
        the KV cache segments to this word, as the gateware does.
        """
        return 1 << (self.data_bits - 1).bit_length()

    @property
    def bus_bytes(self):
        return self.bus_bits // 8


@dataclass(frozen=True)
class WeightBufferConfig:
    """On-chip weight buffer (ring / double buffer) size."""

    kbytes: int

    _schema = {"kbytes": _Field(int, 1, 65536)}


@dataclass(frozen=True)
class VectorConfig:
    """Fused element-wise units (RMSNorm, quantise, dequantise, RoPE, gating, residual).

    Parameters
    ----------
    lanes : int
        Elements per cycle (equal to ``tlmm.lanes``).
    activations : tuple of str
        The FFN gate activations the build has epilogues for (``silu``: Llama-style BitNet models,
        ``relu2``: BitNet b1.58 2B4T); each costs multipliers (4 to 6 DSPs per lane), so a small build keeps
        only what its models need. A model with another activation is refused by the compiler, and a
        gate command for a missing one faults with ``CONFIG_MISMATCH``.
    """

    lanes: int
    activations: tuple = ACTIVATIONS

    _schema = {"lanes": _Field(int, 1, 64, (_pow2, "a power of two")),
               "activations": _Field(tuple, 1, len(ACTIVATIONS),
                                     (lambda v: set(v) <= set(ACTIVATIONS) and len(set(v)) == len(v),
                                      f"a list of distinct names from {', '.join(ACTIVATIONS)}"))}


@dataclass(frozen=True)
class AttentionConfig:
    """Attention engines: int8 MACs per cycle per dot-product unit and the prefill query tile."""

    lanes: int
    query_block: int

    _schema = {
        # Any width: a row of head_dim bytes is one chunk when lanes >= head_dim (96 lanes for d = 96 leave
        # none idle); narrower lanes must divide head_dim (checked with the limits).
        "lanes": _Field(int, 1, 256),
        "query_block": _Field(int, 1, 64, (_pow2, "a power of two")),
    }


@dataclass(frozen=True)
class LimitsConfig:
    """The largest model a build of the accelerator runs: sizes of on-chip buffers and counters.

    A model within these limits runs on the build with any values; one beyond them is refused by the
    driver before it starts (and by the units, with ``CONFIG_MISMATCH``, if a program asks anyway).

    Parameters
    ----------
    head_dim : int
        The attention head size the build supports (exactly; a multiple of ``tlmm.lanes``).
    max_hidden, max_intermediate : int
        Largest ``hidden_size`` and ``intermediate_size``.
    max_heads, max_kv_heads, max_group : int
        Largest query-head and key/value-head counts and GQA group (``heads / kv_heads``).
    max_vocab : int
        Largest vocabulary (LM-head rows).
    max_chunk : int
        Most tokens per run (prefill chunk): the activation buffers hold this many vectors.
    """

    head_dim: int
    max_hidden: int
    max_intermediate: int
    max_heads: int
    max_kv_heads: int
    max_group: int
    max_vocab: int
    max_chunk: int

    _schema = {
        "head_dim": _Field(int, 2, 256),
        "max_hidden": _Field(int, 1, 16384),
        "max_intermediate": _Field(int, 1, 65536),
        "max_heads": _Field(int, 1, 128),
        "max_kv_heads": _Field(int, 1, 128),
        "max_group": _Field(int, 1, 64),
        "max_vocab": _Field(int, 2, 1 << 20),
        "max_chunk": _Field(int, 1, 256),
    }

    @property
    def q_dim(self):
        """Largest query width, ``max_heads * head_dim``."""
        return self.max_heads * self.head_dim


_SECTIONS = {
    "tlmm": TlmmConfig,
    "dram": DramConfig,
    "weight_buffer": WeightBufferConfig,
    "vector": VectorConfig,
    "attention": AttentionConfig,
    "limits": LimitsConfig,
}
_TOP = {
    "name": None,
    "clock_mhz": _Field(float, 1.0, 1000.0),
    "max_context": _Field(int, 16, 65536, (_pow2, "a power of two")),
}


@dataclass(frozen=True)
class HwConfig:
    """One accelerator configuration. Build it with :func:`load_hw_config`.

    Attributes
    ----------
    name : str
        Config name (the YAML file's stem unless overridden).
    clock_mhz : float
        Target clock, used only to label projections from cycle counts.
    max_context : int
        Largest context (prompt + generated tokens) the KV cache addressing supports.
    """

    name: str
    clock_mhz: float
    max_context: int
    tlmm: TlmmConfig
    dram: DramConfig
    weight_buffer: WeightBufferConfig
    vector: VectorConfig
    attention: AttentionConfig
    limits: LimitsConfig
    source: str = "<dict>"

    def to_dict(self):
        d = asdict(self)
        d.pop("source")
        return d

    @property
    def config_hash(self):
        """32-bit hash of the configuration's content, the value of the accelerator's ID register."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")

    @classmethod
    def from_dict(cls, data, source="<dict>"):
        """Validate a parsed mapping and build the config.

        Raises
        ------
        ConfigError
            Naming ``source``, the offending key and what is allowed.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
        allowed = set(_TOP) | set(_SECTIONS)
        for key in data:
            if key not in allowed:
                raise ConfigError(f"{source}: unknown key '{key}' (allowed: {', '.join(sorted(allowed))})")
        kwargs = {}
        for key, spec in _TOP.items():
            if key not in data:
                raise ConfigError(f"{source}: missing key '{key}'")
            if spec is None:
                if not isinstance(data[key], str) or not data[key]:
                    raise ConfigError(f"{source}: key '{key}' must be a non-empty string")
                kwargs[key] = data[key]
            else:
                kwargs[key] = _check(source, key, data[key], spec)
        for key, section in _SECTIONS.items():
            if key not in data:
                raise ConfigError(f"{source}: missing section '{key}'")
            kwargs[key] = _build_section(source, key, data[key], section)
        cfg = cls(source=source, **kwargs)
        cfg._cross_check()
        return cfg

    def _cross_check(self):
        if (self.tlmm.tables * self.tlmm.lanes) % 8:
            raise ConfigError(
                f"{self.source}: key 'tlmm.tables' x 'tlmm.lanes' = {self.tlmm.tables * self.tlmm.lanes} "
                "must be a multiple of 8 so that a weight word (5 x T x N bits) is whole bytes"
            )
        if self.dram.bandwidth_bytes_per_cycle > self.dram.data_bytes:
            raise ConfigError(
                f"{self.source}: key 'dram.bandwidth_bytes_per_cycle' = {self.dram.bandwidth_bytes_per_cycle} "
                f"exceeds the port width of {self.dram.data_bytes} bytes per cycle"
            )
        if self.vector.lanes != self.tlmm.lanes:
            raise ConfigError(f"{self.source}: key 'vector.lanes' = {self.vector.lanes} must equal 'tlmm.lanes' = "
                              f"{self.tlmm.lanes}: the fused vector path takes one TLMM output beat per cycle")
        lim = self.limits
        if lim.head_dim % self.tlmm.lanes:
            raise ConfigError(f"{self.source}: key 'limits.head_dim' = {lim.head_dim} must be a multiple of "
                              f"'tlmm.lanes' = {self.tlmm.lanes}")
        att, d = self.attention.lanes, lim.head_dim
        chunk = min(att, d)
        if d % chunk or (chunk % self.tlmm.lanes and self.tlmm.lanes % chunk):
            raise ConfigError(f"{self.source}: key 'attention.lanes' = {att} does not suit 'limits.head_dim' = {d}: "
                              f"the attention chunk min(lanes, head_dim) = {chunk} must divide head_dim, and it and "
                              f"'tlmm.lanes' = {self.tlmm.lanes} must divide one another")
        if lim.max_kv_heads > lim.max_heads or lim.max_group > lim.max_heads:
            raise ConfigError(f"{self.source}: keys 'limits.max_kv_heads' and 'limits.max_group' must not exceed "
                              f"'limits.max_heads' = {lim.max_heads}")
        if lim.max_chunk > self.max_context:
            raise ConfigError(f"{self.source}: key 'limits.max_chunk' = {lim.max_chunk} exceeds 'max_context' = "
                              f"{self.max_context}")
        if self.weight_buffer.kbytes * 1024 < 4 * self.tlmm.word_bytes:
            raise ConfigError(
                f"{self.source}: key 'weight_buffer.kbytes' = {self.weight_buffer.kbytes} must hold at least "
                f"4 weight words of {self.tlmm.word_bytes} bytes"
            )


def _check(source, key, value, spec):
    if spec.kind is tuple:
        # A YAML list of strings: its length in [lo, hi], its items checked together.
        if (not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value)
                or not spec.lo <= len(value) <= spec.hi or not spec.check[0](value)):
            raise ConfigError(f"{source}: key '{key}' = {value!r}: expected {spec.check[1]} "
                              f"({spec.lo} to {spec.hi} of them)")
        return tuple(value)
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, spec.kind) or isinstance(value, bool):
        raise ConfigError(f"{source}: key '{key}' = {value!r}: expected {spec.describe()}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: key '{key}' = {value!r}: expected {spec.describe()}")
    if spec.kind is str:
        if spec.check is not None and not spec.check[0](value):
            raise ConfigError(f"{source}: key '{key}' = {value!r} is not allowed: expected {spec.check[1]}")
        return value
    if not (spec.lo <= value <= spec.hi) or (spec.check is not None and not spec.check[0](value)):
        raise ConfigError(f"{source}: key '{key}' = {value!r} is out of range: expected {spec.describe()}")
    return value


def _build_section(source, name, data, section):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: section '{name}' must be a mapping")
    schema = section._schema
    for key in data:
        if key not in schema:
            raise ConfigError(
                f"{source}: unknown key '{name}.{key}' (allowed: {', '.join(f'{name}.{k}' for k in schema)})"
            )
    values = {}
    for f in fields(section):
        if f.name not in data:
            if f.default is not MISSING:
                continue
            raise ConfigError(f"{source}: missing key '{name}.{f.name}'")
        values[f.name] = _check(source, f"{name}.{f.name}", data[f.name], schema[f.name])
    return section(**values)


def available_hw_configs():
    """Names of the bundled hardware configs."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_hw_config(name_or_path):
    """Load and validate a hardware config by bundled name (``tiny``) or by path to a YAML file.

    Raises
    ------
    ConfigError
        For an unknown name, unreadable or malformed YAML, or any invalid key or value.
    """
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(
                f"unknown hardware config '{name_or_path}' (bundled: {', '.join(available_hw_configs())}; "
                "or give a path to a YAML file)"
            )
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read hardware config: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return HwConfig.from_dict(data, source=str(path))
