"""The instruction set (hw/isa.py), the compiler (firmware/compiler.py) and the ISA simulator
(golden/isa_sim.py): a compiled program run on its DRAM image gives exactly the integer model's logits
for prefill chunks and decode steps; bad programs and arguments give the right error code."""

import dataclasses

import numpy as np
import pytest

from firmware.compiler import CompileError, compile_model
from golden.isa_sim import IsaMachine, IsaRuntimeError
from golden.model_config import MODEL_SHAPES
from golden.model_int import IntegerModel
from golden.weights import random_model
from hw.config import load_hw_config
from hw.isa import (BODIES, INSTRUCTION_BYTES, Epilogue, ErrorCode, IsaError, Opcode, Source, decode, encode,
                    instruction_layout)


def small_config(act, heads, kv_heads, **kw):
    base = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=16, hidden_act=act,
                max_position_embeddings=256, tie_word_embeddings=False)
    base.update(kw)
    return dataclasses.replace(MODEL_SHAPES["bitnet-large"], **base)


def tiny_hw(head_dim=16):
    """The tiny config with the build's head_dim set to the test models' (the ISA simulator runs any)."""
    hw = load_hw_config("tiny")
    return dataclasses.replace(hw, limits=dataclasses.replace(hw.limits, head_dim=head_dim))


MODELS = {"relu2-gqa": small_config("relu2", 4, 1), "silu-mha": small_config("silu", 4, 4)}


# -- encoding ---------------------------------------------------------------------------------------------
def test_every_opcode_round_trips_at_field_extremes():
    rng = np.random.default_rng(0)
    for op, body in BODIES.items():
        for trial in range(3):
            fields = {}
            for name, shape in body.members.items():
                if isinstance(shape, type):  # an enum
                    fields[name] = list(shape)[trial % len(shape)]
                else:
                    hi = (1 << shape.width) - 1
                    fields[name] = [0, hi, int(rng.integers(0, hi + 1))][trial]
            raw = encode(op, **fields)
            assert len(raw) == INSTRUCTION_BYTES
            assert decode(raw) == (op, fields)


def test_layout_is_what_the_gateware_decodes():
    # The decoder views the low bits of the word through this layout: opcode in bits 0..7.
    layout = instruction_layout()
    raw = encode(Opcode.ATTEND, layer=5)
    view = layout.from_bits(int.from_bytes(raw, "little") & ((1 << layout.size) - 1))
    assert view.opcode == Opcode.ATTEND and int(view.body.attend.layer) == 5


@pytest.mark.parametrize("call, match", [
    (lambda: encode(Opcode.ATTEND, layer=256), "does not fit"),
    (lambda: encode(Opcode.ATTEND), "needs field"),
    (lambda: encode(Opcode.ATTEND, layer=1, bogus=2), "no field"),
    (lambda: encode(Opcode.LINEAR, epilogue=1, source=Source.FFN, layer=0, weights=0, params=0, k=1, rows=1,
                    bound0=0, bound1=0), "must be a Epilogue"),
    (lambda: decode(bytes([0xEE]) + bytes(31)), "illegal opcode"),
    (lambda: decode(bytes([Opcode.END.value, 1]) + bytes(30)), "unused instruction bits"),
    (lambda: decode(bytes(5)), "32 bytes"),
])
def test_encoding_errors(call, match):
    with pytest.raises(IsaError, match=match):
        call()


# -- whole models -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=list(MODELS))
def compiled(request):
    model = IntegerModel(random_model(MODELS[request.param], seed=11))
    return model, compile_model(model, tiny_hw(), max_context=96, max_chunk=16)


def _run(machine, cm, toks, pos, all_logits=True):
    cm_tokens = np.asarray(toks, "<i4").tobytes()
    machine.dram[cm.tokens_addr:cm.tokens_addr + len(cm_tokens)] = cm_tokens
    work = machine.run(cm.program, tokens=cm.tokens_addr, n_tokens=len(toks), pos=pos, logits=cm.logits_addr,
                       all_logits=all_logits)
    n = len(toks) if all_logits else 1
    raw = bytes(machine.dram[cm.logits_addr:cm.logits_addr + 4 * n * cm.logits_stride])
    return np.frombuffer(raw, "<i4").astype(np.int64).reshape(n, cm.logits_stride)[:, :cm.vocab], work


def test_prefill_then_decode_equals_integer_model(compiled):
    """Prefill chunks of 16 and 9 tokens (the second starts mid-block), then 8 decode steps: every
    logit equal to IntegerModel's, and the KV cache bytes are the driver's layout of its cache."""
    model, cm = compiled
    hw = load_hw_config("tiny")
    machine = IsaMachine(bytearray(cm.image), hw.tlmm.tables, hw.tlmm.lanes, hw.dram.data_bytes)
    rng = np.random.default_rng(5)
    prompt = rng.integers(0, model.config.vocab_size, 25)
    cache = model.new_cache(96)
    want = model.forward(prompt[:16], cache)
    got, work = _run(machine, cm, prompt[:16], 0)
    np.testing.assert_array_equal(got, want)
    assert work.ternary_macs == 16 * sum(r * k for r, k in model.config.linear_shapes().values()) * 2
    want = model.forward(prompt[16:], cache)
    got, _ = _run(machine, cm, prompt[16:], 16)
    np.testing.assert_array_equal(got, want)
    pos = 25
    for step in range(8):
        tok = [int(np.argmax(got[-1]))]
        want = model.forward(tok, cache, all_logits=False)
        got, work = _run(machine, cm, tok, pos, all_logits=False)
        np.testing.assert_array_equal(got, want)
        pos += 1
    assert work.instructions == 2 + 5 * model.config.num_hidden_layers + 2
    assert work.attention_macs == 2 * model.config.head_dim * model.config.num_attention_heads * pos \
        * model.config.num_hidden_layers
    # The KV cache in DRAM holds the model's cache (k in the packed element order, v as is).
    kv = cm.kv
    base = kv.base
    for layer in range(model.config.num_hidden_layers):
        img = bytes(machine.dram[base + layer * kv.layer_bytes:base + (layer + 1) * kv.layer_bytes])
        k8, ke, v8, ve = kv.unpack_layer(img, pos)
        np.testing.assert_array_equal(v8, cache.v8[layer][:pos])
        np.testing.assert_array_equal(ke, cache.ke[layer][:pos])
        np.testing.assert_array_equal(ve, cache.ve[layer][:pos])
        assert sorted(k8[3, 0].tolist()) == sorted(cache.k8[layer][3, 0].tolist())


def test_run_errors_have_codes(compiled):
    model, cm = compiled
    hw = load_hw_config("tiny")

    def fresh():
        return IsaMachine(bytearray(cm.image), hw.tlmm.tables, hw.tlmm.lanes, hw.dram.data_bytes)

    with pytest.raises(IsaRuntimeError) as e:
        _run(fresh(), cm, [model.config.vocab_size], 0)
    assert e.value.code is ErrorCode.BAD_TOKEN
    with pytest.raises(IsaRuntimeError) as e:
        _run(fresh(), cm, [1, 2, 3], 95)
    assert e.value.code is ErrorCode.CONTEXT_OVERFLOW
    bad = fresh()
    bad.dram[cm.program + INSTRUCTION_BYTES] = 0xEE   # the EMBED's opcode
    with pytest.raises(IsaRuntimeError) as e:
        _run(bad, cm, [1], 0)
    assert e.value.code is ErrorCode.ILLEGAL_INSTRUCTION and e.value.pc == cm.program + INSTRUCTION_BYTES
    wild = fresh()
    wild.dram[cm.program + INSTRUCTION_BYTES:cm.program + 2 * INSTRUCTION_BYTES] = encode(
        Opcode.EMBED, table=len(cm.image) - 8, rows=model.config.vocab_size, stride=128)
    with pytest.raises(IsaRuntimeError) as e:
        _run(wild, cm, [5], 0)
    assert e.value.code is ErrorCode.BAD_ADDRESS


def test_compile_rejects_shapes_the_hardware_cannot_run():
    hw = tiny_hw()
    odd = IntegerModel(random_model(small_config("silu", 2, 2, head_dim=18, hidden_size=36), seed=1))
    with pytest.raises(CompileError, match="head_dim"):
        compile_model(odd, tiny_hw(18))
    big = IntegerModel(random_model(small_config("silu", 4, 4, hidden_size=136, vocab_size=1100), seed=1))
    with pytest.raises(CompileError, match=r"head_dim 16 != 8; hidden_size 136 > 128; vocab_size 1100 > 1024"):
        compile_model(big, load_hw_config("tiny"))
    with pytest.raises(CompileError, match="max_chunk 17 outside 1..16"):
        compile_model(IntegerModel(random_model(small_config("silu", 4, 4), seed=1)), hw, max_chunk=17)
    inter = IntegerModel(random_model(small_config("silu", 4, 4, intermediate_size=82), seed=1))
    with pytest.raises(CompileError, match="intermediate_size"):
        compile_model(inter, hw)
    ok = IntegerModel(random_model(small_config("silu", 4, 4), seed=1))
    with pytest.raises(CompileError, match="max_context"):
        compile_model(ok, hw, max_context=hw.max_context + 1)


@pytest.mark.parametrize("tied", [True, False])
def test_sliced_large_tensors_change_nothing(monkeypatch, tied):
    """The embedding and LM head are drawn, quantised, packed and (in the ISA simulator) multiplied in
    slices of rows, so that a 128,256-token vocabulary fits in memory: with tiny slices (a vocabulary of
    97 rows, the last LM-head row tile partial) the weights, image bytes, logits and work counts are the
    same as in one piece."""
    import firmware.compiler
    import golden.isa_sim
    import golden.model_int
    import golden.weights

    cfg = small_config("relu2", 4, 1, tie_word_embeddings=tied)
    hw = load_hw_config("tiny")
    prompt = np.random.default_rng(3).integers(0, cfg.vocab_size, 6)

    def build():
        w = random_model(cfg, seed=7)
        model = IntegerModel(w)
        cm = compile_model(model, tiny_hw(), max_context=32, max_chunk=8)
        machine = IsaMachine(bytearray(cm.image), hw.tlmm.tables, hw.tlmm.lanes, hw.dram.data_bytes)
        runs = [_run(machine, cm, prompt, 0), _run(machine, cm, prompt[:1], 6, all_logits=False)]
        return w, model, cm, [(got, work.to_dict()) for got, work in runs]

    w0, m0, cm0, runs0 = build()
    monkeypatch.setattr(golden.weights, "_DRAW_SLICE_ELEMS", 2 * cfg.hidden_size + 5)
    monkeypatch.setattr(golden.model_int, "_QUANT_SLICE_ROWS", 10)
    monkeypatch.setattr(firmware.compiler, "_PACK_SLICE_ROWS", 10)
    monkeypatch.setattr(golden.isa_sim, "_LM_HEAD_SLICE_ROWS", 10)
    w1, m1, cm1, runs1 = build()
    np.testing.assert_array_equal(w1.embed, w0.embed)
    np.testing.assert_array_equal(w1.lm_head, w0.lm_head)
    np.testing.assert_array_equal(w1.final_norm, w0.final_norm)   # the generator's stream continues alike
    for a, b in ((m1.embed, m0.embed), (m1.lm_head, m0.lm_head)):
        for f in ("q", "m16", "e"):
            assert getattr(a, f).dtype == getattr(b, f).dtype
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert bytes(cm1.image) == bytes(cm0.image) and cm1.regions == cm0.regions
    for (got1, work1), (got0, work0) in zip(runs1, runs0):
        np.testing.assert_array_equal(got1, got0)
        assert work1 == work0
    np.testing.assert_array_equal(runs1[0][0], m0.logits(prompt))
