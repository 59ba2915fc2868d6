"""Linear layers with their epilogue fused: residual add (o_proj, down) and the FFN gate (gate|up).

Both wrap a :class:`~hw.dataflow.linear.LinearCore` and pass its ``cfg``, ``x`` and ``weights`` ports
through; see that module for the command and the beat order (row tile, then token).

:class:`ResidualLinear`
    ``o = residual_add(res, y)``: the ``res`` stream supplies the residual-stream beats in the core's
    output order (beat ``(tile, token)`` holds ``res[token, tile*N : tile*N + N]``).
:class:`GateLinear`
    A fused gate|up matmul whose packed rows alternate row tiles: tile ``2j`` holds gate rows
    ``jN .. jN+N-1`` and tile ``2j+1`` the up rows with the same indices (the host packs them so, and
    sets ``interleave`` with ``sw0`` = gate scale, ``sw1`` = up scale). Every gate beat waits in a
    ``max_tokens``-beat buffer until the up beat of the same token arrives, ``M`` beats later; then
    :class:`~hw.vector.epilogue.GateSilu` (Q.16 gate ``y``, raw up ``acc``) or
    :class:`~hw.vector.epilogue.GateRelu2` (raw ``acc`` both) makes ``h`` (int64), one beat per
    (tile pair, token). Interleaving is what keeps the buffer at one beat per token: with gate rows
    first it would have to hold every gate output of the chunk. The per-token scale of ``h``
    (``s_up * 2^-16`` for SiLU, ``s_gate^2 * s_up`` for ReLU^2) is a scalar-unit job of the command
    that feeds ``h`` to the next norm.
:class:`QkvLinear`
    The fused q|k|v matmul followed by :class:`~hw.vector.rope.RopeUnit` (q and k) and
    :class:`~hw.vector.quant_pow2.QuantPow2`: int8 head vectors with a power-of-two exponent, ready for
    the KV cache and the attention engines (``docs/numerics.md``, "Q, K, V and the KV cache").
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.numerics import RES_FRAC

from ..params import check_int
from ..tlmm.layouts import token_bits
from ..vector.epilogue import GateRelu2, GateSilu, ResidualAdd, _Pipe, vector_layout
from ..vector.quant_pow2 import QuantPow2, quant_out_layout
from ..vector.rope import RopeUnit
from .linear import LinearCore

__all__ = ["ResidualEpilogue", "GateEpilogue", "QkvEpilogue", "LogitsEpilogue", "logits_rows_layout",
           "logits_mult_layout", "ResidualLinear", "GateLinear", "QkvLinear",
           "qkv_row_order", "qkv_cfg_layout"]

_ACTIVATIONS = {"silu": GateSilu, "relu2": GateRelu2}


def _beat_signature(core):
    """The stream of the core's output beats (``acc``, ``y``, ``slot``, ``tile``)."""
    return stream.Signature(core.o.payload.shape())


class ResidualEpilogue(wiring.Component):
    """``o = residual_add(res, y)`` per core beat (o_proj, down_proj).

    Attributes
    ----------
    i : In(stream of the core's beats)
    res : In(stream.Signature(vector_layout(lanes)))
        The residual stream, beat for beat in the core's output order.
    o : Out(stream.Signature(vector_layout(lanes)))
    """

    def __init__(self, beat_signature, lanes):
        self.lanes = lanes
        super().__init__({"i": In(beat_signature), "res": In(stream.Signature(vector_layout(lanes))),
                          "o": Out(stream.Signature(vector_layout(lanes)))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.add = add = ResidualAdd(self.lanes)
        wiring.connect(m, wiring.flipped(self.res), add.x)
        m.d.comb += [add.y.valid.eq(self.i.valid), self.i.ready.eq(add.y.ready),
                     add.y.payload.eq(self.i.payload.y)]
        wiring.connect(m, add.o, wiring.flipped(self.o))
        return m


class GateEpilogue(wiring.Component):
    """SiLU or ReLU^2 gating of tile-interleaved gate|up beats: ``h`` per (tile pair, token).

    Every gate beat (even tile) waits in a one-beat-per-token buffer until the up beat (odd tile) of the
    same token arrives; SiLU takes the dequantised gate, ReLU^2 the exact accumulator
    (``docs/numerics.md``, "Gating").
    """

    def __init__(self, beat_signature, activation, lanes, max_tokens):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.activation, self.lanes, self.max_tokens = activation, lanes, max_tokens
        super().__init__({"i": In(beat_signature), "o": Out(stream.Signature(vector_layout(lanes, 64)))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.gate = gate = _ACTIVATIONS[self.activation](self.lanes)
        beat = self.i.payload
        width = len(beat.y.as_value())
        m.submodules.held = held = memory.Memory(shape=unsigned(width), depth=self.max_tokens, init=[])
        wr = held.write_port()
        rd = held.read_port(domain="comb")
        is_up = beat.tile[0]
        gate_value = beat.y if self.activation == "silu" else beat.acc
        m.d.comb += [
            wr.addr.eq(beat.slot), wr.data.eq(gate_value.as_value()),
            wr.en.eq(self.i.valid & ~is_up),
            rd.addr.eq(beat.slot),
            gate.gate.valid.eq(self.i.valid & is_up), gate.up.valid.eq(self.i.valid & is_up),
            gate.gate.payload.as_value().eq(rd.data), gate.up.payload.eq(beat.acc),
            self.i.ready.eq(~is_up | gate.up.ready),
        ]
        wiring.connect(m, gate.o, wiring.flipped(self.o))
        return m


class QkvEpilogue(wiring.Component):
    """RoPE (indexed mode) and power-of-two quantisation of q|k|v beats (see :class:`QkvLinear`).

    Attributes
    ----------
    i : In(stream of the core's beats)
    pos0 : In(pos_bits)
        Position of the chunk's first token; held by the owner for the whole command.
    load : In(stream.Signature(rope_load_layout(head_dim)))
        With ``loadable``: run-time RoPE frequency writes (see :class:`~hw.vector.rope.RopeUnit`).
    v_from : In(tile bits)
        First v row tile (the core's ``bound1``); held likewise.
    o : Out(stream.Signature(quant_out_layout(lanes, max_tokens)))
    """

    def __init__(self, beat_signature, lanes, max_tokens, *, head_dim, freq_table, pos_bits=16, loadable=False):
        check_int("lanes", lanes, 2, 64)
        check_int("head_dim", head_dim, 2, 4096)
        if lanes % 2 or head_dim % lanes:
            raise ValueError(f"head_dim ({head_dim}) must be a multiple of the lanes ({lanes}), "
                             "which must be even: a row tile holds whole RoPE pairs of one head")
        check_int("pos_bits", pos_bits, 1, 32)
        self.lanes, self.head_dim, self.pos_bits = lanes, head_dim, pos_bits
        self.head_beats = head_dim // lanes
        self.rope = RopeUnit(head_dim, lanes // 2, freq_table, pos_bits=pos_bits, indexed=True,
                             tag_bits=token_bits(max_tokens), loadable=loadable)
        self.quant = QuantPow2(lanes, head_dim, max_tokens)
        tile = beat_signature.members["payload"].shape.members["tile"]
        load = {"load": In(self.rope.load.signature.flip())} if loadable else {}
        super().__init__({"i": In(beat_signature), "pos0": In(pos_bits), "v_from": In(tile),
                          "o": Out(stream.Signature(quant_out_layout(lanes, max_tokens))), **load})

    def elaborate(self, platform):
        m = Module()
        m.submodules.rope = rope = self.rope
        m.submodules.quant = quant = self.quant
        hl = self.lanes // 2
        if self.rope.loadable:
            wiring.connect(m, wiring.flipped(self.load), rope.load)

        # Index of the beat in its head vector, tile mod d/N, followed as tiles go by (beats of a tile
        # are consecutive; a head starts at every d/N-th tile and at tile 0).
        beat = self.i.payload
        prev_tile = Signal.like(beat.tile)
        prev_idx = Signal(range(self.head_beats))
        idx = Signal(range(self.head_beats))
        with m.If(beat.tile == 0):
            m.d.comb += idx.eq(0)
        with m.Elif(beat.tile == prev_tile):
            m.d.comb += idx.eq(prev_idx)
        with m.Else():
            m.d.comb += idx.eq(Mux(prev_idx == self.head_beats - 1, 0, prev_idx + 1))
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [prev_tile.eq(beat.tile), prev_idx.eq(idx)]

        y = beat.y.as_value()
        pairs = rope.pairs.payload
        m.d.comb += [
            pairs.lo.eq(y[:32 * hl]), pairs.hi.eq(y[32 * hl:]),
            pairs.pos.eq(Mux(beat.tile >= self.v_from, 0, self.pos0 + beat.slot)),
            pairs.beat.eq(idx), pairs.tag.eq(beat.slot), pairs.first.eq(idx == 0),
            rope.pairs.valid.eq(self.i.valid), self.i.ready.eq(rope.pairs.ready),
        ]
        rot = rope.rotated.payload
        m.d.comb += [
            quant.i.payload.x.eq(Cat(rot.lo, rot.hi)), quant.i.payload.slot.eq(rot.tag),
            quant.i.valid.eq(rope.rotated.valid), rope.rotated.ready.eq(quant.i.ready),
        ]
        # Head vectors complete, and leave, in order of head, then token: a head's last row tile comes
        # for every token of the chunk before the next head's first tile.
        wiring.connect(m, quant.o, wiring.flipped(self.o))
        return m


def logits_rows_layout(lanes):
    """One row tile's scales: ``m16`` (unsigned 16) and ``e`` (signed 16) per lane (``hw/dram_format.py``)."""
    return data.StructLayout({"m16": unsigned(16 * lanes), "e": unsigned(16 * lanes)})


def logits_mult_layout(max_tokens):
    """A token's activation multiplier ``sq.multiplier()``: ``m16`` and the shift ``sh``."""
    return data.StructLayout({"slot": unsigned(token_bits(max_tokens)), "m16": unsigned(16), "sh": signed(16)})


def logits_out_layout(lanes, beat_signature):
    tile = beat_signature.members["payload"].shape.members["tile"]
    slot = beat_signature.members["payload"].shape.members["slot"]
    return data.StructLayout({"data": vector_layout(lanes, 32), "slot": slot, "tile": tile})


#: Right shifts are clamped as ``golden.fixed.round_shift`` clamps them; a left shift of 32 or more
#: saturates any non-zero product to int32.
_LOGIT_MAX_RIGHT = 62
_LOGIT_MAX_LEFT = 32


class LogitsEpilogue(wiring.Component):
    """LM-head logits: ``saturate32(round_shift(acc * m16(sq) * m16_row, sh(sq) - e_row - 16))`` per lane,
    bit-exact with ``IntegerModel.lm_head_logits``.

    Attributes
    ----------
    i : In(stream of the core's beats)
        (row tile, token) order; ``acc`` is used.
    mult : In(stream.Signature(logits_mult_layout(max_tokens)))
        Each token's ``(m16, sh)``, before or while its beats arrive (a beat waits for its token's); the
        multipliers are forgotten when the command's last beat has gone by, so the next command's may
        come any time after that.
    rows : In(stream.Signature(logits_rows_layout(lanes)))
        One beat per row tile, in tile order: the tile's row scales, taken after the tile's last token.
    tokens, tiles : In
        Tokens per tile and row tiles of this command (held by the owner).
    o : Out(stream.Signature(logits_out_layout(...)))
    """

    def __init__(self, beat_signature, lanes, max_tokens):
        self.lanes, self.max_tokens = lanes, max_tokens
        super().__init__({
            "i": In(beat_signature),
            "mult": In(stream.Signature(logits_mult_layout(max_tokens))),
            "rows": In(stream.Signature(logits_rows_layout(lanes))),
            "tokens": In(token_bits(max_tokens) + 1),
            "tiles": In(beat_signature.members["payload"].shape.members["tile"]),
            "o": Out(stream.Signature(logits_out_layout(lanes, beat_signature))),
        })

    def elaborate(self, platform):
        m = Module()
        N, M = self.lanes, self.max_tokens
        m16q = Array(Signal(16, name=f"m16q_{t}") for t in range(M))
        shq = Array(Signal(signed(16), name=f"shq_{t}") for t in range(M))
        have = Signal(M)
        m.d.comb += self.mult.ready.eq(1)
        with m.If(self.mult.valid):
            m.d.sync += [m16q[self.mult.payload.slot].eq(self.mult.payload.m16),
                         shq[self.mult.payload.slot].eq(self.mult.payload.sh)]
        beat = self.i.payload
        en = Signal()
        m.d.comb += en.eq(~self.o.valid | self.o.ready)
        ready_in = en & self.rows.valid & have.bit_select(beat.slot, 1)
        take = Signal()
        m.d.comb += [self.i.ready.eq(ready_in), take.eq(self.i.valid & ready_in)]
        # The tile's row scales stay at the head of `rows` until its last token's beat has gone by.
        m.d.comb += self.rows.ready.eq(take & (beat.slot == self.tokens - 1))
        set_bits = Signal(M)
        with m.If(self.mult.valid):
            m.d.comb += set_bits.eq(1 << self.mult.payload.slot)
        command_done = take & (beat.slot == self.tokens - 1) & (beat.tile == self.tiles - 1)
        m.d.sync += have.eq(Mux(command_done, 0, have | set_bits))

        pipe = _Pipe(m, en)
        v1 = pipe.valid(take, "v1")
        slot1, tile1 = pipe.reg(beat.slot, "slot1"), pipe.reg(beat.tile, "tile1")
        v2 = pipe.valid(v1, "v2")
        slot2, tile2 = pipe.reg(slot1, "slot2"), pipe.reg(tile1, "tile2")
        lim_hi, lim_lo = (1 << 31) - 1, -(1 << 31)
        outs = []
        for n in range(N):
            acc = beat.acc[f"lane{n}"]
            m16r = self.rows.payload.m16[16 * n:16 * n + 16]
            er = self.rows.payload.e[16 * n:16 * n + 16].as_signed()
            # Stage 1: acc * m16(sq) (48 bits) and the shift.
            p1 = pipe.reg(acc * m16q[beat.slot], f"p1_{n}", signed(49))
            s1 = pipe.reg(shq[beat.slot] - er - RES_FRAC, f"s1_{n}", signed(19))
            r1 = pipe.reg(m16r, f"m16r_{n}", unsigned(16))
            # Stage 2: times m16_row (64 bits), then the rounding shift and int32 saturation.
            p2 = pipe.reg(p1 * r1, f"p2_{n}", signed(66))
            s2 = pipe.reg(s1, f"s2_{n}", signed(19))
            right = Signal(range(_LOGIT_MAX_RIGHT + 1), name=f"right_{n}")
            left = Signal(range(_LOGIT_MAX_LEFT + 1), name=f"left_{n}")
            m.d.comb += [right.eq(Mux(s2 > _LOGIT_MAX_RIGHT, _LOGIT_MAX_RIGHT, Mux(s2 > 0, s2, 0))),
                         left.eq(Mux(-s2 > _LOGIT_MAX_LEFT, _LOGIT_MAX_LEFT, Mux(s2 < 0, -s2, 0)))]
            right_m1 = Signal(range(_LOGIT_MAX_RIGHT), name=f"rm1_{n}")
            m.d.comb += right_m1.eq(right - 1)
            down = Signal(signed(67), name=f"down_{n}")
            m.d.comb += down.eq(((p2 >> right_m1) + 1) >> 1)
            up = Signal(signed(66 + _LOGIT_MAX_LEFT), name=f"up_{n}")
            m.d.comb += up.eq(p2 << left)
            val = Mux(s2 > 0, down, up)
            outs.append(Mux(val > lim_hi, lim_hi, Mux(val < lim_lo, lim_lo, val)))
        with m.If(en):
            m.d.sync += [self.o.valid.eq(v2), self.o.payload.slot.eq(slot2), self.o.payload.tile.eq(tile2)]
            for n in range(N):
                m.d.sync += self.o.payload.data[f"lane{n}"].eq(outs[n])
        return m


class _Wrapped(wiring.Component):
    """A LinearCore with its input ports passed through and its own output port(s)."""

    def __init__(self, core, ports, cfg=None):
        self.core = core
        self.tables, self.lanes, self.vec_lanes = core.tables, core.lanes, core.vec_lanes
        self.max_tokens, self.x_bits = core.max_tokens, core.x_bits
        sig = core.signature.members
        super().__init__({"cfg": cfg or sig["cfg"], "x": sig["x"], "weights": sig["weights"], **ports})

    def _core(self, m, own_cfg=False):
        m.submodules.core = core = self.core
        for name in ("x", "weights") if own_cfg else ("cfg", "x", "weights"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(core, name))
        return core


class ResidualLinear(_Wrapped):
    """``x' = residual_add(res, dequant(TLMM(norm_quant(x))))``: o_proj and down_proj.

    Parameters
    ----------
    tables, lanes, vec_lanes, max_k, max_rows, max_tokens, x_bits
        As :class:`~hw.dataflow.linear.LinearCore`.

    Attributes
    ----------
    res : In(stream.Signature(vector_layout(lanes)))
        The residual stream, in the core's output order.
    o : Out(stream.Signature(vector_layout(lanes)))
        The updated residual stream (Q.16, saturating).
    """

    def __init__(self, tables, lanes, vec_lanes, max_k, max_rows, max_tokens=1, *, x_bits=32):
        core = LinearCore(tables, lanes, vec_lanes, max_k, max_rows, max_tokens, x_bits=x_bits)
        self.epilogue = ResidualEpilogue(_beat_signature(core), lanes)
        super().__init__(core, {"res": In(stream.Signature(vector_layout(lanes))),
                                "o": Out(stream.Signature(vector_layout(lanes)))})

    def elaborate(self, platform):
        m = Module()
        core = self._core(m)
        m.submodules.epilogue = ep = self.epilogue
        wiring.connect(m, core.o, ep.i)
        wiring.connect(m, wiring.flipped(self.res), ep.res)
        wiring.connect(m, ep.o, wiring.flipped(self.o))
        return m


class GateLinear(_Wrapped):
    """``h = gate(dequant(TLMM(norm_quant(x))))`` for a fused, tile-interleaved gate|up matmul.

    Parameters
    ----------
    activation : {"silu", "relu2"}
    tables, lanes, vec_lanes, max_k, max_rows, max_tokens, x_bits
        As :class:`~hw.dataflow.linear.LinearCore` (``max_rows`` counts gate and up rows).

    Attributes
    ----------
    o : Out(stream.Signature(vector_layout(lanes, 64)))
        ``h``, one beat per (tile pair, token).
    """

    def __init__(self, activation, tables, lanes, vec_lanes, max_k, max_rows, max_tokens=1, *, x_bits=32):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        core = LinearCore(tables, lanes, vec_lanes, max_k, max_rows, max_tokens, x_bits=x_bits)
        self.epilogue = GateEpilogue(_beat_signature(core), activation, lanes, max_tokens)
        self.activation = activation
        super().__init__(core, {"o": Out(stream.Signature(vector_layout(lanes, 64)))})

    def elaborate(self, platform):
        m = Module()
        core = self._core(m)
        m.submodules.epilogue = ep = self.epilogue
        wiring.connect(m, core.o, ep.i)
        wiring.connect(m, ep.o, wiring.flipped(self.o))
        return m


def qkv_row_order(heads, head_dim, lanes):
    """Packing order of one q or k block's rows: ``order[i]`` is the model row packed at position ``i``.

    :class:`QkvLinear` rotates row tile ``b`` of a head as RoPE pairs: its first ``N/2`` lanes are the
    "lo" elements ``bN/2 .. bN/2 + N/2 - 1`` of the head and its last ``N/2`` lanes the matching "hi"
    elements ``d/2 + bN/2 ..`` (the "rotate half" partners). The host packs q and k weight rows in this
    order; v rows keep the model order. Quantised q and k vectors therefore come out in the same
    permuted element order, which attention does not see: ``q . k`` sums over matching elements.
    """
    check_int("heads", heads, 1, 1 << 12)
    check_int("lanes", lanes, 2, 64)
    if lanes % 2 or head_dim % lanes:
        raise ValueError(f"head_dim ({head_dim}) must be a multiple of the lanes ({lanes}), which must be even")
    half, hl = head_dim // 2, lanes // 2
    within = [r for b in range(head_dim // lanes)
              for r in [b * hl + i for i in range(hl)] + [half + b * hl + i for i in range(hl)]]
    return [h * head_dim + r for h in range(heads) for r in within]


def qkv_cfg_layout(core_cfg, pos_bits):
    return data.StructLayout({"core": core_cfg, "pos": unsigned(pos_bits)})


class QkvLinear(_Wrapped):
    """``(q8, e) = quant_pow2(rope(dequant(TLMM(norm_quant(x))), pos))`` for a fused q|k|v matmul.

    The core's scale groups are q (tiles below ``bound0``), k (below ``bound1``) and v. Every row tile
    of q and k goes through :class:`~hw.vector.rope.RopeUnit` in indexed mode (its index in the head is
    ``tile mod d/N``, its position ``pos + token``); v tiles take the same path at position 0, where
    the rotation is exactly the identity, so one path keeps the beat order. :class:`QuantPow2` then
    forms each head vector's exponent and int8 values. q and k rows must be packed in
    :func:`qkv_row_order`.

    Parameters
    ----------
    tables, lanes, vec_lanes, max_k, max_rows, max_tokens, x_bits
        As :class:`~hw.dataflow.linear.LinearCore` (``max_rows`` counts q, k and v rows).
    head_dim : int
        ``d``, a multiple of ``lanes`` (which must be even).
    freq_table : sequence of int
        RoPE phase increments (:func:`golden.numerics.rope_freq_table`).
    pos_bits : int
        Width of the position of the chunk's first token.

    Attributes
    ----------
    cfg : In(stream.Signature(StructLayout({"core": linear_cfg_layout(...), "pos": pos_bits})))
        The core's command and the position of the chunk's first token.
    o : Out(stream.Signature(quant_out_layout(lanes, max_tokens)))
        ``q`` (``lanes`` int8), ``e``, ``slot`` (token) and the ``first``/``last`` beat of a vector.
        Each vector's ``d/N`` beats leave back to back; vectors leave in order of head (q heads, then
        k heads, then v heads), then token.
    """

    def __init__(self, tables, lanes, vec_lanes, max_k, max_rows, max_tokens=1, *, head_dim, freq_table,
                 pos_bits=16, x_bits=32):
        check_int("lanes", lanes, 2, 64)
        check_int("head_dim", head_dim, 2, 4096)
        if lanes % 2 or head_dim % lanes:
            raise ValueError(f"head_dim ({head_dim}) must be a multiple of the lanes ({lanes}), "
                             "which must be even: a row tile holds whole RoPE pairs of one head")
        check_int("pos_bits", pos_bits, 1, 32)
        core = LinearCore(tables, lanes, vec_lanes, max_k, max_rows, max_tokens, x_bits=x_bits)
        self.epilogue = QkvEpilogue(_beat_signature(core), lanes, max_tokens, head_dim=head_dim,
                                    freq_table=freq_table, pos_bits=pos_bits)
        self.head_dim, self.pos_bits = head_dim, pos_bits
        core_cfg = core.cfg.payload.shape()
        super().__init__(core, {"o": Out(stream.Signature(quant_out_layout(lanes, max_tokens)))},
                         cfg=In(stream.Signature(qkv_cfg_layout(core_cfg, pos_bits))))

    def elaborate(self, platform):
        m = Module()
        core = self._core(m, own_cfg=True)
        m.submodules.epilogue = ep = self.epilogue
        # The command: the core takes its part; the position and the v bound stay here for the beats
        # still to come (the core takes a command only after the previous one's last beat has left it,
        # and that beat is then past the point where they are used).
        m.d.comb += [core.cfg.payload.eq(self.cfg.payload.core), core.cfg.valid.eq(self.cfg.valid),
                     self.cfg.ready.eq(core.cfg.ready)]
        with m.If(self.cfg.valid & self.cfg.ready):
            m.d.sync += [ep.pos0.eq(self.cfg.payload.pos), ep.v_from.eq(self.cfg.payload.core.bound1)]
        wiring.connect(m, core.o, ep.i)
        wiring.connect(m, ep.o, wiring.flipped(self.o))
        return m
