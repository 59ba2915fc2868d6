"""Golden integer-model speed on a bitnet-large-shaped model (slow: about 20 s and 6 GB of memory)."""

import pytest

from firmware.bench_golden import bench_golden


@pytest.mark.slow
def test_golden_decode_speed_bitnet_large():
    res = bench_golden("bitnet-large", prompt_tokens=4, decode_tokens=4)
    assert res["tokens_per_second"] >= 2.0, res
