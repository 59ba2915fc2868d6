"""The board shell in Verilator: :class:`~hw.board.shell.Ulx3sShell` with an
:class:`~hw.board.sdram_model.SdramModel` on its SDRAM pins, so the whole board path (UART link, accelerator,
arbiters, SDRAM controller, SDRAM protocol) runs as one simulated design and the host's
:class:`~firmware.board_device.BoardDevice` talks to it over the UART pins.

:class:`ShellSimTop`'s ports are only the UART lines and status bits:

* ``rx`` (in), ``tx`` (out): the UART, driven and sampled bit by bit by the testbench;
* ``irq``, ``running``, ``link_busy``, ``sdram_ready``: the shell's status (the server uses ``running``,
  ``link_busy`` and ``tx`` to decide whether simulated time must move while the host is silent);
* ``violation`` (:class:`~hw.board.sdram_model.SdramViolation`, 4 bits): the SDRAM model's sticky protocol
  check; ``sdram_initialized``: the model saw the init sequence.

The SDRAM model keeps its words in a plain Verilog array (``backing="verilog"``): :func:`shell_verilog`
appends :data:`~hw.board.sdram_model.SDRAM_ARRAY_VERILOG` to the exported design. The model is smaller than
the chip (4 MiB by default); the controller addresses the chip's 32 MB and the model repeats every
``model_bytes``, so the host must stay below ``model_bytes``.

The server protocol
-------------------
``sim/testbenches/tb_shell_server.py`` serves the design to :class:`firmware.shell_transport.SimulatedUart`
over a Unix stream socket (the client listens, the simulator connects), with the frames of
:func:`sim.cosim_top.send_message` (a JSON header and a raw payload). The simulator first sends ``{"op":
"hello", "pid", "period_ns", "divisor", ...}``; then:

* client -> simulator ``{"op": "rx"}`` + payload: bytes to send on ``rx`` (8N1 at the shell's divisor, back
  to back, after any still queued);
* simulator -> client ``{"op": "tx"}`` + payload: bytes received on ``tx``, as they complete;
* client -> simulator ``{"op": "status"}``: answered (between ``tx`` frames) by ``{"op": "status",
  "violation", "sdram_initialized", "sdram_ready", "running", "irq", "cycles", "tx_framing_errors"}``;
* client -> simulator ``{"op": "quit"}``: answered by ``{"op": "bye"}``; the simulator exits, as it does when
  the socket closes.

Simulated time moves while there are ``rx`` bits to drive, while the link is busy or a ``tx`` byte is on
the line, and while the accelerator runs (``running``); otherwise the simulator waits on the socket and
time stands still (nothing in the design would change). So a host's wall-clock timeouts are about the
simulator's speed, never about a lost byte that simulated time would have recovered.
"""

from __future__ import annotations

import json

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.board.sdram import SdramTiming
from hw.board.sdram_model import SDRAM_ARRAY_VERILOG, SdramModel, SdramViolation
from hw.board.shell import Ulx3sShell

__all__ = ["SIM_CLK_HZ", "SIM_DIVISOR", "SIM_MODEL_BYTES", "SIM_TIMING", "TOPLEVEL", "ShellSimTop",
           "build_shell_sim", "shell_verilog"]

#: Verilog name of the shell simulation's top level.
TOPLEVEL = "trillium_shell"
#: The simulated clock: 50 MHz (20 ns), as the ULX3S shell design runs.
SIM_CLK_HZ = 50_000_000
#: Clock cycles per UART bit in simulation (the fewest the UART allows: short simulated transfers).
SIM_DIVISOR = 4
#: Bytes of SDRAM modelled.
SIM_MODEL_BYTES = 4 << 20
#: The ULX3S part's timing with a short power-up wait (2 us instead of 200 us).
SIM_TIMING = SdramTiming(t_powerup=2000.0)
#: The link's frame timeout in simulation (cycles): 50 byte times at the simulation divisor.
SIM_LINK_TIMEOUT = 2000


class ShellSimTop(wiring.Component):
    """The shell and an SDRAM model (see the module docstring).

    Parameters
    ----------
    shell : Ulx3sShell
    model_bytes : int
        Bytes of SDRAM modelled (a power of two).
    """

    def __init__(self, shell, model_bytes=SIM_MODEL_BYTES):
        if not isinstance(shell, Ulx3sShell):
            raise TypeError(f"ShellSimTop: shell must be an Ulx3sShell, got {shell!r}")
        self.shell = shell
        self.model = SdramModel(size_bytes=model_bytes, clock_hz=shell.clk_hz, timing=shell.sdram_timing,
                                geometry=shell.sdram_geometry, backing="verilog")
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "irq": Out(1),
            "running": Out(1),
            "link_busy": Out(1),
            "sdram_ready": Out(1),
            "violation": Out(4),
            "sdram_initialized": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.shell, m.submodules.sdram = shell, model = self.shell, self.model
        wiring.connect(m, shell.sdram, model.pins)
        m.d.comb += [
            shell.rx.eq(self.rx), self.tx.eq(shell.tx), self.irq.eq(shell.irq), self.running.eq(shell.running),
            self.link_busy.eq(shell.link_busy), self.sdram_ready.eq(shell.sdram_ready),
            self.violation.eq(model.violation.as_value()), self.sdram_initialized.eq(model.initialized),
        ]
        return m


def shell_verilog(top: ShellSimTop, name: str = TOPLEVEL) -> str:
    """The Verilog of ``top`` as module ``name``, with the SDRAM array module and a Verilator configuration
    section making the top level's ports (only) public for cocotb."""
    from .verilog import export_verilog

    from .cosim_top import ports_public

    return export_verilog(top, name) + SDRAM_ARRAY_VERILOG + ports_public(name)


def build_shell_sim(hw, *, divisor=SIM_DIVISOR, clk_hz=SIM_CLK_HZ, model_bytes=SIM_MODEL_BYTES, timing=SIM_TIMING,
                    link_timeout=SIM_LINK_TIMEOUT, max_payload=1024, waves=False):
    """Build (or reuse from the cache) the Verilator model of the shell for ``hw``; a :class:`sim.build.SimBuild`.

    The elaborated Verilog is cached too, keyed by the arguments, the hardware config and the digest of the
    gateware sources (as :func:`sim.cosim_top.build_cosim` does): elaborating the accelerator takes longer
    than starting a cached simulator.
    """
    from .build import build_verilog
    from .cosim_top import BUILD_ARGS, cached_verilog

    def make():
        shell = Ulx3sShell(hw, clk_hz=clk_hz, baud=clk_hz / divisor, sdram_timing=timing, max_payload=max_payload,
                           timeout_cycles=link_timeout)
        return shell_verilog(ShellSimTop(shell, model_bytes))

    key_text = json.dumps([hw.to_dict(), divisor, clk_hz, model_bytes, repr(timing), link_timeout, max_payload],
                          sort_keys=True)
    text = cached_verilog(TOPLEVEL, key_text, make)
    return build_verilog(text, TOPLEVEL, waves=waves, build_args=BUILD_ARGS)


# The violation codes, for messages.
VIOLATION_NAMES = {v.value: v.name for v in SdramViolation}
