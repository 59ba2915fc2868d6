"""A block RAM tagged by :func:`hw.collision.collision_free_memory`, for the collision tests."""

from amaranth.hdl import Module, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from hw.collision import assert_no_collision, collision_free_memory


class CollisionRam(wiring.Component):
    """One write port, one synchronous read port into a register: 16 x 2048 (two DP16KD on ECP5).

    ``tagged`` makes it a :func:`~hw.collision.collision_free_memory` with its simulation check (a read is
    used when ``used`` is high); otherwise a plain Amaranth memory.
    """

    def __init__(self, tagged=True):
        self.tagged = tagged
        super().__init__({"wa": In(11), "wd": In(16), "we": In(1), "ra": In(11), "used": In(1), "rd": Out(16)})

    def elaborate(self, platform):
        m = Module()
        if self.tagged:
            mem = collision_free_memory(shape=16, depth=2048)
        else:
            mem = memory.Memory(shape=16, depth=2048, init=[])
        m.submodules.mem = mem
        wp, rp = mem.write_port(), mem.read_port()
        m.d.comb += [wp.addr.eq(self.wa), wp.data.eq(self.wd), wp.en.eq(self.we), rp.addr.eq(self.ra)]
        if self.tagged:
            assert_no_collision(m, platform, wp, rp, self.used, "ram")
        word = Signal(16, reset_less=True)     # a plain flip-flop (hw.bram_output_registers can absorb it)
        m.d.sync += word.eq(rp.data)
        m.d.comb += self.rd.eq(word)
        return m
