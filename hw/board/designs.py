"""Designs ``trillium build`` can take to a bitstream, selected by name (``--design``).

A design is a :class:`DesignSpec`: a factory ``make(platform, hw)`` returning the top-level elaboratable
for one board's Amaranth platform and one hardware config, and the top's ``clocks``: the clock
constraint in MHz of each clock domain, which the build report checks nextpnr's Fmax against.

* ``link``: :class:`LinkTop`, the host link alone (:class:`hw.board.link.UartLink`) on the board's clock,
  reset and UART pins, with an AXI4-Lite CSR stub (:class:`CsrStub`: the ``id`` register answers the
  hardware config's hash, so ``BoardDevice.check_id()`` works against it, plus scratch registers) and a
  small on-chip RAM as the DRAM stand-in (:class:`AxiRam`), so synthesis keeps the whole link. A useful
  bitstream on its own: the host can ``PING``, read the id and write and read back DRAM bytes.
* ``shell`` (to come): the board shell, link + accelerator + SDRAM controller. Add a
  :class:`DesignSpec` to :data:`DESIGNS`; the build flow needs nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Elaboratable, Module, Signal
from amaranth.build import ResourceError
from amaranth.lib import io, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In
from amaranth.utils import exact_log2

from ..control.axi_lite import AxiLiteSignature
from ..memory.axi import AxiReadSignature
from ..memory.axi_write import AxiWriteSignature
from .link import ADDR_BITS, UartLink
from .uart import baud_divisor

__all__ = ["DESIGNS", "DesignSpec", "AxiRam", "CsrStub", "LinkTop", "design_names", "get_design"]

#: UART rate of the link design: an exact divisor of both boards' clocks (25 and 12 MHz).
DEFAULT_BAUD = 1_000_000


class CsrStub(wiring.Component):
    """AXI4-Lite slave standing in for the accelerator's CSRs: register 0 (``id``) reads ``ident``, registers
    1..``n_scratch`` are read/write scratch registers, everything else reads 0. One transaction at a time,
    OKAY responses. ``scratch0`` is register 1's value (shown on LEDs by :class:`LinkTop`)."""

    def __init__(self, ident, addr_bits=16, n_scratch=7):
        self.ident = ident & 0xFFFF_FFFF
        self.n_scratch = n_scratch
        super().__init__({"axi": In(AxiLiteSignature(addr_bits))})
        self.scratch0 = Signal(32)

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        regs = [Signal(32, name=f"scratch{i}") for i in range(self.n_scratch)]
        m.d.comb += self.scratch0.eq(regs[0])

        # Write: take address and data together, then answer.
        m.d.comb += [axi.awready.eq(axi.awvalid & axi.wvalid & ~axi.bvalid),
                     axi.wready.eq(axi.awvalid & axi.wvalid & ~axi.bvalid)]
        with m.If(axi.awvalid & axi.wvalid & ~axi.bvalid):
            index = axi.awaddr[2:]
            for i, r in enumerate(regs):
                with m.If(index == i + 1):
                    m.d.sync += r.eq(axi.wdata)
            m.d.sync += [axi.bvalid.eq(1), axi.bresp.eq(0)]
        with m.If(axi.bvalid & axi.bready):
            m.d.sync += axi.bvalid.eq(0)

        # Read.
        m.d.comb += axi.arready.eq(~axi.rvalid)
        with m.If(axi.arvalid & ~axi.rvalid):
            index = axi.araddr[2:]
            with m.Switch(index):
                with m.Case(0):
                    m.d.sync += axi.rdata.eq(self.ident)
                for i, r in enumerate(regs):
                    with m.Case(i + 1):
                        m.d.sync += axi.rdata.eq(r)
                with m.Default():
                    m.d.sync += axi.rdata.eq(0)
            m.d.sync += [axi.rvalid.eq(1), axi.rresp.eq(0)]
        with m.If(axi.rvalid & axi.rready):
            m.d.sync += axi.rvalid.eq(0)
        return m


class AxiRam(wiring.Component):
    """A small AXI4 slave RAM (INCR bursts, byte strobes, one transaction per direction at a time): the
    DRAM stand-in of the ``link`` design. Addresses wrap modulo ``size_bytes``. Reads take two cycles per
    beat (the block RAM's registered output), which is plenty behind a UART."""

    def __init__(self, data_bits=32, size_bytes=4096, id_bits=1):
        self.data_bits = data_bits
        self.size_bytes = size_bytes
        self.words = size_bytes // (data_bits // 8)
        exact_log2(self.words)
        super().__init__({"rd": In(AxiReadSignature(ADDR_BITS, data_bits, id_bits)),
                          "wr": In(AxiWriteSignature(ADDR_BITS, data_bits, id_bits))})

    def elaborate(self, platform):
        m = Module()
        rd, wr = self.rd, self.wr
        shift = exact_log2(self.data_bits // 8)
        idx_bits = exact_log2(self.words)
        m.submodules.mem = mem = Memory(shape=self.data_bits, depth=self.words, init=[])
        rp = mem.read_port()
        wp = mem.write_port(granularity=8)

        r_idx, r_left, r_id = Signal(idx_bits), Signal(8), Signal.like(rd.arid)
        m.d.comb += [rp.addr.eq(r_idx), rd.rdata.eq(rp.data), rd.rid.eq(r_id), rd.rresp.eq(0),
                     rd.rlast.eq(r_left == 0)]
        with m.FSM(name="rd_fsm"):
            with m.State("IDLE"):
                m.d.comb += rd.arready.eq(1)
                with m.If(rd.arvalid):
                    m.d.sync += [r_idx.eq(rd.araddr[shift:]), r_left.eq(rd.arlen), r_id.eq(rd.arid)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += rd.rvalid.eq(1)
                with m.If(rd.rready):
                    m.d.sync += [r_idx.eq(r_idx + 1), r_left.eq(r_left - 1)]
                    m.next = "FETCH"
                    with m.If(r_left == 0):
                        m.next = "IDLE"

        w_idx, w_id = Signal(idx_bits), Signal.like(wr.awid)
        m.d.comb += [wp.addr.eq(w_idx), wp.data.eq(wr.wdata), wr.bid.eq(w_id), wr.bresp.eq(0)]
        with m.FSM(name="wr_fsm"):
            with m.State("IDLE"):
                m.d.comb += wr.awready.eq(1)
                with m.If(wr.awvalid):
                    m.d.sync += [w_idx.eq(wr.awaddr[shift:]), w_id.eq(wr.awid)]
                    m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += wr.wready.eq(1)
                with m.If(wr.wvalid):
                    m.d.comb += wp.en.eq(wr.wstrb)
                    m.d.sync += w_idx.eq(w_idx + 1)
                    with m.If(wr.wlast):
                        m.next = "RESP"
            with m.State("RESP"):
                m.d.comb += wr.bvalid.eq(1)
                with m.If(wr.bready):
                    m.next = "IDLE"
        return m


class LinkTop(Elaboratable):
    """The ``link`` design: :class:`UartLink` on the board's UART, :class:`CsrStub`, :class:`AxiRam`.

    LEDs: 0 link busy, 1 a UART framing error was seen (sticky), 2..7 the low bits of scratch register 1.
    The ``sync`` domain is the platform's default clock (25 MHz on the ULX3S, 12 MHz on the LIFCL-40-EVN).
    """

    def __init__(self, platform, hw, *, baud=DEFAULT_BAUD, ram_bytes=4096, max_payload=1024):
        self.clk_hz = platform.default_clk_frequency
        self.hw = hw
        self.baud = baud
        self.ram_bytes = ram_bytes
        self.max_payload = max_payload
        self.divisor = baud_divisor(self.clk_hz, baud)
        #: Clock constraint (MHz) per clock domain, checked against nextpnr's Fmax.
        self.clocks = {"sync": self.clk_hz / 1e6}

    def elaborate(self, platform):
        m = Module()
        data_bits = self.hw.dram.bus_bits
        m.submodules.link = link = UartLink(self.divisor, data_bits=data_bits, max_payload=self.max_payload,
                                            timeout_cycles=max(1000, int(self.clk_hz // 1000)))
        m.submodules.csr = csr = CsrStub(self.hw.config_hash)
        m.submodules.ram = ram = AxiRam(data_bits, self.ram_bytes)
        wiring.connect(m, link.csr, csr.axi)
        wiring.connect(m, link.axi_rd, ram.rd)
        wiring.connect(m, link.axi_wr, ram.wr)

        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_buf = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [link.rx.eq(rx_buf.i), tx_buf.o.eq(link.tx)]

        framing_seen = Signal()
        with m.If(link.framing_error):
            m.d.sync += framing_seen.eq(1)
        leds = Cat(link.busy, framing_seen, csr.scratch0[:6])
        for i in range(8):
            try:
                led = platform.request("led", i, dir="-")
            except ResourceError:  # a board with fewer LEDs
                break
            m.submodules[f"led_buf{i}"] = buf = io.Buffer("o", led)
            m.d.comb += buf.o.eq(leds[i])
        return m


@dataclass(frozen=True)
class DesignSpec:
    """A buildable design: ``make(platform, hw)`` returns a top with a ``clocks`` dict (domain -> MHz)."""

    name: str
    description: str
    make: object


DESIGNS = {
    "link": DesignSpec("link", "UART host link + AXI4-Lite CSR stub (id register) + 4 KiB on-chip RAM as DRAM",
                       lambda platform, hw: LinkTop(platform, hw)),
}


def design_names():
    return sorted(DESIGNS)


def get_design(name):
    """The :class:`DesignSpec` called ``name``; ``ValueError`` naming the known designs otherwise."""
    try:
        return DESIGNS[name]
    except KeyError:
        raise ValueError(f"unknown design {name!r}; known designs: {', '.join(design_names())}") from None
