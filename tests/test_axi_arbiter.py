# amaranth: UnusedElaboratable=no
"""AXI4 read arbiter (Amaranth simulator): three burst readers share one fast DRAM model; every reader
gets exactly its own words, in order, under random consumer stalls and DRAM jitter; grants rotate."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hw.bus.axi_read_arbiter import AxiReadArbiter
from hw.memory.axi import AxiBurstReader
from hw.memory.dram_model import FastDramModel


@pytest.mark.parametrize("sliced, credit_ar", [(False, False), (True, False), (True, True), (False, True)])
@pytest.mark.parametrize("masters, jitter", [(3, 0), (3, 2), (2, 1), (1, 0)])
def test_readers_share_one_port(masters, jitter, sliced, credit_ar):
    words = [(i * 0x9E3779B97F4A7C15) & ((1 << 64) - 1) for i in range(4096)]
    arb = AxiReadArbiter(masters, 32, 64, sliced=sliced, credit_ar=credit_ar)
    readers = [AxiBurstReader(32, 64, buffer_words=32, max_burst=16, max_outstanding=2, beats_bits=12)
               for _ in range(masters)]
    dram = FastDramModel(32, 64, depth=len(words), init=words, latency=8, id_bits=1 + arb.sel_bits, jitter=jitter)
    m = Module()
    m.submodules.arb, m.submodules.dram = arb, dram
    for i, r in enumerate(readers):
        m.submodules[f"r{i}"] = r
        wiring.connect(m, r.axi, arb.m[i])
    wiring.connect(m, arb.s, dram.axi)
    rng = random.Random(masters * 10 + jitter)
    cmds = [[(rng.randrange(0, 3000) * 8, rng.randrange(1, 60)) for _ in range(6)] for _ in range(masters)]
    got = [[] for _ in range(masters)]

    def issuer(i):
        async def run(ctx):
            for addr, beats in cmds[i]:
                ctx.set(readers[i].cmd.payload, {"addr": addr, "beats": beats, "tag": 0})
                ctx.set(readers[i].cmd.valid, 1)
                await ctx.tick().until(readers[i].cmd.ready)
                ctx.set(readers[i].cmd.valid, 0)
        return run

    def sink(i):
        async def run(ctx):
            want = sum(b for _, b in cmds[i])
            for _ in range(40000):
                if len(got[i]) == want:
                    return
                ready = int(rng.random() < 0.6)
                ctx.set(readers[i].data.ready, ready)
                _, _, valid, pay = await ctx.tick().sample(readers[i].data.valid, readers[i].data.payload)
                if valid and ready:
                    got[i].append(int(pay.data))
            raise AssertionError(f"reader {i} timed out with {len(got[i])}/{want} words")
        return run

    sim = Simulator(m)
    sim.add_clock(1e-8)
    for i in range(masters):
        sim.add_testbench(issuer(i), background=True)
        sim.add_testbench(sink(i))
    sim.run()
    for i in range(masters):
        want = [words[a // 8 + j] for a, b in cmds[i] for j in range(b)]
        assert got[i] == want, f"reader {i}"


def test_arguments_are_validated():
    with pytest.raises(ValueError):
        AxiReadArbiter(0, 32, 64)
    with pytest.raises(ValueError):
        AxiReadArbiter(17, 32, 64)
