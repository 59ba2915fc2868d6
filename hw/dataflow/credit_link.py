"""A stream carried over a distance: free-running register stages out and back, and credits.

A :class:`~hw.dataflow.skid.SkidBuffer` cuts a chain of ``ready`` logic, but not a distance: its output
register and its skid register load under one enable computed from the consumer's ``ready``, so when
the producer and the consumer are placed far apart (on the ECP5 shell, RoPE's output and QuantPow2's
input sat 40 to 80 columns apart) that enable net crosses the gap, after logic at both ends.

:class:`CreditLink` has no net that needs logic at both ends. Beats travel through ``forward`` register
stages that load on every clock edge (payload and valid bit, no enable) into a FIFO at the consumer's
end; every beat read from that FIFO sends a pulse back through ``back`` more such stages. The producer's
end counts the beats it has sent and not yet heard back of (``owed``), and offers ``i.ready`` (a
flip-flop) only while the FIFO has room for one more beat beyond all of them, so the FIFO never
overflows and nothing at the far end ever stalls the near end within a cycle. Between the two ends each
net runs from one flip-flop to the next, so the placer can spread the stages over the gap.

It moves one beat per cycle with an always-ready consumer (the FIFO holds the beats of a round trip)
and adds ``forward + 1`` cycles of latency (the FIFO's own one). The FIFO and its count are
:func:`hw.vector.epilogue.output_fifo`'s, with the reads counted ``back`` stages late; the FIFO is a
:class:`~hw.dataflow.landing_fifo.LandingFifo`, whose head is a distributed-RAM read at a pointer, so the
consumer's ``ready`` only steps that pointer.
"""

from amaranth.hdl import Module, Shape, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..params import check_int
from ..replica import REPLICA_ATTR
from ..vector.epilogue import FIFO_LATENCY, FIFO_SLACK, output_fifo

__all__ = ["CreditLink"]

class CreditLink(wiring.Component):
    """Stream link with free-running stages and credit flow control (see the module docstring).

    Parameters
    ----------
    shape : shape-like
        Payload shape of both streams.
    forward : int
        Register stages from the producer's end to the FIFO, 1..8.
    back : int
        Register stages of the read pulses back to the producer's end, 1..8.

    Attributes
    ----------
    i : In(stream.Signature(shape))
        ``ready`` is a flip-flop.
    o : Out(stream.Signature(shape))
        The FIFO's head (``valid`` is a flip-flop).
    idle : Out(1)
        No beat in the link: every beat taken on ``i`` has been read from ``o`` (and its pulse is back).
    ready_next : Out(1)
        The value ``i.ready`` takes at the next clock edge (combinational), for a producer that keeps a
        copy of ``ready`` in a flip-flop of its own (one producer feeding several links).
    depth : int
        FIFO entries: the beats of one round trip, so the link sustains a beat per cycle.
    latency : int
        Cycles from a beat taken on ``i`` to its ``o.valid`` (``forward + 1``).
    """

    def __init__(self, shape, *, forward=2, back=1):
        self.forward = check_int("forward", forward, 1, 8, "CreditLink")
        self.back = check_int("back", back, 1, 8, "CreditLink")
        # A beat is owed from the cycle it is taken until its read pulse is back: the forward stages, the
        # FIFO's slack (hw.vector.epilogue.output_fifo), the back stages.
        self.depth = forward + FIFO_SLACK + back
        self.latency = forward + FIFO_LATENCY
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape)), "idle": Out(1),
                          "ready_next": Out(1)})

    def elaborate(self, platform):
        m = Module()
        width = Shape.cast(self.i.payload.shape()).width
        take = Signal(init=1)                  # i.ready: room for one more beat beyond all owed
        fire = self.i.valid & take
        m.d.comb += self.i.ready.eq(take)

        valid, payload = fire, Value.cast(self.i.payload)
        for k in range(self.forward):
            v = Signal(name=f"fwd_valid{k}", attrs={REPLICA_ATTR: 1})     # not merged: see output_fifo
            p = Signal(width, name=f"fwd_payload{k}", reset_less=True)
            m.d.sync += [v.eq(valid), p.eq(payload)]
            valid, payload = v, p
        # The FIFO at the far end, its reads counted back through `back` stages.
        owed = output_fifo(m, take, fire, valid, payload, self.o, self.forward, back=self.back,
                           take_next=self.ready_next)
        m.d.comb += self.idle.eq(owed == 0)
        return m
