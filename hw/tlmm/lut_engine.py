"""Table-stationary TLMM engine: tables in distributed RAM, reused across many weight words.

On LUT4 fabrics the cost of the TLMM is the per-lane lookup. A 14:1 multiplexer of 10-bit entries maps
to about 155 LUT4, but an asynchronous-read distributed RAM (ECP5 DPR16X4: 16 x 4 bits) holds a table
for about 18 LUT4-equivalents per lane. A RAM is written one entry per cycle, so this engine keeps a
table set resident while a whole run of weight words streams past it:

* ``acts`` delivers one table set: the 3T activations of one k-step of one token. The engine computes
  entry e of each table from the digits of e (``golden.tlmm.MAG_TO_TRITS``) and writes it into every
  lane's copy, one entry per cycle (14 cycles).
* ``weights`` then delivers words, each with its accumulator ``slot`` and ``first``/``last``/
  ``shift``/``negate`` flags, exactly as in :class:`~hw.tlmm.engine.TlmmEngine`. A word with ``done``
  set is the last one for the current table set, and the next ``acts`` transfer refills the tables.

Decode streams, per k-step, every row tile's word against one table set (slot = row tile). Prefill
replays a row block's words per token from a small word cache (slot = token x tile), so the weight
buffer itself is still read once per chunk. The fill costs 14 cycles per table set; the engine otherwise
accepts one word per cycle.
"""

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.tlmm import GROUP_SIZE, INDEX_BITS, MAG_MASK, MAG_TO_TRITS, SIGN_SHIFT, TABLE_ENTRIES, TABLE_ENTRY_BITS

from .layouts import SHIFT_BITS, sums_layout, token_bits
from .reduce import reduce_and_accumulate, tree_stages

from ..params import check_int

__all__ = ["TlmmLutEngine", "word_step_layout"]

#: Table RAM depth (the 14 entries use addresses 0..13).
TABLE_DEPTH = 16


def word_step_layout(tables, lanes, slots):
    """A weight word with its accumulation control (see the module docstring)."""
    return data.StructLayout({
        "word": unsigned(INDEX_BITS * tables * lanes),
        "slot": unsigned(token_bits(slots)),
        "first": 1,
        "last": 1,
        "shift": unsigned(SHIFT_BITS),
        "negate": 1,
        "done": 1,
    })


class TlmmLutEngine(wiring.Component):
    """Table-lookup ternary matmul engine with table-stationary distributed-RAM tables.

    Parameters
    ----------
    tables, lanes : int
        T and N, as for :class:`~hw.tlmm.engine.TlmmEngine`.
    acc_bits : int
        Accumulator width.
    slots : int
        Accumulator slots (row tiles x tokens held on chip at once).
    """

    def __init__(self, tables, lanes, *, acc_bits=32, slots=64):
        self.tables = check_int("tables", tables, 1, 64)
        self.lanes = check_int("lanes", lanes, 1, 64)
        self.acc_bits = check_int("acc_bits", acc_bits, 16, 64)
        self.slots = check_int("slots", slots, 1, 65536)
        self.word_layout = word_step_layout(tables, lanes, slots)
        super().__init__({
            "acts": In(stream.Signature(data.ArrayLayout(signed(8), GROUP_SIZE * tables))),
            "weights": In(stream.Signature(self.word_layout)),
            "sums": Out(stream.Signature(sums_layout(lanes, acc_bits, slots))),
        })

    @property
    def macs_per_cycle(self):
        return 3 * self.tables * self.lanes

    @property
    def fill_cycles(self):
        """Cycles between accepting a table set and accepting its first word."""
        return TABLE_ENTRIES + 1

    @property
    def latency(self):
        return 5 + tree_stages(self.tables)

    def elaborate(self, platform):
        m = Module()
        T, N = self.tables, self.lanes
        ctrl_layout = data.StructLayout({k: self.word_layout[k].shape
                                         for k in ("slot", "first", "last", "shift", "negate")})

        en = Signal()
        m.d.comb += en.eq(~self.sums.valid | self.sums.ready)

        def stage(name, shape, value):
            reg = Signal(shape, name=name)
            with m.If(en):
                m.d.sync += reg.eq(value)
            return reg

        # Table fill: latch a table set, then write entry e = d0*b0 + d1*b1 + d2*b2 (the balanced-ternary
        # digits of e) into every lane's RAM, one entry per cycle: one small adder path per table.
        x_reg = Signal.like(self.acts.payload)
        fill_addr = Signal(range(TABLE_DEPTH))
        writing = Signal()
        entry = [Signal(signed(TABLE_ENTRY_BITS), name=f"fill_entry_{t}") for t in range(T)]
        digits = [Signal(signed(2), name=f"digit_{i}") for i in range(GROUP_SIZE)]
        with m.Switch(fill_addr):
            for e in range(TABLE_ENTRIES):
                with m.Case(e):
                    m.d.comb += [digits[i].eq(int(MAG_TO_TRITS[e][i])) for i in range(GROUP_SIZE)]
        for t in range(T):
            terms = []
            for i in range(GROUP_SIZE):
                b = x_reg[GROUP_SIZE * t + i]
                term = Signal(signed(9), name=f"fill_term_{t}_{i}")
                with m.Switch(digits[i]):
                    with m.Case(1):
                        m.d.comb += term.eq(b)
                    with m.Case(-1):
                        m.d.comb += term.eq(-b)
                terms.append(term)
            m.d.comb += entry[t].eq(terms[0] + terms[1] + terms[2])

        a_valid = Signal()
        # A word still waiting in stage A reads the RAM until it moves on: hold writes until then.
        can_write = Signal()
        m.d.comb += can_write.eq(~a_valid | en)

        word_fire = Signal()
        with m.FSM(name="tables"):
            with m.State("LOAD"):
                m.d.comb += self.acts.ready.eq(1)
                with m.If(self.acts.valid):
                    m.d.sync += [x_reg.eq(self.acts.payload), fill_addr.eq(0)]
                    m.next = "FILL"
            with m.State("FILL"):
                m.d.comb += writing.eq(can_write)
                with m.If(can_write):
                    m.d.sync += fill_addr.eq(fill_addr + 1)
                    with m.If(fill_addr == TABLE_ENTRIES - 1):
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.weights.ready.eq(en)
                m.d.comb += word_fire.eq(self.weights.valid & en)
                with m.If(word_fire & self.weights.payload.done):
                    m.next = "LOAD"

        # A: register the word and its control.
        with m.If(en):
            m.d.sync += a_valid.eq(word_fire)
        a_word = stage("a_word", unsigned(INDEX_BITS * T * N), self.weights.payload.word)
        a_ctrl = Signal(ctrl_layout, name="a_ctrl")
        with m.If(en):
            m.d.sync += [a_ctrl[k].eq(self.weights.payload[k]) for k in ctrl_layout.members]

        # One RAM per (table, lane), all written identically by the fill: a single read port each maps
        # one-to-one onto distributed RAM (with many read ports on one memory, Yosys falls back to
        # flip-flops and multiplexers).
        c_valid = stage("c_valid", 1, a_valid)
        c_ctrl = stage("c_ctrl", ctrl_layout, a_ctrl)
        lanes = []
        for n in range(N):
            terms = []
            for t in range(T):
                ram = memory.Memory(shape=signed(TABLE_ENTRY_BITS), depth=TABLE_DEPTH, init=[])
                m.submodules[f"table_{t}_{n}"] = ram
                wr = ram.write_port()
                m.d.comb += [wr.addr.eq(fill_addr), wr.data.eq(entry[t]), wr.en.eq(writing)]
                rd = ram.read_port(domain="comb")
                index = a_word[INDEX_BITS * (n * T + t):INDEX_BITS * (n * T + t + 1)]
                # Magnitudes 14 and 15 are never produced by the packer; they read RAM addresses 14
                # and 15, which are never written.
                m.d.comb += rd.addr.eq(index & MAG_MASK)
                negative = index[SIGN_SHIFT] ^ a_ctrl.negate
                terms.append((stage(f"c_{n}_{t}", signed(TABLE_ENTRY_BITS), rd.data),
                              stage(f"c_neg_{n}_{t}", 1, negative)))
            lanes.append(terms)
        reduce_and_accumulate(m, en, c_valid, (c_ctrl.slot, c_ctrl.first, c_ctrl.last, c_ctrl.shift), lanes,
                              acc_bits=self.acc_bits, depth=self.slots, sums=self.sums)
        return m
