"""The ISA simulator: runs an accelerator program on a DRAM image, bit-exactly as the RTL does.

Backend ``isa``, between the integer math model (:mod:`golden.model_int`, backend ``golden``) and the
RTL (backend ``verilator``). Every operand comes from DRAM in its hardware format (``hw/isa.py``
instructions, ``hw/dram_format.py`` records, packed ternary words through the golden TLMM engine model,
the KV cache in ``firmware.kv_cache`` layout) and every result that leaves the chip is written back
there, so a program and image that run here have been laid out right. On-chip state (the residual
stream, the query buffer, the attention output, the FFN intermediate) lives in the simulator as the
buffers of ``docs/isa.md``.

The simulator also counts work: instructions, DRAM bytes read and written, and multiply-accumulates
per kind (:class:`WorkCounts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from firmware.kv_cache import KvCacheError, KvCacheLayout
from hw.dataflow.epilogues import qkv_row_order
from hw.dram_format import (embedding_row_bytes, logits_stride, params_bytes, unpack_embedding_rows,
                            unpack_params, unpack_rope, unpack_row_scales, x_stash_stride)
from hw.isa import GATE_EPILOGUES, INSTRUCTION_BYTES, Epilogue, ErrorCode, IsaError, Opcode, Source, decode

from .attention import attention
from .fixed import round_shift, saturate
from .numerics import (ATTN_KEY_BLOCK, Q16_SCALE, RES_FRAC, dequant_q16, gate_relu2, gate_silu, norm_quant,
                       quant_pow2, residual_add, rope_apply, rope_cos_sin)
from .tlmm import PackedBitSerial, PackedTernary, bitserial_matmul, tlmm_matmul

__all__ = ["IsaRuntimeError", "WorkCounts", "IsaMachine", "MAX_INSTRUCTIONS"]

#: A program that has not ended after this many instructions is reported as hung.
MAX_INSTRUCTIONS = 1 << 20

# LM-head rows unpacked and multiplied at a time (whole row tiles): bounds the memory of the lookup path.
_LM_HEAD_SLICE_ROWS = 8192


class IsaRuntimeError(RuntimeError):
    """The run stopped with an error code (what the RTL reports in its error CSR)."""

    def __init__(self, code: ErrorCode, message, pc=None):
        self.code, self.pc = code, pc
        where = "" if pc is None else f" at instruction {pc:#x}"
        super().__init__(f"{code.name}{where}: {message}")


@dataclass
class WorkCounts:
    """Work done by one or more runs."""

    instructions: int = 0
    dram_read_bytes: int = 0
    dram_write_bytes: int = 0
    ternary_macs: int = 0
    attention_macs: int = 0
    lm_head_macs: int = 0
    by_opcode: dict = field(default_factory=dict)

    def to_dict(self):
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


class IsaMachine:
    """The accelerator as the ISA defines it, on a DRAM image it owns (a ``bytearray``).

    Parameters
    ----------
    dram : bytearray
        The whole DRAM; the machine reads and writes it in place.
    tables, lanes : int
        TLMM geometry the weights were packed for.
    bus_bytes : int
        DRAM bus width (the KV cache layout aligns segments to it).
    activations : tuple of str
        The gate epilogues the build has (``vector.activations``): a LINEAR with another gate stops with
        ``CONFIG_MISMATCH``, as the RTL does.
    """

    def __init__(self, dram, tables, lanes, bus_bytes, activations=tuple(GATE_EPILOGUES)):
        if not isinstance(dram, bytearray):
            raise TypeError("dram must be a bytearray (the machine writes to it)")
        self.dram, self.tables, self.lanes, self.bus_bytes = dram, tables, lanes, bus_bytes
        self.activations = tuple(activations)
        self.work = WorkCounts()
        self.setup = None

    # -- DRAM access -----------------------------------------------------------------------------------
    def _check_read(self, addr, n):
        if addr < 0 or n < 0 or addr + n > len(self.dram):
            raise IsaRuntimeError(ErrorCode.BAD_ADDRESS, f"read of {n} bytes at {addr:#x} outside DRAM "
                                  f"({len(self.dram)} bytes)", self._pc)

    def _read(self, addr, n):
        self._check_read(addr, n)
        self.work.dram_read_bytes += n
        return bytes(self.dram[addr:addr + n])

    def _write(self, addr, data):
        if addr < 0 or addr + len(data) > len(self.dram):
            raise IsaRuntimeError(ErrorCode.BAD_ADDRESS, f"write of {len(data)} bytes at {addr:#x} outside "
                                  "DRAM", self._pc)
        self.work.dram_write_bytes += len(data)
        self.dram[addr:addr + len(data)] = data

    # -- the run ---------------------------------------------------------------------------------------
    def run(self, program, *, tokens, n_tokens, pos, logits, all_logits=True):
        """Execute the program at byte address ``program`` with the run arguments (``hw.isa.RUN_ARGS``).

        Returns the :class:`WorkCounts` of this run (also added to :attr:`work`).
        """
        before = WorkCounts(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in self.work.__dict__.items()})
        self._pc = None
        if n_tokens < 1:
            raise IsaRuntimeError(ErrorCode.CONFIG_MISMATCH, f"n_tokens = {n_tokens}: a run needs a token")
        self.args = dict(n_tokens=n_tokens, pos=pos, logits=logits, all_logits=bool(all_logits))
        self.token_ids = np.frombuffer(self._read(tokens, 4 * n_tokens), "<i4").astype(np.int64)
        self.buffers = {}
        pc = program
        for _ in range(MAX_INSTRUCTIONS):
            self._pc = pc
            raw = self._read(pc, INSTRUCTION_BYTES)
            try:
                op, f = decode(raw)
            except IsaError as e:
                raise IsaRuntimeError(ErrorCode.ILLEGAL_INSTRUCTION, str(e), pc) from None
            self.work.instructions += 1
            self.work.by_opcode[op.name] = self.work.by_opcode.get(op.name, 0) + 1
            if op is Opcode.END:
                break
            getattr(self, f"_op_{op.name.lower()}")(**f)
            pc += INSTRUCTION_BYTES
        else:
            raise IsaRuntimeError(ErrorCode.ILLEGAL_INSTRUCTION, f"no END after {MAX_INSTRUCTIONS} instructions", pc)
        now = self.work
        return WorkCounts(**{k: (getattr(now, k) - getattr(before, k)) if not isinstance(getattr(now, k), dict)
                             else {o: n - before.by_opcode.get(o, 0) for o, n in now.by_opcode.items()}
                             for k in now.__dict__})

    def _need_setup(self):
        if self.setup is None:
            raise IsaRuntimeError(ErrorCode.ILLEGAL_INSTRUCTION, "instruction before SETUP", self._pc)
        return self.setup

    # -- instructions ----------------------------------------------------------------------------------
    def _op_setup(self, hidden, layers, heads, kv_heads, head_dim, max_context, kv_base, rope, score_m, score_s):
        if heads == 0 or kv_heads == 0 or heads % kv_heads or head_dim % self.lanes or head_dim == 0:
            raise IsaRuntimeError(ErrorCode.CONFIG_MISMATCH, f"heads {heads}, kv_heads {kv_heads}, head_dim "
                                  f"{head_dim} do not suit {self.lanes} TLMM lanes", self._pc)
        try:
            kv = KvCacheLayout(layers, kv_heads, head_dim, max_context, self.bus_bytes, kv_base)
        except KvCacheError as e:
            raise IsaRuntimeError(ErrorCode.CONFIG_MISMATCH, str(e), self._pc) from None
        freq = unpack_rope(self._read(rope, 4 * (head_dim // 2)))
        self.setup = dict(hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                          max_context=max_context, kv=kv, freq=freq, score=(score_m, score_s))
        p0, n = self.args["pos"], self.args["n_tokens"]
        if p0 + n > max_context:
            raise IsaRuntimeError(ErrorCode.CONTEXT_OVERFLOW, f"positions {p0}..{p0 + n - 1} beyond the KV "
                                  f"cache's {max_context}", self._pc)

    def _op_embed(self, table, rows, stride):
        s = self._need_setup()
        ids = self.token_ids
        bad = (ids < 0) | (ids >= rows)
        if bad.any():
            raise IsaRuntimeError(ErrorCode.BAD_TOKEN, f"token id {int(ids[bad][0])} outside 0..{rows - 1}",
                                  self._pc)
        rb = embedding_row_bytes(s["hidden"])
        if stride < rb:
            raise IsaRuntimeError(ErrorCode.CONFIG_MISMATCH, f"EMBED stride {stride} < row size {rb}", self._pc)
        raw = b"".join(self._read(table + int(t) * stride, rb) for t in ids)
        q, m16, e = unpack_embedding_rows(raw, s["hidden"])
        self.buffers["x"] = saturate(round_shift(q * m16[:, None], -(e[:, None] + RES_FRAC)), 32)

    def _source(self, source):
        name = {Source.RESIDUAL: "x", Source.ATTENTION: "att", Source.FFN: "h"}[source]
        if name not in self.buffers:
            raise IsaRuntimeError(ErrorCode.ILLEGAL_INSTRUCTION, f"{source.name} buffer read before written",
                                  self._pc)
        vals = self.buffers[name]
        scale = self.buffers["h_scale"] if source is Source.FFN else Q16_SCALE
        return vals, scale

    def _matmul(self, xq, weights, rows, k):
        row_tiles = -(-rows // self.lanes)
        k_steps = -(-(-(-k // 3)) // self.tables)
        word = 5 * self.tables * self.lanes // 8
        raw = self._read(weights, row_tiles * k_steps * word)
        packed = PackedTernary.from_bytes(raw, rows, k, self.tables, self.lanes)
        self.work.ternary_macs += xq.shape[0] * rows * k
        return tlmm_matmul(xq.astype(np.int8), packed).astype(np.int64)

    def _op_linear(self, epilogue, source, layer, weights, params, k, rows, bound0, bound1):
        s = self._need_setup()
        x, sx = self._source(source)
        if x.shape[1] != k:
            raise IsaRuntimeError(ErrorCode.CONFIG_MISMATCH, f"LINEAR k = {k} but the {source.name} buffer "
                                  f"holds {x.shape[1]} values per token", self._pc)
        gain, sw = unpack_params(self._read(params, params_bytes(k)), k)
        xq, sq = norm_quant(x, sx, gain)
        acc = self._matmul(xq, weights, rows, k)
        N = self.lanes
        if epilogue is Epilogue.RESIDUAL:
            if rows != self.buffers["x"].shape[1]:
                raise IsaRuntimeError(ErrorCode.CONFIG_MISMATCH, f"RESIDUAL rows {rows} != residual width "
                                      f"{self.buffers['x'].shape[1]}", self._pc)
            self.buffers["x"] = residual_add(self.buffers["x"], dequant_q16(acc, sq.mul(sw[0])))
        elif epilogue in (Epilogue.GATE_SILU, Epilogue.GATE_RELU2):
            act = next(a for a, ep in GATE_EPILOGUES.items() if ep is epilogue)
            if act not in self.activations:
                raise IsaRuntimeError(ErrorCode.CONFIG_MISMATCH, f"LINEAR gate {act}: this build has no {act} "
                                      f"epilogue (activations {', '.join(self.activations)})", self._pc)
            if rows % (2 * N):
                raise IsaRuntimeError(ErrorCode.CONFIG_MISMATCH, f"gate|up rows {rows} not whole tile pairs",
                                      self._pc)
            t = acc.reshape(acc.shape[0], rows // (2 * N), 2, N)
            ag, au = t[:, :, 0, :].reshape(acc.shape[0], -1), t[:, :, 1, :].reshape(acc.shape[0], -1)
            fn = gate_silu if epilogue is Epilogue.GATE_SILU else gate_relu2
            self.buffers["h"], self.buffers["h_scale"] = fn(ag, sq.mul(sw[0]), au, sq.mul(sw[1]))
        else:
            self._qkv(s, acc, sq, sw, layer, bound0, bound1, rows)

    def _qkv(self, s, acc, sq, sw, layer, bound0, bound1, rows):
        h, hkv, d, N = s["heads"], s["kv_heads"], s["head_dim"], self.lanes
        qd, kd = bound0 * N, (bound1 - bound0) * N
        if qd != h * d or kd != hkv * d or rows != qd + 2 * kd:
            raise IsaRuntimeError(ErrorCode.CONFIG_MISMATCH, f"QKV rows {rows} / bounds {bound0}, {bound1} do "
                                  f"not match {h} heads, {hkv} kv heads of {d}", self._pc)
        t = acc.shape[0]
        p0 = self.args["pos"]
        pos = np.arange(p0, p0 + t)
        cos, sin = rope_cos_sin(pos, s["freq"])
        within = np.array(qkv_row_order(1, d, N))
        inv = np.argsort(within)

        def rotated(part, nh, scale):
            packed = dequant_q16(part, sq.mul(scale)).reshape(t, nh, d)
            q8, e = quant_pow2(rope_apply(packed[..., inv], cos, sin))
            return q8[..., within], e   # back in the packed element order, as the RTL emits them

        q8, qe = rotated(acc[:, :qd], h, sw[0])
        k8, ke = rotated(acc[:, qd:qd + kd], hkv, sw[1])
        v8, ve = quant_pow2(dequant_q16(acc[:, qd + kd:], sq.mul(sw[2])).reshape(t, hkv, d))
        self.buffers["q"] = (q8, qe)
        kv = s["kv"]
        if layer >= kv.layers:
            raise IsaRuntimeError(ErrorCode.BAD_ADDRESS, f"layer {layer} beyond the KV cache", self._pc)
        for i, p in enumerate(pos):
            for addr, data in kv.token_writes(layer, int(p), k8[i], ke[i], v8[i], ve[i]):
                self._write(addr, data)

    def _op_attend(self, layer):
        s = self._need_setup()
        if "q" not in self.buffers:
            raise IsaRuntimeError(ErrorCode.ILLEGAL_INSTRUCTION, "ATTEND before a QKV LINEAR", self._pc)
        kv, d = s["kv"], s["head_dim"]
        q8, qe = self.buffers["q"]
        t = q8.shape[0]
        p0 = self.args["pos"]
        end = p0 + t
        blocks = -(-end // ATTN_KEY_BLOCK)
        k8 = np.zeros((end, kv.kv_heads, d), np.int64)
        v8 = np.zeros_like(k8)
        ke = np.zeros((end, kv.kv_heads), np.int64)
        ve = np.zeros_like(ke)
        # The engines read whole segments (exponents, K rows, V rows of 32 positions) per kv head.
        for hd in range(kv.kv_heads):
            for b in range(blocks):
                seg = np.frombuffer(self._read(kv.segment_address(layer, hd, b), kv.segment_bytes), np.uint8)
                p_lo, p_hi = b * ATTN_KEY_BLOCK, min(end, (b + 1) * ATTN_KEY_BLOCK)
                n = p_hi - p_lo
                x = kv.exp_rows * d
                ke[p_lo:p_hi, hd] = seg[:n]
                ve[p_lo:p_hi, hd] = seg[ATTN_KEY_BLOCK:ATTN_KEY_BLOCK + n]
                k8[p_lo:p_hi, hd] = seg[x:x + n * d].astype(np.int8).reshape(n, d)
                vo = x + ATTN_KEY_BLOCK * d
                v8[p_lo:p_hi, hd] = seg[vo:vo + n * d].astype(np.int8).reshape(n, d)
        pos = np.arange(p0, end)
        self.work.attention_macs += 2 * d * s["heads"] * int((pos + 1).sum())
        self.buffers["att"] = attention(q8, qe, pos, k8, ke, v8, ve, d)

    def _op_logits(self, params, weights, row_scales, k, rows, bits):
        self._need_setup()
        x = self.buffers["x"]
        if not self.args["all_logits"]:
            x = x[-1:]
        gain, _ = unpack_params(self._read(params, params_bytes(k)), k)
        xq, sq = norm_quant(x, Q16_SCALE, gain)
        N = self.lanes
        row_tiles = -(-rows // N)
        k_steps = -(-(-(-k // 3)) // self.tables)
        word = 5 * self.tables * N // 8
        tile_bytes = k_steps * bits * word   # the stream is row-tile-major: one row tile's words in a row
        self._check_read(weights, row_tiles * tile_bytes)
        # Row tiles are independent, so the matrix runs in slices of row tiles: a full-size LM head
        # (128,256 x 2560) unpacked at once would take gigabytes of indices and lookups.
        xq8 = xq.astype(np.int8)
        acc = np.empty((xq.shape[0], rows), np.int64)
        step = max(1, _LM_HEAD_SLICE_ROWS // N)
        for rt0 in range(0, row_tiles, step):
            rt1 = min(row_tiles, rt0 + step)
            r0, r1 = rt0 * N, min(rows, rt1 * N)
            raw = self._read(weights + rt0 * tile_bytes, (rt1 - rt0) * tile_bytes)
            packed = PackedBitSerial.from_bytes(raw, r1 - r0, k, self.tables, N, bits=bits)
            acc[:, r0:r1] = bitserial_matmul(xq8, packed)
        self.work.lm_head_macs += x.shape[0] * rows * k
        m16, e = unpack_row_scales(self._read(row_scales, 4 * rows), rows)
        m16q, sh = sq.multiplier()
        out = saturate(round_shift(acc * m16q[:, None] * m16[None, :], sh[:, None] - e[None, :] - RES_FRAC), 32)
        # Each token's logits take whole row tiles (rows padded to a multiple of the lanes, with 0), so
        # the hardware writes whole lanes-wide beats.
        stride = logits_stride(rows, self.lanes)
        padded = np.zeros((out.shape[0], stride), np.int64)
        padded[:, :rows] = out
        self._write(self.args["logits"], padded.astype("<i4").tobytes())

    def _stash_aligned(self, addr):
        # The units move whole lanes-wide beats on whole bus words (docs/isa.md).
        align = max(self.bus_bytes, 4 * self.lanes)
        if addr % align:
            raise IsaRuntimeError(ErrorCode.BAD_ADDRESS, f"residual stash at {addr:#x} is not {align}-byte aligned",
                                  self._pc)

    def _op_load_x(self, addr):
        s = self._need_setup()
        self._stash_aligned(addr)
        n, hidden = self.args["n_tokens"], s["hidden"]
        stride = x_stash_stride(hidden, self.lanes)
        raw = np.frombuffer(self._read(addr, n * stride), "<i4").reshape(n, stride // 4)
        self.buffers["x"] = raw[:, :hidden].astype(np.int64)

    def _op_save_x(self, addr):
        s = self._need_setup()
        if "x" not in self.buffers:
            raise IsaRuntimeError(ErrorCode.ILLEGAL_INSTRUCTION, "SAVE_X before the residual buffer is written",
                                  self._pc)
        self._stash_aligned(addr)
        x = self.buffers["x"]
        padded = np.zeros((x.shape[0], x_stash_stride(s["hidden"], self.lanes) // 4), np.int64)
        padded[:, :x.shape[1]] = x
        self._write(addr, padded.astype("<i4").tobytes())
