"""AXI4 register slices: every channel through a :class:`~hw.dataflow.skid.SkidBuffer`.

:class:`AxiWriteSlice` (AW, W, B):

In the ULX3S shell the SDRAM controller's ``wready`` depends on ``wvalid`` in the same cycle (a beat is
taken with its last SDRAM word), and behind the write arbiters every master's next beat depends on
``wready``: one combinational path ran from the shell arbiter's grant FIFO through the controller, both
arbiters and the KV writer into the LINEAR unit's stall (16.7 ns estimated). With the slice between the
shell arbiter and the controller, the masters see a registered ``awready``/``wready`` and the controller
registered ``awvalid``/``wvalid`` and payloads; B is registered the other way, so a slave's ``bvalid``
reaches the master from a register too. Bursts still move one beat per cycle; each channel adds one cycle
of latency. Ordering is untouched (each channel stays in order, and AXI4 lets AW and W arrive
in either order).

:class:`AxiReadSlice` (AR, R): in the shell the SDRAM controller's R credits counted ``rready``, which
came from the read arbiter's demultiplexer and, behind it, the requesting unit's buffer room (an 18.9 ns
path after placement, from the LINEAR parameter loader's FIFO level into the controller's credit counter).
With the slice the controller sees a registered ``rready`` and the masters a registered ``rvalid``/``rdata``.

A forward channel named in ``credit`` goes through a :class:`~hw.dataflow.credit_link.CreditLink` instead
(a free-running register stage out, a FIFO at the slave's end, credits back): for a master placed far from
the slave. A skid buffer's ``ready`` is a flip-flop at the slave's end, and the master's own slice loads
under it: on the ECP5 shell at 9887928 the top's write arbiter slice for SAVE_X drove the SAVE_X writer's
W slice enables through a 6.4 ns route (10.75 ns routed). A credit link's ``ready`` sits at the master's
end. It adds a cycle of latency and a few entries of distributed RAM.
"""

from amaranth.hdl import Module
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..dataflow.credit_link import CreditLink
from ..dataflow.skid import SkidBuffer
from ..memory.axi import AxiReadSignature
from ..memory.axi_write import AxiWriteSignature
from ..params import check_int

__all__ = ["AxiReadSlice", "AxiWriteSlice"]

_AW = ("awaddr", "awlen", "awsize", "awburst", "awid")
_W = ("wdata", "wstrb", "wlast")
_B = ("bresp", "bid")
_AR = ("araddr", "arlen", "arsize", "arburst", "arid")
_R = ("rdata", "rresp", "rlast", "rid")


class _AxiSlice(wiring.Component):
    """A skid buffer per channel of the AXI signature ``_signature``: each of ``_channels`` is ``(name,
    fields, valid, ready, forward)``, ``forward`` from the master's port ``m`` to the slave's ``s``, else
    back. The subclasses name the signature and the channels."""

    _signature = None
    _channels = ()

    def __init__(self, addr_bits, data_bits, id_bits, *, credit=()):
        owner = type(self).__name__
        self.addr_bits = check_int("addr_bits", addr_bits, 12, 64, owner)
        self.data_bits = check_int("data_bits", data_bits, 8, 1024, owner)
        self.id_bits = check_int("id_bits", id_bits, 1, 32, owner)
        forward = [c[0] for c in self._channels if c[4]]
        if isinstance(credit, str) or not all(c in forward for c in credit):
            raise ValueError(f"{owner}: credit must name forward channels out of {forward}, got {credit!r}")
        self.credit = tuple(credit)
        sig = self._signature(addr_bits, data_bits, id_bits)
        super().__init__({"m": In(sig), "s": Out(sig)})

    def elaborate(self, platform):
        m = Module()
        for name, fields, valid, ready, forward in self._channels:
            frm, to = (self.m, self.s) if forward else (self.s, self.m)
            layout = data.StructLayout({f: len(getattr(frm, f)) for f in fields})
            link = CreditLink(layout, forward=1, back=1) if name in self.credit else SkidBuffer(layout)
            m.submodules[name] = skid = link
            m.d.comb += [skid.i.valid.eq(getattr(frm, valid)), getattr(frm, ready).eq(skid.i.ready),
                         getattr(to, valid).eq(skid.o.valid), skid.o.ready.eq(getattr(to, ready))]
            m.d.comb += [getattr(skid.i.payload, f).eq(getattr(frm, f)) for f in fields]
            m.d.comb += [getattr(to, f).eq(getattr(skid.o.payload, f)) for f in fields]
        return m


class AxiWriteSlice(_AxiSlice):
    """A register slice on AW, W and B (see the module docstring).

    Parameters
    ----------
    addr_bits, data_bits, id_bits : int
        As :class:`~hw.memory.axi_write.AxiWriteSignature`.
    credit : tuple of str
        Channels (``"aw"``, ``"w"``) carried by a credit link rather than a skid buffer (see the module
        docstring).

    Attributes
    ----------
    m : In(AxiWriteSignature)
        Faces the master.
    s : Out(AxiWriteSignature)
        Faces the slave.
    """

    _signature = AxiWriteSignature
    # AW and W from the master to the slave; B the other way, so the slave's bvalid (an SDRAM controller's
    # response queue) reaches the master's burst bookkeeping from a register too.
    _channels = (("aw", _AW, "awvalid", "awready", True), ("w", _W, "wvalid", "wready", True),
                 ("b", _B, "bvalid", "bready", False))


class AxiReadSlice(_AxiSlice):
    """A register slice on AR and R (see the module docstring).

    Parameters
    ----------
    addr_bits, data_bits, id_bits : int
        As :class:`~hw.memory.axi.AxiReadSignature`.
    credit : tuple of str
        Channels (``"ar"``) carried by a credit link rather than a skid buffer (see the module docstring).

    Attributes
    ----------
    m : In(AxiReadSignature)
        Faces the master.
    s : Out(AxiReadSignature)
        Faces the slave.
    """

    _signature = AxiReadSignature
    _channels = (("ar", _AR, "arvalid", "arready", True), ("r", _R, "rvalid", "rready", False))
