"""The attention engine: a tile of up to ``query_block`` consecutive queries (all heads) against the KV
cache, streamed once per tile, bit-exact with ``golden.attention``. Decode is a tile of one query.

The ``kv`` stream carries the cache segments of ``firmware.kv_cache.KvCacheLayout`` in the order
``KvCacheLayout.decode_reads`` gives for the tile's last position: kv head major, then block; per segment
the exponent rows, 32 K rows, 32 V rows and the padding, cut into chunks of ``chunk`` bytes. Blocks past
the tile's last query are never streamed (fully masked tiles are skipped). One segment is one block of
the contract's online softmax (docs/numerics.md, "Attention"; docs/attention.md).

The GQA group and the number of kv heads are run-time values of each tile command (``group`` 1 ..
``max_group``, ``kv_heads`` 1 .. ``max_kv_heads``), so one build serves MHA and GQA models. Per kv head
the engine holds ``(last + 1) * group`` active query rows (of at most ``max_group * query_block``); row
``r`` is query ``r // group`` of the tile and head ``r % group`` of the kv head's group. Inactive rows
cost no cycles. Per segment:

* exponent rows: ``ke[0..31]`` and ``ve[0..31]`` are captured, and the prefix maxima of ``ve`` (row
  ``r`` needs ``max ev_j`` over its own valid keys ``j <= pos_r``).
* K rows: for each chunk of each key row, one cycle per active query row, each a dot product of
  ``chunk`` int8 pairs (``chunk`` MACs per cycle). Per finished key and query row, the score
  ``z = saturate(round_shift(dot * mA, sA + 16 - eq - ek_j), 32)`` goes into the score buffer and,
  if the key is not masked for that row, the row's block maximum.
* one cycle for the last score to land; each row's ``M'`` and ``E'`` then follow from its registers.
* V rows, in two pipeline stages: for each chunk of each key row and query row, ``p_j = exp2_neg(M' -
  z_j)``, ``pv = round_shift(p_j, E' - ev_j)`` and ``num += pv * v8_j`` on ``chunk`` lanes; the first key
  of a block rescales ``num`` by ``a = exp2_neg(M' - M)`` (``round_shift(num * a, 15 + E' - E)``) in
  the same cycle. ``den`` is updated once per key row. Masked keys (``j > pos_r``) change nothing, and a
  row without any valid key in the block keeps its state, as in the golden model.
* padding chunks are dropped.

After a kv head's last block the :class:`~hw.attention.normalise.Normaliser` turns ``num`` and ``den``
into Q.16 outputs while the engine streams the next kv head into the other bank of the ``num`` memory.

Cost (written for FPGA block RAM and DSP blocks; docs/attention.md, "ECP5 cost"): every memory (query
rows, scores, ``num``, the two exp2 tables) is read synchronously, so it maps to block RAM; reads that
must land with a chunk are prefetched from the next cycle's loop counters. Addresses are bit fields,
not products. Each lane has one 36 x 16 multiplier, shared by the block rescale and the normaliser, and
one more multiplier serves both the score scale (K phase) and den's rescale (V phase).
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.numerics import ATTN_KEY_BLOCK, EXP_FRAC, RES_FRAC, score_constant

from ..params import check_int
from .arith import const_mul, round_shift, round_shift_right, round_shift_span, saturate, tree_sum, vmax
from .exp2 import Exp2Neg
from .normalise import DEN_BITS, EXP_BITS, NUM_BITS, PROD_BITS, Normaliser, num_address, num_depth

__all__ = ["AttentionEngine", "q_layout", "cmd_layout", "chunk_geometry"]

_BLK = ATTN_KEY_BLOCK
_EXP_BYTES = 2 * ATTN_KEY_BLOCK


def chunk_geometry(head_dim, lanes):
    """``(chunk, row_beats)``: bytes per stream beat and beats per row for ``lanes`` MACs per cycle.

    A row of ``head_dim`` bytes is one beat if ``lanes >= head_dim``, else ``head_dim / lanes`` beats
    (``lanes`` must then divide ``head_dim``).
    """
    if lanes >= head_dim:
        return head_dim, 1
    if head_dim % lanes:
        raise ValueError(f"head_dim = {head_dim} is not a multiple of lanes = {lanes} (needed when lanes < "
                         "head_dim)")
    return lanes, head_dim // lanes


def q_layout(chunk):
    """One beat of a query row: ``chunk`` int8 values and the row's exponent (read on its first beat)."""
    return data.StructLayout({"data": data.ArrayLayout(signed(8), chunk), "e": unsigned(EXP_BITS)})


def cmd_layout(max_context, query_block=1, max_group=1, max_kv_heads=1):
    """A tile: the position ``pos`` of its first query, ``last``, the number of queries minus one, the GQA
    ``group`` (query heads per kv head, 1 .. ``max_group``) and ``kv_heads`` (1 .. ``max_kv_heads``).

    Query ``i`` (``0 <= i <= last``) is at position ``pos + i`` and attends to keys ``0 .. pos + i``.
    """
    return data.StructLayout({"pos": unsigned(max(1, (max_context - 1).bit_length())),
                              "last": range(max(2, query_block)),
                              "group": unsigned(max(1, max_group.bit_length())),
                              "kv_heads": unsigned(max(1, max_kv_heads.bit_length()))})


def _array(n, shape, name):
    return Array(Signal(shape, name=f"{name}{i}") for i in range(n))


class AttentionEngine(wiring.Component):
    """Attention engine for tiles of consecutive queries, fed by a stream of KV cache chunks.

    Parameters
    ----------
    max_group : int
        Largest GQA group (query heads per kv head) a command may ask for; sizes the query rows
        (``max_group * query_block``).
    max_kv_heads : int
        Largest number of kv heads a command may ask for.
    head_dim : int
        ``d``, 1..256.
    lanes : int
        int8 MACs per cycle of the dot-product and accumulate units (see :func:`chunk_geometry`).
    query_block : int
        Queries per tile (1 for decode).
    max_context : int
        Largest context; a multiple of 32.
    pad_chunks : int
        Padding chunks at the end of each segment (``KvCacheLayout.pad_chunks(chunk)``).

    Attributes
    ----------
    cmd : In(stream.Signature(cmd_layout(max_context, query_block, max_group, max_kv_heads)))
        One tile; accepted while idle. ``group`` must be 1 .. ``max_group`` and ``kv_heads`` 1 ..
        ``max_kv_heads`` (not checked: the ATTEND unit refuses other shapes).
    q : In(stream.Signature(q_layout(chunk)))
        Per kv head, before its first segment: its query rows (query major, then head of the group),
        ``row_beats`` beats each, for the tile's queries only.
    kv : In(stream.Signature(unsigned(8 * chunk)))
        The cache stream (little-endian bytes).
    o : Out(stream.Signature(data.ArrayLayout(signed(32), chunk)))
        Q.16 outputs per kv head, in the ``q`` row order, ``row_beats`` beats per row.
    idle : Out(1)
        No tile in progress (the last kv head's outputs may still be draining from the normaliser).
    """

    def __init__(self, max_group, max_kv_heads, head_dim, lanes, *, query_block=1, max_context=4096,
                 pad_chunks=0):
        owner = type(self).__name__
        self.max_group = check_int("max_group", max_group, 1, 256, owner)
        self.max_kv_heads = check_int("max_kv_heads", max_kv_heads, 1, 256, owner)
        self.head_dim = check_int("head_dim", head_dim, 1, 256, owner)
        self.lanes = check_int("lanes", lanes, 1, 256, owner)
        self.query_block = check_int("query_block", query_block, 1, 64, owner)
        self.max_context = check_int("max_context", max_context, _BLK, 1 << 16, owner)
        if max_context % _BLK:
            raise ValueError(f"{owner}: max_context = {max_context} is not a multiple of {_BLK}")
        self.pad_chunks = check_int("pad_chunks", pad_chunks, 0, 1 << 16, owner)
        self.rows = self.max_group * self.query_block
        self.chunk, self.row_beats = chunk_geometry(head_dim, lanes)
        self.exp_rows = -(-_EXP_BYTES // head_dim)
        self.score_m, self.score_s = score_constant(head_dim)
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout(max_context, query_block, max_group, max_kv_heads))),
            "q": In(stream.Signature(q_layout(self.chunk))),
            "kv": In(stream.Signature(unsigned(8 * self.chunk))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(32), self.chunk))),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        MG, NR, R, C = self.max_group, self.rows, self.row_beats, self.chunk
        QB = self.query_block

        m.submodules.norm = norm = Normaliser(NR, C, R)
        wiring.connect(m, wiring.flipped(self.o), norm.o)
        m.submodules.exp_a = exp_a = Exp2Neg()   # rescale factor a (one cycle of latency)
        m.submodules.exp_p = exp_p = Exp2Neg()   # weights p_j (one cycle of latency)

        # All memories are read synchronously, so they map to block RAM (DP16KD on ECP5) rather than
        # distributed RAM. Addresses are bit fields (Cat), not products: no multiplier, and any depth.
        # The q and z reads are *prefetched*: their address is that of the next cycle's (row, beat, key)
        # (``r_nx``, ``k_nx``, ``j_nx`` below), so the word is there when its chunk arrives, as with an
        # asynchronous read. Depths of at least 2: a zero-width address is rejected by Verilator.
        rb = max(1, (NR - 1).bit_length())
        kb = (R - 1).bit_length()
        m.submodules.qmem = qmem = Memory(shape=data.ArrayLayout(signed(8), C), depth=max(2, 1 << (rb + kb)),
                                          init=[])
        q_wr, q_rd = qmem.write_port(), qmem.read_port()
        m.submodules.zbuf = zbuf = Memory(shape=signed(32), depth=_BLK << rb, init=[])
        z_wr, z_rd = zbuf.write_port(), zbuf.read_port()
        m.submodules.num = num = Memory(shape=data.ArrayLayout(signed(NUM_BITS), C), depth=num_depth(NR, R),
                                        init=[])
        # The weighted sum is a read-modify-write one cycle apart (read in V stage 0, written in stage 1):
        # with one-beat rows and one active row the next chunk reads the word being written, so the port
        # is transparent to the write.
        n_wr = num.write_port()
        n_rd = num.read_port(transparent_for=(n_wr,))
        n_norm = num.read_port()
        m.d.comb += [n_norm.addr.eq(norm.num_addr), norm.num_data.eq(n_norm.data)]

        # -- tile and loop state (counters are never zero bits wide: Verilator rejects [-1:0]) -----------
        pos = Signal.like(self.cmd.payload.pos)             # first query's position
        last_q = Signal(range(max(2, self.query_block)))
        rows_m1 = Signal(range(max(2, NR)))                 # active rows - 1
        last_block = Signal(range(max(2, self.max_context // _BLK)))
        h = Signal(range(max(2, self.max_kv_heads)))
        h_last = Signal.like(h)                             # kv heads - 1
        b = Signal.like(last_block)
        bank = Signal()                      # num bank of the current kv head (toggles per head)
        r = Signal(range(max(2, NR)))
        k = Signal(range(max(2, R)))
        j = Signal(range(_BLK))
        # Next values of r, k, j (every state assigns these, not the registers): the prefetch addresses.
        r_nx, k_nx, j_nx = Signal.like(r), Signal.like(k), Signal.like(j)
        m.d.comb += [r_nx.eq(r), k_nx.eq(k), j_nx.eq(j)]
        m.d.sync += [r.eq(r_nx), k.eq(k_nx), j.eq(j_nx)]
        cnt = Signal(range(max(self.exp_rows * R, self.pad_chunks, NR * R) + 1))
        pos_bits = len(pos) + 2

        def q_addr(row, beat):
            return Cat(row[:rb], beat[:kb])

        def z_addr(row, key):
            return Cat(key, row[:rb])

        # Row r's query offset in the tile (r // group, registered per row at command time from a choice
        # over the possible groups: no divider), and its last valid key in this block: lim_r = pos_r - 32 b.
        if MG == 1:
            row_q = Array(Const(i, range(max(2, QB))) for i in range(NR))
        else:
            row_q = _array(NR, range(max(2, QB)), "row_q")

        def lim_of(row):
            return (pos + row_q[row] - (b << 5)).as_signed()

        # -- softmax state, per query row ----------------------------------------------------------------
        qe = _array(NR, EXP_BITS, "qe")
        run_max = _array(NR, signed(32), "run_max")
        blk_max = _array(NR, signed(32), "blk_max")
        dacc = _array(NR, signed(24), "dacc")
        den = _array(NR, DEN_BITS, "den")
        run_e = _array(NR, EXP_BITS, "run_e")
        started = _array(NR, 1, "started")
        ke = _array(_BLK, EXP_BITS, "ke")
        ve = _array(_BLK, EXP_BITS, "ve")

        # Prefix maxima of ve: row r's block maximum of ev_j over j <= lim_r is ve_pmax[min(lim_r, 31)].
        ve_pmax = []
        for i in range(_BLK):
            t = Signal(EXP_BITS, name=f"ve_pmax{i}")
            m.d.comb += t.eq(ve[i] if i == 0 else vmax(ve_pmax[-1], ve[i]))
            ve_pmax.append(t)
        ve_pmax = Array(ve_pmax)

        kv_bytes = [self.kv.payload[8 * i:8 * i + 8].as_signed() for i in range(C)]

        # -- score pipeline (K rows): stage 1 = chunk dot product, stage 2 = accumulate, scale, max -----
        s1_valid = Signal()
        s1_r = Signal.like(r)
        s1_j = Signal.like(j)
        s1_first = Signal()
        s1_last = Signal()
        s1_part = Signal(signed(24))
        m.d.comb += q_rd.addr.eq(q_addr(r_nx, k_nx))
        part = tree_sum(q_rd.data[i] * kv_bytes[i] for i in range(C))

        dot = Signal(signed(24))
        m.d.comb += dot.eq(Mux(s1_first, 0, dacc[s1_r]) + s1_part)
        shift = Signal(signed(8))
        m.d.comb += shift.eq(self.score_s + RES_FRAC - qe[s1_r] - ke[s1_j])
        z = Signal(signed(32))
        # One multiplier for the score scale dot * mA (K stage 2) and den's rescale den * a (V stage 1): the
        # two stages are never busy in the same cycle: the next segment's exponent rows (at least one
        # cycle) lie between a last V chunk and the next first K chunk, and K_WAIT between the K and V
        # phases.
        smul_a = Signal(signed(DEN_BITS + 1))
        smul_b = Signal(max(EXP_FRAC + 1, self.score_m.bit_length()))
        smul = Signal(signed(len(smul_a) + len(smul_b)))
        m.d.comb += smul.eq(smul_a * smul_b)
        # shift = sA + 16 - eq - ek with 5-bit exponents lies in [sA + 16 - 62, sA + 16]: one right shifter
        # over that span (arith.round_shift_span).
        z_hi = self.score_s + RES_FRAC
        m.d.comb += z.eq(saturate(round_shift_span(smul, shift, min(1, z_hi - 2 * ((1 << EXP_BITS) - 1)), z_hi),
                                  32))
        s1_lim = Signal(signed(pos_bits + 1))
        m.d.comb += s1_lim.eq(lim_of(s1_r))
        m.d.sync += s1_valid.eq(0)
        with m.If(s1_valid):
            m.d.sync += dacc[s1_r].eq(dot)
            with m.If(s1_last):
                m.d.comb += [z_wr.addr.eq(z_addr(s1_r, s1_j)), z_wr.data.eq(z), z_wr.en.eq(1)]
                # Valid keys of a row are a prefix of the block, so a live row's first key is j = 0.
                with m.If(s1_j <= s1_lim):
                    m.d.sync += blk_max[s1_r].eq(Mux(s1_j == 0, z, vmax(blk_max[s1_r], z)))

        # -- weighted sum (V rows), stage 0: the chunk arrives with z_j (prefetched); row r's M', E', the
        # table addresses of p_j and a, and the shift amounts. Everything stage 1 needs is registered
        # here, so the next segment's exponent rows and scores may overwrite ve, ke and blk_max meanwhile.
        v_lim = Signal(signed(pos_bits + 1))
        m.d.comb += v_lim.eq(lim_of(r))
        run_max_r, run_e_r, started_r = run_max[r], run_e[r], started[r]
        new_max = Signal(signed(32))
        m.d.comb += new_max.eq(Mux(started_r, vmax(run_max_r, blk_max[r]), blk_max[r]))
        blk_e = Signal(EXP_BITS)
        m.d.comb += blk_e.eq(ve_pmax[Mux(v_lim > _BLK - 1, _BLK - 1, v_lim[:5])])
        new_e = Signal(EXP_BITS)
        m.d.comb += new_e.eq(Mux(started_r, vmax(run_e_r, blk_e), blk_e))
        m.d.comb += [
            z_rd.addr.eq(z_addr(r_nx, j_nx)),
            exp_a.t.eq(new_max - run_max_r),
            exp_p.t.eq(new_max - z_rd.data),
            n_rd.addr.eq(num_address(NR, R, bank, r, k)),
        ]
        v1_busy = Signal()          # stage 1 holds a chunk
        v1_en = Signal()            # ... of a valid key: write num (and den on the row's first beat)
        v1_first = Signal()         # j = 0: rescale
        v1_den = Signal()           # k = 0: update den
        v1_r = Signal.like(r)
        v1_addr = Signal.like(n_rd.addr)
        v1_started = Signal()
        v1_pv_sh = Signal(signed(EXP_BITS + 1))      # E' - ev_j
        v1_rescale = Signal(EXP_BITS)                # E' - E (the rescale shift is 15 + E' - E)
        v1_kv = Signal.like(self.kv.payload)
        m.d.sync += [v1_busy.eq(0), v1_en.eq(0)]

        # -- stage 1: p_j and a from the tables, the num read-modify-write and the den update ----------
        alpha = Signal(EXP_FRAC + 1)
        m.d.comb += alpha.eq(Mux(v1_started, exp_a.p, 0))
        p = exp_p.p
        pv = Signal(EXP_FRAC + 1)
        m.d.comb += pv.eq(round_shift(p, v1_pv_sh, max_left=0, max_right=EXP_FRAC + 3))
        v1_bytes = [v1_kv[8 * i:8 * i + 8].as_signed() for i in range(C)]
        m.d.comb += [n_wr.addr.eq(v1_addr), n_wr.en.eq(v1_en)]
        # One 36 x 16 multiplier per lane, shared with the normaliser: the rescale needs it only on the
        # first key of a block (j = 0), the normaliser's num * m16 takes every other cycle.
        rescaling = Signal()
        m.d.comb += [rescaling.eq(v1_en & v1_first), norm.mul_free.eq(~rescaling)]
        mul_b = Signal(EXP_FRAC + 1)
        m.d.comb += mul_b.eq(Mux(rescaling, alpha, norm.m16))
        for i in range(C):
            acc = n_rd.data[i]
            prod = Signal(signed(PROD_BITS), name=f"prod{i}")
            m.d.comb += [prod.eq(Mux(rescaling, acc, norm.num_data[i]) * mul_b), norm.prod[i].eq(prod)]
            # round_shift(num * a, 15 + E' - E) with 0 <= E' - E <= 31: E' = max(E, block's E) for a started
            # row, and an unstarted row has a = 0, so any shift gives 0 (|num * a| < 2^50).
            base = Mux(v1_first, round_shift_right(prod, v1_rescale, EXP_FRAC), acc)
            m.d.comb += n_wr.data[i].eq(base + pv * v1_bytes[i])
        den_r = den[v1_r]
        m.d.comb += [smul_a.eq(Mux(v1_busy, den_r, dot)), smul_b.eq(Mux(v1_busy, alpha, self.score_m))]
        den_next = Signal(DEN_BITS)
        m.d.comb += den_next.eq(Mux(v1_first, round_shift(smul, EXP_FRAC, max_left=0, max_right=EXP_FRAC),
                                    den_r) + p)
        with m.If(v1_en & v1_den):
            m.d.sync += den_r.eq(den_next)

        # -- normaliser hand-off --------------------------------------------------------------------------
        m.d.comb += [norm.start.payload.bank.eq(bank), norm.start.payload.count.eq(rows_m1 + 1)]
        for i in range(NR):
            m.d.comb += [norm.start.payload.den[i].eq(den[i]), norm.start.payload.e[i].eq(run_e[i])]

        last_r = r == rows_m1
        last_k = k == R - 1

        def advance(on_rows_end):
            """Step query row, then chunk, then key row; ``on_rows_end`` runs after the segment's last."""
            m.d.comb += r_nx.eq(r + 1)
            with m.If(last_r):
                m.d.comb += [r_nx.eq(0), k_nx.eq(k + 1)]
                with m.If(last_k):
                    m.d.comb += [k_nx.eq(0), j_nx.eq(j + 1)]
                    with m.If(j == _BLK - 1):
                        m.d.comb += j_nx.eq(0)
                        on_rows_end()

        def segment_end():
            m.d.sync += b.eq(b + 1)
            with m.If(b == last_block):
                m.next = "HEAD_END"
            with m.Else():
                m.next = "EXP"

        with m.FSM(name="attention"):
            with m.State("IDLE"):
                m.d.comb += [self.idle.eq(1), self.cmd.ready.eq(1)]
                with m.If(self.cmd.valid):
                    c = self.cmd.payload
                    m.d.sync += [pos.eq(c.pos), last_q.eq(c.last), last_block.eq((c.pos + c.last) >> 5), h.eq(0),
                                 h_last.eq(c.kv_heads - 1), cnt.eq(0)]
                    m.d.comb += [r_nx.eq(0), k_nx.eq(0)]
                    if MG == 1:
                        m.d.sync += rows_m1.eq(c.last)
                    else:
                        # (last + 1) * group - 1 by constant multiplies per group: no DSP block.
                        with m.Switch(c.group):
                            for g in range(1, MG + 1):
                                with m.Case(g):
                                    m.d.sync += rows_m1.eq(const_mul(c.last + 1, g) - 1)
                                    m.d.sync += [row_q[i].eq(min(i // g, QB - 1)) for i in range(NR)]
                    m.next = "Q_LOAD"

            with m.State("Q_LOAD"):
                m.d.comb += [self.q.ready.eq(1), q_wr.addr.eq(q_addr(r, k)), q_wr.data.eq(self.q.payload.data)]
                with m.If(self.q.valid):
                    m.d.comb += q_wr.en.eq(1)
                    with m.If(k == 0):
                        m.d.sync += qe[r].eq(self.q.payload.e)
                    m.d.comb += k_nx.eq(k + 1)
                    with m.If(last_k):
                        m.d.comb += [k_nx.eq(0), r_nx.eq(r + 1)]
                        with m.If(last_r):
                            m.d.comb += [r_nx.eq(0), j_nx.eq(0)]
                            m.d.sync += [b.eq(0), cnt.eq(0)]
                            m.d.sync += [started[i].eq(0) for i in range(NR)]
                            m.next = "EXP"

            with m.State("EXP"):
                m.d.comb += self.kv.ready.eq(1)
                with m.If(self.kv.valid):
                    for c in range(-(-_EXP_BYTES // C)):
                        with m.If(cnt == c):
                            for lane in range(C):
                                i = c * C + lane
                                if i < _BLK:
                                    m.d.sync += ke[i].eq(self.kv.payload[8 * lane:8 * lane + EXP_BITS])
                                elif i < _EXP_BYTES:
                                    m.d.sync += ve[i - _BLK].eq(self.kv.payload[8 * lane:8 * lane + EXP_BITS])
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(cnt == self.exp_rows * R - 1):
                        m.d.sync += cnt.eq(0)
                        m.next = "K"

            with m.State("K"):
                m.d.comb += self.kv.ready.eq(last_r)
                with m.If(self.kv.valid):
                    m.d.sync += [s1_valid.eq(1), s1_r.eq(r), s1_j.eq(j), s1_first.eq(k == 0), s1_last.eq(last_k),
                                 s1_part.eq(part)]

                    def rows_done():
                        m.next = "K_WAIT"
                    advance(rows_done)

            with m.State("K_WAIT"):
                # The last score is written this cycle; M', a and E' are valid from the next one.
                m.next = "V"

            with m.State("V"):
                m.d.comb += self.kv.ready.eq(last_r)
                with m.If(self.kv.valid):
                    m.d.sync += [v1_busy.eq(1), v1_en.eq(j <= v_lim), v1_first.eq(j == 0), v1_den.eq(k == 0),
                                 v1_r.eq(r), v1_addr.eq(n_rd.addr), v1_started.eq(started_r),
                                 v1_pv_sh.eq(new_e - ve[j]), v1_rescale.eq(new_e - run_e_r),
                                 v1_kv.eq(self.kv.payload)]
                    # The row's last chunk of the block: its M' and E' become the running ones (a row
                    # without a valid key in the block keeps its state). Stage 1 of this and earlier
                    # chunks uses the registered values above, not these.
                    with m.If((j == _BLK - 1) & last_k & (v_lim >= 0)):
                        m.d.sync += [run_max_r.eq(new_max), run_e_r.eq(new_e), started_r.eq(1)]

                    def block_done():
                        if self.pad_chunks:
                            m.next = "PAD"
                        else:
                            segment_end()
                    advance(block_done)

            with m.State("PAD"):
                m.d.comb += self.kv.ready.eq(1)
                with m.If(self.kv.valid):
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(cnt == self.pad_chunks - 1):
                        m.d.sync += cnt.eq(0)
                        segment_end()

            with m.State("HEAD_END"):
                # Hand over once the last chunk has left stage 1 (its den update has landed).
                m.d.comb += norm.start.valid.eq(~v1_busy)
                with m.If(norm.start.valid & norm.start.ready):
                    m.d.sync += [bank.eq(~bank), h.eq(h + 1)]
                    with m.If(h == h_last):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "Q_LOAD"
        return m
