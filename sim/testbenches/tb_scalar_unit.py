"""cocotb testbench of ``hw.vector.ScalarUnit`` (per-token SFloat ALU) vs ``golden.sfloat``.

Environment: ``SCALAR_PARAMS`` JSON with ``e_bits``, ``multiplier`` and optionally ``n_random``
(random operations of the stalled test), ``ops`` (op names the random test draws from; default all) and
``report`` (path for the measured cycles per operation).

Streams are driven at the falling edge and sampled in ReadOnly; ``cmd.valid`` is held until the
transfer, and the result payload must stay stable while ``res.ready`` is low. Every operation must
produce ``res.valid`` within :data:`HANG_CYCLES` of its transfer, after exactly
``ScalarUnit.latency(...)`` cycles.

The command generators (:func:`random_commands`, :func:`corner_commands`) are also used by the
Amaranth-simulator tests in ``tests/test_scalar_unit.py``.
"""

import json
import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly

from hw.vector.scalar_unit import INT_BITS, Op, ScalarUnit, cmd_layout, reference_result, res_layout

#: An operation that has not produced its result this many cycles after its transfer hangs.
HANG_CYCLES = 80

M_MIN, M_MAX = 1 << 23, (1 << 24) - 1


def _params():
    return json.loads(os.environ.get("SCALAR_PARAMS", "{}"))


def command(op, a=(0, 0), b=(0, 0), k=0, i=0):
    """A command as a plain dict (the form :func:`reference_result` and the drivers take)."""
    return {"op": Op(op), "a": tuple(a), "b": tuple(b), "k": int(k), "i": int(i)}


def expected(cmd, e_bits):
    return reference_result(cmd["op"], cmd["a"], cmd["b"], cmd["k"], cmd["i"], e_bits=e_bits)


def expected_latency(unit, cmd):
    (am, ae), (bm, be) = cmd["a"], cmd["b"]
    return unit.latency(cmd["op"], a_e=ae, b_e=be, a_zero=am == 0, b_zero=bm == 0, i=cmd["i"],
                        mul_carry=am * bm >= 1 << 47)


def _erange(e_bits):
    return -(1 << (e_bits - 1)), (1 << (e_bits - 1)) - 1


def _mant(rng):
    r = rng.random()
    if r < 0.06:
        return 0
    if r < 0.12:
        return M_MAX
    if r < 0.18:
        return M_MIN
    return int(rng.integers(M_MIN, M_MAX + 1))


def _exp(rng, e_bits, spread=None):
    lo, hi = _erange(e_bits)
    r = rng.random()
    if r < 0.04:
        return lo
    if r < 0.08:
        return hi
    spread = min(hi, spread or hi // 3)
    return int(rng.integers(-spread, spread + 1))


def random_commands(rng, n, e_bits, ops=None):
    """``n`` random commands: mostly in-range exponents, some extremes, zeros and edge mantissas."""
    ops = [Op[o] if isinstance(o, str) else Op(o) for o in (ops or list(Op))]
    lo, hi = _erange(e_bits)
    out = []
    for _ in range(n):
        op = ops[int(rng.integers(len(ops)))]
        a = (_mant(rng), _exp(rng, e_bits))
        b = (_mant(rng), _exp(rng, e_bits))
        k, i = 0, 0
        if op == Op.ADD and rng.random() < 0.8:  # exponents close enough that both operands count
            b = (b[0], int(np.clip(a[1] + rng.integers(-28, 29), lo, hi)))
        elif op == Op.SCALE_POW2:
            k = int(rng.integers(lo, hi + 1)) if rng.random() < 0.3 else int(rng.integers(-64, 65))
        elif op == Op.FROM_INT:
            bits = int(rng.integers(0, INT_BITS + 1))
            i = (1 << bits) - 1 if rng.random() < 0.1 else int(rng.integers(0, 1 << bits)) if bits else 0
        out.append(command(op, a, b, k, i))
    return out


def corner_commands(e_bits, dense=True):
    """Edge cases of every operation (``dense=False``: a smaller subset for slow simulators).

    Zero operands (with arbitrary exponents), exponent extremes, the mantissa extremes 2^23 and
    2^24 - 1, results exactly at the normalisation boundaries (products 2^46 and near 2^48, quotient
    2^24, sums 2^24), odd and even exponents for SQRT, alignment distances 0, 23, 24, 25 and far
    beyond for ADD, every FROM_INT bit length, and division by zero.
    """
    lo, hi = _erange(e_bits)
    mants = [0, M_MIN, M_MIN + 1, M_MAX, M_MAX - 1, 0xC00000, 0xB504F3]
    if not dense:
        mants = [0, M_MIN, M_MAX, 0xB504F3]
    singles = [(m, e) for m in mants for e in (0, 1, -1, 7, -24, lo, hi, lo + 1, hi - 1, 12345 % hi)]
    epairs = [(0, 0), (0, 1), (1, 0), (0, 23), (24, 0), (0, 25), (-3, 22), (hi, lo), (lo, hi), (hi, hi),
              (lo, lo), (5, -400), (hi - 30, hi - 8), (lo + 3, lo + 20)]
    if not dense:
        epairs = [(0, 0), (0, 23), (24, 0), (0, 25), (hi, lo), (lo, hi), (hi, hi), (lo, lo)]
    out = []
    for op in (Op.MUL, Op.DIV, Op.ADD):
        for ma in mants:
            for mb in mants:
                for ea, eb in epairs:
                    out.append(command(op, (ma, ea), (mb, eb)))
    for a in singles:
        out.append(command(Op.SQRT, a))
        out.append(command(Op.TO_MULT, a))
        for k in ((0, 1, -1, hi, lo, -(hi - 8)) if dense else (0, hi, lo)):
            out.append(command(Op.SCALE_POW2, a, k=k))
    ints = {0, 1, 2, 3, (1 << INT_BITS) - 1}
    for n in range(1, INT_BITS):
        ints |= {(1 << n) - 1, 1 << n, (1 << n) + 1} if dense else {1 << n, (1 << (n + 1)) - 1}
    out += [command(Op.FROM_INT, i=i) for i in sorted(ints)]
    return out


def encode(layout, cmd):
    """The command as the integer value of the ``cmd__payload`` port."""
    return layout.const({
        "op": cmd["op"],
        "a": {"m": cmd["a"][0], "e": cmd["a"][1]},
        "b": {"m": cmd["b"][0], "e": cmd["b"][1]},
        "k": cmd["k"],
        "i": cmd["i"],
    }).as_bits()


def decode(layout, bits):
    r = layout.from_bits(bits)
    return int(r.value.m), int(r.value.e), int(r.div_by_zero), int(r.overflow)


# -- cocotb ----------------------------------------------------------------------------------------------

def _unit():
    p = _params()
    return ScalarUnit(e_bits=p.get("e_bits", 12), multiplier=p.get("multiplier", "serial"))


async def reset(dut):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.cmd__valid.value = 0
    dut.res__ready.value = 0
    await ClockCycles(dut.clk, 3)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


async def run_commands(dut, unit, cmds, rng, p_in_stall, p_out_stall):
    """Stream ``cmds`` through the unit and check every result.

    Returns the latency of each command and the cycles until the last result was taken.
    """
    cl, rl = unit.cmd_layout, unit.res_layout
    enc = [encode(cl, c) for c in cmds]
    want = [expected(c, unit.e_bits) for c in cmds]
    accepted, first_valid, got = [], [], []
    ci, c_valid, held, cycles = 0, False, None, 0
    while len(got) < len(cmds):
        if not c_valid and ci < len(cmds) and rng.random() >= p_in_stall:
            c_valid = True
            dut.cmd__payload.value = enc[ci]
        dut.cmd__valid.value = int(c_valid)
        out_ready = rng.random() >= p_out_stall
        dut.res__ready.value = int(out_ready)
        await ReadOnly()
        if int(dut.res__valid.value):
            j = len(got)
            assert j < len(accepted), f"result {j} before its command was accepted"
            if len(first_valid) == j:
                first_valid.append(cycles)
            payload = int(dut.res__payload.value)
            if held is not None:
                assert payload == held, f"result {j}: payload changed while stalled"
            held = None if out_ready else payload
            if out_ready:
                g = decode(rl, payload)
                assert g == want[j], (f"result {j} {cmds[j]}: got (m, e, dz, ovf) = {g}, "
                                      f"expected {want[j]}")
                got.append(g)
        elif len(got) < len(accepted):
            waited = cycles - accepted[len(got)]
            assert waited <= HANG_CYCLES, f"command {len(got)} {cmds[len(got)]} hangs ({waited} cycles)"
        if c_valid and int(dut.cmd__ready.value):
            assert len(accepted) == len(got), "a command was accepted while a result was pending"
            accepted.append(cycles)
            c_valid, ci = False, ci + 1
        await FallingEdge(dut.clk)
        cycles += 1
    total = cycles
    # No spurious result afterwards.
    dut.res__ready.value = 1
    for _ in range(3):
        await ReadOnly()
        assert not int(dut.res__valid.value), "result without a command"
        await FallingEdge(dut.clk)
    lat = [f - a for f, a in zip(first_valid, accepted)]
    for j, c in enumerate(cmds):
        assert lat[j] == expected_latency(unit, c), (f"command {j} {c}: latency {lat[j]}, "
                                                     f"expected {expected_latency(unit, c)}")
    return lat, total


@cocotb.test()


async def test_random_with_stalls(dut):
    """Thousands of random seeded operations, random stalls on cmd.valid and res.ready."""
    p = _params()
    unit = _unit()
    await reset(dut)
    rng = np.random.default_rng(random.getrandbits(32))
    cmds = random_commands(rng, p.get("n_random", 2000), unit.e_bits, p.get("ops"))
    await run_commands(dut, unit, cmds, rng, 0.3, 0.3)


@cocotb.test()


async def test_corners(dut):
    """Every corner case of :func:`corner_commands`, no stalls."""
    unit = _unit()
    await reset(dut)
    rng = np.random.default_rng(0)
    await run_commands(dut, unit, corner_commands(unit.e_bits, dense=True), rng, 0.0, 0.0)


@cocotb.test()


async def test_cycles_per_op(dut):
    """Latency and issue interval of each operation with an always-ready consumer (report)."""
    p = _params()
    unit = _unit()
    await reset(dut)
    rng = np.random.default_rng(7)
    report = {"e_bits": unit.e_bits, "multiplier": unit.multiplier, "ops": {}}
    for op in Op:
        cmds = random_commands(rng, 60, unit.e_bits, [op])
        lat, cycles = await run_commands(dut, unit, cmds, rng, 0.0, 0.0)
        report["ops"][op.name] = {"latency_min": min(lat), "latency_max": max(lat),
                                  "latency_mean": sum(lat) / len(lat),
                                  "issue_interval_mean": cycles / len(cmds)}
    if p.get("report"):
        with open(p["report"], "w") as f:
            json.dump(report, f, indent=1)
