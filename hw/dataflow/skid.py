"""A two-entry register slice for a stream whose ``ready`` comes straight from a flip-flop.

In a chain of stream units with combinational ``ready`` (every pipeline here advances on
``~o.valid | o.ready``), the consumer's ``ready`` ripples back through every unit in one cycle: on ECP5 a
LINEAR command's epilogue, dequantiser, TLMM engine, sequencer and weight gearbox made one 20-level path.
:class:`SkidBuffer` cuts such a chain: its ``i.ready`` is a register (``~skid valid``), and its ``o`` is a
register too. It still moves one beat per cycle with no bubbles; a beat spends one cycle in it.

How: ``o`` is a one-beat output register. When the consumer stalls while a beat arrives, that beat goes
to the skid register (``i.ready`` was high, and falls the next cycle); the skid beat moves to ``o`` as
soon as ``o`` is taken, before any new beat.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """Register slice with registered ``ready`` (see the module docstring).

    Parameters
    ----------
    shape : shape-like
        The payload shape of both streams.

    Attributes
    ----------
    i : In(stream.Signature(shape))
    o : Out(stream.Signature(shape))
    """

    def __init__(self, shape):
        self.shape = shape
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        skid = Signal.like(self.i.payload, reset_less=True)
        skid_valid = Signal()
        m.d.comb += self.i.ready.eq(~skid_valid)
        with m.If(~self.o.valid | self.o.ready):
            # The output register is free this cycle: the skid beat first, else the arriving one.
            with m.If(skid_valid):
                m.d.sync += [self.o.payload.eq(skid), self.o.valid.eq(1), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o.payload.eq(self.i.payload), self.o.valid.eq(self.i.valid)]
        with m.Elif(self.i.valid & ~skid_valid):
            m.d.sync += skid_valid.eq(1)
        # The skid register takes the arriving payload in every cycle it is empty, and keeps the one it
        # holds: its enable is then `~skid_valid` (a flip-flop) rather than the consumer's ready and the
        # producer's valid, which on the ECP5 shell came from units far apart (16 to 17.6 ns placed paths
        # at 183e789 ended on skid enables). The load in the cycle skid_valid rises is the beat kept.
        with m.If(~skid_valid):
            m.d.sync += skid.eq(self.i.payload)
        return m
