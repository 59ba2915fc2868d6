"""Round-robin choice among request lines, shared by the AXI read and write arbiters."""

from amaranth.hdl import Cat, Mux, Signal

__all__ = ["round_robin"]


def round_robin(m, requests, last):
    """Pick the requester after ``last`` (wrapping) among the high bits of ``requests``.

    Returns ``(grant, any_request)``: combinational signals; the owner updates ``last`` on a handshake.
    """
    n = len(requests)
    grant = Signal(range(n), name="rr_grant")
    any_req = Signal(name="rr_any")
    lines = Cat(*requests)
    for k in reversed(range(n)):       # the smallest rotation distance wins: assigned last
        idx = Signal(range(n), name=f"rr_cand{k}")
        v = last + 1 + k                 # < 2n: one conditional subtraction wraps it
        m.d.comb += idx.eq(Mux(v >= n, v - n, v) if n > 1 else 0)
        with m.If(lines.bit_select(idx, 1)):
            m.d.comb += [grant.eq(idx), any_req.eq(1)]
    return grant, any_req
