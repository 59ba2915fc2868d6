"""Decode attention: one query token (all heads) against the KV cache, streamed once, bit-exact.

Decode is the attention engine (:mod:`hw.attention.engine`) with tiles of one query: per kv head it
loads the ``group`` query heads (a run-time value of each command, as is the number of kv heads), then
streams that kv head's segments 0 .. ``pos // 32`` (exponents, K rows, V rows), computing scores, the
block-wise online softmax and the weighted sum as the rows go by, and hands ``num`` and ``den`` to the
normaliser while it streams the next kv head.

Throughput: one chunk per cycle for ``group = 1``, one per ``group`` cycles otherwise, plus one cycle
per segment and ``group * row_beats`` cycles per kv head to load its queries.
"""

from .engine import AttentionEngine, chunk_geometry, cmd_layout, q_layout

__all__ = ["DecodeAttention", "q_layout", "cmd_layout", "chunk_geometry"]


class DecodeAttention(AttentionEngine):
    """The attention engine with ``query_block = 1`` (see :class:`~hw.attention.engine.AttentionEngine`).

    Parameters
    ----------
    max_group, max_kv_heads, head_dim, lanes, max_context, pad_chunks :
        As for :class:`~hw.attention.engine.AttentionEngine`.

    Attributes
    ----------
    cmd : In(stream.Signature(cmd_layout(max_context, 1, max_group, max_kv_heads)))
        ``pos``: the query's position (keys ``0 .. pos``); ``last`` must be 0; ``group`` and ``kv_heads``
        as for the engine.
    q, kv, o, idle :
        As for :class:`~hw.attention.engine.AttentionEngine`; the ``q`` rows are the query heads.
    """

    def __init__(self, max_group, max_kv_heads, head_dim, lanes, *, max_context=4096, pad_chunks=0):
        super().__init__(max_group, max_kv_heads, head_dim, lanes, query_block=1, max_context=max_context,
                         pad_chunks=pad_chunks)
