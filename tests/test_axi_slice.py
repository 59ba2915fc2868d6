# amaranth: UnusedElaboratable=no
"""AXI4 register slices (Amaranth simulator): every channel's beats come out in order and unchanged under
random stalls on both sides (AW, W master to slave and B back through the write slice; AR master to slave
and R back through the read slice), and a burst with no stalls moves one beat per cycle."""

import random

import pytest
from amaranth.sim import Simulator

from hw.bus.axi_slice import AxiReadSlice, AxiWriteSlice


def _run(dut, channels, rng, p_valid, p_ready):
    """Drive ``channels`` (name, items, valid, ready, from port, to port) through ``dut``; returns what came
    out of each and the cycles its sink counted from its first beat."""
    got = {name: [] for name, *_ in channels}
    cycles = dict.fromkeys(got, 0)

    def source(items, valid, ready, port):
        async def run(ctx):
            for item in items:
                while rng.random() >= p_valid:
                    ctx.set(getattr(port, valid), 0)
                    await ctx.tick()
                for k, v in item.items():
                    ctx.set(getattr(port, k), v)
                ctx.set(getattr(port, valid), 1)
                await ctx.tick().until(getattr(port, ready))
            ctx.set(getattr(port, valid), 0)
        return run

    def sink(name, fields, valid, ready, n, port):
        async def run(ctx):
            while len(got[name]) < n:
                ctx.set(getattr(port, ready), int(rng.random() < p_ready))
                await ctx.delay(1e-9)
                if ctx.get(getattr(port, valid)) and ctx.get(getattr(port, ready)):
                    got[name].append({f: ctx.get(getattr(port, f)) for f in fields})
                await ctx.tick()
                if got[name]:
                    cycles[name] += 1
        return run

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for name, items, valid, ready, frm, to in channels:
        sim.add_testbench(source(items, valid, ready, frm))
        sim.add_testbench(sink(name, list(items[0]), valid, ready, len(items), to))
    sim.run_until(1e-8 * 5000)
    return got, cycles


@pytest.mark.parametrize("credit", [(), ("w",), ("aw", "w")])
@pytest.mark.parametrize("seed, p_valid, p_ready", [(1, 0.5, 0.5), (2, 0.9, 0.3), (3, 0.3, 0.9), (4, 1.0, 1.0)])
def test_write_slice_beats_pass_in_order(seed, p_valid, p_ready, credit):
    rng = random.Random(seed)
    dut = AxiWriteSlice(32, 64, 3, credit=credit)
    aws = [{"awaddr": rng.getrandbits(32), "awlen": rng.getrandbits(8), "awsize": 3, "awburst": 1,
            "awid": rng.getrandbits(3)} for _ in range(60)]
    ws = [{"wdata": rng.getrandbits(64), "wstrb": rng.getrandbits(8), "wlast": rng.getrandbits(1)}
          for _ in range(200)]
    bs = [{"bid": rng.getrandbits(3), "bresp": rng.getrandbits(2)} for _ in range(60)]
    got, cycles = _run(dut, [("aw", aws, "awvalid", "awready", dut.m, dut.s),
                             ("w", ws, "wvalid", "wready", dut.m, dut.s),
                             ("b", bs, "bvalid", "bready", dut.s, dut.m)], rng, p_valid, p_ready)
    assert (got["aw"], got["w"], got["b"]) == (aws, ws, bs)
    if p_valid == p_ready == 1.0:
        assert cycles["w"] == len(ws)          # one beat per cycle, no bubbles


@pytest.mark.parametrize("seed, p_valid, p_ready", [(5, 0.5, 0.5), (6, 0.9, 0.3), (7, 1.0, 1.0)])
def test_read_slice_beats_pass_in_order(seed, p_valid, p_ready):
    rng = random.Random(seed)
    dut = AxiReadSlice(32, 32, 5)
    ars = [{"araddr": rng.getrandbits(32), "arlen": rng.getrandbits(8), "arsize": 2, "arburst": 1,
            "arid": rng.getrandbits(5)} for _ in range(60)]
    rs = [{"rdata": rng.getrandbits(32), "rresp": rng.getrandbits(2), "rlast": rng.getrandbits(1),
           "rid": rng.getrandbits(5)} for _ in range(200)]
    got, cycles = _run(dut, [("ar", ars, "arvalid", "arready", dut.m, dut.s),
                             ("r", rs, "rvalid", "rready", dut.s, dut.m)], rng, p_valid, p_ready)
    assert (got["ar"], got["r"]) == (ars, rs)
    if p_valid == p_ready == 1.0:
        assert cycles["r"] == len(rs)          # one beat per cycle, no bubbles


@pytest.mark.parametrize("cls", [AxiWriteSlice, AxiReadSlice])
def test_arguments_are_checked(cls):
    with pytest.raises(ValueError, match="id_bits"):
        cls(32, 64, 0)


@pytest.mark.parametrize("credit", [("b",), ("r",), "w", ("x",)])
def test_credit_names_forward_channels(credit):
    with pytest.raises(ValueError, match="credit must name forward channels"):
        AxiWriteSlice(32, 64, 3, credit=credit)
