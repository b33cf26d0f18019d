"""Series cut down to what a panel can draw: at most MAX_POINTS points, min and max of every bucket kept.

    x, y (n points) -> n <= max_points: unchanged
                    -> else: buckets of ceil(n / (max_points // 2 - 1)) points; per bucket the points holding its
                       minimum and its maximum, in x order; the last point always (stat panels show it)

Min/max per bucket keeps every spike and dip a reader would look for (a loss spike, a step-time stall); a bucket
that holds only NaN keeps one NaN, so a gap in the data stays a gap in the plot. numpy does the per-bucket work,
so a 200,000-step run costs a few milliseconds, not a Python loop.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MAX_POINTS = 2000  # a panel is ~1,000 px wide: two points per pixel column is all it can show


def minmax(x: Sequence[float], y: Sequence[float], max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    n = len(ys)
    if n <= max_points:
        return xs, ys
    buckets = max(max_points // 2 - 1, 1)
    size = -(-n // buckets)
    padded = np.full(buckets * size, np.nan)
    padded[:n] = ys
    grid = padded.reshape(buckets, size)
    nan = np.isnan(grid)
    low = np.where(nan, np.inf, grid).argmin(axis=1)
    high = np.where(nan, -np.inf, grid).argmax(axis=1)
    base = np.arange(buckets) * size
    index = np.concatenate([base + low, base + high, [n - 1]])
    index = np.sort(index[index < n])  # x order kept
    index = index[np.concatenate(([True], index[1:] != index[:-1]))]  # np.unique, without importing numpy.ma
    return xs[index], ys[index]
