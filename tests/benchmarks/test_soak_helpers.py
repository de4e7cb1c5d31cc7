"""The soak script's figures (benchmarks/soak.py): nearest-rank latency quantiles and RSS growth
after the warm-up. (The soak itself runs by hand, not in CI.)"""

from __future__ import annotations

import math

from benchmarks.soak import quantiles_ms, rss_growth


def test_quantiles_nearest_rank_in_ms():
    lat = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    # nearest rank: ceil(q/100 * 100) -> the 50th, 95th, 99th value
    assert quantiles_ms(lat) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    # 3 values: ranks ceil(1.5)=2, ceil(2.85)=3, ceil(2.97)=3
    assert quantiles_ms([0.3, 0.1, 0.2]) == {"p50": 200.0, "p95": 300.0, "p99": 300.0}
    assert all(math.isnan(v) for v in quantiles_ms([]).values())


def test_rss_growth_from_first_sample_after_warmup():
    series = [(0.0, 300.0), (30.0, 400.0), (60.0, 420.0), (90.0, 430.0), (120.0, 441.0)]
    # warm-up 60 s: from 420 to 441 MiB = +5%
    assert rss_growth(series, 60.0) == (441.0 - 420.0) / 420.0 == 0.05
    assert rss_growth(series, 0.0) == (441.0 - 300.0) / 300.0
    assert math.isnan(rss_growth(series, 120.0))  # one sample after the warm-up: no growth
