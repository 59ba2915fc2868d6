"""Table-lookup ternary matmul (TLMM) engine: table builder, signed lookup, pipelined engine."""

from .layouts import act_step_layout, sums_layout, token_bits
from .tables import SignedLookup, TableBuilder
from .engine import TlmmEngine
from .lut_engine import TlmmLutEngine, word_step_layout

__all__ = ["TableBuilder", "SignedLookup", "TlmmEngine", "TlmmLutEngine", "word_step_layout", "act_step_layout", "sums_layout", "token_bits"]
