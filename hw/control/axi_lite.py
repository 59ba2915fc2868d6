"""AXI4-Lite slave in front of the CSR bus: how a Zynq or LiteX CPU reaches the command processor.

One transaction at a time, 32-bit data, word addresses (``addr >> 2`` is the register index; the low
two bits are ignored, and so are partial-word strobes: a write with any strobe set writes the whole
register). Addresses beyond the register file read as 0 and ignore writes, with an OKAY response (the
map is small and fixed; a DECERR would only make CPU drivers harder to write).
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..params import check_int
from .csr_bus import READ_LATENCY, CsrBusSignature

__all__ = ["AxiLiteSignature", "AxiLiteCsrBridge"]


class AxiLiteSignature(wiring.Signature):
    """AXI4-Lite, from the master's side (``awaddr`` ... ``rready``), 32-bit data."""

    def __init__(self, addr_bits):
        self.addr_bits = check_int("addr_bits", addr_bits, 3, 64, "AxiLiteSignature")
        super().__init__({
            "awaddr": Out(addr_bits), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(32), "wstrb": Out(4), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_bits), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(32), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })

    def __eq__(self, other):
        return type(other) is type(self) and other.addr_bits == self.addr_bits

    def __hash__(self):
        return hash((type(self), self.addr_bits))


class AxiLiteCsrBridge(wiring.Component):
    """AXI4-Lite slave (``axi``) to CSR bus initiator (``csr``).

    Parameters
    ----------
    addr_bits : int
        AXI address width.
    csr_addr_bits : int
        Register-index width of the CSR bus.
    """

    def __init__(self, addr_bits, csr_addr_bits):
        self.addr_bits = check_int("addr_bits", addr_bits, 3, 64, "AxiLiteCsrBridge")
        self.csr_addr_bits = check_int("csr_addr_bits", csr_addr_bits, 1, addr_bits - 2, "AxiLiteCsrBridge")
        super().__init__({
            "axi": In(AxiLiteSignature(addr_bits)),
            "csr": Out(CsrBusSignature(csr_addr_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        axi, csr = self.axi, self.csr
        n = self.csr_addr_bits
        in_range = Signal()
        waddr = Signal(self.addr_bits)
        wdata = Signal(32)
        have_aw, have_w = Signal(), Signal()
        w_en = Signal()     # a write with no strobe set writes nothing
        rdata = Signal(32)
        # The CSR address is one register, loaded before each access: the command processor's read mux
        # and write decode start from it, not from the AXI-Lite channels or this FSM's state.
        csr_addr = Signal(n)
        m.d.comb += csr.addr.eq(csr_addr)

        # The CSR read data sits on csr.r_data for exactly one cycle (READ), so it is captured there.
        with m.FSM(name="axil"):
            with m.State("IDLE"):
                # Writes first when both arrive; the address and data phases may come in either order.
                m.d.comb += [axi.awready.eq(~have_aw), axi.wready.eq(~have_w)]
                with m.If(axi.awvalid & ~have_aw):
                    m.d.sync += [waddr.eq(axi.awaddr), have_aw.eq(1)]
                with m.If(axi.wvalid & ~have_w):
                    m.d.sync += [wdata.eq(axi.wdata), w_en.eq(axi.wstrb != 0), have_w.eq(1)]
                with m.If(have_aw & have_w):
                    m.d.sync += csr_addr.eq(waddr[2:2 + n])
                    m.next = "WRITE"
                with m.Elif(~have_aw & ~have_w & ~axi.awvalid & ~axi.wvalid & axi.arvalid):
                    m.d.comb += axi.arready.eq(1)
                    m.d.sync += [csr_addr.eq(axi.araddr[2:2 + n]), in_range.eq(axi.araddr[2 + n:] == 0)]
                    m.next = "READ_STROBE"
            with m.State("READ_STROBE"):
                m.d.comb += csr.r_stb.eq(in_range)
                m.next = "READ_WAIT0" if READ_LATENCY > 1 else "READ"
            for i in range(READ_LATENCY - 1):
                with m.State(f"READ_WAIT{i}"):
                    m.next = f"READ_WAIT{i + 1}" if i + 2 < READ_LATENCY else "READ"
            with m.State("WRITE"):
                m.d.comb += [csr.w_data.eq(wdata),
                             csr.w_stb.eq(w_en & (waddr[2 + n:] == 0))]
                m.d.sync += [have_aw.eq(0), have_w.eq(0)]
                m.next = "BRESP"
            with m.State("BRESP"):
                m.d.comb += [axi.bvalid.eq(1), axi.bresp.eq(0)]
                with m.If(axi.bready):
                    m.next = "IDLE"
            with m.State("READ"):
                # The CSR bus returns data READ_LATENCY cycles after r_stb: it is in csr.r_data now.
                m.d.sync += rdata.eq(0)
                with m.If(in_range):
                    m.d.sync += rdata.eq(csr.r_data)
                m.next = "RRESP"
            with m.State("RRESP"):
                m.d.comb += [axi.rvalid.eq(1), axi.rresp.eq(0), axi.rdata.eq(rdata)]
                with m.If(axi.rready):
                    m.next = "IDLE"
        return m
