"""The ``trillium`` command line: generate / logits / accuracy / config, and one-line errors."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from firmware.checkpoint_writer import save_checkpoint
from firmware.cli import main
from firmware.tokenizer import train_bpe_tokenizer
from golden.model_config import MODEL_SHAPES
from golden.model_int import IntegerModel
from golden.weights import random_model

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x = 0\n    y = 0\n" * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = train_bpe_tokenizer([TEXT], 300)
    cfg = dataclasses.replace(
        MODEL_SHAPES["bitnet-2b4t"], vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=0, eos_token_ids=(1,))
    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_checkpoint(random_model(cfg, seed=3), path, weight_format="packed", tokenizer=tok)
    return path


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("backend", ["golden", "float"])
def test_generate_json(capsys, model_dir, backend):
    code, out, _ = run(capsys, "generate", "--model", model_dir, "--backend", backend, "--prompt", "def ",
                       "--max-new-tokens", 5, "--json")
    assert code == 0
    res = json.loads(out)
    assert set(res) >= {"prompt_tokens", "tokens", "text", "timing"}
    assert res["prompt_tokens"][0] == 0 and 1 <= len(res["tokens"]) <= 5


def test_generate_streams_and_sampling_is_reproducible(capsys, model_dir):
    args = ["generate", "--model", model_dir, "--prompt", "class ", "--max-new-tokens", 6, "--temperature", 0.9,
            "--top-k", 20, "--top-p", 0.9, "--seed", 11]
    code, out1, err = run(capsys, *args)
    assert code == 0 and out1.startswith("class ") and "tok/s" in err
    _, out2, _ = run(capsys, *args)
    assert out1 == out2


def test_logits_golden_matches_integer_model(capsys, model_dir, tmp_path):
    out_file = tmp_path / "l.npy"
    code, out, _ = run(capsys, "logits", "--model", model_dir, "--tokens", "1,5,9,2", "--out", out_file)
    assert code == 0 and "shape [4," in out
    got = np.load(out_file)
    assert got.dtype == np.float32
    from firmware.checkpoint import load_checkpoint
    want = IntegerModel(load_checkpoint(model_dir)).logits(np.array([1, 5, 9, 2])) / 65536.0
    assert np.array_equal(got, want.astype(np.float32))


@pytest.mark.parametrize("args,expect", [
    (["logits", "--model", "/nonexistent/dir", "--tokens", "1", "--out", "x.npy"], "nonexistent"),
    (["logits", "--model", "{m}", "--tokens", "1,a", "--out", "x.npy"], "comma-separated integers"),
    (["logits", "--model", "{m}", "--tokens", "1,99999", "--out", "x.npy"], "outside the vocabulary"),
    (["generate", "--model", "{m}", "--prompt", "x " * 80, "--max-new-tokens", "4"], "exceeds the context of 64"),
    (["generate", "--model", "{m}", "--prompt", "x", "--max-new-tokens", "0"], "max_new_tokens must be"),
    (["generate", "--model", "{m}", "--prompt", "x", "--top-p", "1.5"], "top_p must be in"),
    (["config", "--hw", "nope"], "unknown hardware config 'nope'"),
])
def test_errors_are_one_line_exit_2(capsys, model_dir, args, expect):
    code, out, err = run(capsys, *[a.replace("{m}", str(model_dir)) for a in args])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trillium: error:") and expect in lines[0], err


def test_refuses_pickled_checkpoint(capsys, tmp_path, model_dir):
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "config.json").write_text((model_dir / "config.json").read_text())
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    code, _, err = run(capsys, "logits", "--model", bad, "--tokens", "1", "--out", tmp_path / "x.npy")
    assert code == 2 and "pytorch_model.bin" in err


def test_config_command(capsys):
    code, out, _ = run(capsys, "config", "--hw", "tellme-kv260")
    assert code == 0 and json.loads(out)["derived"]["tlmm_macs_per_cycle"] == 1344


def test_entry_point_help():
    exe = [sys.executable, "-m", "firmware.cli", "--help"]
    res = subprocess.run(exe, capture_output=True, text=True, check=True)
    assert "examples:" in res.stdout and "trillium demo" in res.stdout


@pytest.mark.slow
def test_bench_tlmm_json(capsys):
    code, out, _ = run(capsys, "bench", "tlmm", "--hw", "tiny", "--json")
    res = json.loads(out)
    assert code == 0
    assert {"lut4_per_mac", "baseline_lut4_per_mac", "lut_ratio", "steady_state_efficiency"} <= set(res)
    assert res["steady_state_efficiency"] >= 0.97


def test_bench_attention_refuses_unknown_shape(capsys):
    code, _, err = run(capsys, "bench", "attention", "--hw", "tiny", "--shape", "nope")
    assert code == 2 and "unknown model shape 'nope'" in err


@pytest.mark.slow
def test_bench_attention_json(capsys):
    code, out, _ = run(capsys, "bench", "attention", "--hw", "tiny", "--json")
    res = json.loads(out)
    assert code == 0
    # tiny's max_context is 512: only that context is run.
    assert set(res["decode_ratio"]) == set(res["prefill_ratio"]) == {"512"}
    assert 1.0 <= res["decode_ratio"]["512"] <= 1.2 and 1.0 <= res["prefill_ratio"]["512"] <= 1.3
