"""``trillium bench vector``: throughput of every vector unit against the TLMM engine's output rate.

Method. Each unit is built at the hardware config's ``vector.lanes`` (RoPE at ``lanes / 2`` pairs, so
both see ``lanes`` elements per beat) and driven in the Amaranth simulator (the same RTL, cycle for
cycle) with inputs always valid and the output always ready; elements per cycle = elements / cycles from
the first input transfer to the last output transfer, so pipeline fill is included. NormQuant is
measured per vector of the model's hidden size (it makes three passes and runs a scalar sequence).

The rate each unit must sustain comes from the TLMM engine at the same config: a linear layer with K
inputs and R outputs takes ``ceil(K / 3T) * ceil(R / N)`` cycles per token (II = 1, measured by
``trillium bench tlmm``) and emits R values, so its epilogue must take ``R / cycles`` elements per cycle;
the prologue (NormQuant) must normalise K elements in that time. A unit slower than its requirement is
a bottleneck. NormQuant cannot overlap the matmul it feeds in decode (the matmul needs the whole
normalised vector), so its cycles are also reported as a share of the layer's TLMM cycles.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Value
from amaranth.sim import Simulator

from golden.model_config import MODEL_SHAPES
from golden.numerics import quantise_gain, rope_freq_table
from golden.sfloat import SFloat
from golden.tlmm import GROUP_SIZE
from hw.config import load_hw_config
from hw.vector.epilogue import Dequant, GateRelu2, GateSilu, ResidualAdd
from hw.vector.norm_quant import NormQuant
from hw.vector.quant_pow2 import QuantPow2
from hw.vector.rope import RopeUnit

__all__ = ["bench_vector", "format_vector", "measure_stream_unit", "measure_norm_quant"]

#: Beats per streaming measurement.
BEATS = 256


def _run(dut, sources, sinks, count):
    """Drive ``sources`` ({port: [int payloads]}) always valid, sinks always ready, until ``count``
    transfers of the first sink. Returns cycles from the first input transfer to the last output."""
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    marks = {"first": None, "last": None, "cycle": 0}

    def source(name, items):
        port = getattr(dut, name)

        async def drive(ctx):
            for word in items:
                ctx.set(Value.cast(port.payload), word)
                ctx.set(port.valid, 1)
                await ctx.tick().until(port.ready)
                if marks["first"] is None:
                    marks["first"] = marks["cycle"]
            ctx.set(port.valid, 0)
        return drive

    async def sink(ctx):
        for name in sinks:
            ctx.set(getattr(dut, name).ready, 1)
        port = getattr(dut, sinks[0])
        seen = 0
        while seen < count:
            _, _, valid = await ctx.tick().sample(port.valid)
            marks["cycle"] += 1
            if valid:
                seen += 1
                marks["last"] = marks["cycle"]
            if marks["cycle"] > 100 * count + 10000:
                raise RuntimeError(f"{type(dut).__name__}: no progress")

    for name, items in sources.items():
        sim.add_testbench(source(name, items))
    sim.add_testbench(sink)
    sim.run()
    return marks["last"] - (marks["first"] or 0)


def measure_stream_unit(unit, lanes, head_dim=128, beats=BEATS):
    """Elements per cycle of a one-beat-in, one-beat-out unit over ``beats`` beats."""
    rng = np.random.default_rng(0)
    words = [int(v) for v in rng.integers(0, 1 << 62, beats)]
    if unit == "dequant":
        dut, srcs = Dequant(lanes), {"i": words}
    elif unit == "residual_add":
        dut, srcs = ResidualAdd(lanes), {"x": words, "y": words}
    elif unit in ("gate_silu", "gate_relu2"):
        dut = (GateSilu if unit == "gate_silu" else GateRelu2)(lanes)
        srcs = {"gate": words, "up": words}
    elif unit == "rope":
        pairs = max(1, lanes // 2)
        dut = RopeUnit(head_dim, pairs, rope_freq_table(head_dim, 10000.0))
        srcs = {"pairs": words}
        cycles = _run(dut, srcs, ["rotated"], beats)
        return 2 * pairs * beats / cycles
    elif unit == "quant_pow2":
        dut, srcs = QuantPow2(lanes, head_dim), {"i": words}
        beats -= beats % dut.beats
        srcs = {"i": words[:beats]}
    else:
        raise ValueError(unit)
    return lanes * beats / _run(dut, srcs, ["o"], beats)


def measure_norm_quant(lanes, n, vectors=2):
    """Cycles per vector and elements per cycle of NormQuant on ``vectors`` back-to-back vectors of
    length ``n`` (residual-stream values)."""
    dut = NormQuant(lanes, n)
    rng = np.random.default_rng(1)
    gain = quantise_gain(rng.normal(1.0, 0.2, n), 1e-5)
    sx = SFloat.pow2(np.int64(-16))
    cfg = dut.cfg.payload.shape().const({
        "n": n, "sx": {"m": int(sx.m), "e": int(sx.e)}, "shift": gain.shift,
        "eps": {"m": int(gain.eps.m), "e": int(gain.eps.e)}}).as_bits()
    layout = dut.i.payload.shape()
    beats = []
    for _ in range(vectors):
        x = rng.normal(0, 2 * 65536, n).astype(np.int64)
        for s in range(0, n, lanes):
            beats.append(layout.const({
                "x": {f"lane{k}": int(v) for k, v in enumerate(x[s:s + lanes])},
                "g": {f"lane{k}": int(v) for k, v in enumerate(gain.q[s:s + lanes])}}).as_bits())
    per = -(-n // lanes)
    cycles = _run(dut, {"cfg": [cfg] * vectors, "i": beats}, ["o", "s"], per * vectors)
    return cycles / vectors, n * vectors / cycles


def _tlmm_cycles(k, r, t, n):
    return -(-k // (GROUP_SIZE * t)) * -(-r // n)


def bench_vector(hw="tiny", shape="bitnet-large", progress=None):
    """Measure every vector unit at ``hw`` and compare with the TLMM engine's rate on ``shape``."""
    say = progress or (lambda msg: None)
    cfg = load_hw_config(hw)
    model = MODEL_SHAPES[shape]
    T, N, L = cfg.tlmm.tables, cfg.tlmm.lanes, cfg.vector.lanes
    h, f, d = model.hidden_size, model.intermediate_size, model.head_dim
    qkv = model.q_dim + 2 * model.kv_dim
    layers = {  # (K, R outputs of the fused matmul, elements its epilogue emits)
        "qkv": (h, qkv, qkv), "o_proj": (h if model.q_dim == h else model.q_dim, h, h),
        "gate_up": (h, 2 * f, f), "down": (f, h, h)}
    cyc = {name: _tlmm_cycles(k, r, T, N) for name, (k, r, _e) in layers.items()}
    need = {name: e / cyc[name] for name, (_k, _r, e) in layers.items()}
    # Which layer's epilogue each unit serves (the most demanding one).
    serves = {"dequant": ["qkv", "o_proj", "gate_up", "down"], "rope": ["qkv"], "quant_pow2": ["qkv"],
              "residual_add": ["o_proj", "down"], "gate_silu": ["gate_up"], "gate_relu2": ["gate_up"]}
    units = {}
    for unit, users in serves.items():
        say(f"measuring {unit} at {L} lanes")
        rate = measure_stream_unit(unit, L, head_dim=d)
        req = max(need[u] for u in users)
        if unit == "dequant":   # sees every row of the fused matmul, gate and up alike
            req = max(layers[u][1] / cyc[u] for u in users)
        units[unit] = {"elements_per_cycle": round(rate, 4), "required_per_cycle": round(req, 4),
                       "headroom": round(rate / req, 2)}
    norm = {}
    for name, n in (("input/post norm (hidden)", h), ("ffn_sub_norm (intermediate)", f)):
        say(f"measuring norm_quant at {L} lanes, n = {n}")
        cycles, rate = measure_norm_quant(L, n)
        feeds = "qkv" if n == h else "down"
        norm[name] = (cycles, rate, feeds)
    worst = min(norm.values(), key=lambda v: v[1] / (layers[v[2]][0] / cyc[v[2]]))
    cycles, rate, feeds = worst
    units["norm_quant"] = {
        "elements_per_cycle": round(rate, 4), "required_per_cycle": round(layers[feeds][0] / cyc[feeds], 4),
        "headroom": round(rate / (layers[feeds][0] / cyc[feeds]), 2),
        "cycles_per_vector": {k: round(v[0], 1) for k, v in norm.items()},
        # A layer has four norms: input, attn_sub and post-attention at the hidden size, ffn_sub at the
        # intermediate size.
        "serial_share_of_layer": round((3 * norm["input/post norm (hidden)"][0]
                                        + norm["ffn_sub_norm (intermediate)"][0]) / sum(cyc.values()), 4),
    }
    slow = [u for u, r in units.items() if r["headroom"] < 1.0]
    bottleneck = min(slow, key=lambda u: units[u]["headroom"]) if slow else None
    return {
        "hw": cfg.name, "shape": shape, "vector_lanes": L, "tlmm": {"tables": T, "lanes": N},
        "tlmm_cycles_per_token": cyc, "units": units, "bottleneck": bottleneck,
        "method": ("Amaranth simulation of each unit's RTL, inputs always valid and outputs always ready; "
                   "elements/cycle from the first input to the last output (fill included). Required "
                   "rate = elements the TLMM engine hands the unit per engine cycle at II = 1 "
                   "(ceil(K/3T) * ceil(R/N) cycles per token and layer). serial_share_of_layer = cycles of "
                   "a layer's four NormQuant vectors (3 at the hidden size, 1 at the intermediate size) over "
                   "the layer's TLMM cycles: the prologue cannot overlap the matmul it feeds in decode."),
    }


def format_vector(res):
    lines = [f"vector units at {res['hw']} ({res['vector_lanes']} lanes) vs TLMM {res['tlmm']['tables']} x "
             f"{res['tlmm']['lanes']} on {res['shape']}",
             f"{'unit':<14} {'elem/cycle':>11} {'required':>9} {'headroom':>9}"]
    for u, r in res["units"].items():
        lines.append(f"{u:<14} {r['elements_per_cycle']:>11.3f} {r['required_per_cycle']:>9.3f} {r['headroom']:>8.1f}x")
    nq = res["units"]["norm_quant"]
    lines.append("norm_quant cycles per vector: " + ", ".join(f"{k} {v}" for k, v in nq["cycles_per_vector"].items())
                 + f"; serial share of a layer's TLMM time {100 * nq['serial_share_of_layer']:.1f}%")
    lines.append(f"bottleneck: {res['bottleneck'] or 'none (the TLMM engine is the limit)'}")
    lines.append(f"method: {res['method']}")
    return "\n".join(lines)
