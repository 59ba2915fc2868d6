"""The command processor: fetches a program from DRAM, decodes it with the ISA's own layouts and
dispatches each instruction to its execution unit, with the CSRs of ``hw/csr_map.py``.

Sequence of a run
-----------------
The driver writes the run arguments and ``program`` and sets ``control.start``. ``start`` clears
``done``, the error code and the per-run counters; then, for each instruction:

1. **Fetch** the 32 bytes at ``pc`` through an :class:`~hw.memory.axi.AxiBurstReader` (``32 / bus``
   beats, or one beat and a slice when the bus is wider than an instruction).
2. **Decode** through :func:`hw.isa.instruction_layout`, the layout the assembler encodes with, and check:
   unknown opcode or non-zero unused bits (``ILLEGAL_INSTRUCTION``); ``pc`` or an address field at or
   beyond ``dram_size`` (``BAD_ADDRESS``; ``dram_size = 0`` disables the check); at ``SETUP``,
   ``pos + n_tokens > max_context`` (``CONTEXT_OVERFLOW``), ``head_dim`` not a multiple of the TLMM
   lanes, no token, or more tokens than the units hold (``CONFIG_MISMATCH``).
3. **Execute**: ``SETUP`` loads the model registers (output :attr:`setup`), ``END`` finishes, and every
   other opcode goes to its unit's command stream. The processor then waits until no unit is busy
   before it fetches the next instruction (instructions run one after another; units overlap work
   inside an instruction, for example weight prefetch with the matmul).

A unit raises ``busy`` from the cycle after it accepts a command until it has finished, and may report a
fault (an :class:`~hw.isa.ErrorCode`, such as ``BAD_TOKEN``, or ``BAD_ADDRESS`` for a misaligned
``LOAD_X`` / ``SAVE_X`` stash or a DRAM error response) on its ``fault_<unit>`` input, which the
processor looks at only while that unit runs its instruction (a unit's fault may stay set until its next
command, so a stale one never stops a later run); the first error stops the run,
and ``status`` shows its code and ``error_pc`` the instruction's address. ``done`` is raised in every
case, so a bad program never hangs the driver.
"""

from amaranth.hdl import Cat, Const, Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from ..csr_map import CSR_BY_NAME, CSRS, STATUS_BUSY, STATUS_DONE, STATUS_ERROR_SHIFT, UNITS
from ..isa import (ADDR_BITS, BODIES, INSTRUCTION_BITS, INSTRUCTION_BYTES, RUN_ARGS, ErrorCode, Opcode,
                   instruction_layout)
from ..memory.axi import AxiBurstReader
from ..params import check_int
from ..replica import registered_copies
from .csr_bus import READ_LATENCY, CsrBusSignature

__all__ = ["CommandProcessor", "run_args_layout", "UNIT_OPCODES", "ADDRESS_FIELDS"]

#: The opcode each unit executes.
UNIT_OPCODES = {name: Opcode[name.upper()] for name in UNITS}
#: Fields holding DRAM byte addresses, checked against ``dram_size``.
ADDRESS_FIELDS = {
    Opcode.SETUP: ("kv_base", "rope"),
    Opcode.EMBED: ("table",),
    Opcode.LINEAR: ("weights", "params"),
    Opcode.LOGITS: ("params", "weights", "row_scales"),
    Opcode.LOAD_X: ("addr",),
    Opcode.SAVE_X: ("addr",),
}
_OPCODE_BITS = 8
#: CSR reads choose among this many registers by the index's low bits in their first cycle.
READ_GROUP = 8
_COUNTER_BITS = 32


def run_args_layout():
    return data.StructLayout({name: unsigned(bits) for name, bits in RUN_ARGS.items()})


class CommandProcessor(wiring.Component):
    """See the module docstring.

    Parameters
    ----------
    config_id : int
        The ``id`` register: the hardware-config hash (:attr:`hw.config.HwConfig.config_hash`).
    data_bits : int
        DRAM bus width (a power of two, 8..1024) of the fetch port.
    lanes : int
        TLMM lanes: ``head_dim`` must be a multiple (a power of two).
    max_tokens : int
        Most tokens per run the units hold.

    Attributes
    ----------
    csr : In(CsrBusSignature)
    axi : Out(AxiReadSignature(32, data_bits))
        Instruction fetch.
    setup : Out(BODIES[Opcode.SETUP])
        The model registers of the last ``SETUP``.
    args : Out(run_args_layout())
        The run arguments.
    embed, linear, attend, logits, load_x, save_x : Out(stream.Signature(BODIES[op]))
        Unit commands, one per name in :data:`~hw.csr_map.UNITS` (``op = Opcode[name.upper()]``).
    busy : In(len(UNITS))
        Bit ``i``: unit ``UNITS[i]`` is busy.
    fault_embed, fault_linear, fault_attend, fault_logits, fault_load_x, fault_save_x : In(ErrorCode)
        Each unit's error (``NONE`` when all is well).
    running : Out(1)
    done : Out(1)
        ``status.done``: the last run has finished (cleared by ``start``); the top level's interrupt.
    """

    def __init__(self, config_id, data_bits, *, lanes, max_tokens):
        self.config_id = check_int("config_id", config_id, 0, (1 << 32) - 1, "CommandProcessor")
        self.data_bits = check_int("data_bits", data_bits, 8, 1024, "CommandProcessor")
        if data_bits & (data_bits - 1):
            raise ValueError(f"CommandProcessor: data_bits must be a power of two, got {data_bits}")
        self.lanes = check_int("lanes", lanes, 1, 64, "CommandProcessor")
        if lanes & (lanes - 1):
            raise ValueError(f"CommandProcessor: lanes must be a power of two, got {lanes}")
        self.max_tokens = check_int("max_tokens", max_tokens, 1, (1 << RUN_ARGS["n_tokens"]) - 1,
                                    "CommandProcessor")
        self.fetch_beats = max(1, INSTRUCTION_BITS // data_bits)
        self._reader = AxiBurstReader(ADDR_BITS, data_bits, buffer_words=max(3, self.fetch_beats),
                                      max_burst=self.fetch_beats, max_outstanding=2, beats_bits=8)
        members = {
            "csr": In(CsrBusSignature(max(1, (len(CSRS) - 1).bit_length()))),
            "axi": Out(self._reader.axi_signature),
            "setup": Out(BODIES[Opcode.SETUP]),
            "args": Out(run_args_layout()),
            "busy": In(len(UNITS)),
            **{f"fault_{u}": In(ErrorCode) for u in UNITS},
            "running": Out(1),
            "done": Out(1),
        }
        for name, op in UNIT_OPCODES.items():
            members[name] = Out(stream.Signature(BODIES[op]))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader = rd = self._reader
        wiring.connect(m, wiring.flipped(self.axi), rd.axi)
        bus_bytes = self.data_bits // 8

        # -- registers -----------------------------------------------------------------------------------
        program = Signal(ADDR_BITS)
        dram_size = Signal(ADDR_BITS)
        args = self.args
        done, error = Signal(), Signal(ErrorCode)
        error_pc = Signal(ADDR_BITS)
        cycles = Signal(64)
        cycles_hi_latch = Signal(32)
        run_cycles = Signal(_COUNTER_BITS)
        n_instr = Signal(_COUNTER_BITS)
        busy_cnt = [Signal(_COUNTER_BITS, name=f"busy_{u}") for u in UNITS]
        stall_cnt = [Signal(_COUNTER_BITS, name=f"stall_{u}") for u in UNITS]
        start_req = Signal()                   # the CSR write of control.start
        start = Signal()                       # the same, a cycle later: it resets every run counter
        m.d.sync += [cycles.eq(cycles + 1), start.eq(start_req)]
        m.d.comb += self.done.eq(done)

        # -- CSR bus -------------------------------------------------------------------------------------
        csr = self.csr
        idx = {name: c.index for name, c in CSR_BY_NAME.items()}
        writable = {"program": program, "dram_size": dram_size,
                    **{name: getattr(args, name) for name in RUN_ARGS}}
        with m.If(csr.w_stb):
            with m.Switch(csr.addr):
                for name, reg in writable.items():
                    with m.Case(idx[name]):
                        m.d.sync += reg.eq(csr.w_data)
                with m.Case(idx["control"]):
                    m.d.comb += start_req.eq(csr.w_data[0] & ~self.running & ~start)
        status = Cat(done, self.running, Const(0, STATUS_ERROR_SHIFT - 2), error)
        assert (STATUS_DONE, STATUS_BUSY) == (1, 2)
        readable = {"id": Const(self.config_id, 32), "status": status, "cycles_lo": cycles[:32],
                    "cycles_hi": cycles_hi_latch, "run_cycles": run_cycles, "error_pc": error_pc,
                    "instructions": n_instr, **writable,
                    **{f"busy_{u}": busy_cnt[i] for i, u in enumerate(UNITS)},
                    **{f"stall_{u}": stall_cnt[i] for i, u in enumerate(UNITS)}}
        # Reads in two registered steps (READ_LATENCY): in the r_stb cycle each group of READ_GROUP
        # registers picks its member by the index's low bits (the values read are those of this cycle),
        # then r_data takes the group chosen by the high bits.
        assert READ_LATENCY == 2
        groups = {}
        for name, value in readable.items():
            groups.setdefault(idx[name] // READ_GROUP, []).append((idx[name] % READ_GROUP, name, value))
        picked = {g: Signal(32, name=f"csr_group{g}") for g in groups}
        group_of = Signal(range(max(groups) + 1))
        read_pick = Signal()
        m.d.sync += read_pick.eq(csr.r_stb)
        low = exact_log2(READ_GROUP)
        with m.If(csr.r_stb):
            m.d.sync += group_of.eq(csr.addr[low:])
            for g, members in groups.items():
                m.d.sync += picked[g].eq(0)
                with m.Switch(csr.addr[:low]):
                    for sub, _, value in members:
                        with m.Case(sub):
                            m.d.sync += picked[g].eq(value)
            with m.If(csr.addr == idx["cycles_lo"]):
                m.d.sync += cycles_hi_latch.eq(cycles[32:])
        with m.If(read_pick):
            m.d.sync += csr.r_data.eq(0)
            with m.Switch(group_of):
                for g in groups:
                    with m.Case(g):
                        m.d.sync += csr.r_data.eq(picked[g])

        # -- per-run counters ------------------------------------------------------------------------------
        # The units' busy and stall flags are registered before they are counted, so each counter's carry
        # chain starts from a flip-flop beside it: a unit's state decode (its command `ready`, its busy)
        # came from across the die into the adder (ATTEND's state to stall_attend, 10.83 ns placed on the
        # ECP5 shell at 956eb7e). Every running cycle is still counted once, a cycle later.
        units = [getattr(self, u) for u in UNITS]
        counting = Signal()                    # the flags below are of a running cycle
        busy_seen = [Signal(name=f"busy_seen_{u}") for u in UNITS]
        stall_seen = [Signal(name=f"stall_seen_{u}") for u in UNITS]
        m.d.sync += [counting.eq(self.running & ~start), *(b.eq(f) for b, f in zip(busy_seen, self.busy)),
                     *(st.eq(u.valid & ~u.ready) for st, u in zip(stall_seen, units))]
        with m.If(start):
            m.d.sync += [run_cycles.eq(0), n_instr.eq(0), *(c.eq(0) for c in busy_cnt + stall_cnt)]
        with m.Else():
            with m.If(self.running):
                m.d.sync += run_cycles.eq(run_cycles + 1)
            with m.If(counting):
                for i in range(len(units)):
                    m.d.sync += [busy_cnt[i].eq(busy_cnt[i] + busy_seen[i]),
                                 stall_cnt[i].eq(stall_cnt[i] + stall_seen[i])]

        # -- fetch -----------------------------------------------------------------------------------------
        pc = Signal(ADDR_BITS)
        word = Signal(INSTRUCTION_BITS)
        wide = self.data_bits > INSTRUCTION_BITS
        m.d.comb += [rd.cmd.payload.addr.eq(pc & ~(bus_bytes - 1) if wide else pc),
                     rd.cmd.payload.beats.eq(self.fetch_beats)]
        if wide:
            # One bus word holds the instruction; pick it out by the low address bits.
            slot = Signal(range(bus_bytes // INSTRUCTION_BYTES))
            m.d.comb += slot.eq(pc[exact_log2(INSTRUCTION_BYTES):exact_log2(bus_bytes)])
            new_word = rd.data.payload.data.word_select(slot, INSTRUCTION_BITS)
        else:
            # Beats arrive lowest address first: shift them in from the top.
            new_word = Cat(word[self.data_bits:], rd.data.payload.data)

        # -- decode ----------------------------------------------------------------------------------------
        ins = data.View(instruction_layout(), word[:instruction_layout().size])
        opcode = word[:_OPCODE_BITS]
        body = word[_OPCODE_BITS:]
        # Whether the body's bits beyond the opcode's fields are set: one registered flag per body size,
        # formed in every cycle from the word (which settles in RECEIVE; the flags are ready in
        # CHECK_ADDRESS), then chosen by the opcode. The choice among wide ORs of the word, in one cycle,
        # was 10.74 ns routed on the ECP5 shell at e8c64fe.
        unused_above = {}
        for size in sorted({layout.size for layout in BODIES.values()}):
            flag = Signal(name=f"unused_above_{size}")
            m.d.sync += flag.eq(body[size:] != 0 if size < len(body) else 0)
            unused_above[size] = flag
        known = Signal()
        unused_set = Signal()
        with m.Switch(opcode):
            for op, layout in BODIES.items():
                with m.Case(op.value):
                    m.d.comb += [known.eq(1), unused_set.eq(unused_above[layout.size])]
        # Address checks in two registered steps: in CHECK every address field of every opcode is compared
        # with a copy of dram_size kept beside the comparators (`over`, one flag per opcode and field),
        # in CHECK_ADDRESS the opcode's flags are ORed. In one cycle, the route from dram_size, a 32-bit
        # carry chain and the opcode's choice were 11.96 ns routed on ECP5.
        size_chk, = registered_copies(m, dram_size, 1, "size_chk")
        size_set = Signal()
        m.d.sync += size_set.eq(dram_size != 0)
        checked = [(op, f) for op, fields in ADDRESS_FIELDS.items() for f in fields]
        over = Signal(len(checked))
        over_next = Cat(getattr(ins.body, op.name.lower())[f] >= size_chk for op, f in checked)
        bad_field = Signal()
        with m.Switch(opcode):
            for op in ADDRESS_FIELDS:
                with m.Case(op.value):
                    m.d.comb += bad_field.eq(
                        size_set & Cat(over[k] for k, (o, _) in enumerate(checked) if o is op).any())
        setup_body = ins.body.setup
        context_overflow = Signal()
        shape_bad = Signal()
        m.d.comb += [
            context_overflow.eq(args.pos + args.n_tokens > setup_body.max_context),
            shape_bad.eq((setup_body.head_dim == 0) | (setup_body.head_dim & (self.lanes - 1) != 0)
                         | (args.n_tokens == 0) | (args.n_tokens > self.max_tokens)
                         | (setup_body.kv_heads == 0) | (setup_body.heads < setup_body.kv_heads)),
        ]
        # pc is bad if its instruction does not end within dram_size: pc + 8 > dram_size, i.e. dram_size < 8
        # or pc > dram_size - 8, against registers derived from dram_size (one compare from pc; the sum
        # pc + 8 and two compares ended on the FSM's state enable: 10.41 ns routed at 9887928).
        pc_limit = Signal(ADDR_BITS)
        size_small = Signal()
        m.d.sync += [pc_limit.eq(dram_size - INSTRUCTION_BYTES), size_small.eq(dram_size < INSTRUCTION_BYTES)]
        pc_bad = Signal()
        m.d.comb += pc_bad.eq(size_set & (size_small | (pc > pc_limit)))

        fail_code = Signal(ErrorCode)
        target = Signal(range(len(UNITS) + 1))
        # The units' command bodies come from two free-running copies of the word (no clock enable):
        # the word's own enable (a beat arriving in RECEIVE) reached every unit's command register
        # across the die on ECP5. The copies settle in CHECK and DECODE, before DISPATCH hands them out.
        sent = word
        for i in range(2):
            copy = Signal.like(word, name=f"word_copy{i}", reset_less=True)
            m.d.sync += copy.eq(sent)
            sent = copy
        for name, op in UNIT_OPCODES.items():
            m.d.comb += getattr(self, name).payload.as_value().eq(sent[_OPCODE_BITS:][:BODIES[op].size])

        settle = Signal()
        # Each unit's command `valid` is a flip-flop of its own, set in DECODE and cleared by the unit's
        # `ready` (a decoded state and target reached every unit's command logic across the die on ECP5).
        dispatch = Signal(len(UNITS))
        for i, u in enumerate(units):
            m.d.comb += u.valid.eq(dispatch[i])
        illegal_r, bad_field_r, overflow_r, shape_bad_r = (Signal(name=n) for n in
                                                          ("illegal_r", "bad_field_r", "overflow_r", "shape_bad_r"))
        with m.FSM(name="cp"):
            with m.State("IDLE"):
                # done and error clear at the CSR write itself (the next status read sees them cleared);
                # the run starts from its registered copy.
                with m.If(start_req):
                    m.d.sync += [done.eq(0), error.eq(ErrorCode.NONE)]
                with m.If(start):
                    m.d.sync += pc.eq(program)
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += self.running.eq(1)
                with m.If(pc_bad | (pc[:exact_log2(INSTRUCTION_BYTES)] != 0)):
                    m.d.sync += fail_code.eq(ErrorCode.BAD_ADDRESS)
                    m.next = "FAIL"
                with m.Else():
                    m.d.comb += rd.cmd.valid.eq(1)
                    with m.If(rd.cmd.ready):
                        m.next = "RECEIVE"
            with m.State("RECEIVE"):
                m.d.comb += [self.running.eq(1), rd.data.ready.eq(1)]
                with m.If(rd.data.valid):
                    m.d.sync += word.eq(new_word)
                    with m.If(rd.data.payload.last):
                        m.next = "CHECK"
            with m.State("CHECK"):
                # The instruction's checks (wide ORs, address and context comparisons) are registered here
                # and acted on in DECODE: one cycle per instruction, and none of them on a path with the
                # decisions below.
                m.d.comb += self.running.eq(1)
                m.d.sync += [over.eq(over_next), overflow_r.eq(context_overflow), shape_bad_r.eq(shape_bad)]
                m.next = "CHECK_ADDRESS"
            with m.State("CHECK_ADDRESS"):
                m.d.comb += self.running.eq(1)
                m.d.sync += [bad_field_r.eq(bad_field), illegal_r.eq(~known | unused_set)]
                m.next = "DECODE"
            with m.State("DECODE"):
                m.d.comb += self.running.eq(1)
                m.d.sync += n_instr.eq(n_instr + 1)
                with m.If(rd.error):
                    m.d.sync += fail_code.eq(ErrorCode.BAD_ADDRESS)
                    m.next = "FAIL"
                with m.Elif(illegal_r):
                    m.d.sync += fail_code.eq(ErrorCode.ILLEGAL_INSTRUCTION)
                    m.next = "FAIL"
                with m.Elif(bad_field_r):
                    m.d.sync += fail_code.eq(ErrorCode.BAD_ADDRESS)
                    m.next = "FAIL"
                with m.Elif(opcode == Opcode.END.value):
                    m.next = "DONE"
                with m.Elif(opcode == Opcode.SETUP.value):
                    with m.If(overflow_r):
                        m.d.sync += fail_code.eq(ErrorCode.CONTEXT_OVERFLOW)
                        m.next = "FAIL"
                    with m.Elif(shape_bad_r):
                        m.d.sync += fail_code.eq(ErrorCode.CONFIG_MISMATCH)
                        m.next = "FAIL"
                    with m.Else():
                        m.d.sync += [self.setup.as_value().eq(setup_body.as_value()),
                                     pc.eq(pc + INSTRUCTION_BYTES)]
                        m.next = "FETCH"
                with m.Else():
                    for i, op in enumerate(UNIT_OPCODES.values()):
                        with m.If(opcode == op.value):
                            m.d.sync += [target.eq(i), dispatch[i].eq(1)]
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                m.d.comb += self.running.eq(1)
                for i, u in enumerate(units):
                    with m.If(dispatch[i] & u.ready):
                        m.d.sync += [settle.eq(1), dispatch.eq(0)]
                        m.next = "WAIT"
            with m.State("WAIT"):
                # One cycle for the unit's busy to rise, then wait for every unit to finish.
                m.d.comb += self.running.eq(1)
                m.d.sync += settle.eq(0)
                fault = Signal(ErrorCode)
                for i, u in enumerate(UNITS):
                    with m.If(target == i):
                        m.d.comb += fault.eq(getattr(self, f"fault_{u}"))
                with m.If(fault != ErrorCode.NONE):
                    m.d.sync += fail_code.eq(fault)
                    m.next = "FAIL"
                with m.Elif(~settle & (self.busy == 0)):
                    m.d.sync += pc.eq(pc + INSTRUCTION_BYTES)
                    m.next = "FETCH"
            with m.State("FAIL"):
                m.d.comb += self.running.eq(1)
                m.d.sync += [error.eq(fail_code), error_pc.eq(pc)]
                m.next = "DRAIN"
            with m.State("DRAIN"):
                # Let a fetch in flight finish (and a faulting unit go idle) so the next run starts clean.
                m.d.comb += [self.running.eq(1), rd.data.ready.eq(1)]
                with m.If(rd.idle & ~rd.data.valid & (self.busy == 0)):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.running.eq(1)
                m.d.sync += done.eq(1)
                m.next = "IDLE"
        return m
