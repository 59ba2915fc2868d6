"""AXI4 write channels and a burst write master (the KV cache will be written through it).

Same conventions as the read side (``hw/memory/axi.py``): AXI4 port names, full-width INCR bursts of at
most ``max_burst`` beats that never cross a 4 KiB boundary, ID 0, a sticky error output. Amaranth
flattens a port ``axi`` of :class:`AxiWriteSignature` to ``axi__awaddr`` and so on, which is what
cocotbext-axi finds with ``AxiWriteBus.from_prefix(dut, "axi_")``.
"""

from amaranth.hdl import Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from ..dataflow.skid import SkidBuffer
from ..params import check_int
from .axi import MAX_BURST, AxiBurst, BurstCutter

__all__ = ["AxiWriteSignature", "AxiBurstWriter", "write_command_layout", "write_data_layout"]


class AxiWriteSignature(wiring.Signature):
    """AXI4 write-address, write-data and write-response channels, from the master's side.

    Parameters
    ----------
    addr_bits : int
        Byte-address width (12..64).
    data_bits : int
        Data-bus width: a power of two from 8 to 1024, as AXI4 requires.
    id_bits : int
        Transaction ID width (at least 1: cocotbext-axi requires ``awid``/``bid``).

    Members
    -------
    awaddr, awlen, awsize, awburst, awid, awvalid : Out
    awready : In
    wdata, wstrb, wlast, wvalid : Out
    wready : In
    bresp, bid, bvalid : In
    bready : Out
    """

    def __init__(self, addr_bits, data_bits, id_bits=1):
        self.addr_bits = check_int("addr_bits", addr_bits, 12, 64, "AxiWriteSignature")
        self.data_bits = check_int("data_bits", data_bits, 8, 1024, "AxiWriteSignature")
        if data_bits & (data_bits - 1):
            raise ValueError(f"AxiWriteSignature: data_bits must be a power of two (AXI4), got {data_bits}")
        self.id_bits = check_int("id_bits", id_bits, 1, 16, "AxiWriteSignature")
        super().__init__({
            "awaddr": Out(addr_bits),
            "awlen": Out(8),
            "awsize": Out(3),
            "awburst": Out(2),
            "awid": Out(id_bits),
            "awvalid": Out(1),
            "awready": In(1),
            "wdata": Out(data_bits),
            "wstrb": Out(data_bits // 8),
            "wlast": Out(1),
            "wvalid": Out(1),
            "wready": In(1),
            "bresp": In(2),
            "bid": In(id_bits),
            "bvalid": In(1),
            "bready": Out(1),
        })

    def __eq__(self, other):
        return (type(other) is type(self) and (self.addr_bits, self.data_bits, self.id_bits)
                == (other.addr_bits, other.data_bits, other.id_bits))

    def __hash__(self):
        return hash((type(self), self.addr_bits, self.data_bits, self.id_bits))

    def __repr__(self):
        return f"AxiWriteSignature({self.addr_bits}, {self.data_bits}, id_bits={self.id_bits})"


def write_data_layout(data_bits):
    """A bus word with its byte strobes (bit ``i`` of ``strb`` enables byte ``i``)."""
    return data.StructLayout({"data": unsigned(data_bits), "strb": unsigned(data_bits // 8)})


def write_command_layout(addr_bits, beats_bits):
    """A write command: ``beats`` bus words to byte address ``addr`` (bus-aligned)."""
    return data.StructLayout({"addr": unsigned(addr_bits), "beats": unsigned(beats_bits)})


class AxiBurstWriter(wiring.Component):
    """AXI4 write master: byte-address commands and a stream of bus words in, INCR bursts out.

    A command is cut into INCR bursts of at most ``max_burst`` beats that never cross a 4 KiB boundary,
    all with ID 0. A burst's address goes out first; its beats follow on W from the ``data`` stream
    (one bus word per beat, all byte strobes set, ``wlast`` on the burst's last beat) once the address
    is accepted. Up to ``max_outstanding`` bursts may be issued without their write response; each
    response is accepted at once (``bready`` is always high) and SLVERR or DECERR sets a sticky
    ``error``. W leaves through a :class:`~hw.dataflow.skid.SkidBuffer` (a cycle of latency, no
    bubbles), so ``data.ready`` is never combinational from ``wready``.

    Address issue does not wait for data: the W channel simply waits for ``data`` words, so a
    producer may start the data before or after its command. The command's ``beats`` words must
    eventually come, or the W channel (and so the slave) waits for them.

    Parameters
    ----------
    addr_bits : int
        Byte-address width.
    data_bits : int
        Bus width, a power of two (8..1024).
    max_burst : int
        Longest burst in beats (1..256).
    max_outstanding : int
        Bursts issued and not yet answered on B (1..64).
    beats_bits : int
        Width of a command's ``beats`` field.
    id_bits : int
        AXI ID width (the ID driven is always 0).
    strobes : bool
        Each data word carries its byte strobes (``data``, ``strb``): bytes whose strobe is clear are
        not written (small records inside a bus word, such as the KV cache's exponent bytes). Without
        it every byte is written.

    Attributes
    ----------
    cmd : In(stream.Signature(write_command_layout(addr_bits, beats_bits)))
        ``addr`` must be a multiple of the bus width in bytes (low bits are ignored); ``beats = 0`` is
        accepted and does nothing.
    data : In(stream.Signature(unsigned(data_bits)))
        Or ``write_data_layout(data_bits)`` with ``strobes``.
    axi : Out(AxiWriteSignature(addr_bits, data_bits, id_bits))
    error : Out(1)
        Sticky: a write response was SLVERR or DECERR.
    idle : Out(1)
        No command in progress, no burst waiting for data or for its response.
    """

    def __init__(self, addr_bits, data_bits, *, max_burst=MAX_BURST, max_outstanding=4, beats_bits=24, id_bits=1,
                 strobes=False):
        owner = "AxiBurstWriter"
        self.axi_signature = AxiWriteSignature(addr_bits, data_bits, id_bits)
        self.addr_bits, self.data_bits = addr_bits, data_bits
        self.max_burst = check_int("max_burst", max_burst, 1, MAX_BURST, owner)
        self.max_outstanding = check_int("max_outstanding", max_outstanding, 1, 64, owner)
        self.beats_bits = check_int("beats_bits", beats_bits, 1, 32, owner)
        self.cmd_layout = write_command_layout(addr_bits, beats_bits)
        if not isinstance(strobes, bool):
            raise TypeError(f"{owner}: strobes must be a bool, got {strobes!r}")
        self.strobes = strobes
        super().__init__({
            "cmd": In(stream.Signature(self.cmd_layout)),
            "data": In(stream.Signature(write_data_layout(data_bits) if strobes else unsigned(data_bits))),
            "axi": Out(self.axi_signature),
            "error": Out(1),
            "idle": Out(1),
        })

    @property
    def data_bytes(self):
        return self.data_bits // 8

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        size = exact_log2(self.data_bytes)
        len_bits = 8

        # Bursts whose address went out and whose beats have not all gone out on W: their lengths. A
        # buffered FIFO: its head (r_data) and r_rdy are registers. From the distributed RAM's read, the
        # head's length went through `last`'s compare into the W slice across the die (12.35 ns routed
        # at 6c79f98, 12.19 placed at dfe4cdf), and r_rdy, a compare of the level, through `data.ready`
        # into a SAVE_X answer slice's enables (13.01 ns placed at dfe4cdf). A burst's beats may then
        # start a cycle later after its address when the queue was empty. Never more than `outstanding`
        # lengths are queued; at least 3 entries, as the inner memory's address must not be zero bits wide
        # (Verilator rejects it).
        m.submodules.bursts = bursts = SyncFIFOBuffered(width=len_bits, depth=max(3, self.max_outstanding))

        # Bursts issued on AW and not yet answered on B.
        outstanding = Signal(range(self.max_outstanding + 1))
        aw_fire = Signal()
        cut = BurstCutter(m, self.cmd, aw_fire, addr_bits=self.addr_bits, beats_bits=self.beats_bits,
                          data_bytes=self.data_bytes, max_burst=self.max_burst)
        addr, beats = cut.addr, cut.beats

        # AW leaves through a register slice: a burst is issued (counted, the cutter stepped) when the
        # slice takes it, on the slice's registered ready. `awready` comes from the write arbiter across
        # the die, and straight into the cutter's address and count enables it made 11.95 ns placed paths
        # (44 late endpoints on the ECP5 shell at 6c79f98). The slice's valid holds until the handshake,
        # as AXI asks. Its length is queued for W as the address leaves the slice: no W beat goes ahead
        # of its burst's address (the write arbiters route W by the order of AW). The queue cannot
        # overflow: it holds bursts counted in `outstanding`, which stays within its depth.
        aw_slice = SkidBuffer(data.StructLayout({"addr": self.addr_bits, "len": len_bits}))
        m.submodules.aw_slice = aw_slice
        m.d.comb += [
            aw_slice.i.payload.addr.eq(addr),
            aw_slice.i.payload.len.eq(beats - 1),
            aw_slice.i.valid.eq(cut.active & cut.sized & (outstanding < self.max_outstanding)),
            aw_fire.eq(aw_slice.i.valid & aw_slice.i.ready),
            axi.awaddr.eq(aw_slice.o.payload.addr),
            axi.awlen.eq(aw_slice.o.payload.len),
            axi.awsize.eq(size),
            axi.awburst.eq(AxiBurst.INCR),
            axi.awid.eq(0),
            axi.awvalid.eq(aw_slice.o.valid),
            aw_slice.o.ready.eq(axi.awready),
        ]
        m.d.comb += [
            bursts.w_data.eq(aw_slice.o.payload.len),
            bursts.w_en.eq(axi.awvalid & axi.awready),
        ]
        # W: the head burst's beats from the data stream, `wlast` on its last beat, through a skid buffer:
        # the producer's `data.ready` and the burst bookkeeping see its registered ready, never `wready`
        # (the arbiters' grant logic behind it reached a KV writer's pipeline advance in the same cycle).
        beat = Signal(len_bits)
        last = Signal()
        w_slice = SkidBuffer(data.StructLayout({"data": self.data_bits, "strb": self.data_bytes, "last": 1}))
        m.submodules.w_slice = w_slice
        w = w_slice.i
        m.d.comb += [
            last.eq(beat == bursts.r_data),
            w.payload.data.eq(self.data.payload.data if self.strobes else self.data.payload),
            w.payload.strb.eq(self.data.payload.strb if self.strobes else Const(-1, self.data_bytes)),
            w.payload.last.eq(last),
            w.valid.eq(bursts.r_rdy & self.data.valid),
            self.data.ready.eq(bursts.r_rdy & w.ready),
            axi.wdata.eq(w_slice.o.payload.data), axi.wstrb.eq(w_slice.o.payload.strb),
            axi.wlast.eq(w_slice.o.payload.last), axi.wvalid.eq(w_slice.o.valid), w_slice.o.ready.eq(axi.wready),
        ]
        w_fire = Signal()
        m.d.comb += [w_fire.eq(w.valid & w.ready), bursts.r_en.eq(w_fire & last)]
        with m.If(w_fire):
            m.d.sync += beat.eq(Mux(last, 0, beat + 1))

        # B: always ready; count the answers and keep any error.
        b_fire = Signal()
        m.d.comb += [axi.bready.eq(1), b_fire.eq(axi.bvalid)]
        with m.If(b_fire & axi.bresp[1]):
            m.d.sync += self.error.eq(1)
        m.d.sync += outstanding.eq(outstanding + aw_fire - b_fire)

        m.d.comb += self.idle.eq(~cut.active & (outstanding == 0))
        return m
