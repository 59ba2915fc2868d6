"""Move the flip-flop after an ECP5 block RAM into the block RAM's own output register.

A DP16KD without its output register (``REGMODE`` ``NOREG``, all Yosys's ECP5 memory mapping produces)
has a 5.8 ns clock-to-out in nextpnr's timing model, and the flip-flop the design puts after it lands
5-7 ns of route away: a 12-13 ns path however the logic around it is cut. The block RAM's output register
(``OUTREG``) is that same flip-flop inside the block RAM.

:func:`absorb_output_registers` rewrites Yosys's JSON netlist (after ``synth_ecp5``, before nextpnr): a read
port whose every used output bit drives exactly one flip-flop, and nothing else, loses those flip-flops and
gets ``REGMODE_<port>`` ``OUTREG``, its outputs now driving the flip-flops' nets. Only plain flip-flops
qualify, which is the behaviour of the output register with its enable (``OCE``) high and its reset
(``RST``) low: the same clock net and polarity as the port, clock enable tied high, no set/reset (``LSR``
tied low), reset value 0 (``REGSET`` ``RESET``, as after configuration), no ``keep``. The block RAM's
latch still loads under its own ``CE``, and the register loads on every edge, as the flip-flop did, so the
design's behaviour is unchanged, cycle for cycle. Simulation never sees this: it runs the Amaranth design.

A 36-bit-wide block (``DATA_WIDTH`` 36: Yosys's pseudo-dual-port mapping, port A writing and port B
reading) sends its read word out on both ports' pins, the low half on ``DOA``. Whichever port's register
the silicon uses for that half, the halves move together or not at all: only when every used bit of both
qualifies, and then both ports get ``OUTREG`` with their ``OCE`` tied high (Yosys ties port A's low there),
as Lattice's own 36-bit primitive has one register mode and one enable for the whole word. Moving one half
alone would leave the other half's timing to a guess about the silicon.
"""

import json
from pathlib import Path

__all__ = ["absorb_output_registers", "absorb_output_registers_file"]

_BRAM = "DP16KD"
_FF = "TRELLIS_FF"
_DATA_BITS = 18                         # DOA0..DOA17, DOB0..DOB17


def _top(netlist):
    # Yosys writes attribute values as binary strings: "top" is "000...01" on the top module.
    tops = [m for m in netlist.get("modules", {}).values()
            if int(str(m.get("attributes", {}).get("top", "0")) or "0", 2)]
    if len(tops) != 1:
        raise ValueError(f"expected one top module in the netlist, found {len(tops)}")
    return tops[0]


def _plain_ff(ff, clk_bits):
    """A flip-flop the output register can stand for: see the module docstring."""
    p, c = ff["parameters"], ff["connections"]
    return (c.get("CLK") == clk_bits and str(p.get("CLKMUX", "CLK")).strip() == "CLK"
            and str(p.get("CEMUX", "")).strip() == "1" and c.get("LSR", ["0"]) == ["0"]
            and str(p.get("REGSET", "RESET")).strip() == "RESET"
            and not ff.get("attributes", {}).get("keep"))


def _width(params, port):
    value = params.get(f"DATA_WIDTH_{port}", 18)
    return int(value, 2) if isinstance(value, str) else int(value)


def _register_free(conn, params, port):
    """The port's output register is unused, not reset, and clocked as the port: it can take flip-flops."""
    return (str(params.get(f"REGMODE_{port}", "NOREG")).strip() == "NOREG" and conn.get(f"RST{port}") == ["0"]
            and str(params.get(f"CLK{port}MUX", f"CLK{port}")).strip() == f"CLK{port}")


def _port_flip_flops(cells, sinks, conn, port, clk_bits):
    """``[(output pin, flip-flop name)]`` for the port's used output bits, or None if any of them does not
    drive exactly one plain flip-flop (and nothing else) clocked by ``clk_bits``."""
    used = []
    for i in range(_DATA_BITS):
        bits = conn.get(f"DO{port}{i}")
        if not bits or not isinstance(bits[0], int) or bits[0] not in sinks:
            continue
        loads = sinks[bits[0]]
        ff = cells[loads[0][0]] if len(loads) == 1 else None
        if ff is None or ff["type"] != _FF or loads[0][1] != "DI" or not _plain_ff(ff, clk_bits):
            return None
        used.append((f"DO{port}{i}", loads[0][0]))
    return used


def absorb_output_registers(netlist):
    """Rewrite ``netlist`` (Yosys JSON, as a dict) in place; returns the flip-flops absorbed.

    Raises
    ------
    ValueError
        If the netlist has no single top module.
    """
    cells = _top(netlist)["cells"]
    sinks = {}
    for name, cell in cells.items():
        dirs = cell.get("port_directions", {})
        for port, bits in cell["connections"].items():
            if dirs.get(port) == "input":
                for bit in bits:
                    if isinstance(bit, int):
                        sinks.setdefault(bit, []).append((name, port))

    def move(conn, used):
        for pin, ff_name in used:
            conn[pin] = list(cells[ff_name]["connections"]["Q"])
            del cells[ff_name]
        return len(used)

    absorbed = 0
    for bram in [c for c in cells.values() if c["type"] == _BRAM]:
        conn, params = bram["connections"], bram["parameters"]
        if 36 in (_width(params, "A"), _width(params, "B")):
            # One read word on both ports' pins: both halves under both registers, or neither.
            if not all(_register_free(conn, params, p) for p in "AB") or conn.get("CLKA") != conn.get("CLKB"):
                continue
            halves = [_port_flip_flops(cells, sinks, conn, p, conn.get("CLKB")) for p in "AB"]
            if None in halves or not any(halves):
                continue
            for port, used in zip("AB", halves):
                absorbed += move(conn, used)
                params[f"REGMODE_{port}"] = "OUTREG"
                conn[f"OCE{port}"] = ["1"]
            continue
        for port in "AB":
            if not _register_free(conn, params, port) or conn.get(f"OCE{port}") != ["1"]:
                continue
            used = _port_flip_flops(cells, sinks, conn, port, conn.get(f"CLK{port}"))
            if used:
                absorbed += move(conn, used)
                params[f"REGMODE_{port}"] = "OUTREG"
    return absorbed


def absorb_output_registers_file(path):
    """:func:`absorb_output_registers` on a JSON netlist file, rewritten in place; returns the count."""
    path = Path(path)
    netlist = json.loads(path.read_text())
    count = absorb_output_registers(netlist)
    if count:
        path.write_text(json.dumps(netlist))
    return count
