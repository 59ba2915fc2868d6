"""Dataflow assemblies: linear layers with their fused prologue and epilogue."""
