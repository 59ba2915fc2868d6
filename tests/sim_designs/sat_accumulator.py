"""A saturating signed accumulator behind a stream input.

This design exists to exercise the Verilator/cocotb harness in ``sim``: it is
small enough to compile in a few seconds, yet has the features real Trillium
blocks have (a typed ``amaranth.lib.stream`` port with flattened payload,
signed arithmetic, a ``sync`` domain, a width parameter).
"""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

#: Width of the signed samples arriving on the input stream.
SAMPLE_WIDTH = 8


class SatAccumulator(wiring.Component):
    """Accumulate signed 8-bit samples into a saturating register.

    Every cycle in which ``i.valid & i.ready`` holds, ``i.payload`` is added to
    ``acc``; a sum outside the range of ``signed(width)`` clamps to the
    nearest bound instead of wrapping.  ``clear`` resets ``acc`` to zero on
    the next clock edge; while it is high ``i.ready`` is low, so no sample is
    consumed (and none is lost) in a clearing cycle.

    Parameters
    ----------
    width : int
        Width of the accumulator, at least ``SAMPLE_WIDTH``.

    Attributes
    ----------
    i : stream of ``signed(8)``, in
        Samples to accumulate.
    clear : Signal(1), in
        Synchronous clear; has priority over accumulation.
    acc : Signal(signed(width)), out
        Registered accumulator value.
    """

    def __init__(self, width: int = 12):
        if width < SAMPLE_WIDTH:
            raise ValueError(f"width must be >= {SAMPLE_WIDTH}, got {width}")
        self.width = width
        super().__init__({
            "i": In(stream.Signature(signed(SAMPLE_WIDTH))),
            "clear": In(1),
            "acc": Out(signed(width)),
        })

    def elaborate(self, platform):
        m = Module()
        lo = -(1 << (self.width - 1))
        hi = (1 << (self.width - 1)) - 1

        # One extra bit holds any sum of a width-bit value and an 8-bit sample
        # without wrapping, so the clamp below sees the true sum.
        total = Signal(signed(self.width + 1))
        m.d.comb += [
            self.i.ready.eq(~self.clear),
            total.eq(self.acc + self.i.payload),
        ]
        with m.If(self.clear):
            m.d.sync += self.acc.eq(0)
        with m.Elif(self.i.valid):
            m.d.sync += self.acc.eq(Mux(total > hi, hi, Mux(total < lo, lo, total)))
        return m
