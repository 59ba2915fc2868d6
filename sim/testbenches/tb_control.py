"""cocotb testbench of the command processor behind its AXI4-Lite CSR slave (``ControlHarness``), with
cocotbext-axi: an ``AxiLiteMaster`` plays the driver's CPU and an ``AxiRamRead`` holds the program.

Environment: ``CONTROL_PARAMS`` JSON with ``image`` (hex of the DRAM image), ``program``, ``n_instructions``,
``units`` (commands the program sends to units), ``bad_at`` (index of an instruction to corrupt for the
error run) and ``config_id``.
"""

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles
from cocotbext.axi import AxiLiteBus, AxiLiteMaster, AxiRamRead, AxiReadBus

from hw.csr_map import CSR_BY_NAME
from hw.isa import INSTRUCTION_BYTES, ErrorCode

P = json.loads(os.environ["CONTROL_PARAMS"])


def _off(name):
    return CSR_BY_NAME[name].offset


async def _setup(dut):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    csr = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "csr_"), dut.clk, dut.rst)
    ram = AxiRamRead(AxiReadBus.from_prefix(dut, "axi_"), dut.clk, dut.rst, size=1 << 16)
    return csr, ram


async def _rd(csr, name):
    return int.from_bytes((await csr.read(_off(name), 4)).data, "little")


async def _wr(csr, name, value):
    await csr.write(_off(name), int(value).to_bytes(4, "little"))


async def _run(csr, image_len, args):
    for name, value in {"program": P["program"], "dram_size": image_len, **args}.items():
        await _wr(csr, name, value)
    await _wr(csr, "control", 1)
    for _ in range(5000):
        status = await _rd(csr, "status")
        if status & 1 and not status & 2:
            return status
    raise AssertionError("the run did not finish")


@cocotb.test()
async def test_program_runs_and_errors_are_reported(dut):
    csr, ram = await _setup(dut)
    image = bytes.fromhex(P["image"])
    ram.write(0, image)
    assert await _rd(csr, "id") == P["config_id"]
    args = {"tokens": 0, "n_tokens": 2, "pos": 3, "logits": 0, "all_logits": 1}
    status = await _run(csr, len(image), args)
    assert status >> 4 == ErrorCode.NONE.value, hex(status)
    assert await _rd(csr, "instructions") == P["n_instructions"]
    busy = [await _rd(csr, f"busy_{u}") for u in ("embed", "linear", "attend", "logits")]
    assert sum(busy) == P["units"] * P["busy_cycles"], busy
    lo = await _rd(csr, "cycles_lo")
    hi = await _rd(csr, "cycles_hi")
    assert hi == 0 and lo > await _rd(csr, "run_cycles") > 0
    # Registers read back; an address beyond the map reads 0.
    assert await _rd(csr, "pos") == 3
    assert int.from_bytes((await csr.read(0x400, 4)).data, "little") == 0
    # A corrupted instruction: ILLEGAL_INSTRUCTION at its address, done raised.
    bad = P["program"] + P["bad_at"] * INSTRUCTION_BYTES
    ram.write(bad, bytes([0xEE]))
    status = await _run(csr, len(image), args)
    assert status >> 4 == ErrorCode.ILLEGAL_INSTRUCTION.value, hex(status)
    assert await _rd(csr, "error_pc") == bad
    # Repaired: the next start runs clean (start clears the error).
    ram.write(bad, image[bad:bad + 1])
    status = await _run(csr, len(image), args)
    assert status >> 4 == ErrorCode.NONE.value
