import math
import time

import numpy as np
import pytest

from device_agent.bench import Policy, latency_stats, run_policy
from device_agent.errors import AgentError
from device_agent.runtimes import TensorSpec
from device_agent.worker import make_inputs


class Counter:
    def __init__(self):
        self.calls = 0
        self.events = []

    def __call__(self):
        self.calls += 1


def test_counts_first_run_warmup_and_timed_runs():
    invoke = Counter()
    timing = run_policy(invoke, Policy(warmup_runs=3, warmup_seconds=0, min_runs=10, min_seconds=0))
    assert timing.warmup_runs == 3 and len(timing.latencies_ms) == 10
    assert invoke.calls == 1 + 3 + 10
    assert timing.first_run_ms >= 0 and all(x >= 0 for x in timing.latencies_ms)


def test_cached_program_skips_the_first_run_and_timed_start_is_signalled_once():
    invoke = Counter()
    marks = []
    timing = run_policy(invoke, Policy(warmup_runs=2, warmup_seconds=0, min_runs=4, min_seconds=0),
                        first_run=False, on_timed_start=lambda: marks.append(invoke.calls))
    assert invoke.calls == 6 and timing.first_run_ms == 0.0
    assert marks == [2]  # after the warm-up, before any timed run


def test_min_seconds_extends_and_max_runs_caps():
    slow = lambda: time.sleep(0.002)  # noqa: E731
    timing = run_policy(slow, Policy(warmup_runs=0, warmup_seconds=0, min_runs=1, min_seconds=0.05))
    assert timing.timed_window_s >= 0.05 and len(timing.latencies_ms) > 1
    capped = run_policy(Counter(), Policy(warmup_runs=0, warmup_seconds=0, min_runs=100, min_seconds=10,
                                          max_runs=7))
    assert len(capped.latencies_ms) == 7
    timed_cap = run_policy(slow, Policy(warmup_runs=0, warmup_seconds=0, min_runs=10**6, min_seconds=100,
                                        max_runs=10**7, max_seconds=0.03))
    assert 0.03 <= timed_cap.timed_window_s < 5


def test_warmup_by_time():
    invoke = Counter()
    timing = run_policy(lambda: (invoke(), time.sleep(0.001)), Policy(warmup_runs=1, warmup_seconds=0.02,
                                                                      min_runs=1, min_seconds=0))
    assert timing.warmup_runs > 1 and timing.warmup_s >= 0.02


def test_latency_stats_match_numpy():
    samples = [1.0, 2.0, 3.0, 4.0, 10.0]
    s = latency_stats(samples)
    assert s.count == 5 and s.mean_ms == pytest.approx(4.0)
    assert s.std_ms == pytest.approx(np.std(samples, ddof=1))
    assert s.cv == pytest.approx(s.std_ms / 4.0)
    assert (s.min_ms, s.p50_ms, s.max_ms) == (1.0, 3.0, 10.0)
    assert s.p90_ms == pytest.approx(np.percentile(samples, 90))
    single = latency_stats([2.5])
    assert single.std_ms == 0.0 and single.cv == 0.0 and single.p99_ms == 2.5
    assert math.isnan(latency_stats([]).mean_ms)


def test_make_inputs_fills_specs_with_seeded_values_and_checks_data():
    specs = [TensorSpec((1, 3, 4, 4), "float32"), TensorSpec((2,), "int64")]
    a = make_inputs(specs, [], seed=1)
    b = make_inputs(specs, [], seed=1)
    c = make_inputs(specs, [], seed=2)
    assert [x.shape for x in a] == [(1, 3, 4, 4), (2,)] and a[1].dtype == np.int64
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    assert a[0].min() >= -1 and a[0].max() <= 1
    given = np.arange(6, dtype=np.float32)
    (d,) = make_inputs(specs, [([2, 3], "float32", given.tobytes())], seed=0)
    assert np.array_equal(d, given.reshape(2, 3))
    with pytest.raises(AgentError, match="do not fill"):
        make_inputs(specs, [([2, 3], "float32", b"\x00" * 5)], seed=0)
