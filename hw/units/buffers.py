"""The on-chip activation buffers shared by the execution units (``docs/architecture.md``).

``X`` (residual stream, Q.16 int32), ``ATT`` (attention output, int32), ``H`` (FFN intermediate, int64)
and ``Q`` (queries: int8 values and a 5-bit exponent per beat), each ``max_tokens`` vectors of up to
``words`` beats of ``lanes`` elements. Word ``(token, index)`` of a buffer is at address
``token * stride + index`` with a power-of-two ``stride`` (no multiplier).

Instructions run one at a time, so the units take turns: every client port is served as it comes, and
the units never use the same port in the same cycle.

Ports
-----
``rd_req`` / ``rd_data``: reads of any buffer, answered in order five cycles later as ``lanes`` x 64-bit
words (``X``/``ATT`` sign-extended, ``Q`` values sign-extended with the exponent in ``rd_e``). The request
is registered before the block RAMs (the requesting units' multiplexer reached every block RAM's enable
across the die on ECP5); each word is registered at its block RAMs, again on its way to the buffer
multiplexer, and after the multiplexer before it enters the answer queue (a block RAM's clock-to-out, then
a route across the die into the multiplexer was a 19.4 ns placed path). An answer holds every write made
before its request's cycle; a word must not be requested in the cycle it is written (its block RAM's read
and write then meet, which synthesis leaves undefined: :mod:`hw.collision`, checked in simulation). Up to
six answers wait while ``rd_data`` is stalled (requests are refused while all places are taken).
``wr``: writes of any buffer (:func:`wr_layout`, from the LINEAR unit), registered per bank before the
block RAMs.
``x_in``: the EMBED unit's residual beats (:func:`~hw.units.embed.embed_out_layout`).

A buffer deeper than ``bank_words`` is kept as banks of that many words, each a memory of its own whose
output goes straight into a register: with one memory, Yosys cascaded the block RAMs in depth behind a
multiplexer, so a register took four block RAMs' outputs, wherever the placer had put them (on ECP5 an H
word register sat a die's width from its block RAMs: 16.55 ns placed at cbb845a). The bank is chosen
after those registers, in the buffer multiplexer, from a select carried down the pipeline.
"""

from amaranth.hdl import Array, Cat, Module, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from ..collision import assert_no_collision, collision_free_memory
from ..dataflow.landing_fifo import LandingFifo
from ..params import check_int
from ..replica import REPLICA_ATTR, registered_copies
from ..tlmm.layouts import token_bits
from ..vector.quant_pow2 import E_FIELD_BITS
from .embed import embed_out_layout

__all__ = ["ANSWER_PLACES", "BANK_WORDS", "ActivationBuffers", "Buffer", "rd_req_layout", "wr_layout"]


class Buffer(enum.Enum, shape=2):
    """The on-chip buffers."""

    X = 0       # residual stream
    ATT = 1     # attention output
    H = 2       # FFN intermediate
    Q = 3       # queries (int8 + exponent)


def rd_req_layout(max_tokens, max_index):
    return data.StructLayout({"buf": Buffer, "token": unsigned(token_bits(max_tokens)),
                              "index": unsigned(max(1, max_index.bit_length()))})


def wr_layout(lanes, max_tokens, max_index):
    return data.StructLayout({"buf": Buffer, "token": unsigned(token_bits(max_tokens)),
                              "index": unsigned(max(1, max_index.bit_length())), "data": unsigned(64 * lanes),
                              "e": unsigned(E_FIELD_BITS)})


#: Cycles from a taken read request to its answer entering the queue (and ``rd_data``, which falls
#: through): the request register, the block RAM, the register at the block RAM, a second one on the way
#: to the multiplexer, the register after the buffer multiplexer.
_READ_LATENCY = 5
#: Answers owed at once (requests taken, answers not yet read): the answer queue's places. Beyond them the
#: buffers refuse requests; a unit that keeps this many in flight reads a beat per cycle.
ANSWER_PLACES = _READ_LATENCY + 1

_ELEMENT_BITS = {Buffer.X: 32, Buffer.ATT: 32, Buffer.H: 64, Buffer.Q: 8}
#: Default words per bank (see :class:`ActivationBuffers`).
BANK_WORDS = 2048


class ActivationBuffers(wiring.Component):
    """See the module docstring.

    Parameters
    ----------
    lanes : int
    max_tokens : int
    words : dict
        Beats per token of each :class:`~hw.units.linear.Buffer` (``X``: hidden / lanes, ``ATT``: q_dim /
        lanes, ``H``: intermediate / lanes, ``Q``: q_dim / lanes).
    max_index : int
        Largest index the request and write layouts carry (the LINEAR unit's ``max_index``).
    bank_words : int
        Words per bank, a power of two: 2048, the deepest block RAM aspect with a 9-bit word on ECP5 and
        Nexus (2048 x 9), so a bank is one block RAM deep.

    """

    def __init__(self, *, lanes, max_tokens, words, max_index, bank_words=BANK_WORDS):
        owner = "ActivationBuffers"
        self.lanes = check_int("lanes", lanes, 1, 64, owner)
        self.max_tokens = check_int("max_tokens", max_tokens, 1, 256, owner)
        missing = set(Buffer) - set(words)
        if missing:
            raise ValueError(f"{owner}: words needs every buffer, missing {sorted(b.name for b in missing)}")
        self.words = {b: check_int(f"words[{b.name}]", words[b], 1, 1 << 16, owner) for b in Buffer}
        self.stride = {b: 1 << max(0, (self.words[b] - 1).bit_length()) for b in Buffer}
        self.max_index = max_index
        self.bank_words = check_int("bank_words", bank_words, 1, 1 << 20, owner)
        if bank_words & (bank_words - 1):
            raise ValueError(f"{owner}: bank_words must be a power of two, not {bank_words}")
        #: Banks of each buffer and the words in each.
        self.banks = {b: -(-(self.max_tokens * self.stride[b]) // bank_words) for b in Buffer}
        self.bank_depth = {b: min(self.max_tokens * self.stride[b], bank_words) for b in Buffer}
        super().__init__({
            "rd_req": In(stream.Signature(rd_req_layout(max_tokens, max_index))),
            "rd_data": Out(stream.Signature(unsigned(64 * lanes))),
            "rd_e": Out(E_FIELD_BITS),
            "wr": In(stream.Signature(wr_layout(lanes, max_tokens, max_index))),
            "x_in": In(stream.Signature(embed_out_layout(lanes, max_tokens, self.words[Buffer.X]))),
        })

    def elaborate(self, platform):
        m = Module()
        N = self.lanes
        mems, rports, wports = {}, {}, {}
        for b in Buffer:
            width = N * _ELEMENT_BITS[b] + (E_FIELD_BITS if b is Buffer.Q else 0)
            mems[b], rports[b], wports[b] = [], [], []
            for k in range(self.banks[b]):
                # Undefined collisions (no bypass logic in synthesis): a read never uses a word in the cycle
                # it is written (checked in simulation below).
                mem = collision_free_memory(shape=unsigned(width), depth=self.bank_depth[b])
                m.submodules[f"mem_{b.name.lower()}{k}"] = mem
                mems[b].append(mem)
                rports[b].append(mem.read_port(domain="sync"))
        low_bits = {b: max(0, (self.bank_depth[b] - 1).bit_length()) for b in Buffer}

        def addr(b, token, index):
            return token * self.stride[b] + index      # a power-of-two stride: a shift

        # -- writes: the LINEAR unit's `wr` (any buffer) and EMBED's `x_in` (X) -------------------------
        w = self.wr.payload
        m.d.comb += [self.wr.ready.eq(1), self.x_in.ready.eq(1)]
        for b in Buffer:
            bits = _ELEMENT_BITS[b]
            lanes = [w.data[64 * n:64 * n + bits] for n in range(N)]
            w_addr = Signal(range(self.max_tokens * self.stride[b]), name=f"w_addr_{b.name.lower()}")
            w_data = Signal(mems[b][0].shape.width, name=f"w_data_{b.name.lower()}")
            w_en = Signal(name=f"w_en_{b.name.lower()}")
            m.d.comb += [w_addr.eq(addr(b, w.token, w.index)),
                         w_data.eq(Cat(*lanes, *([w.e] if b is Buffer.Q else []))),
                         w_en.eq(self.wr.valid & (w.buf == b))]
            if b is Buffer.X:
                x = self.x_in.payload
                with m.If(self.x_in.valid):
                    m.d.comb += [w_addr.eq(addr(b, x.token, x.beat)), w_data.eq(x.data.as_value()), w_en.eq(1)]
            # Each bank's write passes a register on its way in: the writers' multiplexer and address
            # arithmetic reached the block RAM pins straight (17.6 ns placed on the ECP5 shell at 5463a01,
            # once Yosys stopped delaying writes for its collision bypass). A write lands a cycle after it
            # is taken, so a read requested in the cycle a word is written must not be used (checked below).
            # Each bank's address register is a replica: all banks load the same address, and Yosys merged
            # the registers into one that reached every bank's pins (9.94 ns of route into an activation
            # buffer's address pins, 10.19 ns routed on the ECP5 shell at 03db802). The data registers stay
            # shared: as replicas (44eb47e) each bank's copy took the writers' multiplexer with it, 12.15 ns
            # placed into X's bank 1 (seed 1).
            for k, mem in enumerate(mems[b]):
                wp = mem.write_port()
                wports[b].append(wp)
                tag = f"{b.name.lower()}{k}"
                bank_addr = Signal(low_bits[b], name=f"w_addr_{tag}", reset_less=True, attrs={REPLICA_ATTR: 1})
                bank_data = Signal.like(w_data, name=f"w_data_{tag}", reset_less=True)
                bank_en = Signal(name=f"w_en_{tag}")
                m.d.sync += [bank_addr.eq(w_addr[:low_bits[b]]), bank_data.eq(w_data),
                             bank_en.eq(w_en & (w_addr[low_bits[b]:] == k))]
                m.d.comb += [wp.addr.eq(bank_addr), wp.data.eq(bank_data), wp.en.eq(bank_en)]

        # -- reads: a request register, the block RAM's cycle, a register per bank (the block RAM's own output
        # register on ECP5), the bank multiplexer into a register per buffer, the buffer multiplexer into a
        # register, then an answer queue with a place per cycle of latency and one more (first-word
        # fall-through: room for exactly the answers owed). The request is registered per buffer (address)
        # before the block RAMs, which read on every cycle (no read enable): the requesting units'
        # multiplexer reached the enables of block RAMs all over the die on ECP5.
        # `owed` keeps the queue from overfilling, so no full flag gates its writes.
        m.submodules.answers = answers = LandingFifo(width=64 * N + E_FIELD_BITS, depth=ANSWER_PLACES)
        issued = Signal()                   # a request taken last cycle: its address at the block RAMs now
        in_flight = Signal()                # its word out of the block RAM now
        word_v = Signal()                   # that word in its buffer's register now
        answer_v = Signal()                 # that word, muxed and registered: entering the queue now
        r = self.rd_req.payload
        take = self.rd_req.valid & self.rd_req.ready
        # Answers owed: reads issued and not yet taken from `rd_data`; never more than the queue holds.
        owed = Signal(range(ANSWER_PLACES + 1))
        popped = self.rd_data.valid & self.rd_data.ready
        m.d.sync += owed.eq(owed + take - popped)
        m.d.comb += self.rd_req.ready.eq(owed < ANSWER_PLACES)
        issued_buf, flight_buf, rd_buf = Signal(Buffer), Signal(Buffer), Signal(Buffer)
        words = {}
        bank_flight = {}                    # the bank of the word at the block RAMs, per buffer
        for b in Buffer:
            name = b.name.lower()
            # One copy of the read address per bank, which the placer can put by that bank's block RAMs:
            # a single register reached every bank of the H buffer across the die (a 14.4 ns route into
            # an H bank's address pin, the worst routed path of 6c79f98 with seed 5).
            addr_bits = len(Signal(range(self.max_tokens * self.stride[b])))
            addr_copies = registered_copies(m, addr(b, r.token, r.index)[:addr_bits], len(rports[b]),
                                            f"rd_addr_{name}")
            rd_addr = addr_copies[0]
            words[b] = []
            for k, rp in enumerate(rports[b]):
                m.d.comb += [rp.addr.eq(addr_copies[k][:low_bits[b]]), rp.en.eq(1)]
                assert_no_collision(m, platform, wports[b][k], rp,
                                    issued & (issued_buf == b) & (addr_copies[k][low_bits[b]:] == k),
                                    f"buffer {name}{k}")
                # Loaded on every cycle, so it is placed by its block RAMs with no enable to reach it.
                word = Signal.like(rp.data, name=f"word_{name}{k}", reset_less=True)
                m.d.sync += word.eq(rp.data)
                words[b].append(word)
            # The bank follows its address down the pipeline: at the block RAMs, then (as copies) beside
            # the registers.
            bank_flight[b] = Signal(range(self.banks[b]), name=f"bank_flight_{name}", reset_less=True)
            m.d.sync += bank_flight[b].eq(rd_addr[low_bits[b]:])
        m.d.sync += [issued.eq(take), issued_buf.eq(r.buf), in_flight.eq(issued), flight_buf.eq(issued_buf),
                     word_v.eq(in_flight), rd_buf.eq(flight_buf)]
        # Two multiplexer stages, each into a register: within a buffer, the bank (`picked`, beside that
        # buffer's block RAMs), then across buffers (`answer`). One multiplexer over every bank of every
        # buffer, after a register per bank, was a LUT tree spread between block RAMs all over the die
        # (12.93 ns placed on the ECP5 shell at 2ee4ca5). The selects are one copy per lane (and one for
        # the exponent): one register selecting all the lanes' multiplexers reached them over a 4.7 ns
        # route.
        near_v = Signal()
        m.d.sync += near_v.eq(word_v)
        bank_sel = {b: registered_copies(m, bank_flight[b], N + 1, f"bank_sel_{b.name.lower()}")
                    for b in Buffer if self.banks[b] > 1}
        buf_sel = registered_copies(m, rd_buf, N + 1, "buf_sel")
        picked = {}
        for b in Buffer:
            bits = _ELEMENT_BITS[b]
            picked[b] = Signal.like(words[b][0], name=f"picked_{b.name.lower()}", reset_less=True)
            if self.banks[b] == 1:
                m.d.sync += picked[b].eq(words[b][0])
                continue
            # Lane n's slice (and the exponent's, copy N) chosen by its own copy of the bank.
            spans = [(bits * n, bits * (n + 1)) for n in range(N)] + [(bits * N, len(picked[b]))]
            for copy, (lo, hi) in enumerate(spans):
                if lo < hi:
                    m.d.sync += picked[b][lo:hi].eq(Array(w[lo:hi] for w in words[b])[bank_sel[b][copy]])

        # Every element sign-extended to 64 bits.
        lanes = [Signal(signed(64), name=f"lane{n}") for n in range(N)]
        e = Signal(E_FIELD_BITS)
        for n in range(N):
            with m.Switch(buf_sel[n]):
                for b in Buffer:
                    with m.Case(b):
                        bits = _ELEMENT_BITS[b]
                        m.d.comb += lanes[n].eq(picked[b][bits * n:bits * (n + 1)].as_signed())
        with m.If(buf_sel[N] == Buffer.Q):
            m.d.comb += e.eq(picked[Buffer.Q][N * _ELEMENT_BITS[Buffer.Q]:])
        answer = Signal(64 * N + E_FIELD_BITS, reset_less=True)
        m.d.sync += [answer.eq(Cat(*lanes, e)), answer_v.eq(near_v)]
        m.d.comb += [answers.w_data.eq(answer), answers.w_en.eq(answer_v),
                     self.rd_data.valid.eq(answers.r_rdy), self.rd_data.payload.eq(answers.r_data[:64 * N]),
                     self.rd_e.eq(answers.r_data[64 * N:]), answers.r_en.eq(self.rd_data.ready)]
        return m
