"""A byte queue between a bus-word stream and a record parser: bus words in, a fixed-size header and
then fixed-size items out, any of them straddling bus words.

The EMBED unit (row scale, then ``lanes`` int16 values) and the parameter loader (36-byte header, then
``lanes`` int16 gains) read their DRAM records through it.
"""

from amaranth.hdl import Mux, Signal

__all__ = ["ByteQueue"]


class ByteQueue:
    """Registers and next-state logic of the queue, added to module ``m`` (not a component: its owner's
    state machine drives the strobes directly).

    Parameters
    ----------
    m : Module
    word : Value
        The incoming bus word (taken when ``push`` is high).
    word_bytes, head_bytes, item_bytes : int

    Attributes
    ----------
    q : Signal
        The bytes held, oldest at bit 0: ``q[:8 * head_bytes]`` is the header, ``q[:8 * item_bytes]`` the
        next item.
    have : Signal
        Bytes held.
    take_head, take_item, push : Signal
        Strobes from the owner: drop the header / drop an item (at most one of them), append ``word``.
    room : Value
        A bus word fits after this cycle's take.
    """

    def __init__(self, m, word, *, word_bytes, head_bytes, item_bytes):
        cap = word_bytes + max(item_bytes, head_bytes)
        self.q = Signal(8 * cap, name="bq_bytes")
        self.have = Signal(range(cap + 1), name="bq_have")
        self.take_head, self.take_item, self.push = Signal(), Signal(), Signal()
        taken = Signal(range(cap + 1), name="bq_taken")
        m.d.comb += taken.eq(Mux(self.take_head, head_bytes, 0) | Mux(self.take_item, item_bytes, 0))
        kept = Mux(self.take_head, self.q >> (8 * head_bytes), Mux(self.take_item, self.q >> (8 * item_bytes), self.q))
        at = Signal(range(cap + 1), name="bq_at")          # where a new word goes: after the bytes kept
        m.d.comb += at.eq(self.have - taken)
        self.room = at + word_bytes <= cap
        with m.If(self.push):
            m.d.sync += [self.q.eq(kept | (word << (at * 8))), self.have.eq(at + word_bytes)]
        with m.Else():
            m.d.sync += [self.q.eq(kept), self.have.eq(at)]

    def clear(self):
        """Statements that empty the queue (a later assignment in the owner wins over the update above):
        bytes left from the last record, which a read may run into, must not leak into the next."""
        return [self.q.eq(0), self.have.eq(0)]
