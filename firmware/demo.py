"""``trillium demo``: build a small BitNet checkpoint once, then generate text on it and report.

For now the model has random ternary weights (the trained demo model arrives with the host-driver work),
so its text is not meaningful. The demo still exercises the real path end to end: a byte-level BPE
tokenizer trained offline on the Python standard library, a Hugging Face packed-ternary checkpoint
(``autobitlinear``, ``model.safetensors``, ``tokenizer.json``), checkpoint loading, and generation on
the bit-exact golden integer model, checked against the float reference.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from golden.accuracy import compare_logits
from golden.model_config import MODEL_SHAPES
from golden.weights import random_model

from .checkpoint import load_checkpoint
from .checkpoint_writer import save_checkpoint
from .generate import Generator, make_backend
from .tokenizer import load_tokenizer, stdlib_corpus, train_bpe_tokenizer

__all__ = ["demo_model_dir", "build_demo_model", "run_demo"]

DEMO_VERSION = "random-v1"
DEMO_VOCAB = 1024


def demo_model_dir():
    root = Path(os.environ.get("TRILLIUM_CACHE", Path.home() / ".cache" / "trillium"))
    return root / f"demo-model-{DEMO_VERSION}"


def build_demo_model(path, progress=None):
    """Train the tokenizer and write the demo checkpoint to ``path`` (deterministic)."""
    say = progress or (lambda msg: None)
    say("training a byte-level BPE tokenizer on the Python standard library")
    tok = train_bpe_tokenizer([stdlib_corpus(2_000_000)], DEMO_VOCAB)
    cfg = dataclasses.replace(
        MODEL_SHAPES["bitnet-2b4t"], vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=tok.token_to_id("<s>"),
        eos_token_ids=(tok.token_to_id("</s>"),))
    say("writing a random ternary model in the Hugging Face packed layout")
    weights = random_model(cfg, seed=2026, branch_gain=0.5, bigram=0.5, logit_gain=8.0)
    tmp = Path(str(path) + ".partial")
    if tmp.exists():
        import shutil
        shutil.rmtree(tmp)
    save_checkpoint(weights, tmp, weight_format="packed", linear_class="autobitlinear", tokenizer=tok)
    tmp.rename(path)


def run_demo(json_only=False, max_new_tokens=24, prompt="def "):
    from tqdm import tqdm

    path = demo_model_dir()
    built = False
    if not (path / "config.json").exists():
        bar = tqdm(total=2, desc="building demo model", disable=json_only, file=sys.stderr)
        build_demo_model(path, progress=lambda m: (bar.set_postfix_str(m[:40]), bar.update(1)))
        bar.close()
        built = True
    weights = load_checkpoint(path)
    tok = load_tokenizer(path)
    golden = Generator(make_backend("golden", weights), tok)
    if not json_only:
        print(f"model: {path} ({weights.config.num_hidden_layers} layers, hidden {weights.config.hidden_size}, "
              f"{weights.config.hidden_act}, GQA {weights.config.gqa_group}; random weights)", file=sys.stderr)
        sys.stdout.write(prompt)
        sys.stdout.flush()
    res = golden.generate(prompt, max_new_tokens,
                          on_token=None if json_only else (lambda i, p: (sys.stdout.write(p), sys.stdout.flush())))
    if not json_only:
        sys.stdout.write("\n")
    # Same tokens through the float reference: greedy agreement and logit similarity.
    flt = Generator(make_backend("float", weights), tok).generate(prompt, max_new_tokens)
    seq = np.asarray(res.prompt_tokens + res.tokens)
    t0 = time.perf_counter()
    gl = make_backend("golden", weights)
    li = gl.forward(seq, gl.new_cache(len(seq)), all_logits=True)
    fb = make_backend("float", weights)
    lf = fb.forward(seq, fb.new_cache(len(seq)), all_logits=True)
    acc = compare_logits(li, lf)
    report = {
        "model_dir": str(path),
        "built_now": built,
        "backend": "golden",
        "prompt": prompt,
        "text": res.text,
        **{k: v for k, v in res.to_json().items() if k in ("prompt_tokens", "tokens", "stop_reason", "timing")},
        "float_reference_same_tokens": flt.tokens == res.tokens,
        "logits_vs_float": {k: acc[k] for k in ("positions", "cosine_min", "top1_agreement", "kl_mean")},
        "check_seconds": round(time.perf_counter() - t0, 3),
        "note": ("random-weight model: the text is not meaningful; the accelerator backends and a trained "
                 "demo model replace the golden backend here as they land"),
    }
    if json_only:
        print(json.dumps(report, indent=1))
    else:
        t = report["timing"]
        print(f"\n{len(res.prompt_tokens)} prompt tokens, {len(res.tokens)} generated on the golden backend "
              f"(bit-exact integer model); host time: first token {t['time_to_first_token_s']:.3f} s, "
              f"{t['decode_tokens_per_s'] or 0:.1f} tok/s")
        lv = report["logits_vs_float"]
        print(f"vs float reference over {lv['positions']} positions: cosine min {lv['cosine_min']:.5f}, "
              f"top-1 agreement {lv['top1_agreement']:.1%}; same greedy tokens: "
              f"{report['float_reference_same_tokens']}")
        print(f"note: {report['note']}")
    return 0
