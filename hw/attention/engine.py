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
  ``r`` needs ``max ev_j`` over its own valid keys ``j <= pos_r``) are scanned during the K rows.
* K rows: for each chunk of each key row, one cycle per active query row, each a dot product of
  ``chunk`` int8 pairs (``chunk`` MACs per cycle). Per finished key and query row, the score
  ``z = saturate(round_shift(dot * mA, sA + 16 - eq - ek_j), 32)`` goes into the score buffer and,
  if the key is not masked for that row, the row's block maximum. A thirteen-stage pipeline (stage 0
  the chunk's cycle, stage 12 the score's write; the block maximum, computed in stage 12 into a
  register, is written to its row one cycle later).
* until the K pipeline is empty (about thirteen cycles) the scores are landing; each row's ``M'`` and
  ``E'`` then follow from its registers.
* V rows, a thirteen-stage pipeline (stage 0 the chunk's cycle, stage 12 the write of ``num``): for
  each chunk of each key row and query row, ``p_j = exp2_neg(M' - z_j)``, ``pv = round_shift(p_j,
  E' - ev_j)`` and ``num += pv * v8_j`` on ``chunk`` lanes; the first key of a block rescales ``num``
  by ``a = exp2_neg(M' - M)`` (``round_shift(num * a, 15 + E' - E)``) in the same pass. ``den`` is
  updated once per key row. Masked keys (``j > pos_r``) change nothing, and a row without any valid
  key in the block keeps its state, as in the golden model. ``num`` is a read-modify-write of block
  RAM: the first key reads its words early (eight stages before the write, for the rescale; nothing
  in flight writes them), the others three stages before the write, with the words summed in between
  forwarded.
* padding chunks are dropped.

Every pipeline stage does at most about one adder, one shifter, one compare-and-select or one
multiplier block's work (for a 100 MHz ECP5: ``python -m hw.unit_timing --unit attend``), and the
pipelines never stall: a chunk moves on every cycle, so throughput is one chunk per active row and
cycle as before; the price is the K pipeline's drain once per segment and the V pipeline's once per kv
head (before the normaliser hand-off).

After a kv head's last block the :class:`~hw.attention.normalise.Normaliser` turns ``num`` and ``den``
into Q.16 outputs while the engine streams the next kv head into the other bank of the ``num`` memory.

Cost (written for FPGA block RAM and DSP blocks; docs/attention.md, "ECP5 cost"): every memory (query
rows, scores, ``num``, the two exp2 tables) is read synchronously, so it maps to block RAM; reads that
must land with a chunk are prefetched from the next cycle's loop counters. Addresses are bit fields,
not products. Each lane has one 36 x 16 multiplier, shared by the block rescale and the normaliser, and
one more multiplier serves both the score scale (K phase) and den's rescale (V phase); each is split
into two multiplier blocks whose products are registered before they are summed.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.numerics import ATTN_KEY_BLOCK, EXP_FRAC, RES_FRAC, score_constant

from ..arith.dsp import registered_product
from ..collision import assert_no_collision, collision_free_memory
from ..params import check_int
from ..replica import REPLICA_ATTR, registered_copies
from .arith import clamp, const_mul, mul_parts, round_shift, saturate, tree_sum, vmax
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
        m.submodules.exp_a = exp_a = Exp2Neg(latency=3)   # rescale factor a
        m.submodules.exp_p = exp_p = Exp2Neg(latency=3)   # weights p_j

        def delays(value, n, name, reset_less=False, apart=False):
            """``[value, value one cycle ago, ..., n cycles ago]``: the pipelines never stall, so a value
            travels with its chunk through plain registers (``reset_less`` for a block RAM's read data:
            plain flip-flops, which the ECP5 build moves into its output registers). ``apart``: the
            registers are replicas (hw.replica), which synthesis does not merge with another pipeline's
            delay line of the same value."""
            out = [value]
            attrs = {REPLICA_ATTR: 1} if apart else {}
            for i in range(n):
                reg = Signal(Value.cast(value).shape(), name=f"{name}_{i + 1}", reset_less=reset_less, attrs=attrs)
                m.d.sync += reg.eq(out[-1])
                out.append(reg)
            return out

        def two_level_read(arr, index, name):
            """``arr[index]`` (``index`` a register, ``arr`` 8 x groups of registers) in two registered
            levels: each group of 8 chosen by the index's low bits, then the group by its high bits. The
            result (combinational from registers) is the word at ``index`` one cycle earlier."""
            assert len(arr) % 8 == 0
            firsts = []
            for g in range(len(arr) // 8):
                f = Signal.like(arr[0], name=f"{name}_g{g}")
                m.d.sync += f.eq(Array(arr[8 * g:8 * g + 8])[index[:3]])
                firsts.append(f)
            high = Signal(max(1, len(index) - 3), name=f"{name}_hi")
            m.d.sync += high.eq(index[3:])
            return Array(firsts)[high] if len(firsts) > 1 else firsts[0]

        # All memories are read synchronously, so they map to block RAM (DP16KD on ECP5) rather than
        # distributed RAM. Addresses are bit fields (Cat), not products: no multiplier, and any depth.
        # The q and z reads are *prefetched*: their address is that of the next cycle's (row, beat, key)
        # (``r_nx``, ``k_nx``, ``j_nx`` below), so the word is there when its chunk arrives, as with an
        # asynchronous read. Depths of at least 2: a zero-width address is rejected by Verilator.
        rb = max(1, (NR - 1).bit_length())
        kb = (R - 1).bit_length()
        # The query words are written in Q_LOAD and read by K chunks, the scores written by K chunks (stage
        # 10) and read by V chunks, never in the same cycle (the V phase starts once the K pipeline is
        # empty, and the next K phase once the V phase has read its scores): no collision bypass in
        # synthesis (checked in simulation below).
        m.submodules.qmem = qmem = collision_free_memory(shape=data.ArrayLayout(signed(8), C),
                                                         depth=max(2, 1 << (rb + kb)))
        q_wr, q_rd = qmem.write_port(), qmem.read_port()
        m.submodules.zbuf = zbuf = collision_free_memory(shape=signed(32), depth=_BLK << rb)
        z_wr, z_rd = zbuf.write_port(), zbuf.read_port()
        # The weighted sum is a read-modify-write with the read three stages before the write; the port is
        # not transparent, and the words written in those three cycles are forwarded (V stage 11 below),
        # the word written in the read's own cycle included. So no read uses a word written in its cycle (the
        # normaliser reads the other bank), and the memory has undefined collisions: no bypass logic in
        # synthesis (two read ports of 144 bits: 288 LUT4 on the ECP5 shell). Checked in simulation below.
        m.submodules.num = num = collision_free_memory(shape=data.ArrayLayout(signed(NUM_BITS), C),
                                                       depth=num_depth(NR, R))
        n_wr = num.write_port()
        n_rd = num.read_port()
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
        # Copies of r for the per-row registers the K and V pipelines read (row_q, qe, run_max, blk_max,
        # run_e, started: 32-bit words chosen by r): r also drives the buffer addresses and the pipelines'
        # delay lines, and from the one register the choice of run_max was a 6.3 ns route away (13.02 ns
        # routed on the ECP5 shell at 6c79f98).
        # One copy per array on the V side (routed at 9887928 the copy shared by all of them still reached
        # run_max's multiplexer over a 7 ns route, 12.94 ns).
        # The V side's block-maximum read takes four (r_vb, one per quarter of the word: below).
        r_k, r_vq, r_vm, r_ve, r_vs, *r_vb = registered_copies(m, r_nx, 9, "r_row")
        j_ke, j_ve = registered_copies(m, j_nx, 2, "j_exp")
        # Whether r, k, j are at their last values, registered beside them (from the next values), so the
        # loop steps and the prefetch addresses start from registers rather than comparators. rows_m1 is
        # set one cycle before the first use (the START state).
        last_r, last_k, last_j = Signal(), Signal(), Signal()
        cnt = Signal(range(max(self.exp_rows * R, self.pad_chunks, NR * R) + 1))
        pos_bits = len(pos) + 2

        def q_addr(row, beat):
            return Cat(row[:rb], beat[:kb])

        def z_addr(row, key):
            return Cat(key, row[:rb])

        # Row r's query offset in the tile (r // group, registered per row at command time from a choice
        # over the possible groups: no divider), and its last valid key in this block: lim_r = pos_r - 32 b
        # = seg_pos + row_q[r], with seg_pos = pos - 32 b kept in a register (one adder on the path, not two).
        if MG == 1:
            row_q = Array(Const(i, range(max(2, QB))) for i in range(NR))
        else:
            row_q = _array(NR, range(max(2, QB)), "row_q")
        seg_pos = Signal(signed(pos_bits + 1))
        # The mask of a row depends on its query offset only: for each offset q, whether lim >= 0 (the row
        # has a valid key in the block) and min(lim, 31), registered from seg_pos (which changes at least
        # two cycles before a K chunk: one exponent row between). Key j is valid for row r iff
        # q_live[q] and j <= q_idx[q] with q = row_q[r].
        # seg_pos + q is registered first: the flags are valid three cycles after seg_pos changes, and the
        # first K chunk's stage 1 is at least three cycles after (EXP, then K).
        q_live = _array(QB, 1, "q_live")
        q_idx = _array(QB, 5, "q_idx")
        for q in range(QB):
            lim = Signal(signed(pos_bits + 1), name=f"q_lim{q}")
            m.d.sync += [lim.eq(seg_pos + q), q_live[q].eq(lim >= 0),
                         q_idx[q].eq(Mux(lim > _BLK - 1, _BLK - 1, lim[:5]))]

        def row_mask(rq, key):
            """``(live, idx, valid)`` of a row with query offset ``rq`` and key ``key`` (see above)."""
            live, idx = q_live[rq], q_idx[rq]
            return live, idx, live & (key <= idx)

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
        # A systolic scan instead of a 32-deep chain of comparators: each register is loaded with ev_i when
        # the exponent rows deliver it and otherwise takes max(itself, its left neighbour) every cycle, so
        # t cycles after the last load ve_pmax[i] = max(ev_{i-t} .. ev_i). The loads come in index order
        # (a lower index never after a higher one), so a register only ever combines this segment's values,
        # and the scan is complete 31 cycles after the last load: the K phase in between lasts at least 32.
        ve_pmax = _array(_BLK, EXP_BITS, "ve_pmax")
        for i in range(1, _BLK):
            m.d.sync += ve_pmax[i].eq(vmax(ve_pmax[i - 1], ve_pmax[i]))
        # V's exponents land a cycle after their beat, from registers (the beat's lanes, `ve_beat`, and a
        # flag per chunk, `ve_at`): the state, the chunk count's compare and the KV slice's valid chose
        # the scan registers' inputs across the attention block (10.4-11.4 ns placed at 7f9b7c7, 55 late
        # endpoints). The scan is then complete 32 cycles after the last exponent beat, still within the
        # K phase's 32 or more and K_WAIT; K's exponents are read in the K phase's first cycle, so they
        # load at once.
        n_exp_chunks = -(-_EXP_BYTES // C)
        ve_chunks = [c for c in range(n_exp_chunks) if c * C + C > _BLK]
        ve_at = Signal(len(ve_chunks))
        ve_beat = Signal(8 * C)
        m.d.sync += [ve_at.eq(0), ve_beat.eq(self.kv.payload[:8 * C])]
        for n, c in enumerate(ve_chunks):
            with m.If(ve_at[n]):
                for lane in range(C):
                    i = c * C + lane
                    if _BLK <= i < _EXP_BYTES:
                        ev = ve_beat[8 * lane:8 * lane + EXP_BITS]
                        m.d.sync += [ve[i - _BLK].eq(ev), ve_pmax[i - _BLK].eq(ev)]
        # The exponent rows' chunks that carry ke and ve (the first n_exp_chunks of the EXP state's beats),
        # one-hot: a beat loads its lanes under the stream's valid and a flip-flop. (With the state and a
        # compare of the chunk count, ATTEND's command handshake ran through four levels into the 20 ke
        # enables: 10.51 ns placed on the ECP5 shell at e8c64fe.) Zero outside EXP: set to 1 wherever EXP
        # is entered, shifted by each of its beats, and EXP has exp_rows * R >= n_exp_chunks beats.
        exp_sel = Signal(n_exp_chunks)
        with m.If(self.kv.valid):
            m.d.sync += exp_sel.eq(exp_sel << 1)
        for c in range(n_exp_chunks):
            with m.If(self.kv.valid & exp_sel[c]):
                for lane in range(C):
                    i = c * C + lane
                    if i < _BLK:
                        m.d.sync += ke[i].eq(self.kv.payload[8 * lane:8 * lane + EXP_BITS])
                if c in ve_chunks:
                    m.d.sync += ve_at[ve_chunks.index(c)].eq(1)
        # Each query offset's block maximum of ev, ve_pmax[q_idx[q]], registered: final one cycle after the
        # scan, and it only changes three cycles after the next segment's first exponent row.
        q_blk_e = _array(QB, EXP_BITS, "q_blk_e")
        m.d.sync += [q_blk_e[q].eq(ve_pmax[q_idx[q]]) for q in range(QB)]

        # -- shared multipliers --------------------------------------------------------------------------
        # Every multiplier has registered operands and partial products registered in the multiplier blocks
        # themselves (arith.mul_parts, registered_product: no path crosses a block between fabric
        # registers), and the partial products are summed into a register: three cycles from operands to
        # product.
        # * ``smul``: the score scale dot * mA (K stage 6 loads it) and den's rescale den * a (V stage 6,
        #   first key of a block only). They never overlap: the V phase starts once the K pipeline is
        #   empty, and the next K phase starts after the V phase's 31 other keys.
        # * one 36 x 16 multiplier per lane: the block rescale num * a (V stage 6, first key of a block
        #   only) and, in every other cycle, the normaliser's num * m16.
        sm_a = Signal(signed(DEN_BITS + 1))
        sm_b = Signal(max(EXP_FRAC + 1, self.score_m.bit_length()))
        sm_lo, sm_hi = (registered_product(m, name, *part, platform=platform)
                        for name, part in zip(("sm_lo", "sm_hi"), mul_parts(sm_a, sm_b)))
        sm_prod = Signal(signed(len(sm_a) + len(sm_b)))
        m.d.sync += sm_prod.eq((sm_hi << 18) + sm_lo)
        mul_a = [Signal(signed(NUM_BITS), name=f"mul_a{i}") for i in range(C)]
        mul_b = Signal(EXP_FRAC + 1)
        prod = []
        for i in range(C):
            p_lo, p_hi = (registered_product(m, f"{name}{i}", *part, platform=platform)
                          for name, part in zip(("prod_lo", "prod_hi"), mul_parts(mul_a[i], mul_b)))
            p = Signal(signed(PROD_BITS), name=f"prod{i}")
            m.d.sync += p.eq((p_hi << 18) + p_lo)
            m.d.comb += norm.prod[i].eq(p)
            prod.append(p)

        # -- score pipeline (K rows) ---------------------------------------------------------------------
        # stage 0: the chunk arrives; its query words are read, the row's query offset and the exponents
        # come from (r, j). 1: the key's mask bit; the score's shift. 2: the chunk's operands go to the
        # multiplier blocks' input registers. 3: chunk products (one multiplier block each). 4: their
        # sum; the row's partial dot product is read. 5: it accumulates into a register. 6: on the key's
        # last chunk that register goes to smul. 7, 8: smul. 9, 10: the rounding shift (by multiples of
        # 8, then the rest, + 1, >> 1). 11: saturation; the row's block maximum is read. 12: the score is
        # written, and the row's new block maximum computed into a register if the key is not masked for
        # the row; 13: that register is written to the row.
        # The per-row read-modify-writes read before they write and forward the words written in between
        # (one-beat rows with one active row update a row every cycle): dacc one stage before, blk_max two.
        k_go = Signal()
        m.d.comb += q_rd.addr.eq(q_addr(r, k))
        assert_no_collision(m, platform, q_wr, q_rd, k_go, "attention query words")
        KD = 12
        kvalid = delays(k_go, KD, "k_valid")
        # K's delay line of r is kept apart from V's (and from the V addresses, which hold r too): Yosys
        # merged them, and the K stage 9 (now 11) block-maximum read took the row from a V-side register
        # 7 ns of route away (11.22 ns routed at 9887928).
        kr = delays(r, KD, "k_r", apart=True)
        # Apart from V's v_first (the same delay line of j == 0): merged, the block maximum's choice of z
        # took its flag from a V-side register (12.17 ns routed on the ECP5 shell at 142dbaf).
        kj0 = delays(j == 0, KD, "k_j0", apart=True)
        kfirst = delays(k == 0, 5, "k_first")
        klast = delays(last_k, 5, "k_last")
        kj = delays(j, KD, "k_j")
        krq = delays(row_q[r_k], 1, "k_rq")
        ken = [None] + delays(row_mask(krq[1], kj[1])[2], KD - 1, "k_en")
        # ke[j] in two levels from a copy of j of its own (j_ke; V's ve[j] from j_ve): from j, which also
        # steers the score addresses and the pipelines' delay lines, the 32-way choice was 11.45 ns routed
        # into k_ke (v_ev: 10.70 ns) on the ECP5 shell at 03db802. The shift is then formed in stage 2.
        kqe = delays(qe[r_k], 2, "k_qe")
        kke = delays(two_level_read(ke, j_ke, "k_ke_rd"), 1, "k_ke")
        k_q = delays(q_rd.data.as_value(), 1, "k_q", reset_less=True)[1]                 # stage 2
        k_kv = delays(self.kv.payload, 2, "k_kv")[2]
        # The operands are registered in the blocks (stage 3) before the multiply: k_q is the query
        # memory's output register, and from the block RAM to the multipliers' A pins was 7.4 ns of route
        # (11.00 ns through the multiplier, placed on the ECP5 shell at bc7124d).
        k_prod = [registered_product(m, f"k_prod{i}", k_q[8 * i:8 * i + 8].as_signed(),
                                     k_kv[8 * i:8 * i + 8].as_signed(), platform=platform,
                                     input_registers=True) for i in range(C)]
        # shift = sA + 16 - eq - ek with 5-bit exponents lies in [sA + 16 - 62, sA + 16]: one right shift
        # over that span (arith.round_shift_span, in stages 9 and 10 here).
        z_hi = self.score_s + RES_FRAC
        z_lo = min(1, z_hi - 2 * ((1 << EXP_BITS) - 1))
        shift = Signal(signed(8))
        m.d.comb += shift.eq(self.score_s + RES_FRAC - kqe[2] - kke[1])
        k_amount = Signal(range(z_hi - z_lo + 1))
        m.d.sync += k_amount.eq(clamp(shift, z_lo, z_hi) - z_lo)
        kamt = delays(k_amount, 7, "k_amount")          # from stage 3 to 10
        k_part = Signal(signed(24))
        m.d.sync += k_part.eq(tree_sum(k_prod))
        dot = Signal(signed(24))
        dot_last = Signal.like(dot)
        dacc_rd, dacc_fwd = Signal.like(dot), Signal()
        m.d.sync += [dacc_rd.eq(dacc[kr[4]]), dacc_fwd.eq(kvalid[5] & (kr[5] == kr[4])), dot_last.eq(dot)]
        m.d.comb += dot.eq(Mux(kfirst[5], 0, Mux(dacc_fwd, dot_last, dacc_rd)) + k_part)
        with m.If(kvalid[5]):
            m.d.sync += dacc[kr[5]].eq(dot)
        k_score = kvalid[5] & klast[5]
        # Only the key's last chunk goes on from stage 5.
        z_coarse = Signal(signed(len(sm_prod) + 1 - z_lo))
        z_half = Signal(signed(len(z_coarse)))
        z = Signal(signed(32))
        # A copy of z for the block maximum's compares (a replica): z also goes to the score buffer's
        # write port and the maximum's multiplexer, and the compares' carry chains started 2 ns of
        # route away from the shared register (10.24 ns routed at 9887928, 43 endpoints).
        z_cmp = Signal(signed(32), attrs={REPLICA_ATTR: 1})
        m.d.sync += [z_coarse.eq((sm_prod << (1 - z_lo)) >> Cat(Const(0, 3), kamt[6][3:])),
                     z_half.eq(((z_coarse >> kamt[7][:3]) + 1) >> 1),
                     z.eq(saturate(z_half, 32)), z_cmp.eq(saturate(z_half, 32))]
        kscore = delays(k_score, KD - 5, "k_score")
        # The block maximum: read in stage 11, the new value computed in stage 12 into a register
        # (``bm_last``) and written from it in stage 13, so the compare does not drive the row registers.
        # A row's scores are R chunks apart at least (the rows take turns beat by beat), so with rows of
        # three beats or more no read meets a write in flight. Shorter rows forward them: the read misses
        # the writes of stages 12 and 13; the one in stage 13 (the chunk two ahead) is forwarded into the
        # read register, the one in stage 12 (one ahead, one-beat rows only) into the compare. (Built only
        # where needed: the forwarding multiplexers sat between the compare's carry chain and bm_last.)
        bm_write, bm_write_1, bm_r_1 = Signal(), Signal(), Signal.like(r)
        m.d.comb += bm_write.eq(kscore[-1] & ken[KD])
        bm_new, bm_last, bm_rd = Signal(signed(32)), Signal(signed(32)), Signal(signed(32))
        m.d.sync += [bm_last.eq(bm_new), bm_write_1.eq(bm_write), bm_r_1.eq(kr[KD])]
        if R <= 2:
            bm_fwd2 = Signal()
            m.d.sync += [bm_fwd2.eq(bm_write & (kr[KD] == kr[KD - 2])),
                         bm_rd.eq(Mux(bm_fwd2, bm_last, blk_max[kr[KD - 1]]))]
        else:
            m.d.sync += bm_rd.eq(blk_max[kr[KD - 1]])
        # Valid keys of a row are a prefix of the block, so a live row's first key is j = 0. With forwarding
        # z is compared with both candidates (the word read and the word forwarded) from registers, then
        # one is chosen.
        if R == 1:
            bm_fwd = Signal()
            m.d.sync += bm_fwd.eq(bm_write & (kr[KD] == kr[KD - 1]))
            bm_cur = Mux(bm_fwd, bm_last, bm_rd)
            take_z = Mux(bm_fwd, z_cmp > bm_last, z_cmp > bm_rd)
        else:
            bm_cur, take_z = bm_rd, z_cmp > bm_rd
        m.d.comb += bm_new.eq(Mux(kj0[KD] | take_z, z, bm_cur))
        with m.If(kscore[-1]):
            m.d.comb += [z_wr.addr.eq(z_addr(kr[KD], kj[KD])), z_wr.data.eq(z), z_wr.en.eq(1)]
        with m.If(bm_write_1):
            m.d.sync += blk_max[bm_r_1].eq(bm_last)
        # Chunks in K stages 1 .. 12, as a register: the same stages one cycle earlier were 0 .. 11.
        k_busy = Signal()
        m.d.sync += k_busy.eq(Cat(kvalid[:KD]).any())

        # -- weighted sum (V rows) -----------------------------------------------------------------------
        # stage 0: the chunk arrives; z_j is read, and the row's registers. 1: the row's mask; M vs the
        # block's maximum; the block maximum of E for the row's query offset. 2: M' (new_max) and the
        # table arguments of p_j and a; E' (new_e). 3: the shift amounts; the row's last chunk of the
        # block makes M' and E' the running ones. 3 to 5: the tables (Exp2Neg, three cycles). 4: the first
        # key reads num (early, for the rescale: nothing in flight writes its words). 6: the multiplier
        # operands (num * a, den * a). 7, 8: products. 9: the rescale's shift; pv = round_shift(p_j,
        # E' - ev_j); the other keys read num (late). 10: the rescale's rounding, den's rescale,
        # pv * v8_j. 11: num's new word (+ pv * v8_j), den updated on the row's first beat. 12: num is
        # written.
        # Everything a stage needs travels with the chunk, so the next segment's exponent rows and scores
        # may overwrite ve, ke and blk_max meanwhile (q_blk_e is read in stage 1, before the first
        # exponent row can change it).
        v_go = Signal()
        VD = 11
        vbusy = delays(v_go, VD, "v_busy")
        # Replicas: as plain flip-flops, Yosys merged the copies of vr made below (den's rows) back into
        # this line, and den's choices again took the row from a register with many other loads (sm_a from
        # v_r_6: 11.12 ns; den_rd from v_r_10: 10.57 ns routed on the ECP5 shell at 03db802).
        vr = delays(r, VD, "v_r", apart=True)
        vfirst = delays(j == 0, VD, "v_first")
        vden = delays(k == 0, VD, "v_den")
        # The row's last chunk of the block (a row without a valid key in the block keeps its state).
        vrq = delays(row_q[r_vq], 1, "v_rq")
        vj = delays(j, 1, "v_j")
        v_live, v_idx, v_valid = row_mask(vrq[1], vj[1])
        vupd = [None] + delays(delays(last_j & last_k, 1, "v_last")[1] & v_live, 2, "v_upd")
        ven = [None] + delays(v_valid, VD - 1, "v_en")
        vrm = delays(run_max[r_vm], 2, "v_run_max")
        # The block maximum's word by quarters, each chosen by a copy of the row of its own: one copy
        # steered all 32 bits of the 16-row choice, and the routes out to it and through it took 10 ns of
        # 11.53 (routed on the ECP5 shell at e8c64fe, the worst path).
        vbm = delays(Cat(*(blk_max[r_vb[g]][8 * g:8 * g + 8] for g in range(4))).as_signed(), 2, "v_blk_max")
        vre = delays(run_e[r_ve], 3, "v_run_e")
        vst = delays(started[r_vs], 6, "v_started")
        vz = delays(z_rd.data, 1, "v_z", reset_less=True)          # read in stage 0, here from stage 2
        vev = [None] + delays(two_level_read(ve, j_ve, "v_ev_rd"), 2, "v_ev")   # stage 1 on
        vaddr = delays(num_address(NR, R, bank, r, k), VD + 1, "v_addr")
        vkv = delays(self.kv.payload, 10, "v_kv")
        m.d.comb += z_rd.addr.eq(z_addr(r, j))
        assert_no_collision(m, platform, z_wr, z_rd, v_go, "attention scores")
        # M' in stage 2 from the comparison registered in stage 1.
        keep_run = Signal()
        m.d.sync += keep_run.eq(vrm[1] > vbm[1])
        new_max = Signal(signed(32))
        m.d.comb += new_max.eq(Mux(vst[2] & keep_run, vrm[2], vbm[2]))
        vnm = delays(new_max, 1, "v_new_max")
        m.d.comb += [exp_a.t.eq(new_max - vrm[2]), exp_p.t.eq(new_max - vz[1])]
        blk_e = Signal(EXP_BITS)
        m.d.sync += blk_e.eq(q_blk_e[vrq[1]])                                    # stage 2
        new_e = Signal(EXP_BITS)
        m.d.sync += new_e.eq(Mux(vst[2], vmax(vre[2], blk_e), blk_e))            # stage 3
        # Stage 3. pv = round_shift(p, E' - ev_j) with E' - ev_j >= 0 for a valid key: one right shift over
        # 0 .. 18 (every shift of 17 or more rounds p <= 2^15 to 0), as arith.round_shift_span.
        pv_amount = Signal(range(EXP_FRAC + 4))
        rescale = Signal(EXP_BITS)                  # E' - E (the rescale shift is 15 + E' - E)
        m.d.sync += [pv_amount.eq(clamp((new_e - vev[3]).as_signed(), 0, EXP_FRAC + 3)),
                     rescale.eq(new_e - vre[3])]
        # The row whose running registers stage 3 updates, one-hot and registered in stage 2: each row's
        # 38 enables come from a flip-flop, not from a decode of the row number late in stage 3.
        upd_row = Signal(NR)
        m.d.sync += upd_row.eq(Mux(vbusy[2] & vupd[2], 1 << vr[2], 0))
        for i in range(NR):
            with m.If(upd_row[i]):
                m.d.sync += [run_max[i].eq(vnm[1]), run_e[i].eq(new_e), started[i].eq(1)]
        # Stage 5: p_j and a (registered for stage 6).
        p_a, p_p = Signal(EXP_FRAC + 1), Signal(EXP_FRAC + 1)
        m.d.sync += [p_a.eq(exp_a.p), p_p.eq(exp_p.p)]
        # Stage 6: the multiplier operands.
        alpha = Signal(EXP_FRAC + 1)
        m.d.comb += alpha.eq(Mux(vst[6], p_a, 0))
        rescaling = Signal()                        # registered: it also gates the normaliser's issue
        m.d.sync += rescaling.eq(vbusy[5] & ven[5] & vfirst[5])
        m.d.comb += [norm.mul_free.eq(~rescaling), norm.mul_free_next.eq(~(vbusy[5] & ven[5] & vfirst[5]))]
        m.d.sync += mul_b.eq(Mux(rescaling, alpha, norm.m16))
        # The first key's num word (read in stage 4, registered in stage 5: a register, not the block
        # RAM's output, beside the normaliser's word, which keeps Yosys from merging the two read ports
        # into one with a deep shared address path).
        n_early = Signal.like(n_rd.data, reset_less=True)
        m.d.sync += n_early.eq(n_rd.data)
        m.d.sync += [mul_a[i].eq(Mux(rescaling, n_early[i], norm.num_data[i])) for i in range(C)]
        # k_score a stage later (the pipeline never stalls, so they equal kscore[1]) as flip-flops of its
        # own, one per operand: the AND of the stage flags went across the die to the operands' enables
        # beside their multiplier blocks (12.4 ns placed on the ECP5 shell at cbb845a).
        score_a, score_b = registered_copies(m, k_score, 2, "k_score_sm")
        # den's row in stage 6 from a copy of vr[6] of its own: Yosys merges the K and V pipelines' delay
        # lines of r (both start from r), and from the shared register den's multiplexer was a 4.5 ns
        # route away (13.39 ns routed on the ECP5 shell at 9887928, the worst path).
        rescale_row, = registered_copies(m, vr[5], 1, "v_den_row")
        # Whether den's rescale loads the operands (rescaling & vden[6]), as flip-flops of their own, one
        # per operand: from `rescaling` (which also selects every lane's multiplier operand) the choice was
        # a 5.9 ns route away from smul's operands (11.03 ns routed at 9887928, 36 late endpoints).
        den_a, den_b = registered_copies(m, vbusy[5] & ven[5] & vfirst[5] & vden[5], 2, "v_den_sm")
        with m.If(den_a):
            m.d.sync += sm_a.eq(den[rescale_row])
        with m.Elif(score_a):
            # The dot product from its register, a stage after the accumulation: loaded straight from the
            # adder (its carry chain and the forwarding multiplexer before it), 12.17 ns placed on the ECP5
            # shell at ba6d29e.
            m.d.sync += sm_a.eq(dot_last)
        with m.If(den_b):
            m.d.sync += sm_b.eq(alpha)
        with m.Elif(score_b):
            m.d.sync += sm_b.eq(self.score_m)
        vp = delays(p_p, 5, "v_p")              # p_j from stage 6 to 11
        vpa = delays(pv_amount, 5, "v_pv_amount")
        vrs = delays(rescale, 4, "v_rescale")
        # Stage 9: pv.
        pv = Signal(EXP_FRAC + 1)
        m.d.sync += pv.eq(((Cat(Const(0, 1), vp[3]) >> vpa[5]) + 1) >> 1)
        # Stages 9 and 10: the rescaled num. round_shift(num * a, 15 + d) with d = E' - E as
        # ((num * a >> (14 + d)) + 1) >> 1 (exact: see arith.round_shift_span): the shifter, then the
        # incrementer. 0 <= d <= 31 for a started row (E' = max(E, block's E)), and an unstarted row has
        # a = 0, so any shift gives 0 (|num * a| < 2^50). Stage 10 also: pv * v8_j and den's rescale.
        pvv = [registered_product(m, f"pvv{i}", pv, vkv[10][8 * i:8 * i + 8].as_signed(), platform=platform)
               for i in range(C)]
        rs_shifted = [Signal(signed(PROD_BITS - EXP_FRAC + 1), name=f"rs_shifted{i}") for i in range(C)]
        rescaled = [Signal(signed(NUM_BITS + 1), name=f"rescaled{i}") for i in range(C)]
        v_acc = [Signal(signed(NUM_BITS), name=f"v_acc{i}", reset_less=True) for i in range(C)]
        # The rescale flag's last stage, one copy per lane: a single register selected the shift of all
        # 213 bits of the four lanes, 9 ns of route away at worst on the ECP5 shell at 183e789.
        vrs5 = registered_copies(m, vrs[4], C, "v_rescale5")
        for i in range(C):
            m.d.sync += [rs_shifted[i].eq((prod[i] >> (EXP_FRAC - 1)) >> vrs5[i]),
                         rescaled[i].eq((rs_shifted[i] + 1) >> 1),
                         v_acc[i].eq(n_rd.data[i])]
        den_scaled = Signal(DEN_BITS)
        den_scaled_1 = delays(den_scaled, 1, "den_scaled")[1]
        m.d.sync += den_scaled.eq(round_shift(sm_prod, EXP_FRAC, max_left=0, max_right=EXP_FRAC))
        # The num read: the first key early (stage 4), the others late (stage 9). A first-key chunk in
        # stage 4 never meets a later key's chunk in stage 9: those come after it (the previous V phase
        # ended at least 33 cycles before).
        m.d.comb += n_rd.addr.eq(Mux(vbusy[4] & vfirst[4], vaddr[4], vaddr[VD - 2]))
        # Stage 11 sums the word, stage 12 writes it from its register (`w1`): the sum's adders went
        # straight into the block RAMs' data inputs, which sit in a row across the die (188 late endpoints
        # on those inputs, 12.3 ns placed on the ECP5 shell at 1fe27f9). So the late read (stage 9) misses
        # the sums of the three chunks ahead (stage 11 in stages 9 and 10, written in stages 10 to 12:
        # the last in the read's own cycle); those words are forwarded from the sums' registers.
        wen, wen_w = Signal(), Signal()
        m.d.comb += wen.eq(vbusy[VD] & ven[VD])
        m.d.sync += wen_w.eq(wen)
        hit1, hit2a, hit2a_nx, hit2 = Signal(), Signal(), Signal(), Signal()
        hit3a_nx, hit3a, hit3 = Signal(), Signal(), Signal()
        m.d.comb += [hit2a_nx.eq(wen & (vaddr[VD] == vaddr[VD - 2])),
                     hit3a_nx.eq(wen_w & (vaddr[VD + 1] == vaddr[VD - 2]))]
        m.d.sync += [hit1.eq(wen & (vaddr[VD] == vaddr[VD - 1])), hit2a.eq(hit2a_nx), hit2.eq(hit2a),
                     hit3a.eq(hit3a_nx), hit3.eq(hit3a)]
        # The words the design uses: the early read of a first key (stage 4), and a later key's read (stage
        # 9) unless the word written in the same cycle is forwarded in its place; and the normaliser's.
        n_used = (vbusy[4] & ven[4] & vfirst[4]) | (vbusy[VD - 2] & ven[VD - 2] & ~vfirst[VD - 2] & ~hit3a_nx)
        assert_no_collision(m, platform, n_wr, n_rd, n_used, "attention num (weighted sums)")
        assert_no_collision(m, platform, n_wr, n_norm, norm.num_used, "attention num (normaliser)")
        w1 = [Signal(signed(NUM_BITS), name=f"w1_{i}") for i in range(C)]
        w2 = [Signal(signed(NUM_BITS), name=f"w2_{i}") for i in range(C)]
        w3 = [Signal(signed(NUM_BITS), name=f"w3_{i}") for i in range(C)]
        m.d.comb += [n_wr.addr.eq(vaddr[VD + 1]), n_wr.en.eq(wen_w)]
        for i in range(C):
            acc = Mux(hit1, w1[i], Mux(hit2, w2[i], Mux(hit3, w3[i], v_acc[i])))
            m.d.sync += [w1[i].eq(Mux(vfirst[VD], rescaled[i], acc) + pvv[i]), w2[i].eq(w1[i]), w3[i].eq(w2[i])]
            m.d.comb += n_wr.data[i].eq(w1[i])
        # den: read in stage 9, the word written in the cycle between forwarded.
        den_wen = Signal()
        m.d.comb += den_wen.eq(wen & vden[VD])
        den_new, den_last, den_rd, den_fwd = Signal(DEN_BITS), Signal(DEN_BITS), Signal(DEN_BITS), Signal()
        den_rd_row, = registered_copies(m, vr[VD - 2], 1, "v_den_rd_row")     # vr[VD - 1], for den alone
        m.d.sync += [den_rd.eq(den[den_rd_row]), den_fwd.eq(den_wen & (vr[VD] == vr[VD - 1])), den_last.eq(den_new)]
        # `first` for the den update from a flip-flop of its own (first & den, equal to `first` whenever den
        # is written or forwarded): vfirst[VD] also steers every num lane, and on ECP5 its one net reached
        # the den adder after 8.75 ns of route (the routed critical path at cb7d6aa).
        den_first = Signal()
        m.d.sync += den_first.eq(vfirst[VD - 1] & vden[VD - 1])
        m.d.comb += den_new.eq(Mux(den_first, den_scaled_1, Mux(den_fwd, den_last, den_rd)) + vp[5])
        den_row = Signal(NR)                        # den_wen's row, one-hot, registered a stage early
        m.d.sync += den_row.eq(Mux(vbusy[VD - 1] & ven[VD - 1] & vden[VD - 1], 1 << vr[VD - 1], 0))
        for i in range(NR):
            with m.If(den_row[i]):
                m.d.sync += den[i].eq(den_new)
        # Chunks in V stages 1 .. 12, as a register (stages 0 .. 11 one cycle earlier): the hand-off to the
        # normaliser then starts from registers, once the last num word is written.
        v_busy = Signal()
        m.d.sync += v_busy.eq(Cat(vbusy).any())
        hand_over = Signal()                   # the head's job goes to the normaliser (in HEAD_END only)
        m.d.comb += norm.start.valid.eq(hand_over)

        # -- normaliser hand-off --------------------------------------------------------------------------
        m.d.comb += [norm.start.payload.bank.eq(bank), norm.start.payload.count.eq(rows_m1 + 1)]
        for i in range(NR):
            m.d.comb += [norm.start.payload.den[i].eq(den[i]), norm.start.payload.e[i].eq(run_e[i])]

        m.d.sync += [last_r.eq(r_nx == rows_m1), last_k.eq(k_nx == R - 1), last_j.eq(j_nx == _BLK - 1)]

        def advance(on_rows_end):
            """Step query row, then chunk, then key row; ``on_rows_end`` runs after the segment's last."""
            m.d.comb += r_nx.eq(r + 1)
            with m.If(last_r):
                m.d.comb += [r_nx.eq(0), k_nx.eq(k + 1)]
                with m.If(last_k):
                    m.d.comb += [k_nx.eq(0), j_nx.eq(j + 1)]
                    with m.If(last_j):
                        m.d.comb += j_nx.eq(0)
                        on_rows_end()

        def segment_end():
            m.d.sync += [b.eq(b + 1), seg_pos.eq(seg_pos - _BLK)]
            with m.If(b == last_block):
                m.next = "HEAD_END"
            with m.Else():
                m.d.sync += exp_sel.eq(1)
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
                    m.next = "START"

            with m.State("START"):
                # rows_m1 is set: last_r is valid from the next cycle.
                m.next = "Q_LOAD"

            with m.State("Q_LOAD"):
                m.d.comb += [self.q.ready.eq(1), q_wr.addr.eq(q_addr(r, k)), q_wr.data.eq(self.q.payload.data)]
                with m.If(self.q.valid):
                    m.d.comb += q_wr.en.eq(1)
                    with m.If(k == 0):
                        m.d.sync += qe[r_k].eq(self.q.payload.e)     # r_k: where qe is read (r is far)
                    m.d.comb += k_nx.eq(k + 1)
                    with m.If(last_k):
                        m.d.comb += [k_nx.eq(0), r_nx.eq(r + 1)]
                        with m.If(last_r):
                            m.d.comb += [r_nx.eq(0), j_nx.eq(0)]
                            m.d.sync += [b.eq(0), seg_pos.eq(pos), cnt.eq(0)]
                            m.d.sync += [started[i].eq(0) for i in range(NR)]
                            m.d.sync += exp_sel.eq(1)
                            m.next = "EXP"

            with m.State("EXP"):
                m.d.comb += self.kv.ready.eq(1)
                with m.If(self.kv.valid):
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(cnt == self.exp_rows * R - 1):
                        m.d.sync += cnt.eq(0)
                        m.next = "K"

            with m.State("K"):
                m.d.comb += self.kv.ready.eq(last_r)
                with m.If(self.kv.valid):
                    m.d.comb += k_go.eq(1)

                    def rows_done():
                        m.next = "K_WAIT"
                    advance(rows_done)

            with m.State("K_WAIT"):
                # The V phase reads the scores and block maxima: wait for the last ones to land. (The
                # last block maximum is written in K stage 13, the cycle this state sees k_busy low; V
                # stage 0 reads it one cycle later at the earliest.)
                with m.If(~k_busy):
                    m.next = "V"

            with m.State("V"):
                m.d.comb += self.kv.ready.eq(last_r)
                with m.If(self.kv.valid):
                    m.d.comb += v_go.eq(1)

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
                # Hand over once the last chunk has left the V pipeline (its den update has landed). The
                # handshake's valid is a flip-flop, set a cycle after v_busy falls (nothing enters the V
                # pipeline in this state): as a gate of the state and v_busy it went across the die into
                # the normaliser's job-load copies (12.91 ns placed at 6c79f98).
                m.d.sync += hand_over.eq(~v_busy)
                with m.If(norm.start.valid & norm.start.ready):
                    m.d.sync += [bank.eq(~bank), h.eq(h + 1), hand_over.eq(0)]
                    with m.If(h == h_last):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "Q_LOAD"
        return m
