"""Devices: what the driver talks to, one API for every backend that runs programs.

A device has DRAM (``allocate`` a region, ``write``/``read`` bytes at byte addresses), the CSRs of ``hw/csr_map.py``
(``write_csr``/``read_csr`` by name) and ``run()``: start the program and wait until ``done``. ``run``
raises :class:`DeviceError` with the error code and the CSR state when the program stops with an
error or does not finish in time.

``isa`` runs programs on the ISA simulator (``golden/isa_sim.py``). The Verilator RTL and a board plug
in with the same methods.
"""

from __future__ import annotations

from golden.isa_sim import IsaMachine, IsaRuntimeError
from hw.config import HwConfig
from hw.csr_map import CSR_BY_NAME, STATUS_DONE, STATUS_ERROR_SHIFT
from hw.isa import ErrorCode

__all__ = ["DeviceError", "Device", "IsaDevice", "DEVICES", "make_device"]


class DeviceError(RuntimeError):
    """A run that ended with an error code, or a device that does not match the driver."""

    def __init__(self, message, code=None, csrs=None):
        self.code, self.csrs = code, dict(csrs or {})
        super().__init__(message)


class Device:
    """Base class: DRAM and CSR access by name, with range and access checks."""

    name = "device"

    def __init__(self, hw: HwConfig, dram_bytes: int):
        if dram_bytes <= 0:
            raise ValueError(f"dram_bytes must be positive, got {dram_bytes}")
        self.hw, self.dram_bytes = hw, dram_bytes
        self._csr = {name: 0 for name in CSR_BY_NAME}
        self._csr["id"] = hw.config_hash
        #: DRAM regions handed out by :meth:`allocate`: name -> (address, bytes).
        self.allocations = {}
        self._next_free = 0

    def allocate(self, nbytes, *, align=None, name=None):
        """Reserve ``nbytes`` of device DRAM (aligned to ``align``, default the bus word); returns the address.

        Regions are handed out in order from address 0 and never overlap. The driver allocates the
        compiled image first, so that it lands at address 0, where its absolute addresses point.

        Raises
        ------
        DeviceError
            If the region does not fit the device's DRAM.
        """
        align = self.hw.dram.bus_bytes if align is None else align
        if not isinstance(nbytes, int) or nbytes <= 0 or not isinstance(align, int) or align <= 0:
            raise ValueError(f"allocate: nbytes and align must be positive integers, got {nbytes!r}, {align!r}")
        addr = -(-self._next_free // align) * align
        if addr + nbytes > self.dram_bytes:
            raise DeviceError(f"cannot allocate {nbytes} bytes of DRAM: {self.dram_bytes - addr} of the device's "
                              f"{self.dram_bytes} bytes are left")
        name = name or f"region{len(self.allocations)}"
        if name in self.allocations:
            raise ValueError(f"allocate: a region named {name!r} exists")
        self.allocations[name] = (addr, nbytes)
        self._next_free = addr + nbytes
        return addr

    def _check_range(self, addr, n):
        if addr < 0 or n < 0 or addr + n > self.dram_bytes:
            raise DeviceError(f"DRAM access of {n} bytes at {addr:#x} outside the device's {self.dram_bytes} bytes")

    def write_csr(self, name, value):
        csr = CSR_BY_NAME.get(name)
        if csr is None:
            raise DeviceError(f"no CSR named {name!r}")
        if csr.access == "r":
            raise DeviceError(f"CSR {name} is read-only")
        if not 0 <= value < 1 << 32:
            raise DeviceError(f"CSR {name}: {value} does not fit 32 bits")
        self._csr[name] = value

    def read_csr(self, name):
        csr = CSR_BY_NAME.get(name)
        if csr is None:
            raise DeviceError(f"no CSR named {name!r}")
        return self._csr[name]

    def csr_state(self):
        return {c: self._csr[c] for c in CSR_BY_NAME if CSR_BY_NAME[c].access != "w"}

    def check_id(self):
        """Refuse a device built for another hardware configuration."""
        got, want = self.read_csr("id"), self.hw.config_hash
        if got != want:
            raise DeviceError(f"device ID {got:#010x} does not match hardware config '{self.hw.name}' "
                              f"({want:#010x}): wrong bitstream or wrong --hw")


class IsaDevice(Device):
    """The ISA simulator as a device: DRAM is a ``bytearray``, a run executes the program in Python."""

    name = "isa"

    def __init__(self, hw, dram_bytes):
        super().__init__(hw, dram_bytes)
        self.dram = bytearray(dram_bytes)
        self.machine = IsaMachine(self.dram, hw.tlmm.tables, hw.tlmm.lanes, hw.dram.bus_bytes,
                                  activations=hw.vector.activations)
        self.last_work = None

    def write(self, addr, data):
        self._check_range(addr, len(data))
        self.dram[addr:addr + len(data)] = data

    def read(self, addr, n):
        self._check_range(addr, n)
        return bytes(self.dram[addr:addr + n])

    def run(self, timeout_s=None):
        c = self._csr
        c["status"] = 0
        try:
            self.last_work = self.machine.run(c["program"], tokens=c["tokens"], n_tokens=c["n_tokens"],
                                              pos=c["pos"], logits=c["logits"], all_logits=c["all_logits"] & 1)
        except IsaRuntimeError as e:
            c["status"] = STATUS_DONE | (e.code.value << STATUS_ERROR_SHIFT)
            c["error_pc"] = e.pc or 0
            raise DeviceError(f"run failed: {e}", code=e.code, csrs=self.csr_state()) from None
        c["status"] = STATUS_DONE | (ErrorCode.NONE.value << STATUS_ERROR_SHIFT)


def _verilator_device(hw, dram_bytes, **kwargs):
    # Imported on use: the Verilator device needs cocotb and the simulation toolchain.
    from .verilator_device import VerilatorDevice

    return VerilatorDevice(hw, dram_bytes, **kwargs)


def _board_device(hw, dram_bytes, **kwargs):
    # Imported on use: the board device needs pyserial (or a test transport).
    from .board_device import make_board_device

    return make_board_device(hw, dram_bytes, **kwargs)


DEVICES = {"isa": IsaDevice, "verilator": _verilator_device, "board": _board_device}


def make_device(name, hw, dram_bytes, **options):
    """The named device with ``dram_bytes`` of DRAM; ``options`` are the device's own keyword arguments
    (``verilator``: ``waves``, ``timeout_cycles``; ``board``: ``port``, ``baud``, ``timeout_s``, ``retries``)."""
    if name not in DEVICES:
        raise ValueError(f"unknown device '{name}' (available: {', '.join(DEVICES)})")
    if options and name == "isa":
        raise ValueError(f"the isa device takes no options, got {', '.join(sorted(options))}")
    return DEVICES[name](hw, dram_bytes, **options)
