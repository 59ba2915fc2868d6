"""The LINEAR unit: one ``LINEAR`` instruction, from DRAM and the on-chip buffers to the buffers and the
KV cache, through :class:`~hw.dataflow.fused.FusedLinear`.

Sequence of a command (``docs/isa.md``, ``LINEAR``)
---------------------------------------------------
1. ``QKV`` only: read the RoPE table (``SETUP.rope``, ``head_dim / 2`` uint32) into the RoPE unit.
2. Load the parameter record (:class:`~hw.units.params_loader.ParamsLoader`): norm gain shift, eps
   and the weight scales to registers, the gains to the gain memory.
3. Send the command to the fused core and start the weight read: ``row_tiles * k_steps`` packed words
   from ``weights``, one burst stream through a gearbox (bus words to ``5TN``-bit words).
4. Feed the core: each token's input scale (``2^-16`` for the residual and attention buffers, the gate's
   per-token scale for the FFN buffer) and its ``ceil(k / lanes)`` beats, read from the source buffer
   through ``rd_req`` / ``rd_data`` with the gains beside them. ``RESIDUAL`` then reads the residual
   beats in the core's output order (row tile, then token) on the same port.
5. Route the results: ``RESIDUAL`` writes the updated residual beats back (``wr``, buffer ``X``);
   ``GATE_*`` writes ``h`` (buffer ``H``, one beat per tile pair and token) and forms each token's scale
   of ``h`` with a scalar unit (SiLU: ``sq * sw1 * 2^-16``; ReLU^2: ``(sq * sw0)^2 * (sq * sw1)``, the
   golden order); ``QKV`` writes q vectors (buffer ``Q``) and sends k and v vectors to ``kv`` (the KV
   cache writer) with their position and kv head.
6. ``busy`` falls when every output has left.

Buffer ports
------------
``rd_req`` carries ``(buf, token, index)``; the buffer module answers on ``rd_data`` in order, each word
``lanes`` x 64 bits (narrower buffers sign-extended); the unit requests a beat per cycle and the
buffers refuse requests beyond the answers they can hold (:data:`~hw.units.buffers.ANSWER_PLACES`). ``wr`` carries ``(buf, token, index, data, e)``: ``X`` words are the low 32
bits of each lane, ``H`` words all 64, ``Q`` words the low 8 bits with the vector's exponent ``e``.
Indices: ``X`` / ``ATT`` / ``H`` by ``lanes``-wide beat of a token's vector (``X`` beats are row tiles,
as ``lanes`` equals the TLMM lanes), ``Q`` by ``head * head_dim / lanes + beat``.
"""

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.numerics import RES_FRAC
from golden.tlmm import GROUP_SIZE, INDEX_BITS

from ..arith.dsp import registered_product
from ..arith.tree import shift_add
from ..dataflow.credit_link import CreditLink
from ..dataflow.fused import FusedLinear
from ..dataflow.skid import SkidBuffer
from ..isa import ADDR_BITS, BODIES, GATE_EPILOGUES, RUN_ARGS, Epilogue, ErrorCode, Opcode, Source
from ..memory.axi import AxiBurstReader
from ..memory.bram_fifo import registered_read
from ..memory.gearbox import Gearbox
from ..params import check_int
from ..tlmm.layouts import token_bits
from ..vector.quant_pow2 import E_FIELD_BITS
from ..vector.scalar_unit import E_BITS, MANT_BITS, Op, ScalarUnit, sfloat_layout
from .buffers import ANSWER_PLACES, Buffer, rd_req_layout, wr_layout
from .params_loader import ParamsLoader

__all__ = ["LinearUnit", "Buffer", "rd_req_layout", "wr_layout", "kv_layout", "lg_out_layout", "reciprocal"]


_SOURCE_BUFFER = {Source.RESIDUAL: Buffer.X, Source.ATTENTION: Buffer.ATT, Source.FFN: Buffer.H}


def kv_layout(lanes, pos_bits, max_heads):
    """A k or v vector beat for the KV cache: ``pos``, kv ``head``, ``is_v``, ``beat`` in the vector."""
    return data.StructLayout({"pos": unsigned(pos_bits), "head": unsigned(max(1, max_heads.bit_length())),
                              "is_v": 1, "beat": unsigned(8), "data": unsigned(8 * lanes),
                              "e": unsigned(E_FIELD_BITS), "last": 1})


def lg_out_layout(lanes, max_tokens, max_row_tiles):
    """A beat of logits: ``lanes`` int32 of row tile ``tile`` for token ``token``."""
    return data.StructLayout({"token": unsigned(token_bits(max_tokens)),
                              "tile": unsigned(max(1, max_row_tiles.bit_length())), "data": unsigned(32 * lanes)})


def reciprocal(divisor, max_value):
    """``(m, s)`` with ``(v * m) >> s == v // divisor`` for every ``0 <= v <= max_value``: a constant
    multiplier instead of a divider (``k_steps = ceil(k / 3T)`` with ``3T`` not a power of two). Every
    value is checked."""
    v = np.arange(max_value + 1, dtype=np.int64)
    for s in range(1, 40):
        m = -(-(1 << s) // divisor)
        if ((v * m) >> s == v // divisor).all():
            return m, s
    raise ValueError(f"no reciprocal for {divisor} up to {max_value}")


_Q16 = (1 << (MANT_BITS - 1), -RES_FRAC - (MANT_BITS - 1))   # SFloat 2^-16 as (m, e)
_MAX_PLANES = 8


class LinearUnit(wiring.Component):
    """See the module docstring.

    Parameters
    ----------
    tables, lanes : int
        TLMM geometry (``lanes`` is also the vector lanes of the buffers).
    data_bits : int
        DRAM bus width (power of two, >= 32).
    max_k, max_rows, max_tokens : int
    head_dim : int
    max_heads : int
        Most kv heads (sizes the ``kv`` head field).
    activations : tuple of str
        The gate epilogues built (``vector.activations``); a LINEAR command for another gate faults with
        ``CONFIG_MISMATCH``.
    """

    def __init__(self, *, tables, lanes, data_bits, max_k, max_rows, max_tokens, head_dim, max_heads=64,
                 activations=tuple(GATE_EPILOGUES)):
        owner = "LinearUnit"
        self.tables = check_int("tables", tables, 1, 64, owner)
        self.lanes = check_int("lanes", lanes, 2, 64, owner)
        if lanes & (lanes - 1):
            raise ValueError(f"{owner}: lanes must be a power of two, got {lanes}")
        self.data_bits = check_int("data_bits", data_bits, 32, 1024, owner)
        if data_bits & (data_bits - 1):
            raise ValueError(f"{owner}: data_bits must be a power of two, got {data_bits}")
        self.max_k, self.max_rows = check_int("max_k", max_k, 1, 1 << 17, owner), check_int("max_rows", max_rows, 1,
                                                                                              1 << 20, owner)
        self.max_tokens = check_int("max_tokens", max_tokens, 1, 256, owner)
        self.head_dim = check_int("head_dim", head_dim, 2, 4096, owner)
        self.max_heads = check_int("max_heads", max_heads, 1, 255, owner)
        self.word_bits = INDEX_BITS * tables * lanes
        if self.word_bits % 8:
            raise ValueError(f"{owner}: 5 * tables * lanes must be whole bytes, got {self.word_bits} bits")
        self.max_row_tiles = -(-max_rows // lanes)
        self.max_k_steps = -(-max_k // (GROUP_SIZE * tables))
        self.max_index = max(self.max_row_tiles, -(-max_k // lanes), max_heads * 4 * head_dim // lanes)
        self.kstep_m, self.kstep_s = reciprocal(GROUP_SIZE * tables, max_k + GROUP_SIZE * tables)
        B = data_bits // 8
        self.fused = FusedLinear(tables, lanes, lanes, max_k, max_rows, max_tokens, head_dim=head_dim,
                                 pos_bits=RUN_ARGS["pos"], activations=activations)
        self.activations = self.fused.activations
        self.params = ParamsLoader(data_bits=data_bits, lanes=lanes, max_k=max_k)
        # Up to 8 bit planes per word position (the LM head).
        words_bytes = self.max_row_tiles * self.max_k_steps * _MAX_PLANES * self.word_bits // 8
        self._weights = AxiBurstReader(ADDR_BITS, data_bits, buffer_words=128, max_burst=64, max_outstanding=2,
                                       beats_bits=(-(-words_bytes // B) + 1).bit_length())
        # The RoPE table, and for LOGITS the row scales (4 bytes per row).
        rope_beats = max(-(-2 * head_dim // B), -(-4 * self.max_row_tiles * lanes // B))
        self._rope = AxiBurstReader(ADDR_BITS, data_bits, buffer_words=8, max_burst=8, max_outstanding=2,
                                    beats_bits=(rope_beats + 1).bit_length())
        self.gearbox = Gearbox(data_bits, self.word_bits)
        self.row_gearbox = Gearbox(data_bits, 32 * lanes)      # LM-head row scales, one row tile per word
        super().__init__({
            "cmd": In(stream.Signature(BODIES[Opcode.LINEAR])),
            "logits_cmd": In(stream.Signature(BODIES[Opcode.LOGITS])),
            "all_logits": In(1),
            "setup": In(BODIES[Opcode.SETUP]),
            "n_tokens": In(RUN_ARGS["n_tokens"]),
            "pos": In(RUN_ARGS["pos"]),
            "axi_params": Out(self.params.axi_signature),
            "axi_weights": Out(self._weights.axi_signature),
            "axi_rope": Out(self._rope.axi_signature),
            "rd_req": Out(stream.Signature(rd_req_layout(max_tokens, self.max_index))),
            "rd_data": In(stream.Signature(unsigned(64 * lanes))),
            "wr": Out(stream.Signature(wr_layout(lanes, max_tokens, self.max_index))),
            "kv": Out(stream.Signature(kv_layout(lanes, RUN_ARGS["pos"], max_heads))),
            "lg_out": Out(stream.Signature(lg_out_layout(lanes, max_tokens, self.max_row_tiles))),
            "busy": Out(1),
            "fault": Out(ErrorCode),
        })

    def elaborate(self, platform):
        m = Module()
        N, B = self.lanes, self.data_bits // 8
        m.submodules.fused = fl = self.fused
        m.submodules.params = pl = self.params
        m.submodules.weights = wrd = self._weights
        m.submodules.rope = rrd = self._rope
        m.submodules.gearbox = gb = self.gearbox
        m.submodules.row_gearbox = rgb = self.row_gearbox
        m.submodules.su = su = ScalarUnit(cmd_register=True)
        wiring.connect(m, wiring.flipped(self.axi_params), pl.axi)
        wiring.connect(m, wiring.flipped(self.axi_weights), wrd.axi)
        wiring.connect(m, wiring.flipped(self.axi_rope), rrd.axi)
        M = self.max_tokens
        hb = self.head_dim // N                              # row tiles per head

        # -- command registers ---------------------------------------------------------------------------
        c = Signal(BODIES[Opcode.LINEAR])
        lg = Signal()                                        # executing LOGITS (the LM head)
        planes = Signal(4)
        rows_addr = Signal(ADDR_BITS)
        tok0 = Signal.like(self.n_tokens)                    # first source token (LOGITS of the last only)
        tokens = Signal.like(self.n_tokens)
        pos0 = Signal.like(self.pos)
        row_tiles = Signal(range(self.max_row_tiles + 1))
        k_steps = Signal(range(self.max_k_steps + 1))
        x_beats = Signal(range(-(-self.max_k // N) + 1))
        lgn = N.bit_length() - 1
        # k_steps = ceil(k / 3T) by a constant multiplier, from the registered k (START waits for it); the
        # product is registered in the multiplier block (the shift is wiring). k's field is wider than one
        # block's operand; a command with k > max_k faults before it runs, so max_k's bits suffice. The sum
        # is registered first: from the command register it ran 4.5 ns of route to the block's input
        # (11.11 ns placed on the ECP5 shell at 142dbaf).
        k_sum_value = c.k[:self.max_k.bit_length()] + GROUP_SIZE * self.tables - 1
        k_sum = Signal(k_sum_value.shape(), name="k_sum")
        m.d.sync += k_sum.eq(k_sum_value)
        k_prod = registered_product(m, "k_prod", k_sum, Const(self.kstep_m), platform=platform)
        m.d.comb += k_steps.eq(k_prod >> self.kstep_s)
        # Last-index values of the counters, registered: the compares against them sit in the request
        # and answer handshakes (the command fields settle long before the feed starts).
        x_beats_m1 = Signal.like(x_beats, name="x_beats_m1")
        tokens_m1 = Signal.like(tokens, name="tokens_m1")
        row_tiles_m1 = Signal.like(row_tiles, name="row_tiles_m1")
        m.d.sync += [x_beats_m1.eq(x_beats - 1), tokens_m1.eq(tokens - 1), row_tiles_m1.eq(row_tiles - 1)]
        # The weight read's size: a product of command fields, registered in steps (it is first used
        # several cycles after the command is taken, in WEIGHTS), so no multiplier chain feeds the reader.
        # row_tiles * (k_steps * planes): the 4-bit plane count by shift-add, the one wide product
        # registered in a multiplier block, the constant word size by shift-add.
        w_mult = Signal.like(planes)
        kw = Signal(len(k_steps) + len(planes))
        w_bytes = Signal(ADDR_BITS)
        m.d.sync += [w_mult.eq(Mux(lg, planes, 1)), kw.eq(shift_add(k_steps, w_mult))]
        w_planes = registered_product(m, "w_planes", row_tiles, kw, platform=platform)
        m.d.sync += w_bytes.eq(shift_add(w_planes, Const(self.word_bits // 8)))
        # START waits until these registered products (and w_beats, pad below) have settled: SETTLE
        # cycles after the command fields were loaded (the last, `pad`, loads 7 edges after them).
        SETTLE = 8
        settle = Signal(range(SETTLE + 1))
        settled = Signal()
        m.d.sync += settled.eq(settle == SETTLE)
        with m.If(settle != SETTLE):
            m.d.sync += settle.eq(settle + 1)

        # -- 1. RoPE table -------------------------------------------------------------------------------
        rope_word = Signal(self.data_bits)
        rope_i = Signal(range(self.head_dim // 2 + 1))
        rope_sub = Signal(range(max(2, B // 4 + 1)))
        half = self.head_dim // 2
        m.d.comb += [fl.rope_load.payload.index.eq(rope_i), fl.rope_load.payload.value.eq(
            rope_word.word_select(rope_sub, 32) if B > 4 else rope_word[:32])]
        rs_bytes = Signal(ADDR_BITS)
        rs_beats = Signal.like(rrd.cmd.payload.beats)
        m.d.sync += [rs_bytes.eq(row_tiles * (4 * N)), rs_beats.eq((rs_bytes + B - 1) >> (B.bit_length() - 1))]
        m.d.comb += [rrd.cmd.payload.addr.eq(Mux(lg, rows_addr, self.setup.rope)),
                     rrd.cmd.payload.beats.eq(Mux(lg, rs_beats, -(-(4 * half) // B))),
                     rrd.cmd.payload.tag.eq(0)]
        # LOGITS: row scales {m16, e} per row -> one word of `lanes` rows per row tile.
        rs_pad = Signal.like(rgb.i.payload.pad)
        m.d.sync += rs_pad.eq((rs_beats << (B.bit_length() - 1)) - rs_bytes)
        # `lg` a cycle late, a flip-flop beside the row gearbox (the rows are read states after `lg` is
        # set): `lg` itself, from the command registers, reached the gearbox's enables (12.7 ns placed on
        # the ECP5 shell at cbb845a).
        lg_rows = Signal()
        m.d.sync += lg_rows.eq(lg)
        with m.If(lg_rows):
            m.d.comb += [rgb.i.valid.eq(rrd.data.valid), rrd.data.ready.eq(rgb.i.ready),
                         rgb.i.payload.data.eq(rrd.data.payload.data), rgb.i.payload.flush.eq(rrd.data.payload.last),
                         rgb.i.payload.pad.eq(Mux(rrd.data.payload.last, rs_pad, 0))]
        # The words reach the LM-head epilogue over a credit link: its `rows.ready` is a flip-flop beside
        # the epilogue, and straight into the gearbox's enables it made 11.5 ns placed paths (32 late
        # endpoints on the ECP5 shell at 1fe27f9). A row tile's scales come once per row tile's k-steps.
        m.submodules.rows_link = rows_link = CreditLink(unsigned(32 * N), forward=1, back=1)
        wiring.connect(m, rgb.o, rows_link.i)
        m.d.comb += [fl.rows.valid.eq(rows_link.o.valid), rows_link.o.ready.eq(fl.rows.ready)]
        for n in range(N):
            word = rows_link.o.payload
            m.d.comb += [fl.rows.payload.m16[16 * n:16 * n + 16].eq(word[32 * n:32 * n + 16]),
                         fl.rows.payload.e[16 * n:16 * n + 16].eq(word[32 * n + 16:32 * n + 32])]

        # -- 2/3. params and the fused command ------------------------------------------------------------
        hdr = pl.header
        kind = c.epilogue
        gate = (kind == Epilogue.GATE_SILU) | (kind == Epilogue.GATE_RELU2)
        cfg = fl.cfg.payload
        m.d.comb += [
            pl.cmd.payload.addr.eq(c.params), pl.cmd.payload.k.eq(c.k),
            cfg.core.n.eq(c.k), cfg.core.k_steps.eq(k_steps), cfg.core.row_tiles.eq(row_tiles),
            cfg.core.tokens.eq(tokens), cfg.core.shift.eq(hdr.shift), cfg.core.eps.eq(hdr.eps),
            cfg.core.sw0.eq(hdr.sw0), cfg.core.sw1.eq(hdr.sw1), cfg.core.sw2.eq(hdr.sw2),
            cfg.core.interleave.eq(gate),
            # Only QKV has scale groups by row tile; for the others every tile is group 0 (sw0).
            cfg.core.bound0.eq(Mux(kind == Epilogue.QKV, c.bound0, row_tiles)),
            cfg.core.bound1.eq(Mux(kind == Epilogue.QKV, c.bound1, row_tiles)),
            cfg.epilogue.eq(kind), cfg.pos.eq(pos0), cfg.logits.eq(lg), cfg.core.planes.eq(Mux(lg, planes, 1)),
        ]
        # Weights: one read of the whole matrix; the last bus word's unused bytes are padding.
        w_beats = Signal.like(wrd.cmd.payload.beats)
        m.d.sync += w_beats.eq((w_bytes + B - 1) >> (B.bit_length() - 1))
        m.d.comb += [wrd.cmd.payload.addr.eq(c.weights), wrd.cmd.payload.beats.eq(w_beats),
                     wrd.cmd.payload.tag.eq(0)]
        pad = Signal.like(gb.i.payload.pad)
        m.d.sync += pad.eq((w_beats << (B.bit_length() - 1)) - w_bytes)
        m.d.comb += [gb.i.valid.eq(wrd.data.valid), wrd.data.ready.eq(gb.i.ready),
                     gb.i.payload.data.eq(wrd.data.payload.data), gb.i.payload.flush.eq(wrd.data.payload.last),
                     gb.i.payload.pad.eq(Mux(wrd.data.payload.last, pad, 0))]
        # Weight words over a credit link (free-running stages, a FIFO at the engine's end): the engine
        # takes a word on a step with `release`, which it reads from the act link's FIFO, so its ready
        # is only known next to the engine. A register slice here had that ready as its enable, 7.9 ns
        # of route away on the ECP5 shell at 183e789 (17.2 ns, 321 late endpoints behind it); the gearbox
        # now sees the link's `ready` flip-flop.
        m.submodules.weights_link = wl = CreditLink(gb.o.payload.shape(), forward=1, back=1)
        wiring.connect(m, gb.o, wl.i)
        wiring.connect(m, wl.o, fl.weights)

        # -- 4. feeding the core ---------------------------------------------------------------------------
        source = Signal(Buffer)
        with m.Switch(c.source):
            for s_, b_ in _SOURCE_BUFFER.items():
                with m.Case(s_):
                    m.d.comb += source.eq(b_)
        m.submodules.h_scale = hs = memory.Memory(shape=sfloat_layout(E_BITS), depth=max(2, M), init=[])
        hs_wr = hs.write_port()
        hs_rd = hs.read_port(domain="comb")
        sx_t = Signal(range(M + 1))
        feeding = Signal()
        m.d.comb += hs_rd.addr.eq(sx_t)
        with m.If(c.source == Source.FFN):
            m.d.comb += fl.sx.payload.eq(hs_rd.data)
        with m.Else():
            m.d.comb += [fl.sx.payload.m.eq(_Q16[0]), fl.sx.payload.e.eq(_Q16[1])]
        # sx_t < tokens, kept as a flip-flop: the core's NormQuant command waits on it, and that command
        # clears NormQuant's 56-bit OR register.
        sx_more = Signal()
        m.d.comb += fl.sx.valid.eq(feeding & sx_more)
        with m.If(fl.sx.valid & fl.sx.ready):
            m.d.sync += [sx_t.eq(sx_t + 1), sx_more.eq(sx_t + 1 < tokens)]

        # Requests: the source's beats for every token, then (RESIDUAL) the residual beats in output order.
        req_t = Signal(range(M + 1))
        req_i = Signal(range(self.max_index + 1))
        req_res = Signal()                     # the request phase has moved on to residual beats
        req_done = Signal()
        # The answers come over a credit link of the unit's own, so `rd_data.ready` is a flip-flop and the
        # unit's ready (the choice between the fused core's x and residual inputs, the gains FIFO's valid)
        # only steps the link's FIFO pointer: it went out to the top level's answer slice (12.14 and
        # 12.62 ns placed on the ECP5 shell at 956eb7e) and, with a register slice here, to that slice's
        # skid flag, which the placer put beside the top's (11.58 and 10.62 ns at 142dbaf). Two cycles
        # per answer, none between them.
        m.submodules.answers = answers = CreditLink(self.rd_data.payload.shape(), forward=1, back=1)
        wiring.connect(m, wiring.flipped(self.rd_data), answers.i)
        rd_data = answers.o
        # Requests not yet answered: the buffers hold ANSWER_PLACES, the top level's slice two, the link
        # its depth.
        outstanding = Signal(range(ANSWER_PLACES + 2 + answers.depth + 1))
        sent, answered = Signal(), Signal()
        m.d.comb += [self.rd_req.valid.eq(feeding & ~req_done),
                     self.rd_req.payload.buf.eq(Mux(req_res, Buffer.X, source)),
                     self.rd_req.payload.token.eq(req_t + tok0), self.rd_req.payload.index.eq(req_i),
                     sent.eq(self.rd_req.valid & self.rd_req.ready),
                     answered.eq(rd_data.valid & rd_data.ready)]
        m.d.sync += outstanding.eq(outstanding + sent - answered)
        with m.If(sent):
            with m.If(~req_res):
                # token-major: beat i of token t
                with m.If(req_i == x_beats_m1):
                    m.d.sync += [req_i.eq(0), req_t.eq(req_t + 1)]
                    with m.If(req_t == tokens_m1):
                        m.d.sync += req_t.eq(0)
                        with m.If(kind == Epilogue.RESIDUAL):
                            m.d.sync += req_res.eq(1)
                        with m.Else():
                            m.d.sync += req_done.eq(1)
                with m.Else():
                    m.d.sync += req_i.eq(req_i + 1)
            with m.Else():
                # tile-major: token t of row tile i
                with m.If(req_t == tokens_m1):
                    m.d.sync += [req_t.eq(0), req_i.eq(req_i + 1)]
                    with m.If(req_i == row_tiles_m1):
                        m.d.sync += req_done.eq(1)
                with m.Else():
                    m.d.sync += req_t.eq(req_t + 1)

        # Answers, in request order: x beats (each with its gains) then residual beats.
        ans_x_left = Signal(range(M * (-(-self.max_k // N)) + 1))
        # The gains are read ahead of the answers, in their order (beats 0 .. x_beats - 1 of each token),
        # into a small FIFO (hw.memory.bram_fifo.registered_read): the block RAM's data passes a register
        # (its output register on ECP5) and no handshake reaches its address. Read at the answer's handshake,
        # the address came from the buffers' answer valid, and the data, 5.8 ns out of the block, went
        # unregistered into the fused core's input slice (10.9 to 15.4 ns placed at 6c79f98). Exactly
        # the command's x answers are read, so the FIFO is empty again when the command ends.
        g_i = Signal(range(-(-self.max_k // N) + 1))    # the next gain word to read
        g_left = Signal.like(ans_x_left)                # reads still to issue
        g_more = Signal()                               # g_left != 0
        g_take = Signal(init=1)                         # the FIFO has room for one more read in flight
        g_issue = Signal()
        m.d.comb += [g_issue.eq(g_more & g_take), pl.gain_addr.eq(g_i), pl.gain_read.eq(g_issue)]
        with m.If(g_issue):
            m.d.sync += [g_i.eq(Mux(g_i == x_beats_m1, 0, g_i + 1)), g_left.eq(g_left - 1), g_more.eq(g_left != 1)]
        gains = stream.Signature(unsigned(16 * N)).create()
        registered_read(m, g_take, g_issue, pl.gain_data, gains)
        xin = fl.x.payload
        for n in range(N):
            m.d.comb += [xin.x[f"lane{n}"].eq(rd_data.payload[64 * n:64 * n + 63]),
                         xin.g[f"lane{n}"].eq(gains.payload[16 * n:16 * n + 16])]
        m.d.comb += fl.res.payload.as_value().eq(Cat(*(rd_data.payload[64 * n:64 * n + 32] for n in range(N))))
        ans_x_nz = Signal()                    # ans_x_left != 0, kept as a register (it steers rd_data)
        with m.If(ans_x_nz):
            m.d.comb += [fl.x.valid.eq(rd_data.valid & gains.valid),
                         rd_data.ready.eq(fl.x.ready & gains.valid)]
        with m.Else():
            m.d.comb += [fl.res.valid.eq(rd_data.valid), rd_data.ready.eq(fl.res.ready)]
        m.d.comb += gains.ready.eq(answered & ans_x_nz)
        with m.If(answered & ans_x_nz):
            m.d.sync += [ans_x_left.eq(ans_x_left - 1), ans_x_nz.eq(ans_x_left != 1)]

        # -- 5. results --------------------------------------------------------------------------------------
        out_a = Signal(range(self.max_index + 1))   # row tile / tile pair / head
        out_t = Signal(range(M + 1))
        out_b = Signal(range(max(2, hb + 1)))
        out_left = Signal(range(M * self.max_row_tiles * max(1, hb) + 2))
        # A result taken is counted off `out_left` a cycle later, from a register: the destinations' ready
        # into the count's adder were 14.3 ns placed paths (23 endpoints, in a trial build). The unit's end
        # (`finished`) waits that cycle.
        result_taken, result_taken_r = Signal(), Signal()
        m.d.sync += result_taken_r.eq(result_taken)
        with m.If(result_taken_r):
            m.d.sync += out_left.eq(out_left - 1)
        w = self.wr.payload
        m.d.comb += w.token.eq(out_t)
        # LOGITS: (row tile, token) beats straight out.
        lo = self.lg_out.payload
        m.d.comb += [lo.token.eq(fl.logits.payload.slot), lo.tile.eq(fl.logits.payload.tile),
                     lo.data.eq(fl.logits.payload.data.as_value()),
                     self.lg_out.valid.eq(fl.logits.valid), fl.logits.ready.eq(self.lg_out.ready)]
        with m.If(self.lg_out.valid & self.lg_out.ready):
            m.d.comb += result_taken.eq(1)
        # Where the results go, registered from the command registers (which settle long before the
        # first result): as gates of `lg` and the kind they steered the write data's multiplexer, and
        # `lg` reached the buffers' write-data register through the epilogue FIFOs' outputs (12.8 ns
        # placed, 66 endpoints, in a trial build).
        to_res, to_h, to_qkv = Signal(), Signal(), Signal()
        m.d.sync += [to_res.eq(~lg & (kind == Epilogue.RESIDUAL)), to_h.eq(~lg & gate),
                     to_qkv.eq(~lg & (kind == Epilogue.QKV))]
        # RESIDUAL (row tile, token) and GATE (tile pair, token): one beat per index and token, tokens
        # innermost; they share the counters.
        with m.If(to_res):
            m.d.comb += [self.wr.valid.eq(fl.residual.valid), fl.residual.ready.eq(self.wr.ready),
                         w.buf.eq(Buffer.X), w.index.eq(out_a)]
            for n in range(N):
                m.d.comb += w.data[64 * n:64 * n + 64].eq(fl.residual.payload[f"lane{n}"].as_signed())
        with m.Elif(to_h):
            m.d.comb += [self.wr.valid.eq(fl.h.valid), fl.h.ready.eq(self.wr.ready), w.buf.eq(Buffer.H),
                         w.index.eq(out_a), w.data.eq(fl.h.payload.as_value())]
        with m.If((to_res | to_h) & self.wr.valid & self.wr.ready):
            m.d.comb += result_taken.eq(1)
            with m.If(out_t == tokens_m1):
                m.d.sync += [out_t.eq(0), out_a.eq(out_a + 1)]
            with m.Else():
                m.d.sync += out_t.eq(out_t + 1)
        # QKV: vectors in (head, token) order, d/N beats each; q heads to Q, k and v to the KV cache. The
        # beats pass a register slice: the destination's ready (chosen by the epilogue kind and the head)
        # ends there instead of rippling into the quantiser's FIFOs in the same cycle.
        # The KV writer and the buffers' write data take the lanes from copies of their own of the slice's
        # register: they sit apart, and one register for both ran 4 ns of route to the buffers' write-data
        # register (11.19 ns placed on the ECP5 shell at 844f344). Two copies, the original unused: Yosys
        # merges the original register into a kept copy (0586f3d had one copy, and the path stayed).
        m.submodules.qkv_slice = qsl = SkidBuffer(fl.qkv.payload.shape(), copy_field="q", copies=2)
        kv_lanes, buf_lanes = qsl.field_copies
        wiring.connect(m, fl.qkv, qsl.i)
        qkv = qsl.o
        q = qkv.payload
        head_tile = Signal(range(self.max_row_tiles + hb + 1))   # first row tile of the current head
        kv_head = Signal(range(self.max_heads + 1))
        # head_tile < bound0 and >= bound1, as registers updated with head_tile (they steer the QKV beats' ready).
        is_q, is_v = Signal(), Signal()
        kvp = self.kv.payload
        m.d.comb += [kvp.pos.eq(pos0 + out_t), kvp.head.eq(kv_head), kvp.is_v.eq(is_v),
                     kvp.beat.eq(out_b), kvp.data.eq(kv_lanes.as_value()), kvp.e.eq(q.e),
                     kvp.last.eq(q.last)]
        with m.If(to_qkv):
            m.d.comb += [w.buf.eq(Buffer.Q), w.index.eq(out_a + out_b), w.e.eq(q.e)]
            for n in range(N):
                m.d.comb += w.data[64 * n:64 * n + 64].eq(buf_lanes[f"lane{n}"].as_signed())
            with m.If(is_q):
                m.d.comb += [self.wr.valid.eq(qkv.valid), qkv.ready.eq(self.wr.ready)]
            with m.Else():
                m.d.comb += [self.kv.valid.eq(qkv.valid), qkv.ready.eq(self.kv.ready)]
            with m.If(qkv.valid & qkv.ready):
                m.d.comb += result_taken.eq(1)
                with m.If(q.last):
                    m.d.sync += out_b.eq(0)
                    with m.If(out_t == tokens_m1):
                        # Next head: q heads are indexed by their first tile (out_a), kv heads counted.
                        nxt = head_tile + hb
                        m.d.sync += [out_t.eq(0), head_tile.eq(nxt), out_a.eq(out_a + hb),
                                     is_q.eq(nxt < c.bound0), is_v.eq(nxt >= c.bound1)]
                        with m.If((nxt == c.bound0) | (nxt == c.bound1)):
                            m.d.sync += kv_head.eq(0)
                        with m.Elif(~is_q):
                            m.d.sync += kv_head.eq(kv_head + 1)
                    with m.Else():
                        m.d.sync += out_t.eq(out_t + 1)
                with m.Else():
                    m.d.sync += out_b.eq(out_b + 1)

        # Scales: every token's sq; GATE turns each into the scale of h (ScalarUnit, golden order).
        sq = Signal(sfloat_layout(E_BITS))
        t1, t2 = Signal(sfloat_layout(E_BITS)), Signal(sfloat_layout(E_BITS))
        sq_t = Signal(range(M + 1))
        sq_left = Signal(range(M + 1))
        cmd = su.cmd.payload
        m.d.comb += [hs_wr.addr.eq(sq_t), hs_wr.data.eq(su.res.payload.value)]
        relu2 = kind == Epilogue.GATE_RELU2
        with m.FSM(name="scale"):
            with m.State("WAIT"):
                m.d.comb += fl.sq.ready.eq(1)
                with m.If(fl.sq.valid):
                    m.d.sync += [sq.eq(fl.sq.payload), sq_left.eq(sq_left - 1)]
                    with m.If(lg):
                        m.next = "MULT"
                    with m.Elif(gate):
                        m.next = "A"
                    with m.Else():
                        m.d.sync += sq_t.eq(sq_t + 1)
            # LOGITS: the token's multiplier (m16, shift) = TO_MULT(sq) for the logits epilogue.
            with m.State("MULT"):
                m.d.comb += [su.cmd.valid.eq(1), cmd.op.eq(Op.TO_MULT), cmd.a.eq(sq)]
                with m.If(su.cmd.ready):
                    m.next = "MULT_RES"
            with m.State("MULT_RES"):
                value = su.res.payload.value
                m.d.comb += [fl.mult.valid.eq(su.res.valid), su.res.ready.eq(fl.mult.ready),
                             fl.mult.payload.slot.eq(sq_t), fl.mult.payload.m16.eq(value.m[:16]),
                             fl.mult.payload.sh.eq(value.e)]
                with m.If(fl.mult.valid & fl.mult.ready):
                    m.d.sync += sq_t.eq(sq_t + 1)
                    m.next = "WAIT"
            # SiLU: A = sq*sw1, B = A * 2^-16 -> h scale. ReLU^2: A = sq*sw0, B = A*A, C = sq*sw1, D = B*C.
            steps = [("A", "B"), ("B", "C"), ("C", "D"), ("D", None)]
            for name, nxt in steps:
                with m.State(name):
                    m.d.comb += su.cmd.valid.eq(1)
                    if name == "A":
                        m.d.comb += [cmd.op.eq(Op.MUL), cmd.a.eq(sq), cmd.b.eq(Mux(relu2, hdr.sw0, hdr.sw1))]
                    elif name == "B":
                        m.d.comb += [cmd.op.eq(Mux(relu2, Op.MUL, Op.SCALE_POW2)), cmd.a.eq(t1), cmd.b.eq(t1),
                                     cmd.k.eq(-RES_FRAC)]
                    elif name == "C":
                        m.d.comb += [cmd.op.eq(Op.MUL), cmd.a.eq(sq), cmd.b.eq(hdr.sw1)]
                    else:
                        m.d.comb += [cmd.op.eq(Op.MUL), cmd.a.eq(t2), cmd.b.eq(t1)]
                    with m.If(su.cmd.ready):
                        m.next = f"{name}_RES"
                with m.State(f"{name}_RES"):
                    m.d.comb += su.res.ready.eq(1)
                    with m.If(su.res.valid):
                        value = su.res.payload.value
                        if name == "D":
                            last = Const(1)
                        elif name == "B":
                            last = ~relu2               # SiLU ends after the 2^-16
                        else:
                            last = Const(0)
                        with m.If(last):
                            m.d.comb += hs_wr.en.eq(1)
                            m.d.sync += sq_t.eq(sq_t + 1)
                            m.next = "WAIT"
                        with m.Else():
                            if name == "A":
                                m.d.sync += t1.eq(value)
                            elif name == "B":
                                m.d.sync += t2.eq(value)
                            elif name == "C":
                                m.d.sync += t1.eq(value)
                            m.next = nxt if nxt else "WAIT"

        # -- the command sequence -----------------------------------------------------------------------------
        # Beat counts of the feed and the results, registered products of the command fields (settled by START).
        ans_total = registered_product(m, "ans_total", tokens, x_beats, platform=platform)
        # (`to_h`: ~lg & gate from a register, which reaches the multiplier block's input on a net of its own.)
        out_total = registered_product(m, "out_total", tokens, Mux(to_h, row_tiles >> 1, row_tiles),
                                       platform=platform)
        all_out = (out_left == 0) & (sq_left == 0) & ~self.kv.valid & ~self.wr.valid & ~self.lg_out.valid
        finished = Signal()
        m.d.sync += finished.eq(req_done & (outstanding == 0) & all_out & wrd.idle & ~wrd.data.valid & ~gb.o.valid
                                & wl.idle & rrd.idle & ~rrd.data.valid & ~rgb.o.valid & rows_link.idle & fl.idle)
        refuse = Signal()                      # the arrived command's shape is refused
        take_logits = Signal()                 # the arrived command is LOGITS
        with m.FSM(name="linear"):
            # A command is checked and taken a cycle after it arrives, from registers: the shape checks
            # of the payload and the accept they decide enabled the unit's 155 command registers, a
            # 12.4 ns placed path on the ECP5 shell at 183e789. The command processor holds `valid` and
            # the payload until `ready`, and dispatches one instruction at a time.
            with m.State("IDLE"):
                m.d.sync += [settle.eq(0), settled.eq(0)]
                lp = self.logits_cmd.payload
                # A gate epilogue this build has no unit for (vector.activations) would never take its beats.
                missing_gate = Const(0)
                for a, ep in GATE_EPILOGUES.items():
                    if a not in self.activations:
                        missing_gate = missing_gate | (self.cmd.payload.epilogue == ep)
                # Shapes (and gates) this build cannot hold are refused (CONFIG_MISMATCH) before anything starts.
                too_big = Mux(self.cmd.valid,
                              (self.cmd.payload.k > self.max_k) | (self.cmd.payload.rows > self.max_rows)
                              | ((self.cmd.payload.epilogue == Epilogue.QKV) & (self.setup.head_dim != self.head_dim))
                              | missing_gate,
                              (lp.k > self.max_k) | (lp.rows > self.max_rows) | (lp.bits < 2) | (lp.bits > _MAX_PLANES))
                m.d.sync += [refuse.eq(too_big), take_logits.eq(~self.cmd.valid)]
                with m.If(self.cmd.valid | self.logits_cmd.valid):
                    m.next = "ACCEPT"
            with m.State("ACCEPT"):
                m.d.comb += [self.cmd.ready.eq(~take_logits), self.logits_cmd.ready.eq(take_logits)]
                with m.If(refuse):
                    m.d.sync += [self.fault.eq(ErrorCode.CONFIG_MISMATCH), self.busy.eq(1)]
                    m.next = "FAULT"
                with m.Elif(~take_logits):
                    m.d.sync += self.fault.eq(ErrorCode.NONE)
                    p = self.cmd.payload
                    m.d.sync += [
                        c.eq(p), lg.eq(0), tokens.eq(self.n_tokens), tok0.eq(0), pos0.eq(self.pos),
                        self.busy.eq(1), row_tiles.eq((p.rows + N - 1) >> lgn),
                        x_beats.eq((p.k + N - 1) >> lgn),
                        rope_i.eq(0), rope_sub.eq(0),
                    ]
                    with m.If(p.epilogue == Epilogue.QKV):
                        m.next = "ROPE_CMD"
                    with m.Else():
                        m.next = "PARAMS_CMD"
                with m.Else():
                    m.d.sync += self.fault.eq(ErrorCode.NONE)
                    p = self.logits_cmd.payload
                    # The LM head reads the residual buffer: every token, or only the last one.
                    m.d.sync += [
                        c.params.eq(p.params), c.weights.eq(p.weights), c.k.eq(p.k), c.source.eq(Source.RESIDUAL),
                        c.epilogue.eq(Epilogue.QKV), c.bound0.eq(0), c.bound1.eq(0), rows_addr.eq(p.row_scales),
                        lg.eq(1), planes.eq(p.bits), pos0.eq(self.pos), self.busy.eq(1),
                        tokens.eq(Mux(self.all_logits, self.n_tokens, 1)),
                        tok0.eq(Mux(self.all_logits, 0, self.n_tokens - 1)),
                        row_tiles.eq((p.rows + N - 1) >> lgn),
                        x_beats.eq((p.k + N - 1) >> lgn),
                    ]
                    m.next = "PARAMS_CMD"
            with m.State("FAULT"):
                # Reported until the command processor has stopped the run; busy falls a cycle later.
                m.d.sync += self.busy.eq(0)
                m.next = "IDLE"
            with m.State("ROPE_CMD"):
                m.d.comb += rrd.cmd.valid.eq(1)
                with m.If(rrd.cmd.ready):
                    m.next = "ROPE_WORD"
            with m.State("ROPE_WORD"):
                m.d.comb += rrd.data.ready.eq(1)
                with m.If(rrd.data.valid):
                    m.d.sync += [rope_word.eq(rrd.data.payload.data), rope_sub.eq(0)]
                    m.next = "ROPE_LOAD"
            with m.State("ROPE_LOAD"):
                m.d.comb += fl.rope_load.valid.eq(rope_i < half)
                with m.If(rope_i < half):
                    m.d.sync += [rope_i.eq(rope_i + 1), rope_sub.eq(rope_sub + 1)]
                    with m.If((rope_sub == B // 4 - 1) & (rope_i + 1 < half)):
                        m.next = "ROPE_WORD"
                with m.Else():
                    m.next = "ROPE_DRAIN"
            with m.State("ROPE_DRAIN"):
                m.d.comb += rrd.data.ready.eq(1)
                with m.If(rrd.idle & ~rrd.data.valid):
                    m.next = "PARAMS_CMD"
            with m.State("PARAMS_CMD"):
                m.d.comb += pl.cmd.valid.eq(1)
                with m.If(pl.cmd.ready):
                    m.next = "PARAMS_WAIT"
            with m.State("PARAMS_WAIT"):
                with m.If(~pl.busy):
                    m.next = "START"
            with m.State("START"):
                # The core's command, then the weight read; counters for the feed and the results.
                m.d.comb += fl.cfg.valid.eq(settled)
                with m.If(fl.cfg.ready & settled):
                    m.d.sync += [
                        g_i.eq(0), g_left.eq(ans_total), g_more.eq(ans_total != 0),
                        sx_t.eq(0), sx_more.eq(tokens != 0), feeding.eq(1),
                        req_t.eq(0), req_i.eq(0), req_res.eq(0), req_done.eq(0),
                        ans_x_left.eq(ans_total), ans_x_nz.eq(ans_total != 0),
                        out_a.eq(0), out_t.eq(0), out_b.eq(0), head_tile.eq(0), kv_head.eq(0),
                        is_q.eq(c.bound0 != 0), is_v.eq(c.bound1 == 0),
                        out_left.eq(out_total), sq_t.eq(0), sq_left.eq(tokens),
                    ]
                    m.next = "WEIGHTS"
            with m.State("WEIGHTS"):
                m.d.comb += wrd.cmd.valid.eq(1)
                with m.If(wrd.cmd.ready):
                    with m.If(lg):
                        m.next = "ROWS"
                    with m.Else():
                        m.next = "RUN"
            with m.State("ROWS"):
                m.d.comb += rrd.cmd.valid.eq(1)
                with m.If(rrd.cmd.ready):
                    m.next = "RUN"
            with m.State("RUN"):
                # The end condition (wide, and it stays true once reached) is registered: busy falls a
                # cycle after the last output has left and the readers have gone idle.
                with m.If(finished):
                    m.d.sync += [feeding.eq(0), self.busy.eq(0)]
                    m.next = "IDLE"
        return m
