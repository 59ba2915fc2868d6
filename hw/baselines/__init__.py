"""Comparison baselines for synthesis cost reports; not part of the accelerator (nothing imports them).

See :mod:`hw.synth` for the command that synthesises them next to the product engines.
"""

from .adder_tree_mac import AdderTreeMac

__all__ = ["AdderTreeMac"]
