"""One linear layer as one stream: RMSNorm + int8 quantise -> TLMM -> dequantise, nothing through DRAM.

:class:`LinearCore` chains the prologue (:class:`~hw.vector.norm_quant.NormQuant`), an on-chip
activation buffer, the TLMM engine (:class:`~hw.tlmm.engine.TlmmEngine`) and the dequantiser
(:class:`~hw.vector.epilogue.Dequant`) for a chunk of ``tokens`` (1 in decode). It computes, per token
``t`` and output row ``r`` (``docs/numerics.md``)::

    xq[t], sq[t] = norm_quant(x[t], sx, gain)
    acc[t, r]    = sum_k xq[t, k] * w[r, k]                  (ternary w, TLMM)
    y[t, r]      = dequant_q16(acc[t, r], sq[t] * s_w[group(r)])

and emits both ``acc`` and ``y`` so the epilogue that follows (residual add, RoPE + power-of-two quantise,
SiLU / ReLU^2 gate) takes what it needs. The epilogue assemblies live next to this file.

Command (``cfg``)
-----------------
``n`` (K), ``k_steps`` (``ceil(K / 3T)``), ``row_tiles`` (``ceil(R / N)``), ``tokens`` (chunk size),
the norm's ``sx``, gain ``shift`` and ``eps`` (as :class:`NormQuant`), and up to three weight scales
``sw0..sw2``. A row tile's scale group is ``tile & 1`` when ``interleave`` is set (a fused gate|up
matmul whose packed rows alternate gate and up tiles) and otherwise ``(tile >= bound0) + (tile >=
bound1)`` (a fused q|k|v matmul: q tiles, then k, then v). ``k_steps`` and ``row_tiles`` are what the
host packed the weights with (:func:`golden.tlmm.pack_ternary`); the unit trusts them. ``planes`` (2..8)
runs int-k weights bit-serially (:func:`golden.tlmm.pack_bitserial`: each (row tile, k-step) has one word
per bit plane, the top plane negated), the LM head; 0 or 1 means ternary.

Streams
-------
``x``: the ``tokens`` input vectors one after another, ``ceil(n / vec_lanes)`` beats each
(:func:`~hw.vector.norm_quant.norm_in_layout`: values and the gain); ``weights``: the packed weight
words in engine order (row tile, then k-step), each word used by every token; ``o``: one beat per
(row tile, token) in that order: ``acc`` and ``y`` (``lanes`` x int32 each), ``slot`` (token), ``tile``,
and the flags ``tile_last`` (the tile's last token) and ``last`` (the command's last beat), decided where the
engine's sums enter, so a consumer reads them from its FIFO without comparing (a compare after a
distributed-RAM FIFO head was a 13.23 ns placed path into the LM-head epilogue at 2ee4ca5).

Sequence
--------
1. For each token: :class:`NormQuant` runs its three passes; its int8 beats are packed by a gearbox
   into k-step words (3T bytes, zero padded) in the activation buffer; its scale ``sq`` starts the
   scalar unit, which forms ``(m16, shift)`` of ``sq * s_w[g]`` (MUL, SCALE_POW2 by 16, TO_MULT) per group.
2. When every token is loaded, the sequencer replays the buffer in engine order (row tile, k-step,
   token): one act step per cycle, so the engine runs at II = 1 and each weight word is read once.
3. Each sums beat goes to :class:`Dequant` with its token's and group's multiplier, the raw sums beside
   it through a small FIFO, and both leave on ``o``. A register slice (:class:`~hw.dataflow.skid.SkidBuffer`)
   sits between the engine and :class:`Dequant` and another before ``o``: their ``ready`` comes from a
   flip-flop, so a consumer's ``ready`` never ripples through the dequantiser into the engine and its
   sequencer in one cycle (on ECP5 that was a 20-level path). They add two cycles of latency, no bubbles.
4. The next ``cfg`` is taken when the last ``o`` beat has left (the multipliers and tile counters
   belong to the command until then).
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.numerics import RES_FRAC
from golden.tlmm import GROUP_SIZE

from ..collision import assert_no_collision, collision_free_memory
from ..params import check_int
from ..replica import REPLICA_ATTR, load_in_shares, registered_copies
from ..tlmm.engine import TlmmEngine
from ..tlmm.layouts import token_bits
from ..vector.epilogue import Dequant, lane, vector_layout
from ..vector.norm_quant import GAIN_SHIFT_BITS, NormQuant, norm_in_layout
from ..vector.scalar_unit import E_BITS, Op, ScalarUnit, sfloat_layout
from .credit_link import CreditLink
from .landing_fifo import LandingFifo
from .skid import SkidBuffer

__all__ = ["LinearCore", "linear_cfg_layout", "linear_out_layout", "SCALE_GROUPS"]

#: Weight-scale groups of one fused matmul (q, k, v).
SCALE_GROUPS = 3
_SHIFT_BITS = 8


def linear_cfg_layout(max_k, max_row_tiles, max_k_steps, max_tokens, e_bits=E_BITS):
    tile = unsigned(max(1, max_row_tiles.bit_length()))
    return data.StructLayout({
        "n": unsigned(max(1, max_k.bit_length())),
        "k_steps": unsigned(max(1, max_k_steps.bit_length())),
        "row_tiles": tile,
        "tokens": unsigned(max(1, max_tokens.bit_length())),
        "sx": sfloat_layout(e_bits),
        "shift": signed(GAIN_SHIFT_BITS),
        "eps": sfloat_layout(e_bits),
        "sw0": sfloat_layout(e_bits),
        "sw1": sfloat_layout(e_bits),
        "sw2": sfloat_layout(e_bits),
        "interleave": 1,
        "bound0": tile,
        "bound1": tile,
        "planes": unsigned(4),
    })


def linear_out_layout(lanes, max_row_tiles, max_tokens):
    return data.StructLayout({
        "acc": vector_layout(lanes),
        "y": vector_layout(lanes),
        "slot": unsigned(token_bits(max_tokens)),
        "tile": unsigned(max(1, max_row_tiles.bit_length())),
        "tile_last": 1,                 # the tile's last beat (slot == tokens - 1)
        "last": 1,                      # the command's last beat (and the last tile)
    })


class LinearCore(wiring.Component):
    """Norm + quantise -> TLMM -> dequantise for one linear layer (see the module docstring).

    Parameters
    ----------
    tables, lanes : int
        TLMM engine size (T groups of 3 per cycle, N output rows in parallel).
    vec_lanes : int
        :class:`NormQuant` elements per beat.
    max_k : int
        Largest input length K.
    max_rows : int
        Largest output length R (sets the tile counter width).
    max_tokens : int
        Largest chunk (tokens per command); the activation buffer holds ``max_tokens * ceil(max_k / 3T)``
        k-step words.
    x_bits : int
        Signed width of the input values (63 for the gate output, 32 for the residual stream).
    token_scales : bool
        Take each token's input scale from the ``sx`` stream (one SFloat per token, in token order)
        instead of the command's ``sx``: down_proj's input ``h`` has a per-token scale from the gate.
    emit_scales : bool
        Add an ``sq`` output stream with each token's activation scale (the norm's output scale), in
        token order: the gate's output scale is built from it.
    """

    def __init__(self, tables, lanes, vec_lanes, max_k, max_rows, max_tokens=1, *, x_bits=32, token_scales=False,
                 emit_scales=False):
        self.tables = check_int("tables", tables, 1, 64)
        self.lanes = check_int("lanes", lanes, 1, 64)
        self.vec_lanes = check_int("vec_lanes", vec_lanes, 1, 64)
        self.max_k = check_int("max_k", max_k, 1, 1 << 17)
        self.max_rows = check_int("max_rows", max_rows, 1, 1 << 20)
        self.max_tokens = check_int("max_tokens", max_tokens, 1, 256)
        self.x_bits = check_int("x_bits", x_bits, 24, 63)
        self.max_k_steps = -(-max_k // (GROUP_SIZE * tables))
        self.max_row_tiles = -(-max_rows // lanes)
        if not isinstance(token_scales, bool):
            raise TypeError(f"token_scales must be a bool, got {token_scales!r}")
        self.token_scales, self.emit_scales = token_scales, bool(emit_scales)
        extra = {"sx": In(stream.Signature(sfloat_layout(E_BITS)))} if token_scales else {}
        if emit_scales:
            extra["sq"] = Out(stream.Signature(sfloat_layout(E_BITS)))
        super().__init__({
            **extra,
            "cfg": In(stream.Signature(linear_cfg_layout(max_k, self.max_row_tiles, self.max_k_steps,
                                                         max_tokens))),
            "x": In(stream.Signature(norm_in_layout(vec_lanes, x_bits))),
            "weights": In(stream.Signature(unsigned(5 * tables * lanes))),
            "o": Out(stream.Signature(linear_out_layout(lanes, self.max_row_tiles, max_tokens))),
        })

    def elaborate(self, platform):
        m = Module()
        T, N, VL, M = self.tables, self.lanes, self.vec_lanes, self.max_tokens
        W = GROUP_SIZE * T                      # bytes per k-step word
        KS = self.max_k_steps

        m.submodules.norm = norm = NormQuant(VL, self.max_k, x_bits=self.x_bits)
        m.submodules.su = su = ScalarUnit(cmd_register=True)
        m.submodules.engine = engine = TlmmEngine(T, N, max_tokens=M)
        m.submodules.dequant = dq = Dequant(N)
        # The raw sums and slot of each beat in Dequant, beside it: Dequant holds at most latency + 1 beats
        # (its output FIFO's count), so this FIFO is never full when a beat enters both.
        m.submodules.side = side = LandingFifo(
            width=len(self.o.payload.acc.as_value()) + token_bits(M) + 2, depth=max(4, dq.latency + 2))
        # Undefined collisions (no bypass logic in synthesis): the sequencer reads only once the command's
        # tokens are loaded (checked in simulation below).
        m.submodules.acts = amem = collision_free_memory(shape=unsigned(8 * W), depth=M * KS)
        awr = amem.write_port()
        ard = amem.read_port(domain="sync")

        # -- command registers ---------------------------------------------------------------------------
        # A command is taken in one cycle (`start`: busy rises, and the command register has loaded the
        # payload in every idle cycle, so its enable is `~busy`, not the handshake) and its state is set up
        # in the next (`begin`, copies for the gearbox, the counters and the epilogue side). The
        # handshake's `valid` comes from the fused core's command slice, which sits with the epilogues; the
        # setup's resets reach the gearbox and counters all over the core (as one gate from `valid`: 14.21 ns
        # placed paths into the gearbox's slot reset on the ECP5 shell at 2ee4ca5). One cycle per command.
        # `busy` has copies: one for `cfg.ready` (which enables registers in the fused core's command
        # slice) and four that enable a quarter of the command register each: `busy` itself has hundreds
        # of sinks across the core, and as the command register's enable it ended 55 late endpoints
        # (placed at 1fe27f9).
        cfg = Signal(self.cfg.payload.shape())
        busy, busy_next = Signal(), Signal()
        m.d.sync += busy.eq(busy_next)
        busy_ready, *busy_load = registered_copies(m, busy_next, 5, "busy")
        m.d.comb += self.cfg.ready.eq(~busy_ready)
        start = self.cfg.valid & ~busy_ready
        # A third copy resets the epilogue side's tile counters and scale group (`begin_tail`): from the
        # counters' copy it was 11.32 ns placed into g_sel on the ECP5 shell at 1843871.
        begin, begin_gear, begin_tail = registered_copies(m, start, 3, "begin")
        load_in_shares(m, cfg, self.cfg.payload, [~b for b in busy_load])

        # -- prologue: NormQuant per token ---------------------------------------------------------------
        load_tok = Signal(range(M + 1))        # token whose vector NormQuant is working on
        norm_cfg_sent = Signal()
        loading = Signal()
        want_cfg = loading & ~norm_cfg_sent & (load_tok < cfg.tokens)
        m.d.comb += [
            norm.cfg.payload.n.eq(cfg.n),
            norm.cfg.payload.shift.eq(cfg.shift), norm.cfg.payload.eps.eq(cfg.eps),
        ]
        if self.token_scales:
            m.d.comb += [norm.cfg.payload.sx.eq(self.sx.payload), norm.cfg.valid.eq(want_cfg & self.sx.valid),
                         self.sx.ready.eq(want_cfg & norm.cfg.ready)]
        else:
            m.d.comb += [norm.cfg.payload.sx.eq(cfg.sx), norm.cfg.valid.eq(want_cfg)]
        # x beats enter NormQuant through a register slice: its load enables (the OR of magnitudes, the
        # vector memory's write) came from the buffers' answer `valid`, steered in the LINEAR unit, 14 ns
        # placed paths on the ECP5 shell at 7543e99.
        m.submodules.x_slice = x_slice = SkidBuffer(self.x.payload.shape())
        wiring.connect(m, wiring.flipped(self.x), x_slice.i)
        wiring.connect(m, x_slice.o, norm.i)

        # Gearbox: NormQuant beats (VL bytes) -> k-step words (W bytes) in the activation buffer.
        ks = Signal(range(KS + 1))
        vec_in = Signal()                      # the token's last beat has been taken
        # Buffer addresses are token * KS + k-step, KS a constant that is not a power of two: the token's
        # base is kept in a register and stepped by KS (no multiplier in the address path).
        wr_base = Signal(range(M * KS + 1))
        m.d.comb += awr.addr.eq(wr_base + ks)
        beat_in = norm.o.valid & norm.o.ready
        with m.If(beat_in & norm.o.payload.last):
            m.d.sync += vec_in.eq(1)
        # ks < k_steps (the word is not padding), a flip-flop set with `ks`: the compare's carry chain sat
        # between the gearbox's flags and the block RAMs' byte enables (11.8 ns placed at 6c79f98).
        ks_ok = Signal()
        if W % VL == 0:
            gear_empty, gear_clear = self._slot_gearbox(m, norm.o, vec_in, ks, ks_ok, awr, cfg.k_steps, W // VL)
        else:
            gear_empty, gear_clear = self._shift_gearbox(m, norm.o, vec_in, ks, ks_ok, awr, cfg.k_steps, W, VL)

        # -- scale sequence: sq * sw[g] -> (m16, shift) per token and group ------------------------------
        sq_valid = Signal()
        sq = Signal(sfloat_layout(E_BITS))
        mult_m16 = Array(Array(Signal(16, name=f"m16_{t}_{g}") for g in range(SCALE_GROUPS)) for t in range(M))
        mult_sh = Array(Array(Signal(signed(_SHIFT_BITS), name=f"sh_{t}_{g}") for g in range(SCALE_GROUPS))
                        for t in range(M))
        scale_tok = Signal(range(M + 1))       # tokens whose multipliers are done
        group = Signal(range(SCALE_GROUPS))
        tmp = Signal(sfloat_layout(E_BITS))
        sws = Array([cfg.sw0, cfg.sw1, cfg.sw2])
        if self.emit_scales:
            # A copy of every token's scale leaves on `sq` (a FIFO of one per token in the chunk).
            m.submodules.sq_out = sq_out = fifo.SyncFIFOBuffered(width=len(sq.as_value()), depth=max(2, M))
            m.d.comb += [norm.s.ready.eq(~sq_valid & sq_out.w_rdy), sq_out.w_data.eq(norm.s.payload.sq.as_value()),
                         sq_out.w_en.eq(norm.s.valid & norm.s.ready),
                         self.sq.valid.eq(sq_out.r_rdy), self.sq.payload.as_value().eq(sq_out.r_data),
                         sq_out.r_en.eq(self.sq.ready)]
        else:
            m.d.comb += norm.s.ready.eq(~sq_valid)
        with m.If(norm.s.valid & norm.s.ready):
            m.d.sync += [sq_valid.eq(1), sq.eq(norm.s.payload.sq)]
        cmd = su.cmd.payload
        # A multiplier is written a cycle after the scalar unit answers, from registers (the token, group,
        # value and a strobe), and the token counts as done in that cycle: the answer's handshake and the
        # token-and-group decode went straight into the enables of the 24 multiplier registers (10.43 ns
        # placed on the ECP5 shell at 01d9a6a).
        st_wr, st_last = Signal(), Signal()
        st_tok, st_group = Signal.like(scale_tok), Signal.like(group)
        st_m16, st_sh = Signal(16), Signal(signed(_SHIFT_BITS))
        m.d.sync += st_wr.eq(0)
        with m.If(st_wr):
            m.d.sync += [mult_m16[st_tok][st_group].eq(st_m16), mult_sh[st_tok][st_group].eq(st_sh)]
            with m.If(st_last):
                m.d.sync += scale_tok.eq(scale_tok + 1)
        with m.FSM(name="scale"):
            with m.State("IDLE"):
                with m.If(sq_valid):
                    m.d.sync += group.eq(0)
                    m.next = "MUL"
            for state, nxt in (("MUL", "SCALE"), ("SCALE", "MULT"), ("MULT", None)):
                with m.State(state):
                    m.d.comb += su.cmd.valid.eq(1)
                    if state == "MUL":
                        m.d.comb += [cmd.op.eq(Op.MUL), cmd.a.eq(sq), cmd.b.eq(sws[group])]
                    elif state == "SCALE":
                        m.d.comb += [cmd.op.eq(Op.SCALE_POW2), cmd.a.eq(tmp), cmd.k.eq(RES_FRAC)]
                    else:
                        m.d.comb += [cmd.op.eq(Op.TO_MULT), cmd.a.eq(tmp)]
                    with m.If(su.cmd.ready):
                        m.next = f"W{state}"
                with m.State(f"W{state}"):
                    m.d.comb += su.res.ready.eq(1)
                    with m.If(su.res.valid):
                        value = su.res.payload.value
                        if nxt is not None:
                            m.d.sync += tmp.eq(value)
                            m.next = nxt
                        else:
                            # (m >> 8, -(e + 8)) with the shift clamped into 8 bits (changes no result,
                            # see hw.vector.epilogue).
                            e = value.e.as_signed()
                            m.d.sync += [st_wr.eq(1), st_tok.eq(scale_tok), st_group.eq(group),
                                         st_last.eq(group == SCALE_GROUPS - 1), st_m16.eq(value.m[:16]),
                                         st_sh.eq(Mux(e < -128, -128, Mux(e > 127, 127, e)))]
                            with m.If(group == SCALE_GROUPS - 1):
                                m.d.sync += sq_valid.eq(0)
                                m.next = "IDLE"
                            with m.Else():
                                m.d.sync += group.eq(group + 1)
                                m.next = "MUL"

        # -- load control -------------------------------------------------------------------------------
        loaded = Signal()                      # every token's words are in the buffer
        m.d.comb += busy_next.eq(busy)
        with m.If(start):
            m.d.comb += busy_next.eq(1)
        with m.If(begin):
            m.d.sync += [loading.eq(1), load_tok.eq(0), wr_base.eq(0), scale_tok.eq(0), norm_cfg_sent.eq(0),
                         ks.eq(0), ks_ok.eq(cfg.k_steps != 0), vec_in.eq(0)]
        with m.If(begin_gear):
            m.d.sync += gear_clear
        with m.If(norm.cfg.valid & norm.cfg.ready):
            m.d.sync += norm_cfg_sent.eq(1)
        # Token done: its words are written (a word beyond k_steps was padding, dropped). Registered: the
        # condition enables the write counters and the whole gearbox, and as a gate it was 6.2 ns of route
        # away from them (ECP5 shell, 7543e99). No beat of the next token comes before its NormQuant
        # command, which this pulse allows, so the cycle it costs per token is the only change.
        # Two copies: one clears the gearbox, one moves the counters (one register reaching both was 6.2 ns
        # of route from the gearbox's flags on the ECP5 shell at a3e84bf).
        tok_done_next = Signal()
        tok_done, tok_done_gear = registered_copies(m, tok_done_next, 2, "tok_done")
        m.d.comb += tok_done_next.eq(loading & vec_in & gear_empty & ~tok_done)
        with m.If(tok_done):
            m.d.sync += [load_tok.eq(load_tok + 1), wr_base.eq(wr_base + KS), norm_cfg_sent.eq(0), vec_in.eq(0),
                         ks.eq(0), ks_ok.eq(cfg.k_steps != 0)]
            with m.If(load_tok + 1 == cfg.tokens):
                m.d.sync += loading.eq(0)
        with m.If(tok_done_gear):
            m.d.sync += gear_clear
        # (Not in the `begin` cycle: `loading` and the token counters still hold the last command's.)
        m.d.comb += loaded.eq(busy & ~begin & ~loading & (scale_tok == cfg.tokens))

        # -- sequencer: (row tile, k-step, token) act steps from the buffer ------------------------------
        rt = Signal.like(cfg.row_tiles)
        sks = Signal.like(cfg.k_steps)
        spl = Signal.like(cfg.planes)          # bit plane (0 for ternary)
        stok = Signal.like(cfg.tokens)
        # The counters' last values, registered when the command is taken (compares against them sit in
        # the issue path).
        serial = Signal()
        last_plane = Signal.like(cfg.planes)
        tokens_m1, k_steps_m1, row_tiles_m1 = Signal.like(cfg.tokens), Signal.like(cfg.k_steps), Signal.like(cfg.row_tiles)
        with m.If(begin):
            m.d.sync += [serial.eq(cfg.planes > 1), last_plane.eq(Mux(cfg.planes > 1, cfg.planes - 1, 0)),
                         tokens_m1.eq(cfg.tokens - 1), k_steps_m1.eq(cfg.k_steps - 1),
                         row_tiles_m1.eq(cfg.row_tiles - 1)]
        rd_base = Signal(range(M * KS + 1))    # stok * KS
        running = Signal()
        replayed = Signal()                    # the command's act steps have all been issued
        # Each counter's "at its last value", a flip-flop set up with the counter and stepped with it: the
        # compares (carry chains) and the scale count's sat before the counters' enables (11.95 ns placed
        # on the ECP5 shell at 6c79f98). The replay starts a cycle after `loaded`, from a register.
        stok_last, spl_last, sks_last, rt_last = (Signal(name=f"{n}_last") for n in ("stok", "spl", "sks", "rt"))
        replay = Signal()
        m.d.sync += replay.eq(loaded & ~running & ~replayed & ~replay)
        with m.If(replay):
            m.d.sync += [running.eq(1), rt.eq(0), sks.eq(0), spl.eq(0), stok.eq(0), rd_base.eq(0),
                         stok_last.eq(tokens_m1 == 0), spl_last.eq(last_plane == 0), sks_last.eq(k_steps_m1 == 0),
                         rt_last.eq(row_tiles_m1 == 0)]
        with m.If(begin):
            m.d.sync += replayed.eq(0)
        # The act steps reach the engine over a credit link: the sequencer's enable comes from the link's
        # `ready` flip-flop, where it was the engine's `take & weights.valid` (on the ECP5 shell at 7543e99,
        # 5.3 ns of route out to that gate and 5.5 ns back to the sequencer's counters: 16.8 ns paths).
        m.submodules.acts_link = acts_link = CreditLink(engine.acts.payload.shape(), forward=1, back=1)
        wiring.connect(m, acts_link.o, engine.acts)
        acts = acts_link.i
        step = Signal(acts.payload.shape())    # control fields; x comes from the buffer's read port
        en = ~acts.valid | acts.ready
        issue = running & en
        m.d.comb += [ard.addr.eq(rd_base + sks), ard.en.eq(en)]
        assert_no_collision(m, platform, awr, ard, issue, "activation words")
        with m.If(en):
            m.d.sync += [
                acts.valid.eq(issue),
                step.token.eq(stok),
                step.first.eq((sks == 0) & (spl == 0)),
                step.last.eq(sks_last & spl_last),
                step.release.eq(stok_last),
                step.shift.eq(Mux(serial, spl, 0)),
                step.negate.eq(serial & spl_last),
            ]
        m.d.comb += [acts.payload.eq(step), acts.payload.x.as_value().eq(ard.data)]
        with m.If(issue):
            # Order: row tile, k-step, bit plane, token (the engine's contract, sim/tlmm_driver.py).
            with m.If(stok_last):
                m.d.sync += [stok.eq(0), rd_base.eq(0), stok_last.eq(tokens_m1 == 0)]
                with m.If(spl_last):
                    m.d.sync += [spl.eq(0), spl_last.eq(last_plane == 0)]
                    with m.If(sks_last):
                        m.d.sync += [sks.eq(0), sks_last.eq(k_steps_m1 == 0)]
                        with m.If(rt_last):
                            m.d.sync += [running.eq(0), replayed.eq(1)]
                        with m.Else():
                            m.d.sync += [rt.eq(rt + 1), rt_last.eq(rt + 1 == row_tiles_m1)]
                    with m.Else():
                        m.d.sync += [sks.eq(sks + 1), sks_last.eq(sks + 1 == k_steps_m1)]
                with m.Else():
                    m.d.sync += [spl.eq(spl + 1), spl_last.eq(spl + 1 == last_plane)]
            with m.Else():
                m.d.sync += [stok.eq(stok + 1), rd_base.eq(rd_base + KS), stok_last.eq(stok + 1 == tokens_m1)]
        wiring.connect(m, wiring.flipped(self.weights), engine.weights)

        # -- epilogue: Dequant with the token's and group's multiplier, raw sums beside it ---------------
        # The engine's sums pass a register slice first, with the beat's multiplier already chosen: the
        # slice's registered `ready` ends the engine's ready chain (the dequantiser, the epilogue and the
        # consumer stall it a cycle later), and the multiplier choice (a mux over tokens and groups) does
        # not share a cycle with the dequantiser's first stage.
        # The engine's sums come from a distributed-RAM FIFO: a register slice first, so the scale lookup
        # by slot and scale group (a 24-way multiplexer at 8 tokens) and the slot compare start from
        # flip-flops (13.3 ns placed from the FIFO's read, 101 endpoints on the slice after the lookup, in
        # a trial build). A cycle of latency.
        # The multiplier lookup takes the slot from copies of its own, one for m16 and one for the shift
        # (the slot register's net to the lookup's 25 multiplexers, beside the payload's other sinks, was a
        # 5 ns route in an 11.93 ns routed path on ECP5); so does the scale group (g_sel's two copies).
        # The slice also carries whether the beat is its row tile's last token (`slot_last`), compared on
        # the way in: compared at its output, the compare sat between the handshake and the enables of
        # the tile counter and scale group (11.79 ns placed on the ECP5 shell at 956eb7e).
        sums_layout = engine.sums.payload.shape()
        sums_ext = data.StructLayout({**{name: f.shape for name, f in sums_layout}, "slot_last": 1})
        m.submodules.sums_in = sums_in = SkidBuffer(sums_ext, copy_field="slot", copies=2)
        m.d.comb += [sums_in.i.valid.eq(engine.sums.valid), engine.sums.ready.eq(sums_in.i.ready),
                     sums_in.i.payload.slot_last.eq(engine.sums.payload.slot == tokens_m1)]
        m.d.comb += [sums_in.i.payload[name].eq(engine.sums.payload[name]) for name, _ in sums_layout]
        sums = sums_in.o
        out_tile = Signal.like(self.o.payload.tile)
        tile_in = Signal.like(out_tile)        # tile of the beat entering the slice
        # its scale group, kept with it (no comparator in the path), in two copies kept apart (see above)
        g_sel = [Signal(range(SCALE_GROUPS), name=f"g_sel{k}", attrs={REPLICA_ATTR: 1}) for k in range(2)]

        # The group steps with the tile rather than being recomputed from it: group_of(tile_in + 1), two
        # carry-chain compares after an adder, went into g_sel's inputs (11.23 ns placed on the ECP5 shell
        # at 7f9b7c7). Outside interleave the group is the number of bounds the tile has reached, so it
        # grows by one at each tile equal to a bound: `at_b[i]` says the next tile is bound i (a flip-flop,
        # set from an equality compare of this tile with bound i - 2, kept in a register).
        at_b = [Signal(name=f"at_bound{i}") for i in range(2)]
        bound_m2 = [Signal(signed(len(cfg.bound0) + 1), name=f"bound{i}_m2") for i in range(2)]
        m.d.sync += [bound_m2[0].eq(cfg.bound0 - 2), bound_m2[1].eq(cfg.bound1 - 2)]
        g_next = Mux(cfg.interleave, ~tile_in[0], g_sel[0] + at_b[0] + at_b[1])

        slot = sums.payload.slot
        slot_last = sums.payload.slot_last     # the beat is its row tile's last token
        dq_in = data.StructLayout({"y": sums.payload.y.shape(), "slot": slot.shape(), "m16": unsigned(16),
                                   "shift": signed(_SHIFT_BITS), "tile_last": 1, "last": 1})
        m.submodules.sums_slice = sl = SkidBuffer(dq_in)
        m.d.comb += [
            sl.i.valid.eq(sums.valid), sums.ready.eq(sl.i.ready),
            sl.i.payload.y.eq(sums.payload.y), sl.i.payload.slot.eq(slot),
            sl.i.payload.m16.eq(mult_m16[sums_in.field_copies[0]][g_sel[0]]),
            sl.i.payload.shift.eq(mult_sh[sums_in.field_copies[1]][g_sel[1]]),
            sl.i.payload.tile_last.eq(slot_last),
            sl.i.payload.last.eq(slot_last & (tile_in == row_tiles_m1)),
        ]
        with m.If(sums.valid & sums.ready & slot_last):
            m.d.sync += [tile_in.eq(tile_in + 1), *(g.eq(g_next) for g in g_sel),
                         *(a.eq(tile_in == b) for a, b in zip(at_b, bound_m2))]
        # Tile 0's group (interleave's tile & 1, or the bounds at 0) and bound flags are registered from the
        # command register, and set a cycle after `begin_tail` (the sums come many cycles later): formed
        # in that cycle, the compares of the new command's bounds ran into g_sel's inputs across the core
        # (11.48 ns placed on the ECP5 shell at 142dbaf).
        g0 = Signal.like(g_sel[0])
        at_b0 = [Signal(name=f"at_bound{i}_start") for i in range(2)]
        tail_start = Signal()
        m.d.sync += [g0.eq(Mux(cfg.interleave, 0, (cfg.bound0 == 0).as_unsigned() + (cfg.bound1 == 0).as_unsigned())),
                     at_b0[0].eq(cfg.bound0 == 1), at_b0[1].eq(cfg.bound1 == 1), tail_start.eq(begin_tail)]
        with m.If(tail_start):
            m.d.sync += [tile_in.eq(0), *(g.eq(g0) for g in g_sel), *(a.eq(a0) for a, a0 in zip(at_b, at_b0))]

        sp = sl.o.payload
        m.d.comb += [
            dq.i.valid.eq(sl.o.valid),
            sl.o.ready.eq(dq.i.ready),
            side.w_en.eq(sl.o.valid & dq.i.ready),
            side.w_data.eq(Cat(sp.y.as_value(), sp.slot, sp.tile_last, sp.last)),
            dq.i.payload.m16.eq(sp.m16),
            dq.i.payload.shift.eq(sp.shift),
        ]
        for n in range(N):
            m.d.comb += lane(dq.i.payload.acc, n).eq(sp.y[n])

        # The output beats pass a second slice: the epilogue's ready ends there.
        m.submodules.out_slice = osl = SkidBuffer(self.o.payload.shape())
        ob = osl.i
        acc_bits = len(ob.payload.acc.as_value())
        side_slot, side_tile_last, side_last = (side.r_data[acc_bits:acc_bits + token_bits(M)],
                                                side.r_data[-2], side.r_data[-1])
        m.d.comb += [
            # A beat out of Dequant has its side entry (written when it entered): no need to wait for it.
            ob.valid.eq(dq.o.valid),
            dq.o.ready.eq(ob.ready),
            side.r_en.eq(ob.ready & dq.o.valid),
            ob.payload.acc.as_value().eq(side.r_data[:acc_bits]),
            ob.payload.y.eq(dq.o.payload),
            ob.payload.slot.eq(side_slot),
            ob.payload.tile.eq(out_tile),
            ob.payload.tile_last.eq(side_tile_last),
            ob.payload.last.eq(side_last),
        ]
        with m.If(ob.valid & ob.ready & side_tile_last):
            m.d.sync += out_tile.eq(out_tile + 1)
        with m.If(begin_tail):
            m.d.sync += out_tile.eq(0)
        o = self.o
        wiring.connect(m, osl.o, wiring.flipped(o))
        # The command ends when its last beat has left the slice (the owner's epilogue choice holds until then).
        with m.If(o.valid & o.ready & o.payload.last):
            m.d.comb += busy_next.eq(0)
        return m

    @staticmethod
    def _slot_gearbox(m, beats, vec_in, ks, ks_ok, awr, k_steps, slots):
        """Pack ``beats`` into k-step words when a word is a whole number of beats: each beat is loaded into
        its slot of the word (one enable per slot), and a full word is written the next cycle while the
        next word's first beat loads, so the gearbox never stalls NormQuant. A token's last, partial word
        is written with its empty slots as zeros. Returns ``(empty, clear)``: nothing held, and the
        statements that empty it."""
        beat_bits = len(beats.payload.q.as_value())
        word = [Signal(beat_bits, name=f"pack{k}", reset_less=True) for k in range(slots)]
        filled = Signal(slots)                 # slots holding a beat of the word being packed
        filled_any = Signal()                  # filled != 0, kept as a flip-flop (it gates the write enable)
        slot = Signal(range(slots))            # the slot the next beat goes to
        full = Signal()                        # the word's last slot loaded last cycle: written now
        beat_in = beats.valid & beats.ready
        flush = vec_in & filled_any & ~full
        write = full | flush
        m.d.comb += [beats.ready.eq(~vec_in),
                     awr.data.eq(Cat(*(Mux(filled[k], word[k], 0) for k in range(slots))))]
        with m.If(write):
            m.d.comb += awr.en.eq(ks_ok)            # words past k_steps are padding: dropped
            m.d.sync += [ks.eq(ks + 1), ks_ok.eq(ks + 1 < k_steps)]
        loads = Signal(slots)
        for k in range(slots):
            m.d.comb += loads[k].eq(beat_in & (slot == k))
            with m.If(loads[k]):
                m.d.sync += word[k].eq(beats.payload.q.as_value())
        # Every beat taken loads a slot, so the next `filled` is non-zero when one is taken or some are kept.
        m.d.sync += [filled.eq(Mux(write, 0, filled) | loads), full.eq(loads[slots - 1]),
                     filled_any.eq((~write & filled_any) | beat_in)]
        with m.If(beat_in):
            m.d.sync += slot.eq(Mux(slot == slots - 1, 0, slot + 1))
        with m.If(flush):
            m.d.sync += slot.eq(0)
        return ~filled_any & ~full, [filled.eq(0), filled_any.eq(0), full.eq(0), slot.eq(0)]

    @staticmethod
    def _shift_gearbox(m, beats, vec_in, ks, ks_ok, awr, k_steps, W, VL):
        """Pack ``beats`` (VL bytes) into k-step words (W bytes) when VL does not divide W: a shift
        register of W + VL bytes, NormQuant stalled for the cycle a word is written. Returns ``(empty,
        clear)`` as :meth:`_slot_gearbox`."""
        pack = Signal(8 * (W + VL))
        fill = Signal(range(W + VL + 1))
        word_ready = fill >= W
        flush = vec_in & (fill > 0) & ~word_ready
        m.d.comb += [awr.data.eq(pack[:8 * W]), beats.ready.eq(~word_ready & ~vec_in)]
        with m.If(word_ready | flush):
            m.d.comb += awr.en.eq(ks_ok)            # words past k_steps are padding: dropped
            m.d.sync += [pack.eq(pack >> (8 * W)), fill.eq(Mux(flush, 0, fill - W)), ks.eq(ks + 1),
                         ks_ok.eq(ks + 1 < k_steps)]
        with m.Elif(beats.valid & beats.ready):
            m.d.sync += [pack.eq(pack | (beats.payload.q.as_value() << (fill * 8))), fill.eq(fill + VL)]
        return fill == 0, [fill.eq(0), pack.eq(0)]
