"""AXI4 write register slice (Amaranth simulator): AW and W beats come out in order and unchanged under
random stalls on both sides, B passes straight through, and a burst with no stalls moves one beat per
cycle."""

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
    got_aw, got_w = [], []
    cycles = {"w": 0}

    def source(items, valid, ready):
        async def run(ctx):
            for item in items:
                while rng.random() >= p_valid:
                    ctx.set(getattr(dut.m, valid), 0)
                    await ctx.tick()
                for k, v in item.items():
                    ctx.set(getattr(dut.m, k), v)
                ctx.set(getattr(dut.m, valid), 1)
                await ctx.tick().until(getattr(dut.m, ready))
            ctx.set(getattr(dut.m, valid), 0)
        return run

    def sink(fields, valid, ready, got, n, tag):
        async def run(ctx):
            while len(got) < n:
                ctx.set(getattr(dut.s, ready), int(rng.random() < p_ready))
                await ctx.delay(1e-9)
                if ctx.get(getattr(dut.s, valid)) and ctx.get(getattr(dut.s, ready)):
                    got.append({f: ctx.get(getattr(dut.s, f)) for f in fields})
                await ctx.tick()
                if tag == "w" and got:
                    cycles["w"] += 1
        return run

    async def b_path(ctx):
        for _ in range(20):
            bid, bresp, bvalid, bready = rng.getrandbits(3), rng.getrandbits(2), rng.getrandbits(1), rng.getrandbits(1)
            ctx.set(dut.s.bid, bid)
            ctx.set(dut.s.bresp, bresp)
            ctx.set(dut.s.bvalid, bvalid)
            ctx.set(dut.m.bready, bready)
            await ctx.delay(1e-9)
            assert (ctx.get(dut.m.bid), ctx.get(dut.m.bresp), ctx.get(dut.m.bvalid), ctx.get(dut.s.bready)) == \
                (bid, bresp, bvalid, bready)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source(aws, "awvalid", "awready"))
    sim.add_testbench(source(ws, "wvalid", "wready"))
    sim.add_testbench(sink(list(aws[0]), "awvalid", "awready", got_aw, len(aws), "aw"))
    sim.add_testbench(sink(list(ws[0]), "wvalid", "wready", got_w, len(ws), "w"))
    sim.add_testbench(b_path)
    sim.run_until(1e-8 * 5000)
    assert got_aw == aws
    assert got_w == ws
    if p_valid == p_ready == 1.0:
        assert cycles["w"] == len(ws)          # one beat per cycle, no bubbles


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="id_bits"):
        AxiWriteSlice(32, 64, 0)
