"""Writes the LINEAR unit's k and v beats into the KV cache in DRAM, in the layout of
``firmware/kv_cache.py`` (``docs/attention.md``).

A segment holds one kv head's 32 positions of one layer: the 32 K exponent bytes, the 32 V exponent
bytes (padded to ``exp_rows`` rows of ``d`` bytes), the 32 K rows, the 32 V rows, padded to the bus::

    blocks      = max_context / 32
    exp_rows    = ceil(64 / d)
    segment     = ceil((exp_rows + 64) * d / bus) * bus
    seg(l, h, b) = kv_base + ((l * kv_heads + h) * blocks + b) * segment
    row          = seg + (exp_rows + 32 * is_v + pos % 32) * d      (+ beat * lanes for each beat)
    exponent     = seg + 32 * is_v + pos % 32

Each beat (``lanes`` int8 values) becomes a one-beat AXI write whose byte strobes cover its ``lanes``
bytes; each vector's exponent a one-byte write. Decode writes ``2 * kv_heads * (d + 1)`` bytes per layer
and token, so small writes cost nothing that matters. The geometry (``segment``, ``exp_rows``) is
computed from the ``SETUP`` registers when a command starts.
"""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from golden.numerics import ATTN_KEY_BLOCK

from ..arith.dsp import registered_pieces, registered_product
from ..dataflow.credit_link import CreditLink
from ..dataflow.skid import SkidBuffer
from ..isa import ADDR_BITS, BODIES, Opcode
from ..memory.axi_write import AxiBurstWriter
from ..params import check_int
from ..vector.epilogue import output_fifo
from .linear import kv_layout

__all__ = ["KvWriter"]

_EXP_BYTES = 2 * ATTN_KEY_BLOCK


class KvWriter(wiring.Component):
    """See the module docstring.

    Parameters
    ----------
    data_bits : int
        DRAM bus width (a power of two, at least ``8 * lanes``).
    lanes : int
        int8 values per ``kv`` beat.
    pos_bits, max_heads : int
        As the LINEAR unit's ``kv`` stream.

    Attributes
    ----------
    start : In(stream.Signature({"layer": 8}))
        A command's layer; the geometry is computed from ``setup`` before beats are taken.
    setup : In(BODIES[Opcode.SETUP])
    kv : In(stream.Signature(kv_layout(...)))
    axi : Out(AxiWriteSignature)
    idle : Out(1)
        No write in progress or waiting for its response.
    error : Out(1)
    """

    def __init__(self, *, data_bits, lanes, pos_bits, max_heads):
        owner = "KvWriter"
        self.data_bits = check_int("data_bits", data_bits, 8, 1024, owner)
        if data_bits & (data_bits - 1):
            raise ValueError(f"{owner}: data_bits must be a power of two, got {data_bits}")
        self.lanes = check_int("lanes", lanes, 1, 1024, owner)
        if lanes & (lanes - 1):
            raise ValueError(f"{owner}: lanes must be a power of two, got {lanes}")
        # A beat wider than the bus is a burst of whole bus words (rows start on a multiple of `lanes`).
        self.words = max(1, lanes // (data_bits // 8))
        # Widest segment in bus words, over every head_dim SETUP can hold (12 bits).
        bus = data_bits // 8
        self.seg_words_bits = max(-(-((-(-_EXP_BYTES // dv)) + _EXP_BYTES) * dv // bus)
                                  for dv in range(1, 1 << 12)).bit_length()
        if self.seg_words_bits > 17:
            raise ValueError(f"{owner}: data_bits must be at least 32 (a segment in bus words must fit 17 bits)")
        self.writer = AxiBurstWriter(ADDR_BITS, data_bits, max_burst=self.words, max_outstanding=4,
                                     beats_bits=max(2, self.words.bit_length() + 1), strobes=True)
        super().__init__({
            "start": In(stream.Signature(data.StructLayout({"layer": unsigned(8)}))),
            "setup": In(BODIES[Opcode.SETUP]),
            "kv": In(stream.Signature(kv_layout(lanes, pos_bits, max_heads))),
            "axi": Out(self.writer.axi_signature),
            "idle": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.writer = wr = self.writer
        wiring.connect(m, wr.axi, wiring.flipped(self.axi))
        B, N = self.data_bits // 8, self.lanes
        lg = exact_log2(B)
        s = self.setup
        d = s.head_dim

        # Geometry of the run, from SETUP, in three cycles after `start`: the segment in bus words and
        # `layer * kv_heads`, each a product registered in its multiplier block (hw.arith.dsp), so no path
        # crosses a DSP unregistered:
        #   seg_words = ceil((exp_rows + 64) d / bus);  layer_heads = layer kv_heads.
        exp_rows = Signal(8)
        blocks = Signal(15)
        layer = Signal(8)
        seg_words = Signal(self.seg_words_bits)
        seg_raw = registered_product(m, "seg_raw", (exp_rows + 2 * ATTN_KEY_BLOCK)[:8], d, platform=platform)
        layer_heads = registered_product(m, "layer_heads", layer, s.kv_heads, platform=platform)
        ready = Signal()
        with m.FSM(name="geometry"):
            with m.State("READY"):
                m.d.comb += [self.start.ready.eq(1), ready.eq(1)]
                with m.If(self.start.valid):
                    # ceil(64 / d): 1 from d = 64 on, else a 64-entry table of constants (a few LUTs; no
                    # divider).
                    rows = Signal(8)
                    with m.Switch(d):
                        for dv in range(1, _EXP_BYTES):
                            with m.Case(dv):
                                m.d.comb += rows.eq(-(-_EXP_BYTES // dv))
                        with m.Default():
                            m.d.comb += rows.eq(1)
                    m.d.sync += [exp_rows.eq(rows), layer.eq(self.start.payload.layer),
                                 blocks.eq(s.max_context >> exact_log2(ATTN_KEY_BLOCK))]
                    m.next = "SEGMENT"
            with m.State("SEGMENT"):        # seg_raw and layer_heads load their products
                m.next = "WORDS"
            with m.State("WORDS"):
                m.d.sync += seg_words.eq((seg_raw + B - 1) >> lg)
                m.next = "READY"

        # One beat -> a write of its lanes; the vector's last beat -> also its exponent byte.
        # The beat's address runs down a free-running pipeline (every register loads on every clock edge,
        # no clock enable), one step per stage, each product registered in its block:
        #   0: row = exp_rows + 32 is_v + pos % 32 (the multiplier block's operand from a register: the
        #      sum ran from the command registers to the block's input, 6 ns of route away, 11.32 ns
        #      placed on the ECP5 shell at 142dbaf)
        #   1: row_d = row d                       lh = layer_heads + head
        #   2: hb = lh blocks                      row_off = row_d + beat lanes
        #   3: index = hb + block                  (the segment's index in the cache)
        #   4: pieces of index seg_words
        #   5: seg = kv_base + (index seg_words) bus
        # and into a FIFO (hw.vector.epilogue.output_fifo: a beat enters only while the FIFO has room for
        # every beat in flight); the writes go out from the FIFO's head, a beat taking as many cycles as
        # its writes. So the write channel's ready reaches only the FIFO's read side, never the stages (a
        # stall enable on all five stages was a 430-flip-flop net). The beats enter over a credit link, so
        # `kv.ready` is a register at the producer's end: the LINEAR unit's QKV slice, which also feeds the
        # buffers, sits across the die, and through a skid buffer here its handshake ran from this unit's
        # skid flag into the slice's enables and back (10.86 ns placed on the ECP5 shell at e8c64fe).
        m.submodules.kv_in = kv_in = CreditLink(self.kv.payload.shape(), forward=1, back=1)
        wiring.connect(m, wiring.flipped(self.kv), kv_in.i)
        beat = kv_in.o
        n_st = 6                             # stages 0 to 5
        done = Signal()                      # the head beat's last write is accepted this cycle
        room = Signal(init=1)
        m.d.comb += beat.ready.eq(ready & room)

        def j_of(q):
            return q.pos[:exact_log2(ATTN_KEY_BLOCK)]

        # Stage 0.
        p = Signal.like(beat.payload, name="kv_st0")
        p_valid = Signal(name="kv_st0_valid")
        row = Signal(8)                      # the row's index in its segment, < exp_rows + 64 <= 128
        m.d.sync += [p_valid.eq(beat.valid & beat.ready), p.eq(beat.payload),
                     row.eq(exp_rows + Mux(beat.payload.is_v, ATTN_KEY_BLOCK, 0) + j_of(beat.payload))]
        valid = [Signal(name=f"kv_st{k}_valid") for k in range(1, n_st)]
        st = [Signal.like(p, name=f"kv_st{k}") for k in range(1, n_st)]
        m.d.sync += [valid[0].eq(p_valid), st[0].eq(p)]
        m.d.sync += [valid[k].eq(valid[k - 1]) for k in range(1, n_st - 1)]
        m.d.sync += [st[k].eq(st[k - 1]) for k in range(1, n_st - 1)]

        # Stage 1.
        row_d = registered_product(m, "row_d", row, d, platform=platform)
        lh = Signal(16)
        m.d.sync += lh.eq(layer_heads + p.head)
        # Stage 2.
        hb = registered_product(m, "hb", lh, blocks, platform=platform)
        row_off = [Signal(ADDR_BITS, name=f"row_off{k}") for k in (2, 3, 4, 5)]
        exp_off = [Signal(7, name=f"exp_off{k}") for k in (2, 3, 4, 5)]      # 32 is_v + pos % 32
        m.d.sync += [row_off[0].eq(row_d + st[0].beat * N),
                     exp_off[0].eq(Mux(st[0].is_v, ATTN_KEY_BLOCK, 0) + j_of(st[0]))]
        m.d.sync += [row_off[k].eq(row_off[k - 1]) for k in range(1, 4)]
        m.d.sync += [exp_off[k].eq(exp_off[k - 1]) for k in range(1, 4)]
        # Stage 3.
        index = Signal(32)
        m.d.sync += index.eq(hb + (st[1].pos >> exact_log2(ATTN_KEY_BLOCK)))
        # Stage 4.
        pieces = registered_pieces(m, "seg_off", index, seg_words, platform=platform)
        # Stage 5.
        seg5 = Signal(ADDR_BITS)
        m.d.sync += seg5.eq(s.kv_base + (sum(piece << shift for shift, piece in pieces) << lg))
        # The FIFO; its head is the beat being written, with its two addresses. They are summed on the way
        # in: summed at the head, the adders sat between the FIFO's distributed RAM and the byte shift into
        # the writer's W slice (12.2 ns placed, 60 endpoints, in a trial build).
        head = stream.Signature(data.StructLayout({"w": p.shape(), "row_addr": ADDR_BITS,
                                                   "exp_addr": ADDR_BITS})).create()
        five = Signal(head.payload.shape())
        m.d.comb += [five.w.eq(st[-1]), five.row_addr.eq(seg5 + row_off[-1]), five.exp_addr.eq(seg5 + exp_off[-1])]
        owed = output_fifo(m, room, beat.valid & beat.ready, valid[-1], five, head, n_st)
        # The head goes through a register slice before the writes: read straight from the FIFO's
        # distributed RAM, its address's low bits steered the byte shift into the writer's W slice
        # (10.81 ns routed at 9887928, 23 endpoints). One cycle more per beat, none between beats.
        m.submodules.head_reg = head_reg = SkidBuffer(head.payload.shape())
        wiring.connect(m, head, head_reg.i)
        cur = head_reg.o
        # The head is released a cycle after its last write is accepted (`spent`, a flip-flop), and is
        # not written from in that cycle: `done` (the writer's W ready, through the word count) was the
        # slice's output enable, a 5.4 ns route away (11.07 ns placed on the ECP5 shell at 7f9b7c7,
        # 19 late endpoints). A cycle more per beat.
        spent = Signal()
        m.d.sync += spent.eq(done)
        m.d.comb += cur.ready.eq(spent)
        w_valid, w = Signal(), cur.payload.w
        m.d.comb += w_valid.eq(cur.valid & ~spent)
        row_addr, exp_addr = cur.payload.row_addr, cur.payload.exp_addr
        phase_exp = Signal()                 # the beat's values are out; its exponent byte is next
        addr = Mux(phase_exp, exp_addr, row_addr)
        off = addr[:lg]
        W = self.words
        word = Signal(range(W + 1))          # bus word of a wide beat
        if W == 1:
            nbytes = Mux(phase_exp, 1, N)
            values = w.data << (off << 3)
            strb = (((1 << nbytes) - 1) << off)[:B]
        else:
            values = w.data.word_select(word, 8 * B)
            strb = (1 << B) - 1
        m.d.comb += [
            wr.cmd.payload.addr.eq(addr), wr.cmd.payload.beats.eq(Mux(phase_exp, 1, W)),
            wr.data.payload.data.eq(Mux(phase_exp, w.e << (off << 3), values)),
            wr.data.payload.strb.eq(Mux(phase_exp, (1 << off)[:B], strb)),
        ]
        # Each write: its command, then its data words (the writer takes data after the address).
        sent_cmd = Signal()
        m.d.comb += [wr.cmd.valid.eq(w_valid & ~sent_cmd), wr.data.valid.eq(w_valid & sent_cmd)]
        with m.If(wr.cmd.valid & wr.cmd.ready):
            m.d.sync += [sent_cmd.eq(1), word.eq(0)]
        with m.If(wr.data.valid & wr.data.ready):
            m.d.sync += word.eq(word + 1)
        with m.If(wr.data.valid & wr.data.ready & (phase_exp | (word == W - 1))):
            m.d.sync += sent_cmd.eq(0)
            with m.If(w.last & ~phase_exp):
                m.d.sync += phase_exp.eq(1)
            with m.Else():
                m.d.sync += phase_exp.eq(0)
                m.d.comb += done.eq(1)
        m.d.comb += [self.idle.eq(wr.idle & ~self.kv.valid & kv_in.idle & (owed == 0)
                                   & head_reg.i.ready & ~cur.valid),
                     self.error.eq(wr.error)]
        return m
