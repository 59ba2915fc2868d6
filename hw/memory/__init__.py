"""The accelerator's memory system: AXI4 read master, weight-buffer manager, DRAM models for simulation.

See ``docs/memory.md``.
"""

from .axi import AxiBurstReader, AxiReadSignature, AxiResp, read_command_layout, read_data_layout
from .gearbox import Gearbox
from .dram_model import FastDramModel
from .weight_buffer import WeightBufferManager, tile_command_layout
from .weight_path import WeightPath
from .bench_top import MemoryBenchTop

__all__ = [
    "AxiBurstReader",
    "AxiReadSignature",
    "AxiResp",
    "FastDramModel",
    "Gearbox",
    "MemoryBenchTop",
    "WeightBufferManager",
    "WeightPath",
    "read_command_layout",
    "read_data_layout",
    "tile_command_layout",
]
