"""A fast AXI4 DRAM model for simulation: fixed latency, a bandwidth limit, optional random jitter.

cocotbext-axi's ``AxiRamRead`` is the reference slave for protocol tests, but it runs Python for every
beat. This model is gateware, so it is compiled into the Verilated design with everything else and a
full-model co-simulation runs at Verilator speed. It is not meant for synthesis (the memory has an
asynchronous read port, and a counter compares deadlines).

Timing, for a burst accepted on cycle ``t`` (AR handshake):

* its first beat is valid on cycle ``t + latency`` at the earliest (later when earlier bursts still
  occupy the data channel, when the bandwidth budget is spent, or when ``rready`` is low);
* beats follow back to back, across bursts too, at ``bytes_per_cycle`` on average: a token bucket
  earns ``bytes_per_cycle`` every cycle (in 1/256 byte units) and a beat costs the bus width. The
  bucket holds less than one beat plus one cycle's earnings, so idle time banks almost nothing;
* with ``jitter = j > 0`` each burst gets ``0 .. 2**j - 1`` extra cycles of latency and each beat slot
  is skipped with probability 1/4, both from an LFSR (deterministic for a given ``seed``).

The model also checks the master: ``violation`` goes high (sticky) on a burst that is not INCR, not
full width, misaligned, or crosses a 4 KiB boundary.
"""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from ..params import check_int
from .axi import BOUNDARY_BYTES, AxiBurst, AxiReadSignature, AxiResp

__all__ = ["FastDramModel", "load_layout", "TOKEN_FRACTION_BITS"]

#: The token bucket counts bytes in units of 2**-8.
TOKEN_FRACTION_BITS = 8
_NOW_BITS = 32


def load_layout(depth, data_bits):
    """One word written into the model's memory through the ``load`` port (word address)."""
    return data.StructLayout({"addr": unsigned(max(1, (depth - 1).bit_length())), "data": unsigned(data_bits)})


class FastDramModel(wiring.Component):
    """AXI4 read slave backed by a ``lib.memory.Memory``, with a set latency and bandwidth.

    Parameters
    ----------
    addr_bits, data_bits, id_bits : int
        As for :class:`AxiReadSignature`.
    depth : int
        Memory size in bus words. Word ``i`` is at byte address ``i * data_bits // 8``; reads beyond
        the end return zeros with a DECERR response.
    init : sequence of int
        Initial contents (bus words, little-endian bytes), zero-padded to ``depth``.
    latency : int
        Cycles from the AR handshake to the first beat (at least 2).
    bytes_per_cycle : float
        Average data-channel bandwidth (0 < b <= data_bits / 8). Default: the full bus width.
    max_outstanding : int
        Bursts the model accepts before it stops raising ``arready``.
    jitter : int
        0 for exact timing, else the random extra latency exponent (see the module docstring).
    loadable : bool
        Add a ``load`` stream port that writes words into the memory (testbenches use it to change the
        contents without rebuilding the model).
    seed : int
        Non-zero LFSR seed for the jitter.

    Attributes
    ----------
    axi : In(AxiReadSignature(addr_bits, data_bits, id_bits))
    load : In(stream.Signature(load_layout(depth, data_bits)))
        Only with ``loadable``; always ready.
    violation : Out(1)
    """

    def __init__(self, addr_bits, data_bits, *, depth, init=(), latency=20, bytes_per_cycle=None,
                 max_outstanding=8, id_bits=1, jitter=0, loadable=False, seed=0xACE1):
        owner = "FastDramModel"
        self.axi_signature = AxiReadSignature(addr_bits, data_bits, id_bits)
        self.addr_bits, self.data_bits = addr_bits, data_bits
        self.depth = check_int("depth", depth, 1, 1 << 26, owner)
        self.init = [int(v) for v in init]
        if len(self.init) > depth:
            raise ValueError(f"{owner}: init has {len(self.init)} words, more than depth = {depth}")
        self.latency = check_int("latency", latency, 2, 1 << 16, owner)
        bpc = float(self.data_bytes if bytes_per_cycle is None else bytes_per_cycle)
        if not 0 < bpc <= self.data_bytes:
            raise ValueError(f"{owner}: bytes_per_cycle must be in (0, {self.data_bytes}], got {bytes_per_cycle!r}")
        self.rate = max(1, round(bpc * (1 << TOKEN_FRACTION_BITS)))
        self.max_outstanding = check_int("max_outstanding", max_outstanding, 1, 256, owner)
        self.jitter = check_int("jitter", jitter, 0, 8, owner)
        self.seed = check_int("seed", seed, 1, (1 << 32) - 1, owner)
        self.loadable = bool(loadable)
        members = {"axi": In(self.axi_signature), "violation": Out(1)}
        if self.loadable:
            members["load"] = In(stream.Signature(load_layout(depth, data_bits)))
        super().__init__(members)

    @property
    def data_bytes(self):
        return self.data_bits // 8

    @property
    def bytes_per_cycle(self):
        """The bandwidth actually modelled (the requested one rounded to 1/256 byte)."""
        return self.rate / (1 << TOKEN_FRACTION_BITS)

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        size = exact_log2(self.data_bytes)
        word_bits = self.addr_bits - size

        m.submodules.mem = mem = Memory(shape=self.data_bits, depth=self.depth, init=self.init)
        rd = mem.read_port(domain="comb")
        if self.loadable:
            wr = mem.write_port()
            m.d.comb += [
                self.load.ready.eq(1),
                wr.addr.eq(self.load.payload.addr),
                wr.data.eq(self.load.payload.data),
                wr.en.eq(self.load.valid),
            ]

        now = Signal(_NOW_BITS)
        m.d.sync += now.eq(now + 1)
        lfsr = Signal(32, init=self.seed)
        m.d.sync += lfsr.eq(Mux(lfsr[0], (lfsr >> 1) ^ 0xA3000000, lfsr >> 1))

        # Accepted bursts wait in a queue with the cycle their first beat may go out.
        ar_layout = data.StructLayout({"word": unsigned(word_bits), "len": unsigned(8),
                                       "id": unsigned(self.axi_signature.id_bits), "due": unsigned(_NOW_BITS)})
        m.submodules.queue = queue = SyncFIFO(width=ar_layout.size, depth=self.max_outstanding)
        ar_fire = Signal()
        entry = Signal(ar_layout)
        extra = lfsr[:self.jitter] if self.jitter else 0
        m.d.comb += [
            axi.arready.eq(queue.w_rdy),
            ar_fire.eq(axi.arvalid & axi.arready),
            entry.word.eq(axi.araddr[size:]),
            entry.len.eq(axi.arlen),
            entry.id.eq(axi.arid),
            # The entry is visible one cycle after the handshake and a beat is registered, hence -1.
            entry.due.eq(now + (self.latency - 1) + extra),
            queue.w_data.eq(entry),
            queue.w_en.eq(ar_fire),
        ]

        end = (axi.araddr[:12] + ((axi.arlen + 1) << size))
        with m.If(ar_fire & ((axi.arburst != AxiBurst.INCR) | (axi.arsize != size)
                             | (axi.araddr[:size] != 0) | (end > BOUNDARY_BYTES))):
            m.d.sync += self.violation.eq(1)

        # The beat source: the burst in progress, else the queue's head once it is due.
        head = ar_layout(queue.r_data)
        head_due = Signal()
        m.d.comb += head_due.eq(queue.r_rdy & ~(now - head.due)[_NOW_BITS - 1])
        busy = Signal()
        cur = Signal(word_bits)
        left = Signal(8)
        cur_id = Signal(self.axi_signature.id_bits)
        src_word = Mux(busy, cur, head.word)
        src_left = Mux(busy, left, head.len)
        src_id = Mux(busy, cur_id, head.id)

        cost = self.data_bytes << TOKEN_FRACTION_BITS
        tokens = Signal(range(cost + self.rate + 1), init=cost)
        gap = (lfsr[8] & lfsr[9]) if self.jitter else 0
        emit = Signal()
        m.d.comb += [
            emit.eq((busy | head_due) & (tokens >= cost) & ~gap & (~axi.rvalid | axi.rready)),
            rd.addr.eq(src_word),
        ]
        # Capped just below one beat plus one cycle's earnings: a source that is always eligible
        # never hits the cap (no loss), and an idle or stalled one banks less than one beat.
        cap = cost + self.rate - 1
        after = tokens + self.rate - Mux(emit, cost, 0)
        m.d.sync += tokens.eq(Mux(after > cap, cap, after))

        with m.If(emit):
            in_range = src_word < self.depth
            m.d.sync += [
                axi.rvalid.eq(1),
                axi.rdata.eq(Mux(in_range, rd.data, 0)),
                axi.rresp.eq(Mux(in_range, AxiResp.OKAY, AxiResp.DECERR)),
                axi.rlast.eq(src_left == 0),
                axi.rid.eq(src_id),
                busy.eq(src_left != 0),
                cur.eq(src_word + 1),
                left.eq(src_left - 1),
                cur_id.eq(src_id),
            ]
            m.d.comb += queue.r_en.eq(~busy)
        with m.Elif(axi.rready):
            m.d.sync += axi.rvalid.eq(0)
        return m
