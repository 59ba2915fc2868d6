"""The accelerator's instruction set, defined once: the gateware decoder views instruction words through
these layouts, and the host assembler (:mod:`firmware.assembler`) and the ISA simulator
(:mod:`golden.isa_sim`) encode and decode with the same layouts. ``docs/isa.md`` describes each
instruction.

An instruction is :data:`INSTRUCTION_BITS` (256) bits, stored little-endian in DRAM, 32 bytes per
instruction: an 8-bit :class:`Opcode` and a 248-bit body whose layout depends on the opcode
(:data:`BODIES`). Unused body bits must be zero.

Run arguments (the token ids, their count, the start position, where logits go and whether every
token's logits or only the last one's are wanted) are not in the program: the driver writes them to
CSRs before each start (:data:`RUN_ARGS`), so one program serves every prefill chunk and decode step.
"""

import enum as py_enum

from amaranth.hdl import unsigned
from amaranth.lib import data, enum

__all__ = [
    "INSTRUCTION_BITS", "INSTRUCTION_BYTES", "ADDR_BITS", "Opcode", "ErrorCode", "RUN_ARGS", "Epilogue",
    "Source", "GATE_EPILOGUES", "BODIES", "instruction_layout", "encode", "decode", "IsaError",
]

INSTRUCTION_BITS = 256
INSTRUCTION_BYTES = INSTRUCTION_BITS // 8
#: DRAM byte addresses.
ADDR_BITS = 32
_OPCODE_BITS = 8
_BODY_BITS = INSTRUCTION_BITS - _OPCODE_BITS


class IsaError(ValueError):
    """An instruction that cannot be encoded or decoded (unknown opcode, field out of range)."""


class Opcode(enum.Enum, shape=_OPCODE_BITS):
    """What an instruction does (``docs/isa.md``)."""

    #: Stop: the command processor raises ``done``.
    END = 0
    #: Model registers: head geometry, KV cache, RoPE table, attention score constant.
    SETUP = 1
    #: Embedding rows of the run's tokens into the residual buffer.
    EMBED = 2
    #: A linear layer with its fused prologue (RMSNorm + quantise) and epilogue.
    LINEAR = 3
    #: Attention of the run's queries over the layer's KV cache.
    ATTEND = 4
    #: Final RMSNorm + bit-serial LM head; logits to DRAM.
    LOGITS = 5
    #: The run's residual-stream vectors from DRAM into the residual buffer (a layer-group run resumes).
    LOAD_X = 6
    #: The residual buffer's vectors to DRAM (a layer-group run stops before the last layer).
    SAVE_X = 7


class ErrorCode(enum.Enum, shape=4):
    """The error CSR after a run (0: none). The command processor stops at the first error."""

    NONE = 0
    #: An instruction word with an unknown opcode or non-zero unused bits.
    ILLEGAL_INSTRUCTION = 1
    #: An address outside DRAM, or a record that does not fit.
    BAD_ADDRESS = 2
    #: The run would write KV cache positions at or beyond ``max_context``.
    CONTEXT_OVERFLOW = 3
    #: A token id at or beyond the embedding table's rows.
    BAD_TOKEN = 4
    #: An instruction whose shape the hardware configuration cannot run (for example too many tokens).
    CONFIG_MISMATCH = 5


#: The run arguments (CSRs written by the driver before ``start``), in CSR order, with their widths.
RUN_ARGS = {"tokens": ADDR_BITS, "n_tokens": 16, "pos": 20, "logits": ADDR_BITS, "all_logits": 1}


class Epilogue(enum.Enum, shape=2):
    """The epilogue of a LINEAR, which also fixes where its result goes."""

    #: q|k|v: RoPE + power-of-two quantise; q to the query buffer, k and v to the layer's KV cache.
    QKV = 0
    #: o_proj / down_proj: dequantise and add to the residual buffer (saturating).
    RESIDUAL = 1
    #: gate|up with SiLU gating, into the FFN buffer.
    GATE_SILU = 2
    #: gate|up with ReLU^2 gating, into the FFN buffer.
    GATE_RELU2 = 3


class Source(enum.Enum, shape=2):
    """The on-chip buffer a LINEAR normalises and multiplies."""

    #: The residual stream (Q.16 int32, scale 2^-16).
    RESIDUAL = 0
    #: The attention output (Q.16 int32, scale 2^-16).
    ATTENTION = 1
    #: The FFN intermediate (int64 with a per-token scale from the gate).
    FFN = 2


#: The gate epilogue of each FFN activation (``config.json``'s ``hidden_act``; ``vector.activations``).
GATE_EPILOGUES = {"silu": Epilogue.GATE_SILU, "relu2": Epilogue.GATE_RELU2}

_ADDR = unsigned(ADDR_BITS)

BODIES = {
    Opcode.END: data.StructLayout({}),
    Opcode.SETUP: data.StructLayout({
        "hidden": unsigned(16),        # residual width
        "layers": unsigned(8),         # layers in the KV cache
        "heads": unsigned(8),
        "kv_heads": unsigned(8),
        "head_dim": unsigned(12),
        "max_context": unsigned(20),   # positions the KV cache holds
        "kv_base": _ADDR,              # the KV cache (firmware.kv_cache.KvCacheLayout)
        "rope": _ADDR,                 # head_dim/2 RoPE phase increments, uint32 each
        "score_m": unsigned(17),       # log2(e)/sqrt(d) ~ score_m * 2^-score_s
        "score_s": unsigned(6),
    }),
    Opcode.EMBED: data.StructLayout({
        "table": _ADDR,                # rows {m16: u16, e: i16} + hidden int16 values, `stride` apart
        "rows": unsigned(24),          # vocabulary size (token ids are checked against it)
        "stride": unsigned(20),        # bytes from one row to the next (rows start bus-aligned)
    }),
    Opcode.LINEAR: data.StructLayout({
        "epilogue": Epilogue,
        "source": Source,
        "layer": unsigned(8),          # QKV: the KV cache layer written
        "weights": _ADDR,              # packed ternary words (golden.tlmm.pack_ternary), row tile major
        "params": _ADDR,               # the parameter record (docs/isa.md)
        "k": unsigned(17),             # input length
        "rows": unsigned(20),          # output rows (q|k|v or gate|up counted together)
        "bound0": unsigned(16),        # QKV: first k row tile; otherwise 0
        "bound1": unsigned(16),        # QKV: first v row tile; otherwise 0
    }),
    Opcode.ATTEND: data.StructLayout({
        "layer": unsigned(8),
    }),
    Opcode.LOGITS: data.StructLayout({
        "params": _ADDR,               # parameter record of the final norm (no weight scales)
        "weights": _ADDR,              # bit-serial packed LM head (golden.tlmm.pack_bitserial)
        "row_scales": _ADDR,           # per row {m16: u16, e: i16}
        "k": unsigned(17),
        "rows": unsigned(24),          # vocabulary size
        "bits": unsigned(4),
    }),
    # Residual stash (hw.dram_format.x_stash_stride): token t's int32 vector at addr + t * stride.
    Opcode.LOAD_X: data.StructLayout({
        "addr": _ADDR,
    }),
    Opcode.SAVE_X: data.StructLayout({
        "addr": _ADDR,
    }),
}

for _op, _body in BODIES.items():
    assert _body.size <= _BODY_BITS, f"{_op.name} body is {_body.size} bits"


def instruction_layout():
    """The instruction word: ``opcode`` and a ``body`` union with one member per opcode (lower case)."""
    return data.StructLayout({
        "opcode": Opcode,
        "body": data.UnionLayout({op.name.lower(): body for op, body in BODIES.items()}),
    })


def _check_fields(op, fields):
    layout = BODIES[op]
    names = set(layout.members)
    unknown = set(fields) - names
    if unknown:
        raise IsaError(f"{op.name} has no field(s) {sorted(unknown)}; fields are {sorted(names)}")
    missing = names - set(fields)
    if missing:
        raise IsaError(f"{op.name} needs field(s) {sorted(missing)}")
    for name, value in fields.items():
        shape = layout.members[name]
        if isinstance(shape, type) and issubclass(shape, py_enum.Enum):
            if not isinstance(value, shape):
                raise IsaError(f"{op.name}.{name} must be a {shape.__name__}, got {value!r}")
            continue
        width = shape.width
        if not isinstance(value, int) or isinstance(value, bool):
            raise IsaError(f"{op.name}.{name} must be an integer, got {value!r}")
        lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if shape.signed else (0, (1 << width) - 1)
        if not lo <= value <= hi:
            raise IsaError(f"{op.name}.{name} = {value} does not fit in {width} bits ({lo}..{hi})")


def encode(op, **fields):
    """The 32 bytes of one instruction; every body field must be given and fit its width."""
    if not isinstance(op, Opcode):
        raise IsaError(f"not an opcode: {op!r}")
    _check_fields(op, fields)
    body = BODIES[op].const(fields).as_bits() if fields else 0
    word = op.value | (body << _OPCODE_BITS)
    return word.to_bytes(INSTRUCTION_BYTES, "little")


def decode(raw):
    """``(Opcode, {field: value})`` of 32 instruction bytes; :class:`IsaError` for an unknown opcode or
    non-zero unused bits."""
    if len(raw) != INSTRUCTION_BYTES:
        raise IsaError(f"an instruction is {INSTRUCTION_BYTES} bytes, got {len(raw)}")
    word = int.from_bytes(bytes(raw), "little")
    code = word & ((1 << _OPCODE_BITS) - 1)
    try:
        op = Opcode(code)
    except ValueError:
        raise IsaError(f"illegal opcode {code:#04x}") from None
    layout = BODIES[op]
    body = word >> _OPCODE_BITS
    if body >> layout.size:
        raise IsaError(f"{op.name}: unused instruction bits are set")
    view = layout.from_bits(body)
    fields = {}
    for name in layout.members:
        value = view[name]
        fields[name] = value if isinstance(value, py_enum.Enum) else int(value)
    return op, fields



