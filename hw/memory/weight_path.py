"""The weight path as one simulated unit: fast DRAM model(s) -> weight-buffer manager -> TLMM engine.

Used by the weight-buffer tests (which drive ``cmd``, ``acts``, ``desc`` and ``sums`` from cocotb) and,
wrapped with on-chip sequencers, by the memory benchmark. The DRAM models are inside, so weights never
cross into Python; their contents are written through ``load`` before a run. The engine is the
``mux`` one or the ``lutram`` one behind :class:`~hw.memory.lut_feed.LutWordFeed`.
"""

from amaranth.hdl import Cat, Module, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.tlmm import GROUP_SIZE

from ..params import check_int
from ..tlmm import TlmmEngine, TlmmLutEngine, sums_layout
from .dram_model import FastDramModel, load_layout
from .lut_feed import LutWordFeed
from .weight_buffer import WeightBufferManager, tile_command_layout

__all__ = ["WeightPath"]


class WeightPath(wiring.Component):
    """``FastDramModel`` (one per AXI4 port) + ``WeightBufferManager`` + a TLMM engine.

    With ``engine = "mux"`` the engine is :class:`TlmmEngine` (row-tile-major words, act steps with
    ``release``). With ``engine = "lutram"`` it is :class:`TlmmLutEngine` behind a
    :class:`LutWordFeed` (table-stationary words in blocks of ``block_rows``, a ``desc`` stream with one
    descriptor per matrix, and ``acts`` carrying bare table sets).

    Parameters
    ----------
    tables, lanes : int
        Engine geometry T, N.
    data_bits : int
        DRAM bus width.
    buffer_words : int
        Weight-buffer (ring) capacity in bus words.
    dram_words : int
        DRAM model size in bus words (the image starts at byte address 0).
    latency, bytes_per_cycle, jitter :
        DRAM model timing (see :class:`FastDramModel`).
    max_tokens, acc_bits : int
        Engine accumulator slots and width.
    max_outstanding : int
        Bursts in flight.
    ports : int
        AXI4 ports: ``ports`` DRAM models of ``data_bits / ports`` bits, each with
        ``bytes_per_cycle / ports`` of the bandwidth (the ports share the DRAM equally), each holding
        its stripe of the image (``hw/memory/axi_group.py``), with different jitter seeds.
    engine : str
        ``"mux"`` or ``"lutram"``.
    block_rows : int
        Row tiles per table-stationary block (``lutram`` only); the engine gets
        ``block_rows * max_tokens`` slots.
    feed_fifo_words : int, optional
        Depth of the word feed's input FIFO (``lutram`` only); default ``max(64, block_rows)``: at
        least a whole block's words of the next k-step can then arrive while the current one is
        replayed for the other tokens, so the first token of a block does not wait for the ring's
        bus-width read port (measured in ``docs/memory.md``: ``ecp5`` prefill 8.6 % over its estimate
        with 16 words, 1.7 % with 64; ``tellme-kv260`` 10 % with 16, 0.08 % with 64).

    Attributes
    ----------
    cmd : In(stream.Signature(tile_command_layout(32, 24)))
    load : In(stream.Signature(load_layout(dram_words, data_bits)))
        Writes a whole (``data_bits``) bus word: its slices go to the ports' models.
    desc : In(stream.Signature(lut_matrix_layout(max_tokens)))
        ``lutram`` only: one descriptor per matrix.
    acts : In(stream.Signature(engine act-step layout))
        ``lutram``: ``ArrayLayout(signed(8), 3T)``, one table set per (block, k-step, token).
    sums : Out(stream.Signature(engine sums layout))
    dram_beats : Out(32)
        Read-data beats (of port 0, i.e. whole bus words) transferred since reset (wraps).
    violation, error : Out(1)
        Sticky AXI rule violation seen by the DRAM model; error response seen by the reader.
    """

    def __init__(self, tables, lanes, *, data_bits, buffer_words, dram_words, latency=20, bytes_per_cycle=None,
                 jitter=0, max_tokens=16, acc_bits=32, max_outstanding=4, ports=1, engine="mux", block_rows=16,
                 feed_fifo_words=None):
        owner = "WeightPath"
        self.tables = check_int("tables", tables, 1, 64, owner)
        self.lanes = check_int("lanes", lanes, 1, 64, owner)
        self.ports = check_int("ports", ports, 1, 16, owner)
        if engine not in ("mux", "lutram"):
            raise ValueError(f"{owner}: engine must be 'mux' or 'lutram', got {engine!r}")
        self.engine_kind = engine
        self.manager = WeightBufferManager(5 * tables * lanes, data_bits=data_bits, buffer_words=buffer_words,
                                           max_outstanding=max_outstanding, ports=ports)
        port_bits = data_bits // ports
        bpc = (data_bits // 8 if bytes_per_cycle is None else bytes_per_cycle) / ports
        self.drams = [FastDramModel(32, port_bits, depth=dram_words, latency=latency, bytes_per_cycle=bpc,
                                    jitter=jitter, loadable=True, max_outstanding=max(8, max_outstanding),
                                    seed=0xACE1 + 0x1234 * p) for p in range(ports)]
        self.dram = self.drams[0]
        members = {
            "cmd": In(stream.Signature(tile_command_layout(32, self.manager.beats_bits))),
            "load": In(stream.Signature(load_layout(dram_words, data_bits))),
        }
        if engine == "mux":
            self.engine = TlmmEngine(tables, lanes, acc_bits=acc_bits, max_tokens=max_tokens)
            members["acts"] = In(stream.Signature(self.engine.act_layout))
            self.feed = None
        else:
            fifo_words = max(64, block_rows) if feed_fifo_words is None else feed_fifo_words
            self.feed = LutWordFeed(tables, lanes, block_rows=block_rows, max_tokens=max_tokens, fifo_words=fifo_words)
            self.engine = TlmmLutEngine(tables, lanes, acc_bits=acc_bits, slots=self.feed.slots)
            members["desc"] = In(stream.Signature(self.feed.desc_layout))
            members["acts"] = In(stream.Signature(data.ArrayLayout(signed(8), GROUP_SIZE * tables)))
        super().__init__({
            **members,
            "sums": Out(stream.Signature(sums_layout(lanes, acc_bits, max_tokens if self.feed is None
                                                     else self.feed.slots))),
            "dram_beats": Out(32),
            "violation": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.manager = manager = self.manager
        m.submodules.engine = engine = self.engine
        port_bits = self.manager.data_bits // self.ports
        for p, dram in enumerate(self.drams):
            m.submodules[f"dram{p}" if self.ports > 1 else "dram"] = dram
            wiring.connect(m, manager.axi[p] if self.ports > 1 else manager.axi, dram.axi)
            m.d.comb += [
                dram.load.valid.eq(self.load.valid),
                dram.load.payload.addr.eq(self.load.payload.addr),
                dram.load.payload.data.eq(self.load.payload.data[p * port_bits:(p + 1) * port_bits]),
            ]
        m.d.comb += self.load.ready.eq(1)          # the models' load ports are always ready
        if self.feed is None:
            wiring.connect(m, manager.weights, engine.weights)
        else:
            m.submodules.feed = feed = self.feed
            wiring.connect(m, manager.weights, feed.words)
            wiring.connect(m, wiring.flipped(self.desc), feed.desc)
            wiring.connect(m, feed.steps, engine.weights)
        wiring.connect(m, wiring.flipped(self.cmd), manager.cmd)
        wiring.connect(m, wiring.flipped(self.acts), engine.acts)
        wiring.connect(m, engine.sums, wiring.flipped(self.sums))
        axi0 = self.drams[0].axi
        with m.If(axi0.rvalid & axi0.rready):
            m.d.sync += self.dram_beats.eq(self.dram_beats + 1)
        m.d.comb += [self.violation.eq(Cat(d.violation for d in self.drams).any()), self.error.eq(manager.error)]
        return m
