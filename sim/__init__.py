"""Simulation toolchain: Amaranth -> Verilog -> cached Verilator model -> cocotb.

Typical use from a pytest test::

    from sim import build_component, run_cocotb

    build = build_component(MyBlock(width=12), "my_block")
    run_cocotb(build, "tb_my_block", test_dir=HERE / "cocotb_tests",
               extra_env={"TB_WIDTH": "12"}, seed=1)

See ``docs/simulation.md``.
"""

from .build import BuildError, SimBuild, build_component, build_verilog, cache_root
from .runner import CocotbResults, run_cocotb
from .toolchain import ToolchainError, setup_verilator, verilator_version
from .verilog import export_verilog, write_waiver

__all__ = [
    "BuildError",
    "CocotbResults",
    "SimBuild",
    "ToolchainError",
    "build_component",
    "build_verilog",
    "cache_root",
    "export_verilog",
    "run_cocotb",
    "setup_verilator",
    "verilator_version",
    "write_waiver",
]
