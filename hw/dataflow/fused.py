"""One LinearCore with every epilogue, chosen per command: what the LINEAR unit executes.

The TLMM engine, NormQuant and the activation buffer are the large parts, so the accelerator has one
of each. :class:`FusedLinear` puts the four epilogues of ``hw/isa.py``'s :class:`~hw.isa.Epilogue`
behind one :class:`~hw.dataflow.linear.LinearCore`:

* ``QKV``: :class:`~hw.dataflow.epilogues.QkvEpilogue` (RoPE + power-of-two quantise) -> ``qkv``;
* ``RESIDUAL``: :class:`~hw.dataflow.epilogues.ResidualEpilogue` with the ``res`` stream -> ``residual``;
* ``GATE_SILU`` / ``GATE_RELU2``: a :class:`~hw.dataflow.epilogues.GateEpilogue` each -> ``h``;
* the LM head (``logits`` set, bit-serial weights): :class:`~hw.dataflow.epilogues.LogitsEpilogue` ->
  ``logits``.

The command (``cfg``) is the core's command, the epilogue and the chunk's first position. The core
takes a command only after the previous command's last beat has left it, so the epilogue choice and
the position are held here from the command's acceptance until then, and beats already in an epilogue
finish there. Every token's input scale comes on ``sx`` (one SFloat per token): ``2^-16`` for the
residual stream and the attention output, the gate's per-token scale for the FFN intermediate.

The command passes a :class:`~hw.dataflow.command_slice.CommandSlice` (a cycle): the core takes it from a
register beside it, and the sender sees ``cfg.ready`` from one. With the sender's state machine on the core's
command handshake, the core's command registers were enabled from the LINEAR unit's state (14.4 ns placed
on the ECP5 shell at cbb845a). ``idle`` says the core has taken its command and finished it.
"""

import contextlib

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..isa import GATE_EPILOGUES, Epilogue
from ..params import check_int
from ..vector.epilogue import vector_layout
from ..vector.quant_pow2 import quant_out_layout
from .command_slice import CommandSlice
from .credit_link import CreditLink
from .epilogues import (GateEpilogue, LogitsEpilogue, QkvEpilogue, ResidualEpilogue, logits_mult_layout,
                        logits_rows_layout)
from .linear import LinearCore

__all__ = ["FusedLinear", "fused_cfg_layout"]


def fused_cfg_layout(core_cfg, pos_bits):
    """The core's command, the epilogue, the chunk's first position; ``logits`` selects the LM-head
    epilogue instead of ``epilogue`` (``LOGITS`` is its own instruction)."""
    return data.StructLayout({"core": core_cfg, "epilogue": Epilogue, "pos": unsigned(pos_bits), "logits": 1})


class FusedLinear(wiring.Component):
    """See the module docstring.

    Parameters
    ----------
    tables, lanes, vec_lanes, max_k, max_rows, max_tokens
        As :class:`~hw.dataflow.linear.LinearCore`; inputs are 63-bit (the FFN intermediate).
    head_dim : int
        Head size of the ``QKV`` epilogue (a multiple of ``lanes``).
    freq_table : sequence of int or None
        Initial RoPE phase increments; the model's are written at run time through ``rope_load``.
    pos_bits : int

    Attributes
    ----------
    cfg : In(stream.Signature(fused_cfg_layout(...)))
    x, weights, sx : In
        As :class:`~hw.dataflow.linear.LinearCore` (with ``token_scales``).
    sq : Out
        Each token's activation scale (``emit_scales``): must be taken (the gate's scale needs it).
    res : In(stream.Signature(vector_layout(lanes)))
        ``RESIDUAL`` only: the residual beats in the core's output order.
    residual : Out(stream.Signature(vector_layout(lanes)))
    h : Out(stream.Signature(vector_layout(lanes, 64)))
    qkv : Out(stream.Signature(quant_out_layout(lanes, max_tokens)))
    rope_load : In(stream.Signature(rope_load_layout(head_dim)))
    mult, rows : In
        LM head: each token's ``sq.multiplier()`` and each row tile's row scales
        (:class:`~hw.dataflow.epilogues.LogitsEpilogue`).
    logits : Out
        LM-head logits, one beat per (row tile, token).
    idle : Out(1)
        No command waits and the core has finished the last one taken.
    """

    def __init__(self, tables, lanes, vec_lanes, max_k, max_rows, max_tokens=1, *, head_dim, freq_table=None,
                 pos_bits=16, activations=tuple(GATE_EPILOGUES)):
        check_int("pos_bits", pos_bits, 1, 32)
        activations = tuple(activations)
        if not activations or not set(activations) <= set(GATE_EPILOGUES) or len(set(activations)) != len(activations):
            raise ValueError(f"FusedLinear: activations must be distinct names from {', '.join(GATE_EPILOGUES)}, "
                             f"got {activations!r}")
        #: The gate epilogues built (the others' commands must not reach this block: LinearUnit refuses them).
        self.activations = activations
        self.lanes, self.max_tokens = lanes, max_tokens
        self.core = core = LinearCore(tables, lanes, vec_lanes, max_k, max_rows, max_tokens, x_bits=63,
                                      token_scales=True, emit_scales=True)
        self.tables, self.vec_lanes, self.x_bits = tables, vec_lanes, 63
        beats = stream.Signature(core.o.payload.shape())
        self.qkv_ep = QkvEpilogue(beats, lanes, max_tokens, head_dim=head_dim, freq_table=freq_table,
                                  pos_bits=pos_bits, loadable=True)
        self.res_ep = ResidualEpilogue(beats, lanes)
        self.gate_eps = {a: GateEpilogue(beats, a, lanes, max_tokens) for a in activations}
        self.logits_ep = LogitsEpilogue(beats, lanes, max_tokens)
        sig = core.signature.members
        super().__init__({
            "cfg": In(stream.Signature(fused_cfg_layout(core.cfg.payload.shape(), pos_bits))),
            "idle": Out(1),
            "x": sig["x"], "weights": sig["weights"], "sx": sig["sx"], "sq": sig["sq"],
            "res": In(stream.Signature(vector_layout(lanes))),
            "residual": Out(stream.Signature(vector_layout(lanes))),
            "h": Out(stream.Signature(vector_layout(lanes, 64))),
            "qkv": Out(stream.Signature(quant_out_layout(lanes, max_tokens))),
            "rope_load": In(self.qkv_ep.load.signature.flip()),
            "mult": In(stream.Signature(logits_mult_layout(max_tokens))),
            "rows": In(stream.Signature(logits_rows_layout(lanes))),
            "logits": Out(self.logits_ep.signature.members["o"].signature),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        m.submodules.qkv_ep, m.submodules.res_ep = qkv, res = self.qkv_ep, self.res_ep
        for a, ep in self.gate_eps.items():
            m.submodules[f"{a}_ep"] = ep
        m.submodules.logits_ep = lg = self.logits_ep
        for name in ("x", "weights", "sx", "sq"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(core, name))

        kind = Signal(Epilogue)
        logits = Signal()
        # The command waits in a slice whose wide register loads under flip-flops only (see CommandSlice).
        m.submodules.cfg_slice = cfg_slice = CommandSlice(self.cfg.payload.shape())
        wiring.connect(m, wiring.flipped(self.cfg), cfg_slice.i)
        cmd = cfg_slice.o
        m.d.comb += [core.cfg.payload.eq(cmd.payload.core), core.cfg.valid.eq(cmd.valid),
                     cmd.ready.eq(core.cfg.ready), self.idle.eq(~cmd.valid & core.cfg.ready)]
        accept = cmd.valid & cmd.ready
        with m.If(accept):
            m.d.sync += [kind.eq(cmd.payload.epilogue), logits.eq(cmd.payload.logits),
                         qkv.pos0.eq(cmd.payload.pos), qkv.v_from.eq(cmd.payload.core.bound1),
                         lg.tokens.eq(cmd.payload.core.tokens)]
        wiring.connect(m, wiring.flipped(self.mult), lg.mult)
        wiring.connect(m, wiring.flipped(self.rows), lg.rows)
        wiring.connect(m, lg.o, wiring.flipped(self.logits))
        # The core's beats reach each epilogue over a credit link of its own (free-running stages, a FIFO
        # at the epilogue's end): the epilogues sit far apart on ECP5, and one output register facing all
        # of them had its enable net cross the die after the chosen epilogue's ready. The core now sees
        # only the links' `ready` flip-flops, next to it.
        # The core's `ready` is a flip-flop of its own, loaded with the chosen link's next `ready` (the
        # choice's next value too, for the cycle a command is taken): a multiplexer of the links' ready
        # flip-flops, then the core's output slice, was a 12.3 ns placed path with 272 late endpoints on
        # the ECP5 shell (183e789, with the placer's timing weights).
        kind_nx, logits_nx = Signal(Epilogue), Signal()
        m.d.comb += [kind_nx.eq(Mux(accept, cmd.payload.epilogue, kind)),
                     logits_nx.eq(Mux(accept, cmd.payload.logits, logits))]
        targets = {"logits": (logits, logits_nx, lg)}
        targets.update({k.name.lower(): (~logits & (kind == k), ~logits_nx & (kind_nx == k), ep) for k, ep in
                        [(Epilogue.QKV, qkv), (Epilogue.RESIDUAL, res),
                         *[(GATE_EPILOGUES[a], ep) for a, ep in self.gate_eps.items()]]})
        ready_nx = []
        for name, (chosen, chosen_nx, ep) in targets.items():
            m.submodules[f"{name}_link"] = link = CreditLink(core.o.payload.shape(), forward=2, back=1)
            m.d.comb += [link.i.payload.eq(core.o.payload), link.i.valid.eq(core.o.valid & chosen)]
            ready_nx.append(chosen_nx & link.ready_next)
            wiring.connect(m, link.o, ep.i)
        # Reset low (a cycle's wait); afterwards it equals the chosen link's `i.ready` in every cycle.
        core_ready = Signal()
        m.d.sync += core_ready.eq(Cat(*ready_nx).any())
        m.d.comb += core.o.ready.eq(core_ready)
        wiring.connect(m, wiring.flipped(self.res), res.res)
        wiring.connect(m, res.o, wiring.flipped(self.residual))
        wiring.connect(m, qkv.o, wiring.flipped(self.qkv))
        wiring.connect(m, wiring.flipped(self.rope_load), qkv.load)
        # Only one gate epilogue has beats in a command: merge their outputs.
        *others, last = self.gate_eps.values()
        for i, ep in enumerate(others):
            with (m.Elif if i else m.If)(ep.o.valid):
                m.d.comb += [self.h.valid.eq(1), self.h.payload.eq(ep.o.payload), ep.o.ready.eq(self.h.ready)]
        with (m.Else() if others else contextlib.nullcontext()):
            m.d.comb += [self.h.valid.eq(last.o.valid), self.h.payload.eq(last.o.payload),
                         last.o.ready.eq(self.h.ready)]
        return m
