"""A plain ternary adder-tree MAC array: the cost baseline for the table-lookup (TLMM) engine.

**Comparison baseline only, kept out of the product.** Nothing in the accelerator instantiates it; it
exists so that ``python -m hw.synth`` can put the TLMM engine's LUT4/FF/DSP/BRAM per MAC/cycle next
to those of the obvious alternative with the same peak rate (3 x T x N ternary MACs per cycle) and
the same stream interface and semantics.

Each lane multiplies the 3T activations of a k-step by its own 3T ternary weights and sums the
products in a pipelined binary adder tree. A product is ``x`` gated and, for a -1 weight, inverted:
``-x = ~x + 1``, and the ``+1`` of every inverted term is fed as the carry-in of one tree adder
(free in an ECP5 carry chain). The tree has one adder fewer than it has terms, so the first term is
negated exactly instead.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

# The engine's own layouts: the baseline must stay stream-compatible with it.
from hw.tlmm.layouts import act_step_layout, sums_layout
from hw.tlmm.reduce import reduce_and_accumulate
from hw.params import check_int

__all__ = ["AdderTreeMac", "WEIGHT_CODE_BITS"]

#: Bits per weight in a weight word: two's complement of w in {-1, 0, +1} (0 -> 0b00, +1 -> 0b01,
#: -1 -> 0b11). Code 0b10 ("negative zero") decodes to 0, like TL2 index 16; encoders never emit it.
WEIGHT_CODE_BITS = 2
#: Activation width (int8).
ACT_BITS = 8


class AdderTreeMac(wiring.Component):
    """Ternary matmul by adder trees, stream-compatible with the TLMM engine (baseline only).

    Every accepted act step for token ``m`` is combined with the current weight word (the head of
    ``weights``): lane ``n`` forms ``p_n = sum_c w[n][c] * x[c]``, scales it to
    ``c_n = -1**negate * (p_n << shift)`` and updates ``acc[m][n] = (0 if first else acc[m][n]) + c_n``
    (two's complement, wrapping at ``acc_bits``). A step with ``last`` emits ``{y: acc[m], token: m}``
    on ``sums``; a step with ``release`` consumes the weight word, so one word can serve several
    tokens (prefill reuse) and several bit-planes. An act step waits for a valid weight word.

    One act step per cycle in steady state. When ``sums`` is full and not ready the whole pipeline
    holds. Accumulators live in a memory of ``max_tokens`` words of ``N * acc_bits`` bits with an
    asynchronous read port (ECP5 distributed RAM, ``TRELLIS_DPR16X4``); a token updated on
    consecutive cycles gets its new value by forwarding. Everything after the leaves (tree, shifter,
    accumulate, output) is ``hw.tlmm.reduce.reduce_and_accumulate``, shared with the TLMM engines, so
    the cost comparison measures the front ends alone.

    Parameters
    ----------
    tables : int
        T, 1..64; a k-step covers ``3 * tables`` activations.
    lanes : int
        N, 1..64 output rows in parallel.
    acc_bits : int
        Accumulator width, 8..64 (see :func:`golden.tlmm.acc_bits_needed`).
    max_tokens : int
        Accumulator sets (tokens in flight), 1..4096. ``token`` must be below it.

    Attributes
    ----------
    weights : stream of ``unsigned(2 * 3T * N)``, in
        Weight words; lane ``n``, column ``c`` at bit ``2 * (n*3T + c)`` (see :data:`WEIGHT_CODE_BITS`).
    acts : stream of :func:`hw.tlmm.layouts.act_step_layout`, in
    sums : stream of :func:`hw.tlmm.layouts.sums_layout`, out
    """

    def __init__(self, tables, lanes, *, acc_bits=32, max_tokens=16):
        try:
            self.tables = check_int("tables", tables, 1, 64, owner="AdderTreeMac")
            self.lanes = check_int("lanes", lanes, 1, 64, owner="AdderTreeMac")
            self.acc_bits = check_int("acc_bits", acc_bits, 8, 64, owner="AdderTreeMac")
            self.max_tokens = check_int("max_tokens", max_tokens, 1, 4096, owner="AdderTreeMac")
        except ValueError:
            self._MustUse__silence = True  # a design that was never built is not an unused one
            raise
        self.cols = 3 * tables
        super().__init__({
            "weights": In(stream.Signature(unsigned(WEIGHT_CODE_BITS * self.cols * lanes))),
            "acts": In(stream.Signature(act_step_layout(tables, max_tokens))),
            "sums": Out(stream.Signature(sums_layout(lanes, acc_bits, max_tokens))),
        })

    @property
    def macs_per_cycle(self):
        """Peak ternary MACs per cycle: 3 x T x N."""
        return self.cols * self.lanes

    def elaborate(self, platform):
        m = Module()
        act, word = self.acts.payload, self.weights.payload

        # Global stall: everything moves together unless the output register is full and unread.
        advance = Signal()
        take = Signal()
        m.d.comb += [
            advance.eq(~self.sums.valid | self.sums.ready),
            take.eq(advance & self.acts.valid & self.weights.valid),
            self.acts.ready.eq(advance & self.weights.valid),
            self.weights.ready.eq(take & act.release),
        ]

        # Leaves: per lane 3T gated activations with their signs (the tree applies the signs).
        lanes = []
        for n in range(self.lanes):
            terms = []
            for c in range(self.cols):
                lo = WEIGHT_CODE_BITS * (n * self.cols + c)
                nonzero, neg = word[lo], word[lo + 1] ^ act.negate  # negate flips every weight
                terms.append((Mux(nonzero, act.x[c], 0), nonzero & neg))
            lanes.append(terms)

        reduce_and_accumulate(m, advance, take, (act.token, act.first, act.last, act.shift), lanes,
                              acc_bits=self.acc_bits, depth=self.max_tokens, sums=self.sums, signs="carry")
        return m
