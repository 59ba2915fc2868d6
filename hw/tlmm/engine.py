"""The table-lookup ternary matmul (TLMM) engine.

Per cycle the engine takes one *act step* (the 3T activations of one k-step of one token, plus control
flags) and applies the current *weight word* (5-bit TL2 indices for N lanes x T tables) to it:

    sum_n  = sum_t  lookup(table_t(x), index[n][t])            T lookups + adder tree per lane
    acc[token][n] = (0 if first else acc[token][n]) + (-1)^negate * (sum_n << shift)

and emits the N sums of a token on the ``sums`` stream after a step with ``last`` set. A weight word
stays at the head of the ``weights`` stream until a step with ``release`` set, so one word read from the
weight buffer serves every token of a prefill chunk (one table set per token) and, for int-k weights,
every bit plane re-sends the same activations with a different ``shift``/``negate``.

Pipeline (free-running: every stage loads on every clock edge; the sums land in an output FIFO, and a
step is taken only while that FIFO has room for every sum in flight, so a not-ready ``sums`` consumer
stalls the inputs, never the pipeline; the engine sustains one step per cycle)::

    A: inputs   B: tables   C: lookups   D*: adder tree (registered every 2 levels)
    P: shift/negate, accumulator read   Q: accumulate, write back   O: output register   FIFO (2 cycles)

The accumulator read port is transparent for the write port, so a token updated on consecutive cycles
(decode, M = 1) reads the value written in the same cycle.
"""

from amaranth.hdl import Const, Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.tlmm import INDEX_BITS, MAG_MASK, SIGN_SHIFT, TABLE_ENTRY_BITS

from .layouts import act_step_layout, sums_layout
from .reduce import reduce_and_accumulate, tree_stages
from .tables import TableBuilder, lookup_entry, table_layout

from ..params import check_int
from ..vector.epilogue import FIFO_LATENCY, output_fifo

__all__ = ["TlmmEngine"]


class TlmmEngine(wiring.Component):
    """Table-lookup ternary matmul engine, II = 1.

    Parameters
    ----------
    tables : int
        T, activation groups (of 3) looked up per lane per cycle.
    lanes : int
        N, output rows computed in parallel.
    acc_bits : int
        Accumulator width (32 covers K < 2^24/128 for ternary, see ``golden.tlmm.max_k_for_acc``).
    max_tokens : int
        Accumulator slots: the most tokens one weight word can serve (prefill chunk per tile).

    Attributes
    ----------
    weights : In(stream.Signature(unsigned(5*T*N)))
        Weight words in the packed layout of ``golden.tlmm`` (lane n, table t at bit 5*(n*T + t)).
    acts : In(stream.Signature(act_step_layout(T, max_tokens)))
    sums : Out(stream.Signature(sums_layout(N, acc_bits, max_tokens)))
    """

    def __init__(self, tables, lanes, *, acc_bits=32, max_tokens=16):
        self.tables = check_int("tables", tables, 1, 64)
        self.lanes = check_int("lanes", lanes, 1, 64)
        self.acc_bits = check_int("acc_bits", acc_bits, 16, 64)
        self.max_tokens = check_int("max_tokens", max_tokens, 1, 4096)
        self.act_layout = act_step_layout(tables, max_tokens)
        self.sums_layout = sums_layout(lanes, acc_bits, max_tokens)
        super().__init__({
            "weights": In(stream.Signature(unsigned(INDEX_BITS * tables * lanes))),
            "acts": In(stream.Signature(self.act_layout)),
            "sums": Out(stream.Signature(self.sums_layout)),
        })

    @property
    def macs_per_cycle(self):
        return 3 * self.tables * self.lanes

    @property
    def latency(self):
        """Cycles from an accepted step to its sum appearing on ``sums`` (without stalls): the pipeline's
        stages and the output FIFO's two."""
        return 6 + tree_stages(self.tables) + FIFO_LATENCY

    def elaborate(self, platform):
        m = Module()
        T, N = self.tables, self.lanes
        ctrl_layout = data.StructLayout({"slot": self.act_layout["token"].shape,
                                         **{k: self.act_layout[k].shape for k in ("first", "last", "shift", "negate")}})

        # Free-running: every stage loads on every clock edge (one enable net reached all of the engine's
        # 2,400 flip-flops, across the die on ECP5). A step enters only while the output FIFO has room
        # for its sums and every sum ahead of it (``take``, a flip-flop).
        en = Const(1)
        take = Signal(init=1)
        m.d.comb += self.acts.ready.eq(take & self.weights.valid)
        fire = Signal()
        m.d.comb += fire.eq(self.acts.valid & self.acts.ready)
        m.d.comb += self.weights.ready.eq(fire & self.acts.payload.release)

        def stage(name, shape, value):
            """A register stage loaded with ``value`` on every clock edge."""
            reg = Signal(shape, name=name)
            m.d.sync += reg.eq(value)
            return reg

        def ctrl_of(payload):
            return {"slot": payload.token, **{k: payload[k] for k in ("first", "last", "shift", "negate")}}

        # A: register the inputs.
        a_valid = stage("a_valid", 1, fire)
        a_x = stage("a_x", self.act_layout["x"].shape, self.acts.payload.x)
        a_word = stage("a_word", unsigned(INDEX_BITS * T * N), self.weights.payload)
        a_ctrl = Signal(ctrl_layout, name="a_ctrl")
        for k, v in ctrl_of(self.acts.payload).items():
            m.d.sync += a_ctrl[k].eq(v)

        # B: build the T tables of this token's k-step.
        m.submodules.tables = builder = TableBuilder(T)
        m.d.comb += builder.x.eq(a_x)
        b_valid = stage("b_valid", 1, a_valid)
        b_tables = stage("b_tables", data.ArrayLayout(table_layout(), T), builder.tables)
        b_word = stage("b_word", unsigned(INDEX_BITS * T * N), a_word)
        b_ctrl = stage("b_ctrl", ctrl_layout, a_ctrl)

        # C: N x T lookups as (term, carry) leaves: a negative lookup (index sign, or the step's
        # negated bit plane) is its one's complement plus a carry that a tree adder absorbs.
        c_valid = stage("c_valid", 1, b_valid)
        c_ctrl = stage("c_ctrl", ctrl_layout, b_ctrl)
        lanes = []
        for n in range(N):
            terms = []
            for t in range(T):
                index = b_word[INDEX_BITS * (n * T + t):INDEX_BITS * (n * T + t + 1)]
                entry = lookup_entry(m, b_tables[t], index & MAG_MASK)
                negative = index[SIGN_SHIFT] ^ b_ctrl.negate
                terms.append((stage(f"c_{n}_{t}", signed(TABLE_ENTRY_BITS), entry),
                              stage(f"c_neg_{n}_{t}", 1, negative)))
            lanes.append(terms)
        sums = stream.Signature(self.sums_layout).create(path=("raw",))
        reduce_and_accumulate(m, en, c_valid, (c_ctrl.slot, c_ctrl.first, c_ctrl.last, c_ctrl.shift), lanes,
                              acc_bits=self.acc_bits, depth=self.max_tokens, sums=sums)
        # Only a step with `last` makes a sum: those are the beats the FIFO is owed. Reads are counted a
        # cycle late (one FIFO entry more): the consumer's ready is the fused core's sums slice, placed
        # across the die, and it went into the count's adder and on to `take` (11.49 ns placed on the
        # ECP5 shell at ba6d29e, 9.89 ns at e8c64fe). Steps are counted a cycle late too (`lag`): `last`
        # comes from the acts link's distributed-RAM read, and from there to `take` through the adder was
        # 10.23 ns routed at 03db802.
        output_fifo(m, take, fire & self.acts.payload.last, sums.valid, sums.payload, self.sums,
                    self.latency - FIFO_LATENCY, back=1, lag=1)
        return m
