"""The committed demo model (``firmware/demo_model``) and ``trillium demo`` on the fast backends.

* the checkpoint loads, is small, and fits the ``tiny`` hardware config's ``limits``;
* on held-out standard-library text, the float reference and the integer model agree on the top-1 token
  at most positions, and both perplexities are far below the vocabulary size (it learned something);
* greedy generation on the golden backend is deterministic and looks like Python;
* ``trillium demo --backend golden --json`` prints a report with the documented keys, and the ``isa``
  backend records its runs in the accelerator's ``run_log``.

The Verilator run of the demo is covered by the co-simulation tests of the driver (same program, same
device); it is not repeated here.
"""

import json

import numpy as np
import pytest

from firmware.checkpoint import load_checkpoint
from firmware.cli import main
from firmware.compiler import check_limits
from firmware.demo import DEMO_MODEL_DIR, REPORT_KEYS, heal_prompt
from firmware.generate import Generator, make_backend
from firmware.tokenizer import load_tokenizer
from firmware.train_demo import heldout_windows, perplexity
from hw.config import load_hw_config


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(DEMO_MODEL_DIR), load_tokenizer(DEMO_MODEL_DIR)


def test_committed_model_loads_and_fits_tiny(demo):
    weights, tok = demo
    c = weights.config
    check_limits(c, load_hw_config("tiny"))
    assert c.head_dim == 8 and c.intermediate_size % 4 == 0 and c.max_position_embeddings <= 512
    assert c.vocab_size == tok.get_vocab_size() <= 1024
    assert c.weight_format == "packed" and c.hidden_act in ("relu2", "silu")
    size = sum(p.stat().st_size for p in DEMO_MODEL_DIR.iterdir())
    assert size < 4 << 20, f"demo model is {size} bytes"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert (DEMO_MODEL_DIR / name).is_file()


def test_float_and_integer_agree_on_heldout_text(demo):
    weights, tok = demo
    windows = heldout_windows(tok, n_windows=2, length=64)
    ppl_f, top_f = perplexity(weights, windows, "float")
    ppl_i, top_i = perplexity(weights, windows, "integer")
    agree = np.mean(np.concatenate(top_f) == np.concatenate(top_i))
    assert agree >= 0.9, agree
    assert ppl_f < 80 and ppl_i < 80, (ppl_f, ppl_i)  # 34 with Python 3.11.7; an untrained model: ~1000
    assert abs(np.log(ppl_i / ppl_f)) < 0.1, (ppl_f, ppl_i)


def test_greedy_generation_is_deterministic(demo):
    weights, tok = demo
    runs = [Generator(make_backend("golden", weights), tok).generate("import ", 12) for _ in range(2)]
    assert runs[0].tokens == runs[1].tokens
    assert len(runs[0].tokens) >= 1
    assert runs[0].text.isprintable() or "\n" in runs[0].text


def test_heal_prompt(demo):
    _, tok = demo
    ids = [0] + tok.encode("def ").ids
    kept, tail = heal_prompt(tok, ids)
    assert kept == ids[:-1] and tail == " "
    assert heal_prompt(tok, ids, enabled=False) == (ids, "")
    assert heal_prompt(tok, [0]) == ([0], "")


def test_demo_cli_golden_json(capsys):
    assert main(["demo", "--backend", "golden", "--json", "--max-new-tokens", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert tuple(report) == REPORT_KEYS
    assert report["backend"] == "golden" and report["hw"] == "tiny"
    assert 1 <= report["n_generated_tokens"] <= 4 and report["n_generated_tokens"] == len(report["tokens"])
    assert report["n_prompt_tokens"] == len(report["prompt_tokens"])
    assert report["cycles"] is None and report["projection"] is None and report["utilisation"] is None
    assert any("no clock cycles" in n for n in report["notes"])
    assert report["dram"]["decode_bytes_per_token_mean"] > 0 and "ISA simulator" in report["dram"]["source"]
    assert (report["prompt"] + report["text"]).startswith("def ")


def test_demo_cli_isa_table(capsys):
    assert main(["demo", "--backend", "isa", "--max-new-tokens", "3", "--prompt", "import "]) == 0
    out = capsys.readouterr().out
    assert out.startswith("import ")
    assert "DRAM bytes/token" in out and "counts no clock cycles" in out


def test_accelerator_run_log(demo):
    from firmware.accelerator import Accelerator

    weights, _ = demo
    acc = Accelerator(weights, load_hw_config("tiny"), "isa")
    cache = acc.new_cache(20)
    acc.forward(np.arange(1, 19), cache)  # 18 tokens: two prefill runs of at most 16
    acc.forward(np.array([5]), cache)
    assert [(r["n_tokens"], r["pos"]) for r in acc.run_log] == [(16, 0), (2, 16), (1, 18)]
    assert all(r["work"]["dram_read_bytes"] > 0 for r in acc.run_log)


def test_demo_cli_on_the_rtl_equals_golden(capsys):
    """The README's main command on its default backend (the Verilator RTL): same tokens as golden, and a
    report with RTL cycle counts and a labelled projection."""
    reports = {}
    for backend in ("golden", "verilator"):
        assert main(["demo", "--backend", backend, "--json", "--max-new-tokens", "3"]) == 0
        reports[backend] = json.loads(capsys.readouterr().out)
    rtl = reports["verilator"]
    assert rtl["tokens"] == reports["golden"]["tokens"] and rtl["text"] == reports["golden"]["text"]
    assert tuple(rtl) == REPORT_KEYS
    assert rtl["cycles"] is not None and rtl["projection"] is not None and rtl["utilisation"] is not None
    print(json.dumps({k: rtl[k] for k in ("cycles", "projection", "utilisation")}))
