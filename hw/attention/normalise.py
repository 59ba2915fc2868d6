"""Final attention normalisation: ``o = saturate(round_shift(num * m16, s), 32)`` per element, where
``(m16, s)`` is the multiplier form of ``SFloat.pow2(E).div(SFloat.from_int(den))``.

Per row, three scalar-unit operations (FROM_INT, DIV, TO_MULT, about 85 cycles), then one output beat
per cycle. It runs beside the decode engine, which has already moved on to the next kv head and writes
the other bank of the ``num`` memory.

The ``chunk`` multipliers ``num * m16`` are the engine's: it shares its per-lane rescale multipliers
(``num * a``, busy only on the first key of each block) and lends them whenever ``mul_free`` is high. They
are pipelined (operand registers, two registered partial products, a registered sum), so a product comes
back :data:`MUL_LATENCY` cycles after the beat is issued; two more stages (the rounding shifter, then its
increment) and the saturation lead into an output queue. A beat is issued only while the queue has room
for every beat in flight (a credit count), so ``o.ready`` may drop at any time and, while it stays high,
one beat leaves per cycle.

The ``num`` memory is read synchronously (a block RAM port): ``num_addr`` always presents the word of the
*next* cycle (the current row and beat, or the following ones when a beat is accepted), so the word of
the current beat is on ``num_data`` without a stall, one beat per cycle as with an asynchronous read.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from golden.sfloat import MANT_BITS

from ..params import check_int
from ..replica import registered_copies
from ..vector.scalar_unit import SFLOAT, Op, ScalarUnit
from .arith import clamp, saturate

__all__ = ["Normaliser", "NUM_BITS", "DEN_BITS", "EXP_BITS", "PROD_BITS", "MUL_LATENCY", "start_layout",
           "num_address", "num_depth"]

#: |num| < 2^34 for contexts up to 4096 (docs/numerics.md); one bit of margin and the sign.
NUM_BITS = 36
#: den < 2^28 for contexts up to 4096; one bit of margin.
DEN_BITS = 29
#: Attention exponents (q, k, v; running E): 0..31.
EXP_BITS = 5
#: ``num`` times a 16-bit unsigned factor (``m16``, or the engine's rescale ``a``).
PROD_BITS = NUM_BITS + 16
#: Cycles from a cycle with ``mul_free`` high (the operands ``num_data`` and ``m16`` are taken) to the
#: product on ``prod``: operand registers, registered partial products, registered sum.
MUL_LATENCY = 3
#: Output queue depth: at least the beats in flight from issue to the queue's output at one beat per cycle.
_QUEUE = 8


def _addr_bits(rows, row_beats):
    return max(1, (rows - 1).bit_length()), (row_beats - 1).bit_length()


def num_address(rows, row_beats, bank, row, beat):
    """Address of beat ``beat`` of query row ``row`` in bank ``bank`` of the ``num`` memory.

    ``Cat(row, beat, bank)`` with each field at its own bit width: no multiplier, at the price of unused
    words when ``rows`` or ``row_beats`` is not a power of two (see :func:`num_depth`).
    """
    rb, kb = _addr_bits(rows, row_beats)
    return Cat(row[:rb], beat[:kb], bank)


def num_depth(rows, row_beats):
    """Words of the ``num`` memory (two banks) for :func:`num_address`."""
    rb, kb = _addr_bits(rows, row_beats)
    return 2 << (rb + kb)


def start_layout(rows):
    """A normalisation job: the ``num`` bank, how many of the ``rows`` query rows to output (``count``,
    at least 1), and each row's running V exponent ``E`` and ``den``."""
    return data.StructLayout({"bank": 1, "count": range(1, rows + 1),
                              "e": data.ArrayLayout(unsigned(EXP_BITS), rows),
                              "den": data.ArrayLayout(unsigned(DEN_BITS), rows)})


class Normaliser(wiring.Component):
    """Normalise the accumulators of up to ``rows`` query rows of one kv head into Q.16 outputs.

    Parameters
    ----------
    rows : int
        Query rows per kv head (query heads of the group times queries of a tile).
    chunk : int
        Elements per ``num`` memory word and per output beat.
    row_beats : int
        Words per row (``head_dim / chunk``).

    Attributes
    ----------
    start : In(stream.Signature(start_layout(rows)))
        Accepted only while idle.
    num_addr : Out(range(num_depth(rows, row_beats)))
        Address into the engine's ``num`` memory (:func:`num_address`) of a synchronous read port.
    num_used : Out(1)
        The word read at this cycle's ``num_addr`` is used (its beat is issued in the next cycle): the
        engine's simulation check that no used read meets a write (:func:`hw.collision.assert_no_collision`).
    num_data : In(data.ArrayLayout(signed(NUM_BITS), chunk))
        The word at the previous cycle's ``num_addr``.
    m16 : Out(16)
        The row's multiplier; the engine returns ``num_data * m16`` on ``prod``.
    prod : In(data.ArrayLayout(signed(PROD_BITS), chunk))
        ``num_data[i] * m16`` per lane of a cycle with ``mul_free`` high, :data:`MUL_LATENCY` cycles later.
    mul_free : In(1)
        The engine's multipliers take ``num_data`` and ``m16`` this cycle.
    mul_free_next : In(1)
        ``mul_free`` of the next cycle (the normaliser decides a cycle ahead whether it issues a beat, so
        the read address follows a register).
    o : Out(stream.Signature(data.ArrayLayout(signed(32), chunk)))
        ``count * row_beats`` beats per job: rows in order, ``row_beats`` beats each.
    idle : Out(1)
        No job is being prepared or issued (its last beats may still be on their way to ``o``).
    """

    def __init__(self, rows, chunk, row_beats):
        self.rows = check_int("rows", rows, 1, 1024, "Normaliser")
        self.chunk = check_int("chunk", chunk, 1, 1024, "Normaliser")
        self.row_beats = check_int("row_beats", row_beats, 1, 1024, "Normaliser")
        super().__init__({
            "start": In(stream.Signature(start_layout(rows))),
            "num_addr": Out(range(num_depth(rows, row_beats))),
            "num_used": Out(1),
            "num_data": In(data.ArrayLayout(signed(NUM_BITS), chunk)),
            "m16": Out(16),
            "prod": In(data.ArrayLayout(signed(PROD_BITS), chunk)),
            "mul_free": In(1),
            "mul_free_next": In(1),
            "o": Out(stream.Signature(data.ArrayLayout(signed(32), chunk))),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        G, R, C = self.rows, self.row_beats, self.chunk
        # The command passes a register (cmd_register): from the normaliser's operand choice, the scalar
        # unit's accept decode (exponent difference, operand loads) ended on its registers (10.51 ns routed
        # on the ECP5 shell at 9887928). A cycle more per operation, three per row.
        m.submodules.scalar = su = ScalarUnit(cmd_register=True)

        job = Signal(start_layout(G))
        g = Signal(range(max(2, G)))  # never zero bits wide: Verilator rejects [-1:0]
        k = Signal(range(max(2, R)))
        # Next values of (g, k): the address of the synchronous read is that of the next cycle's beat.
        g_nx, k_nx = Signal.like(g), Signal.like(k)
        m.d.comb += [g_nx.eq(g), k_nx.eq(k)]
        m.d.sync += [g.eq(g_nx), k.eq(k_nx)]
        den_g = Signal(DEN_BITS)            # the row's den and E
        e_g = Signal(EXP_BITS)
        den_sf = Signal(SFLOAT)   # SFloat(den)
        scale = Signal(SFLOAT)    # 2^E / den
        m16 = self.m16

        cmd = su.cmd.payload
        m.d.comb += self.num_addr.eq(num_address(G, R, job.bank, g_nx, k_nx))
        # A beat is issued when the multipliers are free and the queue will have room for it: ``pending``
        # counts the beats issued and not yet delivered; the read address then moves to the next beat.
        m.submodules.queue = queue = SyncFIFOBuffered(width=32 * C, depth=_QUEUE)
        # ``issue`` is a register, decided in the previous cycle (from mul_free_next, the credits after that
        # cycle and whether the OUT state continues), and k == R - 1 and g == count - 1 are registered
        # beside k and g (count changes in IDLE, two cycles before OUT): the read address follows
        # registers through one multiplexer.
        issue = Signal()
        pending = Signal(range(_QUEUE + 1))
        pending_nx = Signal.like(pending)
        in_out, in_out_nx = Signal(), Signal()          # in the OUT state
        m.d.comb += [self.o.valid.eq(queue.r_rdy), self.o.payload.eq(queue.r_data), queue.r_en.eq(self.o.ready),
                     pending_nx.eq(pending + issue - (self.o.valid & self.o.ready)), in_out_nx.eq(in_out)]
        issue_nx = Signal()
        m.d.comb += [issue_nx.eq(self.mul_free_next & (pending_nx != _QUEUE) & in_out_nx),
                     self.num_used.eq(issue_nx)]
        m.d.sync += [pending.eq(pending_nx), in_out.eq(in_out_nx), issue.eq(issue_nx)]
        last_k, last_g = Signal(), Signal()
        m.d.sync += [last_k.eq(k_nx == R - 1), last_g.eq(g_nx == job.count - 1)]
        # issue is only ever high in the OUT state. After the job's last beat (g, k) = (0, 0) for the next.
        with m.If(issue):
            m.d.comb += k_nx.eq(k + 1)
            with m.If(last_k):
                m.d.comb += [k_nx.eq(0), g_nx.eq(Mux(last_g, 0, g + 1))]
        # The beat's right shift + 1 (sh + 1 with sh clamped to [-1, 44]) travels with it: round_shift_span in
        # three stages, ((prod << 2) >> (amount & ~7), then >> (amount & 7), + 1, >> 1, then saturate).
        # sh = bitlen(den) + 15 - E - (1 if den is a power of two else 0) lies in [-1, 44]: 0 <= E <= 31,
        # den < 2^29 (DEN_BITS), and den >= 2^15 because every row has a live block and the key holding a
        # block's new maximum adds exp2_neg(0) = 2^15 (an unchanged maximum gives a = 2^15, which keeps
        # den). So the clamp never acts.
        amount = Signal(6)
        valid = [issue]
        amounts = [amount]
        for i in range(MUL_LATENCY + 2):
            v, a = Signal(name=f"valid{i + 1}"), Signal(6, name=f"amount{i + 1}")
            m.d.sync += [v.eq(valid[-1]), a.eq(amounts[-1])]
            valid.append(v)
            amounts.append(a)
        L = MUL_LATENCY
        shifted = [Signal(signed(PROD_BITS + 2), name=f"shifted{lane}") for lane in range(C)]
        halved = [Signal(signed(PROD_BITS + 1), name=f"halved{lane}") for lane in range(C)]
        for lane in range(C):
            # The shift by the amount's multiple of 8, then by the rest with the + 1 and >> 1.
            m.d.sync += [shifted[lane].eq((self.prod[lane] << 2) >> Cat(Const(0, 3), amounts[L][3:])),
                         halved[lane].eq(((shifted[lane] >> amounts[L + 1][:3]) + 1) >> 1)]
            m.d.comb += queue.w_data[32 * lane:32 * lane + 32].eq(saturate(halved[lane], 32))
        m.d.comb += queue.w_en.eq(valid[L + 2])

        # The IDLE state as flip-flops of its own (`idle_nx` is the state machine's next IDLE): the job's
        # hundreds of flip-flops load in every idle cycle, so their enable is the state alone, not the
        # handshake (the engine's `valid` is late); the last load is the job taken. Four copies each
        # enable a quarter of them: one state decode fanning out to all 552 was a 16.9 ns placed path on
        # the ECP5 shell at 183e789, and the engine's hand-off waited on it.
        idle_nx = Signal()
        idle_r = Signal(init=1)
        m.d.sync += idle_r.eq(idle_nx)
        m.d.comb += [idle_nx.eq(idle_r), self.idle.eq(idle_r), self.start.ready.eq(idle_r)]
        loads = registered_copies(m, idle_nx, 4, "job_load", init=1)
        fields = [job.bank, job.count, *[job.den[i] for i in range(G)], *[job.e[i] for i in range(G)]]
        payload = self.start.payload
        sources = [payload.bank, payload.count, *[payload.den[i] for i in range(G)],
                   *[payload.e[i] for i in range(G)]]
        for i, (dst, src) in enumerate(zip(fields, sources)):
            with m.If(loads[i * len(loads) // len(fields)]):
                m.d.sync += dst.eq(src)
        mult_e = Signal.like(su.res.payload.value.e, name="mult_e")    # TO_MULT's exponent, for AMOUNT
        with m.FSM(name="norm"):
            with m.State("IDLE"):
                with m.If(self.start.valid):
                    m.d.comb += idle_nx.eq(0)
                    m.next = "FETCH"
            with m.State("FETCH"):
                # The row's den and E, registered before they go into the scalar unit.
                m.d.sync += [den_g.eq(job.den[g]), e_g.eq(job.e[g])]
                m.next = "FROM_INT"
            with m.State("FROM_INT"):
                m.d.comb += [su.cmd.valid.eq(1), cmd.op.eq(Op.FROM_INT), cmd.i.eq(den_g)]
                with m.If(su.cmd.ready):
                    m.next = "FROM_INT_RES"
            with m.State("FROM_INT_RES"):
                m.d.comb += su.res.ready.eq(1)
                with m.If(su.res.valid):
                    m.d.sync += den_sf.eq(su.res.payload.value)
                    m.next = "DIV"
            with m.State("DIV"):
                m.d.comb += [su.cmd.valid.eq(1), cmd.op.eq(Op.DIV),
                             cmd.a.m.eq(1 << (MANT_BITS - 1)), cmd.a.e.eq(e_g - (MANT_BITS - 1)),
                             cmd.b.eq(den_sf)]
                with m.If(su.cmd.ready):
                    m.next = "DIV_RES"
            with m.State("DIV_RES"):
                m.d.comb += su.res.ready.eq(1)
                with m.If(su.res.valid):
                    m.d.sync += scale.eq(su.res.payload.value)
                    m.next = "TO_MULT"
            with m.State("TO_MULT"):
                m.d.comb += [su.cmd.valid.eq(1), cmd.op.eq(Op.TO_MULT), cmd.a.eq(scale)]
                with m.If(su.cmd.ready):
                    m.next = "TO_MULT_RES"
            with m.State("TO_MULT_RES"):
                m.d.comb += su.res.ready.eq(1)
                with m.If(su.res.valid):
                    m.d.sync += [m16.eq(su.res.payload.value.m[:16]), mult_e.eq(su.res.payload.value.e)]
                    m.next = "AMOUNT"
            with m.State("AMOUNT"):
                # The shift amount from the registered exponent: from the scalar unit's result (its state
                # decode and zero test first) the clamp's compares and the + 1 were 11.34 ns routed on the
                # ECP5 shell at 6c79f98. A cycle per group of rows.
                m.d.sync += amount.eq(clamp(mult_e, -1, 44) + 1)
                m.d.comb += in_out_nx.eq(1)
                m.next = "OUT"
            with m.State("OUT"):
                with m.If(issue & last_k):
                    m.d.comb += in_out_nx.eq(0)
                    with m.If(last_g):
                        m.d.comb += idle_nx.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "FETCH"
        return m
