"""On-chip bus plumbing: AXI arbiters between the units and the DRAM port."""
