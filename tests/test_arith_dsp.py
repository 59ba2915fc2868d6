"""``hw.arith.dsp.registered_product``: the plain form against Python integers, the ECP5 form's wiring.

The ECP5 form is an ``Instance("MULT18X18D")``, which neither the Amaranth simulator nor Yosys' ECP5
library can simulate (Yosys ships only a black box of it). Its test therefore reads the Yosys netlist:
one block per product, its output register on (and its A and B input registers, with
``input_registers``, nothing else), clocked, enabled and reset by the right nets, each
``A``/``B`` input bit wired to the operand bit (or its sign, or 0) that an 18-bit signed (or unsigned)
operand has there, and each product bit driven by the block's ``P`` output of the same index.
"""

import json
import random

import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.arith.dsp import DSP_WIDTH, fits_dsp, registered_pieces, registered_product
from hw.synth import ECP5_SYNTH_PLATFORM

#: (a shape, b shape): signed x signed, narrow unsigned (zero-extended), both 18-bit unsigned, and
#: shapes too wide for one block (the plain form on every target).
CASES = [(signed(18), signed(18)), (signed(12), unsigned(17)), (unsigned(9), unsigned(5)),
         (unsigned(18), unsigned(18)), (signed(24), signed(16)), (unsigned(18), signed(10))]


class Products(wiring.Component):
    """One :func:`registered_product` per case of :data:`CASES`, all under the enable ``en`` (with the
    operands registered too when ``input_registers``)."""

    def __init__(self, input_registers=False):
        self.input_registers = input_registers
        members = {"en": In(1)}
        for k, (sa, sb) in enumerate(CASES):
            members[f"a{k}"] = In(sa)
            members[f"b{k}"] = In(sb)
            members[f"p{k}"] = Out(signed(sa.width + sb.width) if sa.signed or sb.signed else sa.width + sb.width)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        for k in range(len(CASES)):
            p = registered_product(m, f"prod{k}", getattr(self, f"a{k}"), getattr(self, f"b{k}"), en=self.en,
                                   platform=platform, input_registers=self.input_registers)
            m.d.comb += getattr(self, f"p{k}").eq(p)
        return m


def test_fits_dsp():
    assert fits_dsp(signed(18), signed(18))
    assert fits_dsp(unsigned(17), signed(18))
    assert fits_dsp(unsigned(18), unsigned(18))
    assert not fits_dsp(unsigned(18), signed(4))       # 18 unsigned bits need 19 signed ones
    assert not fits_dsp(signed(19), signed(2))
    assert not fits_dsp(unsigned(19), unsigned(2))


def _value(rng, shape, corner):
    lo, hi = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed else (0, (1 << shape.width) - 1)
    return rng.choice([lo, hi, 0, 1 if hi else 0]) if corner else rng.randint(lo, hi)


@pytest.mark.parametrize("input_registers", [False, True])
def test_plain_form_matches_integers(input_registers):
    dut = Products(input_registers)
    rng = random.Random(2026)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    failures = []

    async def bench(ctx):
        expect = [0] * len(CASES)               # the register's reset value
        held = [(0, 0)] * len(CASES)            # the input registers' (reset 0)
        for step in range(300):
            ops = [(_value(rng, sa, step % 4 == 0), _value(rng, sb, step % 5 == 0)) for sa, sb in CASES]
            en = rng.random() < 0.7
            for k, (a, b) in enumerate(ops):
                ctx.set(getattr(dut, f"a{k}"), a)
                ctx.set(getattr(dut, f"b{k}"), b)
            ctx.set(dut.en, en)
            await ctx.tick()
            if en:
                expect = [a * b for a, b in (held if input_registers else ops)]
                held = ops
            for k in range(len(CASES)):
                got = ctx.get(getattr(dut, f"p{k}"))
                if got != expect[k]:
                    failures.append((step, k, got, expect[k]))

    sim.add_testbench(bench)
    sim.run()
    assert not failures, failures[:5]


@pytest.fixture(scope="module", params=[False, True], ids=["output-register", "input-registers"])
def ecp5_netlist(request, tmp_path_factory):
    from hw.unit_timing import synth_netlist

    out = tmp_path_factory.mktemp("dsp")
    path = synth_netlist(Products(request.param), "products", out, platform=ECP5_SYNTH_PLATFORM)
    return request.param, json.loads(path.read_text())["modules"]["products"]


def test_ecp5_form_wiring(ecp5_netlist):
    input_registers, ecp5_netlist = ecp5_netlist
    ports = {name: p["bits"] for name, p in ecp5_netlist["ports"].items()}
    blocks = {name: c for name, c in ecp5_netlist["cells"].items() if c["type"] == "MULT18X18D"}
    fitting = [k for k, (sa, sb) in enumerate(CASES) if fits_dsp(sa, sb)]
    assert len(fitting) == 4
    by_output = {}
    for name, cell in blocks.items():
        by_output.setdefault(cell["connections"]["P0"][0], []).append((name, cell))
    for k in fitting:
        sa, sb = CASES[k]
        (name, cell), = by_output[ports[f"p{k}"][0]]
        par, con = cell["parameters"], cell["connections"]
        assert par["REG_OUTPUT_CLK"] == "CLK0" and par["REG_OUTPUT_CE"] == "CE0" and par["REG_OUTPUT_RST"] == "RST0"
        for op in "AB":
            assert par[f"REG_INPUT{op}_CLK"] == ("CLK0" if input_registers else "NONE"), (name, op)
            assert par[f"REG_INPUT{op}_CE"] == "CE0" and par[f"REG_INPUT{op}_RST"] == "RST0", (name, op)
        for reg in ("REG_INPUTC_CLK", "REG_PIPELINE_CLK"):
            assert par.get(reg, "NONE") == "NONE", (name, reg)
        assert par["RESETMODE"] == "SYNC"
        assert con["CLK0"] == ports["clk"] and con["RST0"] == ports["rst"] and con["CE0"] == ports["en"]
        signed_mode = sa.signed or sb.signed or (sa.width <= 17 and sb.width <= 17)
        assert con["SIGNEDA"] == con["SIGNEDB"] == ["1" if signed_mode else "0"]
        for op, shape in (("A", sa), ("B", sb)):
            bits = ports[f"{op.lower()}{k}"]
            for i in range(18):
                want = bits[i] if i < shape.width else (bits[-1] if shape.signed else "0")
                assert con[f"{op}{i}"] == [want], (k, op, i)
        width = sa.width + sb.width
        for i in range(width):
            assert con[f"P{i}"] == [ports[f"p{k}"][i]], (k, i)
    # Too wide for one block: Yosys' own split, combinational blocks, registered in the fabric.
    for k in set(range(len(CASES))) - set(fitting):
        assert ports[f"p{k}"][0] not in by_output
    for name, cell in blocks.items():
        if cell["connections"]["P0"][0] not in {ports[f"p{k}"][0] for k in fitting}:
            assert cell["parameters"].get("REG_OUTPUT_CLK", "NONE") == "NONE"


def test_inside_a_condition_is_refused():
    m = Module()
    a, b, c = Signal(8), Signal(8), Signal()
    with m.If(c):
        with pytest.raises(ValueError, match="outside If/Switch/FSM"):
            registered_product(m, "p", a, b)
    m._MustUse__silence = True          # built only to be refused


@pytest.mark.parametrize("a_shape, b_shape", [(unsigned(40), unsigned(15)), (signed(35), signed(18)),
                                              (signed(34), unsigned(17)), (unsigned(12), signed(9))])
def test_registered_pieces_sum_to_the_product(a_shape, b_shape):

    m = Module()
    a, b = Signal(a_shape, name="a"), Signal(b_shape, name="b")
    pieces = registered_pieces(m, "p", a, b, platform=ECP5_SYNTH_PLATFORM)
    # Every piece is a product of operands that fit one block (a 17-bit chunk, or an 18-bit signed top).
    assert all(len(piece) <= 2 * DSP_WIDTH for _, piece in pieces)
    assert len(pieces) == -(-a_shape.width // (DSP_WIDTH - 1)) or fits_dsp(a_shape, b_shape)
    total = Signal(signed(a_shape.width + b_shape.width + 1))
    m.d.comb += total.eq(sum(piece << shift for shift, piece in registered_pieces(m, "q", a, b)))
    rng = random.Random(7)
    sim = Simulator(m)
    sim.add_clock(1e-8)
    failures = []

    async def bench(ctx):
        for step in range(200):
            va, vb = _value(rng, a_shape, step % 3 == 0), _value(rng, b_shape, step % 4 == 0)
            ctx.set(a, va)
            ctx.set(b, vb)
            await ctx.tick()
            if ctx.get(total) != va * vb:
                failures.append((va, vb, ctx.get(total)))

    sim.add_testbench(bench)
    sim.run()
    assert not failures, failures[:3]

