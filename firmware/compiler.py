"""Compile an integer model into an accelerator program and a DRAM image.

:func:`compile_model` lays out everything the accelerator reads (``hw/dram_format.py`` records, packed
ternary weights, the bit-serial LM head), the KV cache (``firmware/kv_cache.py``) and an I/O area for the
run arguments, and assembles one program (``hw/isa.py``) that runs a chunk of tokens through the whole
model: one program serves prefill chunks and decode steps, because the token count and position are
run arguments.

Weight packing follows the fused assemblies (``docs/vector-units.md``): q and k rows of each head in
:func:`hw.dataflow.epilogues.qkv_row_order` (whole RoPE pairs per row tile), gate and up rows
tile-interleaved (gate tile j, then up tile j).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from golden.model_int import IntegerModel
from golden.numerics import RowQuant, score_constant
from golden.tlmm import pack_bitserial, pack_ternary
from hw.config import HwConfig
from hw.dataflow.epilogues import qkv_row_order
from hw.dram_format import (embedding_stride, logits_stride, pack_embedding, pack_params, pack_rope, pack_row_scales,
                            x_stash_stride)
from hw.isa import GATE_EPILOGUES, INSTRUCTION_BYTES, Epilogue, Opcode, Source, encode

from .kv_cache import KvCacheLayout

__all__ = ["CompileError", "DramCapacityError", "Region", "CompiledModel", "check_limits", "compile_model",
           "gate_up_order", "session_program", "group_program", "INSTRUCTIONS_PER_LAYER"]

_ATTN_BLOCK = 32
#: LINEAR QKV, ATTEND, LINEAR o_proj, LINEAR gate|up, LINEAR down_proj.
INSTRUCTIONS_PER_LAYER = 5


class CompileError(ValueError):
    """A model that this hardware configuration cannot run, with the reason."""


class DramCapacityError(CompileError):
    """The image (model, KV arena, programs, I/O) is larger than the config's ``dram.capacity_mbytes``."""


@dataclass(frozen=True)
class Region:
    name: str
    addr: int
    size: int


@dataclass
class CompiledModel:
    """A model ready for the accelerator: the DRAM image and where things are in it.

    Attributes
    ----------
    image : bytearray
        The whole DRAM contents at start (KV cache zero, I/O area zero).
    program : int
        Byte address of the program's first instruction.
    regions : dict
        Name -> :class:`Region` (``program``, ``rope``, ``embed``, ``layers.{i}.{linear}.weights`` /
        ``.params``, ``final_norm``, ``lm_head``, ``lm_head.scales``, ``kv_cache`` (the KV arena), ``tokens``,
        ``logits``, and ``program_slots`` and ``x_stash`` (one residual stash per slot) when asked for).
    kv : KvCacheLayout
    max_chunk : int
        Most tokens per run (sizes the token and logits areas).
    """

    image: bytearray
    program: int
    regions: dict
    kv: KvCacheLayout
    max_chunk: int
    vocab: int
    logits_stride: int
    instructions: list = field(default_factory=list)
    #: Program slots (``program_slots`` of :func:`compile_model`): one program copy per session.
    program_slots: int = 0

    @property
    def program_bytes(self):
        return len(self.instructions) * INSTRUCTION_BYTES

    @property
    def layers(self):
        return (len(self.instructions) - 4) // INSTRUCTIONS_PER_LAYER

    def _slot(self, i):
        if not 0 <= i < self.program_slots:
            raise IndexError(f"program slot {i} outside 0..{self.program_slots - 1}")
        return i

    def slot_address(self, i):
        """Byte address of program slot ``i``."""
        return self.regions["program_slots"].addr + self._slot(i) * self.program_bytes

    def stash_address(self, i):
        """Byte address of the residual stash of program slot ``i`` (``max_chunk`` tokens; layer-group runs)."""
        stash = self.regions["x_stash"]
        return stash.addr + self._slot(i) * (stash.size // self.program_slots)

    @property
    def tokens_addr(self):
        return self.regions["tokens"].addr

    @property
    def logits_addr(self):
        return self.regions["logits"].addr


def gate_up_order(inter, lanes):
    """Packing order of a fused gate|up matrix (``2 * inter`` rows, gate first in the model order):
    gate tile j, then up tile j."""
    if inter % lanes:
        raise CompileError(f"intermediate_size {inter} must be a multiple of the TLMM lanes ({lanes}) to "
                           "fuse gate and up tile by tile")
    return [r for j in range(inter // lanes)
            for r in list(range(j * lanes, (j + 1) * lanes)) + list(range(inter + j * lanes, inter + (j + 1) * lanes))]


class _Image:
    def __init__(self, align):
        self.align = align
        self.buf = bytearray()
        self.regions = {}

    def add(self, name, data=b"", size=None, align=None):
        align = self.align if align is None else align
        addr = -(-len(self.buf) // align) * align
        size = len(data) if size is None else size
        self.buf.extend(bytes(addr - len(self.buf)))
        self.buf.extend(bytes(data))
        self.buf.extend(bytes(size - len(data)))
        self.regions[name] = Region(name, addr, size)
        return addr

    def add_parts(self, name, parts, align=None):
        """:meth:`add` of the concatenation of ``parts`` (an iterable of bytes), appended one at a time so
        that a large region is never held twice."""
        align = self.align if align is None else align
        addr = -(-len(self.buf) // align) * align
        self.buf.extend(bytes(addr - len(self.buf)))
        for part in parts:
            self.buf.extend(part)
        self.regions[name] = Region(name, addr, len(self.buf) - addr)
        return addr


#: Rows of the embedding and the LM head packed at a time: packing works in int64 and bit-planes with
#: several full-size temporaries, gigabytes for a 128,256-row vocabulary at once.
_PACK_SLICE_ROWS = 8192


def _embedding_parts(rq, stride):
    """:func:`hw.dram_format.pack_embedding` of a :class:`RowQuant`, in slices of rows (records are
    per row, so the bytes are the same)."""
    for r0 in range(0, len(rq.q), _PACK_SLICE_ROWS):
        sl = slice(r0, r0 + _PACK_SLICE_ROWS)
        yield pack_embedding(RowQuant(q=rq.q[sl], m16=rq.m16[sl], e=rq.e[sl], bits=rq.bits), stride)


def _bitserial_parts(q, bits, tables, lanes):
    """:func:`golden.tlmm.pack_bitserial` of ``q`` in slices of whole row tiles: the stream is
    row-tile-major and row tiles are packed independently, so the bytes are the same."""
    step = max(1, _PACK_SLICE_ROWS // lanes) * lanes
    for r0 in range(0, len(q), step):
        yield pack_bitserial(q[r0:r0 + step], bits, tables, lanes).to_bytes()


def _codes(wt):
    """int8 ternary codes ``(out, in)`` from an IntegerModel's float32 ``(in, out)`` matrix."""
    return np.ascontiguousarray(wt.T).astype(np.int8)


def check_limits(config, hw: HwConfig):
    """Refuse a model the hardware build cannot run (``hw.limits``), naming every value out of range.

    Raises
    ------
    CompileError
    """
    lim, c = hw.limits, config
    problems = []
    if c.head_dim != lim.head_dim:
        problems.append(f"head_dim {c.head_dim} != {lim.head_dim}")
    for what, value, most in (("hidden_size", c.hidden_size, lim.max_hidden),
                              ("intermediate_size", c.intermediate_size, lim.max_intermediate),
                              ("num_attention_heads", c.num_attention_heads, lim.max_heads),
                              ("num_key_value_heads", c.num_key_value_heads, lim.max_kv_heads),
                              ("GQA group", c.num_attention_heads // c.num_key_value_heads, lim.max_group),
                              ("vocab_size", c.vocab_size, lim.max_vocab)):
        if value > most:
            problems.append(f"{what} {value} > {most}")
    if c.hidden_act not in hw.vector.activations:
        problems.append(f"hidden_act {c.hidden_act} not in vector.activations ({', '.join(hw.vector.activations)})")
    if problems:
        raise CompileError(f"the model does not fit hardware config '{hw.name}' (its 'limits' and "
                           "'vector.activations'): "
                           + "; ".join(problems))


def compile_model(model: IntegerModel, hw: HwConfig, *, max_context=None, max_chunk=16, kv_arena_bytes=None,
                  program_slots=0):
    """Lay out ``model`` for ``hw`` and assemble its program (see the module docstring).

    ``kv_arena_bytes`` sizes the ``kv_cache`` region (the KV arena that sessions share,
    ``firmware/kv_manager.py``); it is never smaller than one cache of ``max_context`` positions, which
    the program at ``program`` uses. ``program_slots`` reserves room for that many program copies at the
    end of the image (``program_slots`` region), one per session (:func:`session_program`). Without
    them, the image is exactly the single-session layout.

    Raises
    ------
    CompileError
        If a shape does not suit the configuration (head_dim or intermediate size not a multiple of the
        TLMM lanes, odd lanes, context beyond the configuration's ``max_context``).
    DramCapacityError
        If the whole image is larger than ``hw.dram.capacity_bytes``.
    """
    c = model.config
    T, N = hw.tlmm.tables, hw.tlmm.lanes
    check_limits(c, hw)
    if not 1 <= max_chunk <= hw.limits.max_chunk:
        raise CompileError(f"max_chunk {max_chunk} outside 1..{hw.limits.max_chunk} (limits.max_chunk of '{hw.name}')")
    if N % 2 or c.head_dim % N:
        raise CompileError(f"head_dim {c.head_dim} must be a multiple of the TLMM lanes ({N}), which must be "
                           "even: a row tile holds whole RoPE pairs of one head")
    ctx = hw.max_context if max_context is None else max_context
    if not 1 <= ctx <= hw.max_context:
        raise CompileError(f"max_context {ctx} outside 1..{hw.max_context} (the hardware configuration's)")
    ctx = -(-ctx // _ATTN_BLOCK) * _ATTN_BLOCK
    if not 1 <= max_chunk <= ctx:
        raise CompileError(f"max_chunk {max_chunk} outside 1..{ctx}")
    bus = hw.dram.bus_bytes            # the top level's AXI word (hw/top.py)
    img = _Image(bus * -(-64 // bus))

    n_layers = len(model.layers)
    # Program first: its size is known (SETUP, EMBED, 5 per layer, LOGITS, END).
    n_instr = 2 + INSTRUCTIONS_PER_LAYER * n_layers + 2
    prog = img.add("program", size=n_instr * INSTRUCTION_BYTES)
    rope = img.add("rope", pack_rope(model.rope_freq))
    stride = embedding_stride(c.hidden_size, img.align)
    embed = img.add_parts("embed", _embedding_parts(model.embed, stride))

    qd, kd = c.q_dim, c.kv_dim
    qkv_order = (qkv_row_order(c.num_attention_heads, c.head_dim, N)
                 + [qd + r for r in qkv_row_order(c.num_key_value_heads, c.head_dim, N)]
                 + list(range(qd + kd, qd + 2 * kd)))
    gu_order = gate_up_order(c.intermediate_size, N)
    code = []
    for i, ly in enumerate(model.layers):
        pre = f"layers.{i}."
        qkv = _codes(ly.qkv.wt)[qkv_order]
        w_qkv = img.add(pre + "qkv.weights", pack_ternary(qkv, T, N).to_bytes())
        p_qkv = img.add(pre + "qkv.params", pack_params(ly.g_in, [ly.q_scale, ly.k_scale, ly.v_scale]))
        w_o = img.add(pre + "o_proj.weights", pack_ternary(_codes(ly.o.wt), T, N).to_bytes())
        p_o = img.add(pre + "o_proj.params", pack_params(ly.g_attn_sub, [ly.o.scale]))
        gu = _codes(ly.gate_up.wt)[gu_order]
        w_gu = img.add(pre + "gate_up.weights", pack_ternary(gu, T, N).to_bytes())
        p_gu = img.add(pre + "gate_up.params", pack_params(ly.g_post, [ly.gate_scale, ly.up_scale]))
        w_d = img.add(pre + "down_proj.weights", pack_ternary(_codes(ly.down.wt), T, N).to_bytes())
        p_d = img.add(pre + "down_proj.params", pack_params(ly.g_ffn_sub, [ly.down.scale]))
        gate = GATE_EPILOGUES[c.hidden_act]
        code += [
            (Opcode.LINEAR, dict(epilogue=Epilogue.QKV, source=Source.RESIDUAL, layer=i, weights=w_qkv,
                                 params=p_qkv, k=c.hidden_size, rows=qd + 2 * kd, bound0=qd // N,
                                 bound1=(qd + kd) // N)),
            (Opcode.ATTEND, dict(layer=i)),
            (Opcode.LINEAR, dict(epilogue=Epilogue.RESIDUAL, source=Source.ATTENTION, layer=i, weights=w_o,
                                 params=p_o, k=qd, rows=c.hidden_size, bound0=0, bound1=0)),
            (Opcode.LINEAR, dict(epilogue=gate, source=Source.RESIDUAL, layer=i, weights=w_gu, params=p_gu,
                                 k=c.hidden_size, rows=2 * c.intermediate_size, bound0=0, bound1=0)),
            (Opcode.LINEAR, dict(epilogue=Epilogue.RESIDUAL, source=Source.FFN, layer=i, weights=w_d,
                                 params=p_d, k=c.intermediate_size, rows=c.hidden_size, bound0=0, bound1=0)),
        ]
    final = img.add("final_norm", pack_params(model.g_final))
    lm = model.lm_head
    lm_w = img.add_parts("lm_head", _bitserial_parts(lm.q, lm.bits, T, N))
    lm_s = img.add("lm_head.scales", pack_row_scales(lm))
    kv_base = -(-len(img.buf) // img.align) * img.align
    kv = KvCacheLayout(n_layers, c.num_key_value_heads, c.head_dim, ctx, bus_bytes=bus, base=kv_base)
    arena = kv.total_bytes if kv_arena_bytes is None else max(kv.total_bytes, int(kv_arena_bytes))
    arena = -(-arena // img.align) * img.align
    if img.add("kv_cache", size=arena) != kv_base:
        raise AssertionError("KV cache placement")
    img.add("tokens", size=4 * max_chunk)
    img.add("logits", size=4 * max_chunk * logits_stride(c.vocab_size, N))
    if program_slots:
        img.add("program_slots", size=program_slots * n_instr * INSTRUCTION_BYTES)
        # SAVE_X / LOAD_X move whole lanes-wide beats on whole bus words: align each slot's stash to both.
        stash_align = max(img.align, 4 * N)
        per_slot = -(-max_chunk * x_stash_stride(c.hidden_size, N) // stash_align) * stash_align
        img.add("x_stash", size=program_slots * per_slot, align=stash_align)
    _check_capacity(img, hw)

    score_m, score_s = score_constant(c.head_dim)
    program = [
        (Opcode.SETUP, dict(hidden=c.hidden_size, layers=n_layers, heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
                            head_dim=c.head_dim, max_context=ctx, kv_base=kv_base, rope=rope,
                            score_m=score_m, score_s=score_s)),
        (Opcode.EMBED, dict(table=embed, rows=c.vocab_size, stride=stride)),
        *code,
        (Opcode.LOGITS, dict(params=final, weights=lm_w, row_scales=lm_s, k=c.hidden_size, rows=c.vocab_size,
                             bits=lm.bits)),
        (Opcode.END, {}),
    ]
    assert len(program) == n_instr
    raw = b"".join(encode(op, **f) for op, f in program)
    img.buf[prog:prog + len(raw)] = raw
    cm = CompiledModel(image=img.buf, program=prog, regions=img.regions, kv=kv, max_chunk=max_chunk,
                       vocab=c.vocab_size, logits_stride=logits_stride(c.vocab_size, N), instructions=program,
                       program_slots=program_slots)
    for i in range(program_slots):
        a = cm.slot_address(i)
        img.buf[a:a + len(raw)] = raw
    return cm


def _mib(n):
    return f"{n / (1 << 20):.3f}"


def _check_capacity(img, hw):
    need, cap = len(img.buf), hw.dram.capacity_bytes
    if need <= cap:
        return
    kv = img.regions["kv_cache"].size
    progs = img.regions["program_slots"].size if "program_slots" in img.regions else 0
    raise DramCapacityError(
        f"the model needs {_mib(need)} MiB of DRAM (model {_mib(need - kv - progs)} MiB incl. program and I/O, "
        f"KV arena {_mib(kv)} MiB, session programs {_mib(progs)} MiB); the hardware config '{hw.name}' has "
        f"{_mib(cap)} MiB (dram.capacity_mbytes = {hw.dram.capacity_mbytes})")


def _session_setup(cm, kv_base, max_context):
    arena = cm.regions["kv_cache"]
    if max_context < _ATTN_BLOCK or max_context % _ATTN_BLOCK or max_context > cm.kv.max_context:
        raise CompileError(f"session max_context {max_context} must be a multiple of {_ATTN_BLOCK} in "
                           f"{_ATTN_BLOCK}..{cm.kv.max_context}")
    layout = KvCacheLayout(cm.kv.layers, cm.kv.kv_heads, cm.kv.head_dim, max_context, bus_bytes=cm.kv.bus_bytes,
                           base=kv_base)
    if kv_base < arena.addr or kv_base + layout.total_bytes > arena.addr + arena.size:
        raise CompileError(f"KV region {kv_base:#x}..{kv_base + layout.total_bytes:#x} outside the KV arena "
                           f"{arena.addr:#x}..{arena.addr + arena.size:#x}")
    op, fields = cm.instructions[0]
    assert op is Opcode.SETUP
    return encode(op, **dict(fields, kv_base=kv_base, max_context=max_context))


def session_program(cm: CompiledModel, kv_base, max_context):
    """The program of a session whose KV cache is ``max_context`` positions at ``kv_base``: the compiled
    program with its ``SETUP`` re-encoded (every other instruction is the same bytes).

    Raises
    ------
    CompileError
        If the cache is not a whole number of 32-position blocks, exceeds the compiled context, or does not
        lie inside the KV arena.
    """
    setup = _session_setup(cm, kv_base, max_context)
    rest = bytes(cm.image[cm.program + INSTRUCTION_BYTES:cm.program + cm.program_bytes])
    return setup + rest


def group_program(cm: CompiledModel, kv_base, max_context, first, last, stash, *, logits=True):
    """The program of layers ``first .. last - 1`` of a session (the layer-group prefill, docs/driver.md).

    The run starts from ``EMBED`` when ``first`` is 0 and from ``LOAD_X stash`` otherwise, and ends with
    ``LOGITS`` when ``last`` is the layer count and with ``SAVE_X stash`` otherwise; the layers' own
    instructions are the compiled ones. ``logits=False`` leaves out the final ``LOGITS`` (a prefill chunk
    that is not the prompt's last needs only its KV cache). Running the groups ``[0, g1), [g1, g2), ..., [gk, layers)`` one
    after another on the same tokens and position gives the logits and KV cache of one whole-model run.

    Raises
    ------
    CompileError
        As :func:`session_program`, or if the layer range is empty or outside the model.
    """
    L = cm.layers
    if not (isinstance(first, int) and isinstance(last, int) and 0 <= first < last <= L):
        raise CompileError(f"layer group {first!r}..{last!r} must satisfy 0 <= first < last <= {L}")
    setup = _session_setup(cm, kv_base, max_context)
    ins = cm.instructions
    body = ins[2 + INSTRUCTIONS_PER_LAYER * first:2 + INSTRUCTIONS_PER_LAYER * last]
    head = ins[1] if first == 0 else (Opcode.LOAD_X, dict(addr=stash))
    tail = [ins[-2]] if logits else []
    if last < L:
        tail = [(Opcode.SAVE_X, dict(addr=stash))]
    return setup + b"".join(encode(op, **f) for op, f in [head, *body, *tail, (Opcode.END, {})])
