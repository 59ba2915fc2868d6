"""Host side of the weight buffer: DRAM layout of the packed weights and the tile-command schedule.

The weight-buffer manager (``hw/memory/weight_buffer.py``) reads whatever DRAM ranges it is given, in
order, and hands the bytes to the TLMM engine as weight words. This module decides the ranges from
the layer shapes and the buffer size, analytically (no simulation), as described in
``docs/memory.md``:

* **Layout.** The matrices of a pass are stored in execution order, back to back: matrix ``i+1``'s
  first weight word follows matrix ``i``'s last one with no gap, even inside a bus word. Each matrix
  is ``golden.tlmm`` packed (row-tile-major words of ``5*T*N`` bits). Only the end of the whole image
  is padded to a bus word.
* **Tiles.** Each matrix's bus words are cut into tiles of at most ``tile_beats`` bus words (default
  half the ring: one half drains into the engine while the other fills). A bus word shared by two
  matrices is read once, in the earlier matrix's last tile. The last tile of the image carries
  ``end`` and the number of padding bytes in its last bus word, which makes the manager drop the
  padding after the last weight word (however many words it could hold).
* **Word order.** For the ``mux`` engine a matrix's words are row-tile-major, as ``golden.tlmm`` packs
  them. For the ``lutram`` engine (``block_rows = R``) they are table-stationary: for each block of
  ``R`` row tiles, for each k-step, the block's words (``stationary_order``), so the engine can run a
  whole block against one table set and a prefill chunk replays a block's words from a small cache.
* **Ports.** With ``ports = P > 1`` AXI4 ports (a non-power-of-two width such as 768 bits) bus word
  ``j`` is striped over the ports (``hw/memory/axi_group.py``) and tile addresses are port-local:
  ``base + j * data_bytes / P``.
* **Estimate.** The engine needs ``tokens`` cycles per weight word (plus, for ``lutram``, a 15-cycle
  table fill per block, k-step and token) and the port delivers ``bytes_per_cycle``; with reads
  running ahead through the ring the pass takes about ``latency + max(compute, memory)`` cycles.
"""

from __future__ import annotations

from dataclasses import dataclass

from golden.model_config import MODEL_SHAPES, ModelConfig
from golden.tlmm import TABLE_ENTRIES

#: Cycles the ``lutram`` engine spends per table set before its first word: accept + 14 entries.
LUT_FILL_CYCLES = TABLE_ENTRIES + 1

__all__ = [
    "MatrixPlacement",
    "TileCommand",
    "WeightSchedule",
    "plan_weights",
    "plan_for_config",
    "layer_matrices",
    "dram_image",
    "stationary_order",
    "LUT_FILL_CYCLES",
]


@dataclass(frozen=True)
class MatrixPlacement:
    """Where one packed matrix lives in the weight image.

    Attributes
    ----------
    offset : int
        Byte offset of its first weight word from the image base (not necessarily bus-aligned).
    words : int
        Weight words: ``row_tiles * k_steps * bits`` (``bits = 1`` for ternary).
    """

    name: str
    rows: int
    cols: int
    bits: int
    row_tiles: int
    k_steps: int
    words: int
    offset: int
    nbytes: int

    @property
    def end(self):
        return self.offset + self.nbytes


@dataclass(frozen=True)
class TileCommand:
    """One command for the manager: ``beats`` bus words from byte address ``addr``."""

    addr: int
    beats: int
    end: bool
    matrix: int   # the matrix whose bytes the tile starts in (for reports only)
    pad: int = 0  # with end: padding bytes at the top of the last bus word

    def as_dict(self):
        return {"addr": self.addr, "beats": self.beats, "end": int(self.end), "pad": self.pad}


@dataclass(frozen=True)
class WeightSchedule:
    """The layout and tile commands of one pass over a list of matrices.

    Attributes
    ----------
    base : int
        Byte address of the image (4 KiB aligned).
    data_bytes, word_bytes : int
        Bus width and weight-word size in bytes.
    buffer_words : int
        Ring capacity in bus words.
    tile_beats : int
        Largest tile in bus words.
    ports : int
        AXI4 ports the bus words are striped over (tile addresses are port-local).
    block_rows : int or None
        None: row-tile-major words (``mux`` engine); else table-stationary blocks of this many row
        tiles (``lutram`` engine).
    """

    base: int
    data_bytes: int
    word_bytes: int
    buffer_words: int
    tile_beats: int
    matrices: tuple
    tiles: tuple
    ports: int = 1
    block_rows: int | None = None

    @property
    def port_bytes(self):
        return self.data_bytes // self.ports

    @property
    def weight_bytes(self):
        return sum(p.nbytes for p in self.matrices)

    @property
    def words(self):
        return sum(p.words for p in self.matrices)

    @property
    def beats(self):
        """Bus words read for one pass."""
        return sum(t.beats for t in self.tiles)

    @property
    def read_bytes(self):
        return self.beats * self.data_bytes

    @property
    def padding_bytes(self):
        return self.read_bytes - self.weight_bytes

    @property
    def prefetch_tiles(self):
        """How many tiles the ring holds, i.e. how far (in tiles) reads can run ahead of the engine."""
        return self.buffer_words // self.tile_beats

    def commands(self):
        """Tile commands as dicts for ``tile_command_layout``."""
        return [t.as_dict() for t in self.tiles]

    def compute_cycles(self, placement, tokens):
        """Engine cycles for one matrix: one per word and token, plus (table-stationary order) a table
        fill of ``LUT_FILL_CYCLES`` per block, k-step and token."""
        if self.block_rows is None:
            return tokens * placement.words
        blocks = _ceil(placement.row_tiles, self.block_rows)
        return tokens * (placement.words + placement.k_steps * blocks * LUT_FILL_CYCLES)

    def estimate(self, tokens, bytes_per_cycle, latency):
        """Cycle estimate of one pass with ``tokens`` act steps per weight word.

        Returns
        -------
        dict
            ``compute_cycles`` (engine at one step per cycle, plus table fills for ``lutram``),
            ``memory_cycles`` (bytes read at ``bytes_per_cycle``), ``overlapped_cycles`` (``latency +
            max`` of the two: reads run ahead through the ring) and ``serial_cycles`` (each matrix
            loaded, then computed: no overlap).
        """
        compute = sum(self.compute_cycles(p, tokens) for p in self.matrices)
        memory = self.read_bytes / bytes_per_cycle
        serial = sum(latency + p.nbytes / bytes_per_cycle + self.compute_cycles(p, tokens) for p in self.matrices)
        return {
            "compute_cycles": compute,
            "memory_cycles": memory,
            "overlapped_cycles": latency + max(compute, memory),
            "serial_cycles": serial,
            "bound": "memory" if memory > compute else "compute",
        }


def _ceil(a, b):
    return -(-a // b)


def plan_weights(matrices, *, tables, lanes, data_bytes, buffer_bytes, base=0, tile_beats=None, ports=1,
                 block_rows=None):
    """Lay out ``matrices`` back to back and cut them into tile commands.

    Parameters
    ----------
    matrices : sequence of tuple
        ``(name, rows, cols)`` or ``(name, rows, cols, bits)`` in execution order (``bits`` for
        bit-serial int-k weights, default ternary).
    tables, lanes : int
        Engine geometry T and N.
    data_bytes : int
        DRAM bus width in bytes.
    buffer_bytes : int
        Weight-buffer capacity in bytes.
    base : int
        Image address; must be a multiple of 4096.
    tile_beats : int, optional
        Largest tile in bus words; default half the ring.
    ports : int
        AXI4 ports striping each bus word (``data_bytes / ports`` must be a power of two); tile
        addresses are then port-local, ``base + j * data_bytes / ports`` for bus word ``j``.
    block_rows : int, optional
        Table-stationary word order in blocks of this many row tiles (``lutram`` engine); default
        row-tile-major (``mux`` engine). Only for ternary matrices.

    Returns
    -------
    WeightSchedule
    """
    if base % 4096:
        raise ValueError(f"base must be 4 KiB aligned, got {base:#x}")
    word_bytes = 5 * tables * lanes // 8
    if ports < 1 or data_bytes % ports or (data_bytes // ports) & (data_bytes // ports - 1):
        raise ValueError(f"data_bytes = {data_bytes} is not {ports} ports of a power-of-two width")
    if block_rows is not None and block_rows < 1:
        raise ValueError(f"block_rows must be at least 1, got {block_rows}")
    port_bytes = data_bytes // ports
    buffer_words = buffer_bytes // data_bytes
    if buffer_words < 4:
        raise ValueError(f"a buffer of {buffer_bytes} bytes holds fewer than 4 bus words of {data_bytes} bytes")
    tile_beats = tile_beats or buffer_words // 2
    placed, offset = [], 0
    for entry in matrices:
        name, rows, cols = entry[:3]
        bits = entry[3] if len(entry) > 3 else 1
        if block_rows is not None and bits != 1:
            raise ValueError(f"{name}: table-stationary order (block_rows) is for ternary weights, got bits = {bits}")
        row_tiles, k_steps = _ceil(rows, lanes), _ceil(_ceil(cols, 3), tables)
        words = row_tiles * k_steps * bits
        placed.append(MatrixPlacement(name, rows, cols, bits, row_tiles, k_steps, words, offset, words * word_bytes))
        offset += words * word_bytes

    tiles, covered = [], 0          # bus words already in some tile
    for i, p in enumerate(placed):
        stop = _ceil(p.end, data_bytes)
        while covered < stop:
            n = min(tile_beats, stop - covered)
            tiles.append(TileCommand(base + covered * port_bytes, n, False, i))
            covered += n
    if tiles:
        # The padding can hold whole weight words when the bus is wider than a word: say how much.
        pad = covered * data_bytes - offset
        tiles[-1] = TileCommand(tiles[-1].addr, tiles[-1].beats, True, tiles[-1].matrix, pad)
    return WeightSchedule(base, data_bytes, word_bytes, buffer_words, tile_beats, tuple(placed), tuple(tiles),
                          ports, block_rows)


def plan_for_config(matrices, cfg, **kwargs):
    """:func:`plan_weights` with the geometry, bus width, port split and buffer size of a
    ``hw.config.HwConfig``."""
    from hw.memory.axi_group import port_split

    kwargs.setdefault("ports", port_split(cfg.dram.data_bits)[0])
    return plan_weights(matrices, tables=cfg.tlmm.tables, lanes=cfg.tlmm.lanes, data_bytes=cfg.dram.data_bytes,
                        buffer_bytes=cfg.weight_buffer.kbytes * 1024, **kwargs)


def stationary_order(row_tiles, k_steps, block_rows):
    """Word indices (row-tile-major, as packed) in table-stationary order: for each block of
    ``block_rows`` row tiles, for each k-step, the block's row tiles."""
    order = []
    for b0 in range(0, row_tiles, block_rows):
        rows = range(b0, min(b0 + block_rows, row_tiles))
        for ks in range(k_steps):
            order += [rt * k_steps + ks for rt in rows]
    return order


def layer_matrices(model, layers=1):
    """The ternary linears of ``layers`` decoder layers in execution order: ``[(name, rows, cols)]``.

    ``model`` is a :class:`golden.model_config.ModelConfig` or a key of ``MODEL_SHAPES``.
    """
    cfg = MODEL_SHAPES[model] if not isinstance(model, ModelConfig) else model
    shapes = cfg.linear_shapes()
    return [(f"layers.{i}.{name}", *shapes[name]) for i in range(layers) for name in shapes]


def dram_image(schedule, packed):
    """The bus words of the weight image: ``packed`` matrices (``golden.tlmm`` packed, in schedule
    order, words reordered by :func:`stationary_order` if the schedule has ``block_rows``) back to
    back, zero-padded to the bytes the tiles read. Bus word ``j`` is at ``schedule.base + j *
    data_bytes`` (with several ports: its ``p``-th slice at port ``p``'s ``base + j * port_bytes``)."""
    if len(packed) != len(schedule.matrices):
        raise ValueError(f"{len(packed)} packed matrices for a schedule of {len(schedule.matrices)}")
    blob = bytearray()
    for p, place in zip(packed, schedule.matrices):
        data = p.to_bytes()
        if schedule.block_rows is not None and len(data) == place.nbytes:
            data = p.data[stationary_order(p.row_tiles, p.k_steps, schedule.block_rows)].tobytes()
        if len(data) != place.nbytes:
            raise ValueError(f"{place.name}: packed size {len(data)} bytes, schedule expects {place.nbytes}")
        blob += data
    blob += bytes(schedule.read_bytes - len(blob))
    n = schedule.data_bytes
    return [int.from_bytes(blob[j:j + n], "little") for j in range(0, len(blob), n)]
