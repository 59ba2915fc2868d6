"""The driver on the ``isa`` device: a Hugging Face-layout checkpoint compiled, loaded and run on the
ISA simulator gives the golden backend's logits exactly and the same generated tokens; the device
refuses a mismatched hardware config; errors reach the CLI as one line."""

import dataclasses
import json

import numpy as np
import pytest

from checkpoints import SHAPES, TEXT, make_checkpoint

from firmware.accelerator import Accelerator
from firmware.checkpoint import load_checkpoint
from firmware.checkpoint_writer import save_checkpoint
from firmware.cli import main
from firmware.device import DeviceError, IsaDevice
from firmware.tokenizer import train_bpe_tokenizer
from golden.model_config import MODEL_SHAPES
from golden.model_int import ContextOverflowError, IntegerModel
from golden.weights import random_model
from hw.config import load_hw_config
from hw.isa import ErrorCode

@pytest.fixture(scope="module", params=list(SHAPES))
def model_dir(request, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / request.param, request.param)


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_logits_isa_equal_golden_exactly(capsys, model_dir, tmp_path):
    toks = ",".join(str(t) for t in np.random.default_rng(2).integers(0, 200, 21))  # two chunks of 16 + 5
    files = {}
    for backend in ("golden", "isa"):
        files[backend] = tmp_path / f"{backend}.npy"
        code, out, _ = run(capsys, "logits", "--model", model_dir, "--tokens", toks, "--backend", backend,
                           "--hw", "tiny", "--out", files[backend])
        assert code == 0, out
    assert np.array_equal(np.load(files["isa"]), np.load(files["golden"]))


def test_generate_isa_equals_golden(capsys, model_dir):
    outs = {}
    for backend in ("golden", "isa"):
        code, out, _ = run(capsys, "generate", "--model", model_dir, "--backend", backend, "--prompt", "def ",
                           "--max-new-tokens", 8, "--json")
        assert code == 0
        outs[backend] = json.loads(out)["tokens"]
    assert outs["isa"] == outs["golden"] and len(outs["golden"]) >= 1


def test_driver_counts_runs_and_guards_the_context(model_dir):
    weights = load_checkpoint(model_dir)
    acc = Accelerator(weights, load_hw_config("tiny"), max_context=40)
    cache = acc.new_cache(40)
    want_model = IntegerModel(weights)
    ref_cache = want_model.new_cache(40)
    toks = np.arange(2, 38)
    got = acc.forward(toks, cache, all_logits=True)
    np.testing.assert_array_equal(got, want_model.forward(toks, ref_cache))
    assert acc.runs == 3 and cache.length == 36          # 16 + 16 + 4
    with pytest.raises(ContextOverflowError):
        acc.forward(np.arange(5), cache)
    with pytest.raises(ContextOverflowError):
        acc.new_cache(41)


def test_device_refuses_mismatched_config_and_reports_errors(model_dir):
    weights = load_checkpoint(model_dir)
    acc = Accelerator(weights, load_hw_config("tiny"))
    dev = acc.device
    dev._csr["id"] ^= 1                     # a bitstream built for another config
    with pytest.raises(DeviceError, match="does not match hardware config 'tiny'"):
        dev.check_id()
    dev = IsaDevice(load_hw_config("tiny"), 4096)
    dev.write(0, bytes([0xEE]) + bytes(31))  # an illegal opcode at address 0
    for name, value in (("program", 0), ("tokens", 64), ("n_tokens", 1), ("pos", 0), ("logits", 128)):
        dev.write_csr(name, value)
    with pytest.raises(DeviceError) as e:
        dev.run()
    assert e.value.code is ErrorCode.ILLEGAL_INSTRUCTION
    assert e.value.csrs["status"] >> 4 == ErrorCode.ILLEGAL_INSTRUCTION.value and e.value.csrs["error_pc"] == 0
    with pytest.raises(DeviceError, match="read-only"):
        dev.write_csr("status", 0)
    with pytest.raises(DeviceError, match="outside"):
        dev.read(4090, 10)
    # DRAM allocation: in order, aligned to the bus word, never past the end.
    assert dev.allocate(100, name="a") == 0 and dev.allocate(10) == 104 and dev.allocate(8, align=64) == 128
    assert dev.allocations["a"] == (0, 100)
    with pytest.raises(DeviceError, match="cannot allocate 4000 bytes"):
        dev.allocate(4000)
    assert acc.device.allocations["image"] == (0, len(acc.compiled.image))


def test_cli_unsupported_shape_is_one_line(capsys, tmp_path):
    tok = train_bpe_tokenizer([TEXT], 300)
    cfg = dataclasses.replace(MODEL_SHAPES["bitnet-large"], vocab_size=tok.get_vocab_size(), hidden_size=36,
                              intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              num_key_value_heads=2, head_dim=18, max_position_embeddings=64,
                              tie_word_embeddings=False, bos_token_id=0, eos_token_ids=(1,))
    save_checkpoint(random_model(cfg, seed=1), tmp_path / "m", weight_format="packed", tokenizer=tok)
    code, out, err = run(capsys, "logits", "--model", tmp_path / "m", "--tokens", "1,2", "--backend", "isa",
                         "--out", tmp_path / "x.npy")
    assert code == 2 and "head_dim 18" in err and len(err.strip().splitlines()) == 1


def test_a_gate_the_build_lacks_is_refused(tmp_path):
    """A relu2 model on a build without the relu2 epilogue (``vector.activations``): the compiler refuses it,
    and a program that asks anyway stops with CONFIG_MISMATCH on the ISA device (as the RTL does)."""
    from firmware.compiler import CompileError, compile_model

    tiny = load_hw_config("tiny")
    silu_only = dataclasses.replace(tiny, vector=dataclasses.replace(tiny.vector, activations=("silu",)))
    weights = load_checkpoint(make_checkpoint(tmp_path / "r", "relu2-gqa"))
    with pytest.raises(CompileError, match="hidden_act relu2 not in vector.activations \\(silu\\)"):
        Accelerator(weights, silu_only)
    model = IntegerModel(weights)
    cm = compile_model(model, tiny, max_context=16)           # compiled for a build that has relu2
    dev = IsaDevice(silu_only, len(cm.image))
    dev.write(0, bytes(cm.image))
    for name, value in (("program", cm.program), ("tokens", cm.tokens_addr), ("n_tokens", 1), ("pos", 0),
                        ("logits", cm.logits_addr)):
        dev.write_csr(name, value)
    dev.write(cm.tokens_addr, (3).to_bytes(4, "little"))
    with pytest.raises(DeviceError) as e:
        dev.run()
    assert e.value.code is ErrorCode.CONFIG_MISMATCH and "no relu2 epilogue" in str(e.value)
