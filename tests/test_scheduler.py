"""Sessions on one accelerator (``isa`` device, ``tiny`` config): the KV-cache manager, per-session KV
regions and programs, isolation of sessions when a run fails, the chunked-prefill scheduler (tokens equal
single-session greedy runs on the golden backend; decodes never wait behind a long prefill), bad input, and
``trillium serve``."""

import dataclasses
import json

import numpy as np
import pytest

from checkpoints import make_checkpoint

from firmware.accelerator import Accelerator
from firmware.checkpoint import load_checkpoint
from firmware.cli import main
from firmware.compiler import CompileError, DramCapacityError, compile_model, group_program, session_program
from firmware.device import DeviceError
from firmware.generate import make_backend
from firmware.kv_manager import KvManager, KvMemoryError
from firmware.sampling import SamplingParams, select_token
from firmware.scheduler import Scheduler, serve
from golden.model_int import ContextOverflowError, IntegerModel
from hw.config import load_hw_config
from hw.isa import ErrorCode, Opcode, decode

HW = load_hw_config("tiny")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "relu2-gqa", "relu2-gqa")


@pytest.fixture(scope="module")
def weights(model_dir):
    return load_checkpoint(model_dir)


def prompt(n, seed):
    return [int(t) for t in np.random.default_rng(seed).integers(2, 280, n)]


# -- the KV-cache manager -------------------------------------------------------------------------------
def test_kv_manager_allocate_free_reuse_fragmentation_exhaustion():
    m = KvManager(0x1000, 10 * 576 + 100, layers=1, kv_heads=1, head_dim=8, bus_bytes=8)
    assert m.block_bytes == 72 * 8 and m.blocks == 10      # a segment: 8 exponent + 64 K/V rows of 8 bytes
    a = m.allocate(40)                      # 2 blocks
    b = m.allocate(32)                      # 1 block
    c = m.allocate(65)                      # 3 blocks
    assert (a.base, a.max_context) == (0x1000, 64)
    assert b.base == a.end and c.base == b.end and c.max_context == 96
    assert m.free_blocks == 4
    m.free(b)                               # a hole of 1 block between a and c
    d = m.allocate(1)
    assert d.base == b.base                 # first fit reuses the hole
    m.free(d)
    # Fragmentation: 1 + 4 blocks free, not contiguous; 5 blocks requested.
    with pytest.raises(KvMemoryError, match=r"fragmented.*needs 5 blocks \(160 positions, 2880 bytes\)"):
        m.allocate(150)
    m.free(a)                               # coalesces with b's hole: 3 blocks at the start
    e = m.allocate(96)
    assert e.base == 0x1000
    m.free(e)
    m.free(c)                               # everything coalesces into one extent
    assert m.free_blocks == 10 and m.largest_free_blocks == 10 and m._free == [(0, 10)]
    f = m.allocate(320)
    with pytest.raises(KvMemoryError, match=r"not enough KV memory.*needs 1 blocks.*0 blocks free"):
        m.allocate(1)
    m.free(f)
    with pytest.raises(KvMemoryError, match="double free"):
        m.free(f)
    with pytest.raises(KvMemoryError, match="positive"):
        m.allocate(0)


def test_session_program_changes_only_setup(weights):
    cm = compile_model(IntegerModel(weights), HW, max_context=64, max_chunk=16)
    raw = session_program(cm, cm.kv.base + cm.kv.total_bytes // 2, 32)
    base = bytes(cm.image[cm.program:cm.program + cm.program_bytes])
    assert raw[32:] == base[32:] and raw[:32] != base[:32]
    op, f = decode(raw[:32])
    assert op is Opcode.SETUP and f["kv_base"] == cm.kv.base + cm.kv.total_bytes // 2 and f["max_context"] == 32
    with pytest.raises(ValueError, match="outside the KV arena"):
        session_program(cm, cm.kv.base + cm.kv.total_bytes // 2 + 8, 64)


# -- sessions are isolated ------------------------------------------------------------------------------
def test_failed_session_never_touches_other_sessions(weights):
    acc = Accelerator(weights, HW, "isa", max_context=64, kv_positions=4 * 32)
    model = IntegerModel(weights)
    sessions = []
    for seed, n in ((1, 20), (2, 9)):              # fill two sessions: prefill, then decode two tokens
        toks = prompt(n, seed)
        cache, ref = acc.new_cache(32), model.new_cache(32)
        logits = acc.forward(np.asarray(toks), cache)
        np.testing.assert_array_equal(logits, model.forward(np.asarray(toks), ref, all_logits=False))
        for _ in range(2):
            t = int(np.argmax(logits[-1]))
            logits = acc.forward(np.asarray([t]), cache)
            np.testing.assert_array_equal(logits, model.forward(np.asarray([t]), ref, all_logits=False))
            toks.append(t)
        sessions.append((cache, ref, int(np.argmax(logits[-1]))))
    a, b = sessions[0][0], sessions[1][0]
    assert a.region.end <= b.region.base and a.program != b.program
    before = {c.session: acc.kv_bytes(c) for c, _, _ in sessions}

    # A third session writes two chunks into its own region, then fails on the device mid-prefill.
    c = acc.new_cache(64)
    c_before = acc.kv_bytes(c)
    acc.run_chunk(prompt(16, 3), c)
    acc.run_chunk(prompt(16, 4), c)
    assert acc.kv_bytes(c) != c_before                                 # it did write its own region
    with pytest.raises(DeviceError) as e:
        acc.run_chunk(prompt(15, 5) + [weights.config.vocab_size + 7], c)
    assert e.value.code is ErrorCode.BAD_TOKEN
    c.length = 60
    with pytest.raises(DeviceError) as e:                              # 60 + 8 > 64: SETUP refuses
        acc.run_chunk(prompt(8, 6), c)
    assert e.value.code is ErrorCode.CONTEXT_OVERFLOW
    for cache, _, _ in sessions:
        assert acc.kv_bytes(cache) == before[cache.session], f"session {cache.session}'s KV region changed"
    # ... and their next decodes still give the integer model's logits.
    for cache, ref, t in sessions:
        np.testing.assert_array_equal(acc.forward(np.asarray([t]), cache),
                                      model.forward(np.asarray([t]), ref, all_logits=False))
    # Freeing the failed session and reusing its (dirty) region gives exact logits again.
    region = c.region
    acc.free(c)
    d, ref = acc.new_cache(50), model.new_cache(50)
    assert d.region.base == region.base
    toks = np.asarray(prompt(37, 7))
    np.testing.assert_array_equal(acc.forward(toks, d, all_logits=True), model.forward(toks, ref))
    with pytest.raises(ValueError, match="freed"):
        acc.forward(np.asarray([2]), c)


# -- the scheduler --------------------------------------------------------------------------------------
def golden_greedy(weights, toks, max_new):
    """A single-session greedy run on the golden backend (Generator's loop on token ids)."""
    be = make_backend("golden", weights)
    cache = be.new_cache(len(toks) + max_new)
    logits = be.forward(np.asarray(toks), cache)[-1]
    out, eos = [], set(weights.config.eos_token_ids)
    for step in range(max_new):
        t = select_token(logits, SamplingParams())
        if t in eos:
            break
        out.append(t)
        if step + 1 < max_new:
            logits = be.forward(np.asarray([t]), cache)[-1]
    return out


def test_scheduler_equals_golden_and_decodes_never_wait(weights):
    specs = [(prompt(5, 11), 12), (prompt(3, 12), 14), (prompt(40, 13), 5), (prompt(9, 14), 8)]
    acc = Accelerator(weights, HW, "isa", max_context=64, kv_positions=5 * 32)
    sched = Scheduler(acc, token_budget=8)
    ids = [sched.submit(p, n) for p, n in specs[:2]]
    events = list(sched.step())                        # both short prompts prefill in step 0
    assert sorted(e.session for e in events) == ids
    ids += [sched.submit(p, n) for p, n in specs[2:]]  # then the long prompt arrives, and one more
    events += list(sched.stream())
    rep = sched.report()
    long_id = ids[2]
    for sid, (p, n) in zip(ids, specs):
        want = golden_greedy(weights, p, n)
        assert sched.sessions[sid].tokens == want, f"session {sid}"
        assert [e.token for e in events if e.session == sid] == want
        assert len(want) >= 2
    long_steps = [r for r in sched.log if any(s == long_id for s, _, _ in r["prefills"])]
    assert len(long_steps) >= 40 // 8                  # the long prompt was spread over several steps
    for r in sched.log:
        assert r["tokens"] <= sched.token_budget or not r["prefills"]
        assert all(n <= acc.compiled.max_chunk for _, _, n in r["prefills"])
        # Every session decoding at a step's start got exactly one token in that step.
        assert sorted(s for s, _ in r["decodes"]) == sorted(r["decoding"])
    assert any(len(r["decoding"]) >= 2 for r in long_steps)
    # On isa the cost is work counts, not cycles; TBT of a decoding session spans at most one step.
    s0 = rep["sessions"][0]
    assert "ttft_cycles" not in s0 and s0["ttft_dram_read_bytes"] > 0 and s0["tbt_macs_mean"] > 0
    assert all(d["tbt_runs_max"] <= 1 + len(specs) + 1 for d in rep["sessions"] if d["tbt_runs_max"])
    assert acc.kv.free_blocks == acc.kv.blocks               # every session's region was returned


def test_a_session_failing_on_the_device_ends_alone(weights):
    acc = Accelerator(weights, HW, "isa", max_context=64, kv_positions=4 * 32)
    sched = Scheduler(acc, token_budget=16)
    specs = [(prompt(6, 31), 6), (prompt(30, 32), 4), (prompt(4, 33), 6)]
    ids = [sched.submit(p, n) for p, n in specs]
    sched.sessions[ids[1]].prompt[20] = weights.config.vocab_size + 3   # slips past submit's check
    sched.run_until_done()
    bad = sched.sessions[ids[1]]
    assert bad.stop_reason == "device_error" and "BAD_TOKEN" in bad.error and bad.tokens == []
    assert bad.cache.freed and acc.kv.free_blocks == acc.kv.blocks
    assert [r.get("error") for r in acc.run_log].count("BAD_TOKEN") == 1
    for sid in (ids[0], ids[2]):
        assert sched.sessions[sid].tokens == golden_greedy(weights, *specs[sid])
    assert sched.report()["sessions"][1]["error"].startswith("run failed: BAD_TOKEN")


def test_serve_streams_and_sampling_matches_single_session(weights):
    acc = Accelerator(weights, HW, "isa", max_context=64, kv_positions=3 * 32)
    got = []
    rep = serve(acc, [prompt(4, 21), prompt(18, 22)], [6, 5], temperature=0.9, top_k=20, seed=3, stop_ids=(),
                token_budget=6, on_token=lambda s, t: got.append((s, t)))
    for d in rep["sessions"]:
        assert [t for s, t in got if s == d["session"]] == d["tokens"]
    # Session 1 alone with the same seed samples the same tokens.
    alone = serve(Accelerator(weights, HW, "isa", max_context=64), [prompt(18, 22)], 5, temperature=0.9,
                  top_k=20, seed=3, stop_ids=())
    assert alone["sessions"][0]["tokens"] == rep["sessions"][1]["tokens"]


# -- bad input ------------------------------------------------------------------------------------------
def test_waiting_sessions_are_admitted_when_room_frees(weights):
    """With wait=True a session that does not fit the KV arena queues, is admitted (in order) when a running
    session ends, and still equals golden."""
    acc = Accelerator(weights, HW, "isa", max_context=64, kv_positions=2 * 32)
    sched = Scheduler(acc, token_budget=8)
    specs = [(prompt(6, 41), 26), (prompt(4, 42), 4), (prompt(5, 43), 3)]   # 32 + 8 + 8 positions
    first = sched.submit(*specs[0])
    queued = [sched.submit(p, n, wait=True) for p, n in specs[1:]]
    assert sched.sessions[queued[0]].state == "prefill"      # one block left: the 8-position session fits
    assert sched.sessions[queued[1]].state == "waiting"      # the arena is full
    sched.run_until_done()
    for sid, (p, n) in zip([first, *queued], specs):
        assert sched.sessions[sid].tokens == golden_greedy(weights, p, n), f"session {sid}"
    waited = sched.report()["sessions"][2]
    assert waited["kv_base"] is not None and waited["ttft_dram_read_bytes"] > 0
    assert acc.kv.free_blocks == acc.kv.blocks
    with pytest.raises(ContextOverflowError):
        sched.submit(prompt(70, 1), 2, wait=True)


def test_bad_input_gives_precise_errors(weights):
    acc = Accelerator(weights, HW, "isa", max_context=64, kv_positions=2 * 32, max_sessions=3)
    sched = Scheduler(acc, token_budget=4)
    with pytest.raises(ContextOverflowError, match="prompt of 70 tokens \\+ 2 new tokens = 72 positions exceeds "
                                                   "the context of 64"):
        sched.submit(prompt(70, 1), 2)
    sched.submit(prompt(10, 1), 30)                 # 40 positions: 2 blocks, the whole arena
    with pytest.raises(KvMemoryError, match=r"not enough KV memory.*8 positions needs 1 blocks.*0 blocks free"):
        sched.submit(prompt(4, 2), 4)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sched.submit([1, 2, 999], 4)
    with pytest.raises(ValueError, match="empty prompt"):
        sched.submit([], 4)
    for bad in (0, -3, 1.5):
        with pytest.raises(ValueError, match="token_budget must be an integer >= 1"):
            Scheduler(acc, token_budget=bad)
    for bad in (0, 3, 1.0):
        with pytest.raises(ValueError, match=r"layer_group must be an integer in 1\.\.2"):
            Scheduler(acc, policy="layer-group", layer_group=bad)
    with pytest.raises(ValueError, match="layer_group applies to policy 'layer-group' only"):
        Scheduler(acc, layer_group=1)
    with pytest.raises(ValueError, match="unknown scheduling policy"):
        Scheduler(acc, policy="fifo")
    # More sessions than program slots.
    acc2 = Accelerator(weights, HW, "isa", max_context=64, kv_positions=4 * 32, max_sessions=2)
    keep = [acc2.new_cache(8), acc2.new_cache(8)]
    with pytest.raises(KvMemoryError, match="all 2 program slots are in use"):
        acc2.new_cache(8)
    acc2.free(keep.pop())
    keep.append(acc2.new_cache(8))                  # a freed slot is reused
    # A model that does not fit the DRAM capacity; and a KV arena that does not.
    small = dataclasses.replace(HW, dram=dataclasses.replace(HW.dram, capacity_mbytes=0))
    with pytest.raises(DramCapacityError, match=r"the model needs 0\.\d+ MiB of DRAM .*the hardware config 'tiny' "
                                                r"has 0\.000 MiB"):
        Accelerator(weights, small, "isa")
    with pytest.raises(DramCapacityError, match=r"KV arena 6[0-9]\.\d+ MiB.*'tiny' has 64\.000 MiB"):
        Accelerator(weights, HW, "isa", max_context=64, kv_positions=32 * 60000)


# -- layer groups -----------------------------------------------------------------------------------------
def test_group_programs(weights):
    """The layer-group programs: EMBED or LOAD_X, the layers' own instructions, SAVE_X or LOGITS (or nothing)."""
    cm = compile_model(IntegerModel(weights), HW, max_context=64, max_chunk=16, program_slots=2)
    stash = cm.stash_address(1)
    assert stash % max(HW.dram.bus_bytes, 4 * HW.tlmm.lanes) == 0 and stash > cm.stash_address(0)

    def ops(raw):
        return [decode(raw[i:i + 32]) for i in range(0, len(raw), 32)]

    full = ops(session_program(cm, cm.kv.base, 64))
    assert cm.layers == 2 and [op for op, _ in full] == [op for op, _ in cm.instructions]
    a = ops(group_program(cm, cm.kv.base, 64, 0, 1, stash))
    b = ops(group_program(cm, cm.kv.base, 64, 1, 2, stash))
    c = ops(group_program(cm, cm.kv.base, 64, 1, 2, stash, logits=False))
    assert [op for op, _ in a] == [Opcode.SETUP, Opcode.EMBED] + [op for op, _ in full[2:7]] + [Opcode.SAVE_X,
                                                                                                Opcode.END]
    assert a[2:7] == full[2:7] and b[2:7] == full[7:12] and a[-2][1] == {"addr": stash}
    assert [op for op, _ in b] == [Opcode.SETUP, Opcode.LOAD_X] + [op for op, _ in full[7:12]] + [Opcode.LOGITS,
                                                                                                 Opcode.END]
    assert b[1][1] == {"addr": stash} and c[-2][0] is Opcode.LINEAR and c[-1][0] is Opcode.END
    for first, last in ((1, 1), (-1, 1), (0, 3), (2, 2)):
        with pytest.raises(CompileError, match="layer group"):
            group_program(cm, cm.kv.base, 64, first, last, stash)


@pytest.mark.parametrize("start", [0, 20])
def test_layer_groups_equal_one_whole_run(weights, start):
    """A chunk run layer by layer (residual stream through the stash) gives the whole-model run's logits and
    KV cache, from the first position and from the middle of a 32-position block."""
    toks = prompt(start + 12, 51)
    accs = [Accelerator(weights, HW, "isa", max_context=64, kv_positions=64, max_sessions=2) for _ in range(2)]
    caches = [a.new_cache(40) for a in accs]
    for a, c in zip(accs, caches):
        if start:
            a.forward(toks[:start], c)
    whole = accs[0].run_chunk(toks[start:], caches[0], all_logits=True)
    assert accs[1].run_chunk(toks[start:], caches[1], layers=(0, 1)) is None
    assert caches[1].length == start                     # the chunk is not done until its last layer
    grouped = accs[1].run_chunk(toks[start:], caches[1], all_logits=True, layers=(1, 2))
    assert np.array_equal(whole, grouped) and caches[1].length == start + 12
    assert accs[0].kv_bytes(caches[0]) == accs[1].kv_bytes(caches[1])
    assert [r["layers"] for r in accs[1].run_log[-2:]] == [(0, 1), (1, 2)]
    assert accs[1].run_log[-2]["work"]["by_opcode"].get("SAVE_X") == 1
    assert accs[1].run_log[-1]["work"]["by_opcode"].get("LOAD_X") == 1
    # The slot holds the whole-model program again for the next decode.
    nxt = [a.forward([5], c) for a, c in zip(accs, caches)]
    assert np.array_equal(*nxt)
    with pytest.raises(ValueError, match="layers must be"):
        accs[1].run_chunk([1], caches[1], layers=(1, 3))


def test_layer_group_scheduler_equals_golden_and_streams_weights_once_per_chunk(weights):
    """policy='layer-group' with a small budget: tokens equal golden, every decoding session gets a token in
    every step, each step's work stays within the budget in token-layers, and the long prompt reads fewer
    DRAM bytes than chunked prefill under the same budget (whole chunks, weights streamed once per chunk)."""
    specs = [(prompt(5, 11), 12), (prompt(3, 12), 14), (prompt(40, 13), 5)]
    reads = {}
    for policy in ("chunked", "layer-group"):
        acc = Accelerator(weights, HW, "isa", max_context=64, kv_positions=4 * 32)
        sched = Scheduler(acc, policy=policy, token_budget=4)
        ids = [sched.submit(p, n) for p, n in specs[:2]]
        list(sched.step())
        ids.append(sched.submit(*specs[2]))
        sched.run_until_done()
        for sid, (p, n) in zip(ids, specs):
            assert sched.sessions[sid].tokens == golden_greedy(weights, p, n), f"{policy} session {sid}"
        L = acc.compiled.layers
        for r in sched.log:
            assert sorted(s for s, _ in r["decodes"]) == sorted(r["decoding"])
            assert r["token_layers"] <= sched.token_budget * L or not r["prefills"]
        long_runs = [r for r in acc.run_log if r["session"] == ids[2] and r["n_tokens"] > 1]
        reads[policy] = sum(r["work"]["dram_read_bytes"] for r in long_runs)
        if policy == "layer-group":
            assert {r["n_tokens"] for r in long_runs} == {8}       # 4 tokens x 2 layers of budget: chunks of 8
            assert {r["layers"] for r in long_runs} == {(0, 1), (1, 2)}
            assert sched.report()["policy"] == "layer-group"
        else:
            assert max(r["n_tokens"] for r in long_runs) <= 4
        # Only the prompt's last chunk runs the LM head.
        assert sum(r["logits"] for r in long_runs) == 1
        assert acc.kv.free_blocks == acc.kv.blocks
    print("long prompt DRAM bytes read:", reads)
    assert reads["layer-group"] < 0.8 * reads["chunked"], reads


def test_dropped_session_returns_its_region(weights):
    acc = Accelerator(weights, HW, "isa", max_context=64)
    for _ in range(3):                              # each cache is dropped; its region comes back
        cache = acc.new_cache(64)
        acc.forward(np.asarray(prompt(3, 1)), cache)
        del cache
    assert acc.kv.free_blocks == acc.kv.blocks


def test_cli_serve(capsys, model_dir):
    args = ["serve", "--model", str(model_dir), "--prompt", "def add", "--prompt", "class Point:\n    x = 0",
            "--max-new-tokens", "4", "--token-budget", "6"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[s0]" in out and "[s1]" in out and "TTFT DRAM B" in out and "policy chunked" in out
    assert main(args + ["--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [d["session"] for d in rep["sessions"]] == [0, 1] and rep["token_budget"] == 6
    assert main(args[:-2] + ["--token-budget", "0"]) == 2
    assert "--token-budget must be at least 1" in capsys.readouterr().err
    assert main(args + ["--policy", "layer-group", "--layer-group", "1", "--json"]) == 0
    lg = json.loads(capsys.readouterr().out)
    assert lg["policy"] == "layer-group" and lg["layer_group"] == 1
    assert [d["tokens"] for d in lg["sessions"]] == [d["tokens"] for d in rep["sessions"]]
    assert main(args + ["--layer-group", "1"]) == 2
    assert "--layer-group applies to --policy layer-group only" in capsys.readouterr().err
    assert main(args + ["--policy", "layer-group", "--layer-group", "5"]) == 2
    assert "layer_group must be an integer in 1..2" in capsys.readouterr().err
