"""The EMBED unit: token ids and embedding rows from DRAM to Q.16 residual-stream vectors.

For each token of the run, ``x = saturate32(round_shift(q * m16, -(e + 16)))`` per element, with the
row's int16 values ``q`` and row scale ``m16 * 2^e`` (``docs/isa.md``, ``golden.model_int.embed_tokens``).

Sequence of a command
---------------------
1. Read the run's ``n_tokens`` int32 ids (one burst from ``tokens``) into a small id memory; an id at or
   beyond ``rows`` raises the ``BAD_TOKEN`` fault (and nothing is emitted).
2. Per token, read its row (``table + id * stride``; ``stride`` is a multiple of the bus width). A byte
   queue takes bus words in and gives out the 4-byte row scale, then ``lanes`` int16 values per beat.
3. Each beat is scaled in four free-running pipeline stages: a 16 x 16-bit product per lane (registered
   in its multiplier block), a copy of it in fabric registers, then a rounding right shift or a left
   shift by ``-(e + 16)``, then saturation to int32. Lanes at or beyond ``hidden`` are zero. The stages
   end in an output FIFO, and a beat is taken only while the FIFO has room for it and every beat ahead
   of it, so ``x.ready`` reaches no pipeline register.

Output ``x``: ``ceil(hidden / lanes)`` beats per token, tokens in order, each with its ``token`` and
``beat`` index (the residual buffer's write address).
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.numerics import RES_FRAC

from ..arith.dsp import DSP_WIDTH, registered_product
from ..arith.tree import shift_add
from ..dram_format import ROW_SCALE_BYTES
from ..isa import ADDR_BITS, BODIES, RUN_ARGS, ErrorCode, Opcode
from ..memory.axi import AxiBurstReader
from ..params import check_int
from ..replica import REPLICA_ATTR
from ..tlmm.layouts import token_bits
from ..vector.epilogue import lane, output_fifo, vector_layout
from .byte_queue import ByteQueue

__all__ = ["EmbedUnit", "embed_out_layout"]

_ID_BYTES = 4
#: Right shifts of 33 or more leave 0 for any int32 product (|p| < 2^31 < 2^(s-1)); left shifts of 32 or
#: more saturate any non-zero product. The shifter therefore only needs amounts up to these.
_MAX_RIGHT = 33
_MAX_LEFT = 32


def _ceil_div(v, d):
    """``ceil(v / d)`` for a constant power of two ``d`` (a shift, no divider)."""
    assert d & (d - 1) == 0
    return (v + d - 1) >> (d.bit_length() - 1)


def embed_out_layout(lanes, max_tokens, max_beats):
    return data.StructLayout({
        "data": vector_layout(lanes, 32),
        "token": unsigned(token_bits(max_tokens)),
        "beat": unsigned(max(1, (max_beats - 1).bit_length())),
    })


class EmbedUnit(wiring.Component):
    """See the module docstring.

    Parameters
    ----------
    data_bits : int
        DRAM bus width, a power of two of at least 32 bits.
    lanes : int
        Values per output beat (the vector lanes).
    max_hidden : int
        Largest ``hidden``.
    max_tokens : int
        Most tokens per run.

    Attributes
    ----------
    cmd : In(stream.Signature(BODIES[Opcode.EMBED]))
    hidden : In(16)
        ``SETUP.hidden``.
    tokens, n_tokens : In
        Run arguments: address of the ids and their count.
    axi : Out(AxiReadSignature)
    x : Out(stream.Signature(embed_out_layout(...)))
    busy : Out(1)
    fault : Out(ErrorCode)
        ``BAD_TOKEN`` (sticky until the next command).
    """

    #: Free-running register stages from a beat's take to the output FIFO.
    STAGES = 4

    def __init__(self, *, data_bits, lanes, max_hidden, max_tokens):
        owner = "EmbedUnit"
        self.data_bits = check_int("data_bits", data_bits, 32, 1024, owner)
        if data_bits & (data_bits - 1):
            raise ValueError(f"{owner}: data_bits must be a power of two, got {data_bits}")
        self.lanes = check_int("lanes", lanes, 1, 64, owner)
        if lanes & (lanes - 1):
            raise ValueError(f"{owner}: lanes must be a power of two, got {lanes}")
        self.max_hidden = check_int("max_hidden", max_hidden, 1, (1 << 16) - 1, owner)
        self.max_tokens = check_int("max_tokens", max_tokens, 1, 1 << 12, owner)
        self.max_beats = -(-max_hidden // lanes)
        bus = data_bits // 8
        row_beats = -(-(ROW_SCALE_BYTES + 2 * lanes * self.max_beats) // bus) + 1
        id_beats = -(-(_ID_BYTES * max_tokens) // bus)
        self._reader = AxiBurstReader(ADDR_BITS, data_bits, buffer_words=max(8, 2 * min(row_beats, 64)),
                                      max_burst=min(64, max(row_beats, id_beats)), max_outstanding=2,
                                      beats_bits=max(row_beats, id_beats).bit_length() + 1)
        super().__init__({
            "cmd": In(stream.Signature(BODIES[Opcode.EMBED])),
            "hidden": In(16),
            "tokens": In(ADDR_BITS),
            "n_tokens": In(RUN_ARGS["n_tokens"]),
            "axi": Out(self._reader.axi_signature),
            "x": Out(stream.Signature(embed_out_layout(lanes, max_tokens, self.max_beats))),
            "busy": Out(1),
            "fault": Out(ErrorCode),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader = rd = self._reader
        wiring.connect(m, wiring.flipped(self.axi), rd.axi)
        L, B = self.lanes, self.data_bits // 8
        ids_per_word = B // _ID_BYTES

        table = Signal(ADDR_BITS)
        rows = Signal.like(self.cmd.payload.rows)
        stride = Signal.like(self.cmd.payload.stride)
        n_tok = Signal.like(self.n_tokens)
        beats = Signal(range(self.max_beats + 1))          # vector beats per token
        m.submodules.ids = ids = memory.Memory(shape=unsigned(32), depth=self.max_tokens, init=[])
        id_wr = ids.write_port()
        id_rd = ids.read_port(domain="comb")

        # -- byte queue: bus words in, the row scale and `lanes` int16 values out --------------------------
        vec_bytes = 2 * L
        bq = ByteQueue(m, rd.data.payload.data, word_bytes=B, head_bytes=ROW_SCALE_BYTES, item_bytes=vec_bytes)
        q = bq.q

        # -- scaling pipeline: product (with the row's shift amounts), copy, shift, saturate ------------------
        # Four registered stages that load on every clock edge, into an output FIFO (`output_fifo`): a beat
        # is taken only while `take` (a flip-flop) says the FIFO has room for it. The stages used to
        # advance together when the output could move, and `x.ready` then ran through that enable into the
        # take strobe and the byte queue's slot multiplexers (11.22 ns routed on the ECP5 shell at
        # e8c64fe, 32 endpoints). The shift amounts travel with each product, so a new row's scale never
        # meets the last row's products.
        m16 = Signal(16)
        take_vec = bq.take_item
        take = Signal(init=1)
        # int16 x uint16 fits int32 (|q m16| < 2^31), and one multiplier block, registered in the block:
        # the product of the item taken is there a cycle after the take, beside `p_valid`.
        prods = [registered_product(m, f"p{n}", q[16 * n:16 * n + 16].as_signed(), m16, platform=platform)
                 for n in range(L)]
        sh = Signal(signed(18))                             # -(e + 16)
        p_valid = Signal()
        p_token = Signal.like(self.x.payload.token)
        p_beat = Signal.like(self.x.payload.beat)
        live = [Signal(name=f"live{n}") for n in range(L)]
        p_down = Signal()                                   # sh > 0: a rounding right shift
        p_right_m1 = Signal(range(_MAX_RIGHT))              # right shift - 1 (right >= 1 when p_down)
        p_left = Signal(range(_MAX_LEFT + 1))
        # Stage 2 copies the products, registered in the multiplier blocks, into fabric registers: the long
        # route out of a block then ends at a register rather than going on through a shifter.
        c_valid = Signal()
        c_token = Signal.like(p_token)
        c_beat = Signal.like(p_beat)
        c_prods = [Signal.like(prods[n], name=f"c_p{n}") for n in range(L)]
        c_live = [Signal(name=f"c_live{n}") for n in range(L)]
        c_down = Signal()
        # The shift amounts, one copy per lane (replicas): one register steered every lane's 32-bit shifter
        # (a 2.6 ns route from c_left into the left shifter: 10.35 ns routed at 9887928).
        c_right_m1 = [Signal.like(p_right_m1, name=f"c_right_m1_{n}", attrs={REPLICA_ATTR: 1}) for n in range(L)]
        c_left = [Signal.like(p_left, name=f"c_left{n}", attrs={REPLICA_ATTR: 1}) for n in range(L)]
        v_valid = Signal()
        v_token = Signal.like(self.x.payload.token)
        v_beat = Signal.like(self.x.payload.beat)
        v_down = Signal()
        v_right = [Signal(signed(34), name=f"v_right{n}") for n in range(L)]     # p >> (r - 1)
        v_left = [Signal(signed(33 + _MAX_LEFT), name=f"v_left{n}") for n in range(L)]
        v_live = [Signal(name=f"v_live{n}") for n in range(L)]
        o_valid = Signal()
        o_beat = Signal.like(self.x.payload)
        lim_hi, lim_lo = (1 << 31) - 1, -(1 << 31)
        m.d.sync += [p_valid.eq(take_vec), c_valid.eq(p_valid), c_token.eq(p_token), c_beat.eq(p_beat),
                     c_down.eq(p_down)]
        m.d.sync += [c.eq(p_right_m1) for c in c_right_m1] + [c.eq(p_left) for c in c_left]
        m.d.sync += [v_valid.eq(c_valid), v_token.eq(c_token), v_beat.eq(c_beat), v_down.eq(c_down)]
        m.d.sync += [o_valid.eq(v_valid), o_beat.token.eq(v_token), o_beat.beat.eq(v_beat)]
        for n in range(L):
            # Stage 3: the shifts. Stage 4: (p + 2^(r-1)) >> r == ((p >> (r-1)) + 1) >> 1, round half up
            # with one small adder (|q m16| < 2^31, so a right shift by 1 or more never saturates), or the
            # left shift saturated to int32.
            m.d.sync += [c_prods[n].eq(prods[n]), c_live[n].eq(live[n])]
            m.d.sync += [v_right[n].eq(c_prods[n] >> c_right_m1[n]), v_left[n].eq(c_prods[n] << c_left[n]),
                         v_live[n].eq(c_live[n])]
            down = Signal(signed(34), name=f"down{n}")
            m.d.comb += down.eq((v_right[n] + 1) >> 1)
            up = v_left[n]
            sat = Mux(up > lim_hi, lim_hi, Mux(up < lim_lo, lim_lo, up))
            m.d.sync += lane(o_beat.data, n).eq(Mux(v_live[n], Mux(v_down, down, sat), 0))
        owed = output_fifo(m, take, take_vec, o_valid, o_beat, self.x, self.STAGES)

        # -- sequencer -------------------------------------------------------------------------------------
        tok = Signal.like(n_tok)
        beat = Signal(range(self.max_beats + 1))
        # beat < beats, as a flip-flop beside the count: the compare's carry chain sat in front of the take
        # strobe, which enables the byte queue's 100-odd flip-flops and the multipliers (11.0 ns placed on
        # the ECP5 shell at 6c79f98, 90 late endpoints).
        beat_more = Signal()
        id_word = Signal(self.data_bits)
        id_idx = Signal(range(max(2, ids_per_word + 1)))
        fault = Signal(ErrorCode)
        m.d.comb += [self.fault.eq(fault), id_rd.addr.eq(tok)]
        m.d.comb += rd.cmd.payload.tag.eq(0)
        row_bytes = Signal(20)
        m.d.comb += row_bytes.eq(ROW_SCALE_BYTES + 2 * L * beats)

        # -- row offset: id * stride (mod 2^32) in three registered steps that run in every cycle from `tok`:
        # the id, the partial products, their sum. `tok` moves on as the last vector of a row is taken
        # (VALUES -> ROW_DRAIN; ID_STORE sets it to 0 before DRAIN_IDS), and ROW_CMD, which uses the sum, comes
        # after ROW_DRAIN (or DRAIN_IDS), ROW and ROW_MUL, a cycle each at least: no cycle is added. An id that
        # reaches a row is below `rows` (BAD_TOKEN otherwise), so len(rows) bits of it suffice. With
        # id = i1 2^18 + i0 and stride = s1 2^18 + s0, id * stride = i0 s0 + (i1 s0 + i0 s1) 2^18 + i1 s1 2^36,
        # the last term 0 mod 2^32: i0 s0 and i1 s0 are multiplier blocks with their output registers, and
        # s1 has two bits, so i0 s1 is a sum of shifted copies of i0 (no block).
        assert ADDR_BITS <= 2 * DSP_WIDTH and len(stride) - DSP_WIDTH <= 2
        row_id = Signal(len(rows))
        m.d.sync += row_id.eq(id_rd.data)
        i0, i1, s0, s1 = row_id[:DSP_WIDTH], row_id[DSP_WIDTH:], stride[:DSP_WIDTH], stride[DSP_WIDTH:]
        p00 = registered_product(m, "row_p00", i0, s0, platform=platform)
        p10 = registered_product(m, "row_p10", i1, s0, platform=platform)
        p01 = Signal(len(i0) + len(s1))
        m.d.sync += p01.eq(shift_add(i0, s1))
        row_off = Signal(ADDR_BITS)
        m.d.sync += row_off.eq(p00 + ((p10 + p01) << DSP_WIDTH))

        with m.FSM(name="embed"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    c = self.cmd.payload
                    m.d.sync += [table.eq(c.table), rows.eq(c.rows), stride.eq(c.stride), n_tok.eq(self.n_tokens),
                                 beats.eq(_ceil_div(self.hidden, L)), fault.eq(ErrorCode.NONE), tok.eq(0),
                                 self.busy.eq(1)]
                    with m.If(self.n_tokens == 0):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "IDS"
            with m.State("IDS"):
                m.d.comb += [rd.cmd.valid.eq(1), rd.cmd.payload.addr.eq(self.tokens),
                             rd.cmd.payload.beats.eq(_ceil_div(n_tok * _ID_BYTES, B))]
                with m.If(rd.cmd.ready):
                    m.next = "ID_WORD"
            with m.State("ID_WORD"):
                m.d.comb += rd.data.ready.eq(1)
                with m.If(rd.data.valid):
                    m.d.sync += [id_word.eq(rd.data.payload.data), id_idx.eq(0)]
                    m.next = "ID_STORE"
            with m.State("ID_STORE"):
                # Unpack one id per cycle (a handful per run); the rest of the last word is padding.
                the_id = id_word.word_select(id_idx, 32) if ids_per_word > 1 else id_word[:32]
                m.d.comb += [id_wr.addr.eq(tok), id_wr.data.eq(the_id), id_wr.en.eq(1)]
                with m.If(the_id >= rows):
                    m.d.sync += fault.eq(ErrorCode.BAD_TOKEN)
                m.d.sync += [tok.eq(tok + 1), id_idx.eq(id_idx + 1)]
                with m.If(tok + 1 == n_tok):
                    m.d.sync += tok.eq(0)
                    m.next = "DRAIN_IDS"
                with m.Elif(id_idx == ids_per_word - 1):
                    m.next = "ID_WORD"
            with m.State("DRAIN_IDS"):
                # The ids burst may hold more words than the ids used (none when sizes line up).
                m.d.comb += rd.data.ready.eq(1)
                with m.If(rd.idle & ~rd.data.valid):
                    with m.If(fault != ErrorCode.NONE):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "ROW"
            with m.State("ROW"):
                with m.If(tok == n_tok):
                    m.next = "DONE"
                with m.Else():
                    m.next = "ROW_MUL"
            with m.State("ROW_MUL"):
                # The row offset's last step (see above). Empty the queue: bytes left from the last row (the
                # read may run into the next row) must not be ORed into this one. (Done here, where nothing
                # enters the queue, rather than on the read command's ready, which then reached the reset
                # of every queue flip-flop.)
                m.d.comb += bq.clear.eq(1)
                m.next = "ROW_CMD"
            with m.State("ROW_CMD"):
                m.d.comb += [rd.cmd.valid.eq(1), rd.cmd.payload.addr.eq(table + row_off),
                             rd.cmd.payload.beats.eq(_ceil_div(row_bytes, B))]
                with m.If(rd.cmd.ready):
                    m.d.sync += [beat.eq(0), beat_more.eq(beats != 0)]
                    m.next = "SCALE"
            with m.State("SCALE"):
                m.d.comb += [rd.data.ready.eq(~bq.holds(ROW_SCALE_BYTES)), bq.push.eq(rd.data.valid & rd.data.ready)]
                with m.If(bq.holds(ROW_SCALE_BYTES)):
                    m.d.comb += bq.take_head.eq(1)
                    e = q[16:32].as_signed()
                    m.d.sync += [m16.eq(q[:16]), sh.eq(-(e + RES_FRAC))]
                    m.next = "VALUES"
            with m.State("VALUES"):
                m.d.comb += take_vec.eq(bq.holds(vec_bytes) & take & beat_more)
                # Take a bus word whenever it fits, this cycle's take not counted (ByteQueue.room).
                m.d.comb += [rd.data.ready.eq(bq.room), bq.push.eq(rd.data.valid & rd.data.ready)]
                with m.If(take_vec):
                    m.d.sync += [p_token.eq(tok), p_beat.eq(beat), beat.eq(beat + 1), beat_more.eq(beat + 1 < beats)]
                    m.d.sync += [p_down.eq(sh > 0), p_right_m1.eq(Mux(sh > _MAX_RIGHT, _MAX_RIGHT, sh) - 1),
                                 p_left.eq(Mux(-sh > _MAX_LEFT, _MAX_LEFT, Mux(sh < 0, -sh, 0)))]
                    m.d.sync += [live[n].eq(beat * L + n < self.hidden) for n in range(L)]
                with m.If(~beat_more):
                    m.d.sync += tok.eq(tok + 1)
                    m.next = "ROW_DRAIN"
            with m.State("ROW_DRAIN"):
                m.d.comb += [rd.data.ready.eq(1)]
                with m.If(rd.idle & ~rd.data.valid):
                    m.next = "ROW"
            with m.State("DONE"):
                with m.If(owed == 0):              # every beat taken has left through `x`
                    m.d.sync += self.busy.eq(0)
                    m.next = "IDLE"
        return m
