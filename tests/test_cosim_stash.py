"""Co-simulation of the residual stash (``LOAD_X`` / ``SAVE_X``) on the accelerator's RTL (``verilator``
device, tiny config) against the ISA simulator (``isa`` device), bit for bit.

A 2-layer model is prefilled as two layer groups, with programs assembled by hand from the compiled
instructions:

* run 1: ``SETUP, EMBED, <layer 0>, SAVE_X A, END``;
* run 2: ``SETUP, LOAD_X A, <layer 1>, SAVE_X B, LOGITS, END``.

The stashes at ``A`` and ``B``, the KV cache and the logits equal the ISA simulator's, and the logits equal
the integer model's whole-model prefill. A misaligned ``SAVE_X`` and ``LOAD_X`` stop the run with
``BAD_ADDRESS`` at their instruction, and the device then runs the groups correctly again. One Verilator
build (the cached tiny top level that ``tests/test_cosim.py`` uses too), one simulator process.
"""

import numpy as np
import pytest
from checkpoints import make_checkpoint

from firmware.checkpoint import load_checkpoint
from firmware.compiler import compile_model
from firmware.device import DeviceError, make_device
from golden.model_int import IntegerModel
from hw.config import load_hw_config
from hw.dram_format import x_stash_stride
from hw.isa import INSTRUCTION_BYTES, ErrorCode, Opcode, encode
from hw.units.stash import stash_alignment

HW = load_hw_config("tiny")
N_TOKENS = 7


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    weights = load_checkpoint(make_checkpoint(tmp_path_factory.mktemp("ckpt") / "m", "relu2-gqa", layers=2, seed=5))
    model = IntegerModel(weights)
    return model, compile_model(model, HW, max_context=64, max_chunk=8)


def _assemble(*instructions):
    return b"".join(encode(op, **f) for op, f in instructions) + encode(Opcode.END)


class _Session:
    """The compiled image on a device, with room for two stashes and the hand-made programs."""

    def __init__(self, device, cm):
        lanes = HW.tlmm.lanes
        self.cm = cm
        stash = cm.max_chunk * x_stash_stride(cm.instructions[0][1]["hidden"], lanes)
        align = max(64, stash_alignment(HW.dram.bus_bits, lanes))
        self.dram_bytes = -(-len(cm.image) // align) * align + 2 * stash + 4 * align + 4096
        self.dev = dev = make_device(device, HW, self.dram_bytes)
        dev.check_id()
        assert dev.allocate(len(cm.image), name="image") == 0
        self.a = dev.allocate(stash, align=align, name="stash_a")
        self.b = dev.allocate(stash, align=align, name="stash_b")
        self.stash_bytes = N_TOKENS * x_stash_stride(cm.instructions[0][1]["hidden"], lanes)
        self.prog = dev.allocate(2048, align=align, name="programs")
        dev.write(0, bytes(cm.image))
        dev.write(self.a, bytes(range(256)) * (stash // 256) + bytes(stash % 256))   # not zero: LOAD_X must not care
        self.dram_size = dev.dram_bytes

    def run(self, program, tokens):
        cm, dev = self.cm, self.dev
        dev.write(self.prog, program)
        dev.write(cm.tokens_addr, np.asarray(tokens, "<i4").tobytes())
        for name, value in (("program", self.prog), ("dram_size", self.dram_size), ("tokens", cm.tokens_addr),
                            ("n_tokens", len(tokens)), ("pos", 0), ("logits", cm.logits_addr), ("all_logits", 1)):
            dev.write_csr(name, value)
        dev.run()

    def logits(self, n):
        cm = self.cm
        raw = np.frombuffer(self.dev.read(cm.logits_addr, 4 * n * cm.logits_stride), "<i4")
        return raw.reshape(n, cm.logits_stride)[:, :cm.vocab].astype(np.int64)

    def close(self):
        close = getattr(self.dev, "close", None)
        if close is not None:
            close()


def _programs(cm, a, b):
    ins = cm.instructions
    setup, embed = ins[0], ins[1]
    logits = next(i for i in ins if i[0] is Opcode.LOGITS)

    def layer(k):
        return [(op, f) for op, f in ins if op in (Opcode.LINEAR, Opcode.ATTEND) and f["layer"] == k]

    group0 = _assemble(setup, embed, *layer(0), (Opcode.SAVE_X, dict(addr=a)))
    group1 = _assemble(setup, (Opcode.LOAD_X, dict(addr=a)), *layer(1), (Opcode.SAVE_X, dict(addr=b)), logits)
    return group0, group1


def _layer_groups(s, tokens):
    """Both groups on ``s``: the stashes, the KV cache and the logits."""
    group0, group1 = _programs(s.cm, s.a, s.b)
    s.run(group0, tokens)
    stash_a = s.dev.read(s.a, s.stash_bytes)
    s.run(group1, tokens)
    kv = s.cm.regions["kv_cache"]
    return dict(a=stash_a, a_after=s.dev.read(s.a, s.stash_bytes), b=s.dev.read(s.b, s.stash_bytes),
                kv=s.dev.read(kv.addr, kv.size), logits=s.logits(len(tokens)))


def _faults(s, tokens):
    """A misaligned SAVE_X, then a misaligned LOAD_X: BAD_ADDRESS at the instruction; returns the codes and
    error_pc offsets."""
    cm, ins = s.cm, s.cm.instructions
    align = stash_alignment(HW.dram.bus_bits, HW.tlmm.lanes)
    out = []
    for program, at in ((_assemble(ins[0], ins[1], (Opcode.SAVE_X, dict(addr=s.b + 4))), 2),
                        (_assemble(ins[0], (Opcode.LOAD_X, dict(addr=s.a + align // 2))), 1)):
        with pytest.raises(DeviceError) as e:
            s.run(program, tokens)
        out.append((e.value.code, e.value.csrs["error_pc"] - s.prog, at * INSTRUCTION_BYTES))
    return out


def test_layer_groups_on_the_rtl_equal_the_isa_simulator(model):
    model, cm = model
    tokens = np.random.default_rng(8).integers(0, cm.vocab, N_TOKENS)
    want_logits = model.forward(tokens, model.new_cache(N_TOKENS))
    results = {}
    for device in ("isa", "verilator"):
        s = _Session(device, cm)
        try:
            first = _layer_groups(s, tokens)
            faults = _faults(s, tokens)
            again = _layer_groups(s, tokens)
            counters = {n: s.dev.read_csr(n) for n in ("busy_load_x", "busy_save_x", "busy_embed",
                                                       "instructions")}
        finally:
            s.close()
        results[device] = (first, faults, again, counters)
    isa, rtl = results["isa"], results["verilator"]
    for i, when in ((0, "first"), (2, "again")):
        for name in ("a", "a_after", "b", "kv"):
            assert rtl[i][name] == isa[i][name], f"{name} differs ({when})"
        np.testing.assert_array_equal(rtl[i]["logits"], isa[i]["logits"], err_msg=when)
        # The layer groups give the whole model's logits.
        np.testing.assert_array_equal(rtl[i]["logits"], want_logits, err_msg=when)
    # SAVE_X wrote a stash (not the pattern there before), LOAD_X left the one it read alone.
    assert rtl[0]["a_after"] == rtl[0]["a"] and rtl[0]["a"] != rtl[0]["b"] and any(rtl[0]["b"])
    for faults in (isa[1], rtl[1]):
        assert [(code, pc) for code, pc, _ in faults] == [(ErrorCode.BAD_ADDRESS, at) for _, _, at in faults]
    # The RTL's per-unit counters of the last run (group 1): LOAD_X and SAVE_X were busy, EMBED not.
    c = rtl[3]
    assert c["busy_load_x"] > 0 and c["busy_save_x"] > 0 and c["busy_embed"] == 0
    assert c["instructions"] == len(_programs(cm, 0, 0)[1]) // INSTRUCTION_BYTES
