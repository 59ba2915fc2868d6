"""SDR SDRAM controller behind AXI4 read and write slaves (the ULX3S board's 32 MB SDRAM).

The accelerator's DRAM port is an AXI4 master pair (``axi_rd`` and ``axi_wr`` of ``hw/top.py``); in
simulation :class:`~hw.memory.dram_model.FastDramModel` answers it. :class:`SdramController` offers
the same two slave ports (``axi`` and ``axi_wr``, flipped :class:`~hw.memory.axi.AxiReadSignature` and
:class:`~hw.memory.axi_write.AxiWriteSignature`), so a board shell swaps the model for the controller
and the chip behind it.

Design, in short (the ``docs`` section "SDRAM controller" has the long form):

* **Burst length 1.** The mode register selects single-word bursts: every column command moves one
  SDRAM word, so an AXI word of ``ratio = axi_bits / sdram_bits`` words takes ``ratio`` READ or WRITE
  commands on consecutive cycles. An SDR SDRAM accepts a column command every cycle, so the data bus
  still runs at one word a cycle, and BL1 needs no BURST TERMINATE, no burst truncation by precharge,
  and lets a refresh or a row change cut in at any word. The price is that the command bus is busy
  with column commands during a stream, which costs nothing here: one command a cycle is all the
  scheduler issues anyway.
* **Open-row policy.** Each bank keeps its last row open; a row miss precharges the bank and
  activates the new row. Per-bank down-counters enforce tRCD (ACT to READ/WRITE), tRAS and tWR (to
  PRECHARGE), tRC and tRP (to the next ACT); global ones tRRD (ACT to ACT), tRFC, tMRD and the
  read-to-write bus turnaround.
* **Address map** (row, bank, column from the top): a linear stream walks a row's columns, then the
  same row of the next bank, so sequential traffic opens a new row only every ``2**col_bits`` words.
* **Refresh** has strict priority at the next command slot: every ``tREFI`` a refresh becomes
  pending, no new ACT or column command is issued, the open banks are precharged (PRECHARGE ALL, once
  tRAS and tWR allow) and a REFRESH follows after tRP. With BL1 no transfer has to finish first, so a
  refresh is issued at most ``tRAS + tRP`` cycles after it is due, whatever the traffic.
* **Arbitration** between the read and the write engine is by AXI word: the engine that owns the
  command slot keeps it while it has work, for at most ``quota`` words when the other engine waits;
  then the other one gets it. Neither starves, and a switch (which costs the read-to-write bus
  turnaround) happens at most every ``quota`` words under mixed load.
* **A pipelined command decision.** Everything the decision reads is a flip-flop: per engine, flags
  for the word it holds (beyond the SDRAM; row open and tRCD passed; another row open and PRECHARGE
  allowed; bank closed and ACTIVE allowed), computed one cycle ahead for each word it can hold next
  (the same, the next, the queue's head) against the bank state and timers, and picked by what the
  engine does this cycle; per timer a registered "elapsed" bit; and one ``slot`` bit (running, no refresh
  pending, no tRFC/tMRD wait). After a bank command the flags are a cycle old, so no traffic command
  goes in the next cycle: free when tRCD and tRP are at least 2 cycles (3 at 100 MHz). The decision is
  then a few gates from registers to the pins and the engines (120 MHz out of context on the 85F,
  against 98 MHz when it compared rows and counters itself). The burst queues' heads are registers
  too (:class:`_HeadQueue`).
* **Reads** reserve space in the R buffer before their first command (a credit counter), so a
  master that stalls R only stops new read commands; responses come back in order. Data is captured
  ``CL + read_delay`` cycles after the command leaves the controller's pin registers.
* **Writes** take W beats into a two-entry FIFO (its ready depends on registers only); the head
  beat leaves it when its last SDRAM word is issued; byte strobes become DQM. The B
  response is queued once a burst's last word is issued (posted write: any later READ command is
  behind it on the pins, so reads after B see the data).
* **Errors**: a word beyond the SDRAM size issues no command; it reads as zero with SLVERR, and a
  write burst with such a word gets SLVERR on B (the accelerator's masters turn that into
  ``BAD_ADDRESS``).

Not supported: FIXED and WRAP bursts (treated as INCR), narrow transfers (``arsize``/``awsize`` are
ignored: every beat is a full bus word, as the accelerator's masters issue), power-down and
self-refresh (``clk_en`` stays high), and reordering across IDs (everything completes in order).
"""

import dataclasses
import math

from amaranth.hdl import Array, Cat, Const, Elaboratable, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from ..dataflow.landing_fifo import ring_step
from ..memory.axi import AxiReadSignature, AxiResp
from ..memory.axi_write import AxiWriteSignature
from ..params import check_int
from ..replica import REPLICA_ATTR

__all__ = [
    "SdramCommand",
    "SdramTiming",
    "SdramCycles",
    "SdramGeometry",
    "SdramPinsSignature",
    "SdramController",
    "mode_register",
]


class SdramCommand(enum.Enum, shape=4):
    """An SDRAM command as ``Cat(we_n, cas_n, ras_n, cs_n)`` (bit 3 is ``cs_n``)."""
    LOAD_MODE = 0b0000
    REFRESH = 0b0001
    PRECHARGE = 0b0010
    ACTIVE = 0b0011
    WRITE = 0b0100
    READ = 0b0101
    BURST_TERMINATE = 0b0110
    NOP = 0b0111
    INHIBIT = 0b1111      # chip deselected: the other three lines do not matter


def _check_positive(name, value, owner):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive number, got {value!r}")
    return value


def check_clock_hz(clock_hz, owner):
    """Return ``clock_hz`` as an int if it is a frequency from 1 MHz to 200 MHz, else raise ``ValueError``."""
    if isinstance(clock_hz, bool) or not isinstance(clock_hz, (int, float)) or not 1e6 <= clock_hz <= 200e6:
        raise ValueError(f"{owner}: clock_hz must be a number in [1e6, 200e6], got {clock_hz!r}")
    if clock_hz != int(clock_hz):
        raise ValueError(f"{owner}: clock_hz must be a whole number of Hz, got {clock_hz!r}")
    return int(clock_hz)


@dataclasses.dataclass(frozen=True)
class SdramCycles:
    """SDRAM timing in clock cycles (see :meth:`SdramTiming.cycles`)."""
    cas_latency: int
    rp: int
    rcd: int
    rc: int
    ras: int
    rrd: int
    wr: int
    mrd: int
    rfc: int
    refi: int
    powerup: int


@dataclasses.dataclass(frozen=True)
class SdramTiming:
    """SDR SDRAM timing in nanoseconds, and the CAS latency in cycles.

    The defaults are the slower of the two ULX3S parts at speed grade -7 (IS42S16160G-7 and
    AS4C32M16SB-7), rounded up: check them against the fitted chip's datasheet.

    Parameters
    ----------
    cas_latency : int
        2 or 3 cycles. 3 is safe up to 133 MHz on a -7 part; 2 only to about 100 MHz.
    t_rp, t_rcd, t_rc, t_ras, t_rrd, t_wr, t_mrd, t_rfc : float
        PRECHARGE period, ACT to READ/WRITE, ACT to ACT (same bank), ACT to PRECHARGE, ACT to ACT (any
        bank), last write data to PRECHARGE, LOAD MODE to the next command, REFRESH period.
    t_refi : float
        Average refresh interval: 64 ms / 8192 rows = 7812.5 ns; the default keeps a little margin.
    t_powerup : float
        Wait after power-up (clock running, NOPs) before the init sequence: 200 us for the AS4C part
        (100 us for the ISSI one). Simulations shorten it.
    """
    cas_latency: int = 3
    t_rp: float = 21.0
    t_rcd: float = 21.0
    t_rc: float = 63.0
    t_ras: float = 42.0
    t_rrd: float = 14.0
    t_wr: float = 14.0
    t_mrd: float = 14.0
    t_rfc: float = 63.0
    t_refi: float = 7800.0
    t_powerup: float = 200_000.0

    def __post_init__(self):
        owner = "SdramTiming"
        if self.cas_latency not in (2, 3) or isinstance(self.cas_latency, bool):
            raise ValueError(f"{owner}: cas_latency must be 2 or 3, got {self.cas_latency!r}")
        for f in dataclasses.fields(self):
            if f.name != "cas_latency":
                _check_positive(f.name, getattr(self, f.name), owner)

    def cycles(self, clock_hz):
        """Convert to clock cycles at ``clock_hz``: minimum spacings round up (at least one cycle;
        tMRD and tWR at least two, as some datasheets give them in clocks), the refresh interval rounds
        down."""
        clock_hz = check_clock_hz(clock_hz, "SdramTiming.cycles")

        def up(ns, lo=1):
            # The small epsilon keeps an exact multiple (15 ns at 200 MHz) from rounding up once more.
            return max(lo, math.ceil(ns * clock_hz / 1e9 - 1e-6))

        refi = math.floor(self.t_refi * clock_hz / 1e9 + 1e-6)
        cyc = SdramCycles(cas_latency=self.cas_latency, rp=up(self.t_rp), rcd=up(self.t_rcd), rc=up(self.t_rc),
                          ras=up(self.t_ras), rrd=up(self.t_rrd), wr=up(self.t_wr, 2), mrd=up(self.t_mrd, 2),
                          rfc=up(self.t_rfc), refi=refi, powerup=up(self.t_powerup))
        # A refresh must fit into its interval with room for traffic.
        if cyc.refi < 4 * (cyc.rfc + cyc.rp + cyc.ras):
            raise ValueError(f"SdramTiming: t_refi = {self.t_refi} ns is too short for t_rfc + t_rp + t_ras "
                             f"at {clock_hz} Hz")
        return cyc


@dataclasses.dataclass(frozen=True)
class SdramGeometry:
    """The organisation of one SDRAM chip (default: 32 MB, 4 banks x 8192 rows x 512 columns x 16 bits).

    Parameters
    ----------
    banks : int
        2, 4 or 8.
    row_bits : int
        Row address bits (11..14).
    col_bits : int
        Column address bits (8..10; a column address never uses A10, the auto-precharge line).
    data_bits : int
        Data bus width: 8, 16 or 32.
    """
    banks: int = 4
    row_bits: int = 13
    col_bits: int = 9
    data_bits: int = 16

    def __post_init__(self):
        owner = "SdramGeometry"
        if self.banks not in (2, 4, 8) or isinstance(self.banks, bool):
            raise ValueError(f"{owner}: banks must be 2, 4 or 8, got {self.banks!r}")
        check_int("row_bits", self.row_bits, 11, 14, owner)
        check_int("col_bits", self.col_bits, 8, 10, owner)
        if self.data_bits not in (8, 16, 32) or isinstance(self.data_bits, bool):
            raise ValueError(f"{owner}: data_bits must be 8, 16 or 32, got {self.data_bits!r}")

    @property
    def bank_bits(self):
        return exact_log2(self.banks)

    @property
    def addr_bits(self):
        """Width of the ``a`` bus: the row address, and at least A10 (PRECHARGE ALL)."""
        return max(self.row_bits, 11)

    @property
    def word_bits(self):
        """Width of an SDRAM word address (row, bank, column)."""
        return self.row_bits + self.bank_bits + self.col_bits

    @property
    def data_bytes(self):
        return self.data_bits // 8

    @property
    def size_bytes(self):
        return self.data_bytes << self.word_bits


def mode_register(cas_latency):
    """The LOAD MODE value: burst length 1, sequential, ``cas_latency``, standard operation, and writes
    with the programmed burst length (A9 = 0)."""
    return cas_latency << 4


class SdramPinsSignature(wiring.Signature):
    """The SDRAM chip's pins, from the controller's side (the chip's clock comes from the shell).

    ``dq`` is an output/enable/input triple, as :class:`amaranth.lib.io.Buffer` has, so the shell can
    put it on an I/O buffer with registers; the controller's ``read_delay`` accounts for input
    registers on ``dq.i``.

    Members
    -------
    clk_en, cs_n, we_n, ras_n, cas_n : Out(1)
    ba : Out(bank_bits)
    a : Out(max(row_bits, 11))
    dqm : Out(data_bits // 8)
        Byte masks: high masks a byte (writes at once, reads two cycles later).
    dq : Out(Signature(o: Out(data_bits), oe: Out(1), i: In(data_bits)))
    """

    def __init__(self, geometry):
        if not isinstance(geometry, SdramGeometry):
            raise TypeError(f"SdramPinsSignature: geometry must be an SdramGeometry, got {geometry!r}")
        self.geometry = geometry
        super().__init__({
            "clk_en": Out(1),
            "cs_n": Out(1),
            "we_n": Out(1),
            "ras_n": Out(1),
            "cas_n": Out(1),
            "ba": Out(geometry.bank_bits),
            "a": Out(geometry.addr_bits),
            "dqm": Out(geometry.data_bytes),
            "dq": Out(wiring.Signature({
                "o": Out(geometry.data_bits),
                "oe": Out(1),
                "i": In(geometry.data_bits),
            })),
        })

    def __eq__(self, other):
        return type(other) is type(self) and other.geometry == self.geometry

    def __hash__(self):
        return hash((type(self), self.geometry))

    def __repr__(self):
        return f"SdramPinsSignature({self.geometry!r})"


class _Timer:
    """A down-counter that holds the cycles left until an action is allowed, and ``ok``, a register that
    is high when the count is 0 (the action may go this cycle).

    ``ok`` is computed one cycle ahead, from the count and this cycle's arming, so the command decision
    reads one flip-flop per rule instead of comparing counters. ``cycles`` is the longest wait it is
    armed with.
    """

    def __init__(self, name, cycles, init=0):
        self.cycles = cycles
        self.count = Signal(range(max(cycles, init + 1, 1)), name=name, init=init)
        self.ok = Signal(name=f"{name}_ok", init=init == 0)
        self.armed = Signal(name=f"{name}_armed")     # an event arms it this cycle

    @property
    def ok_next(self):
        """``ok`` of the next cycle."""
        return ~self.armed & (self.count <= 1)


def _tick(m, timer):
    m.d.sync += [timer.count.eq(Mux(timer.count != 0, timer.count - 1, 0)), timer.ok.eq(timer.ok_next)]


def _arm(m, timer, cycles, *, idle=False):
    """An event this cycle: the guarded action may follow ``cycles`` cycles later, at the earliest.

    Keeps a longer wait already running, unless none can be: ``cycles`` is the timer's longest wait, or
    ``idle`` says the caller only arms it at 0 (then a compare on the counter, a carry chain for the
    power-up wait, is left out of the command decision's path). Must come after :func:`_tick` for the
    same timer."""
    if cycles <= 1:
        return
    m.d.comb += timer.armed.eq(1)
    if idle or cycles >= timer.cycles:
        m.d.sync += timer.count.eq(cycles - 1)
        return
    left = Mux(timer.count != 0, timer.count - 1, 0)
    m.d.sync += timer.count.eq(Mux(left > cycles - 1, left, cycles - 1))


class _HeadQueue(Elaboratable):
    """A FIFO of ``depth`` entries (the :class:`~amaranth.lib.fifo.SyncFIFO` ports) whose head is a
    register, with SyncFIFO's latency: an entry is readable the cycle after it is written.

    The burst queues feed the engines' look-ahead (a row compare) from their heads. SyncFIFO's head is
    its memory's read port, which put the memory's read path in front of the compare;
    SyncFIFOBuffered's registered head costs one more cycle on every burst into an idle engine (0.6 % of
    a prefill run on the shell). Here a write that finds nothing queued goes straight to the head
    register; ``w_rdy`` depends on registers only.

    Behind the head, ``depth - 1`` entries in a memory of its own (distributed RAM) rather than a
    SyncFIFO: the memory is written on every accepted write, whether or not the entry stays there, so
    its write enable does not wait for the head's fate (whether the engine takes the head this cycle,
    the end of the command decision). Through SyncFIFO's ``w_en`` that decision reached the distributed
    RAM's write-enable pins (12.62 ns routed on the ECP5 shell at dfe4cdf, 46 late endpoints). A write
    that goes to the head lands in a free slot and is not counted."""

    def __init__(self, width, depth):
        self.width, self.depth = width, depth
        self.w_data, self.w_en, self.w_rdy = Signal(width), Signal(), Signal()
        self.r_data, self.r_en, self.r_rdy = Signal(width), Signal(), Signal()

    def elaborate(self, platform):
        m = Module()
        inner = self.depth - 1
        write = Signal()
        free = Signal()        # the head register is empty or read this cycle
        held = Signal()        # an entry waits behind the head (a register: count != 0)
        room = Signal()        # a slot behind the head is free (a register: count != inner)
        m.d.comb += [
            self.w_rdy.eq((~self.r_rdy & ~held) | room),
            write.eq(self.w_en & self.w_rdy),
            free.eq(~self.r_rdy | self.r_en),
        ]
        with m.If(free):
            with m.If(held):
                m.d.sync += self.r_rdy.eq(1)
            with m.Elif(write):
                m.d.sync += [self.r_data.eq(self.w_data), self.r_rdy.eq(1)]
            with m.Else():
                m.d.sync += self.r_rdy.eq(0)
        if inner == 0:
            return m
        count = Signal(range(inner + 1))
        push = Signal()        # the write stays behind the head
        pop = Signal()         # the oldest entry behind the head moves into it
        m.d.comb += [push.eq(write & ~(free & ~held)), pop.eq(free & held)]
        count_next = count + push - pop
        m.d.sync += [count.eq(count_next), held.eq(count_next != 0), room.eq(count_next != inner)]
        if inner == 1:
            slot = Signal(self.width)
            with m.If(write):
                m.d.sync += slot.eq(self.w_data)
            head_in = slot
        else:
            storage = Memory(shape=self.width, depth=inner, init=[])
            m.submodules.storage = storage
            wp, rp = storage.write_port(), storage.read_port(domain="comb")
            produce, consume = Signal(range(inner)), Signal(range(inner))
            m.d.comb += [wp.addr.eq(produce), wp.data.eq(self.w_data), wp.en.eq(write), rp.addr.eq(consume)]
            with m.If(push):
                m.d.sync += produce.eq(ring_step(produce, inner))
            with m.If(pop):
                m.d.sync += consume.eq(ring_step(consume, inner))
            head_in = rp.data
        with m.If(pop):
            m.d.sync += self.r_data.eq(head_in)
        return m


class SdramController(wiring.Component):
    """AXI4 read and write slaves in front of one SDR SDRAM chip.

    Parameters
    ----------
    addr_bits : int
        AXI byte-address width (12..64).
    data_bits : int
        AXI data width: a power of two, a multiple of the SDRAM width (``ratio`` SDRAM words each).
    id_bits : int
        Read ID width; ``rid`` echoes ``arid``.
    write_id_bits : int
        Write ID width (default ``id_bits``); ``bid`` echoes ``awid``.
    clock_hz : int
        Controller (and SDRAM) clock frequency, 1..200 MHz.
    timing : SdramTiming
    geometry : SdramGeometry
    read_delay : int
        Extra register stages between the ``dq`` pins and ``pins.dq.i`` (0..2): 1 for an input register
        in the I/O cell. The controller captures read data ``cas_latency + read_delay`` cycles after
        the READ command is on the pins.
    read_buffer : int
        R buffer depth in AXI words (4..256). It must cover the read loop (about ``cas_latency +
        read_delay + 5`` cycles of words) for full read bandwidth.
    max_outstanding : int
        Bursts accepted on AR (and on AW) ahead of the one in progress (1..64).
    quota : int
        AXI words the read or the write engine may move while the other waits (1..4096).

    Attributes
    ----------
    axi : In(AxiReadSignature(addr_bits, data_bits, id_bits))
    axi_wr : In(AxiWriteSignature(addr_bits, data_bits, write_id_bits))
    pins : Out(SdramPinsSignature(geometry))
    ready : Out(1)
        The init sequence is done (AXI transfers are held until then).
    refreshes : Out(32)
        REFRESH commands issued since reset (the init sequence's two included); wraps.
    """

    def __init__(self, *, addr_bits=32, data_bits=32, id_bits=1, write_id_bits=None, clock_hz=100_000_000,
                 timing=SdramTiming(), geometry=SdramGeometry(), read_delay=0, read_buffer=16, max_outstanding=4,
                 quota=32):
        owner = "SdramController"
        if not isinstance(timing, SdramTiming):
            raise TypeError(f"{owner}: timing must be an SdramTiming, got {timing!r}")
        if not isinstance(geometry, SdramGeometry):
            raise TypeError(f"{owner}: geometry must be an SdramGeometry, got {geometry!r}")
        self.read_signature = AxiReadSignature(addr_bits, data_bits, id_bits)
        self.write_signature = AxiWriteSignature(addr_bits, data_bits,
                                                 id_bits if write_id_bits is None else write_id_bits)
        if data_bits % geometry.data_bits:
            raise ValueError(f"{owner}: data_bits = {data_bits} is not a multiple of the SDRAM width "
                             f"{geometry.data_bits}")
        if addr_bits < exact_log2(geometry.size_bytes):
            raise ValueError(f"{owner}: addr_bits = {addr_bits} cannot address the {geometry.size_bytes}-byte SDRAM")
        self.addr_bits, self.data_bits = addr_bits, data_bits
        self.clock_hz = check_clock_hz(clock_hz, owner)
        self.timing, self.geometry = timing, geometry
        self.cycles = timing.cycles(self.clock_hz)
        self.read_delay = check_int("read_delay", read_delay, 0, 2, owner)
        self.read_buffer = check_int("read_buffer", read_buffer, 4, 256, owner)
        self.max_outstanding = check_int("max_outstanding", max_outstanding, 1, 64, owner)
        self.quota = check_int("quota", quota, 1, 4096, owner)
        super().__init__({
            "axi": In(self.read_signature),
            "axi_wr": In(self.write_signature),
            "pins": Out(SdramPinsSignature(geometry)),
            "ready": Out(1),
            "refreshes": Out(32),
        })

    @property
    def ratio(self):
        """SDRAM words per AXI word."""
        return self.data_bits // self.geometry.data_bits

    @property
    def size_bytes(self):
        return self.geometry.size_bytes

    def elaborate(self, platform):
        m = Module()
        g, cyc = self.geometry, self.cycles
        ratio, sd = self.ratio, g.data_bits
        beat_bits = exact_log2(ratio)
        size = exact_log2(self.data_bits // 8)
        word_bits = self.addr_bits - size                 # AXI word address
        dev_axi_bits = g.word_bits - beat_bits             # AXI word address bits inside the SDRAM
        nb = g.banks
        max_beat = ratio - 1

        # ---- Pin registers: everything leaves through a flop (an I/O-cell register on the board).
        cmd = Signal(SdramCommand, init=SdramCommand.INHIBIT)
        ba = Signal(g.bank_bits)
        a = Signal(g.addr_bits)
        dqm = Signal(g.data_bytes)
        dq_o = Signal(sd)
        dq_oe = Signal()
        bits = cmd.as_value()
        m.d.comb += [
            self.pins.clk_en.eq(1),
            self.pins.cs_n.eq(bits[3]), self.pins.ras_n.eq(bits[2]),
            self.pins.cas_n.eq(bits[1]), self.pins.we_n.eq(bits[0]),
            self.pins.ba.eq(ba), self.pins.a.eq(a), self.pins.dqm.eq(dqm),
            self.pins.dq.o.eq(dq_o), self.pins.dq.oe.eq(dq_oe),
        ]
        # The next cycle's pins: a NOP with the data bus released unless a command below says otherwise.
        m.d.sync += [cmd.eq(SdramCommand.NOP), dq_oe.eq(0)]

        # ---- Timers (cycles left until the action is allowed, and a registered "allowed now").
        busy = _Timer("busy", max(cyc.powerup, cyc.rfc, cyc.rp, cyc.mrd), init=cyc.powerup - 1)   # any command
        rrd = _Timer("rrd", cyc.rrd)                       # ACT after ACT, any bank
        rd2wr = _Timer("rd2wr", cyc.cas_latency + 1)        # WRITE after READ: the read data has left the bus
        act_ok = [_Timer(f"act_ok{i}", max(cyc.rc, cyc.rp)) for i in range(nb)]     # tRC, tRP
        col_ok = [_Timer(f"col_ok{i}", cyc.rcd) for i in range(nb)]                 # tRCD
        pre_ok = [_Timer(f"pre_ok{i}", max(cyc.ras, cyc.wr)) for i in range(nb)]    # tRAS, tWR
        for t in [busy, rrd, rd2wr, *act_ok, *col_ok, *pre_ok]:
            _tick(m, t)
        is_open = Signal(nb)
        # Each bank's open row, one copy per engine (replicas): one set of registers fed the row compares of
        # both engines' lookaheads, six per bank (a 2.6 ns route from open_row3: 10.62 ns routed at 9887928).
        open_rows = {e: Array(Signal(g.row_bits, name=f"open_row_{e}{i}", attrs={REPLICA_ATTR: 1})
                              for i in range(nb)) for e in "rw"}
        # Each engine keeps registered flags for the word it holds (see `lookahead`), computed one cycle
        # ahead against the bank state and the bank timers. A bank command (ACTIVE, PRECHARGE) changes
        # the bank state and arms bank timers, so for one cycle after it the flags are out of date and no
        # traffic command is decided (`slot` is low). That cycle is free whenever tRCD and tRP are 2 cycles
        # or more (the command the flags would allow has to wait anyway): 100 MHz has 3 and 3, 50 MHz 2
        # and 2. A WRITE arms tWR (at least 2 cycles), so no PRECHARGE follows in the next cycle (`wrote`).
        bank_cmd = Signal()
        wrote = Signal()

        def soon(timers, bank):
            """The bank's timer reaches 0 next cycle if nothing arms it this cycle."""
            return Cat(t.count <= 1 for t in timers).bit_select(bank, 1)

        def lookahead(name, addr, addr1, head_addr, load, advance):
            """Registered flags for the word an engine holds: ``err`` (beyond the SDRAM), ``col`` (its row
            is open and tRCD has passed: READ/WRITE may go), ``pre`` (its bank has another row open and
            may be precharged), ``act`` (its bank is closed and may be activated).

            Each word the engine may hold next cycle (``addr``, ``addr1`` = ``addr + 1``, the queue's head
            ``head_addr``) is looked up in parallel (every bank's open row is compared with the word's
            row, the word's bank picks the answer), and ``load``/``advance`` (the engine's own update
            conditions) pick one, so the command decision starts from these flip-flops instead of a row
            compare and counter compares."""
            open_row = open_rows[name]

            def status(word):
                dev = Cat(Const(0, beat_bits), word[:dev_axi_bits]) if beat_bits else word[:dev_axi_bits]
                bank = dev[g.col_bits:g.col_bits + g.bank_bits]
                row = dev[g.col_bits + g.bank_bits:]
                opened = is_open.bit_select(bank, 1)
                hit = Cat(is_open[i] & (open_row[i] == row) for i in range(nb)).bit_select(bank, 1)
                err = word[dev_axi_bits:word_bits] != 0 if word_bits > dev_axi_bits else Const(0, 1)
                return [err, ~err & hit & soon(col_ok, bank), ~err & ~hit & opened & soon(pre_ok, bank),
                        ~err & ~opened & soon(act_ok, bank)]
            regs = [Signal(name=f"{name}_{k}") for k in ("err", "col", "pre", "act")]
            with m.If(load):
                m.d.sync += [r.eq(v) for r, v in zip(regs, status(head_addr))]
            with m.Elif(advance):
                m.d.sync += [r.eq(v) for r, v in zip(regs, status(addr1))]
            with m.Else():
                m.d.sync += [r.eq(v) for r, v in zip(regs, status(addr))]
            return regs

        # ---- Refresh: due every tREFI once running; strict priority at the next command slot.
        refi = Signal(range(cyc.refi), init=cyc.refi - 1)
        ref_pending = Signal()
        running = Signal()
        ref_issued = Signal()              # the REFRESH that answers ref_pending goes out this cycle
        mode_issued = Signal()             # LOAD MODE goes out: running from the next cycle
        ref_pending_next, running_next = Signal(), Signal()
        # `refi == 0` as a flip-flop (set as the count reaches 0), and the refresh it calls for a cycle
        # later (`refi_due`): the compare fed the command slot's register, which sits by the SDRAM pins
        # while the counter was placed 90 columns away (12.7 ns placed on the ECP5 shell at a3e84bf), and
        # with one flip-flop the placer put it beside the counter (13.6 ns at 251a04a). Every refresh
        # comes a cycle later; the interval is unchanged.
        refi_zero, refi_due = Signal(), Signal()
        m.d.sync += refi_due.eq(running & refi_zero)
        m.d.comb += [
            ref_pending_next.eq((ref_pending & ~ref_issued) | refi_due),
            running_next.eq(running | mode_issued),
        ]
        m.d.sync += [ref_pending.eq(ref_pending_next), running.eq(running_next)]
        with m.If(running):
            m.d.sync += [refi.eq(Mux(refi_zero, cyc.refi - 1, refi - 1)), refi_zero.eq(~refi_zero & (refi == 1))]
        m.d.comb += self.ready.eq(running)

        # What the command slot does this cycle (one-hot strobes for the engines and the bank state).
        r_step = Signal()          # the read engine issued a READ, or skipped an error word
        w_step = Signal()          # the write engine issued a WRITE, or skipped an error word

        # ---- Read engine: AR queue, burst in progress, credits for the R buffer.
        id_bits = self.read_signature.id_bits
        ar_layout = data.StructLayout({"addr": unsigned(word_bits), "len": unsigned(8), "id": unsigned(id_bits)})
        m.submodules.ar_queue = arq = _HeadQueue(ar_layout.size, self.max_outstanding)
        ar_entry = Signal(ar_layout)
        m.d.comb += [
            ar_entry.addr.eq(self.axi.araddr[size:]), ar_entry.len.eq(self.axi.arlen), ar_entry.id.eq(self.axi.arid),
            arq.w_data.eq(ar_entry), arq.w_en.eq(self.axi.arvalid), self.axi.arready.eq(arq.w_rdy),
        ]
        ar_head = ar_layout(arq.r_data)
        # The burst in progress lives in registers (loaded from the queue's head, without a gap between
        # bursts), so the command decision starts from flip-flops rather than the queue's read port.
        r_valid, r_addr, r_left = Signal(), Signal(word_bits), Signal(8)
        r_addr1 = Signal(word_bits)        # r_addr + 1, kept as a register (no carry chain in the lookahead)
        r_id, r_beat = Signal(id_bits), Signal(beat_bits)
        r_final = Signal()                 # r_left == 0: the burst's last word
        credits = Signal(range(self.read_buffer + 1), init=self.read_buffer)
        has_credit = Signal(init=1)        # credits != 0, kept as a register
        r_req = Signal()
        r_dev = Signal(g.word_bits)        # SDRAM word address of the next READ
        r_last_beat = Signal()
        r_load = Signal()      # take the queue's head as the burst in progress (pops it when there is one)
        r_err, r_col, r_pre, r_act = lookahead("r", r_addr, r_addr1, ar_head.addr, r_load, r_step & r_last_beat)
        m.d.comb += [
            # A word's first READ takes a credit (its R buffer slot); the rest of the word has it.
            r_req.eq(r_valid & ((r_beat != 0) | has_credit)),
            r_dev.eq(Cat(r_beat, r_addr[:dev_axi_bits]) if beat_bits else r_addr[:dev_axi_bits]),
            r_last_beat.eq(r_err | (r_beat == max_beat)),
        ]

        # ---- Write engine: AW queue, burst in progress, B queue.
        wid_bits = self.write_signature.id_bits
        aw_layout = data.StructLayout({"addr": unsigned(word_bits), "len": unsigned(8), "id": unsigned(wid_bits)})
        m.submodules.aw_queue = awq = _HeadQueue(aw_layout.size, self.max_outstanding)
        aw_entry = Signal(aw_layout)
        wr = self.axi_wr
        m.d.comb += [
            aw_entry.addr.eq(wr.awaddr[size:]), aw_entry.len.eq(wr.awlen), aw_entry.id.eq(wr.awid),
            awq.w_data.eq(aw_entry), awq.w_en.eq(wr.awvalid), wr.awready.eq(awq.w_rdy),
        ]
        aw_head = aw_layout(awq.r_data)
        w_valid, w_addr, w_left = Signal(), Signal(word_bits), Signal(8)
        w_addr1 = Signal(word_bits)        # w_addr + 1
        w_id, w_beat, w_failed = Signal(wid_bits), Signal(beat_bits), Signal()
        w_final = Signal()                 # w_left == 0
        b_layout = data.StructLayout({"id": unsigned(wid_bits), "resp": unsigned(2)})
        # Two entries more than bursts outstanding, and its room kept as a register that is two writes
        # behind (`b_room`: three free entries last cycle, so at least one when a response decided now
        # lands): the queue's full flag was the head of the command decision's paths (13.5-14.3 ns placed
        # on the ECP5 shell at 7543e99). A response is written a cycle after the decision, from registers
        # (`b_wr`, `b_entry_r`): the decision ran on into the queue's level (10.50 ns placed at 3642338).
        b_depth = max(2, self.max_outstanding) + 2
        m.submodules.b_queue = bq = SyncFIFO(width=b_layout.size, depth=b_depth)
        b_room = Signal()
        m.d.sync += b_room.eq(bq.level < b_depth - 2)
        b_head = b_layout(bq.r_data)
        m.d.comb += [wr.bvalid.eq(bq.r_rdy), wr.bid.eq(b_head.id), wr.bresp.eq(b_head.resp),
                     bq.r_en.eq(wr.bready)]
        # W beats wait in a queue of their own (a ready from registers): wready was the end of the command
        # decision (a WRITE's last SDRAM word takes the beat), and it reached the shell's W slice across
        # the die (b_room to its skid register, 11.67 ns placed on the ECP5 shell at 1843871). A SyncFIFO,
        # whose head is read from its memory at a pointer: the decision moves the pointer and the count
        # only. (A _HeadQueue's head register took the decision into its 36 data inputs: 12.94 ns placed
        # at 956eb7e.) One cycle more from W to the pins; a beat a cycle still goes through.
        w_beat_layout = data.StructLayout({"data": unsigned(self.data_bits), "strb": unsigned(self.data_bits // 8)})
        m.submodules.w_queue = wq = SyncFIFO(width=w_beat_layout.size, depth=2)
        m.d.comb += [wq.w_data.eq(Cat(wr.wdata, wr.wstrb)), wq.w_en.eq(wr.wvalid), wr.wready.eq(wq.w_rdy)]
        w_head = w_beat_layout(wq.r_data)
        w_req = Signal()
        w_dev = Signal(g.word_bits)
        w_last_beat = Signal()
        w_load = Signal()
        w_err, w_col, w_pre, w_act = lookahead("w", w_addr, w_addr1, aw_head.addr, w_load, w_step & w_last_beat)
        m.d.comb += [
            w_req.eq(w_valid & wq.r_rdy & b_room),
            w_dev.eq(Cat(w_beat, w_addr[:dev_axi_bits]) if beat_bits else w_addr[:dev_axi_bits]),
            w_last_beat.eq(w_err | (w_beat == max_beat)),
        ]

        # ---- Arbitration by AXI word: the owner (a register: the command decision does not wait for
        # the arbiter) keeps the slot while it has work, up to `quota` words while the other engine waits.
        # Then it starts no new word, and the slot changes hands on the next cycle.
        owner = Signal()                   # 0: read engine, 1: write engine
        served = Signal(range(self.quota + 1))
        quota_hit = Signal()               # served == quota, kept as a register
        # The other engine's request, as seen by the hand-over, is a cycle old: the live one (a credit,
        # a queue's head, the W channel's valid) sat in front of the owner's step, its queue pop and the
        # head registers' enables (11.6 ns placed on the ECP5 shell at 6c79f98, 87 late endpoints). While
        # an engine does not own the slot its request can only rise (it issues nothing, its credits and
        # room only come back, AXI keeps a valid up until taken), so the owner yields at most a cycle late.
        r_waits, w_waits = Signal(), Signal()
        m.d.sync += [r_waits.eq(r_req), w_waits.eq(w_req)]
        switch = Signal()
        m.d.comb += switch.eq(Mux(owner, (w_beat == 0) & r_waits & (~w_req | quota_hit),
                                  (r_beat == 0) & w_waits & (~r_req | quota_hit)))
        # The engine that may use the slot this cycle: it owns it and is not handing it over.
        r_go, w_go = Signal(), Signal()
        m.d.comb += [r_go.eq(~owner & r_req & ~((r_beat == 0) & w_waits & quota_hit)),
                     w_go.eq(owner & w_req & ~((w_beat == 0) & r_waits & quota_hit))]
        s_dev = Signal(g.word_bits)
        m.d.comb += s_dev.eq(Mux(owner, w_dev, r_dev))
        s_col = s_dev[:g.col_bits]
        s_bank = s_dev[g.col_bits:g.col_bits + g.bank_bits]
        s_row = s_dev[g.col_bits + g.bank_bits:]

        # The command decision, from registers only: refresh first (below, in the FSM), then the slot
        # owner's next command. An error word (beyond the SDRAM) issues no command: the engine steps over
        # it and answers SLVERR. `slot` (a register, computed from the next cycle's values): running, no
        # refresh pending, no tRFC/tMRD wait, and the engines' flags are not stale.
        slot = Signal()
        m.d.sync += slot.eq(running_next & ~ref_pending_next & busy.ok_next & ~bank_cmd)
        do_pre, do_act = Signal(), Signal()
        m.d.comb += [
            r_step.eq(slot & r_go & (r_err | r_col)),
            w_step.eq(slot & w_go & (w_err | (w_col & rd2wr.ok))),
            do_pre.eq(slot & ((r_go & r_pre) | (w_go & w_pre)) & ~wrote),
            do_act.eq(slot & ((r_go & r_act) | (w_go & w_act)) & rrd.ok),
        ]
        m.d.sync += wrote.eq(w_step & ~w_err)

        word_done = Signal()
        m.d.comb += word_done.eq((r_step & r_last_beat) | (w_step & w_last_beat))
        with m.If(switch):
            m.d.sync += [owner.eq(~owner), served.eq(0), quota_hit.eq(0)]
        with m.Elif(word_done & ~quota_hit):
            m.d.sync += [served.eq(served + 1), quota_hit.eq(served == self.quota - 1)]

        all_closable = Signal()
        all_act_ok = Signal()
        m.d.comb += [
            all_closable.eq(Cat(~is_open[i] | pre_ok[i].ok for i in range(nb)).all()),
            all_act_ok.eq(Cat(t.ok for t in act_ok).all()),
        ]

        def precharge_all():
            m.d.sync += [cmd.eq(SdramCommand.PRECHARGE), a.eq(1 << 10), is_open.eq(0)]
            m.d.comb += bank_cmd.eq(1)
            for i in range(nb):
                _arm(m, act_ok[i], cyc.rp)

        def refresh():
            m.d.sync += [cmd.eq(SdramCommand.REFRESH), self.refreshes.eq(self.refreshes + 1)]
            _arm(m, busy, cyc.rfc, idle=True)       # only under busy.ok

        wdata_beat = w_head.data.word_select(w_beat, sd) if beat_bits else w_head.data
        wstrb_beat = w_head.strb.word_select(w_beat, sd // 8) if beat_bits else w_head.strb

        # BA and A load on every edge (no enable): the command decision (a credit or room flag, the owner's
        # lookahead, the timers) ended on their clock enables, 13 flip-flops (10.66 ns routed on the ECP5
        # shell at 9887928). A NOP ignores them, so between commands they carry the owner's next word: its
        # row if its bank is to be activated (`act` excludes `col` and `pre`), else its column (A10 low:
        # a READ or WRITE without auto-precharge, or a PRECHARGE of that bank alone; col_bits <= 10). The
        # init sequence's commands set their own below.
        m.d.sync += [ba.eq(s_bank), a.eq(Mux(Mux(owner, w_act, r_act), s_row, s_col))]
        # DQ and DQM load on every edge too, with the W queue's head while the write engine owns the slot:
        # as the WRITE's data and mask, the command decision reached their 18 enables and DQM's reset
        # (11.85 ns placed on the ECP5 shell at 9887928; 10.4-11.4 ns at 956eb7e). DQ counts only under
        # `dq_oe`. DQM masks read data two edges later, so it stays low until the last READ's data has
        # left the bus (`rd2wr`, which a WRITE waits for as well).
        m.d.sync += [dq_o.eq(wdata_beat), dqm.eq(Mux(owner & rd2wr.ok, ~wstrb_beat, 0))]

        with m.FSM(name="sdram"):
            # Power-up: NOPs for t_powerup (busy starts there), PRECHARGE ALL, two REFRESH, LOAD MODE.
            with m.State("POWERUP"):
                with m.If(busy.ok):
                    precharge_all()
                    m.next = "REFRESH0"
            with m.State("REFRESH0"):
                with m.If(all_act_ok & busy.ok):
                    refresh()
                    m.next = "REFRESH1"
            with m.State("REFRESH1"):
                with m.If(busy.ok):
                    refresh()
                    m.next = "MODE"
            with m.State("MODE"):
                with m.If(busy.ok):
                    m.d.sync += [cmd.eq(SdramCommand.LOAD_MODE), ba.eq(0), a.eq(mode_register(cyc.cas_latency))]
                    _arm(m, busy, cyc.mrd, idle=True)
                    m.d.comb += mode_issued.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(ref_pending):
                    # Close every bank as soon as tRAS/tWR allow, then refresh once tRP (tRC) has passed.
                    with m.If(is_open.any()):
                        with m.If(all_closable & busy.ok):
                            precharge_all()
                    with m.Elif(all_act_ok & busy.ok):
                        refresh()
                        m.d.comb += ref_issued.eq(1)

        # Traffic commands (`slot` keeps them out of the init sequence and a pending refresh).
        with m.If(r_step & ~r_err):
            m.d.sync += cmd.eq(SdramCommand.READ)
            _arm(m, rd2wr, cyc.cas_latency + 1)
        with m.If(w_step & ~w_err):
            m.d.sync += [cmd.eq(SdramCommand.WRITE), dq_oe.eq(1)]
            for i in range(nb):
                with m.If(s_bank == i):
                    _arm(m, pre_ok[i], cyc.wr)
        with m.If(do_pre):
            # Row miss: close the bank (a later slot activates the new row).
            m.d.sync += cmd.eq(SdramCommand.PRECHARGE)
            m.d.comb += bank_cmd.eq(1)
            for i in range(nb):
                with m.If(s_bank == i):
                    m.d.sync += is_open[i].eq(0)
                    _arm(m, act_ok[i], cyc.rp)
        with m.If(do_act):
            m.d.sync += cmd.eq(SdramCommand.ACTIVE)
            m.d.comb += bank_cmd.eq(1)
            _arm(m, rrd, cyc.rrd)
            for i in range(nb):
                with m.If(s_bank == i):
                    m.d.sync += [is_open[i].eq(1), *(rows[i].eq(s_row) for rows in open_rows.values())]
                    _arm(m, col_ok[i], cyc.rcd)
                    _arm(m, pre_ok[i], cyc.ras)
                    _arm(m, act_ok[i], cyc.rc)

        # ---- Read engine progress, and the capture pipeline: a tag per READ (or error word) that reaches
        # its end when the data is on pins.dq.i (cas_latency + read_delay after the command's pin cycle).
        tag_layout = data.StructLayout({"valid": 1, "err": 1, "last": 1, "beat": unsigned(max(1, beat_bits)),
                                        "id": unsigned(id_bits)})
        m.d.comb += [r_load.eq(~r_valid | (r_step & r_last_beat & r_final)), arq.r_en.eq(r_load)]
        with m.If(r_load):
            m.d.sync += [r_valid.eq(arq.r_rdy), r_addr.eq(ar_head.addr), r_addr1.eq(ar_head.addr + 1),
                         r_left.eq(ar_head.len), r_final.eq(ar_head.len == 0), r_id.eq(ar_head.id), r_beat.eq(0)]
        with m.Elif(r_step):
            with m.If(r_last_beat):
                m.d.sync += [r_beat.eq(0), r_addr.eq(r_addr1), r_addr1.eq(r_addr1 + 1), r_left.eq(r_left - 1),
                             r_final.eq(r_left == 1)]
            with m.Else():
                m.d.sync += r_beat.eq(r_beat + 1)
        tags = [Signal(tag_layout, name=f"tag{j}") for j in range(cyc.cas_latency + self.read_delay + 1)]
        m.d.sync += [
            tags[0].valid.eq(r_step),
            tags[0].err.eq(r_err),
            tags[0].last.eq(r_final),
            tags[0].beat.eq(Mux(r_err, max_beat, r_beat)),
            tags[0].id.eq(r_id),
        ]
        for j in range(1, len(tags)):
            m.d.sync += tags[j].eq(tags[j - 1])
        cap = tags[-1]

        r_layout = data.StructLayout({"data": unsigned(self.data_bits), "resp": unsigned(2), "last": 1,
                                      "id": unsigned(id_bits)})
        m.submodules.r_buffer = rbuf = SyncFIFOBuffered(width=r_layout.size, depth=self.read_buffer)
        # The earlier SDRAM words of the AXI word, lowest first (a shift register, filled from the top).
        assembled = Signal(max(1, self.data_bits - sd))
        r_word = Signal(r_layout)
        m.d.comb += [
            r_word.data.eq(Mux(cap.err, 0, Cat(assembled, self.pins.dq.i) if beat_bits else self.pins.dq.i)),
            r_word.resp.eq(Mux(cap.err, AxiResp.SLVERR, AxiResp.OKAY)),
            r_word.last.eq(cap.last),
            r_word.id.eq(cap.id),
            rbuf.w_data.eq(r_word),
            rbuf.w_en.eq(cap.valid & (cap.beat == max_beat)),     # a credit guarantees the room
        ]
        if beat_bits:
            with m.If(cap.valid & ~cap.err):
                m.d.sync += assembled.eq(Cat(assembled[sd:], self.pins.dq.i) if ratio > 2 else self.pins.dq.i)
        r_out = r_layout(rbuf.r_data)
        r_fire = Signal()
        m.d.comb += [
            self.axi.rvalid.eq(rbuf.r_rdy), self.axi.rdata.eq(r_out.data), self.axi.rresp.eq(r_out.resp),
            self.axi.rlast.eq(r_out.last), self.axi.rid.eq(r_out.id), rbuf.r_en.eq(self.axi.rready),
            r_fire.eq(self.axi.rvalid & self.axi.rready),
        ]
        taken = Signal()
        m.d.comb += taken.eq(r_step & (r_beat == 0))
        m.d.sync += credits.eq(credits + r_fire - taken)
        with m.If(r_fire & ~taken):
            m.d.sync += has_credit.eq(1)
        with m.Elif(taken & ~r_fire):
            m.d.sync += has_credit.eq(credits != 1)

        # ---- Write engine progress: a W beat is accepted with its last SDRAM word (or at once if it
        # falls beyond the SDRAM); the burst's last beat queues the B response.
        # The burst registers take the AW queue's head on `w_load`, and the queue pops it a cycle later
        # (`aw_pop`, a flip-flop; its head is stale in that cycle and not taken): popped on `w_load`, the
        # command decision chose the next value of the head's 42 registers (10.5-11.3 ns placed on the
        # ECP5 shell at 956eb7e). Only a burst whose single word falls beyond the SDRAM ends within a
        # cycle, and only after it does the next burst start a cycle later.
        aw_pop = Signal()
        aw_take = Signal()
        m.d.comb += [w_load.eq(~w_valid | (w_step & w_last_beat & w_final)), aw_take.eq(awq.r_rdy & ~aw_pop),
                     awq.r_en.eq(aw_pop)]
        m.d.sync += aw_pop.eq(w_load & aw_take)
        b_entry, b_entry_r, b_wr = Signal(b_layout), Signal(b_layout), Signal()
        m.d.comb += [
            b_entry.id.eq(w_id),
            b_entry.resp.eq(Mux(w_failed | w_err, AxiResp.SLVERR, AxiResp.OKAY)),
            bq.w_data.eq(b_entry_r), bq.w_en.eq(b_wr),
        ]
        m.d.sync += [b_entry_r.eq(b_entry), b_wr.eq(w_step & w_last_beat & w_final)]
        with m.If(w_step & w_last_beat):
            m.d.comb += wq.r_en.eq(1)
        with m.If(w_load):
            m.d.sync += [w_valid.eq(aw_take), w_addr.eq(aw_head.addr), w_addr1.eq(aw_head.addr + 1),
                         w_left.eq(aw_head.len), w_final.eq(aw_head.len == 0), w_id.eq(aw_head.id), w_beat.eq(0),
                         w_failed.eq(0)]
        with m.Elif(w_step):
            with m.If(w_last_beat):
                m.d.sync += [w_beat.eq(0), w_addr.eq(w_addr1), w_addr1.eq(w_addr1 + 1), w_left.eq(w_left - 1),
                             w_final.eq(w_left == 1), w_failed.eq(w_failed | w_err)]
            with m.Else():
                m.d.sync += w_beat.eq(w_beat + 1)
        return m
