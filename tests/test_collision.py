"""hw.collision: tagged block RAMs lose Yosys's collision bypass; simulation catches a used collision."""

from pathlib import Path

import pytest
from amaranth.hdl import Cat
from amaranth.lib import wiring
from amaranth.lib.wiring import Out
from amaranth.sim import Simulator

from hw.collision import COLLISION_ATTR
from hw.synth import ECP5_SYNTH_PLATFORM, synth_ecp5
from sim_designs.collision_ram import CollisionRam

COCOTB_DIR = Path(__file__).resolve().parent / "cocotb_tests"


def test_the_tag_reaches_the_memory_in_rtlil():
    from amaranth.back import rtlil

    text = rtlil.convert(CollisionRam(), name="ram", platform=ECP5_SYNTH_PLATFORM)
    assert f'attribute \\{COLLISION_ATTR} "undefined"' in text
    assert "$check" not in text                                 # no simulation check with a platform
    assert "$check" in rtlil.convert(CollisionRam(), name="ram")      # and one without


def test_synthesis_builds_no_bypass_for_a_tagged_memory():
    # Yosys 0.70: the untagged memory gets a LUT per output bit and the delayed-write registers.
    plain = synth_ecp5(CollisionRam(False), "ram_plain")
    tagged = synth_ecp5(CollisionRam(True), "ram_tagged")
    assert (tagged.bram, plain.bram) == (2, 2)
    assert tagged.lut4 == 0 and tagged.ff == 16, (tagged.lut4, tagged.ff)
    assert plain.lut4 >= 16 and plain.ff > 16, (plain.lut4, plain.ff)


def test_synthesis_builds_no_bypass_for_a_tagged_memory_with_two_read_ports():
    # Yosys duplicates the memory for the second read port; the collision mask covers both ports.
    plain = synth_ecp5(CollisionRam(False, read_ports=2), "ram2_plain")
    tagged = synth_ecp5(CollisionRam(True, read_ports=2), "ram2_tagged")
    assert (tagged.bram, plain.bram) == (4, 4)
    assert tagged.lut4 == 0 and tagged.ff == 32, (tagged.lut4, tagged.ff)
    assert plain.lut4 >= 32 and plain.ff > 32, (plain.lut4, plain.ff)


def test_a_tagged_memory_refuses_ports_its_mask_does_not_fit():
    from amaranth.back import rtlil
    from amaranth.hdl import Module

    from hw.collision import MAX_READ_PORTS, collision_free_memory

    class Ram(wiring.Component):
        def __init__(self, writes, reads):
            self.writes, self.reads = writes, reads
            super().__init__({"o": Out(8)})

        def elaborate(self, platform):
            m = Module()
            m.submodules.mem = mem = collision_free_memory(shape=8, depth=16)
            for _ in range(self.writes):
                mem.write_port()
            m.d.comb += self.o.eq(Cat(*[mem.read_port().data for _ in range(self.reads)]).xor())
            return m

    rtlil.convert(Ram(1, MAX_READ_PORTS), platform=ECP5_SYNTH_PLATFORM)
    for writes, reads in ((2, 1), (1, MAX_READ_PORTS + 1), (0, 1)):
        with pytest.raises(ValueError, match="one write port and 1 to 4 read ports"):
            rtlil.convert(Ram(writes, reads), platform=ECP5_SYNTH_PLATFORM)


def _run(steps, read_ports=1):
    dut = CollisionRam(True, read_ports)
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def bench(ctx):
        for wa, we, ra, used in steps:
            ctx.set(dut.wa, wa)
            ctx.set(dut.we, we)
            ctx.set(dut.ra, ra)
            ctx.set(dut.used, used)
            await ctx.tick()

    sim.add_testbench(bench)
    sim.run()


def test_simulation_allows_reads_and_writes_that_do_not_meet():
    _run([(5, 1, 6, 1), (5, 0, 5, 1), (7, 1, 7, 0), (7, 1, 8, 1)])


def test_simulation_fails_on_a_used_collision():
    with pytest.raises(AssertionError, match="ram: a used read met a write to the same word"):
        _run([(5, 1, 6, 1), (9, 1, 9, 1)])


def test_simulation_checks_every_read_port():
    # Port 1 reads word 9 (ra = 9 << 11) while it is written: allowed when unused, caught when used.
    _run([(9, 1, 9 << 11, 0b01), (9, 1, 3 | 9 << 11, 0b01)], read_ports=2)
    with pytest.raises(AssertionError, match="ram port 1: a used read met a write"):
        _run([(9, 1, 3 | 9 << 11, 0b11)], read_ports=2)


@pytest.mark.parametrize("collide", [False, True])
def test_verilator_stops_on_a_used_collision(collide):
    from sim import build_component, run_cocotb

    build = build_component(CollisionRam(), "collision_ram")
    if not collide:
        run_cocotb(build, "tb_collision", test_dir=COCOTB_DIR, extra_env={"COLLIDE": "0"}, seed=1)
        return
    with pytest.raises(AssertionError) as info:
        run_cocotb(build, "tb_collision", test_dir=COCOTB_DIR, extra_env={"COLLIDE": "1"}, seed=1)
    assert "ram: a used read met a write" in str(info.value)
