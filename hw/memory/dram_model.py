"""A fast AXI4 DRAM model for simulation: fixed latency, a bandwidth limit, optional random jitter.

cocotbext-axi's ``AxiRamRead`` is the reference slave for protocol tests, but it runs Python for every
beat. This model is gateware, so it is compiled into the Verilated design with everything else and a
full-model co-simulation runs at Verilator speed. It is not meant for synthesis (the memory has an
asynchronous read port, and a counter compares deadlines).

Timing, for a burst accepted on cycle ``t`` (AR handshake):

* its first beat is valid on cycle ``t + latency`` at the earliest (later when earlier bursts still
  occupy the data channel, when the bandwidth budget is spent, or when ``rready`` is low);
* beats follow back to back, across bursts too, at ``bytes_per_cycle`` on average: a token bucket
  earns ``bytes_per_cycle`` every cycle (in 1/256 byte units) and a beat costs the bus width. The
  bucket holds less than one beat plus one cycle's earnings, so idle time banks almost nothing;
* with ``jitter = j > 0`` each burst gets ``0 .. 2**j - 1`` extra cycles of latency and each beat slot
  is skipped with probability 1/4, both from an LFSR (deterministic for a given ``seed``).

The model also checks the master: ``violation`` goes high (sticky) on a burst that is not INCR, not
full width, misaligned, or crosses a 4 KiB boundary.

With ``writable`` the model is also an AXI4 **write** slave (``axi_wr``), for a burst accepted on AW:

* its W beats are accepted once its address is in (the model never takes W before AW), in order, at
  most one a cycle, at ``write_bytes_per_cycle`` on average (a second token bucket, the same rule as
  reads; default ``bytes_per_cycle``). Reads and writes do not share bandwidth: the model is a memory
  with independent read and write paths, which keeps it free of read/write deadlocks;
* each beat writes the bytes whose ``wstrb`` bit is set, in the cycle it is accepted (a read issued
  after that sees the new data);
* the B response, with the burst's ID, is valid ``write_latency`` cycles after the burst's last beat
  at the earliest (default ``latency``), in burst order; it is DECERR when any beat of the burst fell
  beyond the memory (those beats write nothing), else OKAY;
* ``violation`` also goes high on a write burst that breaks the read rules above, or whose ``wlast``
  does not mark exactly the burst's last beat.

Backdoors for testbenches and co-simulation, without going through AXI: ``loadable`` adds a ``load``
stream that writes whole words (it has priority over W: a W beat waits while ``load.valid`` is high);
``peekable`` adds ``peek``, an asynchronous read of the word at ``peek.addr`` on ``peek.data``.

``backing="verilog"`` keeps the words in a plain Verilog array (:data:`DRAM_ARRAY_VERILOG`, module
``trillium_dram_array``) instead of an Amaranth ``Memory``: Amaranth writes a ``Memory``'s initial
contents word by word into the Verilog, which for a DRAM of megabytes takes minutes to export and
compile, while the array starts at zero for free. The Verilog of that module must be compiled with the
design (``sim/cosim_top.py`` does it); the Amaranth simulator cannot run this backing, and ``init``
must be empty.
"""

from amaranth.hdl import ClockSignal, Const, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from ..params import check_int
from .axi import BOUNDARY_BYTES, AxiBurst, AxiReadSignature, AxiResp
from .axi_write import AxiWriteSignature

__all__ = ["DRAM_ARRAY_VERILOG", "TOKEN_FRACTION_BITS", "FastDramModel", "load_layout", "peek_signature"]

#: The token bucket counts bytes in units of 2**-8.
TOKEN_FRACTION_BITS = 8
_NOW_BITS = 32


def _word_addr_bits(depth):
    return max(1, (depth - 1).bit_length())


def load_layout(depth, data_bits):
    """One word written into the model's memory through the ``load`` port (word address)."""
    return data.StructLayout({"addr": unsigned(_word_addr_bits(depth)), "data": unsigned(data_bits)})


def peek_signature(depth, data_bits):
    """The backdoor read port, from the reader's side: ``data`` is the word at ``addr`` (word address),
    combinationally."""
    return wiring.Signature({"addr": Out(_word_addr_bits(depth)), "data": In(data_bits)})


#: The ``backing="verilog"`` word array: an asynchronous read port for AXI reads, one for ``peek`` and
#: one write port with byte enables. Words start at zero (Verilator's default initialisation).
DRAM_ARRAY_VERILOG = """
module trillium_dram_array #(parameter WIDTH = 64, parameter DEPTH = 1024, parameter ABITS = 10) (
  input wire clk,
  input wire [ABITS-1:0] raddr,
  output wire [WIDTH-1:0] rdata,
  input wire [ABITS-1:0] paddr,
  output wire [WIDTH-1:0] pdata,
  input wire [ABITS-1:0] waddr,
  input wire [WIDTH-1:0] wdata,
  input wire [WIDTH/8-1:0] wen
);
  reg [WIDTH-1:0] mem [0:DEPTH-1];
  assign rdata = mem[raddr];
  assign pdata = mem[paddr];
  integer i;
  always @(posedge clk) begin
    for (i = 0; i < WIDTH / 8; i = i + 1) begin
      if (wen[i]) mem[waddr][i*8 +: 8] <= wdata[i*8 +: 8];
    end
  end
endmodule
"""


class FastDramModel(wiring.Component):
    """AXI4 read (and optionally write) slave backed by a ``lib.memory.Memory``, with a set latency and
    bandwidth.

    Parameters
    ----------
    addr_bits, data_bits, id_bits : int
        As for :class:`AxiReadSignature`.
    depth : int
        Memory size in bus words. Word ``i`` is at byte address ``i * data_bits // 8``; reads beyond
        the end return zeros with a DECERR response.
    init : sequence of int
        Initial contents (bus words, little-endian bytes), zero-padded to ``depth``.
    latency : int
        Cycles from the AR handshake to the first beat (at least 2).
    bytes_per_cycle : float
        Average data-channel bandwidth (0 < b <= data_bits / 8). Default: the full bus width.
    max_outstanding : int
        Bursts the model accepts before it stops raising ``arready``.
    jitter : int
        0 for exact timing, else the random extra latency exponent (see the module docstring).
    loadable : bool
        Add a ``load`` stream port that writes words into the memory (testbenches use it to change the
        contents without rebuilding the model).
    seed : int
        Non-zero LFSR seed for the jitter.
    writable : bool
        Add the AXI4 write slave ``axi_wr`` (see the module docstring).
    write_id_bits : int
        ID width of ``axi_wr`` (default ``id_bits``).
    write_latency : int
        Cycles from a write burst's last W beat to its B response (at least 1; default ``latency``).
    write_bytes_per_cycle : float
        Average W-channel bandwidth (default ``bytes_per_cycle``).
    peekable : bool
        Add the backdoor read port ``peek``.
    backing : str
        ``"memory"`` (an Amaranth ``Memory``) or ``"verilog"`` (:data:`DRAM_ARRAY_VERILOG`; see the
        module docstring).

    Attributes
    ----------
    axi : In(AxiReadSignature(addr_bits, data_bits, id_bits))
    axi_wr : In(AxiWriteSignature(addr_bits, data_bits, write_id_bits))
        Only with ``writable``.
    load : In(stream.Signature(load_layout(depth, data_bits)))
        Only with ``loadable``; always ready.
    peek : In(peek_signature(depth, data_bits))
        Only with ``peekable``.
    violation : Out(1)
    """

    def __init__(self, addr_bits, data_bits, *, depth, init=(), latency=20, bytes_per_cycle=None,
                 max_outstanding=8, id_bits=1, jitter=0, loadable=False, seed=0xACE1, writable=False,
                 write_id_bits=None, write_latency=None, write_bytes_per_cycle=None, peekable=False,
                 backing="memory"):
        owner = "FastDramModel"
        self.axi_signature = AxiReadSignature(addr_bits, data_bits, id_bits)
        self.addr_bits, self.data_bits = addr_bits, data_bits
        self.depth = check_int("depth", depth, 1, 1 << 26, owner)
        self.init = [int(v) for v in init]
        if len(self.init) > depth:
            raise ValueError(f"{owner}: init has {len(self.init)} words, more than depth = {depth}")
        self.latency = check_int("latency", latency, 2, 1 << 16, owner)
        bpc = float(self.data_bytes if bytes_per_cycle is None else bytes_per_cycle)
        if not 0 < bpc <= self.data_bytes:
            raise ValueError(f"{owner}: bytes_per_cycle must be in (0, {self.data_bytes}], got {bytes_per_cycle!r}")
        self.rate = max(1, round(bpc * (1 << TOKEN_FRACTION_BITS)))
        self.max_outstanding = check_int("max_outstanding", max_outstanding, 1, 256, owner)
        self.jitter = check_int("jitter", jitter, 0, 8, owner)
        self.seed = check_int("seed", seed, 1, (1 << 32) - 1, owner)
        self.loadable = bool(loadable)
        self.writable = bool(writable)
        self.peekable = bool(peekable)
        if backing not in ("memory", "verilog"):
            raise ValueError(f"{owner}: backing must be 'memory' or 'verilog', got {backing!r}")
        if backing == "verilog" and self.init:
            raise ValueError(f"{owner}: backing='verilog' starts at zero; load the contents instead of init")
        self.backing = backing
        self.write_latency = check_int("write_latency", self.latency if write_latency is None else write_latency,
                                       1, 1 << 16, owner)
        wbpc = float(bpc if write_bytes_per_cycle is None else write_bytes_per_cycle)
        if not 0 < wbpc <= self.data_bytes:
            raise ValueError(f"{owner}: write_bytes_per_cycle must be in (0, {self.data_bytes}], "
                             f"got {write_bytes_per_cycle!r}")
        self.write_rate = max(1, round(wbpc * (1 << TOKEN_FRACTION_BITS)))
        members = {"axi": In(self.axi_signature), "violation": Out(1)}
        if self.writable:
            self.axi_wr_signature = AxiWriteSignature(addr_bits, data_bits,
                                                      id_bits if write_id_bits is None else write_id_bits)
            members["axi_wr"] = In(self.axi_wr_signature)
        if self.loadable:
            members["load"] = In(stream.Signature(load_layout(depth, data_bits)))
        if self.peekable:
            members["peek"] = In(peek_signature(depth, data_bits))
        super().__init__(members)

    @property
    def data_bytes(self):
        return self.data_bits // 8

    @property
    def bytes_per_cycle(self):
        """The bandwidth actually modelled (the requested one rounded to 1/256 byte)."""
        return self.rate / (1 << TOKEN_FRACTION_BITS)

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        size = exact_log2(self.data_bytes)
        word_bits = self.addr_bits - size

        # The word array: AXI read port (rd_addr -> rd_data), peek port, one write port with byte enables.
        abits = _word_addr_bits(self.depth)
        rd_addr, rd_data = Signal(abits), Signal(self.data_bits)
        wr_addr, wr_data, wr_en = Signal(abits), Signal(self.data_bits), Signal(self.data_bytes)
        pk_addr, pk_data = Signal(abits), Signal(self.data_bits)
        if self.backing == "memory":
            m.submodules.mem = mem = Memory(shape=self.data_bits, depth=self.depth, init=self.init)
            rd = mem.read_port(domain="comb")
            m.d.comb += [rd.addr.eq(rd_addr), rd_data.eq(rd.data)]
            if self.loadable or self.writable:
                wr = mem.write_port(granularity=8)
                m.d.comb += [wr.addr.eq(wr_addr), wr.data.eq(wr_data), wr.en.eq(wr_en)]
            if self.peekable:
                pk = mem.read_port(domain="comb")
                m.d.comb += [pk.addr.eq(pk_addr), pk_data.eq(pk.data)]
        else:
            m.submodules.array = Instance(
                "trillium_dram_array", p_WIDTH=self.data_bits, p_DEPTH=self.depth, p_ABITS=abits,
                i_clk=ClockSignal("sync"), i_raddr=rd_addr, o_rdata=rd_data, i_paddr=pk_addr, o_pdata=pk_data,
                i_waddr=wr_addr, i_wdata=wr_data, i_wen=wr_en)
        if self.peekable:
            m.d.comb += [pk_addr.eq(self.peek.addr), self.peek.data.eq(pk_data)]
        load_valid = Const(0)
        if self.loadable:
            load_valid = self.load.valid
            m.d.comb += [
                self.load.ready.eq(1),
                wr_addr.eq(self.load.payload.addr),
                wr_data.eq(self.load.payload.data),
                wr_en.eq(Mux(self.load.valid, Const(-1, self.data_bytes), 0)),
            ]

        now = Signal(_NOW_BITS)
        m.d.sync += now.eq(now + 1)
        lfsr = Signal(32, init=self.seed)
        m.d.sync += lfsr.eq(Mux(lfsr[0], (lfsr >> 1) ^ 0xA3000000, lfsr >> 1))

        # Accepted bursts wait in a queue with the cycle their first beat may go out.
        ar_layout = data.StructLayout({"word": unsigned(word_bits), "len": unsigned(8),
                                       "id": unsigned(self.axi_signature.id_bits), "due": unsigned(_NOW_BITS)})
        m.submodules.queue = queue = SyncFIFO(width=ar_layout.size, depth=self.max_outstanding)
        ar_fire = Signal()
        entry = Signal(ar_layout)
        extra = lfsr[:self.jitter] if self.jitter else 0
        m.d.comb += [
            axi.arready.eq(queue.w_rdy),
            ar_fire.eq(axi.arvalid & axi.arready),
            entry.word.eq(axi.araddr[size:]),
            entry.len.eq(axi.arlen),
            entry.id.eq(axi.arid),
            # The entry is visible one cycle after the handshake and a beat is registered, hence -1.
            entry.due.eq(now + (self.latency - 1) + extra),
            queue.w_data.eq(entry),
            queue.w_en.eq(ar_fire),
        ]

        end = (axi.araddr[:12] + ((axi.arlen + 1) << size))
        with m.If(ar_fire & ((axi.arburst != AxiBurst.INCR) | (axi.arsize != size)
                             | (axi.araddr[:size] != 0) | (end > BOUNDARY_BYTES))):
            m.d.sync += self.violation.eq(1)

        # The beat source: the burst in progress, else the queue's head once it is due.
        head = ar_layout(queue.r_data)
        head_due = Signal()
        m.d.comb += head_due.eq(queue.r_rdy & ~(now - head.due)[_NOW_BITS - 1])
        busy = Signal()
        cur = Signal(word_bits)
        left = Signal(8)
        cur_id = Signal(self.axi_signature.id_bits)
        src_word = Mux(busy, cur, head.word)
        src_left = Mux(busy, left, head.len)
        src_id = Mux(busy, cur_id, head.id)

        cost = self.data_bytes << TOKEN_FRACTION_BITS
        tokens = Signal(range(cost + self.rate + 1), init=cost)
        gap = (lfsr[8] & lfsr[9]) if self.jitter else 0
        emit = Signal()
        m.d.comb += [
            emit.eq((busy | head_due) & (tokens >= cost) & ~gap & (~axi.rvalid | axi.rready)),
            rd_addr.eq(src_word),
        ]
        # Capped just below one beat plus one cycle's earnings: a source that is always eligible
        # never hits the cap (no loss), and an idle or stalled one banks less than one beat.
        cap = cost + self.rate - 1
        after = tokens + self.rate - Mux(emit, cost, 0)
        m.d.sync += tokens.eq(Mux(after > cap, cap, after))

        with m.If(emit):
            in_range = src_word < self.depth
            m.d.sync += [
                axi.rvalid.eq(1),
                axi.rdata.eq(Mux(in_range, rd_data, 0)),
                axi.rresp.eq(Mux(in_range, AxiResp.OKAY, AxiResp.DECERR)),
                axi.rlast.eq(src_left == 0),
                axi.rid.eq(src_id),
                busy.eq(src_left != 0),
                cur.eq(src_word + 1),
                left.eq(src_left - 1),
                cur_id.eq(src_id),
            ]
            m.d.comb += queue.r_en.eq(~busy)
        with m.Elif(axi.rready):
            m.d.sync += axi.rvalid.eq(0)

        if self.writable:
            self._elaborate_write(m, now, load_valid, wr_addr, wr_data, wr_en)
        return m

    def _elaborate_write(self, m, now, load_valid, wr_addr, wr_data, wr_en):
        axi = self.axi_wr
        size = exact_log2(self.data_bytes)
        word_bits = self.addr_bits - size
        id_bits = self.axi_wr_signature.id_bits

        # AW: accepted bursts wait in a queue; W takes them in order.
        aw_layout = data.StructLayout({"word": unsigned(word_bits), "len": unsigned(8), "id": unsigned(id_bits)})
        m.submodules.aw_queue = awq = SyncFIFO(width=aw_layout.size, depth=self.max_outstanding)
        aw_fire = Signal()
        aw_entry = Signal(aw_layout)
        m.d.comb += [
            axi.awready.eq(awq.w_rdy),
            aw_fire.eq(axi.awvalid & axi.awready),
            aw_entry.word.eq(axi.awaddr[size:]),
            aw_entry.len.eq(axi.awlen),
            aw_entry.id.eq(axi.awid),
            awq.w_data.eq(aw_entry),
            awq.w_en.eq(aw_fire),
        ]
        end = (axi.awaddr[:12] + ((axi.awlen + 1) << size))
        with m.If(aw_fire & ((axi.awburst != AxiBurst.INCR) | (axi.awsize != size)
                             | (axi.awaddr[:size] != 0) | (end > BOUNDARY_BYTES))):
            m.d.sync += self.violation.eq(1)

        # W: the burst in progress, else the queue's head.
        head = aw_layout(awq.r_data)
        busy = Signal()
        cur = Signal(word_bits)
        left = Signal(8)
        cur_id = Signal(id_bits)
        failed = Signal()       # a beat of the burst in progress fell beyond the memory
        src_word = Mux(busy, cur, head.word)
        src_left = Mux(busy, left, head.len)
        src_id = Mux(busy, cur_id, head.id)
        last = Signal()
        in_range = Signal()
        m.d.comb += [last.eq(src_left == 0), in_range.eq(src_word < self.depth)]

        # B: finished bursts with the cycle their response may go out.
        b_layout = data.StructLayout({"id": unsigned(id_bits), "resp": unsigned(2), "due": unsigned(_NOW_BITS)})
        m.submodules.b_queue = bq = SyncFIFO(width=b_layout.size, depth=self.max_outstanding)

        cost = self.data_bytes << TOKEN_FRACTION_BITS
        tokens = Signal(range(cost + self.write_rate + 1), init=cost)
        ready = Signal()
        fire = Signal()
        m.d.comb += [
            ready.eq((busy | awq.r_rdy) & (tokens >= cost) & bq.w_rdy & ~load_valid),
            axi.wready.eq(ready),
            fire.eq(axi.wvalid & ready),
        ]
        cap = cost + self.write_rate - 1
        after = tokens + self.write_rate - Mux(fire, cost, 0)
        m.d.sync += tokens.eq(Mux(after > cap, cap, after))

        with m.If(fire):
            with m.If(~load_valid):
                m.d.comb += [wr_addr.eq(src_word), wr_data.eq(axi.wdata),
                             wr_en.eq(Mux(in_range, axi.wstrb, 0))]
            m.d.comb += awq.r_en.eq(~busy)
            m.d.sync += [
                busy.eq(~last),
                cur.eq(src_word + 1),
                left.eq(src_left - 1),
                cur_id.eq(src_id),
                failed.eq(~last & (failed | ~in_range)),
            ]
            with m.If(axi.wlast != last):
                m.d.sync += self.violation.eq(1)

        b_entry = Signal(b_layout)
        m.d.comb += [
            b_entry.id.eq(src_id),
            b_entry.resp.eq(Mux(failed | ~in_range, AxiResp.DECERR, AxiResp.OKAY)),
            # Visible one cycle after the last beat, valid `write_latency` cycles after it.
            b_entry.due.eq(now + self.write_latency),
            bq.w_data.eq(b_entry),
            bq.w_en.eq(fire & last),
        ]
        b_head = b_layout(bq.r_data)
        m.d.comb += [
            axi.bvalid.eq(bq.r_rdy & ~(now - b_head.due)[_NOW_BITS - 1]),
            axi.bid.eq(b_head.id),
            axi.bresp.eq(b_head.resp),
            bq.r_en.eq(axi.bvalid & axi.bready),
        ]
