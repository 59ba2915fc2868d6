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

On ECP5 (a platform with ``family == "ecp5"``, which is what :func:`hw.synth.synth_ecp5` passes) every
adder is a hand-placed carry chain (:mod:`hw.tlmm.ecp5_adder`) with the lookup signs, the fill's
digit signs and the last bit-plane shift level inside the carry cells' LUTs; any other platform (and
simulation) gets the same arithmetic in plain Amaranth.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.tlmm import GROUP_SIZE, INDEX_BITS, MAG_MASK, MAG_TO_TRITS, SIGN_SHIFT, TABLE_ENTRIES, TABLE_ENTRY_BITS

from .layouts import SHIFT_BITS, sums_layout, token_bits
from .ecp5_adder import Adders, carry_target
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
        # digits of e) into every lane's RAM, one entry per cycle. The digits of the entry being written
        # live in flip-flops, as activations gated by "digit != 0" (the flip-flops' reset) and the signs
        # of d1, d2 (d0 is never -1): the write data is then two adders of the folded kind (sign in the
        # carry cells' LUTs), so the fill is never the critical path that the mapper speeds up at a cost.
        adders = Adders(carry_target(platform))
        x_reg = Signal.like(self.acts.payload)
        fill_addr = Signal(range(TABLE_DEPTH))
        writing = Signal()
        gated = [[Signal(signed(8), name=f"fill_b_{t}_{i}") for i in range(GROUP_SIZE)] for t in range(T)]
        neg = [Signal(name=f"fill_neg_{i}") for i in range(GROUP_SIZE)]
        next_nz = [Signal(name=f"fill_next_nz_{i}") for i in range(GROUP_SIZE)]
        next_neg = [Signal(name=f"fill_next_neg_{i}") for i in range(GROUP_SIZE)]
        with m.Switch(fill_addr):
            for e in range(TABLE_ENTRIES - 1):
                with m.Case(e):
                    m.d.comb += [next_nz[i].eq(int(MAG_TO_TRITS[e + 1][i]) != 0) for i in range(GROUP_SIZE)]
                    m.d.comb += [next_neg[i].eq(int(MAG_TO_TRITS[e + 1][i]) < 0) for i in range(GROUP_SIZE)]
        assert all(int(MAG_TO_TRITS[e][0]) >= 0 for e in range(TABLE_ENTRIES)), "d0 is 0 or 1"
        entry = []
        for t in range(T):
            g0, g1, g2 = gated[t]
            partial = adders.xor_add(m, f"fill_partial_{t}", g0, g1, neg[1], neg[1], 9)
            entry.append(adders.xor_add(m, f"fill_entry_{t}", partial, g2, neg[2], neg[2], TABLE_ENTRY_BITS))

        def next_digits(x):
            """Load the digit registers with entry fill_addr + 1 of activations ``x``."""
            return ([neg[i].eq(next_neg[i]) for i in range(GROUP_SIZE)]
                    + [gated[t][i].eq(Mux(next_nz[i], x[GROUP_SIZE * t + i], 0))
                       for t in range(T) for i in range(GROUP_SIZE)])

        a_valid = Signal()
        # A word still waiting in stage A reads the RAM until it moves on: hold writes until then.
        can_write = Signal()
        m.d.comb += can_write.eq(~a_valid | en)

        word_fire = Signal()
        with m.FSM(name="tables"):
            with m.State("LOAD"):
                m.d.comb += self.acts.ready.eq(1)
                with m.If(self.acts.valid):
                    # Entry 0 is 0: every digit 0.
                    m.d.sync += [x_reg.eq(self.acts.payload), fill_addr.eq(0)]
                    m.d.sync += [neg[i].eq(0) for i in range(GROUP_SIZE)]
                    m.d.sync += [gated[t][i].eq(0) for t in range(T) for i in range(GROUP_SIZE)]
                    m.next = "FILL"
            with m.State("FILL"):
                m.d.comb += writing.eq(can_write)
                with m.If(can_write):
                    m.d.sync += fill_addr.eq(fill_addr + 1)
                    m.d.sync += next_digits(x_reg)
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
        # On ECP5 the adders are hand-placed carry cells with the signs and the last shift level in their
        # LUTs; elsewhere (simulation) the same arithmetic in plain Amaranth.
        reduce_and_accumulate(m, en, c_valid, (c_ctrl.slot, c_ctrl.first, c_ctrl.last, c_ctrl.shift), lanes,
                              acc_bits=self.acc_bits, depth=self.slots, sums=self.sums,
                              adders=adders)
        return m
