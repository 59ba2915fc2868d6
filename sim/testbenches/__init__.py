"""cocotb testbenches shipped with the package (run by tests and by ``trillium bench``).

cocotb imports each ``tb_*`` module by name with this directory on ``PYTHONPATH`` (see
:func:`sim.run_cocotb`); :data:`TESTBENCH_DIR` is that directory.
"""

from pathlib import Path

TESTBENCH_DIR = Path(__file__).resolve().parent
