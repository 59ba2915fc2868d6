"""``exp2_neg`` of the numerics contract: ``2^-t`` in Q1.15 for a Q.16 log2 distance ``t >= 0``."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.numerics import EXP_FRAC, EXP_TABLE_BITS, RES_FRAC, exp_table

from ..params import check_int

__all__ = ["Exp2Neg"]


class Exp2Neg(wiring.Component):
    """``golden.numerics.exp2_neg`` with one cycle of latency: a 1024 x 16-bit ROM and a shifter.

    ``t10 = (t + 32) >> 6`` (round to Q.10); ``p = EXP[t10 & 1023] >> min(t10 >> 10, 16)``.

    The ROM is read synchronously, so it maps to one block RAM (DP16KD on ECP5) instead of about 1,500
    LUT4 sites of distributed RAM or logic; the shift amount is registered beside it. ``p`` is
    ``exp2_neg`` of the ``t`` of the previous cycle (every cycle: there is no enable).

    ``latency=2`` registers the ROM's word before the shifter (the block RAM's clock-to-out and the
    shifter in different cycles); ``latency=3`` also registers the rounded ``t10`` before it addresses
    the ROM (the caller's subtraction and the rounding adder in a cycle of their own).

    Parameters
    ----------
    t_bits : int
        Width of the unsigned input (differences of two saturated int32 scores need 33).
    latency : int
        1, 2 or 3 cycles from ``t`` to ``p``.

    Attributes
    ----------
    t : In(t_bits)
    p : Out(16)
        Q1.15, ``latency`` cycles after ``t``; 32768 for ``t < 32``.
    """

    def __init__(self, t_bits=33, latency=1):
        self.t_bits = check_int("t_bits", t_bits, 8, 64, "Exp2Neg")
        self.latency = check_int("latency", latency, 1, 3, "Exp2Neg")
        super().__init__({"t": In(t_bits), "p": Out(EXP_FRAC + 1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.rom = rom = Memory(shape=EXP_FRAC + 1, depth=1 << EXP_TABLE_BITS,
                                        init=[int(v) for v in exp_table()])
        rd = rom.read_port()
        drop = RES_FRAC - EXP_TABLE_BITS
        t10 = Signal(self.t_bits + 1 - drop)
        rounded = t10.eq((self.t + (1 << (drop - 1))) >> drop)
        if self.latency == 3:
            m.d.sync += rounded
        else:
            m.d.comb += rounded
        whole = t10[EXP_TABLE_BITS:]
        sh = Signal(range(EXP_FRAC + 2))        # registered beside the ROM's output
        m.d.sync += sh.eq(Mux(whole > EXP_FRAC + 1, EXP_FRAC + 1, whole))
        m.d.comb += rd.addr.eq(t10[:EXP_TABLE_BITS])
        word = rd.data
        if self.latency >= 2:
            # `word` reset-less: a plain flip-flop, which the ECP5 build moves into the ROM's output register.
            word, sh_word = Signal.like(rd.data, reset_less=True), Signal.like(sh)
            m.d.sync += [word.eq(rd.data), sh_word.eq(sh)]
            sh = sh_word
        m.d.comb += self.p.eq(word >> sh)
        return m
