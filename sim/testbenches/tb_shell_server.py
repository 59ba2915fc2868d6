"""cocotb testbench that serves the simulated board shell (``sim.shell_top.ShellSimTop``) to
``firmware.shell_transport.SimulatedUart`` over a Unix socket: bytes from the socket go out on the UART's
``rx`` pin bit by bit, bytes sampled on ``tx`` go back. The protocol is in ``sim/shell_top.py``.

Environment: ``TRILLIUM_SHELL_SOCKET`` (the socket the client listens on) and ``TRILLIUM_SHELL_PARAMS``
(JSON: ``period_ns``, ``divisor``, ``reset_cycles``).

Python does little per simulated cycle: ``rx`` is driven with one ``Timer`` per run of equal bits, ``tx`` is
sampled in the middle of each bit (a ``FallingEdge`` for the start bit, then one ``Timer`` per bit), and
while the design works on its own (link busy, accelerator running) time moves in slices of many cycles,
with a look at the socket between slices. When nothing is going on the simulator blocks on the socket and
simulated time stands still.
"""

import json
import logging
import os
import select
import socket

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, FallingEdge, Timer

from sim.cosim_top import ProtocolClosed, recv_message, send_message

#: Cycles per time slice while the link or the UART is busy, and while only the accelerator runs.
LINK_SLICE_CYCLES = 200
RUN_SLICE_CYCLES = 4000
#: Flush sampled tx bytes to the client once this many are buffered (and at every slice).
TX_FLUSH_BYTES = 256


class _Server:
    def __init__(self, dut, sock, params):
        self.dut, self.sock = dut, sock
        self.period = int(params["period_ns"])
        self.divisor = int(params["divisor"])
        self.bit_ns = self.period * self.divisor
        self.reset_cycles = int(params.get("reset_cycles", 4))
        self.rx_queue = bytearray()
        self.tx_buf = bytearray()
        self.tx_in_byte = False
        self.tx_framing_errors = 0
        self.closed = False

    # -- the UART -----------------------------------------------------------------------------------------

    async def drive_rx(self, data):
        """Send ``data`` on ``rx``: 8N1, LSB first, back to back; one Timer per run of equal bits."""
        runs = []
        for b in data:
            for level in [0, *((b >> i) & 1 for i in range(8)), 1]:
                if runs and runs[-1][0] == level:
                    runs[-1][1] += 1
                else:
                    runs.append([level, 1])
        rx = self.dut.rx
        for level, n in runs:
            rx.value = level
            await Timer(n * self.bit_ns, "ns")
        rx.value = 1

    async def sample_tx(self):
        """Forever: a falling edge on ``tx`` starts a byte; sample each bit in its middle."""
        tx = self.dut.tx
        while True:
            await FallingEdge(tx)
            self.tx_in_byte = True
            await Timer(self.bit_ns // 2, "ns")    # the middle of the start bit
            if tx.value:                         # a glitch, not a start bit
                self.tx_in_byte = False
                continue
            await Timer(self.bit_ns, "ns")
            byte = 0
            for i in range(8):
                byte |= int(tx.value) << i
                await Timer(self.bit_ns, "ns")
            if not tx.value:
                self.tx_framing_errors += 1
            else:
                self.tx_buf.append(byte)
            self.tx_in_byte = False
            if len(self.tx_buf) >= TX_FLUSH_BYTES:
                self.flush()

    def flush(self):
        if self.tx_buf and not self.closed:
            data, self.tx_buf = bytes(self.tx_buf), bytearray()
            try:
                send_message(self.sock, {"op": "tx"}, data)
            except OSError:
                self.closed = True

    # -- requests ---------------------------------------------------------------------------------------

    def status(self):
        d = self.dut
        return {"op": "status", "violation": int(d.violation.value),
                "sdram_initialized": int(d.sdram_initialized.value), "sdram_ready": int(d.sdram_ready.value),
                "running": int(d.running.value), "irq": int(d.irq.value),
                "link_busy": int(d.link_busy.value), "cycles": int(get_sim_time("ns") // self.period),
                "tx_framing_errors": self.tx_framing_errors}

    def busy(self):
        d = self.dut
        return bool(self.tx_in_byte or not d.tx.value or d.link_busy.value or d.running.value or self.tx_buf)

    def take_messages(self, block):
        """Read the client's messages: wait for one if ``block``, then take whatever else is there. Returns
        False when the client quit or went away."""
        timeout = None if block else 0
        while True:
            try:
                readable, _, _ = select.select([self.sock], [], [], timeout)
            except InterruptedError:
                continue
            if not readable:
                return True
            try:
                header, payload = recv_message(self.sock)
            except (ProtocolClosed, OSError):
                return False
            op = header.get("op")
            if op == "rx":
                self.rx_queue += payload
            elif op == "status":
                self.flush()
                send_message(self.sock, self.status())
            elif op == "quit":
                self.flush()
                send_message(self.sock, {"op": "bye"})
                return False
            else:
                send_message(self.sock, {"op": "error", "error": f"unknown request {op!r}"})
            timeout = 0

    async def serve(self):
        send_message(self.sock, {"op": "hello", "pid": os.getpid(), "period_ns": self.period,
                                 "divisor": self.divisor})
        cocotb.start_soon(self.sample_tx())
        while not self.closed:
            busy = self.busy()
            if not self.take_messages(block=not busy and not self.rx_queue):
                return
            if self.rx_queue:
                data, self.rx_queue = bytes(self.rx_queue), bytearray()
                await self.drive_rx(data)
            elif self.busy():
                # The accelerator alone: longer slices; the link or the UART at work: short ones.
                d = self.dut
                quiet = not (self.tx_in_byte or not d.tx.value or d.link_busy.value)
                await Timer((RUN_SLICE_CYCLES if quiet else LINK_SLICE_CYCLES) * self.period, "ns")
            self.flush()


@cocotb.test()
async def serve(dut):
    """Serve the client until it quits or goes away (a normal end of this test)."""
    params = json.loads(os.environ["TRILLIUM_SHELL_PARAMS"])
    logging.getLogger("cocotb").setLevel(logging.WARNING)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.environ["TRILLIUM_SHELL_SOCKET"])
    server = _Server(dut, sock, params)
    dut.rx.value = 1
    dut.rst.value = 1
    cocotb.start_soon(Clock(dut.clk, server.period, unit="ns").start())
    await ClockCycles(dut.clk, server.reset_cycles)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    try:
        await server.serve()
    finally:
        sock.close()
