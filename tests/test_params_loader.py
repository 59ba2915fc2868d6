# amaranth: UnusedElaboratable=no
"""ParamsLoader (Amaranth simulator): parameter records packed by ``hw.dram_format.pack_params`` come back
as the header registers and the gain memory, for k not a multiple of the lanes, on narrow and wide buses,
records back to back."""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from golden.numerics import quantise_gain
from golden.sfloat import SFloat
from hw.dram_format import pack_params
from hw.memory.dram_model import FastDramModel
from hw.units.params_loader import ParamsLoader


@pytest.mark.parametrize("data_bits, lanes, ks", [(64, 4, [30, 7]), (32, 2, [5, 64]), (512, 16, [100, 33])])
def test_records_load(data_bits, lanes, ks):
    rng = np.random.default_rng(sum(ks))
    bus = data_bits // 8
    align = max(64, bus)
    image, records = bytearray(), []
    for k in ks:
        gain = quantise_gain(rng.normal(1.0, 0.5, k) * (1 if k % 2 else -1), 1e-5)
        scales = [SFloat.from_float(np.float64(v)) for v in rng.uniform(1e-3, 10, 3)]
        addr = len(image)
        rec = pack_params(gain, scales)
        image += rec + bytes(-len(rec) % align)
        records.append((addr, k, gain, scales))
    words = [int.from_bytes(image[i:i + bus], "little") for i in range(0, len(image), bus)] + [0] * 8
    dut = ParamsLoader(data_bits=data_bits, lanes=lanes, max_k=max(ks) + 5)
    dram = FastDramModel(32, data_bits, depth=len(words), init=words, latency=4)
    m = Module()
    m.submodules.dut, m.submodules.dram = dut, dram
    wiring.connect(m, dut.axi, dram.axi)

    async def bench(ctx):
        for addr, k, gain, scales in records:
            ctx.set(dut.cmd.payload, {"addr": addr, "k": k})
            ctx.set(dut.cmd.valid, 1)
            await ctx.tick().until(dut.cmd.ready)
            ctx.set(dut.cmd.valid, 0)
            await ctx.tick()
            for _ in range(5000):
                if not ctx.get(dut.busy):
                    break
                await ctx.tick()
            else:
                raise AssertionError("loader hung")
            hdr = ctx.get(dut.header)
            assert int(hdr.shift) == gain.shift, (addr, k)
            for name, sf in zip(("eps", "sw0", "sw1", "sw2"), [gain.eps, *scales]):
                got = getattr(hdr, name)
                assert (int(got.m), int(got.e)) == (int(sf.m), int(sf.e)), name
            for w in range(-(-k // lanes)):
                ctx.set(dut.gain_addr, w)
                await ctx.tick()                     # a synchronous read port: the data comes a cycle later
                raw = ctx.get(dut.gain_data)
                for n in range(lanes):
                    v = (raw >> (16 * n)) & 0xFFFF
                    v = v - (1 << 16) if v >> 15 else v
                    i = w * lanes + n
                    assert v == (int(gain.q[i]) if i < k else 0), (k, i)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
