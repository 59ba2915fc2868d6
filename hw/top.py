"""The accelerator's top level: one AXI4 DRAM master, one AXI4-Lite CSR slave, one interrupt.

Everything inside is sized by one hardware config (``hw/configs/*.yaml``), including the largest model
the build runs (its ``limits`` section)::

    csr (AXI4-Lite) -> AxiLiteCsrBridge -> CommandProcessor --cmds--> EMBED, LOAD_X, LINEAR (+LOGITS), ATTEND, SAVE_X
                                                                        |      |       |                 |       |
        ActivationBuffers: x_in <- EMBED or LOAD_X ---------------------+------+       |                 |       |
            rd_req / rd_data <-> LINEAR, ATTEND or SAVE_X -----------------------------+-----------------+-------+
            wr <- LINEAR or ATTEND ----------------------------------------------------+-----------------+
            KvWriter <- k/v beats -----------------------------------------------------+
            LogitsWriter <- logits beats ----------------------------------------------+

    read masters:  instruction fetch, EMBED, LINEAR params / weights / RoPE + row scales, ATTEND, LOAD_X
                   -> AxiReadArbiter (round robin, R routed by ID) -> axi_rd
    write masters: KvWriter, LogitsWriter, SAVE_X -> AxiWriteArbiter -> axi_wr

The command processor runs one instruction at a time, so the units never use the activation buffers'
ports in the same cycle: the read port is switched to ATTEND or SAVE_X while it is busy and to LINEAR
otherwise, the write port to ATTEND while it is busy and to LINEAR otherwise, and ``x_in`` (the residual
beats) to LOAD_X while it is busy and to EMBED otherwise. A ``LINEAR`` with the ``QKV`` epilogue also
starts the KV writer, and a ``LOGITS`` the logits writer, in the same handshake as the unit's command; an
instruction ends only when its writes have been acknowledged, so the next one (``ATTEND`` reading the
cache, ``LOAD_X`` reading a stash, or the host reading the logits or a stash) sees them.

``irq`` is ``status.done``: high from the end of a run until the next start.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .attention.engine import chunk_geometry
from .bus.axi_read_arbiter import AxiReadArbiter
from .bus.axi_write_arbiter import AxiWriteArbiter
from .config import HwConfig
from .control.axi_lite import AxiLiteCsrBridge, AxiLiteSignature
from .control.command_processor import CommandProcessor
from .csr_map import UNITS
from .dataflow.skid import SkidBuffer
from .isa import ADDR_BITS, RUN_ARGS, Epilogue, ErrorCode
from .memory.axi import AxiReadSignature
from .memory.axi_write import AxiWriteSignature
from .replica import registered_copies
from .units.attend import AttendUnit
from .units.buffers import ActivationBuffers, Buffer
from .units.embed import EmbedUnit
from .units.kv_writer import KvWriter
from .units.linear import LinearUnit
from .units.logits_writer import LogitsWriter
from .units.stash import LoadXUnit, SaveXUnit

__all__ = ["TrilliumTop", "bus_bits", "CSR_ADDR_BITS", "READ_MASTERS", "WRITE_MASTERS"]

#: AXI4-Lite address width of the CSR slave (byte addresses; the CSRs are 32-bit words).
CSR_ADDR_BITS = 16
#: The read masters, in arbiter port order (the upper ``arid`` bits name the master).
READ_MASTERS = ("fetch", "embed", "params", "weights", "rope", "attend", "load_x")
#: The write masters, in arbiter port order.
WRITE_MASTERS = ("kv", "logits", "save_x")


def bus_bits(hw):
    """The data width of the top level's AXI4 port: ``hw.dram.bus_bits``.

    ``dram.data_bits`` when it is a power of two. A width that is not (``tellme-kv260``'s 768 bits: three
    256-bit ports of the KV260's PS) is rounded up to the next power of two, 1024: every unit then reads
    whole 128-byte words, and the simulation DRAM model limits the port to
    ``dram.bandwidth_bytes_per_cycle`` (76.8 B/cycle), as the block benchmarks model it too. Splitting
    the port into three 256-bit AXI4 ports for the real board (the ``AxiReaderGroup`` of
    ``hw/memory/axi_group.py`` in front of the masters) is not built.
    """
    return hw.dram.bus_bits


class TrilliumTop(wiring.Component):
    """The whole accelerator for one hardware config.

    Parameters
    ----------
    hw : HwConfig
        The hardware config; its ``limits`` size the buffers, and its hash is the ``id`` CSR.

    Attributes
    ----------
    csr : In(AxiLiteSignature(CSR_ADDR_BITS))
        The CSRs of ``hw/csr_map.py`` at byte offset ``4 * index``.
    axi_rd : Out(AxiReadSignature(32, bus_bits(hw), id_bits))
    axi_wr : Out(AxiWriteSignature(32, bus_bits(hw), id_bits))
        The DRAM master. Reads and writes are independent AXI4 channels of one port.
    irq : Out(1)
        ``status.done``.
    """

    def __init__(self, hw):
        if not isinstance(hw, HwConfig):
            raise TypeError(f"TrilliumTop: hw must be a HwConfig (use hw.config.load_hw_config), got {hw!r}")
        self.hw = hw
        lim, N = hw.limits, hw.tlmm.lanes
        bits = bus_bits(hw)
        if bits < 32:
            raise ValueError(f"TrilliumTop: dram.data_bits = {hw.dram.data_bits} is below the units' 32 bits")
        #: The AXI data width of the top level's port (see :func:`bus_bits`).
        self.bus_bits = bits
        kv_dim = lim.max_kv_heads * lim.head_dim
        self.cp = CommandProcessor(hw.config_hash, bits, lanes=N, max_tokens=lim.max_chunk)
        self.bridge = AxiLiteCsrBridge(CSR_ADDR_BITS, self.cp.csr.addr.shape().width)
        self.embed = EmbedUnit(data_bits=bits, lanes=N, max_hidden=lim.max_hidden, max_tokens=lim.max_chunk)
        self.linear = LinearUnit(
            tables=hw.tlmm.tables, lanes=N, data_bits=bits,
            max_k=max(lim.max_hidden, lim.max_intermediate, lim.q_dim),
            max_rows=max(lim.q_dim + 2 * kv_dim, 2 * lim.max_intermediate, lim.max_hidden, lim.max_vocab),
            max_tokens=lim.max_chunk, head_dim=lim.head_dim, max_heads=lim.max_kv_heads,
            activations=hw.vector.activations)
        self.attend = AttendUnit(
            head_dim=lim.head_dim, lanes=N, att_lanes=hw.attention.lanes, query_block=hw.attention.query_block,
            max_context=hw.max_context, max_group=lim.max_group, max_kv_heads=lim.max_kv_heads, data_bits=bits,
            max_tokens=lim.max_chunk, max_index=self.linear.max_index)
        words = {Buffer.X: -(-lim.max_hidden // N), Buffer.ATT: lim.q_dim // N,
                 Buffer.H: -(-lim.max_intermediate // N), Buffer.Q: lim.q_dim // N}
        self.buffers = ActivationBuffers(lanes=N, max_tokens=lim.max_chunk, words=words,
                                         max_index=self.linear.max_index)
        self.kv_writer = KvWriter(data_bits=bits, lanes=N, pos_bits=RUN_ARGS["pos"], max_heads=lim.max_kv_heads)
        self.logits_writer = LogitsWriter(data_bits=bits, lanes=N, max_tokens=lim.max_chunk,
                                          max_row_tiles=self.linear.max_row_tiles)
        stash = dict(data_bits=bits, lanes=N, max_hidden=lim.max_hidden, max_tokens=lim.max_chunk)
        self.load_x = LoadXUnit(**stash)
        # SAVE_X has its own write master rather than sharing the LogitsWriter (whose record layout is the
        # stash's with tiles = ceil(hidden / lanes)): the writer's `error` is sticky until reset, so a DRAM
        # error would fault every later SAVE_X (and LOGITS); the saver watches its own write responses
        # instead, so a fault lasts one command. It also writes the whole stash as one command of full
        # bursts (the LogitsWriter sends one write command per beat), and needs no mux on the LINEAR
        # unit's logits stream. The cost is a third write-arbiter port and one small AxiBurstWriter.
        self.save_x = SaveXUnit(**stash, max_index=self.linear.max_index)
        self.read_arbiter = AxiReadArbiter(len(READ_MASTERS), ADDR_BITS, bits, sliced=True, credit_ar=True)
        self.write_arbiter = AxiWriteArbiter(len(WRITE_MASTERS), ADDR_BITS, bits, sliced=True, credit_w=True)
        # Fail at construction, not deep in elaboration, if the attention geometry is impossible.
        chunk_geometry(lim.head_dim, hw.attention.lanes)
        super().__init__({
            "csr": In(AxiLiteSignature(CSR_ADDR_BITS)),
            "axi_rd": Out(self.read_arbiter.s.signature),
            "axi_wr": Out(self.write_arbiter.s.signature),
            "irq": Out(1),
        })

    @property
    def read_signature(self) -> AxiReadSignature:
        return self.read_arbiter.s.signature

    @property
    def write_signature(self) -> AxiWriteSignature:
        return self.write_arbiter.s.signature

    def elaborate(self, platform):
        m = Module()
        for name in ("cp", "bridge", "embed", "linear", "attend", "buffers", "kv_writer", "logits_writer",
                     "load_x", "save_x", "read_arbiter", "write_arbiter"):
            m.submodules[name] = getattr(self, name)
        cp, emb, lin, att, buf = self.cp, self.embed, self.linear, self.attend, self.buffers
        kvw, lgw, ldx, svx = self.kv_writer, self.logits_writer, self.load_x, self.save_x
        N = self.hw.tlmm.lanes

        # -- host side -------------------------------------------------------------------------------------
        wiring.connect(m, wiring.flipped(self.csr), self.bridge.axi)
        wiring.connect(m, self.bridge.csr, cp.csr)
        m.d.comb += self.irq.eq(cp.done)

        # -- DRAM side -------------------------------------------------------------------------------------
        reads = {"fetch": cp.axi, "embed": emb.axi, "params": lin.axi_params, "weights": lin.axi_weights,
                 "rope": lin.axi_rope, "attend": att.axi, "load_x": ldx.axi}
        for i, name in enumerate(READ_MASTERS):
            wiring.connect(m, reads[name], self.read_arbiter.m[i])
        wiring.connect(m, wiring.flipped(self.axi_rd), self.read_arbiter.s)
        writes = {"kv": kvw.axi, "logits": lgw.axi, "save_x": svx.axi}
        for i, name in enumerate(WRITE_MASTERS):
            wiring.connect(m, writes[name], self.write_arbiter.m[i])
        wiring.connect(m, wiring.flipped(self.axi_wr), self.write_arbiter.s)

        # -- model registers and run arguments -----------------------------------------------------------
        args = cp.args
        m.d.comb += [
            emb.hidden.eq(cp.setup.hidden), emb.tokens.eq(args.tokens), emb.n_tokens.eq(args.n_tokens),
            lin.setup.eq(cp.setup), lin.n_tokens.eq(args.n_tokens), lin.pos.eq(args.pos),
            lin.all_logits.eq(args.all_logits),
            att.setup.eq(cp.setup), att.n_tokens.eq(args.n_tokens), att.pos.eq(args.pos),
            kvw.setup.eq(cp.setup),
            ldx.hidden.eq(cp.setup.hidden), ldx.n_tokens.eq(args.n_tokens),
            svx.hidden.eq(cp.setup.hidden), svx.n_tokens.eq(args.n_tokens),
        ]

        # -- commands --------------------------------------------------------------------------------------
        wiring.connect(m, cp.embed, emb.cmd)
        wiring.connect(m, cp.attend, att.cmd)
        wiring.connect(m, cp.load_x, ldx.cmd)
        wiring.connect(m, cp.save_x, svx.cmd)
        # LINEAR: a QKV command also starts the KV writer (both take it in one handshake).
        c = cp.linear
        qkv = c.payload.epilogue == Epilogue.QKV
        m.d.comb += [lin.cmd.payload.eq(c.payload), kvw.start.payload.layer.eq(c.payload.layer),
                     lin.cmd.valid.eq(c.valid & (~qkv | kvw.start.ready)),
                     kvw.start.valid.eq(c.valid & qkv & lin.cmd.ready),
                     c.ready.eq(lin.cmd.ready & (~qkv | kvw.start.ready))]
        # LOGITS: the logits writer learns the area and the row tiles per token.
        g = cp.logits
        m.d.comb += [lin.logits_cmd.payload.eq(g.payload), lgw.start.payload.addr.eq(args.logits),
                     lgw.start.payload.tiles.eq((g.payload.rows + N - 1) >> (N.bit_length() - 1)),
                     lin.logits_cmd.valid.eq(g.valid & lgw.start.ready),
                     lgw.start.valid.eq(g.valid & lin.logits_cmd.ready),
                     g.ready.eq(lin.logits_cmd.ready & lgw.start.ready)]
        running_logits = Signal()        # the LINEAR unit's current command is a LOGITS
        with m.If(c.valid & c.ready):
            m.d.sync += running_logits.eq(0)
        with m.If(g.valid & g.ready):
            m.d.sync += running_logits.eq(1)

        # -- unit outputs ----------------------------------------------------------------------------------
        # The residual beats: LOAD_X's while it runs, EMBED's otherwise. The choice is a register a cycle
        # behind LOAD_X's busy flag (its first beat comes many cycles after busy rises, and its busy falls
        # after its last beat is taken): the flag itself, in LOAD_X, reached EMBED's byte queue through the
        # ready multiplexer (11.5 ns placed, 96 endpoints, in a trial build).
        # One copy of the choice per place it steers (replicas: see busy_r below for why every register of a
        # unit's busy flag is one).
        use_ldx, ldx_for_emb, ldx_for_ldx = registered_copies(m, ldx.busy, 3, "use_ldx")
        m.d.comb += [buf.x_in.valid.eq(Mux(use_ldx, ldx.x.valid, emb.x.valid)),
                     buf.x_in.payload.eq(Mux(use_ldx, ldx.x.payload.as_value(), emb.x.payload.as_value())),
                     emb.x.ready.eq(buf.x_in.ready & ~ldx_for_emb), ldx.x.ready.eq(buf.x_in.ready & ldx_for_ldx)]
        wiring.connect(m, lin.kv, kvw.kv)
        wiring.connect(m, lin.lg_out, lgw.lg)
        # The buffers' read port: ATTEND's or SAVE_X's while it runs, LINEAR's otherwise; the write port:
        # ATTEND's while it runs, LINEAR's otherwise. The choice is a register beside the buffers, a cycle
        # behind the units' busy flags (a unit's requests wait that cycle; instructions run one at a time and
        # a unit is done with the buffers before its busy falls): with the flags themselves, SAVE_X's busy
        # went across the die into the LINEAR unit's answer accounting (15.96 ns placed at cbb845a).
        use_att, = registered_copies(m, att.busy, 1, "use_att")
        use_svx, = registered_copies(m, svx.busy, 1, "use_svx")
        use_lin = ~use_att & ~use_svx

        def share(sink, clients):
            """Connect the stream ``sink`` to the first of ``clients`` (``(use, port)``, ...) whose ``use`` is
            high; the last client's ``use`` is 1 (the default)."""
            valid, payload = clients[-1][1].valid, clients[-1][1].payload.as_value()
            for use, port in reversed(clients[:-1]):
                valid, payload = Mux(use, port.valid, valid), Mux(use, port.payload.as_value(), payload)
            m.d.comb += [sink.valid.eq(valid), sink.payload.eq(payload)]
            taken = Const(0, 1)
            for use, port in clients:
                m.d.comb += port.ready.eq(sink.ready & use & ~taken)
                taken = taken | use

        share(buf.rd_req, [(use_att, att.rd_req), (use_svx, svx.rd_req), (1, lin.rd_req)])
        share(buf.wr, [(use_att, att.wr), (1, lin.wr)])
        # LINEAR's write ready from a copy of the choice of its own (a replica): the one register beside
        # the buffers was 4.5 ns of route from the QKV slice's skid flag, which it resets (11.02 ns placed
        # on the ECP5 shell at 956eb7e). The statement after share()'s takes its place.
        use_att_for_lin, = registered_copies(m, att.busy, 1, "use_att_lin")
        m.d.comb += lin.wr.ready.eq(buf.wr.ready & ~use_att_for_lin)
        answer = buf.rd_data
        # LINEAR's answers pass a skid buffer (a cycle; the buffers keep as many answers in flight as their
        # queue holds, so beats still come one per cycle): the answer queue's valid, through the unit's
        # answer accounting, chose the address of its gain memory's block RAM (12.8 ns placed on the ECP5
        # shell at a3e84bf).
        # ATTEND's and SAVE_X's pass one too, so the answer queue's read enable is a choice of three
        # skid-buffer flip-flops: with the units' own ready logic in it, ATTEND's and SAVE_X's states went
        # into the queue's pointer (11.40 ns placed at 6c79f98).
        P = len(answer.payload)
        m.submodules.linear_answers = lin_ans = SkidBuffer(unsigned(P))
        m.submodules.attend_answers = att_ans = SkidBuffer(unsigned(P + len(buf.rd_e)))
        m.submodules.save_x_answers = svx_ans = SkidBuffer(unsigned(P))
        # (SAVE_X takes its answers into a slice of its own, so its ready here is a flip-flop.)
        wiring.connect(m, lin_ans.o, lin.rd_data)
        wiring.connect(m, svx_ans.o, svx.rd_data)
        m.d.comb += [att.rd_data.valid.eq(att_ans.o.valid), att.rd_data.payload.eq(att_ans.o.payload[:P]),
                     att.rd_e.eq(att_ans.o.payload[P:]), att_ans.o.ready.eq(att.rd_data.ready)]
        m.d.comb += [lin_ans.i.payload.eq(answer.payload), att_ans.i.payload.eq(Cat(answer.payload, buf.rd_e)),
                     svx_ans.i.payload.eq(answer.payload),
                     lin_ans.i.valid.eq(answer.valid & use_lin), att_ans.i.valid.eq(answer.valid & use_att),
                     svx_ans.i.valid.eq(answer.valid & ~use_att & use_svx),
                     answer.ready.eq(Mux(use_att, att_ans.i.ready,
                                         Mux(use_svx, svx_ans.i.ready, lin_ans.i.ready)))]

        # -- busy and faults -----------------------------------------------------------------------------
        # An instruction lasts until its DRAM writes are acknowledged.
        busy = {"embed": emb.busy, "linear": (lin.busy & ~running_logits) | ~kvw.idle, "attend": att.busy,
                "logits": (lin.busy & running_logits) | ~lgw.idle, "load_x": ldx.busy, "save_x": svx.busy}
        # Registered: the units' busy terms are logic (a writer's idle is its FIFOs' levels), and the
        # processor's WAIT state ends on their OR (14.7 ns placed paths into it on the ECP5 shell at
        # 7543e99). A unit's busy rises the cycle after it takes its command, so the register still
        # shows it when WAIT first looks (after its one settle cycle); each instruction ends a cycle later.
        # A replica, as are the buffers' and the residual's choices (use_att, use_svx, use_ldx, their
        # copies): they are all registers of the same busy flags, and Yosys merges equal flip-flops, a plain
        # one into a kept replica too. Merged, LINEAR's write-ready copy of ATTEND's busy also ran the
        # processor's WAIT and its command logic (10.29 ns placed on the ECP5 shell at e8c64fe from
        # use_att_lin into the command register's enables; 10.60 ns from it into the QKV lanes).
        busy_r, = registered_copies(m, Cat(*(busy[u] for u in UNITS)), 1, "busy_r")
        m.d.comb += cp.busy.eq(busy_r)
        m.d.comb += [
            cp.fault_embed.eq(emb.fault),
            cp.fault_attend.eq(att.fault),
            cp.fault_linear.eq(Mux(kvw.error, ErrorCode.BAD_ADDRESS, lin.fault)),
            cp.fault_logits.eq(Mux(lgw.error, ErrorCode.BAD_ADDRESS, lin.fault)),
            cp.fault_load_x.eq(ldx.fault),
            cp.fault_save_x.eq(svx.fault),
        ]
        return m
