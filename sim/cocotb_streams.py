"""cocotb helpers for Amaranth stream ports on Verilator: reset, and a cycle loop driving several input
streams and one output stream with random stalls while checking the stream rules.

Amaranth flattens a stream port ``x`` into ``x__valid``, ``x__ready`` and ``x__payload`` (payload as one
bit vector). Inputs are driven at the falling edge and sampled in ReadOnly, the race-free pattern on
Verilator; valid, once raised, stays up until the transfer, and the output payload must stay stable
while it is stalled.
"""

from dataclasses import dataclass, field

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly

__all__ = ["reset", "StreamRun", "run_streams"]


async def reset(dut, inputs=(), outputs=(), cycles=3):
    """Start a 10 ns clock, hold reset for ``cycles`` cycles with all handshakes idle."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for name in inputs:
        getattr(dut, f"{name}__valid").value = 0
    for name in outputs:
        getattr(dut, f"{name}__ready").value = 0
    await ClockCycles(dut.clk, cycles)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


@dataclass
class StreamRun:
    """What :func:`run_streams` observed."""

    received: list = field(default_factory=list)   # payloads (ints) of the first output port, in order
    outputs: dict = field(default_factory=dict)    # output port -> payloads in order
    accepted: dict = field(default_factory=dict)   # input name -> cycles at which transfers happened
    cycles: int = 0


async def run_streams(dut, sources, sink, expect, rng, p_in_stall=0.0, p_out_stall=0.0, limit=None):
    """Drive ``sources`` (``{port: [payload ints]}``) and collect ``expect`` payloads from port ``sink``.

    ``sink`` may also be a list of output ports with ``expect`` a list of counts: each port is stalled
    independently and collected into ``run.outputs[port]``. Each cycle every idle source raises valid
    with probability ``1 - p_in_stall``, and each sink is ready with probability ``1 - p_out_stall``.
    Fails on a timeout (``limit`` cycles), on an output payload that changes while stalled, or if inputs
    remain unconsumed at the end.
    """
    sinks = [sink] if isinstance(sink, str) else list(sink)
    wants = [expect] if isinstance(sink, str) else list(expect)
    queues = {name: list(items) for name, items in sources.items()}
    index = {name: 0 for name in sources}
    pending = {name: False for name in sources}
    run = StreamRun(accepted={name: [] for name in sources}, outputs={name: [] for name in sinks})
    run.received = run.outputs[sinks[0]]
    held = {name: None for name in sinks}
    limit = limit or 40 * (sum(len(q) for q in queues.values()) + sum(wants)) + 1000

    def missing():
        return [f"{n} {len(run.outputs[n])}/{w}" for n, w in zip(sinks, wants) if len(run.outputs[n]) < w]

    while missing():
        assert run.cycles < limit, f"timeout after {run.cycles} cycles: outputs {', '.join(missing())}"
        for name, items in queues.items():
            if not pending[name] and index[name] < len(items) and rng.random() >= p_in_stall:
                pending[name] = True
                getattr(dut, f"{name}__payload").value = items[index[name]]
            getattr(dut, f"{name}__valid").value = int(pending[name])
        ready = {}
        for name in sinks:
            ready[name] = rng.random() >= p_out_stall
            getattr(dut, f"{name}__ready").value = int(ready[name])
        await ReadOnly()
        for name in sinks:
            if int(getattr(dut, f"{name}__valid").value):
                payload = int(getattr(dut, f"{name}__payload").value)
                if held[name] is not None:
                    assert payload == held[name], f"{name} payload changed while stalled"
                held[name] = None if ready[name] else payload
                if ready[name]:
                    run.outputs[name].append(payload)
        for name in queues:
            if pending[name] and int(getattr(dut, f"{name}__ready").value):
                pending[name] = False
                index[name] += 1
                run.accepted[name].append(run.cycles)
        await FallingEdge(dut.clk)
        run.cycles += 1
    for name, items in queues.items():
        assert index[name] == len(items), f"finished with {len(items) - index[name]} {name} transfers unconsumed"
    return run
