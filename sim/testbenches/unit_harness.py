"""Gateware and helpers for testing an execution unit against the ISA simulator in the Amaranth simulator.

:class:`BufferHarness` is a real :class:`~hw.units.buffers.ActivationBuffers` shared by the unit under
test and the testbench: the testbench preloads buffers (``tb_wr``) and reads them back (``tb_rd`` /
``tb_rd_req`` / ``tb_rd_data``) through the same ports the unit uses, and ``hold`` stalls the unit's
requests and writes (random back-pressure). :func:`bus_words` turns a DRAM image into the bus words of
:class:`~hw.memory.dram_model.FastDramModel`.
"""

from amaranth.hdl import Module, Mux, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.units.buffers import ActivationBuffers, rd_req_layout, wr_layout
from hw.vector.quant_pow2 import E_FIELD_BITS

__all__ = ["BufferHarness", "bus_words", "pack_lanes", "unpack_lanes"]


def bus_words(image, bus_bytes):
    """The little-endian bus words of a DRAM image (the last one zero-padded)."""
    image = bytes(image)
    return [int.from_bytes(image[i:i + bus_bytes].ljust(bus_bytes, b"\0"), "little")
            for i in range(0, len(image), bus_bytes)]


def pack_lanes(values, bits=64):
    """One buffer word from per-lane integers (two's complement, ``bits`` per lane)."""
    word = 0
    for n, v in enumerate(values):
        word |= (int(v) & ((1 << bits) - 1)) << (bits * n)
    return word


def unpack_lanes(word, lanes, bits=64, keep=32):
    """Per-lane signed integers of a buffer word: the low ``keep`` bits of each ``bits``-bit lane."""
    out = []
    for n in range(lanes):
        v = (word >> (bits * n)) & ((1 << keep) - 1)
        out.append(v - (1 << keep) if v >> (keep - 1) else v)
    return out


class BufferHarness(wiring.Component):
    """:class:`ActivationBuffers` with the unit's ports and the testbench's beside them.

    Parameters
    ----------
    lanes, max_tokens, words, max_index :
        As for :class:`ActivationBuffers`.

    Attributes
    ----------
    rd_req, rd_data, rd_e, wr :
        The unit's side (connect them to the unit's ports).
    tb_wr : In(stream.Signature(wr_layout(...)))
        Testbench writes; they take precedence over the unit's (the unit waits).
    tb_rd : In(1)
        The testbench owns the read port (``tb_rd_req`` / ``tb_rd_data``); the unit's requests wait.
    tb_rd_req, tb_rd_data, tb_rd_e :
        Testbench reads.
    hold : In(1)
        Stall the unit's requests and writes this cycle.
    """

    def __init__(self, *, lanes, max_tokens, words, max_index):
        self.buffers = ActivationBuffers(lanes=lanes, max_tokens=max_tokens, words=words, max_index=max_index)
        req, wr = rd_req_layout(max_tokens, max_index), wr_layout(lanes, max_tokens, max_index)
        super().__init__({
            "rd_req": In(stream.Signature(req)),
            "rd_data": Out(stream.Signature(unsigned(64 * lanes))),
            "rd_e": Out(E_FIELD_BITS),
            "wr": In(stream.Signature(wr)),
            "tb_wr": In(stream.Signature(wr)),
            "tb_rd": In(1),
            "tb_rd_req": In(stream.Signature(req)),
            "tb_rd_data": Out(stream.Signature(unsigned(64 * lanes))),
            "tb_rd_e": Out(E_FIELD_BITS),
            "hold": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffers = b = self.buffers
        tb, hold = self.tb_rd, self.hold
        m.d.comb += [
            b.rd_req.valid.eq(Mux(tb, self.tb_rd_req.valid, self.rd_req.valid & ~hold)),
            b.rd_req.payload.eq(Mux(tb, self.tb_rd_req.payload, self.rd_req.payload)),
            self.rd_req.ready.eq(~tb & ~hold & b.rd_req.ready),
            self.tb_rd_req.ready.eq(tb & b.rd_req.ready),
            self.rd_data.payload.eq(b.rd_data.payload), self.tb_rd_data.payload.eq(b.rd_data.payload),
            self.rd_data.valid.eq(~tb & b.rd_data.valid), self.tb_rd_data.valid.eq(tb & b.rd_data.valid),
            b.rd_data.ready.eq(Mux(tb, self.tb_rd_data.ready, self.rd_data.ready)),
            self.rd_e.eq(b.rd_e), self.tb_rd_e.eq(b.rd_e),
            b.wr.valid.eq(self.tb_wr.valid | (self.wr.valid & ~hold)),
            b.wr.payload.eq(Mux(self.tb_wr.valid, self.tb_wr.payload, self.wr.payload)),
            self.tb_wr.ready.eq(1),
            self.wr.ready.eq(~self.tb_wr.valid & ~hold),
            b.x_in.valid.eq(0),
        ]
        return m
