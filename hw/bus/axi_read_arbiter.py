"""AXI4 read arbiter: several read masters share one DRAM read port.

Each master's read-address requests are granted round-robin, one AR at a time. The arbiter prepends
the master's index to ``arid``, so the slave's ``rid`` routes each data beat back to the master that
asked for it. Bursts with different IDs may come back in any order, or interleaved, and the routing
still holds. The masters (``AxiBurstReader``) reserve buffer space before they issue a burst, so they
take R beats whenever they come: one master's slow consumer never blocks another master's data.

The AR channel is registered on both sides, so no combinational path runs from one master through the
arbitration to the slave or back to another master: each master's AR lands in a one-entry holding
register (its ``arready`` is that register's emptiness), the round-robin choice among the held requests
is registered (one-hot), and the next cycle the chosen AR goes into the output register that drives the
slave. An AR therefore takes three more cycles to reach the slave, and the port takes one AR every other
cycle; bursts are longer than that.

With ``sliced``, each master's R channel leaves through a :class:`~hw.dataflow.skid.SkidBuffer`: a master
then sees ``rvalid`` and ``rdata`` from registers beside the arbiter, and the slave's ``rready`` is a
choice among the buffers' ``ready`` registers, not the masters' buffer room (on the ECP5 shell at cbb845a
the shell's R register reached the command processor's read FIFO through the demultiplexer: 11.9 ns
placed). An R beat takes a cycle more.

With ``credit_ar``, each master's AR comes over a :class:`~hw.dataflow.credit_link.CreditLink` instead of
into the holding register: the master's ``arready`` is then a flip-flop at the master's end (the link's
credit count), and the held request is the head of the link's FIFO beside the arbiter. A master's handshake
(``arvalid`` and ``arready``, which moves its burst cutter, credits and burst FIFO) no longer crosses the
die: on the ECP5 shell at 142dbaf the ATTEND reader's `arvalid` reached its burst FIFO's enables through
the arbiter's side (11.63 ns placed). An AR takes two cycles more; a master may have a few ARs queued.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..arith.tree import tree_or
from ..dataflow.credit_link import CreditLink
from ..dataflow.skid import SkidBuffer
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
    sliced : bool
        A register slice on every master's R channel (see the module docstring).
    credit_ar : bool
        Every master's AR over a credit link (see the module docstring).
    """

    def __init__(self, masters, addr_bits, data_bits, *, id_bits=1, sliced=False, credit_ar=False):
        self.masters = check_int("masters", masters, 1, 16, "AxiReadArbiter")
        self.sel_bits = max(1, (masters - 1).bit_length())
        self.id_bits = id_bits
        self.sliced = bool(sliced)
        self.credit_ar = bool(credit_ar)
        master_sig = AxiReadSignature(addr_bits, data_bits, id_bits)
        super().__init__({
            "m": In(master_sig).array(masters),
            "s": Out(AxiReadSignature(addr_bits, data_bits, id_bits + self.sel_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        n, s = self.masters, self.s
        ar_fields = ("araddr", "arlen", "arsize", "arburst", "arid")
        held = [Signal(name=f"held{i}") for i in range(n)]
        hold = [{f: Signal.like(getattr(self.m[i], f), name=f"hold{i}_{f}") for f in ar_fields}
                for i in range(n)]
        moved = [Signal(name=f"moved{i}") for i in range(n)]     # the held request goes to the output
        for i in range(n):
            mi = self.m[i]
            if self.credit_ar:
                layout = data.StructLayout({f: len(getattr(mi, f)) for f in ar_fields})
                m.submodules[f"ar_link{i}"] = link = CreditLink(layout, forward=1, back=1)
                m.d.comb += [link.i.valid.eq(mi.arvalid), mi.arready.eq(link.i.ready),
                             *(getattr(link.i.payload, f).eq(getattr(mi, f)) for f in ar_fields),
                             held[i].eq(link.o.valid), link.o.ready.eq(moved[i]),
                             *(hold[i][f].eq(getattr(link.o.payload, f)) for f in ar_fields)]
            else:
                m.d.comb += mi.arready.eq(~held[i])
                with m.If(mi.arvalid & ~held[i]):
                    m.d.sync += [held[i].eq(1), *(hold[i][f].eq(getattr(mi, f)) for f in ar_fields)]
                with m.If(moved[i]):
                    m.d.sync += held[i].eq(0)

        # Round-robin among the held requests, registered as a one-hot choice (`chosen`); the next cycle the
        # chosen AR moves into the output register. A chosen request stays held until it moves, so the
        # choice never goes stale; the next choice is made once it has moved.
        last = Signal(range(n))
        grant, any_req = round_robin(m, held, last)
        chosen = Signal(n)
        out_valid = Signal()
        m.d.comb += s.arvalid.eq(out_valid)
        with m.If(chosen == 0):
            with m.If(any_req):
                m.d.sync += [chosen.eq(1 << grant), last.eq(grant)]
        load = Signal()
        m.d.comb += load.eq((chosen != 0) & (~out_valid | s.arready))
        with m.If(s.arready):
            m.d.sync += out_valid.eq(0)
        with m.If(load):
            m.d.sync += [out_valid.eq(1), chosen.eq(0)]
            # An AND-OR of the held requests by the one-hot choice: a few LUT levels for any number of
            # masters.
            for f in ar_fields[:-1]:
                m.d.sync += getattr(s, f).eq(
                    tree_or([Mux(chosen[i], hold[i][f], 0) for i in range(n)]))
            m.d.sync += s.arid.eq(tree_or([Mux(chosen[i], Cat(hold[i]["arid"], Const(i, self.sel_bits)), 0)
                                           for i in range(n)]))
            m.d.comb += [moved[i].eq(chosen[i]) for i in range(n)]

        # R: route by the index in the upper ID bits.
        owner = s.rid[self.id_bits:]
        beat = {"rdata": s.rdata, "rresp": s.rresp, "rlast": s.rlast, "rid": s.rid[:self.id_bits]}
        for i in range(n):
            mi = self.m[i]
            mine = owner == i
            if self.sliced:
                layout = data.StructLayout({f: len(v) for f, v in beat.items()})
                m.submodules[f"r_slice{i}"] = sl = SkidBuffer(layout)
                m.d.comb += [*(getattr(sl.i.payload, f).eq(v) for f, v in beat.items()),
                             sl.i.valid.eq(s.rvalid & mine),
                             *(getattr(mi, f).eq(getattr(sl.o.payload, f)) for f in beat),
                             mi.rvalid.eq(sl.o.valid), sl.o.ready.eq(mi.rready)]
                ready = sl.i.ready
            else:
                m.d.comb += [*(getattr(mi, f).eq(v) for f, v in beat.items()), mi.rvalid.eq(s.rvalid & mine)]
                ready = mi.rready
            with m.If(mine):
                m.d.comb += s.rready.eq(ready)
        return m
