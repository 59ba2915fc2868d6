"""A test design around the command processor: AXI4-Lite CSR slave in, AXI4 instruction fetch out, and
stand-in units inside that accept every command at once and stay busy for ``busy_cycles`` cycles.

Used by ``tb_control.py`` (cocotb + cocotbext-axi on Verilator); not part of the accelerator.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.control.axi_lite import AxiLiteCsrBridge, AxiLiteSignature
from hw.control.command_processor import CommandProcessor
from hw.csr_map import UNITS

__all__ = ["ControlHarness"]


class ControlHarness(wiring.Component):
    def __init__(self, config_id, data_bits, *, lanes=4, max_tokens=8, busy_cycles=7):
        self.cp = CommandProcessor(config_id, data_bits, lanes=lanes, max_tokens=max_tokens)
        self.bridge = AxiLiteCsrBridge(16, self.cp.csr.addr.shape().width)
        self.busy_cycles = busy_cycles
        super().__init__({"csr": In(AxiLiteSignature(16)),
                          "axi": Out(self.cp.signature.members["axi"].signature)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.cp, m.submodules.bridge = cp, br = self.cp, self.bridge
        wiring.connect(m, wiring.flipped(self.csr), br.axi)
        wiring.connect(m, br.csr, cp.csr)
        wiring.connect(m, wiring.flipped(self.axi), cp.axi)
        busy = []
        for u in UNITS:
            port = getattr(cp, u)
            left = Signal(range(self.busy_cycles + 1), name=f"{u}_left")
            m.d.comb += port.ready.eq(left == 0)
            with m.If(port.valid & port.ready):
                m.d.sync += left.eq(self.busy_cycles)
            with m.Elif(left != 0):
                m.d.sync += left.eq(left - 1)
            busy.append(left != 0)
        m.d.comb += cp.busy.eq(Cat(*busy))
        return m
