"""The co-simulation top level: an accelerator top with its DRAM, for the Verilator device.

:class:`CosimTop` wraps any top-level component with the accelerator's ports (``csr``: AXI4-Lite CSR slave,
``axi_rd``/``axi_wr``: AXI4 read and write masters, ``irq``) together with a :class:`FastDramModel` that is
both AXI4 slaves, so that the simulated design's ports are only:

* ``csr`` (``csr__awaddr`` ... in Verilog): the CSR slave, driven by the testbench's ``AxiLiteMaster``;
* ``load`` (``load__valid``, ``load__payload`` = ``{data, addr}``): the DRAM backdoor write, one word a cycle;
* ``peek`` (``peek__addr`` in, ``peek__data`` out): the DRAM backdoor read, asynchronous;
* ``irq``; and ``dram_violation``, the DRAM model's sticky AXI protocol check (debugging aid).

The DRAM is a plain Verilog array (``backing="verilog"``), so a DRAM of megabytes costs nothing to export or
compile; :func:`cosim_verilog` appends its module to the exported design, and :func:`build_cosim` builds the
whole thing with :func:`sim.build.build_verilog` (cached by the Verilog text, which holds everything that
changes the design).

The device protocol
-------------------
``sim/testbenches/tb_device_server.py`` serves the design to ``firmware/verilator_device.py`` over a Unix
stream socket. The driver listens, the simulator connects. Every message, both ways, is a frame: two
little-endian ``uint32`` (the JSON header's length, the payload's length), the UTF-8 JSON header, then the
raw payload bytes (DRAM data; usually empty). :func:`send_message` and :func:`recv_message` implement it.
After connecting, the simulator sends ``{"op": "hello", "pid": ..., "depth": ..., "data_bits": ...}``;
then the driver sends one request at a time and gets one reply, ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``:

=============================================  =================================================================
request                                        reply
=============================================  =================================================================
``write`` ``addr`` + payload                   ``{}`` (bytes into DRAM; partial words read-modify-write)
``read`` ``addr``, ``n``                       payload: ``n`` bytes of DRAM
``csr_write`` ``offset``, ``value``            ``{}`` (an AXI4-Lite write)
``csr_read`` ``offsets`` (list)                ``values`` (AXI4-Lite reads, in order)
``run`` ``max_cycles``, ``wall_s``             ``cycles``, ``timed_out`` (``null``, ``"cycles"`` or ``"wall"``);
                                               writes ``control.start``, waits for ``irq`` or the budget
``reset`` ``cycles``                           ``{}`` (pulses ``rst``; DRAM keeps its contents)
``quit``                                       ``{}``, then the simulator exits
=============================================  =================================================================

Every reply also carries ``violation``, the DRAM model's protocol check. The simulator exits when the
socket closes (checked between requests and every slice of a run), so it never outlives the driver.
"""

from __future__ import annotations

import json
import os
import struct

from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.control.axi_lite import AxiLiteSignature
from hw.memory.dram_model import (
    DRAM_ARRAY_VERILOG,
    FastDramModel,
    load_layout,
    peek_signature,
)

__all__ = [
    "BUILD_ARGS", "CosimTop", "ProtocolClosed", "build_cosim", "cached_verilog", "cosim_verilog", "ports_public",
    "recv_message", "send_message"]

_FRAME = struct.Struct("<II")


class ProtocolClosed(ConnectionError):
    """The other side closed the socket."""


def send_message(sock, header, payload=b""):
    """Send one frame: ``header`` (a JSON-able dict) and ``payload`` (bytes)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    sock.sendall(_FRAME.pack(len(head), len(payload)) + head)
    if payload:
        sock.sendall(payload)


def _recv_exact(sock, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ProtocolClosed("the peer closed the connection")
        got += k
    return bytes(buf)


def recv_message(sock):
    """Receive one frame: ``(header dict, payload bytes)``; :class:`ProtocolClosed` at end of stream."""
    n_head, n_payload = _FRAME.unpack(_recv_exact(sock, _FRAME.size))
    header = json.loads(_recv_exact(sock, n_head))
    return header, (_recv_exact(sock, n_payload) if n_payload else b"")


class CosimTop(wiring.Component):
    """A top component plus its DRAM (see the module docstring).

    Parameters
    ----------
    top : amaranth.lib.wiring.Component
        Has ``csr: In(AxiLiteSignature(16))``, ``axi_rd: Out(AxiReadSignature(...))``,
        ``axi_wr: Out(AxiWriteSignature(...))`` (same address and data widths) and ``irq: Out(1)``.
    dram_bytes : int
        DRAM size; rounded up to whole bus words.
    latency : int
        DRAM read latency in cycles (also the write-response latency), see :class:`FastDramModel`.
    bytes_per_cycle : float
        DRAM bandwidth of each of the read and write channels.
    max_outstanding : int
        Bursts the DRAM model accepts per direction.
    """

    def __init__(self, top, dram_bytes, latency, bytes_per_cycle, *, max_outstanding=8):
        members = top.signature.members
        for name in ("csr", "axi_rd", "axi_wr", "irq"):
            if name not in members:
                raise TypeError(f"CosimTop: the top has no port {name!r} (ports: {', '.join(members)})")
        rd, wr = members["axi_rd"].signature, members["axi_wr"].signature
        if (rd.addr_bits, rd.data_bits) != (wr.addr_bits, wr.data_bits):
            raise TypeError(f"CosimTop: axi_rd ({rd!r}) and axi_wr ({wr!r}) differ in address or data width")
        self.top = top
        self.data_bits = rd.data_bits
        self.data_bytes = rd.data_bits // 8
        self.depth = -(-int(dram_bytes) // self.data_bytes)
        self.dram = FastDramModel(rd.addr_bits, rd.data_bits, depth=self.depth, latency=latency,
                                  bytes_per_cycle=min(float(bytes_per_cycle), self.data_bytes),
                                  max_outstanding=max_outstanding, id_bits=rd.id_bits, writable=True,
                                  write_id_bits=wr.id_bits, loadable=True, peekable=True, backing="verilog")
        super().__init__({
            "csr": In(AxiLiteSignature(16)),
            "load": In(stream.Signature(load_layout(self.depth, self.data_bits))),
            "peek": In(peek_signature(self.depth, self.data_bits)),
            "irq": Out(1),
            "dram_violation": Out(1),
        })

    def elaborate(self, platform):
        from amaranth.hdl import Module

        m = Module()
        m.submodules.top, m.submodules.dram = top, dram = self.top, self.dram
        wiring.connect(m, wiring.flipped(self.csr), top.csr)
        wiring.connect(m, top.axi_rd, dram.axi)
        wiring.connect(m, top.axi_wr, dram.axi_wr)
        wiring.connect(m, wiring.flipped(self.load), dram.load)
        wiring.connect(m, wiring.flipped(self.peek), dram.peek)
        m.d.comb += [self.irq.eq(top.irq), self.dram_violation.eq(dram.violation)]
        return m


#: Verilator arguments of the co-simulation build: cocotb's runner makes every signal public and writable
#: (``--public-flat-rw``), which keeps Verilator from optimising the design (about half the speed). The
#: testbench touches only the top level's ports, so only those are made public (:func:`cosim_verilog`).
#: Lint warnings outside the waiver (sim/verilog.py) are reported but do not stop the build: a big
#: configuration's build takes about 25 minutes, and a harmless idiom of generated code (a constant compare)
#: found at its end should not throw that away.
BUILD_ARGS = ("--no-public-flat-rw", "-Wno-fatal")


def cosim_verilog(cosim: CosimTop, name: str) -> str:
    """The Verilog of ``cosim`` as module ``name``, with the DRAM array module it instantiates and a Verilator
    configuration section making the top level's ports (only) public for cocotb."""
    from .verilog import export_verilog

    return export_verilog(cosim, name) + DRAM_ARRAY_VERILOG + ports_public(name)


def cached_verilog(name, key_text, make):
    """The Verilog ``make()`` returns, cached on disk under ``name`` and ``key_text`` (everything the design's
    construction depends on) with the digest of the gateware sources; ``make`` runs only on a miss."""
    import hashlib

    from .build import cache_root

    key = hashlib.sha256(f"{name}\0{key_text}\0{_source_digest()}".encode()).hexdigest()[:24]
    path = cache_root() / "verilog" / f"{name}-{key}.v"
    if path.exists():
        return path.read_text()
    text = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)          # atomic: a reader never sees half a file
    return text


def ports_public(name):
    """A Verilator configuration section making module ``name``'s ports (only) public for cocotb."""
    return f'\n`verilator_config\npublic_flat_rw -module "{name}" -var "*"\n'


def _source_digest():
    """SHA-256 over every Python source the gateware can import (hw/, golden/, sim/) and the Amaranth version:
    what the elaborated Verilog of a design depends on, besides its constructor arguments."""
    import hashlib
    from importlib.metadata import version
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(version("amaranth").encode())
    for package in ("hw", "golden", "sim"):
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def build_cosim(cosim, name: str, *, waves=False, verilog_key=None):
    """Build (or reuse from the cache) the Verilator model of ``cosim`` (a :class:`CosimTop`, or a function
    making one, called only when its Verilog is not cached); a :class:`sim.build.SimBuild`. Only the top
    level's ports are visible to cocotb (see :data:`BUILD_ARGS`).

    ``verilog_key``, a string naming everything the design's construction depends on (for example the
    hardware config's content and the DRAM model's size), lets the elaborated Verilog itself be cached
    too, keyed with the digest of the gateware sources: elaborating the whole accelerator takes longer
    than starting a cached simulator.
    """
    from .build import build_verilog

    def verilog():
        return cosim_verilog(cosim() if callable(cosim) else cosim, name)

    text = verilog() if verilog_key is None else cached_verilog(name, verilog_key, verilog)
    return build_verilog(text, name, waves=waves, build_args=BUILD_ARGS)
