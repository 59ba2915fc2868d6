"""Co-simulation: whole models on the accelerator's RTL (the ``verilator`` device: ``hw/top.py`` in
Verilator behind the driver) equal the ISA simulator and the integer model exactly.

For a relu2 + GQA and a silu + MHA checkpoint in the Hugging Face layout (tiny config):

* one transformer block (a 1-layer model): logits of a 16-token prefill, RTL == ISA == golden;
* the whole 2-layer model: a 16-token prefill, then 16 greedy decode steps, every step's logits
  RTL == ISA == golden, and the generated tokens equal;
* the CLI: ``trillium logits --backend verilator`` equals ``--backend golden`` exactly;
* errors on the RTL: an illegal instruction and a bad address give their error codes (and the
  device keeps working); a context overflow is refused;
* the scheduler's ``layer-group`` policy on the RTL (layer groups through the residual stash, sessions
  decoding between them): every session's tokens equal the ISA device's, run by run the same logits.

All runs share one cached Verilator build of the tiny top level; each device is one simulator process.
"""

import json

import numpy as np
import pytest
from checkpoints import SHAPES, make_checkpoint

from firmware.accelerator import Accelerator
from firmware.checkpoint import load_checkpoint
from firmware.cli import main
from firmware.device import DeviceError
from golden.model_int import IntegerModel
from hw.config import load_hw_config
from hw.isa import INSTRUCTION_BYTES, ErrorCode, Opcode, encode

HW = load_hw_config("tiny")
PROMPT = 16
DECODE = 16


@pytest.fixture(scope="module", params=list(SHAPES))
def model_dir(request, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / request.param, request.param)


def _run_steps(acc, ref, prompt, steps):
    """Prefill ``prompt`` then ``steps`` greedy decode steps on an accelerator and on the integer model;
    return the logits of every step from both, and the run cycles of each RTL/ISA run."""
    cache, ref_cache = acc.new_cache(len(prompt) + steps), ref.new_cache(len(prompt) + steps)
    got = [acc.forward(prompt, cache, all_logits=True)]
    want = [ref.forward(prompt, ref_cache)]
    cycles = [acc.device.read_csr("run_cycles")]
    tok = int(np.argmax(want[-1][-1]))
    for _ in range(steps):
        got.append(acc.forward([tok], cache))
        want.append(ref.forward(np.array([tok]), ref_cache, all_logits=False))
        cycles.append(acc.device.read_csr("run_cycles"))
        tok = int(np.argmax(want[-1][-1]))
    return got, want, cycles


def test_one_block_equals_isa_and_golden(tmp_path):
    path = make_checkpoint(tmp_path / "block", "relu2-gqa", layers=1, seed=9)
    weights = load_checkpoint(path)
    prompt = np.random.default_rng(1).integers(0, weights.config.vocab_size, PROMPT)
    want = IntegerModel(weights).forward(prompt, IntegerModel(weights).new_cache(PROMPT))
    for device in ("isa", "verilator"):
        acc = Accelerator(weights, HW, device)
        try:
            got = acc.forward(prompt, acc.new_cache(PROMPT), all_logits=True)
        finally:
            _close(acc)
        np.testing.assert_array_equal(got, want, err_msg=device)


def test_prefill_then_decode_bit_exact(model_dir):
    weights = load_checkpoint(model_dir)
    ref = IntegerModel(weights)
    prompt = np.random.default_rng(3).integers(0, weights.config.vocab_size, PROMPT)
    rtl = Accelerator(weights, HW, "verilator")
    try:
        got, want, cycles = _run_steps(rtl, ref, prompt, DECODE)
    finally:
        _close(rtl)
    for i, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(g, w, err_msg=f"step {i}")
    isa = Accelerator(weights, HW, "isa")
    got_isa, _, _ = _run_steps(isa, ref, prompt, DECODE)
    for g, w in zip(got_isa, want):
        np.testing.assert_array_equal(g, w)
    # Cycle counts come from the RTL's run_cycles CSR: a prefill of 16 costs more than a decode step.
    assert cycles[0] > cycles[1] > 0
    print(f"\n{model_dir.name}: prefill {PROMPT} tokens {cycles[0]} cycles; decode steps {cycles[1:]}")


def test_cli_logits_and_generate_verilator_equal_golden(capsys, model_dir, tmp_path):
    toks = ",".join(str(t) for t in np.random.default_rng(2).integers(0, 200, 21))   # chunks of 16 + 5
    files = {}
    for backend in ("golden", "verilator"):
        files[backend] = tmp_path / f"{backend}.npy"
        assert main(["logits", "--model", str(model_dir), "--tokens", toks, "--backend", backend,
                     "--out", str(files[backend])]) == 0
    assert np.array_equal(np.load(files["verilator"]), np.load(files["golden"]))
    outs = {}
    for backend in ("golden", "verilator"):
        capsys.readouterr()
        assert main(["generate", "--model", str(model_dir), "--backend", backend, "--prompt", "def ",
                     "--max-new-tokens", "6", "--json"]) == 0
        outs[backend] = json.loads(capsys.readouterr().out)["tokens"]
    assert outs["verilator"] == outs["golden"] and outs["golden"]


def test_rtl_errors_have_codes_and_do_not_hang(tmp_path):
    weights = load_checkpoint(make_checkpoint(tmp_path / "m", "silu-mha", layers=1))
    acc = Accelerator(weights, HW, "verilator")
    dev = acc.device
    try:
        dev.check_id()
        cache = acc.new_cache(4)              # a session: its own copy of the program
        prog = cache.program
        good = bytes(dev.read(prog, INSTRUCTION_BYTES * 2))
        # An unknown opcode as the second instruction.
        dev.write(prog + INSTRUCTION_BYTES, bytes([0xEE]) + bytes(INSTRUCTION_BYTES - 1))
        with pytest.raises(DeviceError) as e:
            acc.forward([3], cache)
        assert e.value.code is ErrorCode.ILLEGAL_INSTRUCTION
        assert e.value.csrs["error_pc"] == prog + INSTRUCTION_BYTES
        # An EMBED whose table lies beyond DRAM.
        dev.write(prog + INSTRUCTION_BYTES, encode(Opcode.EMBED, table=dev.dram_bytes + 64,
                                                   rows=weights.config.vocab_size, stride=128))
        with pytest.raises(DeviceError) as e:
            acc.forward([3], cache)
        assert e.value.code is ErrorCode.BAD_ADDRESS
        # The program restored: the same device runs correctly again.
        dev.write(prog, good)
        ref = IntegerModel(weights)
        np.testing.assert_array_equal(acc.forward([3, 4], cache, all_logits=True),
                                      ref.forward(np.array([3, 4]), ref.new_cache(4)))
    finally:
        _close(acc)


def test_layer_group_scheduler_on_rtl_equals_isa(tmp_path):
    from firmware.scheduler import Scheduler

    weights = load_checkpoint(make_checkpoint(tmp_path / "lg", "silu-mha", layers=3, seed=5))
    rng = np.random.default_rng(8)
    specs = [(list(rng.integers(2, 280, 4)), 5), (list(rng.integers(2, 280, 30)), 3)]
    results = {}
    for device in ("isa", "verilator"):
        acc = Accelerator(weights, HW, device, max_context=64, kv_positions=3 * 32)
        try:
            sched = Scheduler(acc, policy="layer-group", token_budget=3)
            sid = sched.submit(*specs[0])
            list(sched.step())
            sched.submit(*specs[1])
            rep = sched.run_until_done()
        finally:
            _close(acc)
        results[device] = ([d["tokens"] for d in rep["sessions"]],
                           [(r["n_tokens"], r["pos"], r["layers"]) for r in acc.run_log])
        assert sched.sessions[sid].tokens and all(len(t) for t in results[device][0])
        # Budget: 3 tokens x 3 layers = 9 token-layers: chunks of 9 tokens one layer at a time, shorter chunks
        # through more layers.
        prefills = [r for r in acc.run_log if r["n_tokens"] > 1]
        assert all(r["n_tokens"] * (r["layers"][1] - r["layers"][0]) <= 9 for r in prefills)
        assert {(0, 1), (1, 2), (2, 3)} <= {r["layers"] for r in prefills if r["n_tokens"] == 9}
    assert results["verilator"] == results["isa"]


def _close(acc):
    close = getattr(acc.device, "close", None)
    if close is not None:
        close()
