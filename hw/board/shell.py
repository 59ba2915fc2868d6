"""The board shell: the accelerator, its DRAM port on the board's SDR SDRAM, its CSRs and DRAM reachable
from the host over the UART link. Not tied to a platform: the ports are plain signals (UART lines, the
SDRAM controller's pin signature, status outputs), so the same component runs in Verilator
(``sim/shell_top.py``, with :class:`~hw.board.sdram_model.SdramModel` on the pins) and on the ULX3S
(``hw/board/designs.py``, design ``shell``: PLL, I/O buffers, LEDs).

::

        +--------------------------- Ulx3sShell (one domain: sync at clk_hz) ---------------------------+
        |                                                                                               |
   rx,tx| UartLink (UartRx -> BoardLink -> UartTx) --csr (AXI4-Lite)--> TrilliumTop(hw) --irq-----> irq |
        |    |axi_rd (ID 1)   |axi_wr (ID 1)                             |axi_rd (ID 4)  |axi_wr (ID 3) |
        |    |                |                                          |       AxiWriteSlice (AW W B) |
        |    |  m[1]  +-------|------------------------------------------+ m[0]          |              |
        |    +------->| AxiReadArbiter: AR round robin, R routed by ID   |               |              |
        |             +-------|--------------+---------------------------+               |              |
        |                     |  m[1]  +-----|---------------------------------------------+ m[0]       |
        |                     +------->| AxiWriteArbiter: AW round robin, W in grant order, B by ID |   |
        |                              +-----|------------------------+-----------------------------+   |
        |                                    |axi (ID 5)              |axi_wr (ID 4)                    |
        |        AxiReadSlice: AR, R regs'd  |                        | AxiWriteSlice: AW, W, B regs'd  |
        |                              +-----v------------------------v-----+                           |
        |                              | SdramController (bus_bits/16 SDRAM |--- pins ----------> sdram |
        |                              | words per AXI beat, BL1, refresh)  |                           |
        |                              +------------------------------------+                           |
        |                                                                                               |
        | leds: irq, running, link busy, SDRAM ready, framing error seen,                               |
        |       host DRAM access open, accelerator DRAM access open, heartbeat -----------------> leds  |
        |                                                                                               |
        +-----------------------------------------------------------------------------------------------+

* **Widths.** One data width everywhere: the accelerator's :func:`hw.top.bus_bits` (``hw.dram.bus_bits``;
  32 on ``ecp5``, 64 on ``tiny``). The link and the controller are built for it; it must be a multiple of
  the SDRAM's data width (16 on the ULX3S): the controller moves ``bus_bits / 16`` SDRAM words per AXI
  word. Addresses are 32-bit byte addresses everywhere (the ISA's, the link protocol's).
* **IDs.** The accelerator's read port carries 4 ID bits (its own read arbiter: 1 + 3 master bits), its
  write port 3, the link 1. Each shell arbiter is built for the widest master; a narrower master's
  ``arid``/``awid`` is zero-extended into it and ``rid``/``bid`` truncated back (the arbiters route by
  the bits they add on top, and the controller echoes IDs, so the upper bits of a narrow master's ID
  come back zero). The controller's ID widths are the arbiters' slave widths (5 read, 4 write).
* **Sharing.** The host's DRAM accesses and the accelerator's go to the same SDRAM through round-robin
  arbiters, so the host may read DRAM (or poll ``status``) while a run goes on. The host should not
  write memory the running program uses, as on any device.
* **Clock.** One domain, ``sync``, at ``clk_hz``: the accelerator, the link and the SDRAM controller
  (the controller's timing is converted at ``clk_hz``; the UART divisor too). The chip's clock pin, the
  I/O buffers and the clock source belong to the platform wrapper.

``leds`` (``Out(8)``): 0 ``irq`` (run done), 1 a run is going (``control.start`` to ``done``), 2 the link
is handling a request, 3 the SDRAM is initialised, 4 a UART framing error was seen (sticky), 5 the host
link's DRAM master has a transaction open, 6 the accelerator's DRAM masters have a transaction open, 7 a
heartbeat (about 1 Hz at ``clk_hz``).
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..bus.axi_read_arbiter import AxiReadArbiter
from ..bus.axi_write_arbiter import AxiWriteArbiter
from ..bus.axi_slice import AxiReadSlice, AxiWriteSlice
from ..config import HwConfig
from ..memory.axi import AxiReadSignature
from ..top import CSR_ADDR_BITS, TrilliumTop, bus_bits
from .link import ADDR_BITS, UartLink
from .sdram import SdramController, SdramGeometry, SdramPinsSignature, SdramTiming
from .uart import baud_divisor

__all__ = ["Ulx3sShell", "check_axi_pair", "connect_axi"]

_READ_FWD = ("araddr", "arlen", "arsize", "arburst", "arvalid", "rready")
_READ_BACK = ("arready", "rdata", "rresp", "rlast", "rvalid")
_WRITE_FWD = ("awaddr", "awlen", "awsize", "awburst", "awvalid", "wdata", "wstrb", "wlast", "wvalid", "bready")
_WRITE_BACK = ("awready", "wready", "bresp", "bvalid")


def check_axi_pair(ms, ss, *, owner="connect_axi", what="port"):
    """Check that an AXI4 master signature ``ms`` can drive a slave port of signature ``ss`` (both as the
    master sees them) through :func:`connect_axi`: same kind (read or write), address and data widths, and
    an ID no wider than the slave's. ``TypeError``/``ValueError`` naming ``owner`` and ``what`` otherwise."""
    if isinstance(ms, AxiReadSignature) != isinstance(ss, AxiReadSignature):
        raise TypeError(f"{owner}: {what}: cannot connect {ms!r} to {ss!r} (read and write ports)")
    if (ms.addr_bits, ms.data_bits) != (ss.addr_bits, ss.data_bits):
        raise ValueError(f"{owner}: {what}: {ms.addr_bits}-bit addresses and {ms.data_bits}-bit data on the "
                         f"master, {ss.addr_bits}-bit addresses and {ss.data_bits}-bit data on the slave")
    if ms.id_bits > ss.id_bits:
        raise ValueError(f"{owner}: {what}: the master's {ms.id_bits} ID bits do not fit the slave's "
                         f"{ss.id_bits}")


def connect_axi(m, master, slave, *, owner="connect_axi", what="port"):
    """Connect an AXI4 read or write master interface to a slave interface whose ID may be wider.

    Address and data widths must be equal (``ValueError`` naming both otherwise); the master's ID is
    zero-extended on ``arid``/``awid``, the slave's ``rid``/``bid`` truncated back. ``master`` and
    ``slave`` are both the master's view (``Out`` of an AXI signature: for a component's slave port, pass
    the member as it is seen from outside, e.g. the arbiter's ``m[i]``).
    """
    ms = master.signature
    check_axi_pair(ms, slave.signature, owner=owner, what=what)
    if isinstance(ms, AxiReadSignature):
        fwd, back, id_out, id_in = _READ_FWD, _READ_BACK, "arid", "rid"
    else:
        fwd, back, id_out, id_in = _WRITE_FWD, _WRITE_BACK, "awid", "bid"
    # The master is an Out-flipped view in the parent (driven by a submodule), the slave port's members
    # are driven from here: forward signals master -> slave, the rest slave -> master.
    m.d.comb += [getattr(slave, n).eq(getattr(master, n)) for n in fwd]
    m.d.comb += [getattr(master, n).eq(getattr(slave, n)) for n in back]
    m.d.comb += [getattr(slave, id_out).eq(getattr(master, id_out)),
                 getattr(master, id_in).eq(getattr(slave, id_in)[:ms.id_bits])]


class Ulx3sShell(wiring.Component):
    """The accelerator with its SDRAM and its UART host link (see the module docstring).

    Parameters
    ----------
    hw : HwConfig
        The accelerator's hardware config.
    clk_hz : int
        The ``sync`` clock: SDRAM timing and the UART divisor are computed for it.
    baud : int
        UART rate; ``clk_hz / baud`` must be a divisor of at least 4 within 2 %
        (:func:`hw.board.uart.baud_divisor`).
    sdram_timing : SdramTiming
        The chip's timing (simulations shorten ``t_powerup``).
    sdram_geometry : SdramGeometry
        The chip's organisation (default: the ULX3S's 32 MB, 16 bits wide).
    read_delay : int
        Register stages between the ``dq`` pins and ``sdram.dq.i`` that the platform adds (0..2).
    max_payload : int
        The link's largest DRAM request (its payload buffer), bytes.
    timeout_cycles : int or None
        The link's frame timeout (default: 1 ms at ``clk_hz``, at least 20 byte times).
    sdram_read_buffer, sdram_max_outstanding, sdram_quota : int
        :class:`~hw.board.sdram.SdramController`'s ``read_buffer``, ``max_outstanding`` and ``quota``.

    Attributes
    ----------
    rx : In(1)
    tx : Out(1)
        The UART lines (idle high).
    sdram : Out(SdramPinsSignature(sdram_geometry))
        The SDRAM chip's pins (the chip's clock comes from the platform wrapper).
    irq : Out(1)
        The accelerator's ``irq`` (``status.done``).
    leds : Out(8)
        Status lights (see the module docstring).
    running, link_busy, sdram_ready : Out(1)
        LEDs 1, 2 and 3 as named signals (the simulation server watches them).
    """

    def __init__(self, hw, *, clk_hz, baud, sdram_timing=SdramTiming(), sdram_geometry=SdramGeometry(),
                 read_delay=0, max_payload=1024, timeout_cycles=None, sdram_read_buffer=16,
                 sdram_max_outstanding=4, sdram_quota=32):
        owner = "Ulx3sShell"
        if not isinstance(hw, HwConfig):
            raise TypeError(f"{owner}: hw must be a HwConfig (use hw.config.load_hw_config), got {hw!r}")
        if not isinstance(sdram_geometry, SdramGeometry):
            raise TypeError(f"{owner}: sdram_geometry must be an SdramGeometry, got {sdram_geometry!r}")
        self.hw = hw
        self.clk_hz = int(clk_hz)
        self.baud = baud
        self.divisor = baud_divisor(clk_hz, baud)
        data_bits = bus_bits(hw)
        if data_bits % sdram_geometry.data_bits:
            raise ValueError(f"{owner}: the accelerator's DRAM bus (bus_bits(hw) = {data_bits} bits, hw "
                             f"'{hw.name}') is not a multiple of the SDRAM's {sdram_geometry.data_bits}-bit "
                             f"data bus")
        if data_bits > 1024:
            raise ValueError(f"{owner}: the accelerator's DRAM bus is {data_bits} bits; the link and the "
                             f"SDRAM controller take at most 1024")
        self.data_bits = data_bits
        if timeout_cycles is None:
            timeout_cycles = max(self.clk_hz // 1000, 20 * 10 * self.divisor)
        self.top = TrilliumTop(hw)
        rd, wr = self.top.read_signature, self.top.write_signature
        for sig, name in ((rd, "axi_rd"), (wr, "axi_wr")):
            if sig.addr_bits != ADDR_BITS or sig.data_bits != data_bits:
                raise ValueError(f"{owner}: TrilliumTop.{name} has {sig.addr_bits}-bit addresses and "
                                 f"{sig.data_bits}-bit data; the shell expects {ADDR_BITS} and {data_bits}")
        self.link = UartLink(self.divisor, data_bits=data_bits, max_payload=max_payload,
                             timeout_cycles=timeout_cycles, csr_addr_bits=CSR_ADDR_BITS, id_bits=1)
        if self.link.csr.signature != self.top.csr.signature.flip():
            raise ValueError(f"{owner}: the link's CSR master ({self.link.csr.signature!r}) does not match "
                             f"the accelerator's CSR slave ({self.top.csr.signature.flip()!r})")
        # Port 0: the accelerator; port 1: the host link.
        rd_id = max(rd.id_bits, self.link.link.read_signature.id_bits)
        wr_id = max(wr.id_bits, self.link.link.write_signature.id_bits)
        self.read_arbiter = AxiReadArbiter(2, ADDR_BITS, data_bits, id_bits=rd_id)
        self.write_arbiter = AxiWriteArbiter(2, ADDR_BITS, data_bits, id_bits=wr_id)
        # Every AXI connection of elaborate(), checked now (the master's view of each slave port).
        link_rd, link_wr = self.link.link.read_signature, self.link.link.write_signature
        for ms, ss, what in ((rd, self.read_arbiter.m[0].signature.flip(), "accelerator axi_rd -> read arbiter"),
                             (link_rd, self.read_arbiter.m[1].signature.flip(), "link axi_rd -> read arbiter"),
                             (wr, self.write_arbiter.m[0].signature.flip(), "accelerator axi_wr -> write arbiter"),
                             (link_wr, self.write_arbiter.m[1].signature.flip(), "link axi_wr -> write arbiter")):
            check_axi_pair(ms, ss, owner=owner, what=what)
        self.write_slice = AxiWriteSlice(ADDR_BITS, data_bits, self.write_arbiter.s.signature.id_bits)
        # A read slice too: the controller's R credits counted the arbiter's rready, which came from the
        # requesting unit's buffer room (an 18.9 ns placed path into the credit counter).
        self.read_slice = AxiReadSlice(ADDR_BITS, data_bits, self.read_arbiter.s.signature.id_bits)
        # And one on the accelerator's own write port: its writers' next beat and response bookkeeping then
        # start at registers, not at the shell arbiter's grant logic (a 25 ns placed path ran from the
        # controller's response queue through both arbiters into the logits writer's stall).
        self.acc_write_slice = AxiWriteSlice(ADDR_BITS, data_bits, wr.id_bits)
        # And on the link's: its W data comes straight out of its payload buffer's block RAM, which with
        # the arbiter's multiplexer behind it reached the controller-side slice (12.3 ns placed at a3e84bf).
        self.link_write_slice = AxiWriteSlice(ADDR_BITS, data_bits, link_wr.id_bits)
        self.sdram_ctrl = SdramController(
            addr_bits=ADDR_BITS, data_bits=data_bits, id_bits=self.read_arbiter.s.signature.id_bits,
            write_id_bits=self.write_arbiter.s.signature.id_bits, clock_hz=self.clk_hz, timing=sdram_timing,
            geometry=sdram_geometry, read_delay=read_delay, read_buffer=sdram_read_buffer,
            max_outstanding=sdram_max_outstanding, quota=sdram_quota)
        self.sdram_timing, self.sdram_geometry = sdram_timing, sdram_geometry
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "sdram": Out(SdramPinsSignature(sdram_geometry)),
            "irq": Out(1),
            "leds": Out(8),
            "running": Out(1),
            "link_busy": Out(1),
            "sdram_ready": Out(1),
        })

    @property
    def dram_bytes(self):
        """The SDRAM's size: what the host's driver may address."""
        return self.sdram_geometry.size_bytes

    def elaborate(self, platform):
        m = Module()
        top, link, ra, wa, ctrl = self.top, self.link, self.read_arbiter, self.write_arbiter, self.sdram_ctrl
        m.submodules.top = top
        m.submodules.link = link
        m.submodules.read_arbiter = ra
        m.submodules.write_arbiter = wa
        m.submodules.sdram_ctrl = ctrl

        m.d.comb += [link.rx.eq(self.rx), self.tx.eq(link.tx)]
        wiring.connect(m, link.csr, top.csr)
        connect_axi(m, top.axi_rd, ra.m[0], owner="Ulx3sShell", what="accelerator axi_rd -> read arbiter")
        connect_axi(m, link.axi_rd, ra.m[1], owner="Ulx3sShell", what="link axi_rd -> read arbiter")
        m.submodules.acc_write_slice = aws = self.acc_write_slice
        wiring.connect(m, top.axi_wr, aws.m)
        connect_axi(m, aws.s, wa.m[0], owner="Ulx3sShell", what="accelerator axi_wr -> write arbiter")
        m.submodules.link_write_slice = lws = self.link_write_slice
        wiring.connect(m, link.axi_wr, lws.m)
        connect_axi(m, lws.s, wa.m[1], owner="Ulx3sShell", what="link axi_wr -> write arbiter")
        m.submodules.read_slice = rs = self.read_slice
        wiring.connect(m, ra.s, rs.m)
        wiring.connect(m, rs.s, ctrl.axi)
        # A register slice between the write arbiter and the controller, whose wready depends on wvalid:
        # without it the controller's decision ran through both write arbiters into the units' stalls.
        m.submodules.write_slice = ws = self.write_slice
        wiring.connect(m, wa.s, ws.m)
        wiring.connect(m, ws.s, ctrl.axi_wr)
        wiring.connect(m, ctrl.pins, wiring.flipped(self.sdram))

        framing_seen = Signal()
        with m.If(link.framing_error):
            m.d.sync += framing_seen.eq(1)

        def open_txn(port, kind):
            """A sticky-until-answered view of an AXI port: an address accepted and its last beat not.

            The handshakes are registered before they reach the count (the LED follows a cycle late):
            the port's valid and ready come from across the die, and with the count's adder behind them
            they were 10.94 ns placed on the ECP5 shell at 01d9a6a."""
            count = Signal(8, name=f"{kind}_open")
            start, end = Signal(name=f"{kind}_start"), Signal(name=f"{kind}_end")
            if kind.endswith("rd"):
                m.d.sync += [start.eq(port.arvalid & port.arready), end.eq(port.rvalid & port.rready & port.rlast)]
            else:
                m.d.sync += [start.eq(port.awvalid & port.awready), end.eq(port.bvalid & port.bready)]
            m.d.sync += count.eq(count + start - end)
            return (count != 0) | start

        link_dram = open_txn(link.axi_rd, "link_rd") | open_txn(link.axi_wr, "link_wr")
        acc_dram = open_txn(top.axi_rd, "acc_rd") | open_txn(top.axi_wr, "acc_wr")

        heartbeat = Signal(range(max(2, self.clk_hz // 2)))
        beat = Signal()
        with m.If(heartbeat == 0):
            m.d.sync += [heartbeat.eq(max(1, self.clk_hz // 2) - 1), beat.eq(~beat)]
        with m.Else():
            m.d.sync += heartbeat.eq(heartbeat - 1)

        m.d.comb += [
            self.irq.eq(top.irq),
            self.running.eq(top.cp.running),
            self.link_busy.eq(link.busy),
            self.sdram_ready.eq(ctrl.ready),
        ]
        # The LEDs come from flip-flops of their own, which the placer can put by the pins: driven straight
        # from the units' registers, they pulled those toward the pins (the SDRAM controller's `running`,
        # which also enables its refresh counter, was an 11.1 ns route to it on the ECP5 shell at cdbee47).
        m.d.sync += self.leds.eq(Cat(top.irq, top.cp.running, link.busy, ctrl.ready, framing_seen, link_dram,
                                     acc_dram, beat))
        return m
