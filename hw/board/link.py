"""The host link of a board shell: requests of ``firmware/board_protocol.py`` on a byte stream, executed as
AXI4-Lite CSR and AXI4 DRAM transactions, answered with response frames.

::

    rx bytes --> frame parser --> request check --> execute --> response --> tx bytes
                 (CRC-16,         (BAD_FRAME)       csr: AXI4-Lite master  (status, payload, CRC)
                  timeout)                          axi_rd / axi_wr: AXI4 bursts
                        \\                                   ^
                         `--- payload buffer (block RAM) ----'

The frame format, the checks and the answers are those of the protocol module (its docstring, and
:class:`firmware.board_protocol.LinkModel`, which the tests compare this gateware with byte for byte).
One request at a time: while a request executes or its response goes out, ``rx`` is not ready (the host
waits for the response before it sends again).

**Payload buffer.** One memory of bus words holds a DRAM request's bytes at their DRAM byte lanes: the
byte for address ``a + i`` is at buffer byte ``a % bus_bytes + i``. A ``DRAM_WRITE``'s payload is written
there as it arrives and sent to DRAM only after the CRC matched (a damaged frame writes nothing); a
``DRAM_READ`` collects all its beats there before the response starts, so the status (``OK`` or
``BUS_ERROR``) leads the response and ``rready`` stays high for the whole burst, whatever the speed of
the UART. DRAM requests need not be aligned: the first and last words of a write carry byte strobes.

**Bursts.** A DRAM request becomes INCR bursts of full bus words, cut at 4 KiB boundaries and at 256
beats, one burst at a time, ID 0. A CSR request is one AXI4-Lite transaction (``awprot``/``arprot`` 0,
all strobes set).

**Errors and resynchronisation.** A bad header (``BAD_FRAME``) or CRC (``BAD_CRC``) makes the parser
drop bytes until the line has been quiet for ``timeout_cycles``, then answer once and look for the next
sync byte. A frame that stops arriving for ``timeout_cycles`` is answered with ``TIMEOUT``. So a lost,
added or damaged byte costs one error answer and never wedges the link. A bus transaction that never
completes does wedge it (AXI cannot abort one): the host then sees no answer.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from firmware.board_protocol import (
    CRC_INIT,
    CRC_POLY,
    CSR_BYTES,
    MAX_PAYLOAD,
    PING_MAGIC,
    REQ_HEADER_BYTES,
    REQ_SYNC,
    RSP_HEADER_BYTES,
    RSP_SYNC,
    VERSION,
    Command,
    Status,
)

from ..collision import assert_no_collision, collision_free_memory
from ..control.axi_lite import AxiLiteSignature
from ..dataflow.skid import SkidBuffer
from ..memory.axi import BOUNDARY_BYTES, MAX_BURST, AxiBurst, AxiReadSignature
from ..memory.axi_write import AxiWriteSignature
from ..params import check_int
from .uart import UartRx, UartTx

__all__ = ["ADDR_BITS", "BoardLink", "UartLink", "crc16_next"]

#: DRAM byte-address width: the protocol's 32-bit addresses, the accelerator's ``hw.isa.ADDR_BITS``.
ADDR_BITS = 32


def _crc16_taps():
    """For each bit of the next CRC register: the register bits (0..15) and byte bits (16..23) it is the
    XOR of. The CRC is linear, so eight shift steps reduce to one XOR per bit."""
    # Each bit is a set of input indices (an XOR of them); bit i of the register starts as input i.
    c = [{i} for i in range(16)]
    for i in range(8):
        c[8 + i] = c[8 + i] ^ {16 + i}
    for _ in range(8):
        top = c[15]
        c = [set()] + c[:15]
        for i in range(16):
            if (CRC_POLY >> i) & 1:
                c[i] = c[i] ^ top
    return [sorted(bits) for bits in c]


_CRC16_TAPS = _crc16_taps()


def crc16_next(crc, byte):
    """The CRC-16/CCITT-FALSE register after one more byte, as an Amaranth expression (one XOR of a few
    inputs per bit)."""
    inputs = [crc[i] for i in range(16)] + [byte[i] for i in range(8)]
    out = []
    for taps in _CRC16_TAPS:
        v = inputs[taps[0]]
        for t in taps[1:]:
            v = v ^ inputs[t]
        out.append(v)
    return Cat(*out)


class BoardLink(wiring.Component):
    """Protocol bridge: request bytes in, AXI4-Lite and AXI4 master transactions, response bytes out.

    Parameters
    ----------
    data_bits : int
        DRAM bus width (a power of two, 32..1024, as the accelerator's port).
    max_payload : int
        The longest DRAM request, in bytes (1..4096); it sizes the payload buffer (1024 bytes on a 32-bit
        bus: one ECP5 DP16KD) and is announced in the PING answer.
    timeout_cycles : int
        Cycles without a byte after which a partial frame is answered with ``TIMEOUT`` and a drain ends.
        Pick several byte times (at 1 Mbaud and 50 MHz, a byte is 500 cycles; 1 ms is 50 000).
    csr_addr_bits : int
        Address width of the CSR port (``hw.top.CSR_ADDR_BITS`` = 16); larger offsets are ``BUS_ERROR``.
    id_bits : int
        AXI4 ID width of the DRAM port (IDs driven are 0).

    Attributes
    ----------
    rx : In(stream.Signature(8))
        Request bytes (from :class:`hw.board.uart.UartRx`).
    tx : Out(stream.Signature(8))
        Response bytes (to :class:`hw.board.uart.UartTx`).
    csr : Out(AxiLiteSignature(csr_addr_bits))
        To the accelerator's ``csr`` slave.
    axi_rd : Out(AxiReadSignature(32, data_bits, id_bits))
    axi_wr : Out(AxiWriteSignature(32, data_bits, id_bits))
        To DRAM (or to a port of the interconnect the accelerator shares).
    busy : Out(1)
        Not waiting for a request's first byte.
    """

    def __init__(self, *, data_bits=32, max_payload=1024, timeout_cycles=50_000, csr_addr_bits=16, id_bits=1):
        owner = "BoardLink"
        self.read_signature = AxiReadSignature(ADDR_BITS, data_bits, id_bits)
        self.write_signature = AxiWriteSignature(ADDR_BITS, data_bits, id_bits)
        self.data_bits = check_int("data_bits", data_bits, 32, 1024, owner)
        self.max_payload = check_int("max_payload", max_payload, 1, MAX_PAYLOAD, owner)
        self.timeout_cycles = check_int("timeout_cycles", timeout_cycles, 4, (1 << 32) - 1, owner)
        self.csr_addr_bits = check_int("csr_addr_bits", csr_addr_bits, 3, 32, owner)
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "csr": Out(AxiLiteSignature(csr_addr_bits)),
            "axi_rd": Out(self.read_signature),
            "axi_wr": Out(self.write_signature),
            "busy": Out(1),
        })

    @property
    def bus_bytes(self):
        return self.data_bits // 8

    @property
    def buffer_words(self):
        """Payload buffer depth: a request of ``max_payload`` bytes starting at the last byte lane."""
        return -(-(self.bus_bytes - 1 + self.max_payload) // self.bus_bytes)

    def ping_info(self):
        """The PING answer's payload bytes."""
        return (PING_MAGIC + bytes([VERSION, self.bus_bytes & 0xFF])
                + self.max_payload.to_bytes(2, "little"))

    def elaborate(self, platform):
        m = Module()
        W = self.bus_bytes
        lb = exact_log2(W)
        rx, tx, csr, ard, awr = self.rx, self.tx, self.csr, self.axi_rd, self.axi_wr

        # Writes (payload bytes, DRAM read beats) and used reads (DRAM write beats, response bytes) happen in
        # different states, so the buffer needs no collision bypass; `rword` is a plain flip-flop after it,
        # which the ECP5 flow moves into the block RAM's output register (hw/bram_output_registers.py): the
        # block RAM's 5.8 ns clock-to-out then ends at a register, not in the byte select or the W slice.
        # The buffer is memories of 16-bit halves: a 32-bit one maps to a 36-bit-wide block RAM, whose
        # read data leaves half through port A, and port A's output register is not usable there.
        word_bits = max(1, (self.buffer_words - 1).bit_length())
        wp_addr, rp_addr = Signal(word_bits), Signal(word_bits)
        wp_data, wp_en = Signal(self.data_bits), Signal(W)
        rword = Signal(self.data_bits, reset_less=True)     # the word read last cycle at `rp_addr`
        halves = []
        for h in range(self.data_bits // 16):
            m.submodules[f"buffer{h}"] = mem = collision_free_memory(shape=16, depth=self.buffer_words)
            wp, rp = mem.write_port(granularity=8), mem.read_port()
            m.d.comb += [wp.addr.eq(wp_addr), wp.data.eq(wp_data[16 * h:16 * h + 16]),
                         wp.en.eq(wp_en[2 * h:2 * h + 2]), rp.addr.eq(rp_addr)]
            m.d.sync += rword[16 * h:16 * h + 16].eq(rp.data)
            halves.append((wp, rp))

        # -- request registers ---------------------------------------------------------------------------
        cmd, seq = Signal(8), Signal(8)
        addr = Signal(32)
        length = Signal(16)
        hdr_i = Signal(range(REQ_HEADER_BYTES))     # header bytes received after the sync byte
        left = Signal(16)                           # payload bytes still to come
        crc_i = Signal()                            # CRC bytes received
        crc = Signal(16, init=CRC_INIT)
        status = Signal(8)
        timer = Signal(range(self.timeout_cycles))
        csr_wdata, csr_rdata = Signal(32), Signal(32)
        bp = Signal(16)                             # buffer byte pointer
        lane0 = Signal(lb)
        end_off = Signal(17)                        # buffer byte offset just past the request's bytes
        err = Signal()                              # a bus error in this request

        # DRAM burst state.
        cur = Signal(32)                            # next burst's byte address (bus-aligned)
        words = Signal(16)                          # bus words still to issue
        bi = Signal(word_bits + 1)                  # buffer word of the next beat
        burst_left = Signal(range(MAX_BURST + 1))
        aw_done, w_done = Signal(), Signal()

        # The last executed request: a write equal to it is a retry (not executed again).
        last_valid = Signal()
        last_cmd, last_seq, last_status = Signal(8), Signal(8), Signal(8)
        last_addr, last_len = Signal(32), Signal(16)

        rx_fire = Signal()
        byte = rx.payload
        crc_in = crc16_next(crc, byte)
        m.d.comb += rx_fire.eq(rx.valid & rx.ready)

        # Response payload length (0 unless OK), registered in RESPOND (status is final there).
        rsp_len, rsp_len_next = Signal(16), Signal(16)
        with m.If(status == Status.OK):
            with m.Switch(cmd):
                with m.Case(Command.PING):
                    m.d.comb += rsp_len_next.eq(len(self.ping_info()))
                with m.Case(Command.CSR_READ):
                    m.d.comb += rsp_len_next.eq(CSR_BYTES)
                with m.Case(Command.DRAM_READ):
                    m.d.comb += rsp_len_next.eq(length)
        tx_i = Signal(range(RSP_HEADER_BYTES))
        head_bytes = Array([Const(RSP_SYNC, 8), cmd, seq, status, rsp_len[:8], rsp_len[8:]])
        ping_bytes = Array([Const(b, 8) for b in self.ping_info()])
        pay_i = Signal(16)
        tx_byte = Signal(8)                         # the payload byte being sent
        crc_tx = crc16_next(crc, tx.payload)
        tx_fire = Signal()
        m.d.comb += tx_fire.eq(tx.valid & tx.ready)

        # Burst length: the rest, up to the 4 KiB boundary, at most 256 beats. Registered in the SIZE state
        # before each burst's address: as a function of `cur` and `words` it was four carry chains ahead of
        # the read arbiter's address register and of `words` (12.16 ns routed on the ECP5 shell at 6c79f98).
        # A cycle per burst is nothing next to the UART's.
        to_boundary = Signal(range(BOUNDARY_BYTES // W + 1))
        m.d.comb += to_boundary.eq(Const(BOUNDARY_BYTES >> lb) - cur[lb:12])
        limit = Signal(range(MAX_BURST + 1))
        m.d.comb += limit.eq(Mux(to_boundary < MAX_BURST, to_boundary, MAX_BURST))
        beats = Signal(range(MAX_BURST + 1))

        # Byte strobes of buffer word `bi`: the lanes inside [lane0, end_off).
        strb = Signal(W)
        for j in range(W):
            off = Cat(Const(j, lb), bi)
            m.d.comb += strb[j].eq((off >= lane0) & (off < end_off))

        m.d.comb += [
            ard.arsize.eq(lb), ard.arburst.eq(AxiBurst.INCR), ard.arid.eq(0), ard.araddr.eq(cur),
            ard.arlen.eq(beats - 1),
            awr.awsize.eq(lb), awr.awburst.eq(AxiBurst.INCR), awr.awid.eq(0), awr.awaddr.eq(cur),
            awr.awlen.eq(beats - 1),
            awr.wdata.eq(rword), awr.wstrb.eq(strb), awr.wlast.eq(burst_left == 1),
            csr.awaddr.eq(addr[:self.csr_addr_bits]), csr.araddr.eq(addr[:self.csr_addr_bits]),
            csr.awprot.eq(0), csr.arprot.eq(0), csr.wdata.eq(csr_wdata), csr.wstrb.eq(0b1111),
            rp_addr.eq(bi),
        ]

        in_frame = Signal()                 # states whose bytes run the timeout
        with m.If(in_frame):
            with m.If(rx_fire):
                m.d.sync += timer.eq(0)
            with m.Elif(timer != self.timeout_cycles - 1):
                m.d.sync += timer.eq(timer + 1)
        with m.Else():
            m.d.sync += timer.eq(0)
        timed_out = Signal()
        m.d.comb += timed_out.eq(in_frame & ~rx_fire & (timer == self.timeout_cycles - 1))

        # Whether the request repeats the last executed write (a retry), and whether a CSR address has bits
        # beyond the CSR space: registered on every cycle, for EXEC, which comes at least a cycle after the
        # header and `last_*` last changed (the 32-bit compares ahead of EXEC's choice ended on the state
        # and status registers: 10.70 ns routed on the ECP5 shell at 9887928).
        dup, csr_addr_high = Signal(), Signal()
        m.d.sync += [
            dup.eq(last_valid & (cmd == last_cmd) & (seq == last_seq) & (addr == last_addr)
                   & (length == last_len) & ((cmd == Command.CSR_WRITE) | (cmd == Command.DRAM_WRITE))),
            csr_addr_high.eq(addr[self.csr_addr_bits:] != 0),
        ]

        with m.FSM(name="link") as fsm:
            # -- receive -----------------------------------------------------------------------------------
            with m.State("HUNT"):
                m.d.comb += rx.ready.eq(1)
                with m.If(rx_fire & (byte == REQ_SYNC)):
                    m.d.sync += [hdr_i.eq(0), crc.eq(CRC_INIT), cmd.eq(0), seq.eq(0), crc_i.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += [rx.ready.eq(1), in_frame.eq(1)]
                with m.If(rx_fire):
                    m.d.sync += [crc.eq(crc_in), hdr_i.eq(hdr_i + 1)]
                    with m.Switch(hdr_i):
                        with m.Case(0):
                            m.d.sync += cmd.eq(byte)
                        with m.Case(1):
                            m.d.sync += seq.eq(byte)
                        for k in range(4):
                            with m.Case(2 + k):
                                m.d.sync += addr[8 * k:8 * k + 8].eq(byte)
                        with m.Case(6):
                            m.d.sync += length[:8].eq(byte)
                        with m.Case(7):
                            m.d.sync += length[8:].eq(byte)
                            m.next = "CHECK"
                with m.Elif(timed_out):
                    m.d.sync += status.eq(Status.TIMEOUT)
                    m.next = "RESPOND"
            with m.State("CHECK"):
                is_csr = (cmd == Command.CSR_READ) | (cmd == Command.CSR_WRITE)
                is_dram = (cmd == Command.DRAM_READ) | (cmd == Command.DRAM_WRITE)
                is_write = (cmd == Command.CSR_WRITE) | (cmd == Command.DRAM_WRITE)
                good = Signal()
                m.d.comb += good.eq(
                    ((cmd == Command.PING) & (length == 0))
                    | (is_csr & (length == CSR_BYTES) & (addr[:2] == 0))
                    | (is_dram & (length != 0) & (length <= self.max_payload)
                       & ((addr + length) <= (1 << 32))))
                m.d.sync += [left.eq(Mux(is_write, length, 0)), bp.eq(addr[:lb])]
                with m.If(~good):
                    m.d.sync += status.eq(Status.BAD_FRAME)
                    m.next = "DRAIN"
                with m.Elif(is_write):
                    m.next = "PAYLOAD"
                with m.Else():
                    m.next = "CRC"
            with m.State("PAYLOAD"):
                # The buffer's address and data follow the state alone; only the byte enables wait for
                # the byte (with the handshake in the address, it was a 12.1 ns placed path into the block
                # RAMs' address pins at cdbee47).
                m.d.comb += [rx.ready.eq(1), in_frame.eq(1), wp_addr.eq(bp[lb:]), wp_data.eq(Cat(*([byte] * W)))]
                with m.If(rx_fire):
                    m.d.sync += [crc.eq(crc_in), left.eq(left - 1), bp.eq(bp + 1),
                                 csr_wdata.eq(Cat(csr_wdata[8:], byte))]
                    with m.If(cmd == Command.DRAM_WRITE):
                        m.d.comb += wp_en.eq(Const(1, W) << bp[:lb])
                    with m.If(left == 1):
                        m.next = "CRC"
                with m.Elif(timed_out):
                    m.d.sync += status.eq(Status.TIMEOUT)
                    m.next = "RESPOND"
            with m.State("CRC"):
                m.d.comb += [rx.ready.eq(1), in_frame.eq(1)]
                with m.If(rx_fire):
                    m.d.sync += [crc.eq(crc_in), crc_i.eq(1)]
                    with m.If(crc_i):
                        with m.If(crc_in == 0):
                            m.next = "EXEC"
                        with m.Else():
                            m.d.sync += status.eq(Status.BAD_CRC)
                            m.next = "DRAIN"
                with m.Elif(timed_out):
                    m.d.sync += status.eq(Status.TIMEOUT)
                    m.next = "RESPOND"
            with m.State("DRAIN"):
                m.d.comb += [rx.ready.eq(1), in_frame.eq(1)]
                with m.If(timed_out):
                    m.next = "RESPOND"

            # -- execute -----------------------------------------------------------------------------------
            with m.State("EXEC"):
                lane = addr[:lb]
                m.d.sync += [err.eq(0), cur.eq(Cat(Const(0, lb), addr[lb:])),
                             words.eq((lane + length + W - 1) >> lb), bi.eq(0), lane0.eq(lane),
                             end_off.eq(lane + length), aw_done.eq(0), w_done.eq(0)]
                with m.If(dup):
                    m.d.sync += status.eq(last_status)
                    m.next = "RESPOND"
                with m.Elif((cmd == Command.CSR_READ) | (cmd == Command.CSR_WRITE)):
                    with m.If(csr_addr_high):
                        m.d.sync += err.eq(1)
                        m.next = "DONE"
                    with m.Elif(cmd == Command.CSR_READ):
                        m.next = "CSR_AR"
                    with m.Else():
                        m.next = "CSR_W"
                with m.Elif((cmd == Command.DRAM_READ) | (cmd == Command.DRAM_WRITE)):
                    m.next = "SIZE"
                with m.Else():
                    m.next = "DONE"     # PING
            with m.State("SIZE"):
                m.d.sync += beats.eq(Mux(words < limit, words, limit))
                with m.If(cmd == Command.DRAM_READ):
                    m.next = "RD_AR"
                with m.Else():
                    m.next = "WR_AW"
            with m.State("CSR_AR"):
                m.d.comb += csr.arvalid.eq(1)
                with m.If(csr.arready):
                    m.next = "CSR_R"
            with m.State("CSR_R"):
                m.d.comb += csr.rready.eq(1)
                with m.If(csr.rvalid):
                    m.d.sync += [csr_rdata.eq(csr.rdata), err.eq(csr.rresp[1])]
                    m.next = "DONE"
            with m.State("CSR_W"):
                m.d.comb += [csr.awvalid.eq(~aw_done), csr.wvalid.eq(~w_done)]
                aw_ok = aw_done | csr.awready
                w_ok = w_done | csr.wready
                m.d.sync += [aw_done.eq(aw_ok), w_done.eq(w_ok)]
                with m.If(aw_ok & w_ok):
                    m.next = "CSR_B"
            with m.State("CSR_B"):
                m.d.comb += csr.bready.eq(1)
                with m.If(csr.bvalid):
                    m.d.sync += err.eq(csr.bresp[1])
                    m.next = "DONE"
            with m.State("RD_AR"):
                m.d.comb += ard.arvalid.eq(1)
                with m.If(ard.arready):
                    m.d.sync += [cur.eq(cur + (beats << lb)), words.eq(words - beats)]
                    m.next = "RD_R"
            with m.State("RD_R"):
                m.d.comb += [ard.rready.eq(1), wp_addr.eq(bi), wp_data.eq(ard.rdata)]
                with m.If(ard.rvalid):
                    with m.If(bi < self.buffer_words):
                        m.d.comb += wp_en.eq(-1)
                    m.d.sync += bi.eq(bi + 1)
                    with m.If(ard.rresp[1]):
                        m.d.sync += err.eq(1)
                    with m.If(ard.rlast):
                        m.next = "RD_NEXT"
            with m.State("RD_NEXT"):
                with m.If(words == 0):
                    m.next = "DONE"
                with m.Else():
                    m.next = "SIZE"
            with m.State("WR_AW"):
                m.d.comb += awr.awvalid.eq(1)
                with m.If(awr.awready):
                    m.d.sync += [cur.eq(cur + (beats << lb)), words.eq(words - beats), burst_left.eq(beats)]
                    m.next = "WR_WORD"
            with m.State("WR_WORD"):
                # Word `bi` is on the read port's output; it is in `rword` next cycle.
                m.next = "WR_W"
            with m.State("WR_W"):
                m.d.comb += awr.wvalid.eq(1)
                with m.If(awr.wready):
                    # Fetch the next word now, so that it is in `rword` two cycles on (a beat every two
                    # cycles: the UART brings a byte in hundreds).
                    m.d.comb += rp_addr.eq(bi + 1)
                    m.d.sync += [bi.eq(bi + 1), burst_left.eq(burst_left - 1)]
                    with m.If(burst_left == 1):
                        m.next = "WR_B"
                    with m.Else():
                        m.next = "WR_WORD"
            with m.State("WR_B"):
                m.d.comb += awr.bready.eq(1)
                with m.If(awr.bvalid):
                    with m.If(awr.bresp[1]):
                        m.d.sync += err.eq(1)
                    with m.If(words == 0):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "SIZE"
            with m.State("DONE"):
                st = Mux(err, Status.BUS_ERROR, Status.OK)
                m.d.sync += [status.eq(st), last_valid.eq(1), last_cmd.eq(cmd), last_seq.eq(seq),
                             last_addr.eq(addr), last_len.eq(length), last_status.eq(st)]
                m.next = "RESPOND"

            # -- respond -----------------------------------------------------------------------------------
            with m.State("RESPOND"):
                m.d.sync += [tx_i.eq(0), crc.eq(CRC_INIT), pay_i.eq(0), rsp_len.eq(rsp_len_next),
                             bp.eq(Mux(cmd == Command.DRAM_READ, addr[:lb], 0))]
                m.next = "TX_HEAD_PICK"
            with m.State("TX_HEAD_PICK"):
                # The header byte is registered before it goes out, as TX_PICK does for the payload (the
                # byte choice and the CRC update were one path).
                m.d.sync += tx_byte.eq(head_bytes[tx_i])
                m.next = "TX_HEAD"
            with m.State("TX_HEAD"):
                m.d.comb += [tx.valid.eq(1), tx.payload.eq(tx_byte)]
                with m.If(tx_fire):
                    m.d.sync += tx_i.eq(tx_i + 1)
                    with m.If(tx_i != 0):
                        m.d.sync += crc.eq(crc_tx)
                    with m.If(tx_i == RSP_HEADER_BYTES - 1):
                        m.d.sync += crc_i.eq(0)
                        m.next = "TX_NEXT"
                    with m.Else():
                        m.next = "TX_HEAD_PICK"
            with m.State("TX_NEXT"):
                # The buffer word of the next payload byte is read here (one cycle of latency).
                m.d.comb += rp_addr.eq(bp[lb:])
                with m.If(pay_i == rsp_len):
                    m.next = "TX_CRC"
                with m.Else():
                    m.next = "TX_WORD"
            with m.State("TX_WORD"):
                m.d.comb += rp_addr.eq(bp[lb:])     # the word goes into `rword`
                m.next = "TX_PICK"
            with m.State("TX_PICK"):
                # The byte is registered before it goes out: the byte select and the CRC update would
                # otherwise be one path (a byte takes thousands of cycles on the UART).
                with m.Switch(cmd):
                    with m.Case(Command.DRAM_READ):
                        m.d.sync += tx_byte.eq(rword.word_select(bp[:lb], 8))
                    with m.Case(Command.CSR_READ):
                        m.d.sync += tx_byte.eq(csr_rdata.word_select(pay_i[:2], 8))
                    with m.Default():
                        m.d.sync += tx_byte.eq(ping_bytes[pay_i[:3]])
                m.next = "TX_BODY"
            with m.State("TX_BODY"):
                m.d.comb += [tx.valid.eq(1), tx.payload.eq(tx_byte)]
                with m.If(tx_fire):
                    m.d.sync += [crc.eq(crc_tx), pay_i.eq(pay_i + 1), bp.eq(bp + 1)]
                    m.next = "TX_NEXT"
            with m.State("TX_CRC"):
                m.d.comb += [tx.valid.eq(1), tx.payload.eq(Mux(crc_i, crc[:8], crc[8:]))]
                with m.If(tx_fire):
                    m.d.sync += crc_i.eq(1)
                    with m.If(crc_i):
                        m.next = "HUNT"

        m.d.comb += self.busy.eq(~fsm.ongoing("HUNT"))
        # The reads whose words are used: sampled in these states, in `rword` two cycles later.
        read_used = Signal()
        m.d.comb += read_used.eq(fsm.ongoing("WR_AW") | fsm.ongoing("WR_WORD") | fsm.ongoing("WR_W")
                                 | fsm.ongoing("TX_NEXT") | fsm.ongoing("TX_WORD"))
        for h, (wp, rp) in enumerate(halves):
            assert_no_collision(m, platform, wp, rp, read_used, f"the host link's payload buffer (half {h})")
        return m


class UartLink(wiring.Component):
    """:class:`BoardLink` behind a UART: the shell's host port on the two UART pins.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (:func:`hw.board.uart.baud_divisor`).
    **link_args
        :class:`BoardLink`'s parameters (``data_bits``, ``max_payload``, ``timeout_cycles``, ...).

    Attributes
    ----------
    rx : In(1)
    tx : Out(1)
        The UART lines (from and to the host).
    csr, axi_rd, axi_wr, busy
        As :class:`BoardLink`'s.
    framing_error : Out(1)
        :class:`hw.board.uart.UartRx`'s pulse (the byte is lost; the frame's CRC or timeout catches it).
    """

    def __init__(self, divisor, **link_args):
        self.uart_rx = UartRx(divisor)
        self.uart_tx = UartTx(divisor)
        self.link = BoardLink(**link_args)
        super().__init__({
            "rx": In(1, init=1), "tx": Out(1, init=1),
            "csr": Out(self.link.csr.signature), "axi_rd": Out(self.link.read_signature),
            "axi_wr": Out(self.link.write_signature), "busy": Out(1), "framing_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx, m.submodules.uart_tx, m.submodules.link = self.uart_rx, self.uart_tx, self.link
        m.d.comb += [self.uart_rx.rx.eq(self.rx), self.tx.eq(self.uart_tx.tx),
                     self.framing_error.eq(self.uart_rx.framing_error), self.busy.eq(self.link.busy)]
        # The received bytes cross to the link through a register slice: the UART's receiver sits by its
        # pin, and its byte register's enable came from its bit timer over a 10 ns route (12.67 ns, the
        # worst placed path of the shell at 0b0a153 with seed 2). A byte arrives a cycle later.
        m.submodules.rx_slice = rx_slice = SkidBuffer(8)
        wiring.connect(m, self.uart_rx.data, rx_slice.i)
        wiring.connect(m, rx_slice.o, self.link.rx)
        wiring.connect(m, self.link.tx, self.uart_tx.data)
        for name in ("csr", "axi_rd", "axi_wr"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(self.link, name))
        return m
