"""A one-entry register slice for a command stream, whose wide payload loads under flip-flops alone.

A command is hundreds of bits wide and arrives once in thousands of cycles, so the slice trades rate for
timing. :class:`~hw.dataflow.skid.SkidBuffer` loads its output register under ``~o.valid | o.ready``: on the
ECP5 shell that gate, fed by the LINEAR core's ``busy`` (a flip-flop with hundreds of sinks across the
core), enabled the fused core's 249-bit command register, and 203 endpoints ended over 10 ns on it (placed
at 1fe27f9). Here the payload register loads in every cycle the slice is empty, under copies of one
``empty`` flip-flop (a quarter of the bits each), so its enable is never a gate of the consumer's ``ready``.
A command is in ``o`` the cycle after it is taken, and the slice takes one command in two cycles at most.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..params import check_int
from ..replica import load_in_shares, registered_copies

__all__ = ["CommandSlice"]


class CommandSlice(wiring.Component):
    """One-entry register slice whose ``i.ready``, ``o.valid`` and payload enables are flip-flops.

    Parameters
    ----------
    shape : shape-like
        The payload shape of both streams.
    copies : int
        Copies of the ``empty`` flip-flop that enable the payload register, each a contiguous share of its
        bits (1..64); one more copy drives ``i.ready``.

    Attributes
    ----------
    i : In(stream.Signature(shape))
    o : Out(stream.Signature(shape))
    """

    def __init__(self, shape, *, copies=4):
        self.shape = shape
        self.copies = check_int("copies", copies, 1, 64, "CommandSlice")
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        full = Signal()
        full_next = Signal()
        m.d.comb += full_next.eq(Mux(full, ~self.o.ready, self.i.valid))
        m.d.sync += full.eq(full_next)
        ready, *loads = registered_copies(m, ~full_next, self.copies + 1, "empty", init=1)
        m.d.comb += [self.i.ready.eq(ready), self.o.valid.eq(full)]
        load_in_shares(m, self.o.payload, self.i.payload, loads)
        return m
