"""A group of AXI4 read ports acting as one wide DRAM port (e.g. TeLLMe's three 256-bit HP ports).

AXI4 data buses are powers of two wide, so a configured DRAM width such as 768 bits is ``P`` ports of
``data_bits / P`` bits. The group stripes the image across them word by word:

* **Striping.** Cut the image into port words of ``port_bits``; port word ``k`` lives in port
  ``k mod P`` at port-local word ``k div P``. Equivalently, wide word ``j`` (``data_bits``) is the
  concatenation of word ``j`` of port 0 (low bits), port 1, ..., port ``P-1`` (high bits).
* **Addresses.** A command's ``addr`` is the port-local byte address ``base + j * port_bytes`` of its
  first wide word ``j``, and is the same for every port (each port's region starts at the same local
  base). With ``P = 1`` this is the plain byte address: the group is then a single reader.

Every command goes to every port (each :class:`AxiBurstReader` cuts it into its own bursts at its own
4 KiB boundaries), and the data streams are joined: a wide word leaves once all ports have their part
of it. The ports' read buffers pop in lockstep, so each reserves space for its bursts exactly as a single
reader does; ports may run at different speeds (each has its own DRAM channel), and the join waits
for the slowest.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..params import check_int
from .axi import MAX_BURST, AxiBurstReader, AxiReadSignature, read_command_layout, read_data_layout

__all__ = ["AxiReaderGroup", "port_split"]


def port_split(data_bits):
    """``(ports, port_bits)`` for a configured DRAM width: the widest power-of-two port (at most 1024
    bits) that divides ``data_bits``, and how many of them make up the width.

    >>> port_split(64), port_split(768), port_split(320)
    ((1, 64), (3, 256), (5, 64))
    """
    data_bits = check_int("data_bits", data_bits, 8, 1 << 16, "port_split")
    port_bits = data_bits & -data_bits              # largest power of two dividing data_bits
    port_bits = min(port_bits, 1024)
    if port_bits < 8:
        raise ValueError(f"port_split: data_bits = {data_bits} is not a multiple of 8")
    return data_bits // port_bits, port_bits


class AxiReaderGroup(wiring.Component):
    """``ports`` AXI4 burst readers striped into one stream of ``data_bits``-wide words.

    Parameters
    ----------
    addr_bits : int
        Byte-address width of each port.
    data_bits : int
        Total width; ``data_bits / ports`` must be a power of two from 8 to 1024.
    ports : int
        Number of AXI4 ports (1..16).
    buffer_words : int
        Read-buffer depth of each port in port words (= wide words of the group).
    max_burst, max_outstanding, beats_bits, tag_bits, id_bits : int
        As for :class:`AxiBurstReader`, per port.

    Attributes
    ----------
    cmd : In(stream.Signature(read_command_layout(addr_bits, beats_bits, tag_bits)))
        ``addr`` is the port-local byte address (see the module docstring); ``beats`` counts wide words.
    data : Out(stream.Signature(read_data_layout(data_bits, tag_bits)))
    axi : Out(AxiReadSignature(addr_bits, data_bits // ports, id_bits)).array(ports)
        ``axi[p]`` is port ``p`` (flattened ``axi__<p>__araddr``, ...).
    error : Out(1)
        Sticky: some port saw SLVERR or DECERR.
    idle : Out(1)
        No port has a command in progress or a burst in flight.
    """

    def __init__(self, addr_bits, data_bits, *, ports, buffer_words, max_burst=MAX_BURST, max_outstanding=4,
                 beats_bits=24, tag_bits=1, id_bits=1):
        owner = "AxiReaderGroup"
        self.ports = check_int("ports", ports, 1, 16, owner)
        data_bits = check_int("data_bits", data_bits, 8, 16 * 1024, owner)
        if data_bits % ports:
            raise ValueError(f"{owner}: data_bits = {data_bits} is not a multiple of ports = {ports}")
        self.port_bits = data_bits // ports
        # The per-port width must be a power of two (8..1024): the signature checks it.
        self.axi_signature = AxiReadSignature(addr_bits, self.port_bits, id_bits)
        self.max_burst = check_int("max_burst", max_burst, 1, MAX_BURST, owner)
        self.buffer_words = check_int("buffer_words", buffer_words, max(3, max_burst), 1 << 24, owner)
        self.max_outstanding = check_int("max_outstanding", max_outstanding, 1, 64, owner)
        self.beats_bits = check_int("beats_bits", beats_bits, 1, 32, owner)
        self.tag_bits = check_int("tag_bits", tag_bits, 1, 16, owner)
        self.addr_bits, self.data_bits, self.id_bits = addr_bits, data_bits, id_bits
        self.cmd_layout = read_command_layout(addr_bits, beats_bits, tag_bits)
        self.data_layout = read_data_layout(data_bits, tag_bits)
        super().__init__({
            "cmd": In(stream.Signature(self.cmd_layout)),
            "data": Out(stream.Signature(self.data_layout)),
            "axi": Out(self.axi_signature).array(ports),
            "error": Out(1),
            "idle": Out(1),
        })

    @property
    def port_bytes(self):
        return self.port_bits // 8

    def elaborate(self, platform):
        m = Module()
        P = self.ports
        self.readers = [AxiBurstReader(self.addr_bits, self.port_bits, buffer_words=self.buffer_words,
                                       max_burst=self.max_burst, max_outstanding=self.max_outstanding,
                                       beats_bits=self.beats_bits, tag_bits=self.tag_bits, id_bits=self.id_bits)
                        for _ in range(P)]
        for p, reader in enumerate(self.readers):
            m.submodules[f"reader{p}"] = reader
            wiring.connect(m, wiring.flipped(self.axi[p]), reader.axi)

        # Command fan-out: every port takes the command, each when it is ready; the command leaves
        # once all have it. `sent[p]` remembers a port that took it while another was still busy.
        sent = Signal(P)
        took = Signal(P)
        for p, reader in enumerate(self.readers):
            m.d.comb += [
                reader.cmd.payload.eq(self.cmd.payload),
                reader.cmd.valid.eq(self.cmd.valid & ~sent[p]),
                took[p].eq(sent[p] | reader.cmd.ready),
            ]
        m.d.comb += self.cmd.ready.eq(took.all())
        with m.If(self.cmd.valid):
            m.d.sync += sent.eq(0)
            with m.If(~took.all()):
                m.d.sync += sent.eq(took)

        # Data join: a wide word is valid once every port has its part; all ports pop together. The
        # command structure (last, tag) is the same on every port: take port 0's.
        valid = Signal()
        m.d.comb += [
            valid.eq(Cat(r.data.valid for r in self.readers).all()),
            self.data.valid.eq(valid),
            self.data.payload.data.eq(Cat(r.data.payload.data for r in self.readers)),
            self.data.payload.last.eq(self.readers[0].data.payload.last),
            self.data.payload.tag.eq(self.readers[0].data.payload.tag),
            self.error.eq(Cat(r.error for r in self.readers).any()),
            self.idle.eq(Cat(r.idle for r in self.readers).all()),
        ]
        for reader in self.readers:
            m.d.comb += reader.data.ready.eq(self.data.ready & valid)
        return m
