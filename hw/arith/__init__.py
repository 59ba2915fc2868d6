"""Arithmetic building blocks shared by the accelerator's units (no unit-specific logic here)."""
