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

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.numerics import RES_FRAC

from ..params import check_int
from ..tlmm.layouts import token_bits
from ..vector.epilogue import (Dequant, GateRelu2, GateSilu, ResidualAdd, _Pipe, _chunks, _sum_terms, output_fifo,
                              vector_layout)
from ..vector.quant_pow2 import QuantPow2, quant_out_layout
from ..vector.rope import RopeUnit
from .credit_link import CreditLink
from .linear import LinearCore
from .skid import SkidBuffer

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
        # `ready` is the gate unit's room (a flip-flop) for every beat, gate or up: a ready that depended on
        # the beat's tile reached the LINEAR core's output slice through the epilogue multiplexer, across
        # the die on ECP5. A gate beat then waits for room too; the unit has room but for a few cycles
        # after a stall of `h`.
        m.d.comb += [
            wr.addr.eq(beat.slot), wr.data.eq(gate_value.as_value()),
            wr.en.eq(self.i.valid & self.i.ready & ~is_up),
            rd.addr.eq(beat.slot),
            gate.gate.valid.eq(self.i.valid & is_up), gate.up.valid.eq(self.i.valid & is_up),
            gate.gate.payload.as_value().eq(rd.data), gate.up.payload.eq(beat.acc),
            self.i.ready.eq(gate.room),
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
        # Whether a beat starts a command or a tile, and whether its tile is a v tile, come from flags
        # the previous beats leave behind (a command's beats run through tiles 0, 1, 2, ... in order, a
        # tile's beats are consecutive, and `tile_last`/`last` end them), not from compares of the beat's
        # own tile: the beats come from a credit link's distributed-RAM FIFO, and its read, the tile
        # compares and the index choice ended on the pairs slice (10.38 ns routed at 9887928).
        beat = self.i.payload
        fire = self.i.valid & self.i.ready
        cmd_start = Signal(init=1)                    # the next beat is a command's first (tile 0)
        tile_start = Signal()                         # the next beat is its tile's first
        tile_next = Signal.like(beat.tile, init=1)    # the tile after the next beat's
        v_tile = Signal()                             # the next beat's tile (not tile 0) is >= v_from
        prev_idx = Signal(range(self.head_beats))
        next_idx = Signal(range(self.head_beats))     # the index after prev_idx, registered beside it
        idx = Signal(range(self.head_beats))
        in_v = Signal()
        m.d.comb += [idx.eq(Mux(cmd_start, 0, Mux(tile_start, next_idx, prev_idx))),
                     in_v.eq(Mux(cmd_start, self.v_from == 0, v_tile))]
        with m.If(fire):
            m.d.sync += [prev_idx.eq(idx), next_idx.eq(Mux(idx == self.head_beats - 1, 0, idx + 1)),
                         cmd_start.eq(beat.last), tile_start.eq(beat.tile_last)]
            with m.If(beat.last):
                m.d.sync += tile_next.eq(1)
            with m.Elif(beat.tile_last):
                m.d.sync += [tile_next.eq(tile_next + 1), v_tile.eq(tile_next >= self.v_from)]
            with m.If(cmd_start & ~beat.tile_last):
                m.d.sync += v_tile.eq(self.v_from == 0)

        # The beat's index and position are registered in a slice before RoPE (its frequency ROM read
        # follows them): the slice's registered ready keeps RoPE's ready logic out of the previous
        # unit's cycle. RoPE's output reaches QuantPow2 over a credit link (free-running stages and a
        # FIFO at QuantPow2's end): on ECP5 the two were placed 40-80 columns apart, and a skid buffer
        # between them still had its enable net cross the gap after logic at both ends.
        y = beat.y.as_value()
        m.submodules.pairs_slice = psl = SkidBuffer(rope.pairs.payload.shape())
        pairs = psl.i.payload
        m.d.comb += [
            pairs.lo.eq(y[:32 * hl]), pairs.hi.eq(y[32 * hl:]),
            pairs.pos.eq(Mux(in_v, 0, self.pos0 + beat.slot)),
            pairs.beat.eq(idx), pairs.tag.eq(beat.slot), pairs.first.eq(idx == 0),
            psl.i.valid.eq(self.i.valid), self.i.ready.eq(psl.i.ready),
        ]
        wiring.connect(m, psl.o, rope.pairs)
        m.submodules.rotated_link = rsl = CreditLink(rope.rotated.payload.shape(), forward=2, back=1)
        wiring.connect(m, rope.rotated, rsl.i)
        rot = rsl.o.payload
        m.d.comb += [
            quant.i.payload.x.eq(Cat(rot.lo, rot.hi)), quant.i.payload.slot.eq(rot.tag),
            quant.i.valid.eq(rsl.o.valid), rsl.o.ready.eq(quant.i.ready),
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
        Each token's ``(m16, sh)``, before or while the beats arrive (the beats wait until every token's
        multiplier of the command is in); the multipliers are forgotten when the command's last beat has
        gone by, so the next command's may come any time after that.
    rows : In(stream.Signature(logits_rows_layout(lanes)))
        One beat per row tile, in tile order: the tile's row scales, held in a register until the tile's
        last token has gone by.
    tokens : In
        Tokens per tile of this command (held by the owner); the beats' ``tile_last`` and ``last`` flags
        (:func:`~hw.dataflow.linear.linear_out_layout`) end tiles and the command.
    o : Out(stream.Signature(logits_out_layout(...)))
    """

    def __init__(self, beat_signature, lanes, max_tokens):
        self.lanes, self.max_tokens = lanes, max_tokens
        super().__init__({
            "i": In(beat_signature),
            "mult": In(stream.Signature(logits_mult_layout(max_tokens))),
            "rows": In(stream.Signature(logits_rows_layout(lanes))),
            "tokens": In(token_bits(max_tokens) + 1),
            "o": Out(stream.Signature(logits_out_layout(lanes, beat_signature))),
        })

    def elaborate(self, platform):
        m = Module()
        N, M = self.lanes, self.max_tokens
        m16q = Array(Signal(16, name=f"m16q_{t}") for t in range(M))
        shq = Array(Signal(signed(16), name=f"shq_{t}") for t in range(M))
        have = Signal(M)
        # A multiplier is registered as it arrives, then stored: it comes from the LINEAR unit's scalar
        # unit, whose result valid reached the `have` flags here (14.9 ns placed on the ECP5 shell at
        # a3e84bf). Beats wait for `all_have` anyway.
        m.d.comb += self.mult.ready.eq(1)
        mult_v, mult = Signal(), Signal.like(self.mult.payload)
        m.d.sync += [mult_v.eq(self.mult.valid), mult.eq(self.mult.payload)]
        with m.If(mult_v):
            m.d.sync += [m16q[mult.slot].eq(mult.m16), shq[mult.slot].eq(mult.sh)]
        beat = self.i.payload
        # Free-running (no clock enables): ten stages into an output FIFO (hw.vector.epilogue.output_fifo).
        pipe = _Pipe(m, Signal(init=1, name="room"), platform)
        # The tile's row scales are taken into a register and kept until its last token's beat has gone
        # by; `rows.ready` is that register's "empty" flag (a flip-flop, so the epilogue's ready logic
        # does not reach the row-scale reader). The next tile's scales arrive a cycle after the release:
        # at most one idle cycle per row tile, which the engine (at least two cycles per beat on the LM
        # head's bit planes) never notices.
        row_m16, row_e = Signal.like(self.rows.payload.m16), Signal.like(self.rows.payload.e)
        row_have = Signal()
        m.d.comb += self.rows.ready.eq(~row_have)
        # The scales load in every cycle the register is empty, whatever `rows.valid` says: their enable
        # is then the flag alone, not the row reader's valid (which comes through the LINEAR unit's
        # LOGITS multiplexer, 16.4 ns on the ECP5 shell at 183e789); the load with `valid` is the one kept.
        with m.If(~row_have):
            m.d.sync += [row_m16.eq(self.rows.payload.m16), row_e.eq(self.rows.payload.e)]
            with m.If(self.rows.valid):
                m.d.sync += row_have.eq(1)
        # Beats wait until every token's multiplier is in (`all_have`, a flip-flop), not only their own
        # token's: a ready that multiplexed `have` by the beat's slot reached the LINEAR core's output
        # slice through the epilogue multiplexer, across the die on ECP5. The multipliers come from the
        # prologue, which ends before the engine's first sums, so nothing waits longer in practice.
        all_have = Signal()
        ready_in = pipe.take & row_have & all_have
        take = Signal()
        m.d.comb += [self.i.ready.eq(ready_in), take.eq(self.i.valid & ready_in)]
        need = Signal(M)                       # one bit per token of the command
        m.d.sync += need.eq((Const(1, M + 1) << self.tokens) - 1)
        # The beat's flags come with it (LinearCore decides them): a beat's slot and tile compared here, out
        # of the link's distributed-RAM FIFO, were 13.23 ns placed paths into `all_have` (ECP5, 2ee4ca5).
        with m.If(take & beat.tile_last):
            m.d.sync += row_have.eq(0)
        set_bits = Signal(M)
        with m.If(mult_v):
            m.d.comb += set_bits.eq(1 << mult.slot)
        # The flags clear a cycle after the command's last beat (`done_r`), from a register (a beat's slot
        # and tile compared reached their resets: 14.2 ns placed at a3e84bf). `all_have` falls at once and
        # stays low through that cycle; the next command's multipliers come much later (after its prologue).
        command_done = take & beat.last
        done_r = Signal()
        m.d.sync += [done_r.eq(command_done), have.eq(Mux(done_r, 0, have | set_bits)),
                     all_have.eq(~command_done & ~done_r & ((have | set_bits) & need == need))]

        # Ten free-running stages, each at most one carry chain or a few mux levels deep (as Dequant):
        # 0 the beat; 1 operands; 2, 3 acc * m16(sq) from two registered DSP products; 4..6 times m16_row from three;
        # 7 overflow flag and coarse shift; 8 fine shift; 9 round and saturate into the output FIFO.
        # Stage 0 registers the beat as it leaves the credit link's FIFO: that FIFO's head is a distributed-RAM
        # read, and stage 1's multiplexer by slot and subtraction behind it made 14.6 ns placed paths on the
        # ECP5 shell at 183e789. The row scales it meets in stage 1 are still the tile's: a tile's last beat
        # clears `row_have` one cycle after it is taken, and the next scales load a cycle after that.
        v0 = pipe.valid(take, "v0")
        beat0 = pipe.reg(beat, "beat_0", beat.shape())
        v, slot_d, tile_d = v0, beat0.slot, beat0.tile
        vs = []
        for i in range(1, 9):
            v = pipe.valid(v, f"v{i}")
            slot_d, tile_d = pipe.reg(slot_d, f"slot{i}"), pipe.reg(tile_d, f"tile{i}")
            vs.append((v, slot_d, tile_d))
        m16_1 = pipe.reg(m16q[beat0.slot], "m16_1", unsigned(16))
        outs = []
        for n in range(N):
            acc = beat0.acc[f"lane{n}"]
            m16r = row_m16[16 * n:16 * n + 16]
            er = row_e[16 * n:16 * n + 16].as_signed()
            acc_1 = pipe.reg(acc, f"acc_1_{n}")
            s_1 = pipe.reg(shq[beat0.slot] - er - RES_FRAC, f"s1_{n}", signed(19))
            r_1 = pipe.reg(m16r, f"m16r_{n}", unsigned(16))
            # round_shift(p2, s) = (q + 1) >> 1 with q = floor(p2 * 2^33 / 2^a), a = clamp(s) + 32 in [0, 94];
            # q fits 33 bits iff p2's bits from a - 1 up are all sign bits (mask), else the result saturates.
            a_2 = pipe.reg(Mux(s_1 > _LOGIT_MAX_RIGHT, _LOGIT_MAX_RIGHT + _LOGIT_MAX_LEFT,
                               Mux(s_1 < -_LOGIT_MAX_LEFT, 0, s_1 + _LOGIT_MAX_LEFT)), f"a_2_{n}", unsigned(7))
            mask_3 = pipe.reg(Cat(*[a_2 <= i + 1 for i in range(65)]), f"mask_3_{n}")
            a_6 = pipe.delay(a_2, 4, f"a_{n}")
            mask_6 = pipe.delay(mask_3, 3, f"mask_{n}")
            r_3 = pipe.delay(r_1, 2, f"m16r_{n}")
            # Stages 2, 3: p1 = acc * m16(sq), 48 bits.
            terms = [(pipe.product(c, m16_1, f"pp1_{n}_{off}"), off) for c, off in _chunks(acc_1, True, (18, 14))]
            p1, off, st = _sum_terms(pipe, terms, f"p1_{n}")
            assert off == 0 and st == 1
            p1 = p1[:49].as_signed()
            # Stages 4..6: p2 = p1 * m16_row, 64 bits (kept as 66).
            terms = [(pipe.product(c, r_3, f"pp2_{n}_{off}"), off) for c, off in _chunks(p1, True, (18, 18, 13))]
            p2, off, st = _sum_terms(pipe, terms, f"p2_{n}")
            assert off == 0 and st == 2
            p2 = p2[:66].as_signed()
            # Stage 7: overflow and the shift by a's high bits (64, 32, 16, 8); stage 8: by 4, 2, 1.
            ovf = Signal(name=f"ovf_{n}")
            m.d.comb += ovf.eq(((p2[:65] ^ p2[65].replicate(65)) & mask_6).any())
            w = Cat(Const(0, 33), p2).as_signed()
            q_7 = pipe.reg(Dequant._shift_window(w, a_6[3:7], 3, 33 + 7), f"q_7_{n}")
            ovf_7, sign_7, a_7 = pipe.reg(ovf, f"ovf_7_{n}"), pipe.reg(p2[65], f"sign_7_{n}"), pipe.reg(a_6[:3], f"af_7_{n}")
            q_8 = pipe.reg(Dequant._shift_window(q_7.as_signed(), a_7, 0, 33), f"q_8_{n}", signed(33))
            ovf_8, sign_8 = pipe.reg(ovf_7, f"ovf_8_{n}"), pipe.reg(sign_7, f"sign_8_{n}")
            # Stage 9: (q + 1) >> 1, saturated if q overflowed 33 bits or the result is 2^31.
            r = Signal(signed(34), name=f"round_{n}")
            m.d.comb += r.eq(q_8 + 1)
            sat = ovf_8 | (~r[33] & r[32])
            limit = Cat((~sign_8).replicate(31), sign_8)
            outs.append(Mux(sat, limit, r[1:33]))
        v8, slot8, tile8 = vs[-1]
        out = Signal(self.o.payload.shape())
        m.d.comb += [out.slot.eq(slot8), out.tile.eq(tile8)]
        for n in range(N):
            m.d.comb += out.data[f"lane{n}"].eq(outs[n])
        output_fifo(m, pipe.take, take, pipe.valid(v8, "v9"), pipe.reg(out, "out_9"), self.o, 10)
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
