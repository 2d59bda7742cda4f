"""Measurement methodology: warm-up by count and time, timed runs until a minimum count and time, with caps.

Pure functions of an ``invoke`` callable, timed with the monotonic ``perf_counter_ns`` clock on the device.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Policy:
    """Warm-up and repetition policy; the defaults are the search-mode policy (~50 runs / 1 s)."""

    warmup_runs: int = 5
    warmup_seconds: float = 0.05  # counts against the agent overhead: keep it short in search mode
    min_runs: int = 50
    min_seconds: float = 1.0
    max_runs: int = 2000
    max_seconds: float = 10.0  # a slow model still returns within ~10 s; 0 = no time cap beyond max_runs
    max_temperature_c: float = 0.0  # 0 = no temperature gate
    cooldown_timeout_seconds: float = 60.0


class Cancelled(Exception):
    """Raised by :func:`run_policy` when ``should_stop`` says the caller no longer wants the result."""


@dataclass(frozen=True)
class Timing:
    """Raw timings of one benchmark."""

    first_run_ms: float
    warmup_runs: int
    latencies_ms: list[float]
    timed_window_s: float
    warmup_s: float = 0.0


def run_policy(invoke: Callable[[], None], policy: Policy, *, first_run: bool = True,
               on_timed_start: Callable[[], None] | None = None,
               should_stop: Callable[[], bool] = lambda: False) -> Timing:
    """Run ``invoke`` per ``policy``: (first run,) warm-up, then the timed loop; every sample is kept.

    ``on_timed_start`` is called right before the timed loop (the daemon starts its power sampler then).
    ``should_stop`` is checked between runs (outside each sample's clock reads); when it turns true the
    benchmark raises :class:`Cancelled`, so a cancelled job frees the device within one inference.
    """
    clock = time.perf_counter_ns
    first_ms = 0.0
    if first_run:
        t = clock()
        invoke()
        first_ms = (clock() - t) / 1e6
    warm = 0
    start = clock()
    warm_ns = policy.warmup_seconds * 1e9
    while warm < policy.warmup_runs or (clock() - start) < warm_ns:
        if should_stop():
            raise Cancelled()
        invoke()
        warm += 1
    warmup_s = (clock() - start) / 1e9
    if on_timed_start is not None:
        on_timed_start()
    max_runs = max(1, policy.max_runs)
    max_ns = policy.max_seconds * 1e9
    min_ns = policy.min_seconds * 1e9
    samples: list[float] = []
    # Like timeit: no garbage collection pauses inside the timed window.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        while True:
            t = clock()
            invoke()
            end = clock()
            samples.append((end - t) / 1e6)
            elapsed = end - start
            n = len(samples)
            if n >= max_runs or (max_ns and elapsed >= max_ns):
                break
            if n >= policy.min_runs and elapsed >= min_ns:
                break
            if should_stop():
                raise Cancelled()
        window_s = (clock() - start) / 1e9
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(first_ms, warm, samples, window_s, warmup_s)


@dataclass(frozen=True)
class Stats:
    """Summary statistics of latency samples, in milliseconds."""

    count: int
    mean_ms: float
    std_ms: float
    cv: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


def latency_stats(samples: list[float]) -> Stats:
    """Mean, sample standard deviation, CV and percentiles (linear interpolation) of ``samples``."""
    if not samples:
        return Stats(0, *([math.nan] * 8))
    arr = np.asarray(samples, dtype=np.float64)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    p50, p90, p99 = (float(v) for v in np.percentile(arr, [50, 90, 99]))
    return Stats(int(arr.size), mean, std, std / mean if mean > 0 else 0.0, float(arr.min()), p50, p90, p99,
                 float(arr.max()))
