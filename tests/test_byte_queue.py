"""hw.units.byte_queue: the queue against a Python byte list, under random pushes, takes and clears."""

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from hw.units.byte_queue import ByteQueue


@pytest.mark.parametrize("word_bytes, head_bytes, item_bytes", [
    (4, 36, 4),       # the parameter loader at the ecp5 config (32-bit bus, 2 lanes)
    (64, 36, 32),     # the parameter loader on a 512-bit bus, 16 lanes: several slots per word
    (4, 8, 4),        # EMBED's row scale and 2 lanes
    (16, 8, 6),       # a unit of 2 bytes
])
def test_queue_matches_a_byte_list(word_bytes, head_bytes, item_bytes):
    m = Module()
    word = Signal(8 * word_bytes)
    bq = ByteQueue(m, word, word_bytes=word_bytes, head_bytes=head_bytes, item_bytes=item_bytes)
    # Asked for inside a condition, as the owners' state machines do: the answer must not depend on it.
    start = Signal()
    with m.If(start):
        holds_head, holds_item = bq.holds(head_bytes), bq.holds(item_bytes)
    room = bq.room
    sim = Simulator(m)
    sim.add_clock(1e-6)

    async def bench(ctx):
        rnd = random.Random(f"{word_bytes}-{head_bytes}-{item_bytes}")
        held = []
        for step in range(600):
            data = rnd.getrandbits(8 * word_bytes)
            ctx.set(word, data)
            assert ctx.get(holds_head) == (len(held) >= head_bytes), step
            assert ctx.get(holds_item) == (len(held) >= item_bytes), step
            assert ctx.get(room) == (len(held) <= max(head_bytes, item_bytes)), step
            q = ctx.get(bq.q)
            assert q.to_bytes(word_bytes + max(head_bytes, item_bytes), "little")[:len(held)] == bytes(held), step
            clear = rnd.random() < 0.03
            take = rnd.choice(["none", "head", "item"])
            take_head = not clear and take == "head" and len(held) >= head_bytes
            take_item = not clear and take == "item" and len(held) >= item_bytes
            push = not clear and rnd.random() < 0.6 and ctx.get(room)
            ctx.set(bq.clear, clear)
            ctx.set(bq.take_head, take_head)
            ctx.set(bq.take_item, take_item)
            ctx.set(bq.push, push)
            await ctx.tick()
            if clear:
                held = []
            held = held[head_bytes:] if take_head else held[item_bytes:] if take_item else held
            if push:
                held += list(data.to_bytes(word_bytes, "little"))

    sim.add_testbench(bench)
    sim.run()
