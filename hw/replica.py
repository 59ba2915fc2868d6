"""Register replicas: copies of one flip-flop that synthesis keeps apart, for a signal with many sinks.

A flip-flop whose output enables hundreds of flip-flops spread over a unit (a job register loaded in an
idle state, a shift select reaching every lane) has one net that crosses the whole spread: on the ECP5
shell such nets carried routes of 7 to 9 ns. Copies loaded with the same next value let the placer put
each copy beside its own share of the sinks.

Yosys merges flip-flops with the same inputs (``opt_merge``), so the copies carry the wire attribute
:data:`REPLICA_ATTR`, and every flow that synthesises the design runs :data:`YOSYS_KEEP_REPLICAS` after
reading it: the cells driving those wires get ``keep``, which ``opt_merge`` respects. (Checked with
Yosys 0.70: four copies of a register survive ``synth_ecp5`` with it, one without.) Simulation sees
ordinary registers.
"""

from amaranth.hdl import Signal, Value

from .params import check_int

__all__ = ["REPLICA_ATTR", "YOSYS_KEEP_REPLICAS", "registered_copies", "load_in_shares"]

REPLICA_ATTR = "trillium_replica"
YOSYS_KEEP_REPLICAS = f"setattr -set keep 1 a:{REPLICA_ATTR} %ci1 c:* %i"


def registered_copies(m, next_value, count, name, *, init=0):
    """``count`` flip-flops in ``m.d.sync``, each loaded with ``next_value`` on every clock edge.

    Parameters
    ----------
    m : Module
    next_value : Value
        The value every copy takes at the next edge (one bit or more).
    count : int
        Copies, 1..4096 (one per lane of the widest datapath, say).
    name : str
        Base name; copy ``i`` is ``{name}_r{i}``.
    init : int
        Reset and initial value of every copy.

    Returns
    -------
    list of Signal
    """
    check_int("count", count, 1, 4096, "registered_copies")
    copies = []
    for i in range(count):
        reg = Signal(Value.cast(next_value).shape(), name=f"{name}_r{i}", init=init, attrs={REPLICA_ATTR: 1})
        m.d.sync += reg.eq(next_value)
        copies.append(reg)
    return copies


def load_in_shares(m, target, source, enables):
    """Load ``target`` from ``source`` (same width) in contiguous shares, share ``k`` under ``enables[k]``.

    For a wide register whose load enable is a flip-flop with copies (:func:`registered_copies`): each copy
    then enables only its share of the bits (a quarter of a command register, say), and the placer can put
    it beside them.

    Parameters
    ----------
    m : Module
    target, source : Value
        The register (assigned in ``m.d.sync``) and what it loads.
    enables : list of Value
        One enable per share; shares are ``ceil(width / len(enables))`` bits, the last one shorter.
    """
    bits, src = Value.cast(target), Value.cast(source)
    if len(bits) != len(src) or not enables:
        raise ValueError(f"load_in_shares: {len(src)} bits into {len(bits)}, {len(enables)} enables")
    share = -(-len(bits) // len(enables))
    for k, enable in enumerate(enables):
        lo, hi = min(share * k, len(bits)), min(share * (k + 1), len(bits))
        if lo < hi:
            with m.If(enable):
                m.d.sync += bits[lo:hi].eq(src[lo:hi])
