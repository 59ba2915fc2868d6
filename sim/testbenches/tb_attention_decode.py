"""cocotb testbench of the attention engine (:class:`hw.attention.engine.AttentionEngine`; decode is
``query_block = 1``) against :func:`golden.attention.attention`.

Environment: ``ATTN_PARAMS`` JSON with ``heads``, ``kv_heads``, ``head_dim``, ``lanes``, ``max_context``,
optionally ``query_block``, ``max_group`` and ``max_kv_heads`` (the build's maxima; default the case's
group and kv heads), ``cases`` (a list of ``{"pos": int, "kind": str, "seed": int}`` and optionally
``"tq"``, the number of queries from ``pos`` on, and ``"heads"`` / ``"kv_heads"`` overriding the
run's), ``p_stall`` and optionally ``report`` (path: cycles per
case are written there).

The stimulus, stream packing and checking need no simulator: ``tests/test_attention_decode.py`` uses
them for the Amaranth-simulator tests too.
"""

import json
import os
import random

import numpy as np

from firmware.kv_cache import KvCacheLayout
from golden.attention import attention
from golden.numerics import quant_pow2
from hw.attention.decode import chunk_geometry
from hw.attention.engine import cmd_layout

__all__ = ["KINDS", "make_case", "Case"]

#: Stimulus kinds: ``random`` (quant_pow2 of random Q.16 vectors of random magnitude), ``saturate``
#: (large q and k exponents: scores saturate int32 and exp2_neg shifts reach 16), ``peaked`` (one key
#: dominates per block), ``zero`` (all-zero K and V: every score 0, outputs 0).
KINDS = ("random", "saturate", "peaked", "zero")


def _vectors(rng, shape, lo_bits, hi_bits):
    """Q.16 vectors whose magnitudes span ``2^lo_bits .. 2^hi_bits``, quantised with quant_pow2."""
    bits = rng.integers(lo_bits, hi_bits + 1, shape[:-1])
    x = np.empty(shape, np.int64)
    flat, fb = x.reshape(-1, shape[-1]), bits.reshape(-1)
    for i in range(flat.shape[0]):
        hi = 1 << int(fb[i])
        flat[i] = rng.integers(-hi, hi, shape[-1])
    return quant_pow2(x)


class Case:
    """Attention of ``tq`` consecutive queries at positions ``pos .. pos + tq - 1`` (decode: ``tq = 1``),
    run as tiles of ``query_block`` queries: tensors, golden output, and the engine's input/output beats.
    """

    def __init__(self, heads, kv_heads, head_dim, lanes, max_context, pos, kind="random", seed=0, bus_bytes=8,
                 tq=1, query_block=1, max_group=None, max_kv_heads=None):
        rng = np.random.default_rng(seed)
        self.heads, self.kv_heads, self.head_dim, self.pos = heads, kv_heads, head_dim, pos
        self.tq, self.query_block, self.max_context = tq, query_block, max_context
        self.group = heads // kv_heads
        # The engine build's maxima (the command carries the case's group and kv heads).
        self.max_group = max_group or self.group
        self.max_kv_heads = max_kv_heads or kv_heads
        self.chunk, self.row_beats = chunk_geometry(head_dim, lanes)
        t = pos + tq
        if kind == "saturate":
            q8, qe = _vectors(rng, (tq, heads, head_dim), 28, 31)
            k8, ke = _vectors(rng, (t, kv_heads, head_dim), 20, 31)
            v8, ve = _vectors(rng, (t, kv_heads, head_dim), 0, 31)
        elif kind == "zero":
            q8, qe = _vectors(rng, (tq, heads, head_dim), 0, 31)
            k8, ke = np.zeros((t, kv_heads, head_dim), np.int64), np.zeros((t, kv_heads), np.int64)
            v8, ve = k8.copy(), ke.copy()
        else:
            q8, qe = _vectors(rng, (tq, heads, head_dim), 4, 24)
            k8, ke = _vectors(rng, (t, kv_heads, head_dim), 4, 24)
            v8, ve = _vectors(rng, (t, kv_heads, head_dim), 0, 31)
            if kind == "peaked":
                hot = rng.integers(0, t, 8)
                for hh in range(kv_heads):
                    k8[hot, hh] = q8[0, hh * self.group]
                    ke[hot, hh] = 24
        self.q8, self.qe, self.k8, self.ke, self.v8, self.ve = q8, qe, k8, ke, v8, ve
        self.expected = attention(q8, qe, np.arange(pos, pos + tq), k8, ke, v8, ve, head_dim)
        self.layout = KvCacheLayout(1, kv_heads, head_dim, max_context, bus_bytes=bus_bytes)
        self.image = self.layout.pack_layer(k8, ke, v8, ve)
        self.pad_chunks = self.layout.pad_chunks(self.chunk)

    def tiles(self):
        """``(first query index, queries)`` of each tile."""
        return [(t0, min(self.query_block, self.tq - t0)) for t0 in range(0, self.tq, self.query_block)]

    def _rows(self, t0, n):
        """(query index, head) of each query row of each kv head, in the engine's row order."""
        return [[(t0 + qi, hk * self.group + g) for qi in range(n) for g in range(self.group)]
                for hk in range(self.kv_heads)]

    # -- stream beats as integers (cocotb) and as values (Amaranth sim) ----------------------------------
    def cmds(self):
        """``{pos, last, group, kv_heads}`` of each tile command."""
        return [{"pos": self.pos + t0, "last": n - 1, "group": self.group, "kv_heads": self.kv_heads}
                for t0, n in self.tiles()]

    def q_beats(self):
        """``[(int8 values, e)]`` in the engine's order (tiles, kv heads, rows, chunks)."""
        c = self.chunk
        return [([int(v) for v in self.q8[qi, hd, k * c:(k + 1) * c]], int(self.qe[qi, hd]))
                for t0, n in self.tiles() for rows in self._rows(t0, n) for qi, hd in rows
                for k in range(self.row_beats)]

    def kv_words(self):
        return [int.from_bytes(ch.astype(np.uint8).tobytes(), "little")
                for t0, n in self.tiles()
                for ch in self.layout.decode_chunks(self.image, self.pos + t0 + n - 1, self.chunk)]

    def expected_beats(self):
        c, d = self.chunk, self.head_dim
        return [[int(v) for v in self.expected[qi, hd * d + k * c:hd * d + (k + 1) * c]]
                for t0, n in self.tiles() for rows in self._rows(t0, n) for qi, hd in rows
                for k in range(self.row_beats)]

    def cmd_layout(self):
        return cmd_layout(self.max_context, self.query_block, self.max_group, self.max_kv_heads)

    def pack_cmd(self, cmd):
        return self.cmd_layout().const(cmd).as_bits()

    def pack_q(self, vals, e):
        word = 0
        for i, v in enumerate(vals):
            word |= (v & 0xFF) << (8 * i)
        return word | e << (8 * self.chunk)

    def unpack_o(self, word):
        vals = []
        for i in range(self.chunk):
            v = (word >> (32 * i)) & 0xFFFFFFFF
            vals.append(v - (1 << 32) if v >> 31 else v)
        return vals

    def check(self, beats):
        exp = self.expected_beats()
        assert len(beats) == len(exp), f"{len(beats)} output beats, expected {len(exp)}"
        for i, (got, want) in enumerate(zip(beats, exp)):
            row, k = divmod(i, self.row_beats)
            assert got == want, (f"pos {self.pos}: output row {row} beat {k} differs:\n got  {got}\n want {want}")


def amaranth_run(case, lanes, max_context, p_stall=0.0, seed=0):
    """Run ``case`` (or a list of cases, back to back on one engine: same head_dim, query_block and
    padding; the build's maxima are those of the first case) through the engine in the Amaranth simulator
    (random stalls) and check the outputs."""
    import numpy as np
    from amaranth.sim import Simulator

    from hw.attention.decode import DecodeAttention
    from hw.attention.engine import AttentionEngine

    cases = case if isinstance(case, list) else [case]
    case = cases[0]
    if case.query_block == 1:
        dut = DecodeAttention(case.max_group, case.max_kv_heads, case.head_dim, lanes, max_context=max_context,
                              pad_chunks=case.pad_chunks)
    else:
        dut = AttentionEngine(case.max_group, case.max_kv_heads, case.head_dim, lanes, query_block=case.query_block,
                              max_context=max_context, pad_chunks=case.pad_chunks)
    rng = np.random.default_rng(seed)
    cmds = [c for cs in cases for c in cs.cmds()]
    kv = [w for cs in cases for w in cs.kv_words()]
    qb = [b for cs in cases for b in cs.q_beats()]
    want = [b for cs in cases for b in cs.expected_beats()]
    work = sum(len(cs.kv_words()) * cs.group * cs.query_block for cs in cases)
    out = []
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    def feeder(port, items, to_payload):
        async def run(ctx):
            for item in items:
                while rng.random() < p_stall:
                    await ctx.tick()
                ctx.set(port.payload, to_payload(item))
                ctx.set(port.valid, 1)
                await ctx.tick().until(port.ready)
                ctx.set(port.valid, 0)
        return run

    async def sink(ctx):
        cycles = 0
        while len(out) < len(want):
            ready = int(rng.random() >= p_stall)
            ctx.set(dut.o.ready, ready)
            _, _, valid, pay = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid and ready:
                out.append([int(v) for v in pay])
            cycles += 1
            assert cycles < 20 * (work + 200 * len(cases)), "timeout"

    sim.add_testbench(feeder(dut.cmd, cmds, lambda c: c))
    sim.add_testbench(feeder(dut.q, qb, lambda b: {"data": b[0], "e": b[1]}))
    sim.add_testbench(feeder(dut.kv, kv, lambda w: w))
    sim.add_testbench(sink)
    sim.run()
    for cs in cases:
        n = len(cs.expected_beats())
        cs.check(out[:n])
        out = out[n:]



try:
    import cocotb
except ImportError:  # the helpers above are used without cocotb too
    cocotb = None

if cocotb is not None:
    from cocotb.triggers import FallingEdge, ReadOnly

    from sim import cocotb_streams as streams

    @cocotb.test()
    async def test_cases_with_stalls(dut):
        p = json.loads(os.environ["ATTN_PARAMS"])
        await streams.reset(dut, ["cmd", "q", "kv"], ["o"])
        report = []
        for i, spec in enumerate(p["cases"]):
            case = Case(spec.get("heads", p["heads"]), spec.get("kv_heads", p["kv_heads"]), p["head_dim"], p["lanes"],
                        p["max_context"], spec["pos"], spec["kind"], spec["seed"], tq=spec.get("tq", 1),
                        query_block=p.get("query_block", 1), max_group=p.get("max_group"),
                        max_kv_heads=p.get("max_kv_heads"))
            rng = random.Random(spec["seed"])
            run = await streams.run_streams(
                dut, {"cmd": [case.pack_cmd(c) for c in case.cmds()],
                      "q": [case.pack_q(v, e) for v, e in case.q_beats()],
                      "kv": case.kv_words()},
                "o", len(case.expected_beats()), rng, p["p_stall"], p["p_stall"])
            case.check([case.unpack_o(w) for w in run.received])
            report.append({"pos": spec["pos"], "kind": spec["kind"], "cycles": run.cycles,
                           "kv_chunks": len(case.kv_words())})
            for name in ("cmd", "q", "kv"):
                getattr(dut, f"{name}__valid").value = 0
            await ReadOnly()
            await FallingEdge(dut.clk)
        if p.get("report"):
            with open(p["report"], "w") as f:
                json.dump(report, f)
