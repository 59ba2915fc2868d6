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

from ..isa import ADDR_BITS, BODIES, Opcode
from ..memory.axi_write import AxiBurstWriter
from ..params import check_int
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

        # Geometry of the run, from SETUP, in five cycles after `start` (multipliers are shared over them
        # rather than chained in one expression: an ECP5 build has 156 DSPs, and a chain of 32-bit
        # products per beat took 38):
        #   segment = ceil((exp_rows + 64) d / bus) bus;  head_stride = blocks segment;
        #   layer_base = kv_base + (layer kv_heads) head_stride.
        # Widths: d < 2^12 gives segment < 2^19; blocks = max_context / 32 < 2^15; addresses wrap at 2^32.
        exp_rows = Signal(8)
        segment = Signal(20)
        blocks = Signal(15)
        layer = Signal(8)
        head_stride = Signal(ADDR_BITS)
        layer_base = Signal(ADDR_BITS)
        layer_heads = Signal(16)
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
            with m.State("SEGMENT"):
                raw = Signal(20)
                m.d.comb += raw.eq((exp_rows + 2 * ATTN_KEY_BLOCK) * d)
                m.d.sync += segment.eq(((raw + B - 1) >> lg) << lg)
                m.next = "STRIDE"
            with m.State("STRIDE"):
                m.d.sync += head_stride.eq(blocks * segment)
                m.next = "BASE"
            with m.State("BASE"):
                m.d.sync += layer_heads.eq(layer * s.kv_heads)
                m.next = "LAYER"
            with m.State("LAYER"):
                m.d.sync += layer_base.eq(s.kv_base + layer_heads * head_stride)
                m.next = "READY"

        # One beat -> a write of its lanes; the vector's last beat -> also its exponent byte.
        # A beat is taken into registers (`st`) with its address products, the next cycle adds the segment
        # base (`seg_ok`), and the writes are issued from registers: no multiplier or chain of adders lies
        # between the LINEAR unit's stream, this unit's registers and the write channel. `kv.ready` is
        # the stage's emptiness, so a beat costs two more cycles than its writes; a decode step writes a
        # few beats per kv head.
        p = self.kv.payload
        j = p.pos[:exact_log2(ATTN_KEY_BLOCK)]
        block = p.pos >> exact_log2(ATTN_KEY_BLOCK)
        row = Signal(8)                      # the row's index in its segment, < exp_rows + 64 <= 128
        m.d.comb += row.eq(exp_rows + Mux(p.is_v, ATTN_KEY_BLOCK, 0) + j)
        st_valid = Signal()                  # the stage holds a beat
        seg_ok = Signal()                    # ... and its segment address is summed
        st = Signal.like(p)
        head_off = Signal(ADDR_BITS)         # head * head_stride
        block_off = Signal(ADDR_BITS)        # block * segment
        row_off = Signal(ADDR_BITS)          # row * d + beat * lanes
        exp_off = Signal(7)                  # 32 is_v + pos % 32
        seg = Signal(ADDR_BITS)
        done = Signal()                      # the stage's last write is accepted this cycle
        m.d.comb += self.kv.ready.eq(ready & ~st_valid)
        with m.If(self.kv.valid & self.kv.ready):
            m.d.sync += [st_valid.eq(1), st.eq(p), head_off.eq(p.head * head_stride), block_off.eq(block * segment),
                         row_off.eq(row * d + p.beat * N), exp_off.eq(Mux(p.is_v, ATTN_KEY_BLOCK, 0) + j)]
        m.d.sync += seg_ok.eq(st_valid & ~done)
        m.d.sync += seg.eq(layer_base + head_off + block_off)
        with m.If(done):
            m.d.sync += st_valid.eq(0)

        row_addr = Signal(ADDR_BITS)
        exp_addr = Signal(ADDR_BITS)
        m.d.comb += [row_addr.eq(seg + row_off), exp_addr.eq(seg + exp_off)]
        phase_exp = Signal()                 # the beat's values are out; its exponent byte is next
        addr = Mux(phase_exp, exp_addr, row_addr)
        off = addr[:lg]
        W = self.words
        word = Signal(range(W + 1))          # bus word of a wide beat
        if W == 1:
            nbytes = Mux(phase_exp, 1, N)
            values = st.data << (off << 3)
            strb = (((1 << nbytes) - 1) << off)[:B]
        else:
            values = st.data.word_select(word, 8 * B)
            strb = (1 << B) - 1
        m.d.comb += [
            wr.cmd.payload.addr.eq(addr), wr.cmd.payload.beats.eq(Mux(phase_exp, 1, W)),
            wr.data.payload.data.eq(Mux(phase_exp, st.e << (off << 3), values)),
            wr.data.payload.strb.eq(Mux(phase_exp, (1 << off)[:B], strb)),
        ]
        # Each write: its command, then its data words (the writer takes data after the address).
        sent_cmd = Signal()
        m.d.comb += [wr.cmd.valid.eq(seg_ok & ~sent_cmd), wr.data.valid.eq(seg_ok & sent_cmd)]
        with m.If(wr.cmd.valid & wr.cmd.ready):
            m.d.sync += [sent_cmd.eq(1), word.eq(0)]
        with m.If(wr.data.valid & wr.data.ready):
            m.d.sync += word.eq(word + 1)
        with m.If(wr.data.valid & wr.data.ready & (phase_exp | (word == W - 1))):
            m.d.sync += sent_cmd.eq(0)
            with m.If(st.last & ~phase_exp):
                m.d.sync += phase_exp.eq(1)
            with m.Else():
                m.d.sync += phase_exp.eq(0)
                m.d.comb += done.eq(1)
        m.d.comb += [self.idle.eq(wr.idle & ~self.kv.valid & ~st_valid), self.error.eq(wr.error)]
        return m
