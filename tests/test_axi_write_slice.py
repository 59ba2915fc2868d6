"""AXI4 write register slice (Amaranth simulator): AW and W beats (master to slave) and B responses (slave
to master) come out in order and unchanged under random stalls on both sides, and a burst with no stalls
moves one beat per cycle."""

import random

import pytest
from amaranth.sim import Simulator

from hw.bus.axi_write_slice import AxiWriteSlice


@pytest.mark.parametrize("seed, p_valid, p_ready", [(1, 0.5, 0.5), (2, 0.9, 0.3), (3, 0.3, 0.9), (4, 1.0, 1.0)])
def test_beats_pass_in_order(seed, p_valid, p_ready):
    rng = random.Random(seed)
    dut = AxiWriteSlice(32, 64, 3)
    aws = [{"awaddr": rng.getrandbits(32), "awlen": rng.getrandbits(8), "awsize": 3, "awburst": 1,
            "awid": rng.getrandbits(3)} for _ in range(60)]
    ws = [{"wdata": rng.getrandbits(64), "wstrb": rng.getrandbits(8), "wlast": rng.getrandbits(1)}
          for _ in range(200)]
    bs = [{"bid": rng.getrandbits(3), "bresp": rng.getrandbits(2)} for _ in range(60)]
    got_aw, got_w, got_b = [], [], []
    cycles = {"w": 0}

    def source(items, valid, ready, port=None):
        port = dut.m if port is None else port
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

    def sink(fields, valid, ready, got, n, tag, port=None):
        port = dut.s if port is None else port
        async def run(ctx):
            while len(got) < n:
                ctx.set(getattr(port, ready), int(rng.random() < p_ready))
                await ctx.delay(1e-9)
                if ctx.get(getattr(port, valid)) and ctx.get(getattr(port, ready)):
                    got.append({f: ctx.get(getattr(port, f)) for f in fields})
                await ctx.tick()
                if tag == "w" and got:
                    cycles["w"] += 1
        return run

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source(aws, "awvalid", "awready"))
    sim.add_testbench(source(ws, "wvalid", "wready"))
    sim.add_testbench(sink(list(aws[0]), "awvalid", "awready", got_aw, len(aws), "aw"))
    sim.add_testbench(sink(list(ws[0]), "wvalid", "wready", got_w, len(ws), "w"))
    sim.add_testbench(source(bs, "bvalid", "bready", port=dut.s))
    sim.add_testbench(sink(["bid", "bresp"], "bvalid", "bready", got_b, len(bs), "b", port=dut.m))
    sim.run_until(1e-8 * 5000)
    assert got_aw == aws
    assert got_w == ws
    assert got_b == bs
    if p_valid == p_ready == 1.0:
        assert cycles["w"] == len(ws)          # one beat per cycle, no bubbles


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="id_bits"):
        AxiWriteSlice(32, 64, 0)
