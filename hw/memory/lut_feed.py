"""Feeds the table-stationary (``lutram``) TLMM engine from the weight buffer, replaying words per token.

:class:`hw.tlmm.TlmmLutEngine` keeps one table set (one k-step of one token) resident and streams weight
words past it, each with its accumulator slot and ``first``/``last``/``done`` flags. The host stores
each matrix's words in table-stationary order (``firmware.weight_schedule.stationary_order``): for each
block of ``block_rows`` row tiles, for each k-step, the block's words. This unit walks that order and
attaches the control:

    for block, for k-step, for token t, for row r of the block:
        word (from the weight buffer when t = 0, else replayed), slot = t * block_rows + r,
        first = (k-step == 0), last = (k-step == k_steps - 1), done = (r == rows of the block - 1)

A k-step's words of one block arrive once from DRAM (token 0) and are written into a replay memory of
``block_rows`` words; tokens 1..M-1 read them back from there. So a prefill chunk reads every weight
byte from DRAM once, as with the ``mux`` engine. In decode (M = 1) nothing is replayed.

The engine takes no words while it fills a table set (15 cycles), but the weight buffer keeps filling
from DRAM, and the path from the buffer through the gearbox carries at most one bus word per cycle, the
port's own rate: time lost there is never made up. So words enter through a FIFO of ``fifo_words``
words, which the gearbox keeps filling during the table fills and the engine drains at one word per
cycle afterwards; with ``fifo_words`` at least the fill time times the bus's word rate, the DRAM port
does not pause for table fills.

The act steps the engine needs are, in the same walk, ``x[token, k-step]`` once per (block, k-step,
token); the sums come out at the last k-step of each block, token-major then row. The engine must
have ``block_rows * max_tokens`` slots.
"""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ..params import check_int
from ..tlmm.layouts import token_bits
from ..tlmm.lut_engine import word_step_layout

__all__ = ["LutWordFeed", "lut_matrix_layout"]


def lut_matrix_layout(max_tokens):
    """One matrix for the feed: its row tiles, k-steps and tokens (1..max_tokens)."""
    return data.StructLayout({"row_tiles": unsigned(16), "k_steps": unsigned(16),
                              "tokens": unsigned(token_bits(max_tokens + 1))})


class LutWordFeed(wiring.Component):
    """Weight words (table-stationary order) + matrix descriptors in, ``TlmmLutEngine`` word steps out.

    Parameters
    ----------
    tables, lanes : int
        Engine geometry T, N (the word is ``5*T*N`` bits).
    block_rows : int
        Row tiles per block, as in the DRAM layout (1..4096).
    max_tokens : int
        Largest chunk; the engine needs ``block_rows * max_tokens`` slots.
    fifo_words : int
        Depth of the input word FIFO (0 for none), see the module docstring.

    Attributes
    ----------
    desc : In(stream.Signature(lut_matrix_layout(max_tokens)))
        One per matrix, held until the matrix's last word step. ``row_tiles``, ``k_steps`` and
        ``tokens`` must be at least 1.
    words : In(stream.Signature(unsigned(5*T*N)))
        From ``WeightBufferManager.weights``.
    steps : Out(stream.Signature(word_step_layout(T, N, block_rows * max_tokens)))
        To ``TlmmLutEngine.weights``.
    """

    def __init__(self, tables, lanes, *, block_rows, max_tokens, fifo_words=16):
        owner = "LutWordFeed"
        self.tables = check_int("tables", tables, 1, 64, owner)
        self.lanes = check_int("lanes", lanes, 1, 64, owner)
        self.block_rows = check_int("block_rows", block_rows, 1, 4096, owner)
        self.max_tokens = check_int("max_tokens", max_tokens, 1, 4096, owner)
        self.fifo_words = check_int("fifo_words", fifo_words, 0, 4096, owner)
        self.slots = block_rows * max_tokens
        self.word_bits = 5 * tables * lanes
        self.desc_layout = lut_matrix_layout(max_tokens)
        self.step_layout = word_step_layout(tables, lanes, self.slots)
        super().__init__({
            "desc": In(stream.Signature(self.desc_layout)),
            "words": In(stream.Signature(unsigned(self.word_bits))),
            "steps": Out(stream.Signature(self.step_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        R = self.block_rows
        d = self.desc.payload
        if self.fifo_words:
            m.submodules.fifo = fifo = SyncFIFOBuffered(width=self.word_bits, depth=self.fifo_words)
            m.d.comb += [
                fifo.w_data.eq(self.words.payload),
                fifo.w_en.eq(self.words.valid),
                self.words.ready.eq(fifo.w_rdy),
            ]
            words_valid, words_data, words_ready = fifo.r_rdy, fifo.r_data, fifo.r_en
        else:
            words_valid, words_data, words_ready = self.words.valid, self.words.payload, self.words.ready

        block0 = Signal(16)                     # first row tile of the block
        ks = Signal(16)
        tok = Signal(range(self.max_tokens + 1))
        r = Signal(range(R))
        slot_base = Signal(range(self.slots + 1))  # tok * R, kept as a running sum
        rows = Signal(range(R + 1))
        left = Signal(17)
        m.d.comb += [
            left.eq(d.row_tiles - block0),
            rows.eq(Mux(left < R, left, R)),
        ]

        # The replay memory: a block's words of the current k-step, written as token 0 passes them
        # on and read back for the other tokens. Asynchronous read, so a replayed word costs no bubble
        # (distributed RAM on an FPGA: block_rows words of 5*T*N bits).
        m.submodules.replay = replay = memory.Memory(shape=unsigned(self.word_bits), depth=R, init=[])
        wr = replay.write_port()
        rd = replay.read_port(domain="comb")

        fresh = Signal()                        # token 0: the word comes from the weight buffer
        m.d.comb += fresh.eq(tok == 0)
        step = self.steps.payload
        m.d.comb += [
            self.steps.valid.eq(self.desc.valid & (~fresh | words_valid)),
            words_ready.eq(self.desc.valid & fresh & self.steps.ready),
            rd.addr.eq(r),
            step.word.eq(Mux(fresh, words_data, rd.data)),
            step.slot.eq(slot_base + r),
            step.first.eq(ks == 0),
            step.last.eq(ks == d.k_steps - 1),
            step.shift.eq(0),
            step.negate.eq(0),
            step.done.eq(r == rows - 1),
            wr.addr.eq(r),
            wr.data.eq(words_data),
        ]
        fire = Signal()
        m.d.comb += [fire.eq(self.steps.valid & self.steps.ready), wr.en.eq(fire & fresh)]

        last_r, last_tok = r == rows - 1, tok == d.tokens - 1
        last_ks, last_block = ks == d.k_steps - 1, left <= R
        with m.If(fire):
            m.d.sync += r.eq(r + 1)
            with m.If(last_r):
                m.d.sync += [r.eq(0), tok.eq(tok + 1), slot_base.eq(slot_base + R)]
                with m.If(last_tok):
                    m.d.sync += [tok.eq(0), slot_base.eq(0), ks.eq(ks + 1)]
                    with m.If(last_ks):
                        m.d.sync += [ks.eq(0), block0.eq(block0 + R)]
                        with m.If(last_block):
                            m.d.sync += block0.eq(0)
                            m.d.comb += self.desc.ready.eq(1)
        return m
