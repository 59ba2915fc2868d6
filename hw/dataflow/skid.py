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
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..params import check_int
from ..replica import REPLICA_ATTR

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """Register slice with registered ``ready`` (see the module docstring).

    Parameters
    ----------
    shape : shape-like
        The payload shape of both streams.

    copy_field : str or None
        A field of a struct ``shape`` to keep extra copies of at the output (see ``field_copies``).
    copies : int
        How many copies of ``copy_field`` (0..16; at least 1 when ``copy_field`` is given).

    Attributes
    ----------
    i : In(stream.Signature(shape))
    o : Out(stream.Signature(shape))
    field_copies : list of Signal
        ``copies`` registers that always equal ``o.payload[copy_field]``, marked as replicas
        (:mod:`hw.replica`) so that synthesis keeps them apart: a field that selects in a wide multiplexer
        (a slot index, say) gets a copy beside each share of its sinks instead of one net across them.
        ``o.payload[copy_field]`` itself is not kept: Yosys merges it into one of the copies, so sinks read
        from it share that copy's register (a share that must stand apart needs a copy of its own).
    """

    def __init__(self, shape, *, copy_field=None, copies=0):
        self.shape = shape
        if copy_field is None:
            self.copies = check_int("copies", copies, 0, 0, "SkidBuffer without copy_field")
        else:
            layout = data.Layout.cast(shape) if isinstance(shape, data.Layout) else None
            if not isinstance(layout, data.StructLayout) or copy_field not in dict(layout):
                raise ValueError(f"SkidBuffer: copy_field {copy_field!r} is not a field of {shape!r}")
            self.copies = check_int("copies", copies, 1, 16, "SkidBuffer")
        self.copy_field = copy_field
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})
        self.field_copies = [] if copy_field is None else [
            Signal(layout[copy_field].shape, name=f"{copy_field}_copy{k}", attrs={REPLICA_ATTR: 1})
            for k in range(self.copies)]

    def elaborate(self, platform):
        m = Module()
        skid = Signal.like(self.i.payload, reset_less=True)
        skid_valid = Signal()
        m.d.comb += self.i.ready.eq(~skid_valid)
        with m.If(~self.o.valid | self.o.ready):
            # The output register is free this cycle: the skid beat first, else the arriving one.
            with m.If(skid_valid):
                m.d.sync += [self.o.payload.eq(skid), self.o.valid.eq(1), skid_valid.eq(0)]
                m.d.sync += [c.eq(skid[self.copy_field]) for c in self.field_copies]
            with m.Else():
                m.d.sync += [self.o.payload.eq(self.i.payload), self.o.valid.eq(self.i.valid)]
                m.d.sync += [c.eq(self.i.payload[self.copy_field]) for c in self.field_copies]
        with m.Elif(self.i.valid & ~skid_valid):
            m.d.sync += skid_valid.eq(1)
        # The skid register takes the arriving payload in every cycle it is empty, and keeps the one it
        # holds: its enable is then `~skid_valid` (a flip-flop) rather than the consumer's ready and the
        # producer's valid, which on the ECP5 shell came from units far apart (16 to 17.6 ns placed paths
        # at 183e789 ended on skid enables). The load in the cycle skid_valid rises is the beat kept.
        with m.If(~skid_valid):
            m.d.sync += skid.eq(self.i.payload)
        return m
