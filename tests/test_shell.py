"""The board shell (hw/board/shell.py) end to end in Verilator, without a board: the host's ``BoardDevice``
(firmware/board_device.py) speaks the link protocol over the shell's UART pins (``SimulatedUart``,
firmware/shell_transport.py, driving and sampling the pins bit by bit in ``tb_shell_server``); behind the
link, the tiny accelerator and the host share the SDRAM controller through the AXI arbiters, and a
protocol-checking SDRAM model (hw/board/sdram_model.py) sits on the SDRAM pins.

* PING, the id register, CSR writes and reads, DRAM writes and reads of a few KB at odd addresses;
* bytes damaged on the way to the board and on the way back are retried transparently;
* a compiled 1-layer model: the image over the UART, an 8-token prefill run by ``Accelerator.run_chunk``
  on the board device: logits equal the ISA device's and the integer model's exactly;
* the SDRAM model saw no protocol violation, and refreshes were issued;
* construction checks of the shell, and the ``shell`` design prepares for the ULX3S (PLL, SDRAM pins).

One cached Verilator build of the tiny shell (about 80 s cold), one simulator process for the module.
"""

import time

import numpy as np
import pytest
from checkpoints import make_checkpoint

from firmware.accelerator import Accelerator
from firmware.board_device import BoardDevice
from firmware.checkpoint import load_checkpoint
from firmware.device import DeviceError
from firmware.shell_transport import SimulatedUart
from golden.model_int import IntegerModel
from hw.config import load_hw_config

HW = load_hw_config("tiny")
PROMPT = 8
TIMINGS = {}


@pytest.fixture(scope="module")
def shell():
    start = time.monotonic()
    uart = SimulatedUart(HW)
    TIMINGS["build_s"], TIMINGS["start_s"] = uart.build_seconds, uart.start_seconds
    try:
        # timeout_s covers the simulator's speed (about 2 KB/s over the simulated UART).
        dev = BoardDevice(HW, uart.model_bytes, transport=uart, baud=uart.nominal_baud, timeout_s=3.0)
        TIMINGS["connect_s"] = time.monotonic() - start
        yield uart, dev
    finally:
        uart.close()
        print("\nshell timings: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in TIMINGS.items()))


def test_ping_id_and_csrs(shell):
    uart, dev = shell
    assert dev.info.bus_bytes == HW.dram.bus_bytes and dev.info.max_payload == 1024
    dev.check_id()
    for name, value in (("tokens", 0x1234_5678), ("pos", 0x0000_0007), ("logits", 0xDEAD_BEE0)):
        dev.write_csr(name, value)
    assert [dev.read_csr(n) for n in ("tokens", "pos", "logits")] == [0x1234_5678, 7, 0xDEAD_BEE0]
    st = uart.status()
    assert st["sdram_initialized"] and st["sdram_ready"] and st["violation"] == 0


def test_dram_round_trip_odd_alignment(shell):
    uart, dev = shell
    rng = np.random.default_rng(5)
    t = time.monotonic()
    blocks = {0x2_0003: rng.bytes(3000), 0x3_0FFD: rng.bytes(1500), 0x1_0001: rng.bytes(7)}
    for addr, data in blocks.items():
        dev.write(addr, data)
    for addr, data in blocks.items():
        assert dev.read(addr, len(data)) == data
    # Neighbours of a short unaligned write are left alone (byte strobes -> DQM).
    assert dev.read(0x1_0000, 9) == b"\0" + blocks[0x1_0001] + b"\0"
    TIMINGS["dram_4.5KB_rw_s"] = time.monotonic() - t
    assert uart.status()["violation"] == 0


def test_damaged_bytes_are_retried(shell):
    uart, dev = shell
    data = bytes(range(200))
    before = dict(dev.stats)
    # A payload byte of the request damaged: the board answers BAD_CRC, the host sends it again.
    uart.damage_write(20, 0x04)
    dev.write(0x4_0001, data)
    assert dev.stats["retries"] == before["retries"] + 1
    # A byte of the answer damaged: the host drops the frame, times out and asks again.
    uart.damage_read(30, 0x80)
    assert dev.read(0x4_0001, len(data)) == data
    assert dev.stats["retries"] == before["retries"] + 2 and dev.stats["dropped"] > before["dropped"]
    assert uart.status()["violation"] == 0


def _write_image(dev, image, min_gap=256):
    """Write the image's non-zero stretches (the SDRAM model starts at zero): runs of at least ``min_gap``
    zero bytes are skipped. Returns the bytes sent."""
    img = np.frombuffer(bytes(image), np.uint8)
    nz = np.flatnonzero(img)
    sent, start, prev = 0, int(nz[0]), int(nz[0])
    for i in list(nz[1:]) + [None]:
        if i is None or i - prev > min_gap:
            dev.write(start, bytes(img[start:prev + 1]))
            sent += prev + 1 - start
            if i is not None:
                start = int(i)
        if i is not None:
            prev = int(i)
    return sent


def test_model_prefill_on_shell_equals_isa_and_golden(shell, tmp_path):
    uart, dev = shell
    weights = load_checkpoint(make_checkpoint(tmp_path / "m", "relu2-gqa", layers=1, seed=9))
    prompt = np.random.default_rng(1).integers(0, weights.config.vocab_size, PROMPT)
    golden = IntegerModel(weights)
    want = golden.forward(prompt, golden.new_cache(PROMPT))

    isa = Accelerator(weights, HW, "isa", max_context=PROMPT)
    got_isa = isa.forward(prompt, isa.new_cache(PROMPT), all_logits=True)
    np.testing.assert_array_equal(got_isa, want)

    # The same compiled model on the board: load the image and the CSRs as Accelerator.__init__ does, then
    # let the driver's own run_chunk (session program, tokens, run arguments, run, logits) use the board.
    acc = Accelerator(weights, HW, "isa", max_context=PROMPT)
    cm = acc.compiled
    t = time.monotonic()
    retries = dev.stats["retries"]
    uart.damage_write(5000, 0x01)                    # one damaged byte in the image: retried
    sent = _write_image(dev, cm.image)
    assert dev.stats["retries"] >= retries + 1
    TIMINGS["image_bytes"] = sent
    TIMINGS["image_s"] = time.monotonic() - t
    dev.write_csr("program", cm.program)
    dev.write_csr("dram_size", len(cm.image))
    acc.device = dev
    t = time.monotonic()
    cycles_before = uart.status()["cycles"]
    got = acc.forward(prompt, acc.new_cache(PROMPT), all_logits=True)
    TIMINGS["prefill_and_logits_s"] = time.monotonic() - t
    TIMINGS["prefill_run_cycles"] = acc.run_log[-1]["run_cycles"]
    TIMINGS["sim_cycles_forward"] = uart.status()["cycles"] - cycles_before
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, got_isa)
    assert acc.run_log[-1]["run_cycles"] > 0
    st = uart.status()
    assert st["violation"] == 0, f"SDRAM protocol violation {st['violation']}"
    assert st["tx_framing_errors"] == 0
    TIMINGS["sim_cycles_total"] = st["cycles"]
    TIMINGS["bytes_to_board"], TIMINGS["bytes_from_board"] = uart.bytes_written, uart.bytes_read


def test_bus_error_is_not_retried(shell):
    """A DRAM address beyond the SDRAM chip (32 MB) gets SLVERR from the controller: BUS_ERROR, at once."""
    uart, dev = shell
    from firmware.board_protocol import Command

    retries = dev.stats["retries"]
    with pytest.raises(DeviceError, match="BUS_ERROR"):
        dev._transact(Command.DRAM_READ, 32 << 20, 16, what="read beyond the SDRAM")
    assert dev.stats["retries"] == retries
    dev.check_id()                                   # the link and the controller carry on


# -- construction ----------------------------------------------------------------------------------------------

def _silence(obj, seen=None):
    """Mark ``obj`` and the elaboratables it holds as deliberately unused (no UnusedElaboratable warnings)."""
    from amaranth.hdl import Elaboratable

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Elaboratable):
        obj._MustUse__silence = True
        children = list(vars(obj).values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    elif isinstance(obj, dict):
        children = list(obj.values())
    else:
        return
    for child in children:
        _silence(child, seen)


def test_shell_construction_checks():
    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.lib.wiring import Out

    from hw.board.shell import Ulx3sShell, connect_axi
    from hw.memory.axi import AxiReadSignature
    from hw.memory.axi_write import AxiWriteSignature

    s = Ulx3sShell(HW, clk_hz=50_000_000, baud=1_000_000)
    assert s.divisor == 50 and s.data_bits == 64
    assert s.read_arbiter.s.signature == AxiReadSignature(32, 64, 5)
    assert s.write_arbiter.s.signature == AxiWriteSignature(32, 64, 4)
    assert s.dram_bytes == 32 << 20
    _silence(s)                                      # constructed for its checks only, never elaborated
    with pytest.raises(TypeError, match="hw must be a HwConfig"):
        Ulx3sShell("tiny", clk_hz=50_000_000, baud=1_000_000)
    with pytest.raises(ValueError, match="cannot make"):
        Ulx3sShell(HW, clk_hz=50_000_000, baud=11_000_000)

    class Pair(wiring.Component):
        def __init__(self, a, b):
            super().__init__({"a": Out(a), "b": Out(b)})

        def elaborate(self, platform):
            return Module()

    m = Module()
    _silence(m)
    for a, b, err, match in [
            (AxiReadSignature(32, 32, 1), AxiReadSignature(32, 64, 4), ValueError,
             "test: 32-bit addresses and 32-bit data on the master, 32-bit addresses and 64-bit data on the slave"),
            (AxiReadSignature(32, 64, 5), AxiReadSignature(32, 64, 4), ValueError,
             "the master's 5 ID bits do not fit the slave's 4"),
            (AxiReadSignature(32, 64, 1), AxiWriteSignature(32, 64, 4), TypeError, "read and write ports")]:
        p = Pair(a, b)
        _silence(p)
        with pytest.raises(err, match=match):
            connect_axi(m, p.a, p.b, what="test")


def test_shell_design_prepares_for_ulx3s():
    from hw.board.designs import ShellTop, ecp5_pll_params, get_design
    from hw.board.platforms import get_board

    assert ecp5_pll_params(25, 50) == (1, 2, 12)           # VCO 600 MHz
    with pytest.raises(ValueError, match="no exact ECP5 PLL"):
        ecp5_pll_params(25, 51.3)
    platform = get_board("ulx3s-85f").platform()
    top = get_design("shell").make(platform, HW)     # the config's clock_mhz (100)
    assert isinstance(top, ShellTop) and top.clocks == {"sync": 100.0} and top.shell.divisor == 100
    assert top.pll_params == ecp5_pll_params(25, 100) == (1, 4, 6)
    assert ShellTop(platform, HW, clk_mhz=50).clocks == {"sync": 50.0}
    plan = platform.prepare(top, name="top", nextpnr_opts="--report report.json")
    il, lpf = plan.files["top.il"], plan.files["top.lpf"]
    assert "EHXPLLL" in il and "ODDRX1F" in il
    assert "DCCA" in il                    # the synchronised reset goes through a global buffer
    for site in ("F19", "F20", "P20", "T20", "T19", "R20", "U19", "J16", "M20"):     # SDRAM clk, cke, cmd, dq, a
        assert f'SITE "{site}"' in lpf
    assert "100000000" in lpf
    with pytest.raises(ValueError, match="needs a board with an SDR SDRAM"):
        get_design("shell").make(get_board("nexus-40").platform(), HW)
