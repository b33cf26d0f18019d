"""docs/dashboards.md: a series goes to the page cut to at most 2,000 points, the minimum and maximum of each bucket
kept, so spikes and NaN gaps survive (ddlc.dashboards.downsample, used by the panels and the report)."""

from __future__ import annotations

import math

import numpy as np

from ddlc.dashboards import panel_data
from ddlc.dashboards.downsample import minmax


def _run_of(n: int) -> tuple[np.ndarray, np.ndarray]:
    steps = np.arange(1, n + 1, dtype=np.float64)
    loss = 5.0 * np.exp(-steps / n) + 0.01 * np.sin(steps)
    loss[4321] = 1e6   # one spike
    loss[777] = -1e6   # one dip
    loss[5000:6000] = np.nan  # a gap (non-finite steps) longer than a bucket
    return steps, loss


def test_a_long_series_is_cut_to_the_panel_limit_keeping_spikes_gaps_and_the_last_point():
    assert panel_data.MAX_POINTS == 2000  # what the panels send
    steps, loss = _run_of(200_000)
    x, y = minmax(steps, loss, panel_data.MAX_POINTS)
    assert len(x) == len(y) <= 2000 and len(x) > 1000  # cut, not thinned to nothing
    assert np.all(np.diff(x) > 0)  # in step order, no step twice
    assert (4322.0, 1e6) in zip(x.tolist(), y.tolist()) and (778.0, -1e6) in zip(x.tolist(), y.tolist())
    assert any(math.isnan(v) for v in y)  # the gap stays a gap
    assert x[-1] == steps[-1] and y[-1] == loss[-1]  # the latest point is always there
    assert set(x.tolist()) <= set(steps.tolist()) and all(  # real points only, never averaged ones
        loss[int(s) - 1] == v or (math.isnan(v) and math.isnan(loss[int(s) - 1])) for s, v in zip(x, y))


def test_every_bucket_keeps_its_minimum_and_maximum():
    steps, loss = _run_of(20_000)
    x, y = minmax(steps, loss, 2000)
    buckets = 2000 // 2 - 1
    size = -(-len(loss) // buckets)
    kept = dict(zip(x.tolist(), y.tolist()))
    for start in range(0, len(loss), size):
        chunk = loss[start:start + size]
        if np.all(np.isnan(chunk)):
            continue
        assert np.nanmax(chunk) in [kept.get(s) for s in steps[start:start + size]], start
        assert np.nanmin(chunk) in [kept.get(s) for s in steps[start:start + size]], start


def test_a_short_series_is_sent_whole():
    steps, loss = _run_of(6000)
    x, y = minmax(steps[:2000], loss[:2000], 2000)
    assert x.tolist() == steps[:2000].tolist()
    assert np.array_equal(y, loss[:2000], equal_nan=True)
