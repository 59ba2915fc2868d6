"""Loads a LINEAR / LOGITS parameter record (``hw/dram_format.py``) from DRAM: the scalars to registers,
the ``k`` RMSNorm gains to an on-chip gain memory that the unit replays for every token of the run.

Record: ``shift`` (int8) and 3 zero bytes, ``eps``, ``sw0``, ``sw1``, ``sw2`` (SFloat: ``m`` uint32,
``e`` int32), then ``k`` int16 gains; little-endian, starting on a bus word.

The loader reads ``ceil((36 + 2k) / bus)`` bus words in one command. A byte queue (the same idea as the
EMBED unit's) takes the 36 header bytes and then ``lanes`` gains per beat; gain word ``j`` holds gains
``j * lanes .. j * lanes + lanes - 1`` (lanes beyond ``k`` are 0), the layout of
:func:`~hw.vector.norm_quant.norm_in_layout`'s ``g`` field.
"""

from amaranth.hdl import Cat, Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..collision import assert_no_collision, collision_free_memory
from ..dram_format import PARAM_HEADER_BYTES, SFLOAT_BYTES
from ..isa import ADDR_BITS
from ..memory.axi import AxiBurstReader
from ..params import check_int
from ..vector.norm_quant import GAIN_SHIFT_BITS
from ..vector.scalar_unit import E_BITS, sfloat_layout
from .byte_queue import ByteQueue

__all__ = ["ParamsLoader", "params_header_layout"]

_GAIN_BITS = 16


def params_header_layout(e_bits=E_BITS):
    return data.StructLayout({"shift": signed(GAIN_SHIFT_BITS), "eps": sfloat_layout(e_bits),
                              "sw0": sfloat_layout(e_bits), "sw1": sfloat_layout(e_bits),
                              "sw2": sfloat_layout(e_bits)})


class ParamsLoader(wiring.Component):
    """See the module docstring.

    Parameters
    ----------
    data_bits : int
        DRAM bus width, a power of two of at least 32 bits.
    lanes : int
        Gains per gain-memory word (the vector lanes), a power of two.
    max_k : int
        Largest ``k``.

    Attributes
    ----------
    cmd : In(stream.Signature({"addr", "k"}))
        Load the record at ``addr`` for ``k`` inputs.
    header : Out(params_header_layout())
        Valid once ``done`` (the SFloats' exponents truncated to the scalar unit's ``e_bits``).
    gain_addr : In(range(words)), gain_data : Out(lanes * 16), gain_read : In(1)
        Synchronous read port of the gain memory: ``gain_data`` is the word ``gain_addr`` named in the
        previous cycle (block RAM). ``gain_read`` marks a read whose data is used: it must not meet a
        write of the same word (there is no collision bypass; checked in simulation), so read the gains
        once the loader is done.
    axi : Out(AxiReadSignature)
    busy : Out(1)
    """

    def __init__(self, *, data_bits, lanes, max_k):
        owner = "ParamsLoader"
        self.data_bits = check_int("data_bits", data_bits, 32, 1024, owner)
        if data_bits & (data_bits - 1):
            raise ValueError(f"{owner}: data_bits must be a power of two, got {data_bits}")
        self.lanes = check_int("lanes", lanes, 1, 64, owner)
        if lanes & (lanes - 1):
            raise ValueError(f"{owner}: lanes must be a power of two, got {lanes}")
        self.max_k = check_int("max_k", max_k, 1, 1 << 17, owner)
        self.words = -(-max_k // lanes)
        bus = data_bits // 8
        beats = -(-(PARAM_HEADER_BYTES + 2 * lanes * self.words) // bus) + 1
        self._reader = AxiBurstReader(ADDR_BITS, data_bits, buffer_words=max(8, min(beats, 128)),
                                      max_burst=min(64, max(8, min(beats, 128))), max_outstanding=2,
                                      beats_bits=beats.bit_length() + 1)
        self.axi_signature = self._reader.axi_signature
        super().__init__({
            "cmd": In(stream.Signature(data.StructLayout({"addr": unsigned(ADDR_BITS),
                                                          "k": unsigned(max_k.bit_length())}))),
            "header": Out(params_header_layout()),
            "gain_addr": In(range(max(2, self.words))),
            "gain_data": Out(lanes * _GAIN_BITS),
            "gain_read": In(1),
            "axi": Out(self._reader.axi_signature),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader = rd = self._reader
        wiring.connect(m, wiring.flipped(self.axi), rd.axi)
        L, B = self.lanes, self.data_bits // 8
        vec_bytes = 2 * L

        m.submodules.gains = gains = collision_free_memory(shape=unsigned(L * _GAIN_BITS),
                                                           depth=max(2, self.words))
        wr = gains.write_port()
        # Synchronous read, so the memory is block RAM rather than LUTs (704 x 64 bits at the ecp5 config
        # took 4,224 LUT sites as distributed RAM), without a collision bypass: its multiplexer would sit
        # after the block RAM's data, which the LINEAR unit registers in the block's output register.
        rdp = gains.read_port(domain="sync")
        m.d.comb += [rdp.addr.eq(self.gain_addr), self.gain_data.eq(rdp.data)]
        assert_no_collision(m, platform, wr, rdp, self.gain_read, "gain words")

        # Byte queue: bus words in; the header (36 bytes) then `lanes` gains per step out.
        bq = ByteQueue(m, rd.data.payload.data, word_bytes=B, head_bytes=PARAM_HEADER_BYTES, item_bytes=vec_bytes)
        q = bq.q

        k = Signal.like(self.cmd.payload.k)
        addr = Signal(ADDR_BITS)
        words = Signal(range(self.words + 1))
        word = Signal(range(self.words + 1))
        more = Signal()                        # word < words, kept as a flip-flop (it gates the queue's take)
        hdr = self.header

        def sfloat(offset):
            """An SFloat of the record at byte ``offset`` of the queue: ``m`` uint32 (24 bits used), ``e``."""
            return {"m": q[8 * offset:8 * offset + 24], "e": q[8 * offset + 32:8 * offset + 32 + E_BITS]}

        with m.FSM(name="params"):
            with m.State("IDLE"):
                # Emptied on every idle cycle (nothing enters the queue here): a clear on the command's
                # arrival put the LINEAR unit's command valid on the reset of all 320 queue flip-flops.
                m.d.comb += [self.cmd.ready.eq(1), bq.clear.eq(1)]
                with m.If(self.cmd.valid):
                    ck = self.cmd.payload.k
                    m.d.sync += [k.eq(ck), addr.eq(self.cmd.payload.addr),
                                 words.eq((ck + L - 1) >> (L.bit_length() - 1)),
                                 word.eq(0), more.eq(ck != 0), self.busy.eq(1)]
                    m.next = "READ"
            with m.State("READ"):
                total = PARAM_HEADER_BYTES + 2 * L * words
                m.d.comb += [rd.cmd.valid.eq(1), rd.cmd.payload.addr.eq(addr),
                             rd.cmd.payload.beats.eq((total + B - 1) >> (B.bit_length() - 1))]
                with m.If(rd.cmd.ready):
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += [rd.data.ready.eq(~bq.holds(PARAM_HEADER_BYTES)), bq.push.eq(rd.data.valid & rd.data.ready)]
                with m.If(bq.holds(PARAM_HEADER_BYTES)):
                    m.d.comb += bq.take_head.eq(1)
                    m.d.sync += hdr.shift.eq(q[:8].as_signed())
                    for name, off in (("eps", 4), ("sw0", 4 + SFLOAT_BYTES), ("sw1", 4 + 2 * SFLOAT_BYTES),
                                      ("sw2", 4 + 3 * SFLOAT_BYTES)):
                        f = sfloat(off)
                        m.d.sync += [getattr(hdr, name).m.eq(f["m"]), getattr(hdr, name).e.eq(f["e"])]
                    m.next = "GAINS"
            with m.State("GAINS"):
                m.d.comb += [bq.take_item.eq(bq.holds(vec_bytes) & more),
                             rd.data.ready.eq(bq.room), bq.push.eq(rd.data.valid & rd.data.ready)]
                with m.If(bq.take_item):
                    lanes_live = Signal(L)
                    for n in range(L):
                        m.d.comb += lanes_live[n].eq(word * L + n < k)
                    vals = [q[16 * n:16 * n + 16] & lanes_live[n].replicate(16) for n in range(L)]
                    m.d.comb += [wr.addr.eq(word), wr.data.eq(Cat(*vals)), wr.en.eq(1)]
                    m.d.sync += [word.eq(word + 1), more.eq(word + 1 < words)]
                with m.If(word == words):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += rd.data.ready.eq(1)
                with m.If(rd.idle & ~rd.data.valid):
                    m.d.sync += self.busy.eq(0)
                    m.next = "IDLE"
        return m
