"""``trillium bench vector``: per-unit elements/cycle against the TLMM engine's output rate."""

import json

import pytest

import firmware.bench_vector as bv
from firmware.cli import main

UNITS = {"dequant", "rope", "quant_pow2", "residual_add", "gate_silu", "gate_relu2", "norm_quant"}


@pytest.fixture(scope="module")
def tiny():
    return bv.bench_vector("tiny")


def test_every_unit_is_measured_and_keeps_up(tiny):
    assert set(tiny["units"]) == UNITS
    for name, r in tiny["units"].items():
        assert 0 < r["elements_per_cycle"] <= 4, name            # never above the lane count
        assert r["headroom"] >= 1, name
    # One beat per cycle for the streaming units (fill included over 256 beats).
    assert tiny["units"]["residual_add"]["elements_per_cycle"] > 3.9
    assert tiny["bottleneck"] is None
    assert "Amaranth simulation" in tiny["method"]


def test_a_slow_unit_is_named_the_bottleneck(monkeypatch):
    real = bv.measure_stream_unit
    monkeypatch.setattr(bv, "measure_stream_unit",
                        lambda unit, lanes, **kw: 1e-3 if unit == "gate_silu" else real(unit, lanes, **kw))
    assert bv.bench_vector("tiny")["bottleneck"] == "gate_silu"


def test_cli_json(capsys):
    assert main(["bench", "vector", "--hw", "tiny", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["units"]) == UNITS and "bottleneck" in out
