"""AXI4 write arbiter: several write masters share one DRAM write port.

Write addresses are granted round-robin, one AW at a time, with the master's index prepended to
``awid``. The W channel follows the granted bursts in grant order (AXI4 has no write interleaving):
a small FIFO of grants says whose beats go out, until ``wlast``. Write responses are routed back by
``bid``. A master's W beats therefore go out only after its address was granted, which is what
:class:`~hw.memory.axi_write.AxiBurstWriter` does anyway.

With ``sliced``, every master's port enters through an :class:`~hw.bus.axi_slice.AxiWriteSlice`, so a
master sees ``awready``/``wready``/``bvalid`` from registers beside the arbiter rather than the grant
logic, which chose among the other masters' requests: on the ECP5 shell at cbb845a one path ran from the
LOGITS writer's request through the round robin into the KV writer's address enable (15.9 ns placed).
Each channel takes a cycle more; bursts still move a beat per cycle.
"""

from amaranth.hdl import Assert, Cat, Module, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from ..memory.axi_write import AxiWriteSignature
from ..params import check_int
from .axi_slice import AxiWriteSlice
from .round_robin import round_robin

__all__ = ["AxiWriteArbiter"]


class AxiWriteArbiter(wiring.Component):
    """``masters`` write ports in (``m[i]``), one write port out (``s``).

    Parameters
    ----------
    masters : int
        1..16.
    addr_bits, data_bits, id_bits : int
        As :class:`~hw.memory.axi_write.AxiWriteSignature`; the slave port's ID is ``id_bits +
        ceil(log2(masters))`` wide.
    max_bursts : int
        Granted bursts whose W beats may still be pending (the grant FIFO depth).
    sliced : bool
        A register slice on every master's port (see the module docstring).
    credit_w : bool
        With ``sliced``: each master's W channel through a credit link
        (:class:`~hw.bus.axi_slice.AxiWriteSlice` ``credit``), for masters placed far from the arbiter.
    """

    def __init__(self, masters, addr_bits, data_bits, *, id_bits=1, max_bursts=8, sliced=False, credit_w=False):
        self.masters = check_int("masters", masters, 1, 16, "AxiWriteArbiter")
        self.max_bursts = check_int("max_bursts", max_bursts, 2, 256, "AxiWriteArbiter")
        self.sel_bits = max(1, (masters - 1).bit_length())
        self.id_bits = id_bits
        self.sliced = bool(sliced)
        if credit_w and not sliced:
            raise ValueError("AxiWriteArbiter: credit_w needs sliced")
        self.credit_w = bool(credit_w)
        self._bits = (addr_bits, data_bits, id_bits)
        super().__init__({
            "m": In(AxiWriteSignature(addr_bits, data_bits, id_bits)).array(masters),
            "s": Out(AxiWriteSignature(addr_bits, data_bits, id_bits + self.sel_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        n, s = self.masters, self.s
        ports = list(self.m)
        if self.sliced:
            for i in range(n):
                m.submodules[f"slice{i}"] = sl = AxiWriteSlice(*self._bits, credit=("w",) if self.credit_w else ())
                wiring.connect(m, wiring.flipped(self.m[i]), sl.m)
                ports[i] = sl.s
        # Buffered: the head grant comes from a register, not a distributed-RAM read, as it selects every
        # master's wready and the slave's W payload.
        m.submodules.grants = grants = fifo.SyncFIFOBuffered(width=self.sel_bits, depth=self.max_bursts + 1)

        # AW: round-robin from the master after the last one granted; only while the grant FIFO has room.
        # The room is a flip-flop of its own, from a count of the grants queued, rather than the FIFO's
        # w_rdy (a compare of its level): through awready it reached a master slice's enables across the
        # die (12.30 ns placed on the ECP5 shell at dfe4cdf, seed 2). The FIFO has an entry more than the
        # max_bursts grants the flag admits, so the flag never claims room the FIFO lacks, whatever the
        # buffered FIFO's inner level.
        queued = Signal(range(self.max_bursts + 1))
        room = Signal(init=1)
        pushed, popped = Signal(), Signal()
        queued_next = queued + pushed - popped
        m.d.sync += [queued.eq(queued_next), room.eq(queued_next < self.max_bursts),
                     Assert(~room | grants.w_rdy, "AxiWriteArbiter: the room flag claimed a full grant FIFO")]
        last = Signal(range(n))
        grant, any_req = round_robin(m, [ports[i].awvalid for i in range(n)], last)
        for i in range(n):
            mi = ports[i]
            with m.If(grant == i):
                m.d.comb += [s.awaddr.eq(mi.awaddr), s.awlen.eq(mi.awlen), s.awsize.eq(mi.awsize),
                             s.awburst.eq(mi.awburst), s.awid.eq(Cat(mi.awid, grant)),
                             mi.awready.eq(s.awready & room)]
        m.d.comb += [s.awvalid.eq(any_req & room), grants.w_data.eq(grant),
                     grants.w_en.eq(s.awvalid & s.awready), pushed.eq(grants.w_en)]
        with m.If(s.awvalid & s.awready):
            m.d.sync += last.eq(grant)

        # W: from the master at the head of the grant FIFO, until its burst's last beat.
        head = grants.r_data
        for i in range(n):
            mi = ports[i]
            with m.If(grants.r_rdy & (head == i)):
                m.d.comb += [s.wdata.eq(mi.wdata), s.wstrb.eq(mi.wstrb), s.wlast.eq(mi.wlast),
                             s.wvalid.eq(mi.wvalid), mi.wready.eq(s.wready)]
        m.d.comb += [grants.r_en.eq(s.wvalid & s.wready & s.wlast), popped.eq(grants.r_en)]

        # B: route by the index in the upper ID bits.
        owner = s.bid[self.id_bits:]
        for i in range(n):
            mi = ports[i]
            m.d.comb += [mi.bresp.eq(s.bresp), mi.bid.eq(s.bid[:self.id_bits]), mi.bvalid.eq(s.bvalid & (owner == i))]
            with m.If(owner == i):
                m.d.comb += s.bready.eq(mi.bready)
        return m
