"""The table-lookup ternary matmul (TLMM) engine.

Per cycle the engine takes one *act step* (the 3T activations of one k-step of one token, plus control
flags) and applies the current *weight word* (5-bit TL2 indices for N lanes x T tables) to it:

    sum_n  = sum_t  lookup(table_t(x), index[n][t])            T lookups + adder tree per lane
    acc[token][n] = (0 if first else acc[token][n]) + (-1)^negate * (sum_n << shift)

and emits the N sums of a token on the ``sums`` stream after a step with ``last`` set. A weight word
stays at the head of the ``weights`` stream until a step with ``release`` set, so one word read from the
weight buffer serves every token of a prefill chunk (one table set per token) and, for int-k weights,
every bit plane re-sends the same activations with a different ``shift``/``negate``.

Pipeline (all stages advance together; the only stall is a full output register facing a not-ready
``sums`` consumer, so the engine sustains one step per cycle)::

    A: inputs   B: tables   C: lookups   D*: adder tree (registered every 2 levels)
    P: shift/negate, accumulator read   Q: accumulate, write back   O: output register

The accumulator read port is transparent for the write port, so a token updated on consecutive cycles
(decode, M = 1) reads the value written in the same cycle.
"""

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.tlmm import INDEX_BITS, MAG_MASK, SIGN_SHIFT, TABLE_ENTRY_BITS

from .layouts import act_step_layout, sums_layout
from .tables import TableBuilder, lookup_entry, table_layout

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
        for name, value, lo, hi in (("tables", tables, 1, 64), ("lanes", lanes, 1, 64),
                                    ("acc_bits", acc_bits, 16, 64), ("max_tokens", max_tokens, 1, 4096)):
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
        self.tables = tables
        self.lanes = lanes
        self.acc_bits = acc_bits
        self.max_tokens = max_tokens
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
        """Cycles from an accepted step to its sum appearing on ``sums`` (without stalls)."""
        return 5 + len(self._tree_plan()) + 1

    def _tree_plan(self):
        """Number of adder levels between register stages: two levels per stage."""
        levels = max(0, (self.tables - 1).bit_length())
        return [min(2, levels - i) for i in range(0, levels, 2)]

    def elaborate(self, platform):
        m = Module()
        T, N = self.tables, self.lanes
        ctrl_layout = data.StructLayout({k: self.act_layout[k].shape
                                         for k in ("token", "first", "last", "shift", "negate")})

        # Global advance: everything moves unless the output register is full and not being taken.
        en = Signal()
        m.d.comb += en.eq(~self.sums.valid | self.sums.ready)
        m.d.comb += self.acts.ready.eq(en & self.weights.valid)
        fire = Signal()
        m.d.comb += fire.eq(self.acts.valid & self.acts.ready)
        m.d.comb += self.weights.ready.eq(fire & self.acts.payload.release)

        def stage(name, shape, value):
            """A register stage holding ``value`` when the pipeline advances."""
            reg = Signal(shape, name=name)
            with m.If(en):
                m.d.sync += reg.eq(value)
            return reg

        def ctrl_of(payload):
            return {k: payload[k] for k in ctrl_layout.members}

        # A: register the inputs.
        a_valid = stage("a_valid", 1, fire)
        a_x = stage("a_x", self.act_layout["x"].shape, self.acts.payload.x)
        a_word = stage("a_word", unsigned(INDEX_BITS * T * N), self.weights.payload)
        a_ctrl = Signal(ctrl_layout, name="a_ctrl")
        with m.If(en):
            for k, v in ctrl_of(self.acts.payload).items():
                m.d.sync += a_ctrl[k].eq(v)

        # B: build the T tables of this token's k-step.
        m.submodules.tables = builder = TableBuilder(T)
        m.d.comb += builder.x.eq(a_x)
        b_valid = stage("b_valid", 1, a_valid)
        b_tables = stage("b_tables", data.ArrayLayout(table_layout(), T), builder.tables)
        b_word = stage("b_word", unsigned(INDEX_BITS * T * N), a_word)
        b_ctrl = stage("b_ctrl", ctrl_layout, a_ctrl)

        # C: N x T signed lookups.
        c_valid = stage("c_valid", 1, b_valid)
        c_ctrl = stage("c_ctrl", ctrl_layout, b_ctrl)
        level = []
        for n in range(N):
            row = []
            for t in range(T):
                index = b_word[INDEX_BITS * (n * T + t):INDEX_BITS * (n * T + t + 1)]
                entry = lookup_entry(m, b_tables[t], index & MAG_MASK)
                value = Signal(signed(TABLE_ENTRY_BITS), name=f"lk_{n}_{t}")
                m.d.comb += value.eq(entry)
                with m.If(index[SIGN_SHIFT]):
                    m.d.comb += value.eq(-entry)
                row.append(stage(f"c_{n}_{t}", signed(TABLE_ENTRY_BITS), value))
            level.append(row)

        # D: adder tree per lane, registered every two levels.
        valid, ctrl = c_valid, c_ctrl
        for s, depth in enumerate(self._tree_plan()):
            for _ in range(depth):
                level = [[row[i] + row[i + 1] if i + 1 < len(row) else row[i] for i in range(0, len(row), 2)]
                         for row in level]
            width = TABLE_ENTRY_BITS + sum(self._tree_plan()[:s + 1])
            level = [[stage(f"d{s}_{n}_{i}", signed(width), v) for i, v in enumerate(row)]
                     for n, row in enumerate(level)]
            valid = stage(f"d{s}_valid", 1, valid)
            ctrl = stage(f"d{s}_ctrl", ctrl_layout, ctrl)
        lane_sums = [row[0] for row in level]

        # P: apply the bit-plane weight; issue the accumulator read for this step's token.
        acc_shape = signed(self.acc_bits)
        p_valid = stage("p_valid", 1, valid)
        p_ctrl = stage("p_ctrl", ctrl_layout, ctrl)
        p_contrib = []
        for n, v in enumerate(lane_sums):
            shifted = Signal(acc_shape, name=f"shifted_{n}")
            m.d.comb += shifted.eq(v << ctrl.shift)
            with m.If(ctrl.negate):
                m.d.comb += shifted.eq(-(v << ctrl.shift))
            p_contrib.append(stage(f"p_{n}", acc_shape, shifted))

        acc_layout = data.ArrayLayout(acc_shape, N)
        m.submodules.acc = acc_mem = memory.Memory(shape=acc_layout, depth=self.max_tokens, init=[])
        wr = acc_mem.write_port()
        rd = acc_mem.read_port(domain="sync", transparent_for=(wr,))
        m.d.comb += [rd.addr.eq(p_ctrl.token), rd.en.eq(en)]

        # Q: accumulate and write back; a finished token goes to the output register.
        q_valid = stage("q_valid", 1, p_valid)
        q_ctrl = stage("q_ctrl", ctrl_layout, p_ctrl)
        q_contrib = [stage(f"q_{n}", acc_shape, v) for n, v in enumerate(p_contrib)]
        q_new = Signal(acc_layout)
        for n in range(N):
            m.d.comb += q_new[n].eq(q_contrib[n] + rd.data[n])
            with m.If(q_ctrl.first):
                m.d.comb += q_new[n].eq(q_contrib[n])
        m.d.comb += [wr.addr.eq(q_ctrl.token), wr.data.eq(q_new), wr.en.eq(en & q_valid)]

        # O: output register (the sums stream payload).
        with m.If(en):
            m.d.sync += [
                self.sums.valid.eq(q_valid & q_ctrl.last),
                self.sums.payload.y.eq(q_new),
                self.sums.payload.token.eq(q_ctrl.token),
            ]
        return m
