"""Online table build and signed lookup: the two small parts of the TLMM engine.

Formats and adder structure follow ``golden/tlmm.py`` (docs/tlmm-format.md), which defines them.
"""

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from golden.tlmm import GROUP_SIZE, INDEX_BITS, MAG_MASK, SIGN_SHIFT, TABLE_ENTRIES, TABLE_ENTRY_BITS

__all__ = ["TableBuilder", "SignedLookup", "ENTRY_SHAPE", "table_layout"]

ENTRY_SHAPE = signed(TABLE_ENTRY_BITS)


def table_layout():
    return data.ArrayLayout(ENTRY_SHAPE, TABLE_ENTRIES)


class TableBuilder(wiring.Component):
    """Builds the 14-entry tables of ``groups`` activation groups (combinational, 10 adders per table).

    Stage 1 forms ``p = b1 + b2`` and ``q = b1 - b2``, giving ``L = [0, b2, q, b1, p]``; stage 2 forms
    ``entry[9 + j] = b0 + L[j]`` and ``entry[9 - j] = b0 - L[j]``; entries 0..4 are ``L`` itself.

    Parameters
    ----------
    groups : int
        Number of activation groups (tables) built at once, T.
    """

    def __init__(self, groups):
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive integer, got {groups!r}")
        self.groups = groups
        super().__init__({
            "x": In(data.ArrayLayout(signed(8), GROUP_SIZE * groups)),
            "tables": Out(data.ArrayLayout(table_layout(), groups)),
        })

    def elaborate(self, platform):
        m = Module()
        for t in range(self.groups):
            b0, b1, b2 = (self.x[GROUP_SIZE * t + i] for i in range(GROUP_SIZE))
            low = [0, b2, b1 - b2, b1, b1 + b2]
            entries = list(low) + [None] * (TABLE_ENTRIES - len(low))
            for j in range(len(low)):
                entries[9 + j] = b0 + low[j]
                if j:
                    entries[9 - j] = b0 - low[j]
            for e, value in enumerate(entries):
                m.d.comb += self.tables[t][e].eq(value)
        return m


class SignedLookup(wiring.Component):
    """Looks up one 5-bit TL2 index in one table: ``-table[mag]`` if the sign bit is set, else ``table[mag]``.

    Magnitudes 14 and 15 are never produced by the packer (the golden model rejects them); here they
    read as 0 so a corrupt word cannot produce anything larger than a valid lookup.
    """

    def __init__(self):
        super().__init__({
            "table": In(table_layout()),
            "index": In(unsigned(INDEX_BITS)),
            "value": Out(ENTRY_SHAPE),
        })

    def elaborate(self, platform):
        m = Module()
        mag = self.index & MAG_MASK
        entry = lookup_entry(m, self.table, mag)
        with m.If(self.index[SIGN_SHIFT]):
            m.d.comb += self.value.eq(-entry)
        with m.Else():
            m.d.comb += self.value.eq(entry)
        return m


def lookup_entry(m, table, mag):
    """A 14:1 multiplexer of table entries selected by ``mag`` (0 for 14 and 15)."""
    entry = Signal(ENTRY_SHAPE)
    with m.Switch(mag):
        for e in range(TABLE_ENTRIES):
            with m.Case(e):
                m.d.comb += entry.eq(table[e])
        with m.Default():
            m.d.comb += entry.eq(0)
    return entry
