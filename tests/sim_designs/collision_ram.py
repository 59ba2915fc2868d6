"""A block RAM tagged by :func:`hw.collision.collision_free_memory`, for the collision tests."""

from amaranth.hdl import Module, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from hw.collision import assert_no_collision, collision_free_memory


class CollisionRam(wiring.Component):
    """One write port, synchronous read ports into registers: 16 x 2048 (two DP16KD on ECP5 per read port).

    ``tagged`` makes it a :func:`~hw.collision.collision_free_memory` with its simulation check (read port
    ``i`` is used when ``used[i]`` is high); otherwise a plain Amaranth memory. ``read_ports`` read ports, with
    addresses ``ra[11 i:11 i + 11]`` and words ``rd[16 i:16 i + 16]``.
    """

    def __init__(self, tagged=True, read_ports=1):
        self.tagged, self.read_ports = tagged, read_ports
        n = read_ports
        super().__init__({"wa": In(11), "wd": In(16), "we": In(1), "ra": In(11 * n), "used": In(n),
                          "rd": Out(16 * n)})

    def elaborate(self, platform):
        m = Module()
        if self.tagged:
            mem = collision_free_memory(shape=16, depth=2048)
        else:
            mem = memory.Memory(shape=16, depth=2048, init=[])
        m.submodules.mem = mem
        wp = mem.write_port()
        m.d.comb += [wp.addr.eq(self.wa), wp.data.eq(self.wd), wp.en.eq(self.we)]
        for i in range(self.read_ports):
            rp = mem.read_port()
            m.d.comb += rp.addr.eq(self.ra[11 * i:11 * i + 11])
            if self.tagged:
                assert_no_collision(m, platform, wp, rp, self.used[i], "ram" if i == 0 else f"ram port {i}")
            word = Signal(16, reset_less=True, name=f"word{i}")   # a plain flip-flop (bram_output_registers)
            m.d.sync += word.eq(rp.data)
            m.d.comb += self.rd[16 * i:16 * i + 16].eq(word)
        return m
