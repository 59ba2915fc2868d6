"""Execution units of the command processor: each executes one opcode (``hw/isa.py``)."""
