# amaranth: UnusedElaboratable=no
"""The AXI4 burst write master: Amaranth-simulator unit test against a small slave model, and Verilator
(cocotb) against cocotbext-axi's AXI RAM with random AW/W/B pauses and a per-cycle protocol checker."""

import json
import random

import pytest
from amaranth.sim import Simulator

from hw.memory.axi_write import AxiBurstWriter, AxiWriteSignature
from sim import build_component, run_cocotb
from sim.testbenches import TESTBENCH_DIR

TB = "tb_memory_axi_write"

WRITERS = {
    # 64-bit bus, 16-beat bursts: many bursts per command and many 4 KiB cuts.
    "w64-b16": dict(addr_bits=32, data_bits=64, max_burst=16, max_outstanding=4, beats_bits=12),
    # 32-bit bus, full-length AXI4 bursts, two responses outstanding.
    "w32-b256": dict(addr_bits=32, data_bits=32, max_burst=256, max_outstanding=2, beats_bits=12),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_axi_writer_cocotb(name, tmp_path):
    p = WRITERS[name]
    dut = AxiBurstWriter(p["addr_bits"], p["data_bits"], max_burst=p["max_burst"],
                         max_outstanding=p["max_outstanding"], beats_bits=p["beats_bits"])
    build = build_component(dut, "axi_burst_writer")
    res = run_cocotb(build, TB, test_dir=TESTBENCH_DIR, extra_env={"AXI_PARAMS": json.dumps(p)}, seed=13,
                     run_dir=tmp_path / "run", timeout_s=600)
    assert len(res.passed) == 3, res


def test_axi_writer_parameters():
    with pytest.raises(ValueError, match="power of two"):
        AxiWriteSignature(32, 96)
    with pytest.raises(ValueError, match="max_burst"):
        AxiBurstWriter(32, 64, max_burst=257)
    with pytest.raises(ValueError, match="max_outstanding"):
        AxiBurstWriter(32, 64, max_outstanding=0)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("strobes", [False, True])
def test_axi_writer_against_slave_model(seed, strobes):
    """Amaranth simulator: a slave that accepts AW and W at random (W independently of AW) and answers
    B after a random delay, some with SLVERR; memory contents (byte by byte, with random byte strobes
    when the writer carries them), burst cuts, wlast and the outstanding limit are checked."""
    rng = random.Random(seed)
    dut = AxiBurstWriter(32, 64, max_burst=8, max_outstanding=3, beats_bits=12, strobes=strobes)
    axi = dut.axi
    cmds = [(4096 - 8 * 3, 10), (0, 0), (8 * 40, 1), (8 * 100, 25), (8 * 1000, 9)]
    words = [rng.getrandbits(64) for _ in range(sum(n for _, n in cmds))]
    strbs = [rng.getrandbits(8) if strobes else 0xFF for _ in words]
    want = {}
    k = 0
    for addr, n in cmds:
        for b in range(n):
            for byte in range(8):
                if strbs[k] >> byte & 1:
                    want[addr + 8 * b + byte] = (words[k] >> (8 * byte)) & 0xFF
            k += 1
    mem, bursts, state = {}, [], {"max_out": 0, "err_seen": False}

    async def bench(ctx):
        i = j = 0
        aws, beat, responses, outstanding = [], 0, [], 0
        for cycle in range(3000):
            if i < len(cmds):
                ctx.set(dut.cmd.payload, dict(zip(("addr", "beats"), cmds[i])))
            ctx.set(dut.cmd.valid, int(i < len(cmds)))
            if j < len(words) and (ctx.get(dut.data.valid) or rng.random() < 0.7):
                ctx.set(dut.data.payload, {"data": words[j], "strb": strbs[j]} if strobes else words[j])
                ctx.set(dut.data.valid, 1)
            else:
                ctx.set(dut.data.valid, 0)
            ctx.set(axi.awready, int(rng.random() < 0.6))
            ctx.set(axi.wready, int(rng.random() < 0.6))
            b_now = bool(responses) and responses[0] <= cycle
            ctx.set(axi.bvalid, int(b_now))
            # Every fourth response is an error, once the first three are through.
            ctx.set(axi.bresp, 2 if b_now and len(bursts) > 3 and len(bursts) % 4 == 0 else 0)
            s = await ctx.tick().sample(dut.cmd.valid, dut.cmd.ready, dut.data.valid, dut.data.ready,
                                        axi.awvalid, axi.awready, axi.awaddr, axi.awlen, axi.wvalid, axi.wready,
                                        axi.wdata, axi.wlast, axi.wstrb, axi.bvalid, axi.bready, axi.bresp)
            (_, _, cv, cr, dv, dr, awv, awr, awaddr, awlen, wv, wr, wdata, wlast, wstrb, bv, br, bresp) = s
            if cv and cr:
                i += 1
            if dv and dr:
                j += 1
            if awv and awr:
                bursts.append((awaddr, awlen + 1))
                aws.append([awaddr, awlen + 1])
                outstanding += 1
            if wv and wr:
                assert aws, "W beat before its address"
                assert strobes or wstrb == 0xFF
                addr, n = aws[0]
                for byte in range(8):
                    if wstrb >> byte & 1:
                        mem[addr + 8 * beat + byte] = (wdata >> (8 * byte)) & 0xFF
                assert wlast == int(beat == n - 1)
                beat += 1
                if wlast:
                    aws.pop(0)
                    beat = 0
                    responses.append(cycle + rng.randint(1, 12))
            if bv:
                assert br
                responses.pop(0)
                outstanding -= 1
                state["err_seen"] |= bresp == 2
            assert outstanding <= 3
            state["max_out"] = max(state["max_out"], outstanding)
            if j == len(words) and not responses and outstanding == 0 and cycle > 10:
                break
        state["error"] = ctx.get(dut.error)
        state["idle"] = ctx.get(dut.idle)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert mem == want
    for addr, n in bursts:
        assert n <= 8 and addr // 4096 == (addr + 8 * n - 1) // 4096, (addr, n)
    assert state["max_out"] >= 2 and state["idle"] == 1
    assert state["error"] == int(state["err_seen"]) and state["err_seen"]
