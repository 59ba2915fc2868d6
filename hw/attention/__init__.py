"""Attention over the int8 KV cache (``docs/attention.md``): the attention engine (decode and causal,
chunked prefill tiles), its normaliser and table units, and the DRAM-fed benchmark top."""
