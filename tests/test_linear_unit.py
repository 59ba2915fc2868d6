# amaranth: UnusedElaboratable=no
"""The LINEAR unit (Amaranth simulator) against the ISA simulator, instruction by instruction: a compiled
model's first layer (q|k|v with RoPE and the KV cache, o_proj, gate|up, down_proj with the gate's
per-token scales) on one unit instance, reading parameters, RoPE table and weights from a DRAM model
through the AXI read arbiter, and its buffers from a model of the on-chip buffers with random stalls."""

import dataclasses
import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from firmware.compiler import compile_model
from golden.isa_sim import IsaMachine
from golden.model_config import MODEL_SHAPES
from golden.model_int import IntegerModel
from golden.weights import random_model
from hw.bus.axi_read_arbiter import AxiReadArbiter
from hw.config import load_hw_config
from hw.isa import Epilogue, Opcode
from hw.memory.dram_model import FastDramModel
from hw.units.buffers import Buffer
from hw.units.linear import LinearUnit

HW = load_hw_config("tiny")
LIMIT = 60000   # cycles per command before the test calls it a hang
N = HW.tlmm.lanes


def _model(act, heads, kv_heads):
    cfg = dataclasses.replace(MODEL_SHAPES["bitnet-2b4t"], vocab_size=50, hidden_size=24, intermediate_size=40,
                              num_hidden_layers=1, num_attention_heads=heads, num_key_value_heads=kv_heads,
                              head_dim=8, hidden_act=act, max_position_embeddings=64, tie_word_embeddings=False)
    return IntegerModel(random_model(cfg, seed=5))


def _words(v, lanes, bits=64):
    """Split token-major (tokens, n) values into lanes-wide words (last one zero-padded)."""
    t, n = v.shape
    nb = -(-n // lanes)
    pad = np.zeros((t, nb * lanes), np.int64)
    pad[:, :n] = v
    return pad.reshape(t, nb, lanes)


class Buffers:
    """The on-chip buffers as the unit sees them: (buffer, token, index) -> lanes x 64-bit words."""

    def __init__(self):
        self.mem = {b: {} for b in Buffer}
        self.q_e = {}

    def load(self, buf, values):
        for t, row in enumerate(_words(values, N)):
            for i, word in enumerate(row):
                self.mem[buf][(t, i)] = [int(v) for v in word]

    def read(self, buf, t, i):
        return self.mem[buf].get((t, i), [0] * N)

    def array(self, buf, tokens, n):
        out = np.zeros((tokens, -(-n // N) * N), np.int64)
        for (t, i), word in self.mem[buf].items():
            if t < tokens and i * N < out.shape[1]:
                out[t, i * N:(i + 1) * N] = word
        return out[:, :n]


def run_unit(cm, instrs, setup, n_tokens, pos, prepare, seed=0):
    """Run LINEAR ``instrs`` on one unit; ``prepare(i, buffers)`` fills the buffers before command i and
    returns a checker ``check(buffers, kv_beats)`` called after it."""
    unit = LinearUnit(tables=HW.tlmm.tables, lanes=N, data_bits=HW.dram.data_bits, max_k=64, max_rows=96,
                      max_tokens=8, head_dim=8, max_heads=8)
    bus = HW.dram.data_bytes
    image = bytes(cm.image)
    words = [int.from_bytes(image[i:i + bus].ljust(bus, b"\0"), "little") for i in range(0, len(image), bus)]
    arb = AxiReadArbiter(3, 32, HW.dram.data_bits)
    dram = FastDramModel(32, HW.dram.data_bits, depth=len(words) + 8, init=words, latency=HW.dram.latency_cycles,
                         id_bits=1 + arb.sel_bits, jitter=2)
    m = Module()
    m.submodules.unit, m.submodules.arb, m.submodules.dram = unit, arb, dram
    for i, name in enumerate(("axi_params", "axi_weights", "axi_rope")):
        wiring.connect(m, getattr(unit, name), arb.m[i])
    wiring.connect(m, arb.s, dram.axi)
    rng = random.Random(seed)
    bufs = Buffers()
    failures = []

    async def bench(ctx):
        ctx.set(unit.setup, setup)
        ctx.set(unit.n_tokens, n_tokens)
        ctx.set(unit.pos, pos)
        ctx.set(unit.all_logits, 1)
        pending = []
        for k, (op, fields) in enumerate(instrs):
            check = prepare(k, bufs)
            kv, lgs = [], []
            port = unit.logits_cmd if op is Opcode.LOGITS else unit.cmd
            ctx.set(port.payload, fields)
            ctx.set(port.valid, 1)
            await ctx.tick().until(port.ready)
            ctx.set(port.valid, 0)
            for cycle in range(LIMIT):
                # Buffer model: answers in order, at most two waiting; random stalls everywhere.
                ready_req = int(len(pending) < 2 and rng.random() < 0.8)
                ctx.set(unit.rd_req.ready, ready_req)
                if pending and rng.random() < 0.8:
                    ctx.set(unit.rd_data.valid, 1)
                    word = 0
                    for n, v in enumerate(pending[0]):
                        word |= (v & ((1 << 64) - 1)) << (64 * n)
                    ctx.set(unit.rd_data.payload, word)
                else:
                    ctx.set(unit.rd_data.valid, 0)
                wr_ready = int(rng.random() < 0.8)
                kv_ready = int(rng.random() < 0.8)
                ctx.set(unit.wr.ready, wr_ready)
                ctx.set(unit.kv.ready, kv_ready)
                lg_ready = int(rng.random() < 0.8)
                ctx.set(unit.lg_out.ready, lg_ready)
                (_, _, rq_v, rq, rd_v, rd_r, w_v, w, kv_v, kvp, lg_v, lgp, busy) = await ctx.tick().sample(
                    unit.rd_req.valid, unit.rd_req.payload, unit.rd_data.valid, unit.rd_data.ready,
                    unit.wr.valid, unit.wr.payload, unit.kv.valid, unit.kv.payload, unit.lg_out.valid,
                    unit.lg_out.payload, unit.busy)
                if lg_v and lg_ready:
                    raw = int(lgp.data)
                    vals = [((raw >> (32 * n)) & 0xFFFFFFFF) for n in range(N)]
                    lgs.append((int(lgp.token), int(lgp.tile), [v - (1 << 32) if v >> 31 else v for v in vals]))
                if rd_v and rd_r:
                    pending.pop(0)
                if rq_v and ready_req:
                    pending.append(bufs.read(rq.buf, int(rq.token), int(rq.index)))
                if w_v and wr_ready:
                    buf = w.buf
                    raw = int(w.data)
                    lanes = []
                    for n in range(N):
                        v = (raw >> (64 * n)) & ((1 << 64) - 1)
                        lanes.append(v - (1 << 64) if v >> 63 else v)
                    bufs.mem[buf][(int(w.token), int(w.index))] = lanes
                    if buf is Buffer.Q:
                        bufs.q_e[(int(w.token), int(w.index))] = int(w.e)
                if kv_v and kv_ready:
                    raw = int(kvp.data)
                    vals = [((raw >> (8 * n)) & 0xFF) - (256 if (raw >> (8 * n + 7)) & 1 else 0) for n in range(N)]
                    kv.append((int(kvp.pos), int(kvp.head), int(kvp.is_v), int(kvp.beat), vals, int(kvp.e),
                               int(kvp.last)))
                if not busy and cycle > 4:
                    break
            else:
                failures.append(f"command {k} ({op.name} {fields.get('epilogue')}) did not finish")
                return
            try:
                check(bufs, kv, lgs)
            except AssertionError as e:
                failures.append(f"command {k} ({op.name} {fields.get('epilogue')}): {e}")

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert not failures, failures


@pytest.mark.parametrize("act, heads, kv_heads, n_tokens, pos", [
    ("relu2", 3, 1, 3, 5),     # GQA 3:1, a prefill chunk starting at position 5
    ("silu", 2, 2, 1, 17),     # MHA, one decode token
])
def test_first_layer_matches_isa_simulator(act, heads, kv_heads, n_tokens, pos):
    model = _model(act, heads, kv_heads)
    cm = compile_model(model, HW, max_context=64, max_chunk=8)
    c = model.config
    isa = IsaMachine(bytearray(cm.image), HW.tlmm.tables, N, HW.dram.data_bytes)
    isa.args = dict(n_tokens=n_tokens, pos=pos, logits=cm.logits_addr, all_logits=True)
    isa.token_ids = np.random.default_rng(1).integers(0, c.vocab_size, n_tokens)
    isa.buffers, isa._pc = {}, 0
    setup = cm.instructions[0][1]
    isa._op_setup(**setup)
    isa._op_embed(**cm.instructions[1][1])
    layer = [f for op, f in cm.instructions[2:7]]
    linears = [layer[0], layer[2], layer[3], layer[4]]     # QKV, o_proj, gate|up, down (ATTEND is the ISA's)
    hkv, d = c.num_key_value_heads, c.head_dim

    def prepare(k, bufs):
        if k == 0:
            bufs.load(Buffer.X, isa.buffers["x"])
            isa._op_linear(**linears[0])
            isa._op_attend(layer=0)

            def check(b, kv, lgs):
                q8, qe = isa.buffers["q"]
                got_q = b.array(Buffer.Q, n_tokens, heads * d).reshape(n_tokens, heads, d)
                np.testing.assert_array_equal(got_q, q8)
                for t in range(n_tokens):
                    for h in range(heads):
                        assert b.q_e[(t, h * d // N)] == qe[t, h]
                img = bytes(isa.dram[cm.kv.base:cm.kv.base + cm.kv.layer_bytes])
                k8, ke, v8, ve = cm.kv.unpack_layer(img, pos + n_tokens)
                assert len(kv) == 2 * hkv * n_tokens * (d // N)
                for p_, h, is_v, beat, vals, e, last in kv:
                    want = (v8 if is_v else k8)[p_, h, beat * N:(beat + 1) * N]
                    assert vals == [int(x) for x in want], (p_, h, is_v, beat)
                    assert e == int((ve if is_v else ke)[p_, h]) and last == (beat == d // N - 1)
            return check
        if k == 4:
            isa._op_logits(**lm_head)
            stride = cm.logits_stride
            raw = bytes(isa.dram[cm.logits_addr:cm.logits_addr + 4 * n_tokens * stride])
            want = np.frombuffer(raw, "<i4").astype(np.int64).reshape(n_tokens, stride)

            def check(b, kv, lgs):
                tiles = stride // N
                assert [(t, rt) for t, rt, _ in lgs] == [(t, rt) for rt in range(tiles) for t in range(n_tokens)]
                for t, rt, vals in lgs:
                    assert vals == [int(v) for v in want[t, rt * N:(rt + 1) * N]], (t, rt)
            return check
        if k == 1:
            bufs.load(Buffer.ATT, isa.buffers["att"])
        isa._op_linear(**linears[k])
        if k in (1, 3):
            def check(b, kv, lgs):
                np.testing.assert_array_equal(b.array(Buffer.X, n_tokens, c.hidden_size), isa.buffers["x"])
                assert not kv
        else:
            def check(b, kv, lgs):
                np.testing.assert_array_equal(b.array(Buffer.H, n_tokens, c.intermediate_size), isa.buffers["h"])
        return check

    lm_head = cm.instructions[-2][1]
    assert cm.instructions[-2][0] is Opcode.LOGITS
    run_unit(cm, [(Opcode.LINEAR, f) for f in linears] + [(Opcode.LOGITS, lm_head)], setup, n_tokens, pos,
             prepare)


@pytest.mark.parametrize("epilogue, k, activations", [
    (Epilogue.RESIDUAL, 65, ("silu", "relu2")),   # k beyond max_k
    (Epilogue.GATE_RELU2, 8, ("silu",)),          # a gate this build has no epilogue for
    (Epilogue.GATE_SILU, 8, ("relu2",)),
])
def test_shapes_beyond_the_build_fault(epilogue, k, activations):
    """A LINEAR the unit cannot run (k beyond max_k, a gate it was built without) is refused with
    CONFIG_MISMATCH and nothing runs."""
    from hw.isa import ErrorCode, Source
    unit = LinearUnit(tables=4, lanes=4, data_bits=64, max_k=64, max_rows=96, max_tokens=8, head_dim=8,
                      activations=activations)
    state = {}

    async def bench(ctx):
        ctx.set(unit.cmd.payload, {"epilogue": epilogue, "source": Source.RESIDUAL, "layer": 0,
                                   "weights": 0, "params": 0, "k": k, "rows": 8, "bound0": 0, "bound1": 0})
        ctx.set(unit.cmd.valid, 1)
        await ctx.tick().until(unit.cmd.ready)
        ctx.set(unit.cmd.valid, 0)
        state["fault"] = ctx.get(unit.fault)
        for _ in range(5):
            await ctx.tick()
        state["busy"] = ctx.get(unit.busy)
        state["req"] = ctx.get(unit.rd_req.valid)

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert state == {"fault": ErrorCode.CONFIG_MISMATCH, "busy": 0, "req": 0}
