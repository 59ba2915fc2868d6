# amaranth: UnusedElaboratable=no
"""The SDR SDRAM controller (``hw/board/sdram.py``) against the checking SDRAM model
(``hw/board/sdram_model.py``), in the Amaranth simulator: init, random AXI write and read bursts with
random strobes against a byte-array reference, both channels at once, row hits and misses across banks,
out-of-range addresses, refresh rate, back-pressure on R and B, sustained bandwidth; and the model alone,
hand-driven, to show its checker fires."""

import random
from collections import deque

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hw.board.sdram import SdramCommand, SdramController, SdramGeometry, SdramTiming, mode_register
from hw.board.sdram_model import SdramModel, SdramViolation
from hw.memory.axi import AxiBurstReader
from hw.memory.axi_write import AxiBurstWriter

CLOCK_HZ = 100_000_000
MODEL_BYTES = 1 << 20
# Datasheet timing, with the 200 us power-up wait cut to 2 us (200 cycles) so the tests spend their
# time on traffic.
TIMING = SdramTiming(t_powerup=2000.0)
SDRAM_BYTES = SdramGeometry().size_bytes        # 32 MiB: the AXI error boundary


def make_system(*, timing=TIMING, read_delay=0, quota=32, read_buffer=16, id_bits=2, model_timing=None,
                board_delay=None, clock_hz=CLOCK_HZ):
    """Controller and model; ``model_timing`` and ``board_delay`` (input registers actually on dq.i)
    default to the controller's ``timing`` and ``read_delay`` (tests set them apart to break things)."""
    ctrl = SdramController(addr_bits=32, data_bits=32, id_bits=id_bits, clock_hz=clock_hz, timing=timing,
                           read_delay=read_delay, read_buffer=read_buffer, quota=quota)
    model = SdramModel(size_bytes=MODEL_BYTES, clock_hz=clock_hz, timing=model_timing or timing)
    read_delay = read_delay if board_delay is None else board_delay
    m = Module()
    m.submodules.ctrl, m.submodules.model = ctrl, model
    if read_delay == 0:
        wiring.connect(m, ctrl.pins, model.pins)
    else:
        # Input registers between the chip and the controller, as the I/O cells add on the board.
        for name in ("clk_en", "cs_n", "we_n", "ras_n", "cas_n", "ba", "a", "dqm"):
            m.d.comb += getattr(model.pins, name).eq(getattr(ctrl.pins, name))
        m.d.comb += [model.pins.dq.o.eq(ctrl.pins.dq.o), model.pins.dq.oe.eq(ctrl.pins.dq.oe)]
        src = model.pins.dq.i
        for j in range(read_delay):
            reg = Signal(16, name=f"dq_in{j}")
            m.d.sync += reg.eq(src)
            src = reg
        m.d.comb += ctrl.pins.dq.i.eq(src)
    return m, ctrl, model


def burst_in_page(rng, lo, hi, max_beats):
    """A random 4-byte-aligned INCR burst inside [lo, hi) that does not cross 4 KiB."""
    addr = rng.randrange(lo, hi, 4)
    room = min((4096 - addr % 4096) // 4, (hi - addr) // 4)
    return addr, rng.randint(1, min(max_beats, room))


class AxiAgent:
    """A Python AXI4 master on the controller's two slave ports, one coroutine per channel.

    ``reads`` holds (addr, beats, id) and ``writes`` (addr, words, strobes, id); each list is issued in
    order, with random gaps, and the channels run independently. R and B are taken with probability
    ``p_ready`` per cycle. Results: ``r_bursts`` (per read burst: list of (data, resp), its ID) and
    ``b_resps`` ((resp, id) per write burst)."""

    def __init__(self, ctrl, rng, *, p_ready=1.0, p_gap=0.2):
        self.ctrl, self.rng, self.p_ready, self.p_gap = ctrl, rng, p_ready, p_gap
        self.reads, self.writes = deque(), deque()
        self.w_beats = deque()
        self.r_bursts, self.b_resps = [], []
        self.n_reads = self.n_writes = 0
        self.cycles = 0

    def add_read(self, addr, beats, id_=0):
        self.reads.append((addr, beats, id_))
        self.n_reads += 1

    def add_write(self, addr, words, strobes, id_=0):
        self.writes.append((addr, len(words), id_))
        self.w_beats.extend(zip(words, strobes, [i == len(words) - 1 for i in range(len(words))]))
        self.n_writes += 1

    def done(self):
        return len(self.r_bursts) == self.n_reads and len(self.b_resps) == self.n_writes

    async def gap(self, ctx):
        while self.rng.random() < self.p_gap:
            await ctx.tick()

    async def ar(self, ctx):
        axi = self.ctrl.axi
        while True:
            if not self.reads:
                await ctx.tick()
                continue
            await self.gap(ctx)
            addr, beats, id_ = self.reads.popleft()
            ctx.set(axi.araddr, addr), ctx.set(axi.arlen, beats - 1), ctx.set(axi.arid, id_)
            ctx.set(axi.arsize, 2), ctx.set(axi.arburst, 1), ctx.set(axi.arvalid, 1)
            while not (await ctx.tick().sample(axi.arready))[2]:
                pass
            ctx.set(axi.arvalid, 0)

    async def r(self, ctx):
        axi = self.ctrl.axi
        beats = []
        while True:
            ctx.set(axi.rready, int(self.rng.random() < self.p_ready))
            _, _, v, rd, data, resp, last, rid = await ctx.tick().sample(
                axi.rvalid, axi.rready, axi.rdata, axi.rresp, axi.rlast, axi.rid)
            self.cycles += 1
            if v and rd:
                beats.append((data, resp))
                if last:
                    self.r_bursts.append((beats, rid))
                    beats = []

    async def aw(self, ctx):
        axi = self.ctrl.axi_wr
        while True:
            if not self.writes:
                await ctx.tick()
                continue
            await self.gap(ctx)
            addr, beats, id_ = self.writes.popleft()
            ctx.set(axi.awaddr, addr), ctx.set(axi.awlen, beats - 1), ctx.set(axi.awid, id_)
            ctx.set(axi.awsize, 2), ctx.set(axi.awburst, 1), ctx.set(axi.awvalid, 1)
            while not (await ctx.tick().sample(axi.awready))[2]:
                pass
            ctx.set(axi.awvalid, 0)

    async def w(self, ctx):
        axi = self.ctrl.axi_wr
        while True:
            if not self.w_beats:
                await ctx.tick()
                continue
            if self.rng.random() < self.p_gap / 2:
                await ctx.tick()
                continue
            data, strb, last = self.w_beats.popleft()
            ctx.set(axi.wdata, data), ctx.set(axi.wstrb, strb), ctx.set(axi.wlast, int(last))
            ctx.set(axi.wvalid, 1)
            while not (await ctx.tick().sample(axi.wready))[2]:
                pass
            ctx.set(axi.wvalid, 0)

    async def b(self, ctx):
        axi = self.ctrl.axi_wr
        while True:
            ctx.set(axi.bready, int(self.rng.random() < self.p_ready))
            _, _, v, rd, resp, bid = await ctx.tick().sample(axi.bvalid, axi.bready, axi.bresp, axi.bid)
            if v and rd:
                self.b_resps.append((resp, bid))

    def add_to(self, sim, *, reads=True):
        for proc in (self.ar, self.r, self.aw, self.w, self.b) if reads else (self.aw, self.w, self.b):
            sim.add_process(proc)


def run(m, bench, *agents, reads=True):
    sim = Simulator(m)
    sim.add_clock(1 / CLOCK_HZ)
    for agent in agents:
        agent.add_to(sim, reads=reads)
    sim.add_testbench(bench)
    sim.run()


async def wait_ready(ctx, ctrl, model):
    await ctx.tick().until(ctrl.ready)
    assert ctx.get(model.violation) == SdramViolation.NONE


async def wait_done(ctx, agent, model, limit):
    for _ in range(limit):
        if agent.done():
            break
        await ctx.tick().repeat(16)
        assert ctx.get(model.violation) == SdramViolation.NONE, ctx.get(model.violation)
    assert agent.done(), (len(agent.r_bursts), agent.n_reads, len(agent.b_resps), agent.n_writes)


def write_ref(ref, addr, words, strobes):
    for k, (word, strb) in enumerate(zip(words, strobes)):
        for byte in range(4):
            if strb >> byte & 1:
                ref[addr + 4 * k + byte] = word >> (8 * byte) & 0xFF


def check_read(ref, addr, beats, result):
    data, _ = result
    assert len(data) == beats
    for k, (word, resp) in enumerate(data):
        assert resp == 0
        want = int.from_bytes(ref[addr + 4 * k: addr + 4 * k + 4], "little")
        assert word == want, (hex(addr + 4 * k), hex(word), hex(want))


# ---------------------------------------------------------------------------------------------------
# Controller + model

def test_init_sequence():
    """The controller leaves power-up after t_powerup with PRECHARGE ALL, 2 REFRESH, LOAD MODE; the model
    sees a complete init, and an idle controller keeps refreshing at tREFI."""
    m, ctrl, model = make_system()
    cyc = TIMING.cycles(CLOCK_HZ)
    state = {}

    async def bench(ctx):
        n = 0
        while not ctx.get(ctrl.ready):
            await ctx.tick()
            n += 1
        state["ready_at"] = n
        await ctx.tick().repeat(2)                       # LOAD MODE reaches the chip on the next edge
        state["initialized"] = ctx.get(model.initialized)
        r0 = ctx.get(model.refreshes)
        # Five intervals, and the few cycles from the counter's zero to the REFRESH on the pins.
        await ctx.tick().repeat(5 * cyc.refi + 8)
        state["refreshes"] = ctx.get(model.refreshes) - r0
        state["ctrl_refreshes"] = ctx.get(ctrl.refreshes)
        state["violation"] = ctx.get(model.violation)

    run(m, bench)
    assert cyc.powerup <= state["ready_at"] <= cyc.powerup + cyc.rp + 2 * cyc.rfc + 8
    assert state["initialized"] == 1
    assert state["refreshes"] == 5
    assert state["ctrl_refreshes"] == 7                 # 2 in the init sequence
    assert state["violation"] == SdramViolation.NONE


@pytest.mark.parametrize("cas_latency,read_delay,clock_mhz,seed", [(3, 0, 100, 1), (2, 1, 50, 2), (2, 0, 25, 3)])
def test_random_write_then_read(cas_latency, read_delay, clock_mhz, seed):
    """Random write bursts (lengths, strobes, addresses over 16 rows of all four banks: row hits and
    misses), then random read bursts of the same region, R and B back-pressured at random; CL 3 at
    100 MHz, CL 2 with an input register at 50 MHz (other cycle counts: tRRD of one cycle), and CL 2 at
    25 MHz, where tRCD and tRP are one cycle (the controller's row flags are out of date for a cycle
    after ACTIVE or PRECHARGE, exactly when the next command could already go)."""
    rng = random.Random(seed)
    timing = SdramTiming(cas_latency=cas_latency, t_powerup=2000.0)
    m, ctrl, model = make_system(timing=timing, read_delay=read_delay, clock_hz=clock_mhz * 1_000_000)
    agent = AxiAgent(ctrl, rng, p_ready=0.7)
    lo, hi = 0x1_0000, 0x1_0000 + 64 * 1024          # 64 KiB: rows 16..31 of every bank
    ref = bytearray(MODEL_BYTES)
    for i in range(40):
        addr, beats = burst_in_page(rng, lo, hi, 24)
        words = [rng.getrandbits(32) for _ in range(beats)]
        strobes = [rng.choice([0xF, 0xF, rng.getrandbits(4)]) for _ in range(beats)]
        agent.add_write(addr, words, strobes, id_=i % 4)
        write_ref(ref, addr, words, strobes)
    reads = [burst_in_page(rng, lo, hi, 24) for _ in range(40)]
    # A read of the whole written region too (every column the writes touched).
    for addr in range(lo, hi, 4096):
        reads.append((addr, 256))
    state = {}

    async def bench(ctx):
        await wait_ready(ctx, ctrl, model)
        await wait_done(ctx, agent, model, 2000)         # writes first: all B answered
        for i, (addr, beats) in enumerate(reads):
            agent.add_read(addr, beats, id_=i % 4)
        await wait_done(ctx, agent, model, 5000)
        state["violation"] = ctx.get(model.violation)
        state["activates"] = ctx.get(model.activates)

    run(m, bench, agent)
    assert state["violation"] == SdramViolation.NONE
    assert [b for b in agent.b_resps] == [(0, i % 4) for i in range(40)]
    for i, ((addr, beats), result) in enumerate(zip(reads, agent.r_bursts)):
        assert result[1] == i % 4
        check_read(ref, addr, beats, result)
    assert state["activates"] > 40                       # row misses happened


def test_concurrent_read_write_and_errors():
    """Reads of a pre-written region run while writes fill another one (both channels busy at once);
    bursts beyond the 32 MiB SDRAM get SLVERR (reads return zeros) and the next transfers still work;
    then the second region is read back."""
    rng = random.Random(7)
    m, ctrl, model = make_system(quota=8)
    agent = AxiAgent(ctrl, rng, p_ready=0.8, p_gap=0.1)
    ref = bytearray(MODEL_BYTES)
    a_lo, a_hi = 0x0_0000, 0x0_4000                    # region A: written first, then read
    b_lo, b_hi = 0x4_0000, 0x4_4000                    # region B: written while A is read
    for addr in range(a_lo, a_hi, 1024):
        words = [rng.getrandbits(32) for _ in range(256)]
        agent.add_write(addr, words, [0xF] * 256)
        write_ref(ref, addr, words, [0xF] * 256)
    phase2_writes = []
    for _ in range(30):
        addr, beats = burst_in_page(rng, b_lo, b_hi, 32)
        words = [rng.getrandbits(32) for _ in range(beats)]
        strobes = [rng.getrandbits(4) for _ in range(beats)]
        phase2_writes.append((addr, words, strobes))
    phase2_reads = [burst_in_page(rng, a_lo, a_hi, 64) for _ in range(30)]
    bad_read, bad_write = (SDRAM_BYTES + 0x100, 4), (SDRAM_BYTES * 3 + 0x40, 3)
    state = {}

    async def bench(ctx):
        await wait_ready(ctx, ctrl, model)
        await wait_done(ctx, agent, model, 3000)
        n_b0 = len(agent.b_resps)
        # Both channels at once, with an error burst in the middle of each.
        for i, (addr, words, strobes) in enumerate(phase2_writes):
            if i == 10:
                agent.add_write(bad_write[0], [0xDEADBEEF] * bad_write[1], [0xF] * bad_write[1], id_=3)
            agent.add_write(addr, words, strobes, id_=1)
            write_ref(ref, addr, words, strobes)
        for i, (addr, beats) in enumerate(phase2_reads):
            if i == 10:
                agent.add_read(*bad_read, id_=3)
            agent.add_read(addr, beats, id_=2)
        await wait_done(ctx, agent, model, 5000)
        state["b"] = agent.b_resps[n_b0:]
        state["n_r1"] = len(agent.r_bursts)
        for addr in range(b_lo, b_hi, 4096):
            agent.add_read(addr, 256, id_=0)
        await wait_done(ctx, agent, model, 5000)
        state["violation"] = ctx.get(model.violation)

    run(m, bench, agent)
    assert state["violation"] == SdramViolation.NONE
    b = state["b"]
    assert b[10] == (2, 3) and all(r == (0, 1) for i, r in enumerate(b) if i != 10), b
    r1 = agent.r_bursts[:state["n_r1"]]
    assert r1[10] == ([(0, 2)] * 4, 3)
    good = r1[:10] + r1[11:]
    for (addr, beats), result in zip(phase2_reads, good):
        assert result[1] == 2
        check_read(ref, addr, beats, result)
    for k, addr in enumerate(range(b_lo, b_hi, 4096)):
        check_read(ref, addr, 256, agent.r_bursts[state["n_r1"] + k])


class HeldBAgent(AxiAgent):
    """An AxiAgent whose B channel is not ready before cycle ``release``."""

    def __init__(self, *args, release, **kwargs):
        super().__init__(*args, **kwargs)
        self.release = release

    async def b(self, ctx):
        axi = self.ctrl.axi_wr
        for _ in range(self.release):
            ctx.set(axi.bready, 0)
            await ctx.tick()
        await super().b(ctx)


def test_write_responses_wait_for_a_master_that_holds_bready_low():
    """Single-word bursts back to back while the master takes no B response: the controller stops
    taking bursts once its response queue is full (none is lost or overwritten), and when the master
    takes them every response comes out once, in order, with its burst's ID; the words are all written."""
    rng = random.Random(11)
    m, ctrl, model = make_system()
    agent = HeldBAgent(ctrl, rng, p_ready=1.0, p_gap=0.0, release=400)
    ref = bytearray(MODEL_BYTES)
    for k in range(24):
        word = rng.getrandbits(32)
        agent.add_write(0x1000 + 4 * k, [word], [0xF], id_=k % 4)
        write_ref(ref, 0x1000 + 4 * k, [word], [0xF])
    state = {}

    async def bench(ctx):
        await wait_ready(ctx, ctrl, model)
        await wait_done(ctx, agent, model, 400)
        agent.add_read(0x1000, 24, id_=1)
        await wait_done(ctx, agent, model, 400)
        state["violation"] = ctx.get(model.violation)

    run(m, bench, agent)
    assert state["violation"] == SdramViolation.NONE
    assert agent.b_resps == [(0, k % 4) for k in range(24)]
    check_read(ref, 0x1000, 24, agent.r_bursts[0])


@pytest.mark.parametrize("case", ["fast_trcd", "fast_trp", "wrong_read_delay"])
def test_checks_catch_a_broken_controller(case):
    """The integrated checks fail when they should: a controller timed for a faster chip than the model
    (tRCD 10 ns, or tRP 10 ns) trips the model's checker, and one that expects no input register while
    the board has one reads wrong data."""
    rng = random.Random(11)
    fast = {"fast_trcd": SdramTiming(t_rcd=10.0, t_powerup=2000.0),
            "fast_trp": SdramTiming(t_rp=10.0, t_powerup=2000.0)}
    m, ctrl, model = make_system(timing=fast.get(case, TIMING), model_timing=TIMING,
                                 board_delay=1 if case == "wrong_read_delay" else None)
    agent = AxiAgent(ctrl, rng, p_gap=0.0)
    ref = bytearray(MODEL_BYTES)
    for k in range(3):                    # same bank, three rows: activate, precharge, activate
        words = [rng.getrandbits(32) for _ in range(8)]
        agent.add_write(0x4000 * k, words, [0xF] * 8)
        write_ref(ref, 0x4000 * k, words, [0xF] * 8)
    state = {}

    async def bench(ctx):
        await ctx.tick().until(ctrl.ready)       # (fast_trp already breaks the init sequence's tRP)
        for _ in range(300):
            await ctx.tick().repeat(4)
            if agent.done():
                break
        for k in range(3):
            agent.add_read(0x4000 * k, 8)
        await ctx.tick().repeat(600)
        state["violation"] = ctx.get(model.violation)

    run(m, bench, agent)
    if case == "wrong_read_delay":
        assert state["violation"] == SdramViolation.NONE
        with pytest.raises(AssertionError):
            for k, result in enumerate(agent.r_bursts):
                check_read(ref, 0x4000 * k, 8, result)
    else:
        assert state["violation"] == {"fast_trcd": SdramViolation.TRCD, "fast_trp": SdramViolation.TRP}[case]


def test_long_stream_refresh_rate():
    """A long stream of reads and writes keeps the model's refresh check quiet (no refresh is owed for
    more than one tREFI), and the REFRESH count over the window matches window / tREFI."""
    rng = random.Random(3)
    m, ctrl, model = make_system()
    cyc = TIMING.cycles(CLOCK_HZ)
    agent = AxiAgent(ctrl, rng, p_ready=1.0, p_gap=0.0)
    state = {}

    async def bench(ctx):
        await wait_ready(ctx, ctrl, model)
        for k in range(16):
            addr = 0x8_0000 + 4096 * k
            agent.add_write(addr, [rng.getrandbits(32) for _ in range(256)], [0xF] * 256)
            agent.add_read(0x8_0000 + 4096 * ((k + 8) % 16), 256)
        await ctx.tick().repeat(200)
        r0 = ctx.get(model.refreshes)
        window = 12 * cyc.refi
        await ctx.tick().repeat(window)
        state["refreshes"] = ctx.get(model.refreshes) - r0
        state["busy"] = not agent.done()
        await wait_done(ctx, agent, model, 5000)
        state["violation"] = ctx.get(model.violation)

    run(m, bench, agent)
    assert state["busy"]                  # the window was all traffic
    assert state["refreshes"] in (12, 13), state
    assert state["violation"] == SdramViolation.NONE


@pytest.mark.parametrize("quota", [8, 32])
def test_writes_not_starved_by_a_read_stream(quota):
    """While a long sequential read stream keeps the read engine busy, write bursts still complete
    within about ``quota`` words of read traffic plus their own time (the arbiter's bound)."""
    rng = random.Random(5)
    m, ctrl, model = make_system(quota=quota, read_buffer=32, id_bits=1)
    reader = AxiBurstReader(32, 32, buffer_words=256, max_burst=64, max_outstanding=4, beats_bits=16)
    m.submodules.reader = reader
    wiring.connect(m, reader.axi, ctrl.axi)
    agent = AxiAgent(ctrl, rng, p_gap=0.0)
    state = {"latency": []}

    async def bench(ctx):
        await wait_ready(ctx, ctrl, model)
        ctx.set(reader.data.ready, 1)
        ctx.set(reader.cmd.payload, {"addr": 0x3_0000, "beats": 4096})
        ctx.set(reader.cmd.valid, 1)
        await ctx.tick()
        ctx.set(reader.cmd.valid, 0)
        await ctx.tick().repeat(300)
        for k in range(4):
            agent.add_write(0x6_0000 + 0x1000 * k, [k] * 16, [0xF] * 16)
            n = 0
            while len(agent.b_resps) <= k:
                await ctx.tick()
                n += 1
            state["latency"].append(n)
            state.setdefault("stream_running", True)
            state["stream_running"] &= not ctx.get(reader.idle)
            await ctx.tick().repeat(100)
        state["violation"] = ctx.get(model.violation)

    run(m, bench, agent, reads=False)
    assert state["violation"] == SdramViolation.NONE and state["stream_running"]
    # 16 write words (2 cycles each), at most `quota` read words first, the read-to-write turnaround,
    # a row change and possibly a refresh: 2 * (16 + quota) + 40 cycles.
    assert max(state["latency"]) <= 2 * (16 + quota) + 40, state["latency"]
    print(f"\nwrite burst latency under a read stream, quota {quota}: {state['latency']} cycles")


# Sustained bandwidth floor: the SDRAM moves one 16-bit word a cycle (2 B/cycle peak). Sequential
# streams lose about (tRP + tRFC + tRCD) / tREFI = 13 / 780 = 1.7% to refresh, ~(1 + tRP + tRCD) / 512
# = 1.4% to a row change every 1 KiB, and a few cycles per 4 KiB burst of pipeline refill, so about
# 1.9 B/cycle is expected; 1.8 B/cycle (90% of the peak) leaves margin for the masters' own gaps.
BANDWIDTH_FLOOR = 1.8


@pytest.mark.slow          # a measurement (24 s): pytest -m slow tests/test_sdram.py
@pytest.mark.parametrize("direction", ["read", "write"])
def test_sustained_bandwidth(direction):
    """Long sequential streams from the accelerator's own AXI masters (AxiBurstReader/Writer, 64-beat
    bursts, 4 outstanding): bytes per cycle at the controller's AXI port."""
    m, ctrl, model = make_system(read_buffer=32, id_bits=1)
    words = 6144                                         # 24 KiB
    if direction == "read":
        master = AxiBurstReader(32, 32, buffer_words=256, max_burst=64, max_outstanding=4, beats_bits=16)
        wiring.connect(m, master.axi, ctrl.axi)
    else:
        master = AxiBurstWriter(32, 32, max_burst=64, max_outstanding=4, beats_bits=16)
        wiring.connect(m, master.axi, ctrl.axi_wr)
    m.submodules.master = master
    state = {}

    async def bench(ctx):
        await wait_ready(ctx, ctrl, model)
        if direction == "read":
            ctx.set(master.data.ready, 1)
        else:
            ctx.set(master.data.valid, 1)
            ctx.set(master.data.payload, 0x5A5AA5A5)
        ctx.set(master.cmd.payload, {"addr": 0x2_0000, "beats": words})
        ctx.set(master.cmd.valid, 1)
        await ctx.tick()
        ctx.set(master.cmd.valid, 0)
        n = 1
        while not ctx.get(master.idle):
            await ctx.tick().repeat(8)
            n += 8
        state["cycles"] = n
        state["violation"] = ctx.get(model.violation)
        state["error"] = ctx.get(master.error)

    run(m, bench)
    bpc = 4 * words / state["cycles"]
    print(f"\nSDRAM sustained {direction} bandwidth: {bpc:.3f} bytes/cycle "
          f"({bpc * CLOCK_HZ / 1e6:.0f} MB/s at {CLOCK_HZ / 1e6:.0f} MHz), {state['cycles']} cycles for {4 * words} B")
    assert state["violation"] == SdramViolation.NONE and state["error"] == 0
    assert bpc >= BANDWIDTH_FLOOR


def test_parameters():
    with pytest.raises(ValueError, match="cas_latency"):
        SdramTiming(cas_latency=4)
    with pytest.raises(ValueError, match="t_rp"):
        SdramTiming(t_rp=0)
    with pytest.raises(ValueError, match="clock_hz"):
        SdramController(clock_hz=300e6)
    with pytest.raises(ValueError, match="read_delay"):
        SdramController(read_delay=3)
    with pytest.raises(ValueError, match="multiple"):
        SdramController(data_bits=8)
    with pytest.raises(ValueError, match="col_bits"):
        SdramGeometry(col_bits=11)
    with pytest.raises(ValueError, match="size_bytes"):
        SdramModel(size_bytes=3 << 20)
    cyc = SdramTiming().cycles(100e6)
    assert (cyc.rp, cyc.rcd, cyc.rc, cyc.ras, cyc.wr, cyc.mrd, cyc.rfc, cyc.refi) == (3, 3, 7, 5, 2, 2, 7, 780)
    cyc = SdramTiming().cycles(50e6)
    assert (cyc.rp, cyc.rcd, cyc.rrd, cyc.wr, cyc.mrd, cyc.refi) == (2, 2, 1, 2, 2, 390)


def test_verilog_export():
    """Controller and model convert to Verilog (the shell's Verilator simulation uses both); the model's
    ``backing="verilog"`` instantiates the plain word array instead of writing the memory's contents."""
    from amaranth.back import verilog
    ctrl_v = verilog.convert(SdramController(id_bits=3, read_delay=1), name="sdram_controller")
    assert "module sdram_controller" in ctrl_v
    small = verilog.convert(SdramModel(size_bytes=1 << 12), name="sdram_model")
    big = verilog.convert(SdramModel(size_bytes=8 << 20, backing="verilog"), name="sdram_model")
    assert "trillium_sdram_array" in big and len(big) < len(small)
    with pytest.raises(ValueError, match="init"):
        SdramModel(backing="verilog", init=[1])


# ---------------------------------------------------------------------------------------------------
# The model alone, driven by hand: its checker must fire.

class PinDriver:
    def __init__(self, ctx, pins):
        self.ctx, self.pins = ctx, pins

    async def cmd(self, command, *, ba=0, a=0, dq=None, dqm=0, idle=0):
        """Put ``command`` on the pins for one cycle, then ``idle`` NOPs."""
        ctx, p = self.ctx, self.pins
        v = command.value
        ctx.set(p.clk_en, 1)
        ctx.set(p.cs_n, v >> 3 & 1), ctx.set(p.ras_n, v >> 2 & 1), ctx.set(p.cas_n, v >> 1 & 1)
        ctx.set(p.we_n, v & 1), ctx.set(p.ba, ba), ctx.set(p.a, a), ctx.set(p.dqm, dqm)
        ctx.set(p.dq.oe, int(dq is not None)), ctx.set(p.dq.o, dq or 0)
        await ctx.tick()
        ctx.set(p.dq.oe, 0), ctx.set(p.dqm, 0)
        for _ in range(idle):
            await self.nop()

    async def nop(self, n=1):
        for _ in range(n):
            await self.cmd(SdramCommand.NOP)

    async def init(self, cyc):
        await self.nop(cyc.powerup)
        await self.cmd(SdramCommand.PRECHARGE, a=1 << 10, idle=cyc.rp - 1)
        await self.cmd(SdramCommand.REFRESH, idle=cyc.rfc - 1)
        await self.cmd(SdramCommand.REFRESH, idle=cyc.rfc - 1)
        await self.cmd(SdramCommand.LOAD_MODE, a=mode_register(cyc.cas_latency), idle=cyc.mrd - 1)


def run_model(script, timing=TIMING):
    model = SdramModel(size_bytes=1 << 16, clock_hz=CLOCK_HZ, timing=timing)
    cyc = timing.cycles(CLOCK_HZ)
    out = {}

    async def bench(ctx):
        await script(ctx, PinDriver(ctx, model.pins), cyc, model, out)
        out["violation"] = ctx.get(model.violation)

    sim = Simulator(model)
    sim.add_clock(1 / CLOCK_HZ)
    sim.add_testbench(bench)
    sim.run()
    return out


@pytest.mark.parametrize("gap_short", [False, True])
def test_model_trcd(gap_short):
    """ACTIVE, then READ tRCD cycles later is fine (and returns the written word after CL, DQM
    masking the upper byte); one cycle earlier is a TRCD violation."""
    async def script(ctx, drv, cyc, model, out):
        await drv.init(cyc)
        await drv.cmd(SdramCommand.ACTIVE, ba=2, a=77, idle=cyc.rcd - 1)
        await drv.cmd(SdramCommand.WRITE, ba=2, a=5, dq=0xBEEF, idle=cyc.wr)
        await drv.cmd(SdramCommand.PRECHARGE, ba=2, idle=cyc.rp - 1)
        await drv.cmd(SdramCommand.ACTIVE, ba=2, a=77, idle=cyc.rcd - 1 - int(gap_short))
        # READ with DQM high on the upper byte two cycles before the data edge (CL = 3: the next cycle).
        await drv.cmd(SdramCommand.READ, ba=2, a=5)
        ctx.set(drv.pins.dqm, 0b10)
        await ctx.tick()
        ctx.set(drv.pins.dqm, 0)
        await ctx.tick()                                 # the data edge is READ + CL
        out["data"] = ctx.get(model.pins.dq.i)

    out = run_model(script)
    if gap_short:
        assert out["violation"] == SdramViolation.TRCD
    else:
        assert out["violation"] == SdramViolation.NONE
        assert out["data"] == 0x00EF


@pytest.mark.parametrize("case,code", [
    ("read_closed", SdramViolation.BANK_CLOSED),
    ("activate_open", SdramViolation.BANK_OPEN),
    ("trp", SdramViolation.TRP),
    ("tras", SdramViolation.TRAS),
    ("twr", SdramViolation.TWR),
    ("trfc", SdramViolation.TRFC),
    ("before_init", SdramViolation.NOT_INITIALIZED),
    ("refresh_missed", SdramViolation.REFRESH_MISSED),
    ("bus_conflict", SdramViolation.BUS_CONFLICT),
])
def test_model_violations(case, code):
    """Each rule broken by hand raises its code."""
    async def script(ctx, drv, cyc, model, out):
        if case == "before_init":
            await drv.nop(cyc.powerup)
            await drv.cmd(SdramCommand.ACTIVE, ba=0, a=1, idle=4)
            return
        await drv.init(cyc)
        if case == "read_closed":
            await drv.cmd(SdramCommand.ACTIVE, ba=0, a=1, idle=cyc.rcd)
            await drv.cmd(SdramCommand.READ, ba=1, a=0, idle=4)
        elif case == "activate_open":
            await drv.cmd(SdramCommand.ACTIVE, ba=3, a=1, idle=cyc.rc)
            await drv.cmd(SdramCommand.ACTIVE, ba=3, a=2, idle=4)
        elif case == "trp":
            await drv.cmd(SdramCommand.ACTIVE, ba=1, a=1, idle=cyc.ras)
            await drv.cmd(SdramCommand.PRECHARGE, ba=1, idle=cyc.rp - 2)
            await drv.cmd(SdramCommand.ACTIVE, ba=1, a=2, idle=4)
        elif case == "tras":
            await drv.cmd(SdramCommand.ACTIVE, ba=1, a=1, idle=cyc.ras - 2)
            await drv.cmd(SdramCommand.PRECHARGE, a=1 << 10, idle=4)
        elif case == "twr":
            await drv.cmd(SdramCommand.ACTIVE, ba=1, a=1, idle=cyc.ras)
            await drv.cmd(SdramCommand.WRITE, ba=1, a=3, dq=1, idle=cyc.wr - 2)
            await drv.cmd(SdramCommand.PRECHARGE, ba=1, idle=4)
        elif case == "trfc":
            await drv.cmd(SdramCommand.REFRESH, idle=cyc.rfc - 2)
            await drv.cmd(SdramCommand.ACTIVE, ba=0, a=1, idle=4)
        elif case == "refresh_missed":
            await drv.nop(cyc.refi - 10)
            await drv.cmd(SdramCommand.REFRESH)
            out["ok_after_one"] = ctx.get(model.violation)
            await drv.nop(2 * cyc.refi + 10)
        elif case == "bus_conflict":
            await drv.cmd(SdramCommand.ACTIVE, ba=0, a=1, idle=cyc.rcd - 1)
            await drv.cmd(SdramCommand.READ, ba=0, a=0, idle=cyc.cas_latency - 1)
            await drv.cmd(SdramCommand.WRITE, ba=0, a=1, dq=5, idle=4)  # drives dq while the read data is out

    out = run_model(script)
    assert out["violation"] == code
    if case == "refresh_missed":
        assert out["ok_after_one"] == SdramViolation.NONE


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_head_queue_is_a_fifo_with_a_registered_head(depth):
    """The burst queue (``_HeadQueue``) against a deque, with random writes and reads: order kept, at most
    ``depth`` entries, an entry readable the cycle after its write (also straight into an empty head), and
    ``w_rdy`` never a function of this cycle's ``r_en`` (it depends on registers only)."""
    from hw.board.sdram import _HeadQueue

    dut = _HeadQueue(8, depth)
    rng = random.Random(depth)
    model = deque()
    seen = []

    async def bench(ctx):
        n = 0
        for _ in range(600):
            w_en, r_en = rng.random() < 0.5, rng.random() < 0.5
            ctx.set(dut.w_en, 0)
            ctx.set(dut.r_en, 0)
            rdy_idle = ctx.get(dut.w_rdy)
            ctx.set(dut.r_en, int(r_en))
            assert ctx.get(dut.w_rdy) == rdy_idle           # r_en does not reach w_rdy
            ctx.set(dut.w_en, int(w_en))
            ctx.set(dut.w_data, n & 0xFF)
            r_rdy, r_data, w_rdy = ctx.get(dut.r_rdy), ctx.get(dut.r_data), ctx.get(dut.w_rdy)
            assert r_rdy == bool(model)                     # the head is there iff something was written
            assert w_rdy == (len(model) < depth)
            if r_rdy and r_en:
                assert r_data == model.popleft()
                seen.append(r_data)
            if w_en and w_rdy:
                model.append(n & 0xFF)
                n += 1
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(seen) > 100
