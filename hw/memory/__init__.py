"""The accelerator's memory system: AXI4 read and write masters, striped port groups, the weight-buffer
manager and the lutram engine's word feed, DRAM models for simulation.

See ``docs/memory.md``.
"""

from .axi import AxiBurstReader, AxiReadSignature, AxiResp, read_command_layout, read_data_layout
from .axi_group import AxiReaderGroup, port_split
from .axi_write import AxiBurstWriter, AxiWriteSignature, write_command_layout
from .gearbox import Gearbox
from .lut_feed import LutWordFeed, lut_matrix_layout
from .dram_model import FastDramModel
from .weight_buffer import WeightBufferManager, tile_command_layout
from .weight_path import WeightPath
from .bench_top import MemoryBenchTop

__all__ = [
    "AxiBurstReader",
    "AxiBurstWriter",
    "AxiReadSignature",
    "AxiReaderGroup",
    "AxiResp",
    "AxiWriteSignature",
    "FastDramModel",
    "Gearbox",
    "LutWordFeed",
    "MemoryBenchTop",
    "WeightBufferManager",
    "WeightPath",
    "lut_matrix_layout",
    "port_split",
    "read_command_layout",
    "read_data_layout",
    "tile_command_layout",
    "write_command_layout",
]
