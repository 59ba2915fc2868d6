"""Vector and scalar units around the TLMM engine (RoPE, per-token scalars, ...)."""

from .rope import RopeUnit, rope_pairs_layout, rope_rotated_layout
from .scalar_unit import SFLOAT, Op, ScalarUnit, cmd_layout, res_layout, sfloat_layout
from .epilogue import Dequant, GateRelu2, GateSilu, ResidualAdd, dequant_in_layout, lane, vector_layout
from .norm_quant import NormQuant, norm_cfg_layout, norm_in_layout, norm_out_layout, norm_scale_layout
