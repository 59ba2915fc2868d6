"""AXI4 read arbiter: several read masters share one DRAM read port.

Each master's read-address requests are granted round-robin, one AR at a time. The arbiter prepends
the master's index to ``arid``, so the slave's ``rid`` routes each data beat back to the master that
asked for it. Bursts with different IDs may come back in any order, or interleaved, and the routing
still holds. The masters (``AxiBurstReader``) reserve buffer space before they issue a burst, so they
take R beats whenever they come: one master's slow consumer never blocks another master's data.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..memory.axi import AxiReadSignature
from ..params import check_int
from .round_robin import round_robin

__all__ = ["AxiReadArbiter"]


class AxiReadArbiter(wiring.Component):
    """``masters`` read ports in (``m[i]``), one read port out (``s``).

    Parameters
    ----------
    masters : int
        Number of masters, 1..16.
    addr_bits, data_bits : int
        As :class:`~hw.memory.axi.AxiReadSignature`.
    id_bits : int
        The masters' ID width; the slave port's is ``id_bits + ceil(log2(masters))``.
    """

    def __init__(self, masters, addr_bits, data_bits, *, id_bits=1):
        self.masters = check_int("masters", masters, 1, 16, "AxiReadArbiter")
        self.sel_bits = max(1, (masters - 1).bit_length())
        self.id_bits = id_bits
        master_sig = AxiReadSignature(addr_bits, data_bits, id_bits)
        super().__init__({
            "m": In(master_sig).array(masters),
            "s": Out(AxiReadSignature(addr_bits, data_bits, id_bits + self.sel_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        n, s = self.masters, self.s
        # Round-robin: the grant starts from the master after the last one served.
        last = Signal(range(n))
        grant, any_req = round_robin(m, [self.m[i].arvalid for i in range(n)], last)
        for i in range(n):
            mi = self.m[i]
            with m.If(grant == i):
                m.d.comb += [s.araddr.eq(mi.araddr), s.arlen.eq(mi.arlen), s.arsize.eq(mi.arsize),
                             s.arburst.eq(mi.arburst), s.arid.eq(Cat(mi.arid, grant))]
                m.d.comb += mi.arready.eq(s.arready & any_req)
        m.d.comb += s.arvalid.eq(any_req)
        with m.If(s.arvalid & s.arready):
            m.d.sync += last.eq(grant)

        # R: route by the index in the upper ID bits.
        owner = s.rid[self.id_bits:]
        for i in range(n):
            mi = self.m[i]
            mine = owner == i
            m.d.comb += [mi.rdata.eq(s.rdata), mi.rresp.eq(s.rresp), mi.rlast.eq(s.rlast),
                         mi.rid.eq(s.rid[:self.id_bits]), mi.rvalid.eq(s.rvalid & mine)]
            with m.If(mine):
                m.d.comb += s.rready.eq(mi.rready)
        return m
