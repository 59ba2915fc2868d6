"""Stream payload layouts of the TLMM engine (shared by the engine, its baseline and the sequencers)."""

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from golden.tlmm import GROUP_SIZE

__all__ = ["token_bits", "act_step_layout", "sums_layout", "SHIFT_BITS"]

#: Bit-plane shift field width: planes 0..7 of int-k (k <= 8) weights.
SHIFT_BITS = 3


def token_bits(max_tokens):
    """Width of the token (accumulator slot) field for ``max_tokens`` slots."""
    return max(1, (max_tokens - 1).bit_length())


def act_step_layout(tables, max_tokens):
    """One engine step: the activations of one k-step for one token, and what to do with the result.

    Fields
    ------
    x : 3*T int8
        Activations of the k-step's T groups (group t holds ``x[3t .. 3t+2]``).
    token : unsigned
        Accumulator slot (token within the prefill chunk; 0 in decode).
    first : 1
        Start a new sum (the slot's old value is ignored).
    last : 1
        Emit the slot's sum on the ``sums`` stream after this step.
    release : 1
        Pop the current weight word after this step (the last token / last use of the word).
    shift, negate :
        Bit-plane weight of the step: the lookup sum is shifted left by ``shift`` and negated if
        ``negate`` (two's-complement MSB plane of int-k weights). Ternary matmuls use 0 and 0.
    """
    return data.StructLayout({
        "x": data.ArrayLayout(signed(8), GROUP_SIZE * tables),
        "token": unsigned(token_bits(max_tokens)),
        "first": 1,
        "last": 1,
        "release": 1,
        "shift": unsigned(SHIFT_BITS),
        "negate": 1,
    })


def sums_layout(lanes, acc_bits, max_tokens):
    """The engine's output: one accumulated sum per lane, and the accumulator slot it belongs to."""
    return data.StructLayout({
        "y": data.ArrayLayout(signed(acc_bits), lanes),
        "slot": unsigned(token_bits(max_tokens)),
    })
