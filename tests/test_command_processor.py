# amaranth: UnusedElaboratable=no
"""The command processor (Amaranth simulator): it fetches a compiled program from a DRAM model, decodes it
with the ISA's layouts and dispatches exactly the assembler's instructions to the units; CSRs, counters and
every error code (illegal instruction, bad address, context overflow, config mismatch, unit fault) end the
run with ``done`` and never hang."""

import dataclasses
import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from firmware.compiler import compile_model
from golden.model_config import MODEL_SHAPES
from golden.model_int import IntegerModel
from golden.weights import random_model
from hw.config import load_hw_config
from hw.control.command_processor import UNIT_OPCODES, CommandProcessor
from hw.control.csr_bus import READ_LATENCY
from hw.csr_map import CSR_BY_NAME, UNITS
from hw.isa import BODIES, INSTRUCTION_BYTES, ErrorCode, Opcode, decode, encode
from hw.memory.dram_model import FastDramModel

CONFIG_ID = 0x5A5A1234


def _program_model():
    cfg = dataclasses.replace(MODEL_SHAPES["bitnet-2b4t"], vocab_size=61, hidden_size=32, intermediate_size=48,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                              max_position_embeddings=64, tie_word_embeddings=False)
    model = IntegerModel(random_model(cfg, seed=2))
    return compile_model(model, load_hw_config("tiny"), max_context=64, max_chunk=8)


COMPILED = _program_model()


def _words(image, data_bits):
    nb = data_bits // 8
    raw = bytes(image) + bytes(-len(image) % nb)
    return [int.from_bytes(raw[i:i + nb], "little") for i in range(0, len(raw), nb)]


def simulate(image, *, data_bits=64, program=None, args=None, dram_size=None, fault_at=None, runs=1, seed=0,
             max_tokens=8, stale=None):
    """Run the processor on ``image``; returns a list per run of (status, csrs, dispatched commands)."""
    program = COMPILED.program if program is None else program
    cp = CommandProcessor(CONFIG_ID, data_bits, lanes=4, max_tokens=max_tokens)
    words = _words(image, data_bits)
    dram = FastDramModel(32, data_bits, depth=len(words) + 4, init=words, latency=6)
    m = Module()
    m.submodules.cp, m.submodules.dram = cp, dram
    wiring.connect(m, cp.axi, dram.axi)
    rng = random.Random(seed)
    args = {"tokens": 0, "n_tokens": 3, "pos": 5, "logits": 0, "all_logits": 1, **(args or {})}
    results = []
    busy_left = {u: 0 for u in UNITS}
    log = []

    async def csr_write(ctx, name, value):
        ctx.set(cp.csr.addr, CSR_BY_NAME[name].index)
        ctx.set(cp.csr.w_data, value)
        ctx.set(cp.csr.w_stb, 1)
        await ctx.tick()
        ctx.set(cp.csr.w_stb, 0)

    async def csr_read(ctx, name):
        ctx.set(cp.csr.addr, CSR_BY_NAME[name].index)
        ctx.set(cp.csr.r_stb, 1)
        await ctx.tick()
        ctx.set(cp.csr.r_stb, 0)
        ctx.set(cp.csr.addr, 0)   # the bus need not hold the address
        await ctx.tick().repeat(READ_LATENCY - 1)
        return ctx.get(cp.csr.r_data)

    async def driver(ctx):
        for run in range(runs):
            log.clear()
            for name, value in args.items():
                await csr_write(ctx, name, value)
            await csr_write(ctx, "program", program)
            await csr_write(ctx, "dram_size", len(image) if dram_size is None else dram_size)
            await csr_write(ctx, "control", 1)
            for _ in range(20000):
                status = await csr_read(ctx, "status")
                if status & 1 and not status & 2:
                    break
            else:
                raise AssertionError("no done")
            csrs = {n: await csr_read(ctx, n) for n in CSR_BY_NAME if CSR_BY_NAME[n].access != "w"}
            setup = {f: int(v) if not hasattr(v, "name") else v for f, v in
                     ((f, ctx.get(cp.setup)[f]) for f in BODIES[Opcode.SETUP].members)}
            results.append((status, csrs, list(log), setup))

    async def units(ctx):
        count = 0
        while True:
            for u in UNITS:
                port = getattr(cp, u)
                ctx.set(port.ready, int(busy_left[u] == 0 and rng.random() < 0.6))
            busy = sum(1 << i for i, u in enumerate(UNITS) if busy_left[u] > 0)
            ctx.set(cp.busy, busy)
            faulting = fault_at is not None and count == fault_at[0] + 1 and any(busy_left.values())
            for u in UNITS:   # the fault shows on every unit's input: only the running unit's may count
                code = fault_at[1] if faulting else ErrorCode.NONE
                if stale is not None and u == stale[0]:
                    code = stale[1]       # a fault left over on this unit's input the whole time
                ctx.set(getattr(cp, f"fault_{u}"), code)
            ports = [getattr(cp, u) for u in UNITS]
            sampled = await ctx.tick().sample(*(p.valid for p in ports), *(p.ready for p in ports),
                                              *(p.payload for p in ports))
            sampled = sampled[2:]
            n = len(UNITS)
            for u in UNITS:
                if busy_left[u]:
                    busy_left[u] -= 1
            for i, u in enumerate(UNITS):
                if sampled[i] and sampled[n + i]:
                    payload = sampled[2 * n + i]
                    log.append((UNIT_OPCODES[u], payload.as_bits() if hasattr(payload, "as_bits") else payload))
                    busy_left[u] = rng.randint(1, 12)
                    count += 1

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.add_testbench(units, background=True)
    sim.run()
    return results


def _fields(op, bits):
    raw = (op.value | (int(bits) << 8)).to_bytes(INSTRUCTION_BYTES, "little")
    return decode(raw)


@pytest.mark.parametrize("data_bits", [64, 512])
def test_compiled_program_is_dispatched_exactly(data_bits):
    (status, csrs, log, setup), = simulate(COMPILED.image, data_bits=data_bits)
    assert status & 1 and (status >> 4) == ErrorCode.NONE.value
    program = COMPILED.instructions
    want = [(op, f) for op, f in program if op not in (Opcode.SETUP, Opcode.END)]
    got = [_fields(op, bits) for op, bits in log]
    assert got == want
    setup_want = program[0][1]
    assert setup == setup_want
    assert csrs["instructions"] == len(program)
    assert csrs["id"] == CONFIG_ID and csrs["error_pc"] == 0
    used = {op for op, _ in program}
    assert all((csrs[f"busy_{u}"] > 0) == (UNIT_OPCODES[u] in used) for u in UNITS)   # LOAD_X, SAVE_X unused
    assert csrs["run_cycles"] > sum(csrs[f"busy_{u}"] for u in UNITS)


def _patched(index, raw):
    image = bytearray(COMPILED.image)
    at = COMPILED.program + index * INSTRUCTION_BYTES
    image[at:at + INSTRUCTION_BYTES] = raw
    return image


def _error(result):
    status, csrs, log, _ = result
    assert status & 1, "done must be set"
    return ErrorCode(status >> 4), csrs, log


def test_illegal_opcode_and_unused_bits_stop_with_the_pc():
    code, csrs, log = _error(simulate(_patched(4, bytes([0xEE]) + bytes(31)))[0])
    assert code is ErrorCode.ILLEGAL_INSTRUCTION and csrs["error_pc"] == COMPILED.program + 4 * INSTRUCTION_BYTES
    assert len(log) == 3           # EMBED, LINEAR, ATTEND went out; nothing after the bad word
    raw = bytearray(encode(Opcode.ATTEND, layer=0))
    raw[20] = 1                    # a set bit beyond ATTEND's body
    code, csrs, log = _error(simulate(_patched(3, bytes(raw)))[0])
    assert code is ErrorCode.ILLEGAL_INSTRUCTION and len(log) == 2


def test_bad_addresses():
    image = COMPILED.image
    bad_field = encode(Opcode.EMBED, table=len(image) + 64, rows=61, stride=128)
    code, csrs, log = _error(simulate(_patched(1, bad_field))[0])
    assert code is ErrorCode.BAD_ADDRESS and csrs["error_pc"] == COMPILED.program + INSTRUCTION_BYTES and not log
    code, csrs, _ = _error(simulate(image, program=len(image) + 4096)[0])
    assert code is ErrorCode.BAD_ADDRESS
    code, _, _ = _error(simulate(image, program=COMPILED.program + 8)[0])  # not instruction-aligned
    assert code is ErrorCode.BAD_ADDRESS


def test_fetch_address_bounds():
    """An instruction must end within dram_size: its last byte at dram_size - 1 is fetched, one byte
    further is BAD_ADDRESS; so is every pc when dram_size is smaller than an instruction."""
    image = bytearray(COMPILED.image)
    last = len(image) - INSTRUCTION_BYTES
    image[last:] = encode(Opcode.END)
    for size, want in ((len(image), ErrorCode.NONE), (len(image) - 1, ErrorCode.BAD_ADDRESS),
                       (INSTRUCTION_BYTES - 1, ErrorCode.BAD_ADDRESS)):
        (status, csrs, _, _), = simulate(image, program=last, dram_size=size)
        assert ErrorCode(status >> 4) is want, size
        if want is ErrorCode.BAD_ADDRESS:
            assert csrs["error_pc"] == last


def test_stash_instructions_are_dispatched_and_their_address_checked():
    """LOAD_X and SAVE_X go to their own units (with busy counters); an ``addr`` at or beyond ``dram_size``
    is BAD_ADDRESS before dispatch."""
    image = COMPILED.image
    a, b = 4096, 8192
    program = _patched(1, encode(Opcode.LOAD_X, addr=a))
    program[COMPILED.program + 2 * INSTRUCTION_BYTES:COMPILED.program + 4 * INSTRUCTION_BYTES] = (
        encode(Opcode.SAVE_X, addr=b) + encode(Opcode.END))
    (status, csrs, log, _), = simulate(program)
    assert ErrorCode(status >> 4) is ErrorCode.NONE and csrs["instructions"] == 4
    assert [_fields(op, bits) for op, bits in log] == [(Opcode.LOAD_X, {"addr": a}), (Opcode.SAVE_X, {"addr": b})]
    assert csrs["busy_load_x"] > 0 and csrs["busy_save_x"] > 0
    assert csrs["busy_embed"] == csrs["busy_linear"] == 0
    for i, op in ((1, Opcode.LOAD_X), (2, Opcode.SAVE_X)):
        bad = bytearray(program)
        at = COMPILED.program + i * INSTRUCTION_BYTES
        bad[at:at + INSTRUCTION_BYTES] = encode(op, addr=len(image) + 64)
        code, csrs, log = _error(simulate(bad)[0])
        assert code is ErrorCode.BAD_ADDRESS and csrs["error_pc"] == at and len(log) == i - 1


def test_setup_checks_context_and_shape():
    code, _, log = _error(simulate(COMPILED.image, args={"pos": 62, "n_tokens": 3})[0])
    assert code is ErrorCode.CONTEXT_OVERFLOW and not log
    code, _, _ = _error(simulate(COMPILED.image, args={"n_tokens": 9})[0])   # more than max_tokens = 8
    assert code is ErrorCode.CONFIG_MISMATCH
    code, _, _ = _error(simulate(COMPILED.image, args={"n_tokens": 0})[0])
    assert code is ErrorCode.CONFIG_MISMATCH
    setup = dict(COMPILED.instructions[0][1], head_dim=6)
    code, _, _ = _error(simulate(_patched(0, encode(Opcode.SETUP, **setup)))[0])
    assert code is ErrorCode.CONFIG_MISMATCH


def test_unit_fault_stops_the_run_and_a_restart_runs_clean():
    first, second = simulate(COMPILED.image, fault_at=(0, ErrorCode.BAD_TOKEN), runs=2)
    code, csrs, log = _error(first)
    assert code is ErrorCode.BAD_TOKEN and len(log) == 1
    assert csrs["error_pc"] == COMPILED.program + INSTRUCTION_BYTES
    code, csrs, log = _error(second)
    assert code is ErrorCode.NONE and len(log) == 5 * 2 + 2   # start cleared the error; the whole program ran


def test_a_unit_fault_counts_only_while_that_unit_runs():
    """A fault held on the LOGITS unit's input from the start stops the run only at the LOGITS
    instruction: every earlier instruction went to its unit."""
    (status, csrs, log, _), = simulate(COMPILED.image, stale=("logits", ErrorCode.CONFIG_MISMATCH))
    assert ErrorCode(status >> 4) is ErrorCode.CONFIG_MISMATCH
    logits_at = next(i for i, (op, _) in enumerate(COMPILED.instructions) if op is Opcode.LOGITS)
    assert csrs["error_pc"] == COMPILED.program + logits_at * INSTRUCTION_BYTES
    assert len(log) == sum(op not in (Opcode.SETUP, Opcode.END) for op, _ in COMPILED.instructions)


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="power of two"):
        CommandProcessor(0, 96, lanes=4, max_tokens=8)
    with pytest.raises(ValueError, match="lanes"):
        CommandProcessor(0, 64, lanes=3, max_tokens=8)
    with pytest.raises(ValueError):
        CommandProcessor(1 << 32, 64, lanes=4, max_tokens=8)


def test_control_behind_axi_lite_cocotb(tmp_path):
    """Verilator: the processor behind its AXI4-Lite CSR slave, driven by cocotbext-axi's AxiLiteMaster,
    fetching a compiled program from an AxiRamRead; a corrupted instruction and the clean restart."""
    import json

    from sim import build_component, run_cocotb
    from sim.testbenches import TESTBENCH_DIR
    from sim.testbenches.control_harness import ControlHarness

    dut = ControlHarness(CONFIG_ID, 64, busy_cycles=7)
    build = build_component(dut, "control_harness")
    units = sum(op not in (Opcode.SETUP, Opcode.END) for op, _ in COMPILED.instructions)
    params = {"image": bytes(COMPILED.image).hex(), "program": COMPILED.program,
              "n_instructions": len(COMPILED.instructions), "units": units, "busy_cycles": 7, "bad_at": 5,
              "config_id": CONFIG_ID}
    res = run_cocotb(build, "tb_control", test_dir=TESTBENCH_DIR, extra_env={"CONTROL_PARAMS": json.dumps(params)},
                     seed=3, run_dir=tmp_path / "run", timeout_s=600)
    assert len(res.passed) == 1, res
