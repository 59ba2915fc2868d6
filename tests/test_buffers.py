# amaranth: UnusedElaboratable=no
"""The activation buffers (Amaranth simulator): random writes through ``wr`` and ``x_in`` and random
reads with a stalling reader return what a dictionary model holds, sign-extended, exponents included;
never more than ANSWER_PLACES answers wait."""

import random

import pytest
from amaranth.sim import Simulator

from hw.units.buffers import ANSWER_PLACES, ActivationBuffers
from hw.units.buffers import Buffer

BITS = {Buffer.X: 32, Buffer.ATT: 32, Buffer.H: 64, Buffer.Q: 8}


@pytest.mark.parametrize("bank_words", [2048, 8, 1])
def test_random_traffic(bank_words):
    """One bank per buffer (the default at these sizes), several, and one word per bank."""
    N, M = 4, 3
    words = {Buffer.X: 6, Buffer.ATT: 5, Buffer.H: 10, Buffer.Q: 6}
    dut = ActivationBuffers(lanes=N, max_tokens=M, words=words, max_index=16, bank_words=bank_words)
    if bank_words == 8:
        assert dut.banks == {Buffer.X: 3, Buffer.ATT: 3, Buffer.H: 6, Buffer.Q: 3}
    rng = random.Random(7)
    model = {}
    log = []

    def rand_word(b):
        lo = -(1 << (BITS[b] - 1))
        return [rng.randrange(lo, -lo) for _ in range(N)]

    async def bench(ctx):
        pending = []            # (buf, token, index) asked, in order
        for cycle in range(3000):
            # a read request now and then; the reader stalls at random
            want_read = rng.random() < 0.5
            if want_read:
                rb = rng.choice(list(Buffer))
                req = (rb, rng.randrange(M), rng.randrange(words[rb]))
            # one write per cycle at most (units take turns), from wr or x_in; never to the word requested
            # in the same cycle (the write lands a cycle later, with that read: hw.collision leaves such
            # block RAM collisions undefined in synthesis)
            ctx.set(dut.wr.valid, 0)
            ctx.set(dut.x_in.valid, 0)
            b = rng.choice(list(Buffer))
            t, i = rng.randrange(M), rng.randrange(words[b])
            if rng.random() < 0.4 and not (want_read and (b, t, i) == req):
                vals, e = rand_word(b), rng.randrange(32)
                if b is Buffer.X and rng.random() < 0.5:
                    raw = sum((v & 0xFFFFFFFF) << (32 * n) for n, v in enumerate(vals))
                    ctx.set(dut.x_in.payload, {"data": {f"lane{n}": v for n, v in enumerate(vals)}, "token": t,
                                               "beat": i})
                    ctx.set(dut.x_in.valid, 1)
                else:
                    raw = sum((v & ((1 << 64) - 1)) << (64 * n) for n, v in enumerate(vals))
                    ctx.set(dut.wr.payload, {"buf": b, "token": t, "index": i, "data": raw, "e": e})
                    ctx.set(dut.wr.valid, 1)
                write = ((b, t, i), (vals, e if b is Buffer.Q else None))
            else:
                write = None
            if want_read:
                ctx.set(dut.rd_req.payload, {"buf": req[0], "token": req[1], "index": req[2]})
            ctx.set(dut.rd_req.valid, int(want_read))
            rd_ready = int(rng.random() < 0.6)
            ctx.set(dut.rd_data.ready, rd_ready)
            _, _, rq_ok, d_v, d, d_e = await ctx.tick().sample(dut.rd_req.ready, dut.rd_data.valid,
                                                             dut.rd_data.payload, dut.rd_e)
            if write:
                model[write[0]] = write[1]
            if want_read and rq_ok:
                # The answer has every earlier write (this cycle's goes to other words).
                pending.append((req, model.get(req)))
            if d_v and rd_ready:
                req, snap = pending.pop(0)
                lanes = [((d >> (64 * n)) & ((1 << 64) - 1)) for n in range(N)]
                lanes = [v - (1 << 64) if v >> 63 else v for v in lanes]
                log.append((req, snap, lanes, d_e))
            assert len(pending) <= ANSWER_PLACES      # the answer queue's places

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    checked = 0
    for req, snap, lanes, e in log:
        if snap is None:
            continue
        vals, want_e = snap
        assert lanes == vals, req
        if want_e is not None:
            assert e == want_e, req
        checked += 1
    assert checked > 200


def test_simulation_refuses_a_write_to_the_word_being_read():
    # A request and a write of the same word in the same cycle: both registers hand them to the block RAM
    # at the next edge, where they collide (hw.collision), which the simulation check reports.
    dut = ActivationBuffers(lanes=2, max_tokens=2, words={b: 4 for b in Buffer}, max_index=8)

    async def bench(ctx):
        ctx.set(dut.rd_data.ready, 1)
        ctx.set(dut.rd_req.payload, {"buf": Buffer.H, "token": 1, "index": 2})
        ctx.set(dut.rd_req.valid, 1)
        ctx.set(dut.wr.payload, {"buf": Buffer.H, "token": 1, "index": 2, "data": 5, "e": 0})
        ctx.set(dut.wr.valid, 1)
        await ctx.tick()
        ctx.set(dut.rd_req.valid, 0)
        ctx.set(dut.wr.valid, 0)
        await ctx.tick()
        await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    with pytest.raises(AssertionError, match="buffer h0: a used read met a write"):
        sim.run()


def test_arguments():
    with pytest.raises(ValueError, match="missing"):
        ActivationBuffers(lanes=4, max_tokens=2, words={Buffer.X: 4}, max_index=8)
    every = {b: 4 for b in Buffer}
    with pytest.raises(ValueError, match="power of two"):
        ActivationBuffers(lanes=4, max_tokens=2, words=every, max_index=8, bank_words=6)
    with pytest.raises(ValueError, match="bank_words"):
        ActivationBuffers(lanes=4, max_tokens=2, words=every, max_index=8, bank_words=0)
