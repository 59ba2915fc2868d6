"""Width converter from DRAM bus words to TLMM weight words.

The weight words of a matrix are packed back to back in DRAM (``5*T*N`` bits each, little-endian), so
a weight word may start in the middle of a bus word and span two or more of them: no DRAM bytes are
wasted on alignment. The gearbox treats its input as one little-endian bit stream and cuts it into
output words. A ``flush`` on an input word marks the end of a contiguous segment: its top ``pad`` bytes
are not data, and once fewer than a whole output word's bits remain, they are padding and are dropped,
so the next segment starts aligned. (``pad`` matters when an input word is wider than an output word:
then the padding after a segment's last output word can hold whole output words, which must not come
out.)
"""

from math import gcd

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..params import check_int

__all__ = ["Gearbox", "gearbox_input_layout"]


def gearbox_input_layout(in_bits):
    """``data``; ``flush`` ends a segment; ``pad``: bytes at the top of a flush word that are not data."""
    pad_bits = max(1, (in_bits // 8).bit_length())
    return data.StructLayout({"data": unsigned(in_bits), "flush": 1, "pad": unsigned(pad_bits)})


class Gearbox(wiring.Component):
    """Repack a stream of ``in_bits`` words into a stream of ``out_bits`` words, one of each per cycle.

    Bits are held in a register of ``in_bits + out_bits`` bits, filled from the bottom (the oldest bit
    at bit 0). Every cycle the gearbox can both move a whole output word into the output register and
    append one input word, so it sustains one input word per cycle and one output word per cycle.

    Parameters
    ----------
    in_bits, out_bits : int
        Input and output widths, multiples of 8. Positions inside the register are multiples of
        ``gcd(in_bits, out_bits)``, so placing an input word is a multiplexer over that many positions.
        A flush word's data bits (``in_bits - 8 * pad``) must be a multiple of that unit, which holds
        when the segment is whole output words read as whole input words.

    Attributes
    ----------
    i : In(stream.Signature(gearbox_input_layout(in_bits)))
    o : Out(stream.Signature(unsigned(out_bits)))
    """

    def __init__(self, in_bits, out_bits):
        self.in_bits = check_int("in_bits", in_bits, 1, 1 << 16, "Gearbox")
        self.out_bits = check_int("out_bits", out_bits, 1, 1 << 16, "Gearbox")
        if in_bits % 8 or out_bits % 8:
            raise ValueError(f"Gearbox: widths must be whole bytes, got {in_bits} and {out_bits} bits")
        super().__init__({
            "i": In(stream.Signature(gearbox_input_layout(in_bits))),
            "o": Out(stream.Signature(unsigned(out_bits))),
        })

    def elaborate(self, platform):
        m = Module()
        D, W = self.in_bits, self.out_bits
        if W % D == 0 and W > D:
            return self._elaborate_whole_words(m)
        unit = gcd(D, W)
        units = (D + W) // unit

        held = Signal(D + W)
        fill = Signal(range(units + 1))        # valid bits in `held`, in units of gcd(D, W)
        flushing = Signal()                    # a flush word went in: drop the tail once < W bits remain

        # Take an output word when one is complete and the output register is free.
        take = Signal()
        m.d.comb += take.eq((fill >= W // unit) & (~self.o.valid | self.o.ready))
        fill1 = Signal.like(fill)
        held1 = Signal.like(held)
        m.d.comb += [
            fill1.eq(Mux(take, fill - W // unit, fill)),
            held1.eq(Mux(take, held >> W, held)),
        ]
        drop = Signal()
        m.d.comb += drop.eq(flushing & (fill1 < W // unit))
        fill2 = Signal.like(fill)
        held2 = Signal.like(held)
        m.d.comb += [
            fill2.eq(Mux(drop, 0, fill1)),
            held2.eq(Mux(drop, 0, held1)),
        ]

        # Append an input word above the bits held, if it fits.
        m.d.comb += self.i.ready.eq((~flushing | drop) & (fill2 <= W // unit))
        accept = Signal()
        m.d.comb += accept.eq(self.i.valid & self.i.ready)
        # Units a flush word adds: its data bits, without the padding bytes at its top. Bits above
        # `fill` are ignored and, after a flush, cleared by the drop before any new word is placed.
        pad_units = Signal(range(D // unit + 1))
        with m.Switch(self.i.payload.pad):
            for b in range(1, D // 8):
                with m.Case(b):
                    m.d.comb += pad_units.eq(8 * b // unit)
        added = Signal(range(D // unit + 1))
        m.d.comb += added.eq(D // unit - Mux(self.i.payload.flush, pad_units, 0))
        placed = Signal(D + W)
        with m.Switch(fill2):
            for k in range(W // unit + 1):
                with m.Case(k):
                    m.d.comb += placed.eq(self.i.payload.data << (k * unit))
        with m.If(accept):
            m.d.sync += [
                held.eq(held2 | placed),
                fill.eq(fill2 + added),
                flushing.eq(self.i.payload.flush),
            ]
        with m.Else():
            m.d.sync += [
                held.eq(held2),
                fill.eq(fill2),
                flushing.eq(flushing & ~drop),
            ]

        with m.If(take):
            m.d.sync += [self.o.payload.eq(held[:W]), self.o.valid.eq(1)]
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        return m

    def _elaborate_whole_words(self, m):
        """An output word of exactly ``n = out_bits / in_bits`` input words (32-bit SDRAM words into the
        LINEAR unit's weight and row-scale words): a shift register of ``n - 1`` words and a count, where
        the general form needs a multiplexer placing each word at any position. Segments start aligned,
        so a flush word either completes an output word or ends a partial one, which is dropped (a flush
        word's ``pad`` is always whole words of the general form's unit here: it carries no data)."""
        D, W = self.in_bits, self.out_bits
        n = W // D
        held = Signal(W - D)                   # the words so far, the newest at the top
        count = Signal(range(n))               # words held
        completes = count == n - 1
        m.d.comb += self.i.ready.eq(~completes | ~self.o.valid | self.o.ready)
        accept = self.i.valid & self.i.ready
        data = self.i.payload.data
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        # The output register loads whenever a word would complete, valid or not (it is free then: empty,
        # or read in this cycle), so its enable leaves out the producer's `valid`. The LM head's row-scale
        # valid comes through the LINEAR unit's LOGITS multiplexer, 6 ns of route away on the ECP5 shell
        # at 183e789.
        with m.If(self.i.ready & completes):
            m.d.sync += self.o.payload.eq(Cat(held, data))
        with m.If(accept):
            with m.If(completes):
                m.d.sync += [self.o.valid.eq(1), count.eq(0)]
            with m.Elif(self.i.payload.flush):
                m.d.sync += count.eq(0)
            with m.Else():
                m.d.sync += [held.eq(Cat(held[D:], data)), count.eq(count + 1)]
        return m

