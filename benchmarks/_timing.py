"""Timing helpers shared by the benchmarks: medians over repeated runs, never a single run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], *, min_time: float = 0.4, min_reps: int = 5,
                   max_reps: int = 200, warmup: int = 2) -> tuple[float, int]:
    """Median wall time of ``fn()`` over at least ``min_reps`` runs and ``min_time`` seconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_time):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) * 1e-9)
    return statistics.median(times), len(times)
