"""Block RAMs whose reads never use a word in the cycle it is written.

Amaranth asks for the old word when a synchronous read meets a write to the same address in the same cycle
(``COLLISION_X_MASK`` 0 on every read port). ECP5's DP16KD does not promise that across its two ports, so
Yosys's memory mapping delays each write by a cycle and puts a bypass multiplexer after the block RAM: a LUT
on every output bit, a register on every written bit, and an address comparator. Around one 16 x 2048 memory
that is 34 LUT4 and 45 more flip-flops (Yosys 0.70, ``synth_ecp5``), and the bypass LUT sits between the
block RAM and the register after it, so the placer pulls that register towards the write bus.

A memory made by :func:`collision_free_memory` carries :data:`COLLISION_ATTR`. Every flow that synthesises
the design runs :data:`YOSYS_UNDEFINED_COLLISIONS` after reading it, which makes the collisions of those
memories' read ports undefined, so Yosys builds no bypass. In exchange the design must never *use* a word
read in the cycle it was written. :func:`assert_no_collision` checks exactly that in simulation (Amaranth's
simulator, and Verilator, which :mod:`sim.build` runs with ``--assert``). A design is elaborated for
simulation when its platform is ``None``; synthesis passes a platform and gets no check.
"""

from amaranth.hdl import Assert
from amaranth.lib import memory

__all__ = ["COLLISION_ATTR", "YOSYS_UNDEFINED_COLLISIONS", "collision_free_memory", "assert_no_collision",
           "MAX_READ_PORTS"]

COLLISION_ATTR = "trillium_collision"

#: Most read ports a tagged memory may have (each written by one write port).
MAX_READ_PORTS = 4

#: Yosys steps: collect the memories (``proc`` first, which ``memory_collect`` needs) and set the collision
#: mask of the tagged ones. The mask has a bit per (read port, write port) pair, so there is one step per
#: read port count (one write port: :func:`collision_free_memory` refuses other port counts when it is
#: elaborated). ``chformal -remove`` drops simulation checks of a design elaborated without a platform.
YOSYS_UNDEFINED_COLLISIONS = "\n".join([
    "proc",
    "memory_collect",
    *(f"setparam -set RD_COLLISION_X_MASK {n}'b{'1' * n} t:$mem_v2 a:{COLLISION_ATTR}=undefined %i "
      f"r:RD_PORTS={n} %i r:WR_PORTS=1 %i" for n in range(1, MAX_READ_PORTS + 1)),
    "chformal -remove",
])


class _CollisionFreeMemory(memory.Memory):
    """A tagged memory that checks, when elaborated, that :data:`YOSYS_UNDEFINED_COLLISIONS` fits its ports."""

    def elaborate(self, platform):
        if len(self.write_ports) != 1 or not 1 <= len(self.read_ports) <= MAX_READ_PORTS:
            raise ValueError(f"a collision-free memory has one write port and 1 to {MAX_READ_PORTS} read ports, "
                             f"not {len(self.write_ports)} and {len(self.read_ports)}")
        return super().elaborate(platform)


def collision_free_memory(*, shape, depth, init=()):
    """An :class:`amaranth.lib.memory.Memory` whose read-write collisions may be undefined in synthesis.

    Give it one write port and up to :data:`MAX_READ_PORTS` read ports (checked when it is elaborated), and
    check each read port with :func:`assert_no_collision`.
    """
    return _CollisionFreeMemory(shape=shape, depth=depth, init=list(init), attrs={COLLISION_ATTR: "undefined"},
                                src_loc_at=1)


def assert_no_collision(m, platform, write_port, read_port, used, name):
    """In simulation, fail when ``read_port`` samples the address ``write_port`` writes and ``used`` is set.

    Parameters
    ----------
    m : Module
    platform : object or None
        The elaborating platform; the check exists only when it is ``None`` (simulation).
    write_port, read_port
        The memory's ports (``read_port`` synchronous; it samples its address at the clock edge).
    used : Value
        High in the cycles whose read (sampled at the next edge) the design uses; a read whose word is
        dropped may collide.
    name : str
        Names the memory in the failure message.
    """
    if platform is not None:
        return
    collide = used & read_port.en & write_port.en.any() & (write_port.addr == read_port.addr)
    m.d.sync += Assert(~collide, f"{name}: a used read met a write to the same word in the same cycle")
