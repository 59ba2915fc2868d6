"""cocotb testbench that serves a co-simulated accelerator (``sim.cosim_top.CosimTop``) to the driver's
``VerilatorDevice`` (``firmware/verilator_device.py``) over a Unix socket, until told to quit or until the
socket closes. The protocol is described in ``sim/cosim_top.py``.

Environment: ``TRILLIUM_DEVICE_SOCKET`` (the socket path the driver listens on) and
``TRILLIUM_DEVICE_PARAMS`` (JSON: ``depth`` and ``data_bits`` of the DRAM, ``period_ns`` of the clock,
``reset_cycles``).

DRAM transfers go through the design's backdoor ports, one bus word per cycle (``load`` to write,
``peek`` to read). CSR accesses go through cocotbext-axi's ``AxiLiteMaster``. A run waits on
``First(RisingEdge(irq), Timer(...))`` in slices, so Python is not woken every cycle; between slices it
checks the cycle budget, the wall-clock limit and whether the driver is still there. Socket reads block
the simulator, which is what we want: simulated time stands still while the driver thinks.
"""

import json
import logging
import os
import select
import socket
import time

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer
from cocotbext.axi import AxiLiteBus, AxiLiteMaster

from hw.csr_map import CSR_BY_NAME
from sim.cosim_top import ProtocolClosed, recv_message, send_message

#: Cycles simulated between two looks at the budget, the wall clock and the socket during a run, at first;
#: then as many as take about SLICE_S seconds.
SLICE_CYCLES = 10_000
MAX_SLICE_CYCLES = 1_000_000
SLICE_S = 0.2


class _Server:
    def __init__(self, dut, sock, params):
        self.dut, self.sock = dut, sock
        self.depth, self.data_bits = params["depth"], params["data_bits"]
        self.bytes = self.data_bits // 8
        self.abits = max(1, (self.depth - 1).bit_length())
        self.period = int(params["period_ns"])
        self.reset_cycles = int(params.get("reset_cycles", 4))
        self.csr = None

    # -- clock, reset and the DRAM backdoor ------------------------------------------------------------

    async def reset(self, cycles=None):
        dut = self.dut
        dut.rst.value = 1
        await ClockCycles(dut.clk, cycles or self.reset_cycles)
        dut.rst.value = 0
        await ClockCycles(dut.clk, 2)

    async def peek(self, first, n):
        dut, out = self.dut, []
        for i in range(n):
            dut.peek__addr.value = first + i
            await RisingEdge(dut.clk)
            out.append(dut.peek__data.value.to_unsigned())
        return out

    async def load(self, first, words):
        dut = self.dut
        dut.load__valid.value = 1
        for i, w in enumerate(words):
            dut.load__payload.value = (w << self.abits) | (first + i)
            await RisingEdge(dut.clk)
        dut.load__valid.value = 0

    def _check(self, addr, n):
        if addr < 0 or n < 0 or addr + n > self.depth * self.bytes:
            raise ValueError(f"{n} bytes at {addr:#x} are outside the DRAM model's {self.depth * self.bytes} bytes")

    async def write(self, addr, payload):
        n = len(payload)
        self._check(addr, n)
        if n == 0:
            return
        B = self.bytes
        first, last = addr // B, (addr + n - 1) // B
        buf = bytearray((last - first + 1) * B)
        head, tail = addr % B != 0, (addr + n) % B != 0
        if head:
            buf[:B] = (await self.peek(first, 1))[0].to_bytes(B, "little")
        if tail and not (head and last == first):
            buf[-B:] = (await self.peek(last, 1))[0].to_bytes(B, "little")
        buf[addr - first * B:addr - first * B + n] = payload
        words = [int.from_bytes(buf[i:i + B], "little") for i in range(0, len(buf), B)]
        await self.load(first, words)

    async def read(self, addr, n):
        self._check(addr, n)
        if n == 0:
            return b""
        B = self.bytes
        first, last = addr // B, (addr + n - 1) // B
        words = await self.peek(first, last - first + 1)
        raw = b"".join(w.to_bytes(B, "little") for w in words)
        return raw[addr - first * B:addr - first * B + n]

    # -- CSRs and runs -----------------------------------------------------------------------------------

    async def csr_write(self, offset, value):
        await self.csr.write(offset, int(value).to_bytes(4, "little"))

    async def csr_read(self, offset):
        return int.from_bytes((await self.csr.read(offset, 4)).data, "little")

    def peer_closed(self):
        """True when the driver closed its end (or its process died)."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return False
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    async def run(self, max_cycles, wall_s):
        dut = self.dut
        t0 = get_sim_time("ns")
        start = time.monotonic()
        await self.csr_write(CSR_BY_NAME["control"].offset, 1)
        timed_out = None
        slice_cycles = SLICE_CYCLES
        while not dut.irq.value:
            left = max_cycles - (get_sim_time("ns") - t0) // self.period
            if left <= 0:
                timed_out = "cycles"
                break
            if wall_s is not None and time.monotonic() - start > wall_s:
                timed_out = "wall"
                break
            if self.peer_closed():
                raise ProtocolClosed("the driver went away during a run")
            step = int(min(left, slice_cycles))
            t = time.monotonic()
            await First(RisingEdge(dut.irq), Timer(step * self.period, "ns"))
            # Aim at SLICE_S of wall time per slice, whatever the design's speed.
            per_cycle = max(time.monotonic() - t, 1e-6) / step
            slice_cycles = int(min(max(SLICE_S / per_cycle, 1000), MAX_SLICE_CYCLES))
        cycles = int((get_sim_time("ns") - t0) // self.period)
        return {"cycles": cycles, "timed_out": timed_out, "wall_s": round(time.monotonic() - start, 6)}

    # -- the request loop --------------------------------------------------------------------------------

    async def handle(self, header, payload):
        op = header.get("op")
        if op == "write":
            await self.write(int(header["addr"]), payload)
            return {}, b""
        if op == "read":
            return {}, await self.read(int(header["addr"]), int(header["n"]))
        if op == "csr_write":
            await self.csr_write(int(header["offset"]), int(header["value"]))
            return {}, b""
        if op == "csr_read":
            return {"values": [await self.csr_read(int(o)) for o in header["offsets"]]}, b""
        if op == "run":
            return await self.run(int(header["max_cycles"]), header.get("wall_s")), b""
        if op == "reset":
            await self.reset(header.get("cycles"))
            return {}, b""
        if op == "quit":
            return {}, b""
        raise ValueError(f"unknown request {op!r}")

    async def serve(self):
        dut = self.dut
        send_message(self.sock, {"op": "hello", "ok": True, "pid": os.getpid(), "depth": self.depth,
                                 "data_bits": self.data_bits, "period_ns": self.period})
        while True:
            try:
                header, payload = recv_message(self.sock)
            except (ProtocolClosed, OSError):
                return
            try:
                reply, data = await self.handle(header, payload)
                reply["ok"] = True
            except ProtocolClosed:
                return
            except Exception as e:  # noqa: BLE001 -- reported to the driver, which raises DeviceError
                reply, data = {"ok": False, "error": f"{type(e).__name__}: {e}"}, b""
            reply["violation"] = int(dut.dram_violation.value)
            try:
                send_message(self.sock, reply, data)
            except OSError:
                return
            if header.get("op") == "quit":
                return


@cocotb.test()
async def serve(dut):
    """Serve the driver until it quits or goes away (a normal end of this test)."""
    params = json.loads(os.environ["TRILLIUM_DEVICE_PARAMS"])
    # cocotbext-axi logs every transaction at INFO: keep the simulator log to warnings and errors.
    logging.getLogger("cocotb").setLevel(logging.WARNING)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.environ["TRILLIUM_DEVICE_SOCKET"])
    server = _Server(dut, sock, params)
    dut.load__valid.value = 0
    dut.peek__addr.value = 0
    dut.rst.value = 1
    cocotb.start_soon(Clock(dut.clk, server.period, unit="ns").start())
    server.csr = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "csr_"), dut.clk, dut.rst)
    await server.reset()
    try:
        await server.serve()
    finally:
        sock.close()
