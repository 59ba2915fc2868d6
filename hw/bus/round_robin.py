"""Round-robin choice among request lines, shared by the AXI read and write arbiters."""

from amaranth.hdl import Cat, Mux, Signal

__all__ = ["round_robin"]


def round_robin(m, requests, last):
    """Pick the requester after ``last`` (wrapping) among the high bits of ``requests``.

    Returns ``(grant, any_request)``: combinational signals; the owner updates ``last`` on a handshake.

    Written as two lowest-set-bit searches rather than a chain over the rotation distances, so its depth
    is a few LUT levels for any number of requesters (it sits on the arbiters' paths to their registers):
    the lowest request above ``last`` if there is one, else the lowest request.
    """
    n = len(requests)
    grant = Signal(range(n), name="rr_grant")
    any_req = Signal(name="rr_any")
    lines = Cat(*requests)
    after = Signal(n, name="rr_after")
    m.d.comb += after.eq(Cat(*(requests[i] & (last < i) for i in range(n))))
    pick = Signal(n, name="rr_pick")
    m.d.comb += [pick.eq(Mux(after.any(), after, lines)), any_req.eq(lines.any())]
    for i in reversed(range(n)):        # the lowest set bit wins: assigned last
        with m.If(pick[i]):
            m.d.comb += grant.eq(i)
    return grant, any_req
