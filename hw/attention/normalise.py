"""Final attention normalisation: ``o = saturate(round_shift(num * m16, s), 32)`` per element, where
``(m16, s)`` is the multiplier form of ``SFloat.pow2(E).div(SFloat.from_int(den))``.

Three scalar-unit operations per head (FROM_INT, DIV, TO_MULT, about 85 cycles), then one output beat
per cycle. It runs beside the decode engine, which has already moved on to the next kv head and writes
the other bank of the ``num`` memory.
"""

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.sfloat import MANT_BITS

from ..params import check_int
from ..vector.scalar_unit import SFLOAT, Op, ScalarUnit
from .arith import round_shift, saturate

__all__ = ["Normaliser", "NUM_BITS", "DEN_BITS", "EXP_BITS", "start_layout"]

#: |num| < 2^34 for contexts up to 4096 (docs/numerics.md); one bit of margin and the sign.
NUM_BITS = 36
#: den < 2^28 for contexts up to 4096; one bit of margin.
DEN_BITS = 29
#: Attention exponents (q, k, v; running E): 0..31.
EXP_BITS = 5


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
    num_addr : Out(range(2 * rows * row_beats))
        Address into the engine's ``num`` memory (``bank * rows * row_beats + r * row_beats + k``).
    num_data : In(data.ArrayLayout(signed(NUM_BITS), chunk))
        The word at ``num_addr``, combinationally.
    o : Out(stream.Signature(data.ArrayLayout(signed(32), chunk)))
        ``count * row_beats`` beats per job: rows in order, ``row_beats`` beats each.
    idle : Out(1)
    """

    def __init__(self, rows, chunk, row_beats):
        self.rows = check_int("rows", rows, 1, 1024, "Normaliser")
        self.chunk = check_int("chunk", chunk, 1, 1024, "Normaliser")
        self.row_beats = check_int("row_beats", row_beats, 1, 1024, "Normaliser")
        super().__init__({
            "start": In(stream.Signature(start_layout(rows))),
            "num_addr": Out(range(2 * rows * row_beats)),
            "num_data": In(data.ArrayLayout(signed(NUM_BITS), chunk)),
            "o": Out(stream.Signature(data.ArrayLayout(signed(32), chunk))),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        G, R, C = self.rows, self.row_beats, self.chunk
        m.submodules.scalar = su = ScalarUnit()

        job = Signal(start_layout(G))
        g = Signal(range(max(2, G)))  # never zero bits wide: Verilator rejects [-1:0]
        k = Signal(range(max(2, R)))
        den_sf = Signal(SFLOAT)   # SFloat(den)
        scale = Signal(SFLOAT)    # 2^E / den
        m16 = Signal(16)
        sh = Signal(signed(su.e_bits))

        cmd = su.cmd.payload
        m.d.comb += self.num_addr.eq(job.bank * (G * R) + g * R + k)
        for lane in range(C):
            prod = self.num_data[lane] * m16
            # |prod| < 2^52: right shifts beyond 54 give 0 as golden's do; a left shift of 32 saturates.
            m.d.comb += self.o.payload[lane].eq(saturate(round_shift(prod, sh, max_left=32, max_right=54), 32))

        with m.FSM(name="norm"):
            with m.State("IDLE"):
                m.d.comb += [self.idle.eq(1), self.start.ready.eq(1)]
                with m.If(self.start.valid):
                    m.d.sync += [job.eq(self.start.payload), g.eq(0), k.eq(0)]
                    m.next = "FROM_INT"
            with m.State("FROM_INT"):
                m.d.comb += [su.cmd.valid.eq(1), cmd.op.eq(Op.FROM_INT), cmd.i.eq(job.den[g])]
                with m.If(su.cmd.ready):
                    m.next = "FROM_INT_RES"
            with m.State("FROM_INT_RES"):
                m.d.comb += su.res.ready.eq(1)
                with m.If(su.res.valid):
                    m.d.sync += den_sf.eq(su.res.payload.value)
                    m.next = "DIV"
            with m.State("DIV"):
                m.d.comb += [su.cmd.valid.eq(1), cmd.op.eq(Op.DIV),
                             cmd.a.m.eq(1 << (MANT_BITS - 1)), cmd.a.e.eq(job.e[g] - (MANT_BITS - 1)),
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
                    m.d.sync += [m16.eq(su.res.payload.value.m[:16]), sh.eq(su.res.payload.value.e)]
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    m.d.sync += k.eq(k + 1)
                    with m.If(k == R - 1):
                        m.d.sync += [k.eq(0), g.eq(g + 1)]
                        with m.If(g == job.count - 1):
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "FROM_INT"
        return m
