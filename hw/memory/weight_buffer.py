"""The weight-buffer manager: streams TLMM weight words from DRAM through an on-chip ring buffer.

The host computes a schedule of *tile commands* from the layer shapes and the buffer size
(``firmware/weight_schedule.py``, ``docs/memory.md``): each is a DRAM range in bus words, and the last
one of a contiguous segment carries ``end`` and the padding bytes (``pad``) of its last bus word. The
manager reads them in order through an :class:`AxiBurstReader` (or, for a width that is several AXI4
ports, an :class:`AxiReaderGroup`) whose read buffer is the ring: block RAM of ``weight_buffer.kbytes``. The reader
issues bursts as soon as the ring has room for them, independently of where the engine is, so the
next tiles, and the next layer's first tiles, are fetched while the engine computes on the current
ones. A :class:`Gearbox` cuts the bus words into weight words (weights are packed back to back in
DRAM, so bus words and weight words need not align), and the engine's ``weights`` port takes them.

Ring space is freed as the gearbox takes bus words out, which it does as the engine releases weight
words: it holds at most one weight word ready for the engine and ``bus + word`` bits being repacked.
The ``mux`` engine holds each word for all tokens of a prefill chunk (act steps with ``release`` only
on the last token), and the ``lutram`` engine's :class:`~hw.memory.lut_feed.LutWordFeed` replays it,
so every weight byte crosses the DRAM port once per chunk.
"""

from amaranth.hdl import Module, Mux, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from ..params import check_int
from .axi import MAX_BURST, AxiBurstReader, AxiReadSignature
from .axi_group import AxiReaderGroup, port_split
from .gearbox import Gearbox

__all__ = ["WeightBufferManager", "tile_command_layout"]


#: Width of a tile command's ``pad`` field (bytes; a bus is at most 16 ports of 1024 bits = 2 KiB).
PAD_BITS = 12


def tile_command_layout(addr_bits, beats_bits):
    """A tile command: ``beats`` bus words from byte address ``addr``; ``end`` closes a segment (the
    bits after the last whole weight word of this tile are padding), and ``pad`` (with ``end``) is the
    number of padding bytes at the top of the tile's last bus word."""
    return data.StructLayout({"addr": unsigned(addr_bits), "beats": unsigned(beats_bits), "end": 1,
                              "pad": unsigned(PAD_BITS)})


class WeightBufferManager(wiring.Component):
    """Tile commands in, AXI4 reads out, TLMM weight words to the engine.

    Parameters
    ----------
    word_bits : int
        Weight word width, ``5*T*N``.
    data_bits : int
        DRAM bus width: a power of two with ``ports = 1``, else ``ports`` times a power of two.
    buffer_words : int
        Ring capacity in bus words (``weight_buffer.kbytes * 1024 // (data_bits // 8)``).
    addr_bits : int
        DRAM byte-address width.
    ports : int
        AXI4 read ports. With ``ports > 1`` an :class:`AxiReaderGroup` stripes the bus words over the
        ports and each tile command's ``addr`` is the port-local address (``docs/memory.md``).
    max_burst, max_outstanding, beats_bits, id_bits : int
        Passed to :class:`AxiBurstReader`. ``max_burst`` is capped at half the ring so that a burst
        can be in flight while the engine drains the other half.

    Attributes
    ----------
    cmd : In(stream.Signature(tile_command_layout(addr_bits, beats_bits)))
    weights : Out(stream.Signature(unsigned(word_bits)))
        Connect to ``TlmmEngine.weights``.
    axi : Out(AxiReadSignature(addr_bits, data_bits, id_bits))
        With ``ports > 1``: ``Out(AxiReadSignature(addr_bits, data_bits // ports, id_bits)).array(ports)``.
    error : Out(1)
        Sticky: DRAM answered a read with an error.
    idle : Out(1)
        No command in progress and no burst in flight.
    """

    def __init__(self, word_bits, *, data_bits, buffer_words, addr_bits=32, max_burst=MAX_BURST,
                 max_outstanding=4, beats_bits=24, id_bits=1, ports=1):
        owner = "WeightBufferManager"
        self.word_bits = check_int("word_bits", word_bits, 8, 1 << 16, owner)
        self.ports = check_int("ports", ports, 1, 16, owner)
        if data_bits % ports:
            raise ValueError(f"{owner}: data_bits = {data_bits} is not a multiple of ports = {ports}")
        self.buffer_words = check_int("buffer_words", buffer_words, 4, 1 << 24, owner)
        self.max_burst = min(check_int("max_burst", max_burst, 1, MAX_BURST, owner), buffer_words // 2)
        self.max_outstanding = check_int("max_outstanding", max_outstanding, 1, 64, owner)
        self.data_bits, self.addr_bits, self.beats_bits = data_bits, addr_bits, beats_bits
        self.beats_bits = check_int("beats_bits", beats_bits, 1, 32, owner)
        self.axi_signature = AxiReadSignature(addr_bits, data_bits // ports, id_bits)
        self.cmd_layout = tile_command_layout(addr_bits, beats_bits)
        axi = Out(self.axi_signature) if ports == 1 else Out(self.axi_signature).array(ports)
        super().__init__({
            "cmd": In(stream.Signature(self.cmd_layout)),
            "weights": Out(stream.Signature(unsigned(word_bits))),
            "axi": axi,
            "error": Out(1),
            "idle": Out(1),
        })

    @classmethod
    def for_config(cls, cfg, **kwargs):
        """The manager for a :class:`hw.config.HwConfig` (weight word, bus width, ring size, and as
        many power-of-two AXI4 ports as the width needs: :func:`port_split`)."""
        buffer_words = cfg.weight_buffer.kbytes * 1024 // cfg.dram.data_bytes
        ports, _ = port_split(cfg.dram.data_bits)
        return cls(cfg.tlmm.word_bits, data_bits=cfg.dram.data_bits, buffer_words=buffer_words, ports=ports,
                   **kwargs)

    @property
    def data_bytes(self):
        return self.data_bits // 8

    def elaborate(self, platform):
        m = Module()
        kwargs = dict(buffer_words=self.buffer_words, max_burst=self.max_burst, max_outstanding=self.max_outstanding,
                      beats_bits=self.beats_bits, tag_bits=1, id_bits=self.axi_signature.id_bits)
        if self.ports == 1:
            m.submodules.reader = reader = AxiBurstReader(self.addr_bits, self.data_bits, **kwargs)
            wiring.connect(m, wiring.flipped(self.axi), reader.axi)
        else:
            m.submodules.reader = reader = AxiReaderGroup(self.addr_bits, self.data_bits, ports=self.ports, **kwargs)
            for p in range(self.ports):
                wiring.connect(m, wiring.flipped(self.axi[p]), reader.axi[p])
        m.submodules.gearbox = gearbox = Gearbox(self.data_bits, self.word_bits)
        # The padding count of each segment end waits here for its flush word, rather than riding in
        # the ring with every bus word (which would widen the weight buffer's block RAM).
        m.submodules.pads = pads = SyncFIFO(width=len(gearbox.i.payload.pad), depth=4)
        is_end = self.cmd.payload.end
        flush = reader.data.payload.last & reader.data.payload.tag[0]

        m.d.comb += [
            reader.cmd.valid.eq(self.cmd.valid & (~is_end | pads.w_rdy)),
            reader.cmd.payload.addr.eq(self.cmd.payload.addr),
            reader.cmd.payload.beats.eq(self.cmd.payload.beats),
            reader.cmd.payload.tag.eq(is_end),
            self.cmd.ready.eq(reader.cmd.ready & (~is_end | pads.w_rdy)),
            pads.w_data.eq(self.cmd.payload.pad),
            # A zero-beat command brings no flush word to pop the entry: do not push one.
            pads.w_en.eq(self.cmd.valid & self.cmd.ready & is_end & (self.cmd.payload.beats != 0)),

            gearbox.i.valid.eq(reader.data.valid),
            gearbox.i.payload.data.eq(reader.data.payload.data),
            gearbox.i.payload.flush.eq(flush),
            gearbox.i.payload.pad.eq(Mux(flush, pads.r_data, 0)),
            pads.r_en.eq(reader.data.valid & flush & gearbox.i.ready),
            reader.data.ready.eq(gearbox.i.ready),

            self.weights.valid.eq(gearbox.o.valid),
            self.weights.payload.eq(gearbox.o.payload),
            gearbox.o.ready.eq(self.weights.ready),

            self.error.eq(reader.error),
            self.idle.eq(reader.idle),
        ]
        return m
