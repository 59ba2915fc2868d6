"""Tiny Amaranth designs used only by the test-suite to exercise the ``sim`` toolchain."""
