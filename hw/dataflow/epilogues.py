"""Linear layers with their epilogue fused: residual add (o_proj, down) and the FFN gate (gate|up).

Both wrap a :class:`~hw.dataflow.linear.LinearCore` and pass its ``cfg``, ``x`` and ``weights`` ports
through; see that module for the command and the beat order (row tile, then token).

:class:`ResidualLinear`
    ``o = residual_add(res, y)``: the ``res`` stream supplies the residual-stream beats in the core's
    output order (beat ``(tile, token)`` holds ``res[token, tile*N : tile*N + N]``).
:class:`GateLinear`
    A fused gate|up matmul whose packed rows alternate row tiles: tile ``2j`` holds gate rows
    ``jN .. jN+N-1`` and tile ``2j+1`` the up rows with the same indices (the host packs them so, and
    sets ``interleave`` with ``sw0`` = gate scale, ``sw1`` = up scale). Every gate beat waits in a
    ``max_tokens``-beat buffer until the up beat of the same token arrives, ``M`` beats later; then
    :class:`~hw.vector.epilogue.GateSilu` (Q.16 gate ``y``, raw up ``acc``) or
    :class:`~hw.vector.epilogue.GateRelu2` (raw ``acc`` both) makes ``h`` (int64), one beat per
    (tile pair, token). Interleaving is what keeps the buffer at one beat per token: with gate rows
    first it would have to hold every gate output of the chunk. The per-token scale of ``h``
    (``s_up * 2^-16`` for SiLU, ``s_gate^2 * s_up`` for ReLU^2) is a scalar-unit job of the command
    that feeds ``h`` to the next norm.
"""

from amaranth.hdl import Module, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..vector.epilogue import GateRelu2, GateSilu, ResidualAdd, vector_layout
from .linear import LinearCore

__all__ = ["ResidualLinear", "GateLinear"]

_ACTIVATIONS = {"silu": GateSilu, "relu2": GateRelu2}


class _Wrapped(wiring.Component):
    """A LinearCore with its input ports passed through and its own output port(s)."""

    def __init__(self, core, ports):
        self.core = core
        self.tables, self.lanes, self.vec_lanes = core.tables, core.lanes, core.vec_lanes
        self.max_tokens, self.x_bits = core.max_tokens, core.x_bits
        sig = core.signature.members
        super().__init__({"cfg": sig["cfg"], "x": sig["x"], "weights": sig["weights"], **ports})

    def _core(self, m):
        m.submodules.core = core = self.core
        for name in ("cfg", "x", "weights"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(core, name))
        return core


class ResidualLinear(_Wrapped):
    """``x' = residual_add(res, dequant(TLMM(norm_quant(x))))``: o_proj and down_proj.

    Parameters
    ----------
    tables, lanes, vec_lanes, max_k, max_rows, max_tokens, x_bits
        As :class:`~hw.dataflow.linear.LinearCore`.

    Attributes
    ----------
    res : In(stream.Signature(vector_layout(lanes)))
        The residual stream, in the core's output order.
    o : Out(stream.Signature(vector_layout(lanes)))
        The updated residual stream (Q.16, saturating).
    """

    def __init__(self, tables, lanes, vec_lanes, max_k, max_rows, max_tokens=1, *, x_bits=32):
        core = LinearCore(tables, lanes, vec_lanes, max_k, max_rows, max_tokens, x_bits=x_bits)
        super().__init__(core, {"res": In(stream.Signature(vector_layout(lanes))),
                                "o": Out(stream.Signature(vector_layout(lanes)))})

    def elaborate(self, platform):
        m = Module()
        core = self._core(m)
        m.submodules.add = add = ResidualAdd(self.lanes)
        wiring.connect(m, wiring.flipped(self.res), add.x)
        m.d.comb += [add.y.valid.eq(core.o.valid), core.o.ready.eq(add.y.ready),
                     add.y.payload.eq(core.o.payload.y)]
        wiring.connect(m, add.o, wiring.flipped(self.o))
        return m


class GateLinear(_Wrapped):
    """``h = gate(dequant(TLMM(norm_quant(x))))`` for a fused, tile-interleaved gate|up matmul.

    Parameters
    ----------
    activation : {"silu", "relu2"}
    tables, lanes, vec_lanes, max_k, max_rows, max_tokens, x_bits
        As :class:`~hw.dataflow.linear.LinearCore` (``max_rows`` counts gate and up rows).

    Attributes
    ----------
    o : Out(stream.Signature(vector_layout(lanes, 64)))
        ``h``, one beat per (tile pair, token).
    """

    def __init__(self, activation, tables, lanes, vec_lanes, max_k, max_rows, max_tokens=1, *, x_bits=32):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        core = LinearCore(tables, lanes, vec_lanes, max_k, max_rows, max_tokens, x_bits=x_bits)
        super().__init__(core, {"o": Out(stream.Signature(vector_layout(lanes, 64)))})

    def elaborate(self, platform):
        m = Module()
        core = self._core(m)
        m.submodules.gate = gate = _ACTIVATIONS[self.activation](self.lanes)
        width = len(core.o.payload.y.as_value())
        m.submodules.held = held = memory.Memory(shape=unsigned(width), depth=self.max_tokens, init=[])
        wr = held.write_port()
        rd = held.read_port(domain="comb")
        beat = core.o.payload
        is_up = beat.tile[0]
        # SiLU takes the dequantised gate, ReLU^2 the exact accumulator (docs/numerics.md, "Gating").
        gate_value = beat.y if self.activation == "silu" else beat.acc
        m.d.comb += [
            wr.addr.eq(beat.slot), wr.data.eq(gate_value.as_value()),
            wr.en.eq(core.o.valid & ~is_up),
            rd.addr.eq(beat.slot),
            gate.gate.valid.eq(core.o.valid & is_up), gate.up.valid.eq(core.o.valid & is_up),
            gate.gate.payload.as_value().eq(rd.data), gate.up.payload.eq(beat.acc),
            core.o.ready.eq(~is_up | gate.up.ready),
        ]
        wiring.connect(m, gate.o, wiring.flipped(self.o))
        return m
