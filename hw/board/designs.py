"""Designs ``trillium build`` can take to a bitstream, selected by name (``--design``).

A design is a :class:`DesignSpec`: a factory ``make(platform, hw)`` returning the top-level elaboratable
for one board's Amaranth platform and one hardware config, and the top's ``clocks``: the clock
constraint in MHz of each clock domain, which the build report checks nextpnr's Fmax against.

* ``link``: :class:`LinkTop`, the host link alone (:class:`hw.board.link.UartLink`) on the board's clock,
  reset and UART pins, with an AXI4-Lite CSR stub (:class:`CsrStub`: the ``id`` register answers the
  hardware config's hash, so ``BoardDevice.check_id()`` works against it, plus scratch registers) and a
  small on-chip RAM as the DRAM stand-in (:class:`AxiRam`), so synthesis keeps the whole link. A useful
  bitstream on its own: the host can ``PING``, read the id and write and read back DRAM bytes.
* ``shell``: the board shell (:class:`hw.board.shell.Ulx3sShell`: link + accelerator + SDRAM controller)
  behind an ECP5 PLL (:class:`ShellTop`), on the ULX3S's UART and SDRAM pins.
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


# -- the board shell ---------------------------------------------------------------------------------------

from amaranth.hdl import ClockDomain, ClockSignal, Instance  # noqa: E402
from amaranth.lib.cdc import ResetSynchronizer  # noqa: E402

from .shell import Ulx3sShell  # noqa: E402



def ecp5_pll_params(in_mhz, out_mhz):
    """``EHXPLLL`` dividers for ``out_mhz`` from ``in_mhz`` with CLKOP fed back: ``(CLKI_DIV, CLKFB_DIV,
    CLKOP_DIV)``: the first exact feedback ratio with the phase detector at 10 MHz or more, and the output
    divider putting the VCO nearest 600 MHz (range 400..800); ``ValueError`` if there is none."""
    for clki in range(1, 129):
        for fb in range(1, 81):
            if abs(in_mhz * fb / clki - out_mhz) > 1e-9 or in_mhz / clki < 10:
                continue
            ops = [op for op in range(1, 129) if 400 <= out_mhz * op <= 800]
            if ops:
                return clki, fb, min(ops, key=lambda op: abs(out_mhz * op - 600))
    raise ValueError(f"no exact ECP5 PLL setting makes {out_mhz} MHz from {in_mhz} MHz")


class ShellTop(Elaboratable):
    """The ``shell`` design: :class:`hw.board.shell.Ulx3sShell` on the ULX3S.

    * **Clock.** ``pll=True``: an ``EHXPLLL`` makes ``clk_mhz`` (default: the hardware config's
      ``clock_mhz``, 100 for ``ecp5``) from the 25 MHz oscillator; the ``sync`` domain is held in reset
      until the PLL locks. ``pll=False``: the shell runs on the oscillator's 25 MHz directly.
    * **SDRAM.** The controller's pin signals go through plain I/O buffers (the controller's own output
      registers feed them); the chip's clock is the ``sync`` clock inverted, made by a DDR output register
      (``ODDRX1F``: low in the first half of the cycle, high in the second), so the chip samples commands
      and write data half a cycle after they leave the controller's registers. Read data is registered once
      in the fabric before the controller sees it (``read_delay=1``). With the clock inverted, CL 3 data
      (valid ``tAC`` = 5.4 ns after the chip's edge) is sampled by the register CL+1 cycles after the
      command, in the middle of its valid window at 50 MHz. At 100 MHz the same reasoning puts the sampling
      edge at the end of the window, so the phase (or ``read_delay``) has to be set on the board. This
      phase choice is reasoned, not measured on a board: check it (a DRAM write/read test over the link) on
      the first board.
    * **UART** as the ``link`` design (``baud`` 1 Mbaud: divisor 50 at 50 MHz).
    * **LEDs**: the shell's ``leds`` (0 run done, 1 running, 2 link busy, 3 SDRAM ready, 4 UART framing
      error seen, 5 host DRAM access open, 6 accelerator DRAM access open, 7 heartbeat).
    """

    def __init__(self, platform, hw, *, clk_mhz=None, pll=True, baud=DEFAULT_BAUD, max_payload=1024):
        clk_mhz = hw.clock_mhz if clk_mhz is None else clk_mhz
        try:
            platform.lookup("sdram", 0)
        except ResourceError:
            self._MustUse__silence = True        # never elaborated: no "created but never used" warning
            raise ValueError(f"design 'shell' needs a board with an SDR SDRAM resource ('sdram'); "
                             f"{type(platform).__name__} has none") from None
        self.in_hz = platform.default_clk_frequency
        self.pll = bool(pll)
        self.clk_hz = int(clk_mhz * 1e6) if self.pll else int(self.in_hz)
        if self.pll:
            self.pll_params = ecp5_pll_params(self.in_hz / 1e6, clk_mhz)
        self.hw = hw
        self.shell = Ulx3sShell(hw, clk_hz=self.clk_hz, baud=baud, read_delay=1, max_payload=max_payload)
        #: Clock constraint (MHz) per clock domain, checked against nextpnr's Fmax.
        self.clocks = {"sync": self.clk_hz / 1e6}

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd_sync = ClockDomain("sync")
        clk_in = platform.request(platform.default_clk, dir="-")
        m.submodules.clk_in_buf = clk_buf = io.Buffer("i", clk_in)
        if self.pll:
            clki, fb, op = self.pll_params
            locked = Signal()
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{self.in_hz / 1e6:g}", a_FREQUENCY_PIN_CLKOP=f"{self.clk_hz / 1e6:g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
                p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
                p_CLKI_DIV=clki, p_CLKFB_DIV=fb, p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=op,
                p_CLKOP_CPHASE=(op - 1) // 2, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
                i_RST=0, i_STDBY=0, i_CLKI=clk_buf.i, o_CLKOP=ClockSignal("sync"), i_CLKFB=ClockSignal("sync"),
                i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0,
                i_ENCLKOP=0, o_LOCK=locked)
            platform.add_clock_constraint(cd_sync.clk, self.clk_hz)
            # The synchronised reset reaches most of the design's flip-flops (about 25,000 at `ecp5`):
            # on fabric routing that one net spanned the die (a 15.8 ns arc after placement) and took
            # routing from everything else, so it goes through a global buffer (DCCA) like a clock.
            m.domains.por = cd_por = ClockDomain("por", local=True)
            m.d.comb += cd_por.clk.eq(cd_sync.clk)
            m.submodules.reset_sync = ResetSynchronizer(~locked, domain="por")
            m.submodules.reset_buf = Instance("DCCA", i_CLKI=cd_por.rst, i_CE=1, o_CLKO=cd_sync.rst)
        else:
            m.d.comb += cd_sync.clk.eq(clk_buf.i)       # no reset: flip-flops start at their init values

        m.submodules.shell = shell = self.shell
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_buf = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [shell.rx.eq(rx_buf.i), tx_buf.o.eq(shell.tx)]

        sd = platform.request("sdram", 0, dir="-")
        pins = shell.sdram
        m.submodules.sdram_clk = sd_clk = io.DDRBuffer("o", sd.clk)
        m.d.comb += sd_clk.o.eq(0b10)            # low after the rising edge, high after the falling one
        # cs, we, ras and cas are active-low pins (PinsN): the buffers take the active-high command bits.
        outs = {"clk_en": pins.clk_en, "cs": ~pins.cs_n, "we": ~pins.we_n, "ras": ~pins.ras_n,
                "cas": ~pins.cas_n, "ba": pins.ba, "a": pins.a, "dqm": pins.dqm}
        for name, value in outs.items():
            m.submodules[f"sdram_{name}"] = buf = io.Buffer("o", getattr(sd, name))
            m.d.comb += buf.o.eq(value)
        m.submodules.sdram_dq = dq = io.Buffer("io", sd.dq)
        m.d.comb += [dq.o.eq(pins.dq.o), dq.oe.eq(pins.dq.oe)]
        m.d.sync += pins.dq.i.eq(dq.i)           # read_delay = 1

        for i in range(8):
            try:
                led = platform.request("led", i, dir="-")
            except ResourceError:
                break
            m.submodules[f"led_buf{i}"] = buf = io.Buffer("o", led)
            m.d.comb += buf.o.eq(shell.leds[i])
        return m


DESIGNS["shell"] = DesignSpec(
    "shell", "board shell: UART host link + accelerator + SDR SDRAM controller, the config's clock_mhz from the ECP5 PLL",
    lambda platform, hw: ShellTop(platform, hw))
__all__ += ["ShellTop", "ecp5_pll_params"]
