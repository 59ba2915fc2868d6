"""Writes the LM head's logits beats to DRAM: token ``t``'s row tile ``r`` (``lanes`` int32) goes to
``logits + (t * stride + r * lanes) * 4``, with ``stride = ceil(vocab / lanes) * lanes`` entries per token
(``hw.dram_format.logits_stride``), through the AXI4 write master with byte strobes.

A beat of ``4 * lanes`` bytes becomes one write of ``ceil(4 * lanes / bus)`` bus words (the beat starts
on a multiple of its own size, so it never straddles more words than that), strobes covering its bytes.
"""

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from ..arith.dsp import registered_product
from ..dataflow.credit_link import CreditLink
from ..isa import ADDR_BITS
from ..memory.axi_write import AxiBurstWriter
from ..params import check_int
from ..vector.epilogue import output_fifo
from .linear import lg_out_layout

__all__ = ["LogitsWriter"]


class LogitsWriter(wiring.Component):
    """See the module docstring.

    Parameters
    ----------
    data_bits : int
        DRAM bus width (a power of two).
    lanes : int
        Logits per beat (the TLMM lanes, a power of two).
    max_tokens, max_row_tiles : int
        As the LINEAR unit's ``lg_out`` stream.

    Attributes
    ----------
    start : In(stream.Signature({"addr": 32, "tiles": ...}))
        The logits area (``logits`` run argument) and the row tiles per token of this command.
    lg : In(stream.Signature(lg_out_layout(...)))
    axi : Out(AxiWriteSignature)
    idle, error : Out(1)
    """

    def __init__(self, *, data_bits, lanes, max_tokens, max_row_tiles):
        owner = "LogitsWriter"
        self.data_bits = check_int("data_bits", data_bits, 8, 1024, owner)
        self.lanes = check_int("lanes", lanes, 1, 64, owner)
        for name, v in (("data_bits", data_bits), ("lanes", lanes)):
            if v & (v - 1):
                raise ValueError(f"{owner}: {name} must be a power of two, got {v}")
        self.beat_bytes = 4 * lanes
        self.words = max(1, self.beat_bytes // (data_bits // 8))
        self.writer = AxiBurstWriter(ADDR_BITS, data_bits, max_burst=self.words, max_outstanding=4,
                                     beats_bits=max(2, self.words.bit_length() + 1), strobes=True)
        layout = lg_out_layout(lanes, max_tokens, max_row_tiles)
        super().__init__({
            "start": In(stream.Signature(data.StructLayout({"addr": unsigned(ADDR_BITS),
                                                            "tiles": layout.members["tile"]}))),
            "lg": In(stream.Signature(layout)),
            "axi": Out(self.writer.axi_signature),
            "idle": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.writer = wr = self.writer
        wiring.connect(m, wr.axi, wiring.flipped(self.axi))
        B, W = self.data_bits // 8, self.words
        lgb = exact_log2(B)
        base = Signal(ADDR_BITS)
        tiles = Signal.like(self.start.payload.tiles)
        m.d.comb += self.start.ready.eq(1)
        with m.If(self.start.valid):
            m.d.sync += [base.eq(self.start.payload.addr), tiles.eq(self.start.payload.tiles)]

        # Two free-running stages (no clock enable): stage 1 takes the beat and registers `token * tiles`
        # in the multiplier block (hw.arith.dsp), stage 2 registers the address; then a FIFO
        # (hw.vector.epilogue.output_fifo: a beat enters only while the FIFO has room for every beat in
        # flight) whose head is the beat being written. The write channel's ready reaches only the FIFO's
        # read side, and no path crosses the DSP. The beats arrive over a credit link (free-running stages
        # and a FIFO here, hw.dataflow.credit_link), so `lg.ready` is a register and no enable net spans
        # the gap from the LINEAR unit's logits epilogue (40-50 tiles on ECP5).
        m.submodules.lg_in = lg_in = CreditLink(self.lg.payload.shape(), forward=2, back=1)
        wiring.connect(m, wiring.flipped(self.lg), lg_in.i)
        q = lg_in.o.payload
        valid = [Signal(name="lg_st1_valid"), Signal(name="lg_st2_valid")]
        st = [Signal.like(q, name="lg_st1"), Signal.like(q, name="lg_st2")]
        done = Signal()
        room = Signal(init=1)
        m.d.comb += lg_in.o.ready.eq(room)
        fire = lg_in.o.valid & room
        tt = registered_product(m, "token_tiles", q.token, tiles, platform=platform)
        addr2 = Signal(ADDR_BITS)
        m.d.sync += [valid[0].eq(fire), st[0].eq(q), valid[1].eq(valid[0]), st[1].eq(st[0]),
                     addr2.eq(base + ((tt + st[0].tile) << exact_log2(self.beat_bytes)))]
        head = stream.Signature(data.StructLayout({"beat": q.shape(), "addr": ADDR_BITS})).create()
        two = Signal(head.payload.shape())
        m.d.comb += [two.beat.eq(st[1]), two.addr.eq(addr2)]
        # Reads counted a cycle late (back=1, one entry more): the write handshake that pops the head ran
        # on through the count's adder into `room` (10.07 ns placed on the ECP5 shell at e8c64fe). Beats
        # taken counted a cycle late too (lag=1): `fire` comes from the link's FIFO level and went on
        # through the same adder (10.07 ns again, placed at 3642338).
        owed = output_fifo(m, room, fire, valid[1], two, head, 2, back=1, lag=1)
        m.d.comb += head.ready.eq(done)
        p, addr = head.payload.beat, head.payload.addr
        off = Signal(range(B))
        m.d.comb += off.eq(addr[:lgb] if self.beat_bytes < B else 0)
        word = Signal(range(W + 1))            # bus word of the beat being sent
        sent_cmd = Signal()
        m.d.comb += [wr.cmd.payload.addr.eq(addr), wr.cmd.payload.beats.eq(W),
                     wr.cmd.valid.eq(head.valid & ~sent_cmd), wr.data.valid.eq(head.valid & sent_cmd)]
        if self.beat_bytes < B:
            m.d.comb += [wr.data.payload.data.eq(p.data << (off << 3)),
                         wr.data.payload.strb.eq(((1 << self.beat_bytes) - 1) << off)]
        else:
            m.d.comb += [wr.data.payload.data.eq(p.data.word_select(word, 8 * B) if W > 1 else p.data),
                         wr.data.payload.strb.eq((1 << B) - 1)]
        with m.If(wr.cmd.valid & wr.cmd.ready):
            m.d.sync += [sent_cmd.eq(1), word.eq(0)]
        with m.If(wr.data.valid & wr.data.ready):
            m.d.sync += word.eq(word + 1)
            with m.If(word == W - 1):
                m.d.sync += sent_cmd.eq(0)
                m.d.comb += done.eq(1)
        # owed counts a beat from two cycles after its take (lag=1); in the cycle between it is in stage 1.
        m.d.comb += [self.idle.eq(wr.idle & ~self.lg.valid & lg_in.idle & ~valid[0] & (owed == 0)),
                     self.error.eq(wr.error)]
        return m
