"""A block-RAM FIFO read through the block RAM's output register, for a writer that keeps count of its room.

Amaranth's :class:`~amaranth.lib.fifo.SyncFIFOBuffered` hands the block RAM's read data straight to its
consumer. On ECP5 that is the DP16KD's 5.8 ns clock-to-out, and the AXI readers then put a register slice's
multiplexer before the first flip-flop: 11-12 ns placed paths from every reader's buffer (the weights,
parameters, embedding and attention readers: about 130 endpoints over 10 ns at 1fe27f9).

:class:`BlockRamFifo` reads its storage ahead into a small distributed-RAM FIFO at its output. A read is
issued from flip-flops alone (the storage holds a word, and the output FIFO has room for it and for every
word in flight); the word leaves the block RAM into a plain register, which the ECP5 flow moves into the
block RAM's own output register (:mod:`hw.bram_output_registers`), and lands in the output FIFO a cycle
later. Its room is counted as :func:`~hw.vector.epilogue.output_fifo` counts it, with the consumer's reads
counted a cycle late, so no ``ready`` reaches the block RAM's address or the read-issue logic in the same
cycle. It moves a word per cycle; a word written is readable four cycles later (:data:`LATENCY`).

The writer must never write more than ``depth`` words that have not been read (an AXI reader's credits
guarantee it); the storage is then never written at the word being read, so it has no collision bypass
(:mod:`hw.collision`; checked in simulation).
"""

from amaranth.hdl import Module, Shape, Signal, Value, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..collision import assert_no_collision, collision_free_memory
from ..dataflow.landing_fifo import ring_step
from ..params import check_int
from ..vector.epilogue import FIFO_LATENCY, output_fifo

__all__ = ["BlockRamFifo", "LATENCY", "registered_read"]

#: Cycles from the read issue to the word's landing in the output FIFO: the block RAM, then its register.
_READ_STAGES = 2
#: Cycles from a word's write to its ``o.valid`` in an empty FIFO: the storage's count, the read stages,
#: the output FIFO.
LATENCY = 1 + _READ_STAGES + FIFO_LATENCY


class BlockRamFifo(wiring.Component):
    """First-word-fall-through FIFO in block RAM with a registered read (see the module docstring).

    Parameters
    ----------
    shape : shape-like
        The words' shape (a layout, say): ``o.payload`` has it.
    depth : int
        Words the writer may have written and not yet seen read (2..2^20); the block RAM holds that many,
        the output FIFO a few more in flight.

    Attributes
    ----------
    w_data, w_en : In
        A word written when ``w_en`` is high (never beyond ``depth`` unread words).
    o : Out(stream.Signature(shape))
        The oldest word; ``valid`` is a flip-flop, the payload a distributed-RAM read.
    """

    def __init__(self, shape, *, depth):
        self.shape = shape
        self.width = Shape.cast(shape).width
        self.depth = check_int("depth", depth, 2, 1 << 20, "BlockRamFifo")
        super().__init__({"w_data": In(shape), "w_en": In(1), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        D = self.depth
        m.submodules.storage = storage = collision_free_memory(shape=unsigned(self.width), depth=D)
        wp, rp = storage.write_port(), storage.read_port()
        w_ptr, r_ptr = Signal(range(D)), Signal(range(D))

        # Words in the block RAM and not yet issued, and whether there is one (a flip-flop).
        held, holds = Signal(range(D + 1)), Signal()
        take = Signal(init=1)                  # the output FIFO has room for one more word in flight
        issue = Signal()
        m.d.comb += issue.eq(holds & take)
        held_next = held + self.w_en - issue
        m.d.sync += [held.eq(held_next), holds.eq(held_next != 0)]
        m.d.comb += [wp.addr.eq(w_ptr), wp.data.eq(Value.cast(self.w_data)), wp.en.eq(self.w_en),
                     rp.addr.eq(r_ptr)]
        with m.If(self.w_en):
            m.d.sync += w_ptr.eq(ring_step(w_ptr, D))
        with m.If(issue):
            m.d.sync += r_ptr.eq(ring_step(r_ptr, D))
        assert_no_collision(m, platform, wp, rp, issue, "block RAM FIFO")

        registered_read(m, take, issue, rp.data, self.o, self.shape, back=1)
        return m


def registered_read(m, take, issue, data, o, shape=None, *, back=0):
    """A synchronous block RAM read landing in an output FIFO (:func:`~hw.vector.epilogue.output_fifo`)
    that drives the stream ``o``: the block RAM's ``data``, then a plain register (its output register on
    ECP5, :mod:`hw.bram_output_registers`), then the FIFO. ``issue`` is high in the cycle the read's address
    is at the block RAM, and only while ``take`` (a ``Signal(init=1)``, driven here) is high; ``back`` as
    in :func:`~hw.vector.epilogue.output_fifo`. A read reaches ``o.valid`` :data:`LATENCY` - 1 cycles after
    its issue. ``shape`` (default: ``data``'s) is the payload's."""
    issued, landing = Signal(), Signal()
    word = Signal(len(data), reset_less=True)
    m.d.sync += [issued.eq(issue), landing.eq(issued), word.eq(data)]
    beat = Signal(Value.cast(data).shape() if shape is None else shape)
    m.d.comb += Value.cast(beat).eq(word)
    output_fifo(m, take, issue, landing, beat, o, _READ_STAGES, back=back)
