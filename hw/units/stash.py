"""The residual stash units: ``LOAD_X`` (DRAM to the residual buffer) and ``SAVE_X`` (the residual buffer to
DRAM), for layer-group prefill (``docs/isa.md``, golden ``IsaMachine._op_load_x`` / ``_op_save_x``).

The record (``hw.dram_format.x_stash_stride``): token ``t`` of the run is the int32 vector at
``addr + t * stride``, ``stride = 4 * ceil(hidden / lanes) * lanes`` bytes, i.e. ``ceil(hidden / lanes)``
beats of ``lanes`` int32 per token, one beat after the other. ``addr`` must be a multiple of
``max(bus bytes, 4 * lanes)`` (``BAD_ADDRESS`` otherwise, and nothing is read or written), so the whole
stash of a run is one contiguous run of ``n_tokens * beats`` beats starting on a bus word: both units move
it as a single AXI4 command of ``ceil(n_tokens * beats * 4 * lanes / bus)`` bus words. Bus words and beats
are both powers of two bytes, so the conversion between them is a plain gearbox: ``4 * lanes / bus`` bus
words per beat, or ``bus / (4 * lanes)`` beats per bus word (the last word of a stash may be partial).

``LOAD_X`` (:class:`LoadXUnit`)
    Reads the stash through an :class:`~hw.memory.axi.AxiBurstReader` and emits the residual buffer's
    ``x_in`` beats (:func:`~hw.units.embed.embed_out_layout`, as the EMBED unit does): tokens in order,
    ``beats`` per token, lanes at or beyond ``hidden`` zero whatever DRAM holds there.
``SAVE_X`` (:class:`SaveXUnit`)
    Reads the ``X`` buffer through the buffers' ``rd_req`` / ``rd_data`` ports (64-bit lanes,
    sign-extended int32), truncates the lanes to int32 (lanes at or beyond ``hidden`` written as 0) and
    writes the stash through its own :class:`~hw.memory.axi_write.AxiBurstWriter` with byte strobes (a last
    partial bus word writes only the stash's bytes).

Both raise ``busy`` from the cycle after they accept a command until the last beat has left (``LOAD_X``)
or the last write response has come back (``SAVE_X``). ``fault`` is ``BAD_ADDRESS`` for a misaligned
``addr`` or any SLVERR/DECERR response of the command's own transfers (watched on the AXI channel, so a
fault lasts only until the next command, unlike the readers' and writers' sticky ``error``); the rest of
the transfer still runs (AXI bursts cannot be cancelled), but ``LOAD_X`` emits nothing after the error.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from ..arith.dsp import registered_product
from ..dataflow.credit_link import CreditLink
from ..dataflow.skid import SkidBuffer
from ..isa import ADDR_BITS, BODIES, RUN_ARGS, ErrorCode, Opcode
from ..memory.axi import AxiBurstReader
from ..memory.axi_write import AxiBurstWriter
from ..params import check_int
from ..vector.epilogue import lane
from .buffers import Buffer, rd_req_layout
from .embed import embed_out_layout

__all__ = ["LoadXUnit", "SaveXUnit", "stash_alignment"]

#: Longest burst of the stash units (bus words): two in flight cover the tiny config's 20-cycle DRAM latency.
_MAX_BURST = 16


def stash_alignment(data_bits, lanes):
    """The byte alignment a stash ``addr`` needs: ``max(bus bytes, 4 * lanes)`` (golden ``_stash_aligned``)."""
    return max(data_bits // 8, 4 * lanes)


class _StashGeometry:
    """Argument checks and the geometry both units share."""

    def _geometry(self, owner, data_bits, lanes, max_hidden, max_tokens):
        self.data_bits = check_int("data_bits", data_bits, 32, 1024, owner)
        if data_bits & (data_bits - 1):
            raise ValueError(f"{owner}: data_bits must be a power of two, got {data_bits}")
        self.lanes = check_int("lanes", lanes, 1, 64, owner)
        if lanes & (lanes - 1):
            raise ValueError(f"{owner}: lanes must be a power of two, got {lanes}")
        self.max_hidden = check_int("max_hidden", max_hidden, 1, (1 << 16) - 1, owner)
        self.max_tokens = check_int("max_tokens", max_tokens, 1, 256, owner)
        self.max_beats = -(-max_hidden // lanes)
        bus, beat = data_bits // 8, 4 * lanes
        #: Bus words per beat (a beat at least as wide as the bus) and beats per bus word.
        self.words_per_beat = max(1, beat // bus)
        self.beats_per_word = max(1, bus // beat)
        self.align = stash_alignment(data_bits, lanes)
        self.max_words = -(-max_tokens * self.max_beats * beat // bus)
        self.burst = max(1, min(_MAX_BURST, self.max_words))
        self.beats_bits = self.max_words.bit_length() + 1

    def _words(self, m, n_tok, beats, platform):
        """The bus words of ``n_tok`` tokens of ``beats`` beats, from a product registered in the
        multiplier block (:func:`~hw.arith.dsp.registered_product`): valid two cycles after ``n_tok`` and
        ``beats`` are set (the product register, then this expression's consumer's register)."""
        total = registered_product(m, "stash_total", n_tok, beats, platform=platform)
        if self.words_per_beat > 1:
            return total << exact_log2(self.words_per_beat)
        k = self.beats_per_word
        return (total + k - 1) >> exact_log2(k)


class _BeatCursor:
    """The (token, beat) a stash unit is at, counted over ``n_tok`` tokens of ``beats`` beats.

    Whether beat ``bt`` ends its token and token ``tok`` ends the stash are flags registered beside the
    counters (:meth:`start` sets them up, :meth:`advance` steps them), so a beat's handshake, which comes
    from a consumer's ``ready``, reaches the counters' enables without their compares (``tok + 1 == n_tok``
    and ``bt + 1 == beats`` on LOAD_X's were 13.72 ns placed on the ECP5 shell at 1fe27f9).
    """

    def __init__(self, m, n_tok, beats, max_beats, name=""):
        self._m, self._n_tok, self._beats = m, n_tok, beats
        self.tok = Signal.like(n_tok, name=f"{name}tok")
        self.bt = Signal(range(max_beats + 1), name=f"{name}bt")
        self._bt_end, self._tok_end = Signal(name=f"{name}bt_end"), Signal(name=f"{name}tok_end")
        #: The beat at the cursor is the stash's last.
        self.last = Signal(name=f"{name}last")
        m.d.comb += self.last.eq(self._tok_end & self._bt_end)

    def start(self):
        """At the first beat (once ``n_tok`` and ``beats`` hold the command's values)."""
        self._m.d.sync += [self.tok.eq(0), self.bt.eq(0), self._bt_end.eq(self._beats == 1),
                           self._tok_end.eq(self._n_tok == 1)]

    def advance(self):
        """To the next beat; returns the beat number it moves to."""
        m, tok, bt = self._m, self.tok, self.bt
        bt_next = Mux(self._bt_end, 0, bt + 1)
        m.d.sync += bt.eq(bt_next)
        with m.If(self._bt_end):
            m.d.sync += [self._bt_end.eq(self._beats == 1), tok.eq(tok + 1), self._tok_end.eq(tok + 2 == self._n_tok)]
        with m.Else():
            m.d.sync += self._bt_end.eq(bt + 2 == self._beats)
        return bt_next


class LoadXUnit(_StashGeometry, wiring.Component):
    """``LOAD_X``: the residual stash from DRAM to the residual buffer (see the module docstring).

    Parameters
    ----------
    data_bits : int
        DRAM bus width, a power of two of 32 to 1024 bits.
    lanes : int
        int32 values per beat (the TLMM lanes, a power of two).
    max_hidden : int
        Largest ``hidden``.
    max_tokens : int
        Most tokens per run.

    Attributes
    ----------
    cmd : In(stream.Signature(BODIES[Opcode.LOAD_X]))
    hidden : In(16)
        ``SETUP.hidden``.
    n_tokens : In
        Run argument.
    axi : Out(AxiReadSignature)
    x : Out(stream.Signature(embed_out_layout(lanes, max_tokens, ceil(max_hidden / lanes))))
        Residual beats for ``ActivationBuffers.x_in``.
    busy : Out(1)
    fault : Out(ErrorCode)
        ``BAD_ADDRESS`` (until the next command).
    """

    def __init__(self, *, data_bits, lanes, max_hidden, max_tokens):
        self._geometry("LoadXUnit", data_bits, lanes, max_hidden, max_tokens)
        self._reader = AxiBurstReader(ADDR_BITS, data_bits, buffer_words=max(4, 2 * self.burst),
                                      max_burst=self.burst, max_outstanding=2, beats_bits=self.beats_bits)
        super().__init__({
            "cmd": In(stream.Signature(BODIES[Opcode.LOAD_X])),
            "hidden": In(16),
            "n_tokens": In(RUN_ARGS["n_tokens"]),
            "axi": Out(self._reader.axi_signature),
            "x": Out(stream.Signature(embed_out_layout(lanes, max_tokens, self.max_beats))),
            "busy": Out(1),
            "fault": Out(ErrorCode),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader = rd = self._reader
        wiring.connect(m, wiring.flipped(self.axi), rd.axi)
        L, B = self.lanes, self.data_bits // 8
        W, K = self.words_per_beat, self.beats_per_word

        addr = Signal(ADDR_BITS)
        n_tok = Signal.like(self.n_tokens)
        hidden = Signal(16)
        beats = Signal(range(self.max_beats + 1))
        words = Signal(self.beats_bits)
        words_next = self._words(m, n_tok, beats, platform)
        cursor = _BeatCursor(m, n_tok, beats, self.max_beats)     # the next beat out
        tok, bt, last = cursor.tok, cursor.bt, cursor.last
        fault = Signal(ErrorCode)
        m.d.comb += [self.fault.eq(fault), rd.cmd.payload.tag.eq(0)]

        # The beats leave through a register slice: the buffers' ready (across the die, through the top's
        # choice of source) reached the beat counters' enables after the handshake logic (15.1 ns placed
        # in a trial build); the slice's ready is a flip-flop beside them.
        m.submodules.x_slice = x_slice = SkidBuffer(self.x.payload.shape())
        wiring.connect(m, x_slice.o, wiring.flipped(self.x))
        xo = x_slice.i
        out_ready = ~xo.valid | xo.ready
        # The bus words come in over a credit link: the reader's output FIFO sat across the die from the
        # beat assembly, and its ready (from `wsel`) went out to the FIFO's read logic and came back as the
        # handshake into `wsel`'s, `held`'s and the beat register's enables (two 4 ns routes; 12.2 ns
        # placed on the ECP5 shell at dfe4cdf, both seeds). A register slice there still had its output
        # register's enable, from this end's ready, reach registers placed by the reader (10.91 ns placed
        # at e8c64fe, 34 endpoints); the link's FIFO is here and its ready a flip-flop at the reader. A
        # stash starts two cycles later.
        m.submodules.word_link = word_link = CreditLink(rd.data.payload.shape(), forward=1, back=1)
        wiring.connect(m, rd.data, word_link.i)
        words_in = word_link.o
        with m.If(xo.ready):
            m.d.sync += xo.valid.eq(0)

        # The beat being assembled: W > 1 bus words shifted into `held` (lowest address first) and the
        # last one, or beat `k` of K in one word.
        word = words_in.payload.data
        if W > 1:
            held = Signal(8 * B * (W - 1))
            wsel = Signal(range(W))
            vec = Cat(held, word)
        else:
            k = Signal(range(K))
            vec = word.word_select(k, 32 * L) if K > 1 else word[:32 * L]
        # The beat register loads whenever the slice can take a beat (its valid says whether it holds
        # one): under the send condition, a handshake of both slices, its 77 enables were spread over
        # the unit and the logic ran out to them and back (12.34 ns placed on the ECP5 shell at 956eb7e).
        with m.If(out_ready):
            m.d.sync += [xo.payload.token.eq(tok), xo.payload.beat.eq(bt)]
            base = bt << exact_log2(L)
            for n in range(L):
                m.d.sync += lane(xo.payload.data, n).eq(Mux(base + n < hidden, vec[32 * n:32 * n + 32], 0))

        def emit(advance=True):
            """Send the beat as ``(tok, bt)``, lanes beyond ``hidden`` zeroed; the cursor moves on now, or
            (``advance=False``) the caller moves it."""
            m.d.sync += xo.valid.eq(fault == ErrorCode.NONE)
            if advance:
                cursor.advance()

        emitted = Signal()      # (W > 1) a beat was sent last cycle: the cursor moves now
        m.d.sync += emitted.eq(0)
        with m.FSM(name="load_x"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    a = self.cmd.payload.addr
                    m.d.sync += [addr.eq(a), n_tok.eq(self.n_tokens), hidden.eq(self.hidden),
                                 beats.eq((self.hidden + L - 1) >> exact_log2(L)),
                                 fault.eq(ErrorCode.NONE), self.busy.eq(1)]
                    with m.If(a[:exact_log2(self.align)] != 0):
                        m.d.sync += fault.eq(ErrorCode.BAD_ADDRESS)
                        m.next = "DONE"
                    with m.Else():
                        m.next = "SIZE"
            with m.State("SIZE"):           # the product register loads n_tok * beats
                cursor.start()
                with m.If((n_tok == 0) | (beats == 0)):
                    m.next = "DONE"
                with m.Else():
                    m.next = "WORDS"
            with m.State("WORDS"):
                m.d.sync += words.eq(words_next)
                m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += [rd.cmd.valid.eq(1), rd.cmd.payload.addr.eq(addr), rd.cmd.payload.beats.eq(words)]
                with m.If(rd.cmd.ready):
                    m.next = "STREAM"
            with m.State("STREAM"):
                if W > 1:
                    # A beat spans W bus words: shift the first W - 1 in (lowest address first), emit with the last.
                    # wsel == W - 1 as a register beside it: the compare sat between the slice's ready and
                    # the beat cursor's enables (10.17 ns routed on the ECP5 shell at 9887928).
                    wsel_last = Signal()
                    # The cursor moves a cycle after its beat is sent (`emitted`, a flip-flop): the
                    # handshake (the slices' valid and ready flags) went on into the cursor's enables,
                    # spread over the unit (x_slice's skid flag to `tok_end`, 12.10 ns placed on the ECP5
                    # shell at 7f9b7c7, 27 late endpoints). A beat takes W >= 2 words, so the next send,
                    # two cycles on at the earliest, sees the cursor moved.
                    # The state moves to DRAIN a cycle after the last beat is sent (`to_drain`): the
                    # handshake reached the state register's enables through the word slice's ready logic,
                    # placed by the slice (13.24 and 10.84 ns placed on the ECP5 shell at 142dbaf). In
                    # that cycle nothing is sent or taken.
                    to_drain = Signal()
                    m.d.sync += to_drain.eq(0)
                    m.d.comb += words_in.ready.eq(~to_drain & (~wsel_last | out_ready))
                    with m.If(to_drain):
                        m.next = "DRAIN"
                    with m.If(words_in.valid & words_in.ready):
                        with m.If(wsel_last):
                            m.d.sync += [wsel.eq(0), wsel_last.eq(0), emitted.eq(1), to_drain.eq(last)]
                            emit(advance=False)
                        with m.Else():
                            m.d.sync += [wsel.eq(wsel + 1), wsel_last.eq(wsel + 1 == W - 1),
                                         held.eq(Cat(held[8 * B:], word) if W > 2 else word)]
                else:
                    # K beats per bus word: emit them in turn; pop the word after its last beat (or the stash's).
                    m.d.comb += words_in.ready.eq(out_ready & ((k == K - 1) | last))
                    with m.If(words_in.valid & out_ready):
                        emit()
                        m.d.sync += k.eq(Mux((k == K - 1) | last, 0, k + 1))
                        with m.If(last):
                            m.next = "DRAIN"
            with m.State("DRAIN"):
                # Nothing should be left over; drop it if it is (the reader must be empty for the next command).
                m.d.comb += words_in.ready.eq(1)
                with m.If(rd.idle & ~rd.data.valid & word_link.idle):
                    m.next = "DONE"
            with m.State("DONE"):
                with m.If(~xo.valid & ~self.x.valid):    # the last beat has left the slice
                    m.d.sync += self.busy.eq(0)
                    m.next = "IDLE"
        if W > 1:
            with m.If(emitted):
                cursor.advance()

        # A DRAM error on any beat of this command's reads.
        axi = self.axi
        with m.If(self.busy & axi.rvalid & axi.rready & axi.rresp[1]):
            m.d.sync += fault.eq(ErrorCode.BAD_ADDRESS)
        return m


class SaveXUnit(_StashGeometry, wiring.Component):
    """``SAVE_X``: the residual buffer to the DRAM stash (see the module docstring).

    Parameters
    ----------
    data_bits : int
        DRAM bus width, a power of two of 32 to 1024 bits.
    lanes : int
        int32 values per beat (the TLMM lanes, a power of two).
    max_hidden : int
        Largest ``hidden``.
    max_tokens : int
        Most tokens per run.
    max_index : int or None
        Largest index of the buffers' request layout (:func:`~hw.units.buffers.rd_req_layout`; the top
        level's is the LINEAR unit's ``max_index``); default ``ceil(max_hidden / lanes) - 1``.

    Attributes
    ----------
    cmd : In(stream.Signature(BODIES[Opcode.SAVE_X]))
    hidden : In(16)
        ``SETUP.hidden``.
    n_tokens : In
        Run argument.
    rd_req : Out(stream.Signature(rd_req_layout(max_tokens, max_index)))
    rd_data : In(stream.Signature(unsigned(64 * lanes)))
        The ``X`` buffer's beats, as ``ActivationBuffers`` answers them.
    axi : Out(AxiWriteSignature)
    busy : Out(1)
    fault : Out(ErrorCode)
        ``BAD_ADDRESS`` (until the next command).
    """

    def __init__(self, *, data_bits, lanes, max_hidden, max_tokens, max_index=None):
        owner = "SaveXUnit"
        self._geometry(owner, data_bits, lanes, max_hidden, max_tokens)
        self.max_index = self.max_beats - 1 if max_index is None else check_int(
            "max_index", max_index, self.max_beats - 1, 1 << 16, owner)
        self.writer = AxiBurstWriter(ADDR_BITS, data_bits, max_burst=self.burst, max_outstanding=4,
                                     beats_bits=self.beats_bits, strobes=True)
        super().__init__({
            "cmd": In(stream.Signature(BODIES[Opcode.SAVE_X])),
            "hidden": In(16),
            "n_tokens": In(RUN_ARGS["n_tokens"]),
            "rd_req": Out(stream.Signature(rd_req_layout(max_tokens, self.max_index))),
            "rd_data": In(stream.Signature(unsigned(64 * lanes))),
            "axi": Out(self.writer.axi_signature),
            "busy": Out(1),
            "fault": Out(ErrorCode),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.writer = wr = self.writer
        wiring.connect(m, wr.axi, wiring.flipped(self.axi))
        L, B = self.lanes, self.data_bits // 8
        W, K = self.words_per_beat, self.beats_per_word

        addr = Signal(ADDR_BITS)
        n_tok = Signal.like(self.n_tokens)
        hidden = Signal(16)
        beats = Signal(range(self.max_beats + 1))
        words = Signal(self.beats_bits)
        words_next = self._words(m, n_tok, beats, platform)
        fault = Signal(ErrorCode)
        m.d.comb += self.fault.eq(fault)
        # The answers come over a credit link, so `rd_data.ready` is a flip-flop and the writer's W ready
        # and word select only step the link's FIFO pointer: they went out across the die to the top
        # level's answer slice and back (its skid flag's reset, 11.90 ns placed at 1843871 and, behind a
        # second slice there, 12.86 ns at 7f9b7c7) and, with a register slice here, to that slice's skid
        # flag, which the placer put beside the top's (12.14 and 11.72 ns at 142dbaf). Two cycles per
        # answer, none between answers.
        m.submodules.answers = answers = CreditLink(self.rd_data.payload.shape(), forward=1, back=1)
        wiring.connect(m, wiring.flipped(self.rd_data), answers.i)
        rd_data = answers.o
        # Requests (token, beat) run ahead; the buffers refuse them while two answers are owed. Their
        # counters' end compares fed `rq_done`'s enable (10.8 ns placed on the ECP5 shell at 6c79f98).
        requests = _BeatCursor(m, n_tok, beats, self.max_beats, name="rq_")
        rq_done = Signal()
        # Answers: the (token, beat) of the beat on rd_data.
        cursor = _BeatCursor(m, n_tok, beats, self.max_beats)
        last = cursor.last

        # The beat as int32 lanes: the low half of each 64-bit lane, 0 at or beyond `hidden`. Which lanes are
        # live is registered beside `bt`, for the beat it counts: the compare of `bt`'s lanes with `hidden`,
        # then the answer word, into the writer's data register was 12.88 ns placed on the ECP5 shell at
        # 2ee4ca5.
        live = Signal(L)

        def live_lanes(beat, limit):
            return Cat(*(((beat << exact_log2(L)) + n) < limit for n in range(L)))

        vec = Cat(*(Mux(live[n], rd_data.payload[64 * n:64 * n + 32], 0) for n in range(L)))

        def advance():
            m.d.sync += live.eq(live_lanes(cursor.advance(), hidden))

        with m.FSM(name="save_x"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    a = self.cmd.payload.addr
                    m.d.sync += [addr.eq(a), n_tok.eq(self.n_tokens), hidden.eq(self.hidden),
                                 beats.eq((self.hidden + L - 1) >> exact_log2(L)),
                                 rq_done.eq(0), fault.eq(ErrorCode.NONE),
                                 self.busy.eq(1)]
                    with m.If(a[:exact_log2(self.align)] != 0):
                        m.d.sync += fault.eq(ErrorCode.BAD_ADDRESS)
                        m.next = "DONE"
                    with m.Else():
                        m.next = "SIZE"
            with m.State("SIZE"):           # the product register loads n_tok * beats
                cursor.start()
                requests.start()
                m.d.sync += live.eq(live_lanes(Const(0, 1), hidden))
                with m.If((n_tok == 0) | (beats == 0)):
                    m.next = "DONE"
                with m.Else():
                    m.next = "WORDS"
            with m.State("WORDS"):
                m.d.sync += words.eq(words_next)
                m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += [wr.cmd.valid.eq(1), wr.cmd.payload.addr.eq(addr), wr.cmd.payload.beats.eq(words)]
                with m.If(wr.cmd.ready):
                    m.next = "STREAM"
            with m.State("STREAM"):
                req = self.rd_req
                m.d.comb += [req.valid.eq(~rq_done), req.payload.buf.eq(Buffer.X),
                             req.payload.token.eq(requests.tok), req.payload.index.eq(requests.bt)]
                with m.If(req.valid & req.ready):
                    requests.advance()
                    with m.If(requests.last):
                        m.d.sync += rq_done.eq(1)
                popped = rd_data.valid & rd_data.ready
                if W > 1:
                    # A beat is W whole bus words.
                    wsel = Signal(range(W))
                    m.d.comb += [wr.data.valid.eq(rd_data.valid),
                                 wr.data.payload.data.eq(vec.word_select(wsel, 8 * B)),
                                 wr.data.payload.strb.eq(Const(-1, B)),
                                 rd_data.ready.eq(wr.data.ready & (wsel == W - 1))]
                    with m.If(wr.data.valid & wr.data.ready):
                        m.d.sync += wsel.eq(Mux(wsel == W - 1, 0, wsel + 1))
                else:
                    # K beats per bus word: collect them in `held`; a word goes out with its last beat, or the
                    # stash's last (then only the bytes of the beats in it are strobed).
                    slot = Signal(range(K))
                    flush = (slot == K - 1) | last
                    held = Signal(32 * L * max(1, K - 1))
                    parts = [Mux(slot == j, vec, held[32 * L * j:32 * L * (j + 1)]) if j < K - 1 else vec
                             for j in range(K)]
                    # The first beat's bytes are always in the word (no `slot >= 0`: a constant compare that
                    # Verilator's lint rejects).
                    strb = [Const(-1, 4 * L) if j == 0 else Mux(slot >= j, Const(-1, 4 * L), 0) for j in range(K)]
                    m.d.comb += [wr.data.valid.eq(rd_data.valid & flush),
                                 wr.data.payload.data.eq(Cat(*parts)), wr.data.payload.strb.eq(Cat(*strb)),
                                 rd_data.ready.eq(~flush | wr.data.ready)]
                    with m.If(popped):
                        m.d.sync += slot.eq(Mux(flush, 0, slot + 1))
                        if K > 1:
                            with m.Switch(slot):
                                for j in range(K - 1):
                                    with m.Case(j):
                                        m.d.sync += held[32 * L * j:32 * L * (j + 1)].eq(vec)
                with m.If(popped):
                    advance()
                    with m.If(last):
                        m.next = "FLUSH"
            with m.State("FLUSH"):
                # Every word is with the writer: wait for the last write response.
                with m.If(wr.idle):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.sync += self.busy.eq(0)
                m.next = "IDLE"

        # A DRAM error on any write response of this command.
        axi = self.axi
        with m.If(self.busy & axi.bvalid & axi.bready & axi.bresp[1]):
            m.d.sync += fault.eq(ErrorCode.BAD_ADDRESS)
        return m
