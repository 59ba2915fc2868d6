"""Build a component with its clock generated inside the Verilated model, for long free-running runs.

cocotb's ``Clock`` toggles ``clk`` from the simulator interface (VPI) on every edge, which costs about a
microsecond per cycle on this machine whatever the design. A testbench that only starts a run and then
waits in long ``Timer`` chunks does not need that: this wrapper adds ``always #(period/2) clk = ~clk``
around the design (Verilator ``--timing``), so the model advances on its own. On the memory benchmark
top this took the simulation from about 150 k to about 300 k cycles per second.

The wrapper keeps every port of the component except ``clk``, which becomes an internal ``reg`` that
testbenches can still wait on (``FallingEdge(dut.clk)``). Do not start a cocotb ``Clock`` on it.

Amaranth writes every memory's initial contents as one ``initial`` assignment per word, zeros included.
For the large memories of a benchmark top (a 2 MiB weight buffer, DRAM models of megabytes) that is
tens of megabytes of Verilog that Verilator must compile, for values it would give the memories anyway:
Verilator starts every variable at zero unless a run asks for random reset values
(``+verilator+rand+reset+2``, which these testbenches do not). So the all-zero word assignments inside
``initial`` blocks are dropped; non-zero initial contents stay.
"""

from __future__ import annotations

import re

from amaranth.hdl import Value

from .build import build_verilog
from .verilog import export_verilog

__all__ = ["build_clocked", "strip_zero_memory_init", "TIMING_ARGS"]

#: Verilator arguments for delays in the Verilog: --timing needs C++20 coroutines (g++ >= 10).
TIMING_ARGS = ("--timing", "-CFLAGS", "-std=c++20")


def _ports(component):
    ports = [("rst", "input", 1)]
    for path, member, value in component.signature.flatten(component):
        name = "__".join(str(p) for p in path)
        ports.append((name, "input" if member.flow.name == "In" else "output", len(Value.cast(value))))
    return ports


_ZERO_WORD = re.compile(r"^\s*\S+\s*\[\d+\]\s*=\s*\d+'h0+;\s*$")


def strip_zero_memory_init(text):
    """``text`` without the all-zero word assignments of ``initial begin ... end`` blocks."""
    out, inside = [], False
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if inside:
            if stripped == "end":
                inside = False
            elif _ZERO_WORD.match(line):
                continue
        elif stripped == "initial begin":
            inside = True
        out.append(line)
    return "".join(out)


def build_clocked(component, toplevel, *, period_ns=10, build_args=()):
    """Export ``component`` as ``<toplevel>_core`` and build ``toplevel``: the core plus a clock.

    Parameters
    ----------
    component : amaranth.lib.wiring.Component
        A design with a ``sync`` domain (ports ``clk`` and ``rst``).
    toplevel : str
        Name of the wrapper module (what cocotb sees as ``dut``).
    period_ns : int
        Clock period; even, in ns (the build's timescale is 1 ns).

    Returns
    -------
    sim.SimBuild
    """
    if period_ns % 2 or period_ns < 2:
        raise ValueError(f"period_ns must be an even number of ns, got {period_ns}")
    core = f"{toplevel}_core"
    text = strip_zero_memory_init(export_verilog(component, core))
    ports = _ports(component)
    decl = ",\n  ".join(f"{d} wire [{w - 1}:0] {n}" for n, d, w in ports)
    conn = ",\n    ".join(f".{n}({n})" for n in ["clk"] + [n for n, _, _ in ports])
    wrapper = (f"\nmodule {toplevel}(\n  {decl}\n);\n"
               f"  reg clk = 1'b0;\n  always #{period_ns // 2} clk = ~clk;\n"
               f"  {core} core(\n    {conn}\n  );\nendmodule\n")
    return build_verilog(text + wrapper, toplevel, build_args=(*TIMING_ARGS, *build_args))

