"""A stand-in for the accelerator's top level (``hw/top.py``), with the same ports, for developing and testing
the co-simulation device (``firmware/verilator_device.py``) before and besides the real units.

Inside: the real :class:`~hw.control.command_processor.CommandProcessor` behind the real
:class:`~hw.control.axi_lite.AxiLiteCsrBridge` (so CSRs, program fetch and every error code are the RTL's),
and stand-in units that accept a command and stay busy for ``busy_cycles`` cycles. The LOGITS stand-in also
writes :func:`logits_pattern` to ``args.logits`` through an :class:`~hw.memory.axi_write.AxiBurstWriter`
(one padded row of ``rows`` int32 values, the command's ``rows`` field), so the AXI4 write path is
exercised; it stays busy until the writer has its last write response. A LINEAR command whose ``layer`` is
``hang_layer`` never finishes (for watchdog tests, without a second build); only a reset ends it. ``irq`` is
high while ``status.done`` is set.

Not part of the accelerator.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from hw.control.axi_lite import AxiLiteCsrBridge, AxiLiteSignature
from hw.control.command_processor import CommandProcessor
from hw.csr_map import UNITS
from hw.memory.axi import AxiReadSignature
from hw.memory.axi_write import AxiBurstWriter, AxiWriteSignature

__all__ = ["HANG_LAYER", "PATTERN_BASE", "DeviceStandin", "logits_pattern"]

#: The default ``hang_layer``.
HANG_LAYER = 255

#: Value ``k`` of the LOGITS stand-in's row is ``PATTERN_BASE + k``.
PATTERN_BASE = 0x5A000000


def logits_pattern(rows, data_bits):
    """The bytes the LOGITS stand-in writes for a command with ``rows`` rows (padded to whole bus words)."""
    per_word = data_bits // 32
    n = -(-rows // per_word) * per_word
    return b"".join((PATTERN_BASE + k).to_bytes(4, "little") for k in range(n))


class DeviceStandin(wiring.Component):
    """See the module docstring.

    Parameters
    ----------
    hw : hw.config.HwConfig
    busy_cycles : int
        Cycles a stand-in unit stays busy after a command.
    hang_layer : int or None
        A LINEAR command with this ``layer`` keeps the unit busy until reset (``None``: never).
    max_tokens : int or None
        Most tokens per run (default: ``hw.limits.max_chunk`` when the config has it, else 16).
    """

    def __init__(self, hw, *, busy_cycles=7, hang_layer=HANG_LAYER, max_tokens=None):
        data_bits = hw.dram.data_bits
        if data_bits < 32:
            raise ValueError(f"DeviceStandin needs a bus of at least 32 bits, got {data_bits}")
        if max_tokens is None:
            limits = getattr(hw, "limits", None)
            max_tokens = getattr(limits, "max_chunk", 16)
        self.hw, self.busy_cycles, self.hang_layer = hw, busy_cycles, hang_layer
        self.cp = CommandProcessor(hw.config_hash, data_bits, lanes=hw.tlmm.lanes, max_tokens=max_tokens)
        self.bridge = AxiLiteCsrBridge(16, self.cp.csr.addr.shape().width)
        self.writer = AxiBurstWriter(32, data_bits, max_burst=16, max_outstanding=2, beats_bits=20)
        rd_id = self.cp.signature.members["axi"].signature.id_bits
        super().__init__({
            "csr": In(AxiLiteSignature(16)),
            "axi_rd": Out(AxiReadSignature(32, data_bits, rd_id)),
            "axi_wr": Out(AxiWriteSignature(32, data_bits, self.writer.axi_signature.id_bits)),
            "irq": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.cp, m.submodules.bridge = cp, br = self.cp, self.bridge
        m.submodules.writer = wr = self.writer
        wiring.connect(m, wiring.flipped(self.csr), br.axi)
        wiring.connect(m, br.csr, cp.csr)
        wiring.connect(m, wiring.flipped(self.axi_rd), cp.axi)
        wiring.connect(m, wiring.flipped(self.axi_wr), wr.axi)

        busy = []
        for u in UNITS:
            port = getattr(cp, u)
            left = Signal(range(self.busy_cycles + 1), name=f"{u}_left")
            hung = Signal(name=f"{u}_hung")
            extra = Signal(name=f"{u}_extra")
            fire = port.valid & port.ready
            m.d.comb += port.ready.eq((left == 0) & ~extra & ~hung)
            with m.If(fire):
                m.d.sync += left.eq(self.busy_cycles)
                if u == "linear" and self.hang_layer is not None:
                    m.d.sync += hung.eq(port.payload.layer == self.hang_layer)
            with m.Elif(left != 0):
                m.d.sync += left.eq(left - 1)
            if u == "logits":
                self._logits_writes(m, port, fire, extra)
            busy.append((left != 0) | extra | hung)
        m.d.comb += cp.busy.eq(Cat(*busy))

        # irq = status.done, as the top level: set when a run ends, cleared by the write of control.start
        # (the run itself starts a cycle later).
        m.d.comb += self.irq.eq(cp.done)
        return m

    def _logits_writes(self, m, port, fire, busy):
        """On a LOGITS command: one write command of the padded row, then the pattern words; ``busy`` until
        the writer is idle again."""
        wr = self.writer
        data_bits = self.hw.dram.data_bits
        per_word = data_bits // 32
        beats = Signal(20)
        sent = Signal(20)
        issued = Signal()
        m.d.comb += beats.eq((port.payload.rows + per_word - 1) >> exact_log2(per_word))
        n_beats = Signal(20)
        with m.If(fire):
            m.d.sync += [busy.eq(1), n_beats.eq(beats), sent.eq(0), issued.eq(0)]
        with m.If(busy):
            m.d.comb += [wr.cmd.valid.eq(~issued), wr.cmd.payload.addr.eq(self.cp.args.logits),
                         wr.cmd.payload.beats.eq(n_beats)]
            with m.If(wr.cmd.valid & wr.cmd.ready):
                m.d.sync += issued.eq(1)
            m.d.comb += [
                wr.data.valid.eq(issued & (sent != n_beats)),
                wr.data.payload.eq(Cat(*((sent * per_word + j + PATTERN_BASE)[:32] for j in range(per_word)))),
            ]
            with m.If(wr.data.valid & wr.data.ready):
                m.d.sync += sent.eq(sent + 1)
            with m.If(issued & (sent == n_beats) & wr.idle):
                m.d.sync += busy.eq(0)
