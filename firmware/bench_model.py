"""``trillium bench model``: whole-model decode and prefill in RTL clock cycles, against the roofline.

Method (also in every report's ``method``):

* **The design** is the whole accelerator (``hw.top.TrilliumTop``) for the hardware config, in Verilator
  (``--backend verilator``; ``isa`` gives work counts only, no cycles), with the simulation DRAM model at
  the config's bandwidth and latency.
* **The model** has the shape's dimensions (``--shape``: a published shape, or a checkpoint directory whose
  ``config.json`` gives them) with **one** transformer layer of random ternary weights: every layer runs
  the same instructions on the same sizes and the RTL's timing does not depend on the values, so the
  whole model is ``run_cycles(1 layer) + (layers - 1) * layer_cycles``. ``layer_cycles`` is read from the
  same run's counters: the LINEAR and ATTEND units' busy cycles plus 5 instructions' fetch and dispatch
  (the run's cycles outside any unit, per instruction). Only the DRAM the runs read is loaded (the
  embedding rows of the tokens used; the rest stays zero); the KV cache is zero (attention's timing
  does not depend on it).
* **Decode** at context ``c``: one token at position ``c - 1`` (``c`` positions attended), the full
  program (embedding, layers, LM head).
* **Prefill** of ``p`` tokens: runs of ``limits.max_chunk`` tokens from position 0; only the last
  chunk runs the LM head (as the driver does).
* **The LM head is measured once**: the first decode context runs on the RTL with and without the LM head
  (LOGITS), and the difference of every counter is the LM head's cost. Every other run that ends with the
  LM head runs on the RTL without it, plus that difference (its cycles depend on the vocabulary and
  hidden size only; it reads the same bytes every time). The work counts (bytes, MACs) always come from
  the ISA simulator running the full program.
* **Bounds** (per run, then summed as above): the bandwidth bound is the DRAM bytes the program moves
  (read + written, counted by the ISA simulator running the same program) over
  ``dram.bandwidth_bytes_per_cycle``; the compute bound is ternary MACs / ``3 T N`` + attention MACs /
  ``attention.lanes`` + LM-head MACs / ``(3 T N / bits)`` (the units run one after another). The
  roofline bound is the larger; efficiency = bound / measured cycles.
* **Projections** to seconds and tokens/s divide cycles by ``clock_mhz`` (or ``--clock-mhz``): projections
  of simulated cycles, not measurements on a board.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from golden.model_config import MODEL_SHAPES
from golden.model_int import IntegerModel
from golden.weights import random_model
from hw.config import load_hw_config
from hw.csr_map import UNITS
from hw.isa import Opcode, encode

from .compiler import INSTRUCTIONS_PER_LAYER, check_limits, compile_model
from .device import IsaDevice, make_device
from .provenance import git_commit

__all__ = ["bench_model", "format_model", "DECODE_CONTEXTS", "PREFILL_LENGTHS", "TELLME_V2"]

DECODE_CONTEXTS = (128, 1024)
PREFILL_LENGTHS = (64, 128)
#: TeLLMe v2 on the AMD KV260, bitnet_b1_58-large (../shared/reference/tellme-and-peers.md).
TELLME_V2 = {"decode_tok_s": 25.0, "ttft_s": {"64": 0.45, "128": 0.96}, "clock_mhz": 250,
             "dram_gb_s": 19.2, "source": "TeLLMe v2 paper, AMD KV260, BitNet b1.58-large; its TTFT range 0.45-0.96 s for "
                                           "64-128-token prompts, ends matched to the lengths"}
_UNITS = UNITS
#: Largest single DRAM write when loading the image into the measured device.
_LOAD_PIECE_BYTES = 64 << 20


def _shape_config(shape):
    if shape in MODEL_SHAPES:
        return MODEL_SHAPES[shape], shape
    path = Path(shape)
    if path.is_dir():
        from .checkpoint import load_model_config

        return load_model_config(path), path.name
    raise ValueError(f"unknown shape '{shape}': use one of {', '.join(MODEL_SHAPES)} or a checkpoint directory")


def _program(cm, logits, layer_copies=1):
    """SETUP, EMBED, layer 0 ``layer_copies`` times, LOGITS (or not), END."""
    ins = cm.instructions
    layer = ins[2:2 + INSTRUCTIONS_PER_LAYER]
    prog = [ins[0], ins[1], *(layer * layer_copies), *([ins[-2]] if logits else []), (Opcode.END, {})]
    return b"".join(encode(op, **f) for op, f in prog), len(prog)


class _Runner:
    """Runs programs on the measured device and on the ISA simulator (for byte and MAC counts)."""

    def __init__(self, cm, hw, backend, device_options, say):
        self.cm, self.hw, self.say = cm, hw, say
        self.isa = IsaDevice(hw, len(cm.image))
        self.isa.write(0, cm.image)   # copied into the device's DRAM; no bytes() copy of a 1.2 GiB image
        self.dev = None
        if backend != "isa":
            self.dev = make_device(backend, hw, len(cm.image), **(device_options or {}))
            self.dev.check_id()
        self.sim_cycles = 0
        self.sim_seconds = 0.0
        #: Every RTL counter's LM-head share (a run with LOGITS minus the same run without), once measured.
        self.lm_head = None
        # Programs live in the first program slot's space (the compiled program stays intact).
        self.prog_addr = cm.slot_address(0)

    def load(self, token_rows):
        """The image regions the runs read, and only the embedding rows of the tokens used."""
        if self.dev is None:
            return
        cm, img = self.cm, memoryview(self.cm.image)   # slices of a memoryview do not copy
        skip = {"embed", "kv_cache", "program_slots", "x_stash", "tokens", "logits"}
        for name, r in cm.regions.items():
            if name not in skip:
                # In pieces: the device copies what it is given, and the LM head alone is 0.5 GiB.
                for a in range(r.addr, r.addr + r.size, _LOAD_PIECE_BYTES):
                    self.dev.write(a, img[a:min(a + _LOAD_PIECE_BYTES, r.addr + r.size)])
        e = cm.regions["embed"]
        stride = e.size // cm.vocab
        for t in sorted(set(int(t) for t in token_rows)):
            a = e.addr + t * stride
            self.dev.write(a, img[a:a + stride])
        for d in (self.dev,):
            d.write_csr("dram_size", len(img))

    def measure_lm_head(self, tokens, pos):
        """Run at ``pos`` on the RTL with and without the LM head; keep the counters' difference
        (:attr:`lm_head`) and return the run with it."""
        full = self.run(tokens, pos, True)
        if "rtl" in full:
            bare = self.run(tokens, pos, False, isa=False)
            self.lm_head = {k: full["rtl"][k] - bare["rtl"][k] for k in full["rtl"]}
        return full

    def run(self, tokens, pos, logits, layer_copies=1, on_device=True, isa=True):
        """Run on the ISA simulator (work counts; unless ``isa`` is false) and the RTL (counters; if
        ``on_device``). With :attr:`lm_head` measured, a run with ``logits`` runs on the RTL without the LM
        head and adds its measured counters (``out["lm_head_added"]``)."""
        cm = self.cm
        raw, n_instr = _program(cm, logits, layer_copies)
        add_lm = logits and self.lm_head is not None
        raw_rtl = _program(cm, False, layer_copies)[0] if add_lm else raw
        toks = (np.asarray(tokens, np.int64) & 0xFFFFFFFF).astype("<u4").tobytes()
        out = {"n_tokens": len(tokens), "pos": pos, "logits": logits, "instructions": n_instr}
        devices = (([("isa", self.isa)] if isa else [])
                   + ([("rtl", self.dev)] if self.dev is not None and on_device else []))
        for kind, d in devices:
            d.write(self.prog_addr, raw_rtl if kind == "rtl" else raw)
            d.write(cm.tokens_addr, toks)
            for name, v in (("program", self.prog_addr), ("tokens", cm.tokens_addr), ("n_tokens", len(tokens)),
                            ("pos", pos), ("logits", cm.logits_addr), ("all_logits", 0)):
                d.write_csr(name, v)
            t0 = time.perf_counter()
            d.run()
            dt = time.perf_counter() - t0
            if kind == "isa":
                w = d.last_work
                out["work"] = {"dram_bytes": w.dram_read_bytes + w.dram_write_bytes,
                               "ternary_macs": w.ternary_macs, "attention_macs": w.attention_macs,
                               "lm_head_macs": w.lm_head_macs}
            else:
                c = {"run_cycles": d.read_csr("run_cycles"), "instructions": d.read_csr("instructions")}
                for u in _UNITS:
                    c[f"busy_{u}"] = d.read_csr(f"busy_{u}")
                self.sim_cycles += c["run_cycles"]
                self.sim_seconds += dt
                if add_lm:
                    c = {k: v + self.lm_head[k] for k, v in c.items()}
                    out["lm_head_added"] = True
                out["rtl"] = c
        return out

    def close(self):
        if self.dev is not None and hasattr(self.dev, "close"):
            self.dev.close()


def _bounds(work, hw, bits):
    T, N = hw.tlmm.tables, hw.tlmm.lanes
    peak = 3 * T * N
    compute = (work["ternary_macs"] / peak + work["attention_macs"] / hw.attention.lanes
               + work["lm_head_macs"] / (peak / bits))
    bandwidth = work["dram_bytes"] / hw.dram.bandwidth_bytes_per_cycle
    return {"compute": compute, "bandwidth": bandwidth}


def _whole(one, layer_work, layers):
    """A 1-layer run's figures extended to ``layers`` layers (see the module docstring)."""
    w = {k: one["work"][k] + (layers - 1) * layer_work[k] for k in one["work"]}
    res = {"work": w}
    if "rtl" in one:
        c = one["rtl"]
        outside = c["run_cycles"] - sum(c[f"busy_{u}"] for u in _UNITS)
        per_instr = outside / c["instructions"]
        layer_cycles = c["busy_linear"] + c["busy_attend"] + INSTRUCTIONS_PER_LAYER * per_instr
        res["layer_cycles"] = layer_cycles
        res["cycles"] = c["run_cycles"] + (layers - 1) * layer_cycles
        res["breakdown"] = {"embed": c["busy_embed"], "layers.linear": layers * c["busy_linear"],
                            "layers.attend": layers * c["busy_attend"], "lm_head": c["busy_logits"],
                            "fetch_dispatch": outside + (layers - 1) * INSTRUCTIONS_PER_LAYER * per_instr}
    return res


def bench_model(hw_name, shape="bitnet-large", *, backend="verilator", contexts=DECODE_CONTEXTS,
                prompts=PREFILL_LENGTHS, clock_mhz=None, seed=0, device_options=None, golden_speed=False,
                progress=None):
    """Measure decode and prefill of a model shape on a hardware config (see the module docstring).

    Returns a JSON-ready dict.

    Raises
    ------
    ValueError
        Unknown shape, or contexts / prompts beyond the config's ``max_context``.
    firmware.compiler.CompileError
        If the shape does not fit the config's ``limits``.
    """
    say = progress or (lambda msg: None)
    t_start = time.perf_counter()
    hw = load_hw_config(hw_name)
    cfg, shape_name = _shape_config(shape)
    check_limits(cfg, hw)
    contexts, prompts = sorted(set(int(c) for c in contexts)), sorted(set(int(p) for p in prompts))
    need = max(contexts + prompts)
    if min(contexts + prompts) < 1 or need > hw.max_context:
        raise ValueError(f"contexts and prompt lengths must be in 1..{hw.max_context} (the config's max_context), "
                         f"got {contexts} and {prompts}")
    clock = hw.clock_mhz if clock_mhz is None else float(clock_mhz)
    layers = cfg.num_hidden_layers
    one = dataclasses.replace(cfg, num_hidden_layers=1)
    say(f"building a 1-layer random {shape_name} model (hidden {cfg.hidden_size}, vocab {cfg.vocab_size})")
    model = IntegerModel(random_model(one, seed=seed))
    bits = model.lm_head_bits
    chunk = hw.limits.max_chunk
    cm = compile_model(model, hw, max_context=need, max_chunk=chunk, program_slots=1)
    del model
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, need)
    say(f"image {len(cm.image) / 2**20:.1f} MiB; starting the {backend} device")
    runner = _Runner(cm, hw, backend, device_options, say)
    try:
        runner.load(tokens)
        t_runs = time.perf_counter()
        # The bytes and MACs of one layer: the ISA simulator runs layer 0 once and twice.
        runs = {}
        decode = {}
        for i, c in enumerate(contexts):
            say(f"decode at context {c}" + (" (and without the LM head, to measure it)" if i == 0 else ""))
            r1 = runner.measure_lm_head(tokens[c - 1:c], c - 1) if i == 0 else runner.run(tokens[c - 1:c], c - 1, True)
            r2 = runner.run(tokens[c - 1:c], c - 1, True, layer_copies=2, on_device=False)
            lw = {k: r2["work"][k] - r1["work"][k] for k in r1["work"]}
            decode[c] = _whole(r1, lw, layers)
            runs[f"decode@{c}"] = r1
        prefill = {}
        chunk_runs = {}
        for p in prompts:
            work = None
            parts = []
            for start in range(0, p, chunk):
                n = min(chunk, p - start)
                last = start + n == p
                key = (start, n, last)
                if key not in chunk_runs:
                    say(f"prefill chunk of {n} tokens at position {start}" + (" with the LM head" if last else ""))
                    r1 = runner.run(tokens[start:start + n], start, last)
                    r2 = runner.run(tokens[start:start + n], start, last, layer_copies=2, on_device=False)
                    lw = {k: r2["work"][k] - r1["work"][k] for k in r1["work"]}
                    chunk_runs[key] = _whole(r1, lw, layers)
                    runs[f"prefill@{start}+{n}{'+lm' if last else ''}"] = r1
                parts.append(chunk_runs[key])
            work = {k: sum(x["work"][k] for x in parts) for k in parts[0]["work"]}
            prefill[p] = {"work": work, "chunks": len(parts)}
            if "cycles" in parts[0]:
                prefill[p]["cycles"] = sum(x["cycles"] for x in parts)
                prefill[p]["breakdown"] = {k: sum(x["breakdown"][k] for x in parts) for k in parts[0]["breakdown"]}
        run_s = time.perf_counter() - t_runs
    finally:
        runner.close()

    def finish(entry):
        b = _bounds(entry["work"], hw, bits)
        entry["bound_cycles"] = {k: round(v, 1) for k, v in b.items()}
        entry["roofline_bound_cycles"] = round(max(b.values()), 1)
        entry["bound_kind"] = max(b, key=b.get)
        if "cycles" in entry:
            entry["cycles"] = round(entry["cycles"], 1)
            entry["efficiency"] = {k: round(v / entry["cycles"], 4) for k, v in b.items()}
            entry["roofline_efficiency"] = round(max(b.values()) / entry["cycles"], 4)
        entry.pop("layer_cycles", None)
        return entry

    decode = {c: finish(v) for c, v in decode.items()}
    prefill = {p: finish(v) for p, v in prefill.items()}
    measured = backend != "isa"
    out = {
        "hw": hw.name, "shape": shape_name, "backend": backend, "commit": git_commit(), "layers": layers, "lm_head_bits": bits,
        "clock_mhz": clock, "dram_bytes_per_cycle": hw.dram.bandwidth_bytes_per_cycle,
        "peak_ternary_macs_per_cycle": 3 * hw.tlmm.tables * hw.tlmm.lanes,
        "decode": {str(c): v for c, v in decode.items()},
        "prefill": {str(p): v for p, v in prefill.items()},
        "runs": runs,
        "method": __doc__.split("Method (also in every report's ``method``):", 1)[1].strip(),
    }
    if measured:
        out["decode_efficiency"] = {str(c): v["efficiency"]["bandwidth"] for c, v in decode.items()}
        out["prefill_efficiency"] = {str(p): v["efficiency"]["compute"] for p, v in prefill.items()}
        out["projected_decode_tok_s"] = {str(c): round(clock * 1e6 / v["cycles"], 2) for c, v in decode.items()}
        out["projected_ttft_s"] = {str(p): round(v["cycles"] / (clock * 1e6), 4) for p, v in prefill.items()}
        out["projection_note"] = (f"seconds and tokens/s are projections: RTL cycles from Verilator at "
                                  f"{clock:g} MHz, not measured on a board")
        out["simulation"] = {"rtl_cycles": runner.sim_cycles, "rtl_seconds": round(runner.sim_seconds, 2),
                             "rtl_cycles_per_second": round(runner.sim_cycles / max(runner.sim_seconds, 1e-9))}
        out["lm_head_rtl"] = runner.lm_head       # the measured LM-head counters every LM-head run reuses
        if shape_name == "bitnet-large":
            out["tellme_v2"] = TELLME_V2
    if golden_speed and shape in MODEL_SHAPES:
        from .bench_golden import bench_golden

        say("timing the golden integer model (4 decode steps)")
        out["golden_speed"] = bench_golden(shape, prompt_tokens=4, decode_tokens=4)
    out["seconds"] = {"total": round(time.perf_counter() - t_start, 1), "runs": round(run_s, 1)}
    return out


def format_model(res):
    """A text table of :func:`bench_model`'s result."""
    lines = [f"bench model: shape {res['shape']} ({res['layers']} layers, LM head int{res['lm_head_bits']}) on "
             f"hw '{res['hw']}' ({res['backend']}), {res['peak_ternary_macs_per_cycle']} ternary MACs/cycle, "
             f"{res['dram_bytes_per_cycle']:g} DRAM B/cycle"]
    has = "decode_efficiency" in res
    head = f"{'run':<16} {'cycles':>14} {'BW bound':>14} {'compute bound':>14} {'eff(BW)':>8} {'eff(comp)':>9}"
    if has:
        head += f" {'projected':>16}"
    lines.append(head)
    for kind, table in (("decode", res["decode"]), ("prefill", res["prefill"])):
        for k, v in table.items():
            name = f"decode ctx {k}" if kind == "decode" else f"prefill {k} tok"
            cyc = f"{v['cycles']:>14,.0f}" if "cycles" in v else f"{'-':>14}"
            e = v.get("efficiency", {})
            row = (f"{name:<16} {cyc} {v['bound_cycles']['bandwidth']:>14,.0f} {v['bound_cycles']['compute']:>14,.0f} "
                   f"{e.get('bandwidth', float('nan')):>8.3f} {e.get('compute', float('nan')):>9.3f}")
            if has:
                row += (f" {res['projected_decode_tok_s'][k]:>10.1f} tok/s" if kind == "decode"
                        else f" {res['projected_ttft_s'][k]:>12.3f} s")
            lines.append(row)
    if has:
        lines.append("* " + res["projection_note"])
        s = res["simulation"]
        lines.append(f"Verilator: {s['rtl_cycles']:,} cycles in {s['rtl_seconds']} s = {s['rtl_cycles_per_second']:,} "
                     "cycles/s")
        t = res.get("tellme_v2")
        if t:
            lines.append(f"TeLLMe v2 (published, KV260): {t['decode_tok_s']} tok/s decode, TTFT "
                         + ", ".join(f"{v} s at {p} tokens" for p, v in t["ttft_s"].items()))
    return "\n".join(lines)




def plot_model(res, out_dir):
    """Roofline chart and cycle breakdowns (PNG) of a measured :func:`bench_model` result; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{res['hw']}-{res['shape']}"
    paths = []
    # Roofline: attainable ternary-equivalent MACs/cycle against operational intensity (MACs per DRAM byte).
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    bw, peak = res["dram_bytes_per_cycle"], res["peak_ternary_macs_per_cycle"]
    xs = np.logspace(-1, 4, 200)
    ax.loglog(xs, np.minimum(peak, bw * xs), "k-", lw=1.5, label=f"roofline ({peak} MACs/cycle, {bw:g} B/cycle)")
    for kind, table, marker in (("decode ctx", res["decode"], "o"), ("prefill", res["prefill"], "s")):
        for k, v in table.items():
            w = v["work"]
            macs = w["ternary_macs"] + w["attention_macs"] + w["lm_head_macs"]
            ai = macs / max(w["dram_bytes"], 1)
            ax.loglog([ai], [macs / v["cycles"]], marker, label=f"{kind} {k}" + (" tok" if kind == "prefill" else ""))
    ax.set_xlabel("operational intensity (MACs per DRAM byte)")
    ax.set_ylabel("MACs per cycle (measured, RTL)")
    ax.set_title(f"{res['shape']} on {res['hw']}: measured vs roofline")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out_dir / f"roofline-{tag}.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    # Cycle breakdown of one decode step and one prefill.
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.6))
    for ax, (title, entry) in zip(axes, (("decode, context " + max(res["decode"], key=int), res["decode"][max(res["decode"], key=int)]),
                                         ("prefill, " + max(res["prefill"], key=int) + " tokens", res["prefill"][max(res["prefill"], key=int)]))):
        b = entry["breakdown"]
        names = list(b)
        vals = [b[n] for n in names]
        ax.barh(names, vals, color="tab:blue")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("cycles")
        for i, v in enumerate(vals):
            ax.text(v, i, f" {100 * v / entry['cycles']:.1f}%", va="center", fontsize=7)
    fig.tight_layout()
    p = out_dir / f"breakdown-{tag}.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def markdown_model(res, plots=(), command=None):
    """``docs/performance.md``: the method, the table, the comparison with TeLLMe v2 and the plots."""
    md = ["# Performance", "",
          f"Generated by `{command}`; do not edit by hand." if command else "Generated by `trillium bench model`.", "",
          f"Shape **{res['shape']}** ({res['layers']} layers, LM head int{res['lm_head_bits']}) on hardware config "
          f"**{res['hw']}**: {res['peak_ternary_macs_per_cycle']} ternary MACs/cycle, "
          f"{res['dram_bytes_per_cycle']:g} DRAM bytes/cycle, projections at {res['clock_mhz']:g} MHz. "
          f"Measured on commit `{res.get('commit', 'unknown')}`.", "",
          "## Results", "",
          "| run | RTL cycles | bandwidth bound | compute bound | efficiency vs bandwidth | efficiency vs compute | "
          "projection |", "|---|---|---|---|---|---|---|"]
    for kind, table in (("decode", res["decode"]), ("prefill", res["prefill"])):
        for k, v in table.items():
            e = v["efficiency"]
            proj = (f"{res['projected_decode_tok_s'][k]:.1f} tok/s" if kind == "decode"
                    else f"TTFT {res['projected_ttft_s'][k]:.3f} s")
            name = f"decode, context {k}" if kind == "decode" else f"prefill, {k} tokens"
            md.append(f"| {name} | {v['cycles']:,.0f} | {v['bound_cycles']['bandwidth']:,.0f} | "
                      f"{v['bound_cycles']['compute']:,.0f} | {e['bandwidth']:.3f} | {e['compute']:.3f} | {proj} |")
    md += ["", f"\\* {res['projection_note']}.", ""]
    t = res.get("tellme_v2")
    if t:
        d = res["projected_decode_tok_s"]
        tt = res["projected_ttft_s"]
        md += ["## Against TeLLMe v2 (projection)", "",
               f"At {res['clock_mhz']:g} MHz and {res['dram_bytes_per_cycle'] * res['clock_mhz'] / 1e3:.1f} GB/s "
               f"(the KV260's DDR4), projected from RTL cycle counts, next to TeLLMe v2's published figures "
               f"({t['source']}):", "",
               "| | Trillium (projection) | TeLLMe v2 (published) |", "|---|---|---|"]
        for c, v in d.items():
            md.append(f"| decode tok/s, context {c} | {v:.1f} | {t['decode_tok_s']:g} |")
        for p, v in tt.items():
            ref = t["ttft_s"].get(str(p))
            md.append(f"| TTFT, {p}-token prompt | {v:.3f} s | {'-' if ref is None else f'{ref:g} s'} |")
        md.append("")
    s = res["simulation"]
    md += ["## Simulation speed (this machine)", "",
           f"* Verilator: {s['rtl_cycles']:,} RTL cycles in {s['rtl_seconds']} s of runs = "
           f"**{s['rtl_cycles_per_second']:,} cycles/s** (whole accelerator, DRAM model, cocotb server waiting on "
           "`irq`).", ]
    g = res.get("golden_speed")
    if g:
        md.append(f"* Golden integer model (NumPy), {g['shape']}: **{g['tokens_per_second']} tokens/s** "
                  f"({g['ms_per_token_median']} ms/token).")
    md += [f"* Whole benchmark: {res['seconds']['total']} s.", ""]
    if plots:
        md += ["## Plots", ""]
        for p in plots:
            md.append(f"![{Path(p).stem}]({p})")
            md.append("")
    md += ["## Method", "", res["method"], ""]
    return "\n".join(md)
