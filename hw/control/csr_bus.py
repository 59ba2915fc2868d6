"""A minimal CSR bus: 32-bit registers by index, one access per cycle, read data :data:`READ_LATENCY` cycles
later.

The command processor exposes its registers (``hw/csr_map.py``) on this bus; the top level puts an
AXI4-Lite slave (``hw/control/axi_lite.py``) in front of it.
"""

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..params import check_int

__all__ = ["CsrBusSignature", "READ_LATENCY"]

#: Cycles from ``r_stb`` to ``r_data``: the command processor chooses among its registers in two registered
#: steps (a choice among 30-odd 32-bit registers in one cycle was 11.82 ns routed on the ECP5 shell at
#: 6c79f98). ``r_data`` then holds until the next read.
READ_LATENCY = 2


class CsrBusSignature(wiring.Signature):
    """From the initiator's side: ``addr`` (register index), ``w_stb`` with ``w_data`` writes it this cycle;
    ``r_stb`` reads it, with ``r_data`` valid :data:`READ_LATENCY` cycles later; ``addr`` need not be held.

    Parameters
    ----------
    addr_bits : int
        Register-index width.
    """

    def __init__(self, addr_bits):
        self.addr_bits = check_int("addr_bits", addr_bits, 1, 16, "CsrBusSignature")
        super().__init__({
            "addr": Out(addr_bits),
            "w_stb": Out(1),
            "w_data": Out(32),
            "r_stb": Out(1),
            "r_data": In(32),
        })

    def __eq__(self, other):
        return type(other) is type(self) and other.addr_bits == self.addr_bits

    def __hash__(self):
        return hash((type(self), self.addr_bits))

    def __repr__(self):
        return f"CsrBusSignature({self.addr_bits})"
