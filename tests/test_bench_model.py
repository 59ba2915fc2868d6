"""``trillium bench model`` (firmware/bench_model.py) on the ``tiny`` config: the whole-model figures built from
one measured layer equal (work counts, exactly) or match (RTL cycles, within 1 %) a real multi-layer model's
runs, and the command's JSON, table, plots and Markdown report."""

import json

import numpy as np
import pytest

from checkpoints import make_checkpoint

from firmware.bench_model import bench_model, format_model
from firmware.checkpoint import load_model_config
from firmware.cli import main
from firmware.compiler import compile_model
from firmware.device import make_device
from golden.model_int import IntegerModel
from golden.weights import random_model
from hw.config import load_hw_config

HW = load_hw_config("tiny")
CONTEXTS, PROMPTS = (20, 40), (16, 24)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "silu-mha", "silu-mha", layers=3)
    return d


def real_runs(model_dir, backend):
    """The measured points on a real 3-layer model's own program: {key: (work, run_cycles)}."""
    cfg = load_model_config(model_dir)
    model = IntegerModel(random_model(cfg, seed=7))
    cm = compile_model(model, HW, max_context=max(CONTEXTS + PROMPTS), max_chunk=HW.limits.max_chunk)
    isa = make_device("isa", HW, len(cm.image))
    devs = [isa] + ([make_device(backend, HW, len(cm.image))] if backend != "isa" else [])
    out = {}
    toks = np.random.default_rng(1).integers(0, cfg.vocab_size, 64)
    points = [(f"decode@{c}", c - 1, 1) for c in CONTEXTS] + [("prefill@16+8+lm", 16, 8)]
    try:
        for d in devs:
            d.write(0, bytes(cm.image))
            d.write_csr("dram_size", len(cm.image))
        for key, pos, n in points:
            rec = {}
            for d in devs:
                d.write(cm.tokens_addr, toks[:n].astype("<u4").tobytes())
                for name, v in (("program", cm.program), ("tokens", cm.tokens_addr), ("n_tokens", n), ("pos", pos),
                                ("logits", cm.logits_addr), ("all_logits", 0)):
                    d.write_csr(name, v)
                d.run()
                if d is isa:
                    w = d.last_work
                    rec["work"] = {"dram_bytes": w.dram_read_bytes + w.dram_write_bytes,
                                   "ternary_macs": w.ternary_macs, "attention_macs": w.attention_macs,
                                   "lm_head_macs": w.lm_head_macs}
                else:
                    rec["cycles"] = d.read_csr("run_cycles")
            out[key] = rec
    finally:
        for d in devs:
            if hasattr(d, "close"):
                d.close()
    return out


def test_isa_work_counts_from_one_layer_equal_the_real_model(model_dir):
    res = bench_model("tiny", str(model_dir), backend="isa", contexts=CONTEXTS, prompts=PROMPTS)
    real = real_runs(model_dir, "isa")
    assert res["layers"] == 3 and "decode_efficiency" not in res
    for c in CONTEXTS:
        assert res["decode"][str(c)]["work"] == real[f"decode@{c}"]["work"]
    # Prefill 24 = a 16-token chunk without the LM head, then 8 tokens with it.
    assert res["prefill"]["24"]["chunks"] == 2
    for v in res["decode"].values():
        assert v["roofline_bound_cycles"] == max(v["bound_cycles"].values()) > 0
    assert "cycles" not in res["decode"]["20"]
    text = format_model(res)
    assert "decode ctx 1024" not in text and "decode ctx 40" in text


# A benchmark run on Verilator (about 95 s): behind the slow marker with the other benchmarks.
@pytest.mark.slow
def test_rtl_cycles_from_one_layer_match_the_real_model(model_dir, tmp_path, capsys):
    res = bench_model("tiny", str(model_dir), backend="verilator", contexts=CONTEXTS, prompts=PROMPTS)
    real = real_runs(model_dir, "verilator")
    for c in CONTEXTS:
        got, want = res["decode"][str(c)]["cycles"], real[f"decode@{c}"]["cycles"]
        print(f"decode at context {c}: 1-layer extrapolation {got} cycles, real 3-layer model {want} cycles")
        assert abs(got - want) <= 0.01 * want, (c, got, want)
        assert res["decode"][str(c)]["work"] == real[f"decode@{c}"]["work"]
    for key in ("decode_efficiency", "prefill_efficiency", "projected_decode_tok_s", "projected_ttft_s", "method"):
        assert key in res
    for c in CONTEXTS:
        d = res["decode"][str(c)]
        assert 0 < d["efficiency"]["bandwidth"] <= 1.0 and d["cycles"] > d["roofline_bound_cycles"]
        assert res["projected_decode_tok_s"][str(c)] == pytest.approx(100e6 / d["cycles"], rel=1e-3)
        assert sum(d["breakdown"].values()) == pytest.approx(d["cycles"], abs=0.1)
    assert res["simulation"]["rtl_cycles_per_second"] > 0
    # The command: JSON keys, the Markdown report with its plots, and a shape that does not fit.
    md = tmp_path / "performance.md"
    capsys.readouterr()                             # this test's own prints
    args = ["bench", "model", "--hw", "tiny", "--shape", str(model_dir), "--contexts", "20", "--prompts", "16"]
    assert main(args + ["--json", "--markdown", str(md)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["decode_efficiency"]) == {"20"} and set(out["projected_ttft_s"]) == {"16"}
    text = md.read_text()
    assert "## Method" in text and "| decode, context 20 |" in text and "projection" in text
    for p in out["plots"]:
        assert (tmp_path / "perf" / p.split("/")[-1]).stat().st_size > 1000
    assert main(["bench", "model", "--hw", "tiny", "--shape", "bitnet-large", "--backend", "isa"]) == 2
    assert "does not fit hardware config 'tiny'" in capsys.readouterr().err
