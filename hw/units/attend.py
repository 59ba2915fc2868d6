"""The ATTEND unit: one ``ATTEND`` instruction, from the query buffer and the KV cache in DRAM to the
attention buffer, through :class:`~hw.attention.engine.AttentionEngine`. Bit-exact with
``golden.isa_sim.IsaMachine._op_attend``.

Sequence of a command (``docs/isa.md``, ``ATTEND``; ``docs/attention.md``, "The ATTEND unit")
---------------------------------------------------------------------------------------------
1. Check ``SETUP`` against the build: ``head_dim``, ``heads`` a whole number ``group`` of ``kv_heads``
   (found by comparing ``heads`` with ``kv_heads * g`` for every ``g`` up to ``max_group``: no divider),
   ``group <= max_group``, ``kv_heads <= max_kv_heads``, ``score_m`` / ``score_s`` equal to
   ``score_constant(head_dim)``, ``max_context`` a non-zero multiple of 32 within the build's, and
   ``n_tokens <= max_tokens`` (the command processor checks it too). Anything else is
   ``CONFIG_MISMATCH``: nothing is read or written and the unit finishes at once (SETUP is registered in
   the cycle that accepts the command, checked in the next and acted on in the one after). (Layer and address
   range checks, ``BAD_ADDRESS``, are the command processor's.)
2. Address set-up: ``head_bytes = (max_context / 32) * segment_bytes`` (``segment_bytes`` is a build-time
   constant of ``head_dim`` and the bus width) and ``layer_base = kv_base + layer * kv_heads * head_bytes``
   (``firmware.kv_cache.KvCacheLayout``), by one shift-and-add multiplier, one multiplier bit per cycle
   (at most ``bits(max_context / 32) + bits(max_kv_heads) + 8`` cycles, once per command): the three
   products would otherwise take about five DSP blocks for a few cycles of work per command.
3. Four sequencers then run side by side over the tiles of ``query_block`` queries of the run's
   ``n_tokens`` tokens (positions ``pos ..``), each in the engine's order (tile, kv head, query of the
   tile, head of the group, beat):

   * **tile commands** to the engine: ``pos + t0``, ``last``, ``group``, ``kv_heads``;
   * **KV reads**: one :class:`~hw.memory.axi.AxiBurstReader` command per (tile, kv head) for that kv
     head's segments ``0 .. (last query's position) // 32``, which are adjacent in DRAM. The reader
     keeps ``max_outstanding`` bursts in flight and runs ahead of the engine as far as its buffer
     allows, into the next kv head and tile, so decode stays DRAM-bound. A
     :class:`~hw.memory.gearbox.Gearbox` cuts the bus words into the engine's ``chunk``-byte beats;
     the last bus word of every segment is a flush whose top ``pad_bytes`` bytes (the segment's bus
     padding) are dropped, so the engine is built without padding chunks;
   * **query reads** from buffer ``Q`` (index ``head * head_dim / lanes + beat`` of token ``t0 + query``),
     a request per cycle while the buffers take them, their ``lanes``-wide answers repacked into ``chunk``-byte beats with the
     vector's exponent from ``rd_e``; they run ahead into the next kv head while the engine streams;
   * **outputs**: the engine's ``chunk``-wide Q.16 beats repacked into ``lanes``-wide writes of buffer
     ``ATT`` (int32 in the low 32 bits of each 64-bit lane), token ``t0 + query``, index
     ``head * head_dim / lanes + beat``.
4. ``busy`` falls when the last output has been written.

``lanes`` and ``chunk`` must divide one another (both divide ``head_dim``), so the repacking is a
counter and a register, never a barrel shifter.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from golden.numerics import ATTN_KEY_BLOCK, score_constant

from ..attention.arith import const_mul
from ..attention.engine import AttentionEngine, chunk_geometry
from ..dataflow.credit_link import CreditLink
from ..dataflow.skid import SkidBuffer
from ..isa import ADDR_BITS, BODIES, RUN_ARGS, ErrorCode, Opcode
from ..memory.axi import AxiBurstReader
from ..memory.gearbox import Gearbox
from ..params import check_int
from ..replica import registered_copies
from ..vector.quant_pow2 import E_FIELD_BITS
from .buffers import ANSWER_PLACES, Buffer, rd_req_layout, wr_layout

__all__ = ["AttendUnit", "segment_bytes"]

_EXP_BYTES = 2 * ATTN_KEY_BLOCK


def segment_bytes(head_dim, bus_bytes):
    """``(segment_bytes, pad_bytes)`` of ``firmware.kv_cache.KvCacheLayout`` for ``head_dim`` and the bus."""
    raw = (-(-_EXP_BYTES // head_dim) + 2 * ATTN_KEY_BLOCK) * head_dim
    seg = -(-raw // bus_bytes) * bus_bytes
    return seg, seg - raw


class AttendUnit(wiring.Component):
    """See the module docstring.

    Parameters
    ----------
    head_dim : int
        ``d`` of the build (``SETUP.head_dim`` must equal it); a multiple of ``lanes``.
    lanes : int
        Vector lanes ``N``: elements per activation-buffer beat (the TLMM lanes); a power of two.
    att_lanes : int
        Attention MACs per cycle (``attention.lanes``): the engine's ``chunk = min(att_lanes, d)``.
    query_block : int
        Queries per tile.
    max_context : int
        Largest ``SETUP.max_context`` (a multiple of 32).
    max_group, max_kv_heads : int
        Largest GQA group and number of kv heads.
    data_bits : int
        DRAM bus width (a power of two, 32 .. 1024).
    max_tokens : int
        Tokens per run (the buffers' capacity).
    max_index : int
        Largest index of the buffer ports (``LinearUnit.max_index`` at the top level); must cover
        ``max_group * max_kv_heads * d / N - 1``.

    Attributes
    ----------
    cmd : In(stream.Signature(BODIES[Opcode.ATTEND]))
    setup : In(BODIES[Opcode.SETUP])
    n_tokens, pos : In
        The run arguments.
    axi : Out(AxiReadSignature(ADDR_BITS, data_bits))
        KV cache reads.
    rd_req : Out(stream.Signature(rd_req_layout(max_tokens, max_index)))
    rd_data : In(stream.Signature(unsigned(64 * lanes)))
    rd_e : In(E_FIELD_BITS)
        Valid with ``rd_data``: the q vector's exponent.
    wr : Out(stream.Signature(wr_layout(lanes, max_tokens, max_index)))
    busy : Out(1)
    fault : Out(ErrorCode)
        ``CONFIG_MISMATCH`` or ``NONE``; held until the next command.
    """

    def __init__(self, *, head_dim, lanes, att_lanes, query_block, max_context, max_group, max_kv_heads, data_bits,
                 max_tokens, max_index):
        owner = "AttendUnit"
        self.lanes = check_int("lanes", lanes, 1, 64, owner)
        if lanes & (lanes - 1):
            raise ValueError(f"{owner}: lanes must be a power of two, got {lanes}")
        self.head_dim = check_int("head_dim", head_dim, 1, 256, owner)
        if head_dim % lanes:
            raise ValueError(f"{owner}: head_dim = {head_dim} is not a multiple of lanes = {lanes}")
        self.att_lanes = check_int("att_lanes", att_lanes, 1, 256, owner)
        self.chunk, self.row_beats = chunk_geometry(head_dim, att_lanes)
        if self.chunk % lanes and lanes % self.chunk:
            raise ValueError(f"{owner}: the attention chunk ({self.chunk} bytes) and lanes = {lanes} must divide "
                             "one another")
        self.query_block = check_int("query_block", query_block, 1, 64, owner)
        self.max_context = check_int("max_context", max_context, ATTN_KEY_BLOCK, 1 << 16, owner)
        if max_context % ATTN_KEY_BLOCK:
            raise ValueError(f"{owner}: max_context = {max_context} is not a multiple of {ATTN_KEY_BLOCK}")
        self.max_group = check_int("max_group", max_group, 1, 255, owner)
        self.max_kv_heads = check_int("max_kv_heads", max_kv_heads, 1, 255, owner)
        self.data_bits = check_int("data_bits", data_bits, 32, 1024, owner)
        if data_bits & (data_bits - 1):
            raise ValueError(f"{owner}: data_bits must be a power of two, got {data_bits}")
        self.max_tokens = check_int("max_tokens", max_tokens, 1, 256, owner)
        self.beats_per_head = head_dim // lanes
        need = max_group * max_kv_heads * self.beats_per_head - 1
        self.max_index = check_int("max_index", max_index, need, 1 << 20, owner)
        B = data_bits // 8
        self.segment_bytes, self.pad_bytes = segment_bytes(head_dim, B)
        self.seg_beats = self.segment_bytes // B
        self.score_m, self.score_s = score_constant(head_dim)
        self.engine = AttentionEngine(max_group, max_kv_heads, head_dim, att_lanes, query_block=query_block,
                                      max_context=max_context, pad_chunks=0)
        max_burst = max(1, min(64, 4096 // B))
        max_beats = (max_context // ATTN_KEY_BLOCK) * self.seg_beats
        self._reader = AxiBurstReader(ADDR_BITS, data_bits, buffer_words=max(16, 4 * max_burst), max_burst=max_burst,
                                      max_outstanding=4, beats_bits=max_beats.bit_length())
        self.gearbox = Gearbox(data_bits, 8 * self.chunk)
        super().__init__({
            "cmd": In(stream.Signature(BODIES[Opcode.ATTEND])),
            "setup": In(BODIES[Opcode.SETUP]),
            "n_tokens": In(RUN_ARGS["n_tokens"]),
            "pos": In(RUN_ARGS["pos"]),
            "axi": Out(self._reader.axi_signature),
            "rd_req": Out(stream.Signature(rd_req_layout(max_tokens, max_index))),
            "rd_data": In(stream.Signature(unsigned(64 * lanes))),
            "rd_e": In(E_FIELD_BITS),
            "wr": Out(stream.Signature(wr_layout(lanes, max_tokens, max_index))),
            "busy": Out(1),
            "fault": Out(ErrorCode),
        })

    def elaborate(self, platform):
        m = Module()
        N, C, QB, DN = self.lanes, self.chunk, self.query_block, self.beats_per_head
        MG, MKV = self.max_group, self.max_kv_heads
        m.submodules.engine = eng = self.engine
        m.submodules.reader = rd = self._reader
        m.submodules.gearbox = gb = self.gearbox
        wiring.connect(m, wiring.flipped(self.axi), rd.axi)
        s = self.setup

        # -- registers of the command ---------------------------------------------------------------------
        tokens = Signal(range(self.max_tokens + 1))
        pos0 = Signal.like(self.pos)
        layer = Signal(8)
        group = Signal(range(MG + 1))
        kvh_m1 = Signal(range(max(2, MKV)))
        head_bytes = Signal(ADDR_BITS)
        layer_base = Signal(ADDR_BITS)
        # The shift-and-add multiplier of the address set-up: acc += x while y has bits left.
        mul_x = Signal(ADDR_BITS)
        # SETUP.max_context is checked to be at most the build's, so max_context / 32 fits these bits.
        blocks_bits = (self.max_context // ATTN_KEY_BLOCK).bit_length()
        mul_y = Signal(max(8, blocks_bits))
        mul_acc = Signal(ADDR_BITS)
        t0_bits = range(self.max_tokens + QB + 1)

        # SETUP checks (of SETUP and n_tokens registered, see CHECK below); the group is the g with heads ==
        # kv_heads * g (no divider).
        s_r = Signal.like(s)
        n_tokens_r = Signal.like(self.n_tokens)
        m.d.sync += [s_r.eq(s), n_tokens_r.eq(self.n_tokens)]
        # In CHECK: matches[g - 1] = heads == kv_heads * g, and every other check (bad_other); registered.
        matches = Signal(MG)
        m.d.comb += matches.eq(Cat(s_r.heads == const_mul(s_r.kv_heads, g) for g in range(1, MG + 1)))
        bad_other = Signal()
        m.d.comb += bad_other.eq((s_r.head_dim != self.head_dim) | (s_r.kv_heads == 0) | (s_r.kv_heads > MKV)
                                 | (s_r.score_m != self.score_m) | (s_r.score_s != self.score_s)
                                 | (s_r.max_context == 0) | (s_r.max_context[:5] != 0)
                                 | (s_r.max_context > self.max_context) | (n_tokens_r > self.max_tokens))
        # In CHECK2, from those registers: the group (the largest matching g; only one can match when
        # kv_heads > 0) and the verdict.
        matches_r, bad_other_r = Signal(MG), Signal()
        m.d.sync += [matches_r.eq(matches), bad_other_r.eq(bad_other)]
        found = Signal(range(MG + 1))
        for g in range(1, MG + 1):
            with m.If(matches_r[g - 1]):
                m.d.comb += found.eq(g)
        bad = Signal()
        m.d.comb += bad.eq(bad_other_r | (matches_r == 0))

        def tile_size(left):
            return Mux(left > QB, QB, left)

        # The sequencers below keep the tokens left from their tile (``left``), the tile's last query index
        # and whether it is the run's last tile in registers, each computed when the tile starts: a tile's
        # counters then compare with registers, not with tokens - t0 through a clamp.
        def tile_regs(prefix):
            return (Signal(t0_bits, name=f"{prefix}_left"), Signal(range(max(2, QB)), name=f"{prefix}_last"),
                    Signal(name=f"{prefix}_final"))

        def tile_start(regs, left):
            """Statements that make ``regs`` describe a tile with ``left`` tokens left (``left >= 1``)."""
            r_left, r_last, r_final = regs
            return [r_left.eq(left), r_last.eq(tile_size(left) - 1), r_final.eq(left <= QB)]

        # The first tile's values (of ``tokens``) and kv_heads - 2, group - 2 for the counters' "next is the
        # last" tests, registered every cycle: ``tokens`` and ``kvh_m1`` are set in IDLE and ``group`` in
        # CHECK2, several cycles before LAYER_BASE starts the sequencers.
        w_qb = max(2, QB).bit_length()
        tok_last, tok_final = Signal(range(max(2, QB))), Signal()
        tok_last_m1, tok_one = Signal(signed(w_qb + 1)), Signal()
        kvh_m2 = Signal(range(-1, max(2, MKV)))
        group_m2 = Signal(range(-2, MG + 1))
        m.d.sync += [tok_last.eq(tile_size(tokens) - 1), tok_final.eq(tokens <= QB),
                     tok_last_m1.eq(tile_size(tokens) - 2), tok_one.eq(tile_size(tokens) == 1),
                     kvh_m2.eq(kvh_m1 - 1), group_m2.eq(group - 2)]

        def tile_first(regs):
            """Statements that make ``regs`` describe the run's first tile."""
            r_left, r_last, r_final = regs
            return [r_left.eq(tokens), r_last.eq(tok_last), r_final.eq(tok_final)]

        # -- 1. tile commands --------------------------------------------------------------------------------
        c_active = Signal()
        c_pos = Signal.like(eng.cmd.payload.pos)
        c_tile = tile_regs("c")
        c_left, c_last, c_final = c_tile
        m.d.comb += [eng.cmd.valid.eq(c_active), eng.cmd.payload.pos.eq(c_pos), eng.cmd.payload.last.eq(c_last),
                     eng.cmd.payload.group.eq(group), eng.cmd.payload.kv_heads.eq(kvh_m1 + 1)]
        with m.If(eng.cmd.valid & eng.cmd.ready):
            m.d.sync += [c_pos.eq(c_pos + QB), *tile_start(c_tile, c_left - QB)]
            with m.If(c_final):
                m.d.sync += c_active.eq(0)

        # -- 2. KV reads: per (tile, kv head) its segments 0 .. last block, adjacent in DRAM -----------------
        k_active = Signal()
        k_pos = Signal(range((1 << len(pos0)) + self.max_tokens + QB))     # the tile's first position
        k_tile = tile_regs("k")
        k_left, k_last, k_final = k_tile
        k_h = Signal.like(kvh_m1)
        k_addr = Signal(ADDR_BITS)
        k_beats = Signal.like(rd.cmd.payload.beats)
        last_block = Signal(range(max(2, self.max_context // ATTN_KEY_BLOCK)))
        # The tile's read length, one cycle after the tile's registers (k_beats_ok): a command waits for it.
        k_beats_ok = Signal()
        m.d.comb += last_block.eq((k_pos + k_last) >> 5)
        m.d.sync += [k_beats.eq(const_mul(last_block + 1, self.seg_beats)), k_beats_ok.eq(k_active)]
        m.d.comb += [rd.cmd.valid.eq(k_active & k_beats_ok), rd.cmd.payload.addr.eq(k_addr),
                     rd.cmd.payload.beats.eq(k_beats), rd.cmd.payload.tag.eq(0)]
        # k_h == kvh_m1 as a flip-flop stepped with k_h: the compare sat between the read command's
        # handshake and the walk's enables (kvh_m1 to k_active, 11.73 ns placed on the ECP5 shell at
        # 7f9b7c7, 16 late endpoints).
        k_h_last = Signal()
        with m.If(rd.cmd.valid & rd.cmd.ready):
            m.d.sync += [k_h.eq(k_h + 1), k_addr.eq(k_addr + head_bytes), k_h_last.eq(k_h == kvh_m2)]
            with m.If(k_h_last):
                m.d.sync += [k_h.eq(0), k_h_last.eq(kvh_m1 == 0), k_addr.eq(layer_base), k_pos.eq(k_pos + QB),
                             *tile_start(k_tile, k_left - QB), k_beats_ok.eq(0)]
                with m.If(k_final):
                    m.d.sync += k_active.eq(0)
        # Bus words to chunks; the last word of each segment flushes the gearbox, dropping the bus padding.
        seg_i = Signal(range(max(2, self.seg_beats)))       # never zero bits wide (Verilator)
        seg_end = seg_i == self.seg_beats - 1
        # The reader's words reach the gearbox over a credit link, so the reader's credit count sees a
        # flip-flop's ready beside it: the gearbox sits with the engine, across the die from the reader,
        # and its ready went into the credit adder (12.10 ns placed on the ECP5 shell at 956eb7e); a
        # register slice took the same route from its skid flag, placed by the gearbox (11.14 ns at
        # 142dbaf). Two cycles more per KV word's latency, none between words.
        m.submodules.kv_words = kv_words = CreditLink(rd.data.payload.shape(), forward=1, back=1)
        wiring.connect(m, rd.data, kv_words.i)
        words = kv_words.o
        m.d.comb += [gb.i.valid.eq(words.valid), words.ready.eq(gb.i.ready),
                     gb.i.payload.data.eq(words.payload.data), gb.i.payload.flush.eq(seg_end),
                     gb.i.payload.pad.eq(Mux(seg_end, self.pad_bytes, 0))]
        with m.If(gb.i.valid & gb.i.ready):
            m.d.sync += seg_i.eq(Mux(seg_end, 0, seg_i + 1))
        # The chunks pass a skid buffer: the engine's `kv.ready` (a function of its state machine) stops
        # there, and the gearbox sees a flip-flop (placed apart on ECP5, the two made a 15 ns loop).
        m.submodules.kv_slice = kv_slice = SkidBuffer(eng.kv.payload.shape())
        wiring.connect(m, gb.o, kv_slice.i)
        wiring.connect(m, kv_slice.o, eng.kv)

        # -- 3. query reads: (tile, kv head, query, head of the group, beat) ------------------------------
        def head_loop(prefix, step, active):
            """Counters of one (tile, kv head, query, head of the group, beat) walk, advanced by ``step``.

            Each counter has a flag "at its last value", set from the counter's value before it steps
            (``b == DN - 2`` on an increment, the wrap value's test on a wrap), so a step tests four
            registers instead of four comparators in a row.
            """
            t0 = Signal(t0_bits, name=f"{prefix}_t0")
            tile = tile_regs(prefix)
            left, last_qi, final = tile
            h = Signal.like(kvh_m1, name=f"{prefix}_h")
            hbase = Signal(range(MG * MKV + 1), name=f"{prefix}_hbase")     # first head of the kv head's group
            qi = Signal(range(max(2, QB)), name=f"{prefix}_qi")
            g = Signal(range(max(2, MG)), name=f"{prefix}_g")
            b = Signal(range(max(2, DN)), name=f"{prefix}_b")
            h_end, qi_end, g_end, b_end = (Signal(name=f"{prefix}_{n}_end") for n in ("h", "qi", "g", "b"))
            # Which counters wrap on the next step, as flat conditions of the flags (registers only, one AND
            # each); the step itself only enables the registers (it comes from the handshake, late in the
            # cycle), so it does not go through the choice of their next values.
            wrap_b, wrap_g, wrap_qi, wrap_h = (Signal(name=f"{prefix}_wrap_{n}") for n in ("b", "g", "qi", "h"))
            m.d.comb += [wrap_b.eq(b_end), wrap_g.eq(b_end & g_end),
                         wrap_qi.eq(b_end & g_end & qi_end), wrap_h.eq(b_end & g_end & qi_end & h_end)]
            # last_qi - 1 (-1 for a one-query tile) in a register: the query step compares qi with it.
            w = max(2, QB).bit_length()
            last_m1 = Signal(signed(w + 1), name=f"{prefix}_last_m1")
            # The next tile (left - QB tokens left, at least 1 unless this tile is the final one) is described
            # by comparisons of the register ``left`` with constants and narrow subtractions of its low bits,
            # beside the wrap condition rather than after a subtraction: a tile of QB queries if left > 2 QB,
            # else one of left - QB (left - QB - 1 and left - QB - 2 fit the low w + 1 bits).
            full = left > 2 * QB
            with m.If(step):
                m.d.sync += [b.eq(b + 1), b_end.eq(b == DN - 2)]
                with m.If(wrap_b):
                    m.d.sync += [b.eq(0), b_end.eq(DN == 1), g.eq(g + 1), g_end.eq(g == group_m2)]
                with m.If(wrap_g):
                    m.d.sync += [g.eq(0), g_end.eq(group == 1), qi.eq(qi + 1), qi_end.eq(qi == last_m1)]
                with m.If(wrap_qi):
                    m.d.sync += [qi.eq(0), qi_end.eq(last_qi == 0), h.eq(h + 1), h_end.eq(h == kvh_m2),
                                 hbase.eq(hbase + group)]
                with m.If(wrap_h):
                    m.d.sync += [h.eq(0), h_end.eq(kvh_m1 == 0), hbase.eq(0), t0.eq(t0 + QB),
                                 left.eq(left - QB), final.eq(~full),
                                 last_qi.eq(Mux(full, QB - 1, (left[:w + 1] - (QB + 1))[:len(last_qi)])),
                                 last_m1.eq(Mux(full, QB - 2, (left[:w + 1] - (QB + 2))[:w + 1].as_signed())),
                                 qi_end.eq(Mux(full, QB == 1, left == QB + 1))]
                with m.If(wrap_h & final):
                    m.d.sync += active.eq(0)
            reset = [t0.eq(0), h.eq(0), hbase.eq(0), qi.eq(0), g.eq(0), b.eq(0), *tile_first(tile),
                     last_m1.eq(tok_last_m1),
                     h_end.eq(kvh_m1 == 0), qi_end.eq(tok_one), g_end.eq(group == 1), b_end.eq(DN == 1)]
            return t0 + qi, const_mul(hbase + g, DN) + b, reset

        q_active = Signal()
        outstanding = Signal(range(ANSWER_PLACES + 1))  # requests not yet answered (the buffers refuse more)
        sent, answered = Signal(), Signal()
        q_token, q_index, q_reset = head_loop("q", sent, q_active)
        m.d.comb += [self.rd_req.valid.eq(q_active),
                     self.rd_req.payload.buf.eq(Buffer.Q), self.rd_req.payload.token.eq(q_token),
                     self.rd_req.payload.index.eq(q_index),
                     sent.eq(self.rd_req.valid & self.rd_req.ready),
                     answered.eq(self.rd_data.valid & self.rd_data.ready)]
        m.d.sync += outstanding.eq(outstanding + sent - answered)

        # Answers (N int8 values in 64-bit lanes) to chunks of C bytes with the exponent.
        beat = Cat(*(self.rd_data.payload[64 * n:64 * n + 8] for n in range(N)))
        # The chunks reach the engine through a register slice: the engine's query registers load on its
        # `q.valid`, which was the buffers' answer `valid` after the chunking logic (on the ECP5 shell at
        # 7543e99, 13.5-15.4 ns placed paths into the engine's query registers).
        m.submodules.q_slice = q_slice = SkidBuffer(eng.q.payload.shape())
        wiring.connect(m, q_slice.o, eng.q)
        q_in = q_slice.i
        eq = q_in.payload
        m.d.comb += eq.e.eq(self.rd_e)
        if C >= N:
            K = C // N
            q_sub = Signal(range(max(2, K)))
            last_sub = (q_sub == K - 1) if K > 1 else Const(1)
            if K > 1:
                q_acc = Signal(8 * N * (K - 1))
                m.d.comb += eq.data.as_value().eq(Cat(q_acc, beat))
            else:
                m.d.comb += eq.data.as_value().eq(beat)
            m.d.comb += [q_in.valid.eq(self.rd_data.valid & last_sub),
                         self.rd_data.ready.eq(~last_sub | q_in.ready)]
            if K > 1:
                with m.If(answered):
                    m.d.sync += q_sub.eq(Mux(last_sub, 0, q_sub + 1))
                    with m.If(~last_sub):
                        m.d.sync += q_acc.word_select(q_sub, 8 * N).eq(beat)
        else:
            S = N // C
            q_sub = Signal(range(S))
            m.d.comb += [eq.data.as_value().eq(beat.word_select(q_sub, 8 * C)), q_in.valid.eq(self.rd_data.valid),
                         self.rd_data.ready.eq(q_in.ready & (q_sub == S - 1))]
            with m.If(q_in.valid & q_in.ready):
                m.d.sync += q_sub.eq(Mux(q_sub == S - 1, 0, q_sub + 1))

        # -- 4. outputs: chunks of C int32 to N-lane ATT beats ------------------------------------------------
        o_active = Signal()
        wrote = Signal()
        o_token, o_index, o_reset = head_loop("o", wrote, o_active)
        w = self.wr.payload
        m.d.comb += [w.buf.eq(Buffer.ATT), w.token.eq(o_token), w.index.eq(o_index), w.e.eq(0),
                     wrote.eq(self.wr.valid & self.wr.ready)]
        chunk_bits = eng.o.payload.as_value()

        def lanes_out(values):
            for n in range(N):
                m.d.comb += w.data[64 * n:64 * n + 64].eq(values[32 * n:32 * n + 32].as_signed())

        if C >= N:
            S = C // N
            o_sub = Signal(range(max(2, S)))
            last_o = (o_sub == S - 1) if S > 1 else Const(1)
            lanes_out(chunk_bits.word_select(o_sub, 32 * N) if S > 1 else chunk_bits)
            m.d.comb += [self.wr.valid.eq(eng.o.valid), eng.o.ready.eq(self.wr.ready & last_o)]
            if S > 1:
                with m.If(wrote):
                    m.d.sync += o_sub.eq(Mux(last_o, 0, o_sub + 1))
        else:
            K = N // C
            o_sub = Signal(range(K))
            o_acc = Signal(32 * C * (K - 1))
            last_o = o_sub == K - 1
            lanes_out(Cat(o_acc, chunk_bits))
            m.d.comb += [self.wr.valid.eq(eng.o.valid & last_o), eng.o.ready.eq(~last_o | self.wr.ready)]
            with m.If(eng.o.valid & eng.o.ready):
                m.d.sync += o_sub.eq(Mux(last_o, 0, o_sub + 1))
                with m.If(~last_o):
                    m.d.sync += o_acc.word_select(o_sub, 32 * C).eq(chunk_bits)

        # -- the command sequence -----------------------------------------------------------------------------
        # The checks of the accepting cycle, in registered steps (the comparisons of SETUP are several logic
        # levels deep): CHECK compares SETUP and n_tokens as registered in the accepting cycle, CHECK2
        # acts on the results.
        finished = Signal()                    # RUN: every walk and the reads have drained
        with m.FSM(name="attend") as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [self.busy.eq(1), layer.eq(self.cmd.payload.layer), tokens.eq(self.n_tokens),
                                 pos0.eq(self.pos), kvh_m1.eq(s.kv_heads - 1)]
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.next = "CHECK2"
            with m.State("CHECK2"):
                m.d.sync += group.eq(found)
                with m.If(bad):
                    m.d.sync += self.fault.eq(ErrorCode.CONFIG_MISMATCH)
                    m.next = "FAULT"
                with m.Elif(tokens == 0):
                    m.d.sync += self.fault.eq(ErrorCode.NONE)
                    m.next = "FAULT"                 # nothing to do: finish
                with m.Else():
                    m.d.sync += self.fault.eq(ErrorCode.NONE)
                    m.next = "ADDR1"
            with m.State("FAULT"):
                m.d.sync += self.busy.eq(0)
                m.next = "IDLE"
            with m.State("ADDR1"):
                m.d.sync += [mul_x.eq(self.segment_bytes), mul_y.eq(s.max_context[5:5 + blocks_bits]),
                             mul_acc.eq(0)]
                m.next = "HEAD_BYTES"

            def mul_step():
                m.d.sync += [mul_x.eq(mul_x << 1), mul_y.eq(mul_y >> 1)]
                with m.If(mul_y[0]):
                    m.d.sync += mul_acc.eq(mul_acc + mul_x)

            with m.State("HEAD_BYTES"):        # head_bytes = (max_context / 32) * segment_bytes
                mul_step()
                with m.If(mul_y == 0):
                    m.d.sync += [head_bytes.eq(mul_acc), mul_x.eq(mul_acc), mul_y.eq(s.kv_heads), mul_acc.eq(0)]
                    m.next = "LAYER_BYTES"
            with m.State("LAYER_BYTES"):       # kv_heads * head_bytes, then layer times that from kv_base
                mul_step()
                with m.If(mul_y == 0):
                    m.d.sync += [mul_x.eq(mul_acc), mul_y.eq(layer), mul_acc.eq(s.kv_base)]
                    m.next = "LAYER_BASE"
            with m.State("LAYER_BASE"):
                mul_step()
                with m.If(mul_y == 0):
                    m.next = "START"
            with m.State("START"):
                # The walks start here (below), a cycle after `mul_y == 0`: from the compare, through the
                # state decode, into the enables of every walk register was 10.32 ns routed at 9887928.
                # One cycle more per command; mul_acc holds the layer's base.
                m.next = "RUN"
            with m.State("RUN"):
                # Everything has drained: registered, and acted on a cycle later (nothing starts again in
                # this state, so it stays true). As a gate, the gearbox's valid and the walks' flags went
                # through three levels into the state register and `busy` (11.27 ns placed at 6c79f98).
                m.d.sync += finished.eq(~o_active & ~c_active & ~k_active & ~q_active & (outstanding == 0)
                                        & rd.idle & ~rd.data.valid & kv_words.idle
                                        & ~gb.o.valid)
                with m.If(finished):
                    m.d.sync += [self.busy.eq(0), finished.eq(0)]
                    m.next = "IDLE"
        # The walks start in START from flip-flops of their own, one per walk (replicas), set as LAYER_BASE
        # ends: with START's state decode the enables of the ~100 walk registers had the state register's
        # fanout across the unit in front of them (11.30 ns placed on the ECP5 shell at e8c64fe, from the
        # state into k_active's enable).
        go_c, go_k, go_q, go_o = registered_copies(m, fsm.ongoing("LAYER_BASE") & (mul_y == 0), 4, "walks_go")
        with m.If(go_c):
            m.d.sync += [c_pos.eq(pos0), *tile_first(c_tile), c_active.eq(1)]
        with m.If(go_k):
            m.d.sync += [layer_base.eq(mul_acc), k_addr.eq(mul_acc), k_pos.eq(pos0), k_h.eq(0),
                         k_h_last.eq(kvh_m1 == 0), *tile_first(k_tile), k_active.eq(1)]
        with m.If(go_q):
            m.d.sync += [q_active.eq(1), *q_reset]
        with m.If(go_o):
            m.d.sync += [o_active.eq(1), *o_reset]
        return m
