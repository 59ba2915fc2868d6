"""A cycle-level SDR SDRAM device model that checks the controller's protocol.

:class:`SdramModel` sits on the pins of :class:`~hw.board.sdram.SdramController` (the flipped
:class:`~hw.board.sdram.SdramPinsSignature`) in the Amaranth simulator and in the shell's Verilator
simulation. It is gateware, written to be elaborated and simulated, not placed on a chip: the memory is
a ``lib.memory.Memory`` of SDRAM words, smaller than the real chip (``size_bytes``); the word address
(row, bank, column) is cut to its low bits, so the memory repeats through the chip's address space.

``backing="verilog"`` keeps the words in a plain Verilog array instead (:data:`SDRAM_ARRAY_VERILOG`,
module ``trillium_sdram_array``), for Verilator: Amaranth writes a ``Memory``'s initial contents into
the Verilog word by word (megabytes of text for a few MiB), while the array starts at zero for free. That
Verilog must be compiled with the design, and the Amaranth simulator cannot run it.

It executes what the pins say, on the rising edge that samples them:

* ACTIVE opens a row, PRECHARGE (A10: all banks) closes it, REFRESH and LOAD MODE change no data.
* WRITE stores ``dq.o`` into the open row's column, bytes whose ``dqm`` bit is high left alone.
* READ drives the word on ``dq.i`` for the edge ``cas_latency`` cycles after the command, bytes whose
  ``dqm`` was high two edges before that data edge read as zero (a real chip leaves them floating).
  ``dq.i`` is zero when the model does not drive it. Only burst length 1 is modelled.

And it checks, raising the sticky ``violation`` code (the first one seen) on:

* ``NOT_INITIALIZED``: a command other than NOP before ``t_powerup`` has passed; REFRESH or LOAD MODE
  before the first PRECHARGE ALL; ACTIVE, READ or WRITE before PRECHARGE ALL, two REFRESH and LOAD
  MODE.
* ``TRCD`` (ACTIVE to READ/WRITE), ``TRAS`` (ACTIVE to PRECHARGE), ``TRC`` (ACTIVE to ACTIVE, one
  bank), ``TRRD`` (ACTIVE to ACTIVE, any banks), ``TRP`` (PRECHARGE to ACTIVE, REFRESH or LOAD MODE),
  ``TWR`` (WRITE to PRECHARGE), ``TMRD`` (LOAD MODE to any command), ``TRFC`` (REFRESH to any
  command): a command earlier than the spacing, in cycles from :meth:`SdramTiming.cycles`.
* ``BANK_CLOSED``: READ or WRITE to a bank with no open row. ``BANK_OPEN``: ACTIVE to a bank with an
  open row, or REFRESH or LOAD MODE while a bank is open.
* ``REFRESH_MISSED``: from the end of init, one refresh is owed every ``tREFI`` cycles; more than
  ``max_postponed`` owed at once (extra refreshes earn no credit).
* ``BUS_CONFLICT``: the controller drives ``dq`` while the model does, or a WRITE without ``dq.oe``.
* ``BAD_COMMAND``: BURST TERMINATE, or a LOAD MODE with another burst length, CAS latency or mode
  than the model's (BL1, sequential, ``timing.cas_latency``, programmed-burst writes).
"""

from amaranth.hdl import Array, Cat, ClockSignal, Instance, Module, Mux, Signal
from amaranth.lib import enum, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from ..params import check_int
from .sdram import SdramCommand, SdramGeometry, SdramPinsSignature, SdramTiming, check_clock_hz, mode_register

__all__ = ["SDRAM_ARRAY_VERILOG", "SdramViolation", "SdramModel"]

#: The ``backing="verilog"`` word array: one synchronous read port, one write port with byte enables
#: (both on the rising edge; a read of the word being written returns the old word, as ``Memory`` does).
SDRAM_ARRAY_VERILOG = """
module trillium_sdram_array #(parameter WIDTH = 16, parameter DEPTH = 1024, parameter ABITS = 10) (
  input wire clk,
  input wire [ABITS-1:0] raddr,
  output reg [WIDTH-1:0] rdata,
  input wire [ABITS-1:0] waddr,
  input wire [WIDTH-1:0] wdata,
  input wire [WIDTH/8-1:0] wen
);
  reg [WIDTH-1:0] mem [0:DEPTH-1];
  integer i;
  always @(posedge clk) begin
    rdata <= mem[raddr];
    for (i = 0; i < WIDTH / 8; i = i + 1) begin
      if (wen[i]) mem[waddr][i*8 +: 8] <= wdata[i*8 +: 8];
    end
  end
endmodule
"""


class SdramViolation(enum.Enum, shape=4):
    """Why :class:`SdramModel` raised ``violation`` (``NONE``: it has not)."""
    NONE = 0
    NOT_INITIALIZED = 1
    TRCD = 2
    TRP = 3
    TRAS = 4
    TRC = 5
    TRRD = 6
    TWR = 7
    TMRD = 8
    TRFC = 9
    BANK_CLOSED = 10
    BANK_OPEN = 11
    REFRESH_MISSED = 12
    BUS_CONFLICT = 13
    BAD_COMMAND = 14


class SdramModel(wiring.Component):
    """SDR SDRAM chip model with a protocol checker.

    Parameters
    ----------
    size_bytes : int
        Bytes of memory modelled: a power of two from 4 KiB to the chip's size (1..8 MiB is typical).
    clock_hz : int
        The clock the timing is converted at (the controller's).
    timing : SdramTiming
        The limits checked (and the CAS latency of the read data).
    geometry : SdramGeometry
    max_postponed : int
        Refreshes that may be owed before ``REFRESH_MISSED`` (1..8; JEDEC allows up to 8 postponed).
    init : sequence of int
        Initial contents in SDRAM words (low addresses first).
    backing : str
        ``"memory"`` (an Amaranth ``Memory``) or ``"verilog"`` (:data:`SDRAM_ARRAY_VERILOG`, starts at
        zero: ``init`` must be empty).

    Attributes
    ----------
    pins : In(SdramPinsSignature(geometry))
    violation : Out(SdramViolation)
    initialized : Out(1)
        PRECHARGE ALL, two REFRESH and LOAD MODE have been seen.
    refreshes, activates : Out(32)
        REFRESH and ACTIVE commands seen (wrapping counters), for testbenches.
    """

    def __init__(self, *, size_bytes=1 << 20, clock_hz=100_000_000, timing=SdramTiming(), geometry=SdramGeometry(),
                 max_postponed=1, init=(), backing="memory"):
        owner = "SdramModel"
        if not isinstance(timing, SdramTiming):
            raise TypeError(f"{owner}: timing must be an SdramTiming, got {timing!r}")
        if not isinstance(geometry, SdramGeometry):
            raise TypeError(f"{owner}: geometry must be an SdramGeometry, got {geometry!r}")
        check_int("size_bytes", size_bytes, 4096, geometry.size_bytes, owner)
        if size_bytes & (size_bytes - 1):
            raise ValueError(f"{owner}: size_bytes must be a power of two, got {size_bytes}")
        self.size_bytes = size_bytes
        self.clock_hz = check_clock_hz(clock_hz, owner)
        self.timing, self.geometry = timing, geometry
        self.cycles = timing.cycles(self.clock_hz)
        self.max_postponed = check_int("max_postponed", max_postponed, 1, 8, owner)
        self.depth = size_bytes // geometry.data_bytes
        self.init = [int(v) for v in init]
        if len(self.init) > self.depth:
            raise ValueError(f"{owner}: init has {len(self.init)} words, more than {self.depth}")
        if backing not in ("memory", "verilog"):
            raise ValueError(f"{owner}: backing must be 'memory' or 'verilog', got {backing!r}")
        if backing == "verilog" and self.init:
            raise ValueError(f"{owner}: backing='verilog' starts at zero; init must be empty")
        self.backing = backing
        super().__init__({
            "pins": In(SdramPinsSignature(geometry)),
            "violation": Out(SdramViolation),
            "initialized": Out(1),
            "refreshes": Out(32),
            "activates": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        g, cyc, p = self.geometry, self.cycles, self.pins
        nb, sd = g.banks, g.data_bits
        C = SdramCommand

        # The command on this edge; a deselected chip or a low clock enable is a NOP.
        cmd = Signal(C)
        with m.If(p.clk_en & ~p.cs_n):
            m.d.comb += cmd.as_value().eq(Cat(p.we_n, p.cas_n, p.ras_n, p.cs_n))
        with m.Else():
            m.d.comb += cmd.eq(C.NOP)
        is_ = {c: Signal(name=f"is_{c.name.lower()}") for c in C}
        for c, s in is_.items():
            m.d.comb += s.eq(cmd == c)
        pre_all = p.a[10]

        # "Cycles since": a counter set to 1 by its event and counting up to a ceiling above every limit,
        # so on a later edge it holds the spacing from that event.
        ceiling = max(cyc.rp, cyc.rcd, cyc.rc, cyc.ras, cyc.rrd, cyc.wr, cyc.mrd, cyc.rfc) + 1

        def since(name):
            s = Signal(range(ceiling + 1), name=name, init=ceiling)
            m.d.sync += s.eq(Mux(s == ceiling, ceiling, s + 1))
            return s

        def mark(s):
            m.d.sync += s.eq(1)

        since_act = [since(f"since_act{i}") for i in range(nb)]
        since_pre = [since(f"since_pre{i}") for i in range(nb)]
        since_wr = [since(f"since_wr{i}") for i in range(nb)]
        since_act_any, since_ref, since_mrs = since("since_act_any"), since("since_ref"), since("since_mrs")
        is_open = Signal(nb)
        rows = Array(Signal(g.row_bits, name=f"row{i}") for i in range(nb))

        powerup = Signal(range(cyc.powerup + 1))
        with m.If(powerup != cyc.powerup):
            m.d.sync += powerup.eq(powerup + 1)
        seen_pre, seen_mode = Signal(), Signal()
        init_refs = Signal(range(3))
        m.d.comb += self.initialized.eq(seen_pre & seen_mode & (init_refs == 2))

        bank = p.ba
        bank_open = is_open.bit_select(bank, 1)
        since_act_b = Array(since_act)[bank]
        any_open = is_open.any()
        pre_ok_all = Cat(since_pre[i] >= cyc.rp for i in range(nb)).all()
        closing = Signal(nb)     # banks a PRECHARGE on this edge closes (open ones only are checked)
        m.d.comb += closing.eq(Mux(pre_all, is_open, is_open & (1 << bank)))
        tras_ok = Cat(~closing[i] | (since_act[i] >= cyc.ras) for i in range(nb)).all()
        twr_ok = Cat(~closing[i] | (since_wr[i] >= cyc.wr) for i in range(nb)).all()

        # ---- Refresh debt, from the end of init.
        refi = Signal(range(cyc.refi), init=cyc.refi - 1)
        owed = Signal(range(self.max_postponed + 2))
        tick = Signal()
        with m.If(self.initialized):
            m.d.sync += refi.eq(Mux(refi == 0, cyc.refi - 1, refi - 1))
            m.d.comb += tick.eq(refi == 0)
        with m.If(owed <= self.max_postponed):
            m.d.sync += owed.eq(owed + tick - (is_.get(C.REFRESH) & (owed != 0)))

        # ---- Read pipeline: the memory's synchronous read port is the first stage; the data register
        # that drives dq.i is loaded on the edge before the data edge (command edge + cas_latency - 1).
        abits = exact_log2(self.depth)
        word = Cat(p.a[:g.col_bits], bank, rows[bank])[:abits]
        rd_data = Signal(sd)
        wr_en = Signal(g.data_bytes)
        access_ok = Signal()
        m.d.comb += access_ok.eq(self.initialized & bank_open)
        with m.If(is_[C.WRITE] & access_ok):
            m.d.comb += wr_en.eq(~p.dqm)
        if self.backing == "memory":
            m.submodules.mem = mem = Memory(shape=sd, depth=self.depth, init=self.init)
            rd = mem.read_port()
            wp = mem.write_port(granularity=8) if sd > 8 else mem.write_port()
            m.d.comb += [rd.addr.eq(word), rd_data.eq(rd.data), wp.addr.eq(word), wp.data.eq(p.dq.o),
                         wp.en.eq(wr_en)]
        else:
            m.submodules.array = Instance(
                "trillium_sdram_array", p_WIDTH=sd, p_DEPTH=self.depth, p_ABITS=abits,
                i_clk=ClockSignal("sync"), i_raddr=word, o_rdata=rd_data, i_waddr=word, i_wdata=p.dq.o,
                i_wen=wr_en)

        valid = [Signal(name=f"rd_valid{j}") for j in range(cyc.cas_latency - 1)]
        m.d.sync += valid[0].eq(is_[C.READ] & access_ok)
        stage = rd_data
        for j in range(1, len(valid)):
            m.d.sync += valid[j].eq(valid[j - 1])
            nxt = Signal(sd, name=f"rd_data{j}")
            m.d.sync += nxt.eq(stage)
            stage = nxt
        dqm_d1 = Signal(g.data_bytes)       # DQM sampled one edge ago: it masks the word loaded now
        m.d.sync += dqm_d1.eq(p.dqm)
        keep = Cat(~dqm_d1[i].replicate(8) for i in range(g.data_bytes))
        driving = Signal()
        dq_out = Signal(sd)
        m.d.sync += [driving.eq(valid[-1]), dq_out.eq(Mux(valid[-1], stage & keep, 0))]
        m.d.comb += p.dq.i.eq(dq_out)

        # ---- Commands: state changes.
        with m.If(is_[C.ACTIVE] & self.initialized):
            for i in range(nb):
                with m.If(bank == i):
                    m.d.sync += [is_open[i].eq(1), rows[i].eq(p.a[:g.row_bits])]
                    mark(since_act[i])
            mark(since_act_any)
            m.d.sync += self.activates.eq(self.activates + 1)
        with m.If(is_[C.PRECHARGE]):
            for i in range(nb):
                with m.If(pre_all | (bank == i)):
                    m.d.sync += is_open[i].eq(0)
                    mark(since_pre[i])
            with m.If(pre_all & (powerup == cyc.powerup)):
                m.d.sync += seen_pre.eq(1)
        with m.If(is_[C.WRITE]):
            for i in range(nb):
                with m.If(bank == i):
                    mark(since_wr[i])
        with m.If(is_[C.REFRESH]):
            mark(since_ref)
            m.d.sync += self.refreshes.eq(self.refreshes + 1)
            with m.If(seen_pre & (init_refs != 2)):
                m.d.sync += init_refs.eq(init_refs + 1)
        with m.If(is_[C.LOAD_MODE]):
            mark(since_mrs)
            with m.If(seen_pre):
                m.d.sync += seen_mode.eq(1)

        # ---- Checks: the first rule broken on this edge (in this order) is the code.
        code = Signal(SdramViolation)
        nop = is_[C.NOP]
        mode_ok = (p.a == mode_register(cyc.cas_latency)) & (bank == 0)
        with m.If(~nop & (powerup != cyc.powerup)):
            m.d.comb += code.eq(SdramViolation.NOT_INITIALIZED)
        with m.Elif((is_[C.REFRESH] | is_[C.LOAD_MODE]) & ~seen_pre):
            m.d.comb += code.eq(SdramViolation.NOT_INITIALIZED)
        with m.Elif((is_[C.ACTIVE] | is_[C.READ] | is_[C.WRITE]) & ~self.initialized):
            m.d.comb += code.eq(SdramViolation.NOT_INITIALIZED)
        with m.Elif(~nop & (since_mrs < cyc.mrd)):
            m.d.comb += code.eq(SdramViolation.TMRD)
        with m.Elif(~nop & (since_ref < cyc.rfc)):
            m.d.comb += code.eq(SdramViolation.TRFC)
        with m.Elif(is_[C.BURST_TERMINATE] | (is_[C.LOAD_MODE] & ~mode_ok)):
            m.d.comb += code.eq(SdramViolation.BAD_COMMAND)
        with m.Elif(is_[C.ACTIVE]):
            with m.If(bank_open):
                m.d.comb += code.eq(SdramViolation.BANK_OPEN)
            with m.Elif(Array(since_pre)[bank] < cyc.rp):
                m.d.comb += code.eq(SdramViolation.TRP)
            with m.Elif(since_act_b < cyc.rc):
                m.d.comb += code.eq(SdramViolation.TRC)
            with m.Elif(since_act_any < cyc.rrd):
                m.d.comb += code.eq(SdramViolation.TRRD)
        with m.Elif(is_[C.READ] | is_[C.WRITE]):
            with m.If(~bank_open):
                m.d.comb += code.eq(SdramViolation.BANK_CLOSED)
            with m.Elif(since_act_b < cyc.rcd):
                m.d.comb += code.eq(SdramViolation.TRCD)
            with m.Elif(is_[C.WRITE] & ~p.dq.oe):
                m.d.comb += code.eq(SdramViolation.BUS_CONFLICT)
        with m.Elif(is_[C.PRECHARGE]):
            with m.If(~tras_ok):
                m.d.comb += code.eq(SdramViolation.TRAS)
            with m.Elif(~twr_ok):
                m.d.comb += code.eq(SdramViolation.TWR)
        with m.Elif(is_[C.REFRESH] | is_[C.LOAD_MODE]):
            with m.If(any_open):
                m.d.comb += code.eq(SdramViolation.BANK_OPEN)
            with m.Elif(~pre_ok_all):
                m.d.comb += code.eq(SdramViolation.TRP)
        # (`code` covers the command; the bus and the refresh debt are checked on every edge.)
        first = Signal(SdramViolation)
        with m.If(code != SdramViolation.NONE):
            m.d.comb += first.eq(code)
        with m.Elif(p.dq.oe & driving):
            m.d.comb += first.eq(SdramViolation.BUS_CONFLICT)
        with m.Elif(owed > self.max_postponed):
            m.d.comb += first.eq(SdramViolation.REFRESH_MISSED)
        with m.If(self.violation == SdramViolation.NONE):
            m.d.sync += self.violation.eq(first)
        return m
