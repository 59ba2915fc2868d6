"""cocotb testbench for ``tests/sim_designs/collision_ram.py`` (run by ``tests/test_collision.py``).

``COLLIDE=1`` in the environment makes the second write meet a used read of the same word, which the
design's simulation check (an immediate assertion, compiled by Verilator with ``--assert``) must stop.
"""

import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

COLLIDE = os.environ.get("COLLIDE") == "1"


@cocotb.test()
async def test_reads_and_writes(dut):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    # (write address, write enable, read address, used): the first writes and reads different words
    for wa, we, ra, used in [(5, 1, 6, 1), (9, 1, 9 if COLLIDE else 8, 1), (7, 0, 5, 1)]:
        dut.wa.value, dut.wd.value, dut.we.value = wa, wa * 3, we
        dut.ra.value, dut.used.value = ra, used
        await RisingEdge(dut.clk)
    dut.we.value = 0
    await ClockCycles(dut.clk, 2)
    assert int(dut.rd.value) == 15          # word 5, written in the first cycle
