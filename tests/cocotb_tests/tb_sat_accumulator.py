"""cocotb testbench for ``tests/sim_designs/sat_accumulator.py``.

Run through ``sim.run_cocotb`` (see ``tests/test_sim_toolchain.py``); the
module is named ``tb_*`` rather than ``test_*`` so that pytest does not try to
collect it outside a simulator.

Environment (set through ``run_cocotb(extra_env=...)``):

``SAT_ACC_PARAMS``
    JSON object: ``width`` (accumulator width, required) and optionally
    ``cycles`` (length of the random test; by default long enough to reach
    both saturation bounds).
``SAT_ACC_INJECT_BUG``
    ``1`` makes the reference model wrong on purpose, to prove that a
    mismatch fails the run (the harness must not pass silently).
"""

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly

PARAMS = json.loads(os.environ["SAT_ACC_PARAMS"])
WIDTH = int(PARAMS["width"])
INJECT_BUG = os.environ.get("SAT_ACC_INJECT_BUG") == "1"
LO, HI = -(1 << (WIDTH - 1)), (1 << (WIDTH - 1)) - 1
VALID_RATE = 0.7
# A biased phase draws samples from [0, 127] (or [-128, 0]), drifting by about
# VALID_RATE * 64 per cycle; make it long enough to cross the whole range.
PHASE = int(1.5 * (HI - LO) / (VALID_RATE * 64)) + 50
CYCLES = int(PARAMS.get("cycles", 4 * PHASE))


class Model:
    """Cycle-level reference: ``acc`` as it will read after the next edge."""

    def __init__(self):
        self.acc = 0

    def step(self, valid: bool, payload: int, clear: bool) -> None:
        if clear:
            self.acc = 0
        elif valid:
            total = self.acc + payload + (1 if INJECT_BUG else 0)
            self.acc = min(HI, max(LO, total))


async def start(dut):
    """Start the clock, reset for two cycles and leave inputs idle."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.clear.value = 0
    dut.i__valid.value = 0
    dut.i__payload.value = 0
    await ClockCycles(dut.clk, 2)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


async def drive_and_check(dut, model: Model, valid: bool, payload: int, clear: bool) -> None:
    """Apply one cycle of inputs at the falling edge and check the outputs.

    Inputs change at the falling edge and outputs are read in the ReadOnly
    phase of that same step, half a cycle away from the rising edge on which
    the design samples, which is the race-free pattern on Verilator.
    """
    await FallingEdge(dut.clk)
    dut.i__valid.value = int(valid)
    dut.i__payload.value = payload
    dut.clear.value = int(clear)
    await ReadOnly()
    got = dut.acc.value.to_signed()
    assert got == model.acc, f"acc={got}, model expects {model.acc}"
    # A 1-bit port reads as a Logic, not a LogicArray: compare via int().
    assert int(dut.i__ready.value) == int(not clear), "ready must be ~clear"
    model.step(valid, payload, clear)


@cocotb.test()
async def test_random_stream(dut):
    """Random samples with random valid gaps, occasional clears and phases
    biased up or down so that both saturation bounds are reached."""
    await start(dut)
    model = Model()
    hit_hi = hit_lo = False
    for cycle in range(CYCLES):
        # Phases: unbiased, pushing up, unbiased, pushing down.
        phase = (cycle // PHASE) % 4
        low, high = {0: (-128, 127), 1: (0, 127), 2: (-128, 127), 3: (-128, 0)}[phase]
        valid = random.random() < VALID_RATE
        # Rare clears; not in biased phases, which must reach the bounds.
        clear = phase in (0, 2) and random.random() < 0.01
        await drive_and_check(dut, model, valid, random.randint(low, high), clear)
        hit_hi |= model.acc == HI
        hit_lo |= model.acc == LO
    await drive_and_check(dut, model, False, 0, False)
    assert hit_hi and hit_lo, f"stimulus too weak: reached HI={hit_hi}, LO={hit_lo}"


@cocotb.test()
async def test_edges(dut):
    """Directed corners: extreme samples, saturation hold, clear beats valid."""
    await start(dut)
    model = Model()
    steps = (
        [(True, 127, False)] * ((HI // 127) + 3)  # run into HI and stay there
        + [(True, -128, True), (False, 0, False)]  # clear wins over a valid sample
        + [(True, -128, False)] * ((-LO // 128) + 3)  # run into LO and stay there
        + [(True, 127, False), (False, 127, False), (True, 0, False)]  # gaps hold value
    )
    for valid, payload, clear in steps:
        await drive_and_check(dut, model, valid, payload, clear)
    await drive_and_check(dut, model, False, 0, False)
