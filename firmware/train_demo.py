"""Train the demo model: a small ternary (BitNet b1.58) Llama-style model on the Python standard library.

``python -m firmware.train_demo --out DIR [--steps N] [--seed S]`` trains, on CPU with one thread and
deterministically (same seed, same Python installation, same torch: same bits), a model that fits the
``tiny`` hardware config's ``limits``, and writes it with :func:`firmware.checkpoint_writer.save_checkpoint`
in the Hugging Face packed layout (``autobitlinear``) with its ``tokenizer.json``.
``python -m firmware.train_demo --eval DIR`` prints held-out perplexities under the float reference
(``golden/model_float.py``) and the bit-exact integer model (``golden/model_int.py``).

The training forward pass is exactly what :class:`golden.model_float.FloatModel` computes at inference,
with straight-through estimators for the two quantisers, as BitNet b1.58 defines them:

* weights: absmean ternary, ``s = 1 / max(mean|W|, 1e-5)``, ``W_q = clamp(round(W s), -1, 1) / s``;
* activations at every BitLinear input: per-token absmax int8, ``s = 127 / max(max|x|, 1e-5)``,
  ``x_q = clamp(round(x s), -128, 127) / s`` (round half to even, as torch and NumPy round);
* RMSNorm (eps inside the root) before attention and the MLP, ``attn_sub_norm`` before ``o_proj``,
  ``ffn_sub_norm`` before ``down_proj``, ReLU^2 gating (2B-4T style), grouped-query attention,
  rotate-half RoPE, causal softmax attention, untied float embedding and LM head.

Data: the standard library's ``.py`` sources (:func:`firmware.tokenizer.stdlib_corpus` rules), split by
file: every ``HELDOUT_EVERY``-th file (sorted path order) is held out. The byte-level BPE tokenizer
(:func:`firmware.tokenizer.train_bpe_tokenizer`, vocabulary 1024) is trained on training files only.
Each training window is ``<s>`` followed by text starting at a line start, which is how a prompt looks
at inference (the generator prepends ``<s>``); files are separated by ``</s>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

from golden.model_config import ModelConfig
from golden.weights import LayerWeights, ModelWeights, absmean_quantise

__all__ = ["DemoShape", "DEFAULT_SHAPE", "TrainSettings", "split_sources", "build_tokenizer", "train",
           "heldout_windows", "perplexity", "evaluate", "main"]

#: Every this many-th source file (sorted path order) is held out.
HELDOUT_EVERY = 20
#: Tokenizer training text (bytes of training files).
TOKENIZER_BYTES = 2_000_000
#: Training text (bytes of training files); more than a default run consumes.
TRAIN_BYTES = 24_000_000
VOCAB = 1024


@dataclasses.dataclass(frozen=True)
class DemoShape:
    """Model shape; the defaults fit the ``tiny`` hardware config's ``limits``."""

    hidden: int = 128
    intermediate: int = 256
    layers: int = 4
    heads: int = 8
    kv_heads: int = 2
    head_dim: int = 8
    max_positions: int = 512
    rope_theta: float = 10000.0
    eps: float = 1e-5
    act: str = "relu2"


DEFAULT_SHAPE = DemoShape()


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    steps: int = 1800
    batch: int = 32
    seq: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.05
    seed: int = 0


# -- data --------------------------------------------------------------------------------------------------
def split_sources():
    """``(train_paths, heldout_paths)``: absolute paths of the standard library's readable ``.py`` files."""
    from .tokenizer import _stdlib_sources

    root = Path(sysconfig.get_paths()["stdlib"])
    train, held = [], []
    for i, rel in enumerate(_stdlib_sources(root)):
        (held if i % HELDOUT_EVERY == 0 else train).append(root / rel)
    return train, held


def _read_texts(paths, max_bytes):
    texts, size = [], 0
    for p in paths:
        if size >= max_bytes:
            break
        try:
            text = p.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not text.endswith("\n"):
            text += "\n"
        texts.append(text)
        size += len(text.encode())
    return texts


def build_tokenizer(train_paths):
    from .tokenizer import train_bpe_tokenizer

    texts = _read_texts(train_paths, TOKENIZER_BYTES)
    return train_bpe_tokenizer(["".join(texts)], VOCAB)


def _token_stream(tok, texts):
    """All texts' tokens, each file followed by ``</s>``, as one int32 array."""
    eos = tok.token_to_id("</s>")
    out = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        out.append(np.asarray(enc.ids, np.int32))
        out.append(np.asarray([eos], np.int32))
    return np.concatenate(out)


def _line_starts(tok, stream, span):
    """Positions ``i`` where ``stream[i]`` starts a line (previous token ends in a newline), with room for
    ``span`` tokens."""
    vocab = tok.get_vocab_size()
    ends_nl = np.zeros(vocab, bool)
    for t in range(vocab):
        piece = tok.id_to_token(t) or ""
        ends_nl[t] = piece.endswith("\u010a") or piece == "</s>"  # byte-level spelling of "\n"
    starts = np.nonzero(ends_nl[stream[:-1]])[0] + 1
    return starts[starts + span <= len(stream)]


def heldout_windows(tok, n_windows=8, length=128, max_bytes=2_000_000):
    """Deterministic held-out token windows: ``<s>`` + ``length - 1`` tokens from a line start, spread evenly
    over the held-out files."""
    _, held = split_sources()
    stream = _token_stream(tok, _read_texts(held, max_bytes))
    starts = _line_starts(tok, stream, length - 1)
    pick = starts[np.linspace(0, len(starts) - 1, n_windows).astype(int)]
    bos = tok.token_to_id("<s>")
    return [np.concatenate([[bos], stream[s:s + length - 1]]).astype(np.int64) for s in pick]


# -- the torch model ---------------------------------------------------------------------------------------
def _torch_model(shape, vocab):
    import torch
    from torch import nn
    from torch.nn import functional as F

    def ste(x, q):
        return x + (q - x).detach()

    class BitLinear(nn.Module):
        def __init__(self, inp, out):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(out, inp))
            nn.init.normal_(self.weight, std=0.02)

        def forward(self, x):
            w = self.weight
            s_w = 1.0 / w.abs().mean().clamp(min=1e-5)
            w = ste(w, (w * s_w).round().clamp(-1, 1) / s_w)
            s_x = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
            x = ste(x, (x * s_x).round().clamp(-128, 127) / s_x)
            return F.linear(x, w)

    class RMSNorm(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(n))

        def forward(self, x):
            return self.weight * (x * torch.rsqrt((x * x).mean(-1, keepdim=True) + shape.eps))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            h, f, d = shape.hidden, shape.intermediate, shape.head_dim
            self.input_norm = RMSNorm(h)
            self.q_proj = BitLinear(h, shape.heads * d)
            self.k_proj = BitLinear(h, shape.kv_heads * d)
            self.v_proj = BitLinear(h, shape.kv_heads * d)
            self.attn_sub_norm = RMSNorm(shape.heads * d)
            self.o_proj = BitLinear(shape.heads * d, h)
            self.post_attention_norm = RMSNorm(h)
            self.gate_proj = BitLinear(h, f)
            self.up_proj = BitLinear(h, f)
            self.ffn_sub_norm = RMSNorm(f)
            self.down_proj = BitLinear(f, h)

        def forward(self, x, cos, sin, mask):
            b, t, _ = x.shape
            d, hq, hkv = shape.head_dim, shape.heads, shape.kv_heads
            hn = self.input_norm(x)
            q = self.q_proj(hn).view(b, t, hq, d).transpose(1, 2)
            k = self.k_proj(hn).view(b, t, hkv, d).transpose(1, 2)
            v = self.v_proj(hn).view(b, t, hkv, d).transpose(1, 2)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            g = hq // hkv  # query head j*g + i uses kv head j, as FloatModel groups them
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
            scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d))
            p = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
            o = (p @ v).transpose(1, 2).reshape(b, t, hq * d)
            x = x + self.o_proj(self.attn_sub_norm(o))
            hn = self.post_attention_norm(x)
            gate = self.gate_proj(hn)
            a = torch.relu(gate).square() if shape.act == "relu2" else F.silu(gate)
            return x + self.down_proj(self.ffn_sub_norm(a * self.up_proj(hn)))

    def _rope(x, cos, sin):
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rot * sin

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, shape.hidden)
            nn.init.normal_(self.embed.weight, std=1.0)
            self.layers = nn.ModuleList(Layer() for _ in range(shape.layers))
            self.final_norm = RMSNorm(shape.hidden)
            self.lm_head = nn.Linear(shape.hidden, vocab, bias=False)
            nn.init.normal_(self.lm_head.weight, std=0.02)
            d = shape.head_dim
            inv = 1.0 / (shape.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
            self.register_buffer("inv_freq", inv, persistent=False)

        def forward(self, tokens):
            t = tokens.shape[1]
            freqs = torch.arange(t, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
            emb = torch.cat([freqs, freqs], dim=-1)
            cos, sin = emb.cos(), emb.sin()
            mask = torch.ones(t, t, dtype=torch.bool).triu(1)
            x = self.embed(tokens)
            for layer in self.layers:
                x = layer(x, cos, sin, mask)
            return self.lm_head(self.final_norm(x))

    return Model()


def _export(model, shape, tok):
    """The trained torch model as :class:`ModelWeights` (codes by :func:`absmean_quantise` of the latent
    weights, the same quantiser the forward pass uses)."""
    def arr(p):
        return p.detach().cpu().numpy().astype(np.float32).copy()

    cfg = ModelConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim, max_position_embeddings=shape.max_positions, rope_theta=shape.rope_theta,
        rms_norm_eps=shape.eps, hidden_act=shape.act, tie_word_embeddings=False,
        bos_token_id=tok.token_to_id("<s>"), eos_token_ids=(tok.token_to_id("</s>"),),
        weight_format="packed", linear_class="autobitlinear", model_type="bitnet")
    layers = []
    for lw in model.layers:
        layers.append(LayerWeights(
            input_norm=arr(lw.input_norm.weight), attn_sub_norm=arr(lw.attn_sub_norm.weight),
            post_attention_norm=arr(lw.post_attention_norm.weight), ffn_sub_norm=arr(lw.ffn_sub_norm.weight),
            **{n: absmean_quantise(arr(getattr(lw, n).weight))
               for n in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}))
    w = ModelWeights(config=cfg, embed=arr(model.embed.weight), layers=layers,
                     final_norm=arr(model.final_norm.weight), lm_head=arr(model.lm_head.weight))
    w.check_shapes()
    return w


# -- training ----------------------------------------------------------------------------------------------
def train(out, settings=TrainSettings(), shape=DEFAULT_SHAPE, log=print):
    """Train and write the checkpoint to ``out``; returns a summary dict (also written as ``train_log.json``
    next to nothing: the caller decides)."""
    import torch

    from .checkpoint_writer import save_checkpoint

    torch.set_num_threads(1)
    torch.manual_seed(settings.seed)
    torch.use_deterministic_algorithms(True)
    t_start = time.perf_counter()
    train_paths, held_paths = split_sources()
    log(f"data: {len(train_paths)} training files, {len(held_paths)} held-out files "
        f"({sysconfig.get_paths()['stdlib']})")
    tok = build_tokenizer(train_paths)
    stream = _token_stream(tok, _read_texts(train_paths, TRAIN_BYTES))
    starts = _line_starts(tok, stream, settings.seq)
    log(f"tokenizer: vocab {tok.get_vocab_size()}; training stream {len(stream):,} tokens "
        f"({time.perf_counter() - t_start:.1f} s)")
    bos = tok.token_to_id("<s>")
    rng = np.random.default_rng(settings.seed)
    model = _torch_model(shape, tok.get_vocab_size())
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=settings.lr, betas=(0.9, 0.95))

    def lr_at(step):
        if step < settings.warmup:
            return settings.lr * (step + 1) / settings.warmup
        frac = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * frac))
        return settings.lr * (settings.min_lr_ratio + (1 - settings.min_lr_ratio) * cosine)

    idx = np.arange(settings.seq)
    losses, t_train = [], time.perf_counter()
    for step in range(settings.steps):
        pick = starts[rng.integers(0, len(starts), settings.batch)]
        body = stream[pick[:, None] + idx[None, :]]
        batch = np.concatenate([np.full((settings.batch, 1), bos, np.int32), body], axis=1).astype(np.int64)
        x, y = torch.from_numpy(batch[:, :-1]), torch.from_numpy(batch[:, 1:])
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == settings.steps - 1:
            el = time.perf_counter() - t_train
            log(f"step {step:5d}  loss {np.mean(losses[-50:]):.3f}  lr {lr_at(step):.2e}  {el:6.0f} s")
    train_s = time.perf_counter() - t_train
    weights = _export(model, shape, tok)
    loaded = save_checkpoint(weights, out, weight_format="packed", linear_class="autobitlinear", tokenizer=tok)
    # The exported model must compute what the torch model computed (same quantisers, same graph).
    from golden.model_float import FloatModel

    with torch.no_grad():
        ref = model(torch.from_numpy(batch[:1, :-1])).numpy()[0]
    got = FloatModel(loaded).logits(batch[0, :-1])
    summary = {
        "settings": dataclasses.asdict(settings), "shape": dataclasses.asdict(shape),
        "tokens_seen": settings.steps * settings.batch * settings.seq, "train_stream_tokens": int(len(stream)),
        "final_loss_50": float(np.mean(losses[-50:])), "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "export_max_abs_logit_diff": float(np.abs(ref - got).max()),
        "export_top1_agreement": float(np.mean(ref.argmax(-1) == got.argmax(-1))),
        "python": sys.version.split()[0], "torch": torch.__version__,
    }
    log(f"trained {settings.steps} steps in {train_s:.0f} s; export check: max |logit diff| "
        f"{summary['export_max_abs_logit_diff']:.2e}, top-1 agreement {summary['export_top1_agreement']:.1%}")
    return summary


# -- evaluation --------------------------------------------------------------------------------------------
def _nll(logits, targets):
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1))
    return lse - z[np.arange(len(targets)), targets]


def perplexity(weights, windows, model="float"):
    """Perplexity of ``weights`` on token ``windows`` (each predicts tokens 1..n from their prefix) under
    the float reference (``model="float"``) or the integer model (``"integer"``). Returns ``(ppl, top1
    predictions per window)``."""
    from golden.model_float import FloatModel
    from golden.model_int import IntegerModel

    m = FloatModel(weights) if model == "float" else IntegerModel(weights)
    nll, preds = [], []
    for w in windows:
        cache = m.new_cache(len(w))
        logits = m.forward(w[:-1], cache, all_logits=True)
        if model != "float":
            logits = logits / 65536.0
        nll.append(_nll(logits, w[1:]))
        preds.append(np.asarray(logits).argmax(-1))
    return float(np.exp(np.concatenate(nll).mean())), preds


def evaluate(model_dir, n_windows=32, length=128):
    """Held-out perplexity of a checkpoint directory under both golden models, and their top-1 agreement."""
    from .checkpoint import load_checkpoint
    from .tokenizer import load_tokenizer

    weights, tok = load_checkpoint(model_dir), load_tokenizer(model_dir)
    windows = heldout_windows(tok, n_windows, length)
    pf, top_f = perplexity(weights, windows, "float")
    pi, top_i = perplexity(weights, windows, "integer")
    agree = float(np.mean(np.concatenate(top_f) == np.concatenate(top_i)))
    return {"heldout_tokens": int(sum(len(w) - 1 for w in windows)), "windows": n_windows, "window_length": length,
            "perplexity_float": round(pf, 3), "perplexity_integer": round(pi, 3),
            "top1_agreement_float_vs_integer": round(agree, 4)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m firmware.train_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="output checkpoint directory (must not hold a checkpoint)")
    p.add_argument("--steps", type=int, default=TrainSettings.steps)
    p.add_argument("--seed", type=int, default=TrainSettings.seed)
    p.add_argument("--eval", metavar="DIR", help="print held-out perplexities of a checkpoint and exit")
    p.add_argument("--windows", type=int, default=32, help="held-out windows of 128 tokens for the perplexities")
    args = p.parse_args(argv)
    if args.eval:
        print(json.dumps(evaluate(args.eval, args.windows), indent=1))
        return 0
    if not args.out:
        p.error("--out DIR (or --eval DIR) is required")
    settings = dataclasses.replace(TrainSettings(), steps=args.steps, seed=args.seed)
    summary = train(args.out, settings, log=lambda m: print(m, flush=True))
    summary.update(evaluate(args.out, args.windows))
    (Path(args.out) / "train_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
