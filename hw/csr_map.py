"""The command processor's control and status registers, defined once for the gateware and the driver.

32-bit registers at byte offset ``4 * index`` on the CSR port. ``docs/isa.md`` describes the run
arguments; the driver (``firmware/device.py``) uses these names.
"""

from dataclasses import dataclass

from .isa import RUN_ARGS

__all__ = ["Csr", "CSRS", "CSR_BY_NAME", "UNITS", "STATUS_DONE", "STATUS_BUSY", "STATUS_ERROR_SHIFT"]

#: Execution units the command processor dispatches to (by the opcode they execute, ``Opcode[name.upper()]``),
#: each with busy and stall counters (all the ``busy_*`` CSRs, then all the ``stall_*``: a new unit moves the
#: ``stall_*`` indices, so the driver and testbenches address CSRs by name).
UNITS = ("embed", "linear", "attend", "logits", "load_x", "save_x")


@dataclass(frozen=True)
class Csr:
    name: str
    index: int
    access: str     # "r", "w" (write-only strobe) or "rw"
    doc: str

    @property
    def offset(self):
        return 4 * self.index


_DEFS = [
    ("id", "r", "low 32 bits of the hardware-config hash: the driver refuses a mismatched bitstream"),
    ("control", "w", "bit 0: start (clears done and the error code)"),
    ("status", "r", "bit 0: done, bit 1: busy, bits 4..7: ErrorCode of the last run"),
    ("program", "rw", "byte address of the program's first instruction"),
    ("dram_size", "rw", "bytes of DRAM the accelerator may address (0: no check); larger addresses are BAD_ADDRESS"),
    *((name, "rw", f"run argument {name} ({bits} bits)") for name, bits in RUN_ARGS.items()),
    ("cycles_lo", "r", "free-running cycle counter, low word (reading it latches the high word)"),
    ("cycles_hi", "r", "cycle counter, high word"),
    ("run_cycles", "r", "cycles from the last start to done"),
    ("error_pc", "r", "address of the instruction that raised the error"),
    ("instructions", "r", "instructions executed by the last run"),
    *((f"busy_{u}", "r", f"cycles the {u} unit was busy in the last run") for u in UNITS),
    *((f"stall_{u}", "r", f"cycles a command waited for the {u} unit in the last run") for u in UNITS),
]

CSRS = tuple(Csr(name, i, access, doc) for i, (name, access, doc) in enumerate(_DEFS))
CSR_BY_NAME = {c.name: c for c in CSRS}

STATUS_DONE = 1 << 0
STATUS_BUSY = 1 << 1
STATUS_ERROR_SHIFT = 4
