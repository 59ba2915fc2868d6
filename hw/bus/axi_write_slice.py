"""An AXI4 write register slice: AW, W and B through :class:`~hw.dataflow.skid.SkidBuffer` s.

In the ULX3S shell the SDRAM controller's ``wready`` depends on ``wvalid`` in the same cycle (a beat is
taken with its last SDRAM word), and behind the write arbiters every master's next beat depends on
``wready``: one combinational path ran from the shell arbiter's grant FIFO through the controller, both
arbiters and the KV writer into the LINEAR unit's stall (16.7 ns estimated). With the slice between the
shell arbiter and the controller, the masters see a registered ``awready``/``wready`` and the controller
registered ``awvalid``/``wvalid`` and payloads; B is registered the other way, so a slave's ``bvalid``
reaches the master from a register too. Bursts still move one beat per cycle; each channel adds one cycle
of latency. Ordering is untouched (each channel stays in order, and AXI4 lets AW and W arrive
in either order).
"""

from amaranth.hdl import Module
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..dataflow.skid import SkidBuffer
from ..memory.axi_write import AxiWriteSignature
from ..params import check_int

__all__ = ["AxiWriteSlice"]

_AW = ("awaddr", "awlen", "awsize", "awburst", "awid")
_W = ("wdata", "wstrb", "wlast")
_B = ("bresp", "bid")


class AxiWriteSlice(wiring.Component):
    """A register slice on AW and W (see the module docstring).

    Parameters
    ----------
    addr_bits, data_bits, id_bits : int
        As :class:`~hw.memory.axi_write.AxiWriteSignature`.

    Attributes
    ----------
    m : In(AxiWriteSignature)
        Faces the master.
    s : Out(AxiWriteSignature)
        Faces the slave.
    """

    def __init__(self, addr_bits, data_bits, id_bits):
        owner = "AxiWriteSlice"
        self.addr_bits = check_int("addr_bits", addr_bits, 12, 64, owner)
        self.data_bits = check_int("data_bits", data_bits, 8, 1024, owner)
        self.id_bits = check_int("id_bits", id_bits, 1, 32, owner)
        sig = AxiWriteSignature(addr_bits, data_bits, id_bits)
        super().__init__({"m": In(sig), "s": Out(sig)})

    def elaborate(self, platform):
        m = Module()
        src, dst = self.m, self.s
        # AW and W from the master to the slave; B the other way, so the slave's bvalid (an SDRAM
        # controller's response queue) reaches the master's burst bookkeeping from a register too.
        for name, fields, valid, ready, frm, to in (("aw", _AW, "awvalid", "awready", src, dst),
                                                    ("w", _W, "wvalid", "wready", src, dst),
                                                    ("b", _B, "bvalid", "bready", dst, src)):
            layout = data.StructLayout({f: len(getattr(frm, f)) for f in fields})
            m.submodules[name] = skid = SkidBuffer(layout)
            m.d.comb += [skid.i.valid.eq(getattr(frm, valid)), getattr(frm, ready).eq(skid.i.ready),
                         getattr(to, valid).eq(skid.o.valid), skid.o.ready.eq(getattr(to, ready))]
            m.d.comb += [getattr(skid.i.payload, f).eq(getattr(frm, f)) for f in fields]
            m.d.comb += [getattr(to, f).eq(getattr(skid.o.payload, f)) for f in fields]
        return m
