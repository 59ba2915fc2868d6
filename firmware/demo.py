"""``trillium demo``: the project's own trained ternary model, generating Python on the accelerator's RTL.

The model is committed in ``firmware/demo_model/`` (trained by ``python -m firmware.train_demo``; see its
README): a 4-layer BitNet b1.58 model (hidden 128, 8 query heads of 8 over 2 KV heads, ReLU^2, vocabulary
1024) in the Hugging Face packed layout with a byte-level BPE ``tokenizer.json``, trained on the Python
standard library. It fits the ``tiny`` hardware config's ``limits``. Nothing is trained or downloaded at
run time.

By default the demo compiles the model for ``--hw tiny`` and runs it on the accelerator RTL in Verilator
(``--backend verilator``; the simulator is built once and cached, with progress on stderr), streams the
text, and reports:

* prompt and generated tokens;
* TTFT cycles: the ``run_cycles`` CSR summed over the prefill run(s); mean ``run_cycles`` per decode token;
* a projection of tokens/s and TTFT seconds at the config's ``clock_mhz`` (cycles of the simulated RTL,
  so a projection, not a board measurement);
* DRAM bytes per token, from the ISA simulator's work counts (``golden/isa_sim.py`` ``WorkCounts``) of the
  same program on the same tokens; and utilisation: DRAM bytes per cycle against the config's
  ``dram.bandwidth_bytes_per_cycle``, and ternary MACs per cycle against the TLMM engine's peak.

``--backend isa`` (ISA simulator) and ``--backend golden`` (bit-exact integer model) run the same tokens
without cycle counts (the report says so).

Prompt token healing: a prompt such as ``"def "`` ends in a token (a lone space) that the tokenizer
almost never produces before a word, so the demo drops the prompt's last token and makes the first
generated token start with its text (``" main"`` rather than ``" "`` + ``"main"``). The text shown is
always the prompt as typed followed by the continuation. ``--no-heal`` turns this off.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .sampling import SamplingParams, select_token

__all__ = ["DEMO_MODEL_DIR", "REPORT_KEYS", "demo_model_dir", "run_demo", "heal_prompt"]

#: The committed demo model.
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"
#: Top-level keys of the ``--json`` report.
REPORT_KEYS = ("model_dir", "model", "backend", "hw", "prompt", "text", "prompt_tokens", "tokens",
               "n_prompt_tokens", "n_generated_tokens", "stop_reason", "token_healing", "host_seconds", "cycles",
               "projection", "dram", "utilisation", "notes")


def demo_model_dir():
    return DEMO_MODEL_DIR


def heal_prompt(tok, ids, enabled=True):
    """``(ids to prefill, text the first generated token must start with)``; drops the last prompt token
    (never the BOS) when healing is enabled and the prompt has one."""
    if not enabled or len(ids) < 2:
        return list(ids), ""
    tail = tok.decode([ids[-1]])
    if not tail or tail.startswith("<"):  # a special token: keep it
        return list(ids), ""
    return list(ids[:-1]), tail


def _allowed_first(tok, prefix, vocab):
    """Boolean mask of tokens whose text starts with ``prefix``."""
    mask = np.zeros(vocab, bool)
    for t in range(vocab):
        piece = tok.decode([t])
        mask[t] = piece.startswith(prefix) and piece != "" and tok.id_to_token(t) not in ("<s>", "</s>", "<unk>")
    return mask


def _make_backend(name, weights, hw, device_options):
    from .generate import make_backend

    return make_backend(name, weights, hw=hw, device_options=device_options if name == "verilator" else None)


def _isa_work(weights, hw, prefill_ids, decode_ids):
    """WorkCounts (dicts) of each run of the compiled program on the ISA simulator for the same tokens."""
    from .accelerator import Accelerator

    acc = Accelerator(weights, hw, "isa")
    cache = acc.new_cache(len(prefill_ids) + len(decode_ids))
    acc.forward(np.asarray(prefill_ids), cache)
    n_prefill = len(acc.run_log)
    for t in decode_ids:
        acc.forward(np.asarray([t]), cache)
    return acc.run_log[:n_prefill], acc.run_log[n_prefill:]


def _mean(xs):
    return float(np.mean(xs)) if len(xs) else None


def _sum_work(runs, key):
    return int(sum(r["work"][key] for r in runs))


def run_demo(json_only=False, max_new_tokens=40, prompt="def ", backend="verilator", hw="tiny", temperature=0.0,
             top_p=None, seed=None, heal=True, model_dir=None, device_options=None, out=None, err=None):
    """Run the demo (see the module docstring); prints the text and a report (or JSON); returns 0."""
    from hw.config import load_hw_config

    from .checkpoint import load_checkpoint
    from .compiler import check_limits
    from .tokenizer import load_tokenizer

    out = out or sys.stdout
    err = err or sys.stderr
    path = Path(model_dir) if model_dir else DEMO_MODEL_DIR
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: the demo model is missing (train it with python -m firmware.train_demo "
                                f"--out {path})")
    weights, tok = load_checkpoint(path), load_tokenizer(path)
    c = weights.config
    hwc = load_hw_config(hw) if isinstance(hw, str) else hw
    check_limits(c, hwc)
    model_info = {"layers": c.num_hidden_layers, "hidden": c.hidden_size, "intermediate": c.intermediate_size,
                  "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads, "head_dim": c.head_dim,
                  "vocab": c.vocab_size, "act": c.hidden_act,
                  "ternary_weights": c.ternary_weights_per_token}
    say = (lambda m: None) if json_only else (lambda m: print(m, file=err, flush=True))
    say(f"model: {path} ({c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads / "
        f"{c.num_key_value_heads} KV heads of {c.head_dim}, {c.hidden_act}, vocab {c.vocab_size})")
    what = {"verilator": f"the accelerator RTL in Verilator (hw '{hwc.name}')",
            "isa": f"the ISA simulator (hw '{hwc.name}')", "golden": "the bit-exact integer model",
            "float": "the float reference"}[backend]
    say(f"backend: {what}")

    t0 = time.perf_counter()
    be = _make_backend(backend, weights, hwc, device_options)
    setup_s = time.perf_counter() - t0
    try:
        ids = list(tok.encode(prompt).ids)
        if c.bos_token_id is not None and (not ids or ids[0] != c.bos_token_id):
            ids.insert(0, c.bos_token_id)
        prefill_ids, heal_text = heal_prompt(tok, ids, heal)
        limit = getattr(be, "max_context", None) or c.max_position_embeddings
        if len(prefill_ids) + max_new_tokens > limit:
            raise ValueError(f"prompt of {len(prefill_ids)} tokens + {max_new_tokens} new tokens exceeds the context "
                             f"of {limit}")
        params = SamplingParams(temperature, None, top_p, seed)
        eos = set(c.eos_token_ids)
        base = tok.decode(prefill_ids[1:] if prefill_ids and prefill_ids[0] == c.bos_token_id else prefill_ids)
        if not json_only:
            out.write(prompt)
            out.flush()
        cache = be.new_cache(len(prefill_ids) + max_new_tokens)
        log = getattr(getattr(be, "accel", None), "run_log", None)
        t1 = time.perf_counter()
        logits = be.forward(np.asarray(prefill_ids), cache, all_logits=False)[-1]
        n_prefill_runs = len(log) if log is not None else 0
        prefill_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        tokens, fed, shown, stop = [], [], prompt, "max_new_tokens"
        for step in range(max_new_tokens):
            z = np.asarray(logits, np.float64)
            if step == 0 and heal_text:
                z = np.where(_allowed_first(tok, heal_text, c.vocab_size), z, -np.inf)
            t = select_token(z, params)
            if t in eos:
                stop = "eos"
                break
            tokens.append(t)
            text = base + tok.decode(tokens)
            if not json_only and text.startswith(shown):
                out.write(text[len(shown):])
                out.flush()
                shown = text
            if step + 1 < max_new_tokens:
                fed.append(t)
                logits = be.forward(np.asarray([t]), cache, all_logits=False)[-1]
        decode_s = time.perf_counter() - t2
        if not json_only:
            out.write("\n")
            out.flush()
        runs = list(log) if log is not None else []
    finally:
        close = getattr(getattr(getattr(be, "accel", None), "device", None), "close", None)
        if close is not None:
            close()
    full = base + tok.decode(tokens)
    text = full[len(prompt):] if full.startswith(prompt) else tok.decode(tokens)

    notes = []
    # Cycles: the run_cycles CSR of the device's runs (the RTL counts them; the ISA simulator and the golden
    # model do not).
    cycles = projection = None
    pre, dec = runs[:n_prefill_runs], runs[n_prefill_runs:]
    if backend == "verilator" and pre:
        ttft = int(sum(r["run_cycles"] for r in pre))
        per_tok = _mean([r["run_cycles"] for r in dec])
        cycles = {"source": "run_cycles CSR of the accelerator RTL (Verilator)", "ttft_cycles": ttft,
                  "prefill_runs": len(pre), "prefill_tokens": len(prefill_ids), "decode_runs": len(dec),
                  "decode_cycles_per_token_mean": per_tok,
                  "decode_cycles_per_token_min": min((r["run_cycles"] for r in dec), default=None),
                  "decode_cycles_per_token_max": max((r["run_cycles"] for r in dec), default=None)}
        hz = hwc.clock_mhz * 1e6
        projection = {"clock_mhz": hwc.clock_mhz, "ttft_s": ttft / hz,
                      "decode_tokens_per_s": hz / per_tok if per_tok else None,
                      "note": f"projection: RTL cycles at the '{hwc.name}' config's clock_mhz, not a measurement "
                              "on a board"}
    else:
        notes.append(f"the {backend} backend counts no clock cycles: cycle, TTFT and tok/s figures need "
                     "--backend verilator")
    # DRAM traffic: work counts of the same program on the ISA simulator for the same tokens.
    if backend == "isa":
        w_pre, w_dec = pre, dec
    else:
        w_pre, w_dec = _isa_work(weights, hwc, prefill_ids, fed)
    dram = {"source": "ISA simulator work counts (golden/isa_sim.py WorkCounts) of the same compiled program "
                      "on the same tokens",
            "prefill_read_bytes": _sum_work(w_pre, "dram_read_bytes"),
            "prefill_write_bytes": _sum_work(w_pre, "dram_write_bytes"),
            "prefill_bytes_per_token": (_sum_work(w_pre, "dram_read_bytes") + _sum_work(w_pre, "dram_write_bytes"))
            / max(1, len(prefill_ids)),
            "decode_bytes_per_token_mean": _mean([r["work"]["dram_read_bytes"] + r["work"]["dram_write_bytes"]
                                                  for r in w_dec]),
            "decode_read_bytes_per_token_mean": _mean([r["work"]["dram_read_bytes"] for r in w_dec]),
            "decode_ternary_macs_per_token": _mean([r["work"]["ternary_macs"] for r in w_dec])}
    utilisation = None
    if cycles and cycles["decode_cycles_per_token_mean"] and dram["decode_bytes_per_token_mean"]:
        cyc = cycles["decode_cycles_per_token_mean"]
        bpc = dram["decode_bytes_per_token_mean"] / cyc
        peak_macs = 3 * hwc.tlmm.tables * hwc.tlmm.lanes
        macs = dram["decode_ternary_macs_per_token"] / cyc
        utilisation = {"phase": "decode", "dram_bytes_per_cycle": bpc,
                       "dram_bandwidth_bytes_per_cycle": hwc.dram.bandwidth_bytes_per_cycle,
                       "dram_utilisation": bpc / hwc.dram.bandwidth_bytes_per_cycle,
                       "ternary_macs_per_cycle": macs, "tlmm_peak_macs_per_cycle": peak_macs,
                       "tlmm_utilisation": macs / peak_macs}
    report = {
        "model_dir": str(path), "model": model_info, "backend": backend, "hw": hwc.name, "prompt": prompt,
        "text": text, "prompt_tokens": [int(t) for t in prefill_ids], "tokens": [int(t) for t in tokens],
        "n_prompt_tokens": len(prefill_ids), "n_generated_tokens": len(tokens), "stop_reason": stop,
        "token_healing": {"enabled": bool(heal_text), "dropped_text": heal_text},
        "host_seconds": {"setup": round(setup_s, 3), "prefill": round(prefill_s, 3), "decode": round(decode_s, 3),
                         "note": "host wall-clock time of the simulation, not accelerator time"},
        "cycles": cycles, "projection": projection, "dram": dram, "utilisation": utilisation, "notes": notes,
    }
    assert tuple(report) == REPORT_KEYS
    if json_only:
        print(json.dumps(report, indent=1), file=out)
    else:
        _print_table(report, out)
    return 0


def _fmt(v, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        v = f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    elif isinstance(v, int):
        v = f"{v:,}"
    return f"{v}{unit}"


def _print_table(r, out):
    heal = r["token_healing"]
    healed = f" (healed: last token {heal['dropped_text']!r} regenerated)" if heal["enabled"] else ""
    rows = [("backend", f"{r['backend']} (hw {r['hw']})"),
            ("prompt tokens", _fmt(r["n_prompt_tokens"]) + healed),
            ("generated tokens", f"{r['n_generated_tokens']} (stop: {r['stop_reason']})")]
    c, p, d, u = r["cycles"], r["projection"], r["dram"], r["utilisation"]
    if c:
        rows += [("TTFT", f"{_fmt(c['ttft_cycles'])} cycles ({c['prefill_runs']} prefill run(s), "
                          f"{c['prefill_tokens']} tokens; run_cycles CSR)"),
                 ("decode", f"{_fmt(c['decode_cycles_per_token_mean'])} cycles/token mean over {c['decode_runs']} "
                            f"runs (min {_fmt(c['decode_cycles_per_token_min'])}, max "
                            f"{_fmt(c['decode_cycles_per_token_max'])})")]
    if p:
        rows += [(f"projection @ {p['clock_mhz']:g} MHz", f"{_fmt(p['decode_tokens_per_s'])} tok/s decode, TTFT "
                                                       f"{p['ttft_s'] * 1e3:.3f} ms")]
    rows += [("DRAM bytes/token", f"decode {_fmt(d['decode_bytes_per_token_mean'])} (read "
                                  f"{_fmt(d['decode_read_bytes_per_token_mean'])}), prefill "
                                  f"{_fmt(d['prefill_bytes_per_token'])}; ISA simulator work counts")]
    if u:
        rows += [("DRAM utilisation", f"{u['dram_bytes_per_cycle']:.2f} of {u['dram_bandwidth_bytes_per_cycle']} "
                                      f"bytes/cycle = {u['dram_utilisation']:.1%} (decode)"),
                 ("TLMM utilisation", f"{u['ternary_macs_per_cycle']:.2f} of {u['tlmm_peak_macs_per_cycle']} "
                                      f"ternary MACs/cycle = {u['tlmm_utilisation']:.1%} (decode)")]
    h = r["host_seconds"]
    rows += [("host time", f"setup {h['setup']:.1f} s, prefill {h['prefill']:.1f} s, decode {h['decode']:.1f} s "
                           "(simulation wall clock)")]
    width = max(len(k) for k, _ in rows)
    print("", file=out)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}", file=out)
    for n in r["notes"]:
        print(f"note: {n}", file=out)
    if p:
        print(f"note: {p['note']}", file=out)
