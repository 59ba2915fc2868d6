"""Offline tokenizers: a byte-level BPE trained on standard-library source, and tokenizer.json loading."""

from __future__ import annotations

import sysconfig

import pytest

from firmware.checkpoint_writer import save_checkpoint
from firmware.tokenizer import (TokenizerError, bos_token_id, decode, encode, load_tokenizer, stdlib_corpus,
                                train_bpe_tokenizer)
from golden.model_config import ModelConfig
from golden.weights import random_model

VOCAB = 384
UNUSUAL = "naïve café — ✓ 日本語 😀 <s> </s> tabs\tand  double  spaces\r\n\n   trailing "


@pytest.fixture(scope="module")
def corpus():
    return stdlib_corpus(120_000)


@pytest.fixture(scope="module")
def tok(corpus):
    return train_bpe_tokenizer([corpus[:80_000]], VOCAB)


def test_stdlib_corpus_is_deterministic_python_source(corpus):
    assert len(corpus.encode("utf-8")) <= 120_000
    assert len(corpus.encode("utf-8")) > 100_000  # the cut lands within one character of the limit
    assert stdlib_corpus(120_000) == corpus
    assert stdlib_corpus(5_000) == corpus[:len(stdlib_corpus(5_000))]  # a prefix of the same ordering
    assert "def " in corpus and "import " in corpus
    assert stdlib_corpus(0) == ""


def test_stdlib_corpus_skips_test_directories():
    from firmware.tokenizer import _stdlib_sources
    paths = _stdlib_sources(sysconfig.get_paths()["stdlib"])
    assert paths == sorted(paths) and all(p.endswith(".py") for p in paths)
    skipped = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}
    assert not any(set(p.split("/")[:-1]) & skipped for p in paths)


def test_training_is_deterministic(corpus, tok):
    again = train_bpe_tokenizer([corpus[:80_000]], VOCAB)
    assert again.to_str() == tok.to_str()
    assert tok.get_vocab_size() == VOCAB
    assert [tok.token_to_id(t) for t in ("<s>", "</s>", "<unk>")] == [0, 1, 2]


def test_round_trip_is_lossless(corpus, tok):
    held_out = corpus[80_000:]
    for text in (held_out, UNUSUAL, "", " leading space", "x"):
        ids = encode(tok, text)
        assert decode(tok, ids) == text
    # Merges learnt from Python source compress held-out Python source.
    assert len(encode(tok, held_out)) < 0.6 * len(held_out.encode("utf-8"))


def test_bos_is_explicit(tok):
    assert encode(tok, "x = 1") == tok.encode("x = 1", add_special_tokens=False).ids
    assert encode(tok, "x = 1", add_bos=True) == [0] + encode(tok, "x = 1")
    assert encode(tok, "x", add_bos=True, bos_id=7)[0] == 7
    assert bos_token_id(tok) == 0
    assert decode(tok, encode(tok, "x", add_bos=True), skip_special_tokens=True) == "x"


def test_missing_bos_is_an_error(corpus):
    no_bos = train_bpe_tokenizer([corpus[:20_000]], 300, special_tokens=("<pad>",))
    with pytest.raises(TokenizerError, match="bos_id"):
        encode(no_bos, "x", add_bos=True)


def test_saved_tokenizer_loads_back_identically(tmp_path, corpus, tok):
    tok.save(str(tmp_path / "tokenizer.json"))
    for target in (tmp_path, tmp_path / "tokenizer.json"):
        loaded = load_tokenizer(target)
        assert loaded.to_str() == tok.to_str()
        assert encode(loaded, corpus[90_000:100_000]) == encode(tok, corpus[90_000:100_000])


def test_checkpoint_writer_saves_the_tokenizer(tmp_path, tok):
    config = ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                         rope_theta=10000.0, rms_norm_eps=1e-5, hidden_act="relu2", tie_word_embeddings=True)
    save_checkpoint(random_model(config), tmp_path / "ckpt", tokenizer=tok)
    assert load_tokenizer(tmp_path / "ckpt").to_str() == tok.to_str()


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(TokenizerError) as info:
        load_tokenizer(tmp_path)
    assert "tokenizer.json" in str(info.value) and str(tmp_path) in str(info.value)


def test_sentencepiece_only_checkpoint_is_explained(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\x00")
    with pytest.raises(TokenizerError) as info:
        load_tokenizer(tmp_path)
    message = str(info.value)
    assert "sentencepiece" in message and "tokenizer.model" in message and "convert" in message


@pytest.mark.parametrize("content", ["", "{not json", '{"model": {"type": "NoSuchModel"}}'])
def test_corrupt_tokenizer_json(tmp_path, content):
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(TokenizerError) as info:
        load_tokenizer(tmp_path)
    message = str(info.value)
    assert "tokenizer.json" in message and "\n" not in message


def test_vocab_too_small_for_bytes():
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe_tokenizer(["abc"], 100)
