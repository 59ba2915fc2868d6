"""A self-running simulation top for the memory benchmark: the weight path plus on-chip sequencers.

Python per cycle would cap Verilator at tens of thousands of cycles per second, so everything that
moves on every cycle is gateware here: tile commands come from a command memory, act steps from a
sequencer walking a matrix table and an activation memory, and the sums go into a checksum. The
testbench writes the memories through ``load``, pulses ``go``, waits in long ``ClockCycles`` chunks until
``done`` and reads the counters. Not for synthesis (asynchronous memory reads).

Act-step order is the engine's. ``mux`` (``sim/tlmm_driver.py``): per matrix, for each row tile, for
each k-step, for each token. ``lutram``: per matrix, for each block of ``block_rows`` row tiles, for each
k-step, for each token (one table set each; :class:`~hw.memory.lut_feed.LutWordFeed` walks the words
in the same order from a second read port of the matrix table). The activation memory holds each
matrix's ``k_steps * tokens`` entries (k-step major, token minor) from the matrix's ``act_base``.
"""

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.tlmm import GROUP_SIZE
from ..params import check_int
from ..tlmm.layouts import token_bits
from .weight_buffer import tile_command_layout
from .weight_path import WeightPath

__all__ = ["MemoryBenchTop", "LoadTarget", "matrix_entry_layout", "bench_load_layout", "checksum"]


class LoadTarget:
    DRAM = 0
    COMMANDS = 1
    MATRICES = 2
    ACTS = 3


def matrix_entry_layout(max_tokens):
    return data.StructLayout({"row_tiles": unsigned(16), "k_steps": unsigned(16),
                              "tokens": unsigned(token_bits(max_tokens + 1)), "act_base": unsigned(16)})


def bench_load_layout(data_bits):
    return data.StructLayout({"target": unsigned(2), "addr": unsigned(20), "data": unsigned(data_bits)})


def checksum(sums, acc_bits=32):
    """The sink's checksum of ``sums`` (a sequence of lane-value lists, in output order)."""
    c, mask = 0, (1 << 32) - 1
    for lanes in sums:
        for y in lanes:
            c = (c * 31 + (y & ((1 << acc_bits) - 1))) & mask
    return c


class MemoryBenchTop(wiring.Component):
    """Weight path + command feeder + act-step sequencer + checksum sink + counters.

    Parameters
    ----------
    tables, lanes, data_bits, buffer_words, dram_words, latency, bytes_per_cycle, max_tokens, ports, engine,
    block_rows :
        As for :class:`WeightPath` (no jitter: the benchmark measures the exact model).
    max_commands, max_matrices, act_words : int
        Depths of the command, matrix-table and activation memories.

    Attributes
    ----------
    load : In(stream.Signature(bench_load_layout(...)))
        Writes ``data`` at ``addr`` of memory ``target`` (:class:`LoadTarget`). Always ready.
    go : In(1)
        Pulse: start at command 0 and matrix 0, clear the counters.
    n_commands, n_matrices : In(16)
    n_sums : In(32)
        Sums expected; ``done`` rises after the last one.
    done : Out(1)
    cycles, beats, sums_seen, checksum : Out(32)
        Cycles from ``go`` to ``done``, DRAM beats in that time, sums received, their checksum.
    violation, error : Out(1)
    """

    def __init__(self, tables, lanes, *, data_bits, buffer_words, dram_words, latency=20, bytes_per_cycle=None,
                 max_tokens=8, max_commands=256, max_matrices=64, act_words=4096, max_outstanding=4, ports=1,
                 engine="mux", block_rows=16):
        owner = "MemoryBenchTop"
        self.max_commands = check_int("max_commands", max_commands, 1, 1 << 16, owner)
        self.max_matrices = check_int("max_matrices", max_matrices, 1, 1 << 16, owner)
        self.act_words = check_int("act_words", act_words, 1, 1 << 16, owner)
        self.path = WeightPath(tables, lanes, data_bits=data_bits, buffer_words=buffer_words, dram_words=dram_words,
                               latency=latency, bytes_per_cycle=bytes_per_cycle, max_tokens=max_tokens,
                               max_outstanding=max_outstanding, ports=ports, engine=engine, block_rows=block_rows)
        self.engine, self.block_rows = engine, block_rows
        self.tables, self.lanes, self.max_tokens = tables, lanes, max_tokens
        self.cmd_layout = tile_command_layout(32, self.path.manager.beats_bits)
        self.entry_layout = matrix_entry_layout(max_tokens)
        self.x_layout = data.ArrayLayout(signed(8), GROUP_SIZE * tables)
        widest = max(data_bits, self.cmd_layout.size, self.entry_layout.size, self.x_layout.size)
        self.load_layout = bench_load_layout(widest)
        super().__init__({
            "load": In(stream.Signature(self.load_layout)),
            "go": In(1),
            "n_commands": In(16),
            "n_matrices": In(16),
            "n_sums": In(32),
            "done": Out(1),
            "cycles": Out(32),
            "beats": Out(32),
            "sums_seen": Out(32),
            "checksum": Out(32),
            "violation": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.path = path = self.path
        m.submodules.commands = cmd_mem = Memory(shape=self.cmd_layout, depth=self.max_commands, init=[])
        m.submodules.matrices = mat_mem = Memory(shape=self.entry_layout, depth=self.max_matrices, init=[])
        m.submodules.acts = act_mem = Memory(shape=self.x_layout, depth=self.act_words, init=[])

        # Loading.
        ld = self.load.payload
        m.d.comb += self.load.ready.eq(1)
        m.d.comb += [
            path.load.valid.eq(self.load.valid & (ld.target == LoadTarget.DRAM)),
            path.load.payload.addr.eq(ld.addr),
            path.load.payload.data.eq(ld.data),
        ]
        for mem, target in ((cmd_mem, LoadTarget.COMMANDS), (mat_mem, LoadTarget.MATRICES), (act_mem, LoadTarget.ACTS)):
            wr = mem.write_port()
            m.d.comb += [wr.addr.eq(ld.addr), wr.data.eq(ld.data), wr.en.eq(self.load.valid & (ld.target == target))]

        running = Signal()
        # Command feeder.
        cmd_idx = Signal(16)
        cmd_rd = cmd_mem.read_port(domain="comb")
        m.d.comb += [
            cmd_rd.addr.eq(cmd_idx),
            path.cmd.payload.eq(cmd_rd.data),
            path.cmd.valid.eq(running & (cmd_idx < self.n_commands)),
        ]
        with m.If(path.cmd.valid & path.cmd.ready):
            m.d.sync += cmd_idx.eq(cmd_idx + 1)

        # Act-step sequencer.
        stepping = Signal()
        mat, rt, ks, tok = Signal(16), Signal(16), Signal(16), Signal(token_bits(self.max_tokens))
        rel = Signal(16)                           # entry of this row tile's walk, from act_base
        mat_rd = mat_mem.read_port(domain="comb")
        act_rd = act_mem.read_port(domain="comb")
        entry = mat_rd.data
        last_ks = Signal()
        release = Signal()
        # The outer walk: one row tile at a time (mux) or one block of row tiles (lutram).
        rt_step = 1 if self.engine == "mux" else self.block_rows
        last_rt = Signal()
        m.d.comb += [
            mat_rd.addr.eq(mat),
            act_rd.addr.eq(entry.act_base + rel),
            last_ks.eq(ks == entry.k_steps - 1),
            release.eq(tok == entry.tokens - 1),
            last_rt.eq(rt + rt_step >= entry.row_tiles),
            path.acts.valid.eq(stepping),
        ]
        if self.engine == "mux":
            step = path.acts.payload
            m.d.comb += [
                step.x.eq(act_rd.data),
                step.token.eq(tok),
                step.first.eq(ks == 0),
                step.last.eq(last_ks),
                step.release.eq(release),
                step.shift.eq(0),
                step.negate.eq(0),
            ]
        else:
            m.d.comb += path.acts.payload.eq(act_rd.data)
            # The word feed walks the same matrices from its own read port of the table.
            fmat = Signal(16)
            feed_rd = mat_mem.read_port(domain="comb")
            m.d.comb += [
                feed_rd.addr.eq(fmat),
                path.desc.valid.eq(running & (fmat < self.n_matrices)),
                path.desc.payload.row_tiles.eq(feed_rd.data.row_tiles),
                path.desc.payload.k_steps.eq(feed_rd.data.k_steps),
                path.desc.payload.tokens.eq(feed_rd.data.tokens),
            ]
            with m.If(path.desc.valid & path.desc.ready):
                m.d.sync += fmat.eq(fmat + 1)
            with m.If(self.go):
                m.d.sync += fmat.eq(0)
        with m.If(path.acts.valid & path.acts.ready):
            m.d.sync += [rel.eq(rel + 1), tok.eq(tok + 1)]
            with m.If(release):
                m.d.sync += [tok.eq(0), ks.eq(ks + 1)]
                with m.If(last_ks):
                    m.d.sync += [ks.eq(0), rt.eq(rt + rt_step), rel.eq(0)]
                    with m.If(last_rt):
                        m.d.sync += [rt.eq(0), mat.eq(mat + 1)]
                        with m.If(mat == self.n_matrices - 1):
                            m.d.sync += stepping.eq(0)

        # Checksum sink (always ready: the benchmark measures the weight path, not a slow consumer).
        m.d.comb += path.sums.ready.eq(1)
        # One signal per lane: `c` appears twice in each step, so nesting the expressions instead would
        # grow the expression tree as 2**lanes (65 536 copies at 16 lanes, minutes of elaboration).
        c = self.checksum
        for n in range(self.lanes):
            c_next = Signal(32, name=f"checksum_{n}")
            m.d.comb += c_next.eq(((c << 5) - c + path.sums.payload.y[n].as_unsigned())[:32])
            c = c_next
        with m.If(path.sums.valid & running):
            m.d.sync += [self.checksum.eq(c), self.sums_seen.eq(self.sums_seen + 1)]
            with m.If(self.sums_seen + 1 == self.n_sums):
                m.d.sync += [running.eq(0), self.done.eq(1)]

        # Counters.
        beats_at_go = Signal(32)
        m.d.comb += self.beats.eq(path.dram_beats - beats_at_go)
        with m.If(running):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        m.d.comb += [self.violation.eq(path.violation), self.error.eq(path.error)]

        with m.If(self.go):
            m.d.sync += [
                running.eq(1), stepping.eq(self.n_matrices != 0), self.done.eq(0),
                cmd_idx.eq(0), mat.eq(0), rt.eq(0), ks.eq(0), tok.eq(0), rel.eq(0),
                self.cycles.eq(0), self.sums_seen.eq(0), self.checksum.eq(0), beats_at_go.eq(path.dram_beats),
            ]
        return m
