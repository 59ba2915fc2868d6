"""A FIFO for a writer that never overfills it: no full flag in the write path, no wide read enable.

:func:`hw.vector.epilogue.output_fifo` and :class:`~hw.dataflow.credit_link.CreditLink` count the beats
they send against the FIFO's depth, so a write never finds the FIFO full. Amaranth's
:class:`~amaranth.lib.fifo.SyncFIFOBuffered` still gates every write with its level (the write enable
of every distributed-RAM cell of a 150-bit beat became a LUT of the level, placed across the die from
those cells on the ECP5 shell), and its registered head loads under an enable computed from the
consumer's ``r_en`` (one net to every bit of the beat, 155 to 273 sinks, with logic at both ends).

:class:`LandingFifo` writes on ``w_en`` alone: the write enable is the writer's own signal (a pipeline's
valid flip-flop). The head is the distributed RAM's asynchronous read at the read pointer, so ``r_en``
only steps the pointer and the level; ``r_rdy`` is a flip-flop. An entry is readable the cycle after it
is written (:data:`LATENCY`), one cycle sooner than through ``SyncFIFOBuffered``.
"""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from ..params import check_int

__all__ = ["LandingFifo", "LATENCY", "ring_step"]

#: Cycles from ``w_en`` to ``r_rdy`` for that entry (in an empty FIFO).
LATENCY = 1
#: Deepest FIFO whose ``r_rdy`` comes from a thermometer of its level (one flip-flop per entry).
_THERMOMETER_MAX = 32


def ring_step(ptr, depth):
    """The next value of a FIFO pointer over ``depth`` entries: a power-of-two depth wraps by truncation
    (the pointer has exactly log2(depth) bits), any other at ``depth - 1``."""
    return ptr + 1 if depth & (depth - 1) == 0 else Mux(ptr == depth - 1, 0, ptr + 1)


class LandingFifo(wiring.Component):
    """First-word-fall-through FIFO whose writer keeps count of its room (see the module docstring).

    Writing while the FIFO holds ``depth`` entries overwrites the oldest: the writer's count must make
    that impossible (``tests/test_landing_fifo.py`` checks both ends of the contract).

    Parameters
    ----------
    width : int
        Bits per entry.
    depth : int
        Entries (a distributed-RAM memory; any depth from 1).

    Attributes
    ----------
    w_data, w_en : In
        An entry written when ``w_en`` is high.
    r_data, r_rdy : Out
        The oldest entry, valid while ``r_rdy`` (a flip-flop) is high.
    r_en : In
        Takes the oldest entry when ``r_rdy`` is high.
    level : Out
        Entries held (a flip-flop).
    """

    def __init__(self, *, width, depth):
        self.width = check_int("width", width, 1, 1 << 16, "LandingFifo")
        self.depth = check_int("depth", depth, 1, 1 << 12, "LandingFifo")
        super().__init__({
            "w_data": In(width), "w_en": In(1),
            "r_data": Out(width), "r_rdy": Out(1), "r_en": In(1),
            "level": Out(range(depth + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        D = self.depth
        m.submodules.storage = storage = memory.Memory(shape=unsigned(self.width), depth=D, init=[])
        wp = storage.write_port()
        rp = storage.read_port(domain="comb")
        produce, consume = Signal(range(D)), Signal(range(D))

        m.d.comb += [wp.addr.eq(produce), wp.data.eq(self.w_data), wp.en.eq(self.w_en),
                     rp.addr.eq(consume), self.r_data.eq(rp.data)]
        with m.If(self.w_en):
            m.d.sync += produce.eq(ring_step(produce, D))
        take = self.r_rdy & self.r_en
        with m.If(take):
            m.d.sync += consume.eq(ring_step(consume, D))
        nxt = self.level + self.w_en - take
        m.d.sync += self.level.eq(nxt)
        if D > _THERMOMETER_MAX:
            m.d.sync += self.r_rdy.eq(nxt != 0)
            return m
        # r_rdy from a thermometer of the level (full[k]: more than k entries), shifted up by a write and
        # down by a read, rather than from the level's adder: the consumer's `r_en` arrives late (the read
        # arbiter's choice, 7.8 ns in, was 12.05 ns routed into a credit link's r_rdy through the adder's
        # carry chain on the ECP5 shell at 03db802).
        full = Signal(D, name="full")
        up, down = self.w_en & ~take, take & ~self.w_en
        for k in range(D):
            below = full[k - 1] if k else 1
            above = full[k + 1] if k + 1 < D else 0
            m.d.sync += full[k].eq(Mux(up, below, Mux(down, above, full[k])))
        m.d.comb += self.r_rdy.eq(full[0])
        return m
