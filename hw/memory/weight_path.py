"""The weight path as one simulated unit: fast DRAM model -> weight-buffer manager -> TLMM engine.

Used by the weight-buffer tests (which drive ``cmd``, ``acts`` and ``sums`` from cocotb) and, wrapped
with on-chip sequencers, by the memory benchmark. The DRAM model is inside, so weights never cross
into Python; its contents are written through ``load`` before a run.
"""

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..params import check_int
from ..tlmm import TlmmEngine
from .dram_model import FastDramModel, load_layout
from .weight_buffer import WeightBufferManager, tile_command_layout

__all__ = ["WeightPath"]


class WeightPath(wiring.Component):
    """``FastDramModel`` + ``WeightBufferManager`` + ``TlmmEngine`` (``mux`` tables).

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

    Attributes
    ----------
    cmd : In(stream.Signature(tile_command_layout(32, 24)))
    load : In(stream.Signature(load_layout(dram_words, data_bits)))
    acts : In(stream.Signature(engine act-step layout))
    sums : Out(stream.Signature(engine sums layout))
    dram_beats : Out(32)
        Read-data beats transferred since reset (wraps).
    violation, error : Out(1)
        Sticky AXI rule violation seen by the DRAM model; error response seen by the reader.
    """

    def __init__(self, tables, lanes, *, data_bits, buffer_words, dram_words, latency=20, bytes_per_cycle=None,
                 jitter=0, max_tokens=16, acc_bits=32, max_outstanding=4):
        self.tables = check_int("tables", tables, 1, 64, "WeightPath")
        self.lanes = check_int("lanes", lanes, 1, 64, "WeightPath")
        self.engine = TlmmEngine(tables, lanes, acc_bits=acc_bits, max_tokens=max_tokens)
        self.manager = WeightBufferManager(5 * tables * lanes, data_bits=data_bits, buffer_words=buffer_words,
                                           max_outstanding=max_outstanding)
        self.dram = FastDramModel(32, data_bits, depth=dram_words, latency=latency, bytes_per_cycle=bytes_per_cycle,
                                  jitter=jitter, loadable=True, max_outstanding=max(8, max_outstanding))
        super().__init__({
            "cmd": In(stream.Signature(tile_command_layout(32, self.manager.beats_bits))),
            "load": In(stream.Signature(load_layout(dram_words, data_bits))),
            "acts": In(stream.Signature(self.engine.act_layout)),
            "sums": Out(stream.Signature(self.engine.sums_layout)),
            "dram_beats": Out(32),
            "violation": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.dram = dram = self.dram
        m.submodules.manager = manager = self.manager
        m.submodules.engine = engine = self.engine
        wiring.connect(m, manager.axi, dram.axi)
        wiring.connect(m, manager.weights, engine.weights)
        wiring.connect(m, wiring.flipped(self.cmd), manager.cmd)
        wiring.connect(m, wiring.flipped(self.load), dram.load)
        wiring.connect(m, wiring.flipped(self.acts), engine.acts)
        wiring.connect(m, engine.sums, wiring.flipped(self.sums))
        with m.If(dram.axi.rvalid & dram.axi.rready):
            m.d.sync += self.dram_beats.eq(self.dram_beats + 1)
        m.d.comb += [self.violation.eq(dram.violation), self.error.eq(manager.error)]
        return m
