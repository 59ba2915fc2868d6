"""A self-running simulation top for the attention benchmark: the attention engine fed from the DRAM model.

``FastDramModel`` (the config's latency and bandwidth) -> ``AxiBurstReader`` -> ``Gearbox`` (bus words to
``chunk``-byte pieces, flushed at the end of every segment read) -> :class:`AttentionEngine`. The
``count`` queries from position ``pos`` on are cut into tiles of ``query_block``; one sequencer issues the
tile commands, another one read per (tile, kv head, block) segment, in ``KvCacheLayout.decode_reads``
order for each tile's last query. The queries come from an on-chip memory and the outputs go into
another, so no Python runs per cycle. Decode is ``count = 1``. Not for synthesis (the DRAM model has an
asynchronous read port).

The testbench writes the DRAM image and the queries through ``load``, sets ``pos``, ``count`` and
``n_out``, pulses ``go``, waits for ``done`` and reads ``cycles``, ``dram_beats`` and the outputs
(``out_addr`` / ``out_data``).
"""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..memory.axi import AxiBurstReader
from ..memory.dram_model import FastDramModel
from ..memory.gearbox import Gearbox
from ..params import check_int
from .engine import AttentionEngine, chunk_geometry, q_layout

__all__ = ["AttentionBenchTop", "LoadTarget", "bench_load_layout"]


class LoadTarget:
    DRAM = 0
    QUERIES = 1


def bench_load_layout(data_bits):
    return data.StructLayout({"target": unsigned(1), "addr": unsigned(26), "data": unsigned(data_bits)})


class AttentionBenchTop(wiring.Component):
    """DRAM model + burst reader + gearbox + attention engine + sequencers + query and output memories.

    Parameters
    ----------
    layout : firmware.kv_cache.KvCacheLayout
        One layer's cache (``layers = 1``, ``base = 0``); ``bus_bytes`` is the AXI data width.
    heads, lanes, query_block : int
        Query heads, MACs per cycle and queries per tile of the engine.
    max_queries : int
        Queries per run (sizes the query and output memories).
    latency : int
        DRAM model latency in cycles.
    bytes_per_cycle : float
        DRAM model bandwidth.
    max_burst, max_outstanding, buffer_words : int
        Burst reader geometry.

    Attributes
    ----------
    load : In(stream.Signature(bench_load_layout(...)))
        Word ``addr`` of memory ``target`` (:class:`LoadTarget`); always ready.
    pos : In(range(max_context))
        Position of the first query.
    count : In(range(1, max_queries + 1))
        Queries (1 for a decode step).
    n_out : In(32)
        Output beats expected (``count * heads * row_beats``).
    go : In(1)
        Pulse: clear the counters and run.
    done : Out(1)
        All outputs written.
    cycles, dram_beats : Out(32)
        Cycles from ``go`` to the last output, DRAM read beats in them.
    out_addr : In(range(max_queries * heads * row_beats))
    out_data : Out(data.ArrayLayout(signed(32), chunk))
    violation, error : Out(1)
    """

    def __init__(self, layout, heads, lanes, *, query_block=1, max_queries=1, latency=20, bytes_per_cycle=None,
                 max_burst=64, max_outstanding=4, buffer_words=256):
        owner = "AttentionBenchTop"
        if layout.layers != 1 or layout.base != 0:
            raise ValueError(f"{owner}: the layout must describe one layer at address 0")
        self.layout = layout
        self.bus_bytes = layout.bus_bytes
        if self.bus_bytes & (self.bus_bytes - 1) or self.bus_bytes < 1:
            raise ValueError(f"{owner}: an AXI4 port needs a power-of-two width, got {self.bus_bytes} bytes")
        self.heads = check_int("heads", heads, 1, 256, owner)
        if heads % layout.kv_heads:
            raise ValueError(f"{owner}: kv_heads = {layout.kv_heads} does not divide heads = {heads}")
        self.group = heads // layout.kv_heads
        chunk, _ = chunk_geometry(layout.head_dim, lanes)
        self.query_block = check_int("query_block", query_block, 1, 64, owner)
        self.max_queries = check_int("max_queries", max_queries, 1, layout.max_context, owner)
        self.engine = AttentionEngine(self.group, layout.kv_heads, layout.head_dim, lanes, query_block=query_block,
                                      max_context=layout.max_context, pad_chunks=layout.pad_chunks(chunk))
        self.chunk, self.row_beats = chunk, self.engine.row_beats
        words = layout.layer_bytes // self.bus_bytes
        self.dram = FastDramModel(32, 8 * self.bus_bytes, depth=words, latency=latency,
                                  bytes_per_cycle=bytes_per_cycle, max_outstanding=max(8, max_outstanding),
                                  loadable=True)
        self.reader = AxiBurstReader(32, 8 * self.bus_bytes, buffer_words=buffer_words, max_burst=max_burst,
                                     max_outstanding=max_outstanding)
        self.gearbox = Gearbox(8 * self.bus_bytes, 8 * chunk)
        self.q_layout = q_layout(chunk)
        self.out_layout = data.ArrayLayout(32, chunk)
        self.load_layout = bench_load_layout(max(8 * self.bus_bytes, self.q_layout.size))
        super().__init__({
            "load": In(stream.Signature(self.load_layout)),
            "pos": In(range(layout.max_context)),
            "count": In(range(1, self.max_queries + 1)),
            "n_out": In(32),
            "go": In(1),
            "done": Out(1),
            "cycles": Out(32),
            "dram_beats": Out(32),
            "out_addr": In(range(max(2, self.max_queries * heads * self.row_beats))),
            "out_data": Out(self.out_layout),
            "violation": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        lay = self.layout
        m.submodules.dram = dram = self.dram
        m.submodules.reader = reader = self.reader
        m.submodules.gearbox = gb = self.gearbox
        m.submodules.engine = eng = self.engine
        n_q = max(2, self.max_queries * self.heads * self.row_beats)
        m.submodules.qmem = qmem = Memory(shape=self.q_layout, depth=n_q, init=[])
        m.submodules.omem = omem = Memory(shape=self.out_layout, depth=n_q, init=[])
        q_wr, q_rd = qmem.write_port(), qmem.read_port(domain="comb")
        o_wr, o_rd = omem.write_port(), omem.read_port(domain="comb")

        wiring.connect(m, reader.axi, dram.axi)
        m.d.comb += [
            gb.i.valid.eq(reader.data.valid),
            gb.i.payload.data.eq(reader.data.payload.data),
            gb.i.payload.flush.eq(reader.data.payload.last),
            reader.data.ready.eq(gb.i.ready),
            eng.kv.valid.eq(gb.o.valid),
            eng.kv.payload.eq(gb.o.payload),
            gb.o.ready.eq(eng.kv.ready),
            self.violation.eq(dram.violation),
            self.error.eq(reader.error),
        ]

        # Loading.
        ld = self.load.payload
        m.d.comb += [
            self.load.ready.eq(1),
            dram.load.valid.eq(self.load.valid & (ld.target == LoadTarget.DRAM)),
            dram.load.payload.addr.eq(ld.addr),
            dram.load.payload.data.eq(ld.data),
            q_wr.addr.eq(ld.addr),
            q_wr.data.eq(ld.data),
            q_wr.en.eq(self.load.valid & (ld.target == LoadTarget.QUERIES)),
        ]

        running = Signal()
        with m.If(running):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(dram.axi.rvalid & dram.axi.rready):
                m.d.sync += self.dram_beats.eq(self.dram_beats + 1)

        QB = self.query_block
        cnt_bits = len(self.count) + 1

        # Tile commands: tiles of query_block queries from pos on; the engine takes one when idle.
        cmd_active = Signal()
        cmd_pos = Signal.like(self.pos)
        cmd_left = Signal(cnt_bits)          # queries not yet issued
        m.d.comb += [
            eng.cmd.valid.eq(cmd_active),
            eng.cmd.payload.pos.eq(cmd_pos),
            eng.cmd.payload.last.eq(Mux(cmd_left > QB, QB, cmd_left) - 1),
            eng.cmd.payload.group.eq(self.group),
            eng.cmd.payload.kv_heads.eq(lay.kv_heads),
        ]
        with m.If(eng.cmd.valid & eng.cmd.ready):
            m.d.sync += [cmd_pos.eq(cmd_pos + QB), cmd_left.eq(cmd_left - QB)]
            with m.If(cmd_left <= QB):
                m.d.sync += cmd_active.eq(0)

        # Segment reads: per tile, kv head major, then blocks 0 .. (tile's last query) // 32; the reader's
        # buffer credits pace them.
        seg_beats = lay.segment_bytes // self.bus_bytes
        head_bytes = lay.blocks * lay.segment_bytes
        seq_active = Signal()
        seq_pos = Signal.like(self.pos)
        seq_left = Signal(cnt_bits)
        seq_h = Signal(range(lay.kv_heads + 1))
        seq_b = Signal(range(lay.blocks + 1))
        seq_addr = Signal(32)
        head_addr = Signal(32)
        last_block = Signal.like(seq_b)
        m.d.comb += [
            last_block.eq((seq_pos + Mux(seq_left > QB, QB, seq_left) - 1) >> 5),
            reader.cmd.valid.eq(seq_active),
            reader.cmd.payload.addr.eq(seq_addr),
            reader.cmd.payload.beats.eq(seg_beats),
        ]
        with m.If(reader.cmd.valid & reader.cmd.ready):
            m.d.sync += [seq_b.eq(seq_b + 1), seq_addr.eq(seq_addr + lay.segment_bytes)]
            with m.If(seq_b == last_block):
                m.d.sync += [seq_b.eq(0), seq_h.eq(seq_h + 1), seq_addr.eq(head_addr + head_bytes),
                             head_addr.eq(head_addr + head_bytes)]
                with m.If(seq_h == lay.kv_heads - 1):
                    m.d.sync += [seq_h.eq(0), seq_addr.eq(0), head_addr.eq(0), seq_pos.eq(seq_pos + QB),
                                 seq_left.eq(seq_left - QB)]
                    with m.If(seq_left <= QB):
                        m.d.sync += seq_active.eq(0)

        # Queries, in order.
        q_idx = Signal(range(n_q + 1))
        m.d.comb += [q_rd.addr.eq(q_idx), eng.q.payload.eq(q_rd.data), eng.q.valid.eq(running & (q_idx < n_q))]
        with m.If(eng.q.valid & eng.q.ready):
            m.d.sync += q_idx.eq(q_idx + 1)

        # Outputs.
        o_idx = Signal(range(n_q + 1))
        m.d.comb += [
            eng.o.ready.eq(1),
            o_wr.addr.eq(o_idx),
            o_wr.data.eq(eng.o.payload),
            o_wr.en.eq(eng.o.valid),
            o_rd.addr.eq(self.out_addr),
            self.out_data.eq(o_rd.data),
        ]
        with m.If(eng.o.valid):
            m.d.sync += o_idx.eq(o_idx + 1)
            with m.If(o_idx == self.n_out - 1):
                m.d.sync += [running.eq(0), self.done.eq(1)]

        with m.If(self.go):
            m.d.sync += [
                running.eq(1), self.done.eq(0), self.cycles.eq(0), self.dram_beats.eq(0), q_idx.eq(0), o_idx.eq(0),
                cmd_active.eq(1), cmd_pos.eq(self.pos), cmd_left.eq(self.count),
                seq_active.eq(1), seq_pos.eq(self.pos), seq_left.eq(self.count), seq_h.eq(0), seq_b.eq(0),
                seq_addr.eq(0), head_addr.eq(0),
            ]
        return m
