"""The ``verilator`` device (co-simulation bridge) on the stand-in top (``sim/testbenches/device_standin.py``):
DRAM through the backdoor ports, CSRs over AXI4-Lite, runs with ``irq``, errors, the watchdog, the
simulator's life cycle. One Verilator build of the ``tiny`` config (cached), one long-lived simulator."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from firmware.device import DEVICES, DeviceError
from firmware.verilator_device import VerilatorDevice
from hw.config import load_hw_config
from hw.csr_map import STATUS_BUSY, STATUS_DONE, STATUS_ERROR_SHIFT
from hw.isa import INSTRUCTION_BYTES, Epilogue, ErrorCode, Opcode, Source, encode
from sim.testbenches.device_standin import HANG_LAYER, DeviceStandin, logits_pattern
from sim.toolchain import fst_supported

HW = load_hw_config("tiny")
DRAM = 100_000
PROGRAM = 0x1000
LOGITS = 0x2000
ROWS = 13


def _setup():
    return encode(Opcode.SETUP, hidden=32, layers=1, heads=4, kv_heads=2, head_dim=8, max_context=64, kv_base=0x3000,
                  rope=0x4000, score_m=1000, score_s=10)


def _logits():
    return encode(Opcode.LOGITS, params=0x5000, weights=0x6000, row_scales=0x7000, k=32, rows=ROWS, bits=4)


def _linear(layer):
    return encode(Opcode.LINEAR, epilogue=Epilogue.RESIDUAL, source=Source.RESIDUAL, layer=layer, weights=0x6000,
                  params=0x5000, k=32, rows=16, bound0=0, bound1=0)


def _program(*instructions):
    return b"".join(instructions)


def _load(dev, program, **args):
    dev.write(PROGRAM, program)
    dev.write_csr("program", PROGRAM)
    for name, value in {"tokens": 0x100, "n_tokens": 1, "pos": 0, "logits": LOGITS, "all_logits": 0,
                        **args}.items():
        dev.write_csr(name, value)


@pytest.fixture(scope="module")
def dev():
    with VerilatorDevice(HW, DRAM, top_factory=DeviceStandin, timeout_cycles=20_000, progress=False) as d:
        yield d


def test_registered_lazily():
    assert "verilator" in DEVICES
    code = "import sys, firmware.device; assert 'cocotb' not in sys.modules and 'sim.build' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_id_is_the_config_hash(dev):
    assert dev.read_csr("id") == HW.config_hash
    dev.check_id()
    assert dev.pid is not None and dev.pid == dev.sim_pid
    lo = dev.read_csr("cycles_lo")
    assert dev.read_csr("cycles_lo") > lo > 0       # the RTL's free-running counter


def test_dram_round_trip_with_unaligned_ranges(dev):
    rng = np.random.default_rng(1)
    shadow = bytearray(dev.read(0, 512))
    for addr, n in [(0, 64), (3, 5), (13, 1), (7, 100), (200, 8), (255, 3), (301, 17), (64, 0), (500, 12)]:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        dev.write(addr, data)
        shadow[addr:addr + n] = data
        assert dev.read(0, 512) == bytes(shadow), (addr, n)
    for addr, n in [(1, 1), (5, 9), (499, 13)]:
        assert dev.read(addr, n) == bytes(shadow[addr:addr + n])
    # The very end of the device's DRAM, and beyond it.
    dev.write(DRAM - 5, b"\x01\x02\x03\x04\x05")
    assert dev.read(DRAM - 7, 7) == b"\x00\x00\x01\x02\x03\x04\x05"
    with pytest.raises(DeviceError, match="outside"):
        dev.write(DRAM - 2, b"abc")
    with pytest.raises(DeviceError, match="outside"):
        dev.read(DRAM, 1)


def test_program_runs_and_writes_through_axi(dev):
    pid = dev.pid
    dev.write(LOGITS, bytes(64))
    _load(dev, _program(_setup(), _logits(), encode(Opcode.END)))
    dev.run()
    assert dev.last_run["timed_out"] is None and 0 < dev.last_run["cycles"] < 2000
    state = dev.csr_state()
    assert state["status"] & STATUS_DONE and not state["status"] & STATUS_BUSY
    assert state["status"] >> STATUS_ERROR_SHIFT == ErrorCode.NONE.value
    assert state["instructions"] == 3 and state["busy_logits"] > 0
    assert 0 < state["run_cycles"] <= dev.last_run["cycles"]
    want = logits_pattern(ROWS, HW.dram.data_bits)
    assert dev.read(LOGITS, len(want)) == want
    assert dev.read(LOGITS + len(want), 8) == bytes(8)          # nothing beyond the padded row
    # A second run, on the same simulator process.
    dev.write(LOGITS, bytes(64))
    dev.run()
    assert dev.read(LOGITS, len(want)) == want
    assert dev.pid == pid


def test_illegal_instruction_then_a_clean_run(dev):
    pid = dev.pid
    good = _program(_setup(), _logits(), encode(Opcode.END))
    bad = bytearray(good)
    bad[INSTRUCTION_BYTES] = 0xEE
    _load(dev, bytes(bad))
    with pytest.raises(DeviceError) as info:
        dev.run()
    assert info.value.code is ErrorCode.ILLEGAL_INSTRUCTION
    assert info.value.csrs["error_pc"] == PROGRAM + INSTRUCTION_BYTES
    assert "ILLEGAL_INSTRUCTION" in str(info.value)
    _load(dev, good)
    dev.run()
    assert dev.read_csr("status") >> STATUS_ERROR_SHIFT == ErrorCode.NONE.value
    assert dev.pid == pid


def test_watchdog_fires_and_the_device_stays_usable(dev):
    pid = dev.pid
    _load(dev, _program(_setup(), _linear(HANG_LAYER), encode(Opcode.END)))
    start = time.monotonic()
    with pytest.raises(DeviceError, match=r"run did not finish within 5000 cycles; last CSR state: .*status=0x2") as info:
        dev.run(max_cycles=5000)
    assert time.monotonic() - start < 30
    assert info.value.code is None and info.value.csrs["status"] & STATUS_BUSY
    assert info.value.csrs["busy_linear"] > 4000
    # The design was reset, the CSRs written again: a good program runs.
    assert dev.read_csr("program") == PROGRAM and dev.read_csr("logits") == LOGITS
    _load(dev, _program(_setup(), _linear(3), _logits(), encode(Opcode.END)))
    dev.run()
    assert dev.read_csr("instructions") == 4
    # The default budget (timeout_cycles) applies too, and so does a wall-clock limit.
    _load(dev, _program(_setup(), _linear(HANG_LAYER), encode(Opcode.END)))
    with pytest.raises(DeviceError, match="within 20000 cycles"):
        dev.run()
    start = time.monotonic()
    with pytest.raises(DeviceError, match=r"within 0.3 s of wall time \(\d+ cycles\)"):
        dev.run(timeout_s=0.3, max_cycles=10**9)
    assert time.monotonic() - start < 10
    assert dev.pid == pid


def test_a_dead_simulator_is_an_error_not_a_hang():
    d = VerilatorDevice(HW, DRAM, top_factory=DeviceStandin, progress=False)
    pid = d.pid
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(DeviceError, match="exited|lost the connection") as info:
        d.read_csr("id")
    assert "simulator log" in str(info.value)
    with pytest.raises(DeviceError, match="closed"):
        d.read(0, 4)
    d.close()


def test_close_stops_the_simulator():
    d = VerilatorDevice(HW, DRAM, top_factory=DeviceStandin, progress=False)
    pid = d.pid
    assert d.read_csr("id") == HW.config_hash
    d.close()
    assert d.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    d.close()       # idempotent


def test_the_simulator_ends_with_the_driver_process():
    """A driver that exits without ``close()`` (the finaliser stops the simulator), and one that is killed (the
    simulator sees the socket close and exits)."""
    code = ("import sys; from hw.config import load_hw_config; from firmware.verilator_device import VerilatorDevice;"
            "from sim.testbenches.device_standin import DeviceStandin;"
            "d = VerilatorDevice(load_hw_config('tiny'), 100_000, top_factory=DeviceStandin, progress=False);"
            "print(d.pid, flush=True); d.read_csr('id');"
            "sys.stdin.readline() if sys.argv[1] == 'wait' else None")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for mode in ("exit", "wait"):
        proc = subprocess.Popen([sys.executable, "-c", code, mode], cwd=root, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        pid = int(proc.stdout.readline())
        if mode == "wait":
            proc.kill()
        proc.wait(timeout=60)
        for _ in range(100):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                break
            if state == "Z":        # exited; its parent is gone, so init reaps it (or not, in some containers)
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"the simulator (pid {pid}) outlived its driver ({mode})")


def test_waves_record_a_trace():
    with VerilatorDevice(HW, DRAM, top_factory=DeviceStandin, waves=True, progress=False) as d:
        d.write_csr("pos", 5)
        assert d.read_csr("pos") == 5
        path = d.waves_path
    assert path is not None and path.is_file() and path.stat().st_size > 0
    assert path.suffix == (".fst" if fst_supported() else ".vcd")


def test_dram_model_write_slave():
    """``FastDramModel(writable=True)`` (Amaranth simulator): byte strobes, B per burst with its ID after
    ``write_latency``, DECERR beyond the memory, the write bandwidth, the peek port and the wlast check."""
    from amaranth.sim import Simulator

    from hw.memory.axi import AxiResp
    from hw.memory.dram_model import FastDramModel

    dram = FastDramModel(32, 64, depth=64, latency=5, write_latency=3, write_bytes_per_cycle=4, id_bits=2,
                         writable=True, peekable=True, loadable=True, init=[0x1111111111111111] * 64)
    full = (1 << 64) - 1
    # (byte address, [(data, strb)], id)
    bursts = [(0x00, [(0xA0 + i, 0xFF) for i in range(4)], 1),
              (0x40, [(0x0102030405060708, 0x0F), (0x1112131415161718, 0xF0)], 2),
              (0x200, [(0xDEAD, 0xFF)], 3),                       # word 64: beyond the memory
              (0x20, [(full, 0x81)], 0)]
    beats = [(d, s, i == len(b) - 1) for _, b, _ in bursts for i, (d, s) in enumerate(b)]
    log = {"w": [], "b": []}
    words = {}

    async def bench(ctx):
        axi = dram.axi_wr
        ctx.set(axi.bready, 1)
        aw, w, cycle = 0, 0, 0
        while len(log["b"]) < len(bursts) and cycle < 200:
            if aw < len(bursts):
                addr, b, ident = bursts[aw]
                ctx.set(axi.awvalid, 1)
                ctx.set(axi.awaddr, addr)
                ctx.set(axi.awlen, len(b) - 1)
                ctx.set(axi.awsize, 3)
                ctx.set(axi.awburst, 1)
                ctx.set(axi.awid, ident)
            else:
                ctx.set(axi.awvalid, 0)
            if w < len(beats):
                d, s, last = beats[w]
                ctx.set(axi.wvalid, 1)
                ctx.set(axi.wdata, d)
                ctx.set(axi.wstrb, s)
                ctx.set(axi.wlast, last)
            else:
                ctx.set(axi.wvalid, 0)
            aw_fire = ctx.get(axi.awvalid) and ctx.get(axi.awready)
            w_fire = ctx.get(axi.wvalid) and ctx.get(axi.wready)
            if ctx.get(axi.bvalid):
                log["b"].append((cycle, ctx.get(axi.bid), ctx.get(axi.bresp)))
            if w_fire:
                log["w"].append(cycle)
            await ctx.tick()
            aw += aw_fire
            w += w_fire
            cycle += 1
        for a in range(12):
            ctx.set(dram.peek.addr, a)
            words[a] = ctx.get(dram.peek.data)
        assert not ctx.get(dram.violation)
        # A burst whose wlast comes early is a violation.
        ctx.set(axi.awvalid, 1)
        ctx.set(axi.awaddr, 0)
        ctx.set(axi.awlen, 1)
        await ctx.tick()
        ctx.set(axi.awvalid, 0)
        ctx.set(axi.wvalid, 1)
        ctx.set(axi.wlast, 1)
        for _ in range(4):
            await ctx.tick()
        ctx.set(axi.wvalid, 0)
        await ctx.tick()
        log["violation"] = ctx.get(dram.violation)

    sim = Simulator(dram)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()

    old = 0x1111111111111111
    assert [words[a] for a in range(4)] == [0xA0, 0xA1, 0xA2, 0xA3]
    assert words[4] == 0xFF111111111111FF                           # strobes 0x81: bytes 0 and 7
    assert words[8] == 0x1111111105060708                           # low four bytes only
    assert words[9] == 0x1112131411111111                           # high four bytes only
    assert [words[a] for a in (5, 6, 7, 10, 11)] == [old] * 5
    assert [(bid, resp) for _, bid, resp in log["b"]] == [(1, AxiResp.OKAY), (2, AxiResp.OKAY), (3, AxiResp.DECERR),
                                                         (0, AxiResp.OKAY)]
    # Half the bus width per cycle: no two beats in consecutive cycles.
    assert all(b - a >= 2 for a, b in zip(log["w"], log["w"][1:]))
    # B no earlier than write_latency cycles after the burst's last beat.
    last_beats = [c for c, (_, _, last) in zip(log["w"], beats) if last]
    assert all(b[0] >= lb + 3 for b, lb in zip(log["b"], last_beats))
    assert log["violation"], log


@pytest.mark.slow
def test_real_top_equals_the_isa_device():
    """``hw.top.TrilliumTop`` (the default top) on Verilator through the driver: the same logits as the ``isa``
    device, bit for bit, for a prefill chunk and a decode step (a Verilator build of a few minutes)."""
    import dataclasses

    from firmware.accelerator import Accelerator
    from golden.model_config import MODEL_SHAPES
    from golden.weights import random_model

    cfg = dataclasses.replace(MODEL_SHAPES["bitnet-2b4t"], vocab_size=61, hidden_size=32, intermediate_size=48,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                              max_position_embeddings=64, tie_word_embeddings=False)
    weights = random_model(cfg, seed=2)
    out = {}
    for device in ("isa", "verilator"):
        acc = Accelerator(weights, HW, device, max_context=64)
        try:
            cache = acc.new_cache(64)
            out[device] = (acc.forward([3, 17, 5], cache, all_logits=True), acc.forward([7], cache))
        finally:
            if device == "verilator":
                acc.device.close()
    for got, want in zip(out["verilator"], out["isa"]):
        assert np.array_equal(got, want)
