"""A block RAM tagged by :func:`hw.collision.collision_free_memory`, for the collision tests."""

from amaranth.hdl import Module, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from hw.collision import assert_no_collision, collision_free_memory


class CollisionRam(wiring.Component):
    """One write port, synchronous read ports into registers: ``width`` x ``depth`` words, 16 x 2048 by
    default (two DP16KD on ECP5 per read port; 32 x 512 is one 36-bit-wide DP16KD).

    ``tagged`` makes it a :func:`~hw.collision.collision_free_memory` with its simulation check (read port
    ``i`` is used when ``used[i]`` is high); otherwise a plain Amaranth memory. ``read_ports`` read ports, with
    addresses ``ra[a i:a i + a]`` (``a`` address bits) and words ``rd[width i:width i + width]``.
    """

    def __init__(self, tagged=True, read_ports=1, *, width=16, depth=2048):
        self.tagged, self.read_ports, self.width, self.depth = tagged, read_ports, width, depth
        n, a = read_ports, (depth - 1).bit_length()
        self.abits = a
        super().__init__({"wa": In(a), "wd": In(width), "we": In(1), "ra": In(a * n), "used": In(n),
                          "rd": Out(width * n)})

    def elaborate(self, platform):
        m = Module()
        if self.tagged:
            mem = collision_free_memory(shape=self.width, depth=self.depth)
        else:
            mem = memory.Memory(shape=self.width, depth=self.depth, init=[])
        m.submodules.mem = mem
        wp = mem.write_port()
        m.d.comb += [wp.addr.eq(self.wa), wp.data.eq(self.wd), wp.en.eq(self.we)]
        for i in range(self.read_ports):
            rp = mem.read_port()
            a, w = self.abits, self.width
            m.d.comb += rp.addr.eq(self.ra[a * i:a * i + a])
            if self.tagged:
                assert_no_collision(m, platform, wp, rp, self.used[i], "ram" if i == 0 else f"ram port {i}")
            word = Signal(w, reset_less=True, name=f"word{i}")    # a plain flip-flop (bram_output_registers)
            m.d.sync += word.eq(rp.data)
            m.d.comb += self.rd[w * i:w * i + w].eq(word)
        return m
