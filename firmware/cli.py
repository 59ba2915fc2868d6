"""The ``trillium`` command line.

Every failure a user can cause (bad paths, corrupt checkpoints, bad configs, too-long prompts) ends with
one readable line on stderr and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

__all__ = ["main", "build_parser"]

EPILOG = """\
examples:
  trillium demo                                   the trained demo model generating Python on the RTL
  trillium generate --model DIR --prompt "def main():" --max-new-tokens 32
  trillium generate --model DIR --prompt "x" --temperature 0.8 --top-p 0.9 --seed 1 --json
  trillium logits --model DIR --tokens 1,2,3 --backend golden --out logits.npy
  trillium logits --model DIR --tokens 1,2,3 --backend isa --hw tiny --out isa.npy   (equal to golden)
  trillium logits --model DIR --tokens 1,2,3 --backend verilator --out rtl.npy     (RTL; equal to golden)
  trillium generate --model DIR --prompt "x" --backend verilator --waves           (FST of the RTL run)
  trillium serve --model DIR --prompt "def " --prompt "class " --backend isa --token-budget 8   (sessions)
  trillium accuracy                               integer model vs float reference on random models
  trillium bench golden --shape bitnet-large --json
  trillium bench tlmm --hw ecp5 --json            TLMM cost vs adder-tree baseline, and throughput
  trillium bench vector --hw tellme-kv260         vector units' elements/cycle vs the TLMM engine
  trillium bench attention --hw tellme-kv260 --json   attention RTL cycles vs DRAM and compute bounds
  trillium bench model --hw tellme-kv260 --shape bitnet-large --json   whole model on the RTL vs roofline
  trillium build --board ulx3s-85f --hw ecp5       bitstream (YoWASP), utilisation and Fmax report
  trillium config --hw tellme-kv260               show a validated hardware config
  trillium export-verilog --hw tiny -o trillium_top.v   the accelerator's top level as Verilog
"""


class UserError(Exception):
    """An error to report as one line, without a traceback."""


def _parse_tokens(text):
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise UserError(f"--tokens must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise UserError("--tokens is empty")
    return ids


def _device_options(args):
    """Keyword arguments of the device from ``--waves`` / ``--timeout-cycles`` (verilator only)."""
    opts = {}
    if getattr(args, "waves", False):
        if args.backend != "verilator":
            raise UserError("--waves needs --backend verilator")
        opts["waves"] = True
    if getattr(args, "timeout_cycles", None) is not None:
        if args.backend != "verilator":
            raise UserError("--timeout-cycles needs --backend verilator")
        if args.timeout_cycles <= 0:
            raise UserError(f"--timeout-cycles must be positive, got {args.timeout_cycles}")
        opts["timeout_cycles"] = args.timeout_cycles
    return opts


def _finish_device(backend):
    """Close a device backend's device; name the waveform file if one was recorded."""
    accel = getattr(backend, "accel", None)
    dev = getattr(accel, "device", None)
    close = getattr(dev, "close", None)
    if close is None:
        return
    close()
    path = getattr(dev, "waves_path", None)
    if path is not None:
        print(f"waves: {path}", file=sys.stderr)


def _load(model_dir, backend, hw="tiny", device_options=None):
    import importlib

    importlib.import_module("golden.weights")  # first: keeps import errors readable

    from .checkpoint import load_checkpoint
    from .compiler import CompileError
    from .device import DeviceError
    from .generate import make_backend

    weights = load_checkpoint(model_dir)
    try:
        return weights, make_backend(backend, weights, hw, device_options)
    except (CompileError, DeviceError) as e:
        raise UserError(f"{backend} backend on hardware config '{hw}': {e}") from None


def cmd_generate(args):
    from .generate import Generator
    from .tokenizer import load_tokenizer

    weights, backend = _load(args.model, args.backend, args.hw, _device_options(args))
    tok = load_tokenizer(args.model)
    gen = Generator(backend, tok)
    stream = not args.json

    def on_token(_id, piece):
        if stream:
            sys.stdout.write(piece)
            sys.stdout.flush()

    if stream:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
    try:
        res = gen.generate(args.prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, seed=args.seed, stop=tuple(args.stop or ()), on_token=on_token)
    except BaseException:
        _finish_device(backend)
        raise
    if args.json:
        out = res.to_json()
        out["backend"] = args.backend
        print(json.dumps(out))
    else:
        t = res.to_json()["timing"]
        sys.stdout.write("\n")
        print(f"[{len(res.prompt_tokens)} prompt tokens, {len(res.tokens)} generated, stop: {res.stop_reason}; "
              f"first token {t['time_to_first_token_s']:.3f} s, {t['decode_tokens_per_s'] or 0:.2f} tok/s "
              f"on the {args.backend} backend (host time)]", file=sys.stderr)
    _finish_device(backend)
    return 0


def cmd_serve(args):
    import types

    from hw.config import load_hw_config

    from .accelerator import Accelerator
    from .checkpoint import load_checkpoint
    from .compiler import CompileError
    from .device import DeviceError
    from .generate import Generator
    from .kv_manager import blocks_for
    from .scheduler import format_report, serve
    from .tokenizer import load_tokenizer

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    if args.token_budget is not None and args.token_budget < 1:
        raise UserError(f"--token-budget must be at least 1 (tokens per step, decodes included), got "
                        f"{args.token_budget}")
    if args.layer_group is not None and args.policy != "layer-group":
        raise UserError("--layer-group applies to --policy layer-group only")
    weights = load_checkpoint(args.model)
    tok = load_tokenizer(args.model)
    enc = Generator(types.SimpleNamespace(config=weights.config), tok)
    prompts = [enc.encode_prompt(p) for p in args.prompt]
    hw = load_hw_config(args.hw)
    # The KV arena holds exactly these sessions (a small DRAM image, also for the Verilator device).
    positions = sum(32 * blocks_for(len(p) + args.max_new_tokens) for p in prompts)
    try:
        acc = Accelerator(weights, hw, args.backend, device_options=_device_options(args) or None,
                          kv_positions=positions, max_sessions=len(prompts))
    except (CompileError, DeviceError) as e:
        raise UserError(f"{args.backend} backend on hardware config '{args.hw}': {e}") from None
    texts = {i: [] for i in range(len(prompts))}

    def on_token(session, token):
        texts[session].append(token)
        if not args.json:
            piece = tok.decode(texts[session])[len(tok.decode(texts[session][:-1])):]
            print(f"[s{session}] {token:>6} {piece!r}", flush=True)

    backend = types.SimpleNamespace(accel=acc)
    try:
        rep = serve(acc, prompts, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, seed=args.seed, token_budget=args.token_budget, policy=args.policy,
                    layer_group=args.layer_group, on_token=on_token)
    except ValueError as e:
        raise UserError(str(e)) from None
    finally:
        _finish_device(backend)
    for d in rep["sessions"]:
        d["prompt"] = args.prompt[d["session"]]
        d["text"] = tok.decode(d["tokens"])
    if args.json:
        print(json.dumps(rep))
    else:
        print(format_report(rep))
        for d in rep["sessions"]:
            print(f"s{d['session']}: {d['prompt']!r} -> {d['text']!r}")
    return 0


def cmd_logits(args):
    tokens = _parse_tokens(args.tokens)
    weights, backend = _load(args.model, args.backend, args.hw, _device_options(args))
    vocab = weights.config.vocab_size
    bad = [t for t in tokens if not 0 <= t < vocab]
    if bad:
        raise UserError(f"token id {bad[0]} is outside the vocabulary 0..{vocab - 1}")
    limit = getattr(backend, "max_context", None) or weights.config.max_position_embeddings
    if len(tokens) > limit:
        raise UserError(f"{len(tokens)} tokens exceed the context of {limit} positions ({args.backend} backend)")
    try:
        cache = backend.new_cache(len(tokens))
        logits = backend.forward(np.asarray(tokens), cache, all_logits=True).astype(np.float32)
    finally:
        _finish_device(backend)
    np.save(args.out, logits)
    print(f"wrote {args.out}: float32 logits, shape {list(logits.shape)} ({args.backend} backend)")
    return 0


def cmd_accuracy(args):
    from tqdm import tqdm

    from golden.accuracy import ACCURACY_MODELS, accuracy_report

    bar = tqdm(total=len(ACCURACY_MODELS), desc="accuracy", disable=args.json, leave=False)
    rep = accuracy_report(positions=args.positions, prefill=min(args.prefill, args.positions), seed=args.seed,
                          progress=lambda name: bar.update(1))
    bar.close()
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        print(rep["method"])
        print(f"{'model':<20} {'cos min':>9} {'cos mean':>9} {'KL mean':>9} {'top-1':>7} {'ref p(max)':>10} "
              f"{'f32 top-1':>9}  target")
        for name, r in rep["models"].items():
            print(f"{name:<20} {r['cosine_min']:>9.5f} {r['cosine_mean']:>9.5f} {r['kl_mean']:>9.2e} "
                  f"{r['top1_agreement']:>7.2%} {r['ref_max_prob_mean']:>10.3f} "
                  f"{r['float32_ref_top1_agreement']:>9.2%}  {'yes' if r['target_family'] else 'no'}")
        print("f32 top-1: the float reference run in float32 against float64, the floor set by the model itself")
        t = rep["targets"]
        print(f"targets (peaked models): cosine >= {t['cosine_min']}, top-1 >= {t['top1_agreement']:.0%}: "
              f"{'met' if rep['targets_met'] else 'NOT met'}")
    return 0 if rep["targets_met"] else 1


def cmd_bench(args):
    if args.what == "golden":
        from .bench_golden import bench_golden

        res = bench_golden(args.shape, prompt_tokens=args.prompt_tokens, decode_tokens=args.decode_tokens,
                           progress=None if args.json else (lambda m: print(m, file=sys.stderr)))
        if args.json:
            print(json.dumps(res, indent=1))
        else:
            print(f"golden integer decode, {res['shape']}: {res['tokens_per_second']} tokens/s "
                  f"({res['ms_per_token_median']} ms/token median)\nmethod: {res['method']}")
        return 0
    if args.what == "tlmm":
        from .bench_tlmm import bench_tlmm

        res = bench_tlmm(args.hw, progress=None if args.json else (lambda m: print(m, file=sys.stderr)))
        if args.json:
            print(json.dumps(res, indent=1))
        else:
            print(f"TLMM {res['tables']} tables x {res['lanes']} lanes = {res['macs_per_cycle']} ternary MACs/cycle "
                  f"({res['hw']}; configured table storage: {res['table_storage']})")
            print(f"{'per MAC/cycle':<16} {'lutram':>9} {'mux':>9} {'baseline':>9}")
            eng, base = res["engines"], res["baseline"]["per_mac"]
            for k in ("lut4_equivalent", "lut4", "ccu2c", "dpr16x4", "ff", "dsp", "bram"):
                print(f"{k:<16} {eng['lutram']['per_mac'][k]:>9.3f} {eng['mux']['per_mac'][k]:>9.3f} {base[k]:>9.3f}")
            print(f"{'LUT ratio':<16} {eng['lutram']['lut_ratio']:>9.3f} {eng['mux']['lut_ratio']:>9.3f} {1.0:>9.3f}")
            print(f"{'efficiency':<16} {eng['lutram']['steady_state_efficiency']:>9.4f} "
                  f"{eng['mux']['steady_state_efficiency']:>9.4f}")
            print(f"method: {res['method']}")
        return 0
    if args.what == "vector":
        from .bench_vector import bench_vector, format_vector

        res = bench_vector(args.hw, args.shape, progress=None if args.json else (lambda m: print(m, file=sys.stderr)))
        print(json.dumps(res, indent=1) if args.json else format_vector(res))
        return 0
    if args.what == "memory":
        from .bench_memory import bench_memory, format_memory

        try:
            res = bench_memory(args.hw, progress=None if args.json else (lambda m: print(m, file=sys.stderr)),
                               engine=args.engine)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        print(json.dumps(res, indent=1) if args.json else format_memory(res))
        return 0
    if args.what == "attention":
        from .bench_attention import bench_attention, format_attention

        try:
            res = bench_attention(args.hw, args.shape,
                                  progress=None if args.json else (lambda m: print(m, file=sys.stderr)))
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        print(json.dumps(res, indent=1) if args.json else format_attention(res))
        return 0
    if args.what == "model":
        from .bench_model import bench_model, format_model, plot_model
        from .compiler import CompileError

        say = None if args.json else (lambda m: print(m, file=sys.stderr))
        try:
            res = bench_model(args.hw, args.shape, backend=args.backend, clock_mhz=args.clock_mhz,
                              contexts=args.contexts or (128, 1024), prompts=args.prompts or (64, 128),
                              device_options=_device_options(args) or None, golden_speed=bool(args.markdown),
                              progress=say)
        except (ValueError, CompileError) as exc:
            raise UserError(str(exc)) from exc
        measured = "decode_efficiency" in res
        if (args.plots or args.markdown) and not measured:
            raise UserError("--plots and --markdown need RTL cycles: use --backend verilator")
        if args.markdown:
            from pathlib import Path

            from .bench_model import markdown_model

            md = Path(args.markdown)
            plot_dir = Path(args.plots) if args.plots else md.parent / "perf"
            res["plots"] = [str(p) for p in plot_model(res, plot_dir)]
            rel = [str(Path(p).resolve().relative_to(md.parent.resolve())) for p in res["plots"]]
            cmd = f"trillium bench model --hw {args.hw} --shape {args.shape} --markdown {args.markdown}" + (
                f" --plots {args.plots}" if args.plots else "")
            md.write_text(markdown_model(res, rel, command=cmd))
            res["markdown"] = str(md)
        elif args.plots:
            res["plots"] = [str(p) for p in plot_model(res, args.plots)]
        print(json.dumps(res, indent=1) if args.json else format_model(res))
        return 0
    raise UserError(f"unknown benchmark '{args.what}'")


def cmd_config(args):
    from hw.config import available_hw_configs, load_hw_config

    names = [args.hw] if args.hw else available_hw_configs()
    out = {}
    for n in names:
        c = load_hw_config(n)
        d = c.to_dict()
        d["derived"] = {"tlmm_macs_per_cycle": c.tlmm.macs_per_cycle, "weight_word_bits": c.tlmm.word_bits,
                        "config_hash": f"0x{c.config_hash:08x}"}
        out[c.name] = d
    print(json.dumps(out if not args.hw else out[next(iter(out))], indent=1))
    return 0


def cmd_export_verilog(args):
    import time
    from pathlib import Path

    from hw.config import load_hw_config
    from hw.synth import VENDOR_VERILOG_PLATFORM
    from hw.top import TrilliumTop
    from sim.verilog import export_verilog

    hw = load_hw_config(args.hw)
    if not args.name.isidentifier():
        raise UserError(f"--name must be a Verilog identifier, got {args.name!r}")
    out = Path(args.output)
    if out.is_dir():
        raise UserError(f"-o {out} is a directory; give a file name such as {out / (args.name + '.v')}")
    t0 = time.monotonic()
    print(f"elaborating the accelerator for hardware config '{hw.name}' ...", file=sys.stderr, flush=True)
    top = TrilliumTop(hw)
    text = export_verilog(top, args.name, platform=VENDOR_VERILOG_PLATFORM)
    header = (f"// Trillium accelerator, hardware config '{hw.name}' (id 0x{hw.config_hash:08x}), generated by "
              f"`trillium export-verilog`.\n// Ports: AXI4-Lite CSR slave csr__*, AXI4 DRAM master axi_rd__* / "
              f"axi_wr__*, interrupt irq; clock clk, synchronous active-high reset rst.\n")
    out.write_text(header + text)
    report = {"file": str(out), "module": args.name, "hw": hw.name, "config_hash": f"0x{hw.config_hash:08x}",
              "bytes": out.stat().st_size, "seconds": round(time.monotonic() - t0, 1),
              "dram_data_bits": hw.dram.bus_bits, "csr_addr_bits": 16}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"wrote {out} ({report['bytes']} bytes, module {args.name}, id {report['config_hash']}) in "
              f"{report['seconds']} s")
    return 0


def cmd_build(args):
    """``trillium build``: a design to a bitstream for a board (firmware/fpga_build.py), or with
    ``--place-only`` to a placed design and its timing estimate; exit 1 if a clock misses its constraint
    (estimated, placing only) or a tool fails, 2 for a user error."""
    from hw.board.designs import design_names
    from hw.board.platforms import board_names
    from hw.config import load_hw_config

    from .fpga_build import BuildError, build_bitstream, format_report

    if args.board not in board_names():
        raise UserError(f"unknown board {args.board!r}; known boards: {', '.join(board_names())}")
    if args.design is None:
        # The accelerator where the board has its shell (the SDRAM it needs); the link alone elsewhere.
        args.design = "shell" if args.board == "ulx3s-85f" else "link"
    if args.design not in design_names():
        raise UserError(f"unknown design {args.design!r}; known designs: {', '.join(design_names())}")
    hw = load_hw_config(args.hw)
    seeds = None
    if args.seeds is not None:
        from .seed_sweep import parse_seeds
        seeds = parse_seeds(args.seeds)
    elif args.jobs != 1:
        raise UserError("build: --jobs places several seeds at once; it needs --seeds")
    try:
        result = build_bitstream(args.board, args.design, hw, out_dir=args.out, place_only=args.place_only,
                                 seed=args.seed, seeds=seeds, jobs=args.jobs,
                                 progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    except BuildError as e:
        print(f"trillium: error: build failed: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_report(result))
    return 0 if result["met"] else 1


def cmd_demo(args):
    from .demo import run_demo

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    return run_demo(json_only=args.json, max_new_tokens=args.max_new_tokens, prompt=args.prompt,
                    backend=args.backend, hw=args.hw, temperature=args.temperature, top_p=args.top_p,
                    seed=args.seed, heal=not args.no_heal, model_dir=args.model,
                    device_options=_device_options(args))


def _add_device_options(p):
    p.add_argument("--waves", action="store_true",
                   help="verilator: record an FST waveform of the whole run (its path is printed at the end)")
    p.add_argument("--timeout-cycles", type=int, default=None,
                   help="verilator: watchdog, clock cycles one run may take before it is reported as hung")


def build_parser():
    p = argparse.ArgumentParser(
        prog="trillium", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Ternary (BitNet b1.58) LLM inference on FPGAs: run models on the bit-exact golden "
                    "model, the float reference, and (later) the simulated or real accelerator.")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    g = sub.add_parser("generate", help="generate text from a prompt",
                       description="Generate text from a Hugging Face BitNet checkpoint directory. Tokens are "
                                   "streamed as they are made; greedy unless --temperature > 0.")
    g.add_argument("--model", required=True, help="checkpoint directory (config.json, *.safetensors, tokenizer.json)")
    g.add_argument("--backend", default="golden", choices=("golden", "float", "isa", "verilator"),
                   help="golden: bit-exact integer model of the accelerator; float: float reference; isa: the "
                        "compiled program on the ISA simulator; verilator: the same program on the "
                        "accelerator's RTL in Verilator (built once and cached) (default golden)")
    g.add_argument("--hw", default="tiny", help="hardware config for device backends (isa, verilator; default tiny)")
    _add_device_options(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=None, help="sampler seed for reproducible sampling")
    g.add_argument("--stop", action="append", help="stop when the text ends with this string (repeatable)")
    g.add_argument("--json", action="store_true",
                   help="print one JSON object (prompt_tokens, tokens, text, timing) instead of streaming")
    g.set_defaults(func=cmd_generate)

    sv = sub.add_parser("serve", help="several prompts at once on one accelerator (sessions, chunked prefill)",
                        description="Run several prompts as concurrent sessions on one accelerator: each session "
                                    "has its own KV region and program; every step runs the waiting decodes "
                                    "first, then prefill work up to the token budget: token chunks (--policy "
                                    "chunked) or whole chunks through groups of layers (--policy layer-group, "
                                    "fewer weight reads for the same budget; docs/driver.md). Tokens "
                                    "stream tagged by session; then a per-session table of time to first token "
                                    "and time between tokens (device cycles and projected seconds; on the isa "
                                    "device, which counts no cycles, DRAM bytes and MACs).")
    sv.add_argument("--model", required=True, help="checkpoint directory (config.json, *.safetensors, tokenizer.json)")
    sv.add_argument("--prompt", required=True, action="append", help="a prompt (repeat for several sessions)")
    sv.add_argument("--backend", default="isa", choices=("isa", "verilator"),
                    help="isa: the ISA simulator (no cycles); verilator: the RTL (cycles) (default isa)")
    sv.add_argument("--hw", default="tiny", help="hardware config (default tiny)")
    _add_device_options(sv)
    sv.add_argument("--token-budget", type=int, default=None,
                    help="tokens per step, decodes included (default: the build's limits.max_chunk); "
                         "layer-group counts it times the layers, in token-layers")
    sv.add_argument("--policy", default="chunked", choices=("chunked", "layer-group"),
                    help="chunked: prefill chunks of at most the budget left (default); layer-group: full chunks "
                         "(limits.max_chunk) through as many layers as the budget left allows, the residual stream "
                         "kept in DRAM between groups")
    sv.add_argument("--layer-group", type=int, default=None,
                    help="layer-group only: most layers per prefill run (default: what the budget allows)")
    sv.add_argument("--max-new-tokens", type=int, default=16)
    sv.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    sv.add_argument("--top-k", type=int, default=None)
    sv.add_argument("--top-p", type=float, default=None)
    sv.add_argument("--seed", type=int, default=None, help="sampler seed (each session's sampler starts from it)")
    sv.add_argument("--json", action="store_true", help="print one JSON report instead of streaming")
    sv.set_defaults(func=cmd_serve)

    lg = sub.add_parser("logits", help="logits for every position of a token sequence",
                        description="Run a token sequence and save float32 logits of shape [n_tokens, vocab].")
    lg.add_argument("--model", required=True)
    lg.add_argument("--tokens", required=True, help="comma-separated token ids, e.g. 1,2,3")
    lg.add_argument("--backend", default="golden", choices=("golden", "float", "isa", "verilator"),
                    help="golden (integer model), float (reference), isa (compiled program, ISA simulator) or "
                         "verilator (compiled program, RTL in Verilator)")
    lg.add_argument("--hw", default="tiny", help="hardware config for device backends (default tiny)")
    _add_device_options(lg)
    lg.add_argument("--out", required=True, help="output .npy file")
    lg.set_defaults(func=cmd_logits)

    d = sub.add_parser("demo", help="generate Python with the project's trained ternary model on the RTL",
                       description="Run the committed demo model (firmware/demo_model: a 4-layer ternary "
                                   "model trained on the Python standard library by python -m "
                                   "firmware.train_demo) on the accelerator RTL in Verilator (default; built "
                                   "once and cached), stream the text, and report tokens, TTFT and decode "
                                   "cycles, a tok/s projection at the config's clock, DRAM bytes per token "
                                   "and utilisation.")
    d.add_argument("--backend", default="verilator", choices=("verilator", "isa", "golden"),
                   help="verilator: the accelerator RTL (cycle counts); isa: the ISA simulator; golden: the "
                        "bit-exact integer model (default verilator)")
    d.add_argument("--hw", default="tiny", help="hardware config (default tiny)")
    _add_device_options(d)
    d.add_argument("--json", action="store_true", help="print the report as JSON only")
    d.add_argument("--max-new-tokens", type=int, default=40)
    d.add_argument("--prompt", default="def ")
    d.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    d.add_argument("--top-p", type=float, default=None)
    d.add_argument("--seed", type=int, default=None)
    d.add_argument("--no-heal", action="store_true",
                   help="prefill the prompt's tokens as they are (default: regenerate its last token)")
    d.add_argument("--model", default=None, help="another checkpoint directory (default: the committed demo model)")
    d.set_defaults(func=cmd_demo)

    a = sub.add_parser("accuracy", help="integer model vs float reference (cosine, KL, top-1)")
    a.add_argument("--positions", type=int, default=256)
    a.add_argument("--prefill", type=int, default=128)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_accuracy)

    b = sub.add_parser("bench", help="benchmarks: golden (integer-model speed), tlmm (engine cost and "
                                     "throughput), vector (element-wise units vs the engine's rate)",
                       description="golden: golden integer decode speed on a full-size random model. tlmm: the "
                                   "TLMM engine's ECP5 cost per MAC/cycle against an adder-tree baseline "
                                   "(Yosys synth_ecp5) and its sustained throughput in Verilator RTL cycles. "
                                   "vector: elements/cycle of every vector unit (RTL cycles) against the "
                                   "rate the TLMM engine feeds it on --shape; names the bottleneck, if any. "
                                   "attention: decode and prefill attention RTL cycles against the DRAM and "
                                   "compute bounds at 512 and 2048 tokens, bit-exact against golden. model: "
                                   "whole-model decode (contexts 128, 1024) and prefill (64, 128 tokens) of "
                                   "--shape (a published shape or a checkpoint directory) on the whole "
                                   "accelerator in Verilator, against the bandwidth and compute bounds, with "
                                   "projections at the config's clock (and TeLLMe v2's figures for "
                                   "bitnet-large).")
    b.add_argument("what", choices=("golden", "tlmm", "vector", "memory", "attention", "model"))
    b.add_argument("--hw", default="tiny", help="hardware config for tlmm and vector (default tiny)")
    b.add_argument("--shape", default="bitnet-large", help="bitnet-large, bitnet-3b or bitnet-2b4t")
    b.add_argument("--engine", choices=("mux", "lutram"), default=None,
                   help="memory: TLMM engine behind the weight buffer (default: the config's table_storage)")
    b.add_argument("--prompt-tokens", type=int, default=8)
    b.add_argument("--decode-tokens", type=int, default=8)
    b.add_argument("--backend", default="verilator", choices=("verilator", "isa"),
                   help="model: verilator (RTL cycles, default) or isa (bounds only, no cycles)")
    b.add_argument("--contexts", type=int, nargs="+", default=None, help="model: decode contexts (default 128 1024)")
    b.add_argument("--prompts", type=int, nargs="+", default=None, help="model: prefill lengths (default 64 128)")
    b.add_argument("--clock-mhz", type=float, default=None,
                   help="model: clock of the projections (default: the config's clock_mhz)")
    b.add_argument("--plots", default=None, help="model: write the roofline and breakdown PNGs to this directory")
    b.add_argument("--markdown", default=None,
                   help="model: write the performance report (method, table, TeLLMe comparison, plots, simulation "
                        "speed) to this Markdown file, e.g. docs/performance.md")
    _add_device_options(b)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

    e = sub.add_parser("export-verilog", help="write the accelerator's top level as Verilog",
                       description="Elaborate the whole accelerator (hw/top.py) for a hardware config and write "
                                   "one Verilog file: AXI4-Lite CSR slave (csr__*), AXI4 DRAM master (axi_rd__*, "
                                   "axi_wr__*), interrupt (irq), clock clk and synchronous reset rst. Take it to "
                                   "Yosys/nextpnr or vendor tools.")
    e.add_argument("--hw", default="tiny", help="hardware config name or YAML path (default tiny)")
    e.add_argument("-o", "--output", required=True, help="output Verilog file")
    e.add_argument("--name", default="trillium_top", help="top module name (default trillium_top)")
    e.add_argument("--json", action="store_true", help="print a JSON summary")
    e.set_defaults(func=cmd_export_verilog)

    bd = sub.add_parser("build", help="build a bitstream for a board (YoWASP Yosys + nextpnr + packer) and report "
                                      "utilisation and Fmax",
                        description="Synthesise, place, route and pack a design for a board with the open "
                                    "toolchain from PyPI, then report LUT/FF/BRAM/DSP used and available, Fmax "
                                    "per clock against its constraint, build time, tool versions and commit. "
                                    "Exit 0 if every clock meets its constraint, 1 if one does not (or a tool "
                                    "failed), 2 for a usage error; a missed clock lists the worst routed "
                                    "endpoints and the nets behind the most late ones (hop by hop in <build "
                                    "dir>/routed-timing.txt). Boards: ulx3s-85f (ECP5), nexus-40 "
                                    "(LIFCL-40-EVN). Designs: shell (the accelerator with the board's SDRAM and "
                                    "the UART host link; ulx3s-85f only; 1.5 to 2 hours on two cores, most of it "
                                    "nextpnr's router) and link "
                                    "(the UART host link with a CSR stub and on-chip RAM; a minute).")
    bd.add_argument("--board", required=True, help="target board: ulx3s-85f or nexus-40")
    bd.add_argument("--hw", required=True, help="hardware config name or YAML path (e.g. ecp5)")
    bd.add_argument("--design", default=None,
                    help="design to build: shell (the accelerator; the default on ulx3s-85f) or link (the "
                         "default on boards without a shell)")
    bd.add_argument("--out", default=None,
                    help="build directory (default build/<board>-<design>-<hw>/)")
    bd.add_argument("--json", action="store_true",
                    help="print the report as JSON (bitstream, fmax_mhz, constraint_mhz, utilisation, "
                         "build_seconds, met, ...)")
    bd.add_argument("--place-only", action="store_true",
                    help="stop after placement: no routing, no bitstream. About half an hour on the shell "
                         "(Yosys and placement, against 1.5 to 2 hours with routing at 64 %% of the 85F's LUTs), "
                         "to see where timing fails: "
                         "Fmax and PASS/FAIL are nextpnr's "
                         "post-placement estimates (routed timing differs), and the worst paths and the nets "
                         "behind the most late endpoints are printed, hop by hop in "
                         "<build dir>/placed-timing.txt (JSON: placed_timing)")
    seed = bd.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, default=None,
                      help="nextpnr's placement seed (0 to 2^31 - 1; default: nextpnr's own). Placements of one "
                           "netlist under different seeds differ by many MHz (the shell's estimate ran from 64.9 "
                           "to 83.7 MHz over seeds of one netlist); the report records the seed")
    seed.add_argument("--seeds", default=None, metavar="LIST",
                      help="sweep placement seeds, e.g. 1-4 or 1,2,5: Yosys runs once, nextpnr places under each "
                           "seed (files in <build dir>/seed-<n>/), the best estimate is kept and, unless "
                           "--place-only, placed and routed again under its seed. The report tabulates every "
                           "seed (JSON: seed_sweep). A shell placement takes 15 to 25 minutes per seed")
    bd.add_argument("--jobs", type=int, default=1,
                    help="with --seeds: placements to run at once (one nextpnr process each; default 1)")
    bd.set_defaults(func=cmd_build)

    c = sub.add_parser("config", help="show validated hardware configs")
    c.add_argument("--hw", default=None, help="config name or YAML path (default: all bundled)")
    c.set_defaults(func=cmd_config)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("trillium: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every user-caused failure becomes one line
        if args.debug or not _is_user_error(exc):
            raise
        msg = " ".join(str(exc).split())
        print(f"trillium: error: {msg}", file=sys.stderr)
        return 2


def _is_user_error(exc):
    from golden.model_config import ModelConfigError
    from golden.model_int import ContextOverflowError
    from hw.config import ConfigError

    kinds = [UserError, ModelConfigError, ContextOverflowError, ConfigError, FileNotFoundError, ValueError,
             IsADirectoryError, PermissionError]
    try:
        from .checkpoint import CheckpointError
        from .device import DeviceError
        kinds += [CheckpointError, DeviceError]
    except ImportError:
        pass
    return isinstance(exc, tuple(kinds))


if __name__ == "__main__":
    sys.exit(main())
