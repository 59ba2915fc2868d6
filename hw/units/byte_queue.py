"""A byte queue between a bus-word stream and a record parser: bus words in, a fixed-size header and
then fixed-size items out, any of them straddling bus words.

The EMBED unit (row scale, then ``lanes`` int16 values) and the parameter loader (36-byte header, then
``lanes`` int16 gains) read their DRAM records through it.
"""

from math import gcd

from amaranth.hdl import Cat, Const, Mux, Signal

__all__ = ["ByteQueue"]


class ByteQueue:
    """Registers and next-state logic of the queue, added to module ``m`` (not a component: its owner's
    state machine drives the strobes directly).

    Every amount the queue moves (a bus word in, a header or an item out) is a whole number of units of
    ``gcd(word_bytes, head_bytes, item_bytes)`` bytes, so the queue is kept as slots of one unit: a slot
    keeps its bytes, takes those of the slot a header or an item further on, or takes its part of the
    incoming word, a multiplexer of a few inputs per bit. (A byte-granular shifter of the word into the
    queue cost 2,409 LUT4 in the parameter loader on ECP5, and its select net was a late path.)

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
        next item. Bytes beyond those held are undefined.
    take_head, take_item, push : Signal
        Strobes from the owner: drop the header / drop an item (at most one of them), append ``word``.
    clear : Signal
        Strobe from the owner: empty the queue (no take or push in the same cycle).
    room : Value
        A bus word fits even without this cycle's take: a flip-flop. (With the take counted in, the
        parameter loader's ``ready`` ran through the item count compare, the take and a subtraction
        before it reached the queue's 300 slot multiplexers: 14.5 ns placed paths on the ECP5 shell at
        7543e99. The queue has room for a word plus the larger of a header and an item, so a word still
        enters whenever no more than one such record is held.)

    Every compare of the count (``room``, :meth:`holds`, and where an incoming word lands) is a
    flip-flop (a thermometer, shifted by what each cycle moves), so the slot multiplexers' selects are
    the owner's strobes and flip-flops: comparing the count after the strobes took the parameter
    loader's state through five levels of logic into the 320 slot multiplexers (14.4 ns placed on the
    ECP5 shell at 183e789).
    """

    def __init__(self, m, word, *, word_bytes, head_bytes, item_bytes):
        unit = gcd(word_bytes, head_bytes, item_bytes)
        cap = word_bytes + max(item_bytes, head_bytes)          # a multiple of the unit
        slots, per_word = cap // unit, word_bytes // unit
        head_u, item_u = head_bytes // unit, item_bytes // unit
        ub = 8 * unit                                           # bits per slot
        self.q = Signal(8 * cap, name="bq_bytes")
        self.take_head, self.take_item, self.push = Signal(), Signal(), Signal()
        self.clear = Signal()
        self._unit, self._slots = unit, slots
        have_u = Signal(range(slots + 1), name="bq_have_units")  # bytes held, in units
        at = Signal(range(slots + 1), name="bq_at")             # where a new word goes, in units
        have_nx = Signal(range(slots + 1), name="bq_have_next")
        m.d.comb += [at.eq(have_u - Mux(self.take_head, head_u, 0) - Mux(self.take_item, item_u, 0)),
                     have_nx.eq(Mux(self.clear, 0, at + Mux(self.push, per_word, 0)))]
        m.d.sync += have_u.eq(have_nx)
        # The count as a thermometer of flip-flops, `le[c]`: no more than c units held. (Made here, for
        # every count: a flag made when the owner first asks would be updated only under the owner's
        # conditions at that point.)
        #
        # The next flags are the present ones shifted by the units this cycle moves, not compares of the
        # next count: (held - taken + pushed <= c) is (held <= c + taken - pushed). A compare put the
        # count's subtraction and add in front of them (the parameter loader's strobes, then four levels
        # into `bq_le`: 11.45 ns placed on the ECP5 shell at cdbee47, 135 late endpoints).
        self._le = [Signal(name=f"bq_le{c}", init=1) for c in range(slots)]

        def le_at(c):
            return Const(0) if c < 0 else self._at_most(c)

        for c, flag in enumerate(self._le):
            # After taking `taken` units: with a word pushed, or without.
            head, item, none = (Mux(self.push, le_at(c + taken - per_word), le_at(c + taken))
                                for taken in (head_u, item_u, 0))
            m.d.sync += flag.eq(self.clear | Mux(self.take_head, head, Mux(self.take_item, item, none)))
        self.room = self._at_most(slots - per_word)

        def slot(j):
            return self.q[ub * j:ub * (j + 1)] if j < slots else 0

        new = []
        for j in range(slots):
            kept = Mux(self.take_head, slot(j + head_u), Mux(self.take_item, slot(j + item_u), slot(j)))
            # The incoming word's part j - at lands here when 0 <= j - at < per_word; slots further on
            # take a part too (the index truncated), but they are beyond the bytes held, which nothing reads.
            # at <= j is have_u <= j + (the units taken), from flags registered beside the count.
            hit = self.push & Mux(self.take_head, self._at_most(j + head_u),
                                  Mux(self.take_item, self._at_most(j + item_u), self._at_most(j)))
            if per_word == 1:
                part = word
            else:
                idx = Signal(range(per_word), name=f"bq_part{j}")
                m.d.comb += idx.eq(j - at)                  # the part's index when `hit` (truncated)
                part = word.word_select(idx, ub)
            new.append(Mux(hit, part, kept))
        # Emptied on `clear`: bytes left from the last record, which a read may run into, must not leak
        # into the next.
        m.d.sync += self.q.eq(Mux(self.clear, 0, Cat(*new)))

    def _at_most(self, units):
        """No more than ``units`` units are held (a flip-flop)."""
        return Const(1) if units >= self._slots else self._le[units]

    def holds(self, nbytes):
        """At least ``nbytes`` bytes are held (a flip-flop)."""
        units = -(-nbytes // self._unit)
        return Const(1) if units <= 0 else ~self._at_most(units - 1)
