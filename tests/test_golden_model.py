"""The integer transformer: invariances (chunking, decode), attention vs float, accuracy targets, errors."""

import dataclasses

import numpy as np
import pytest

from golden.accuracy import ACCURACY_MODELS, accuracy_report, compare_logits
from golden.attention import attention
from golden.model_config import MODEL_SHAPES
from golden.model_float import FloatModel
from golden.model_int import ContextOverflowError, IntegerModel
from golden.numerics import ATTN_KEY_BLOCK, quant_pow2
from golden.weights import random_model


def small_config(act="silu", heads=4, kv_heads=2, **kw):
    base = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=16, hidden_act=act,
                max_position_embeddings=256, tie_word_embeddings=False)
    base.update(kw)
    return dataclasses.replace(MODEL_SHAPES["bitnet-large"], **base)


MODELS = {
    "silu-mha": small_config("silu", 4, 4),
    "relu2-gqa2": small_config("relu2", 4, 2),
    "relu2-gqa4-tied": small_config("relu2", 4, 1, tie_word_embeddings=True, hidden_size=64, head_dim=16),
}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    cfg = MODELS[request.param]
    return IntegerModel(random_model(cfg, seed=7))


def test_chunked_prefill_and_decode_are_bit_identical(model):
    toks = np.random.default_rng(3).integers(0, model.config.vocab_size, 70)
    whole = model.logits(toks)
    for chunk in (1, 5, ATTN_KEY_BLOCK, 33):
        assert np.array_equal(model.logits(toks, chunk=chunk), whole), f"chunk={chunk}"


def test_cache_contents_independent_of_chunking(model):
    toks = np.random.default_rng(4).integers(0, model.config.vocab_size, 40)
    c1, c2 = model.new_cache(40), model.new_cache(40)
    model.forward(toks, c1)
    for i in range(0, 40, 7):
        model.forward(toks[i:i + 7], c2)
    for a, b in ((c1.k8, c2.k8), (c1.ve, c2.ve)):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_integer_close_to_float(model):
    toks = np.random.default_rng(5).integers(0, model.config.vocab_size, 48)
    w = random_model(model.config, seed=7)
    fig = compare_logits(IntegerModel(w).logits(toks) / 65536.0, FloatModel(w, np.float64).logits(toks))
    assert fig["cosine_min"] > 0.99


def test_context_overflow_and_bad_tokens(model):
    cache = model.new_cache(8)
    model.forward(np.arange(5), cache)
    with pytest.raises(ContextOverflowError, match="5 cached \\+ 4 new tokens > 8"):
        model.forward(np.arange(4), cache)
    with pytest.raises(ValueError, match="out of range"):
        model.forward(np.array([model.config.vocab_size]), model.new_cache(4))
    with pytest.raises(ValueError, match="non-empty"):
        model.forward(np.array([], dtype=np.int64), model.new_cache(4))


# -- attention against float softmax on the same int8 operands -------------------------------------------
def _float_attention(q8, qe, pos, k8, ke, v8, ve, d):
    tq, h, _ = q8.shape
    hkv = k8.shape[1]
    g = h // hkv
    q = q8 * 2.0 ** (qe[..., None] - 16)
    k = k8 * 2.0 ** (ke[..., None] - 16)
    v = v8 * 2.0 ** (ve[..., None] - 16)
    out = np.zeros((tq, h, d))
    for i in range(tq):
        for hh in range(h):
            s = k[: pos[i] + 1, hh // g] @ q[i, hh] / np.sqrt(d)
            p = np.exp(s - s.max())
            out[i, hh] = p @ v[: pos[i] + 1, hh // g] / p.sum()
    return out.reshape(tq, h * d)


@pytest.mark.parametrize("group", [1, 4, 5])
@pytest.mark.parametrize("ctx,start", [(1, 0), (40, 0), (200, 180), (300, 299)])
def test_attention_matches_float_softmax(group, ctx, start):
    rng = np.random.default_rng(ctx * 10 + group)
    d, hkv = 16, 2
    h = hkv * group
    k16 = rng.standard_normal((ctx, hkv, d)) * 65536 * 2
    v16 = rng.standard_normal((ctx, hkv, d)) * 65536 * rng.uniform(0.2, 5, (ctx, 1, 1))
    q16 = rng.standard_normal((ctx - start, h, d)) * 65536 * 2
    k8, ke = quant_pow2(k16.astype(np.int64))
    v8, ve = quant_pow2(v16.astype(np.int64))
    q8, qe = quant_pow2(q16.astype(np.int64))
    pos = np.arange(start, ctx)
    got = attention(q8, qe, pos, k8, ke, v8, ve, d) / 65536.0
    want = _float_attention(q8, qe, pos, k8, ke, v8, ve, d)
    vmax = np.abs(v8 * 2.0 ** (ve[..., None] - 16)).max()
    assert np.max(np.abs(got - want)) < 4e-3 * vmax


def _ramp_case(key_exp):
    d = 16
    k8 = np.zeros((40, 1, d), np.int64)
    k8[:, 0, 0] = np.arange(40) - 20
    v8 = np.tile(np.arange(40)[:, None, None], (1, 1, d)) - 20
    q8 = np.zeros((1, 1, d), np.int64)
    q8[0, 0, 0] = 127
    return attention(q8, np.array([[20]]), np.array([39]), k8, np.full((40, 1), key_exp), v8,
                     np.zeros((40, 1), np.int64), d)


def test_attention_exp_underflow_is_one_hot():
    # ~46 log2 units between neighbouring keys: every weight but the largest underflows to exactly 0.
    assert np.all(_ramp_case(12) == 19)


def test_attention_int32_score_saturation_ties():
    # Scores beyond the Q.16 int32 range (|z| >= 2^31, i.e. > 32768 log2 units) saturate by contract,
    # so keys 23..39 tie and the output is the mean of their values (3..19).
    assert np.all(_ramp_case(20) == 11)


# -- the accuracy targets of the numerics contract ---------------------------------------------------------
def test_accuracy_targets_on_peaked_models():
    names = [n for n, (_, _, target) in ACCURACY_MODELS.items() if target]
    rep = accuracy_report(positions=256, prefill=128, models=names)
    for name in names:
        r = rep["models"][name]
        assert r["cosine_min"] >= 0.995, (name, r)
        assert r["top1_agreement"] >= 0.98, (name, r)
    assert rep["targets_met"]
