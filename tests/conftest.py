"""Shared pytest configuration for the Trillium test-suite."""


def pytest_report_header(config):
    """Name the simulator and build cache in the header, for reading CI logs."""
    # Imported lazily: only this hook needs the sim package, and a broken
    # toolchain must not stop the golden-model tests from running.
    try:
        from sim import ToolchainError, cache_root, setup_verilator
    except ImportError as exc:
        return [f"sim: not importable ({exc})"]
    try:
        return [f"sim: Verilator {setup_verilator()}; build cache {cache_root()}"]
    except ToolchainError as exc:
        return [f"sim: toolchain unavailable: {exc}"]
