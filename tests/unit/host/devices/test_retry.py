"""Retry classification and backoff: retry only what is safe and useful."""

from __future__ import annotations

import random

import pytest

from host.devices.retry import RetryPolicy, call_with_retry, classify, is_retryable
from host.errors import (
    BenchmarkError,
    ConfigError,
    DeviceAuthError,
    DeviceUnreachableError,
    ProtocolMismatchError,
)


@pytest.mark.parametrize(
    "exc,kind",
    [
        (DeviceUnreachableError("down"), "transient"),
        (BenchmarkError("busy", code="RESOURCE_EXHAUSTED"), "transient"),
        (BenchmarkError("gone", code="UNAVAILABLE"), "transient"),
        (BenchmarkError("bad", code="INVALID_ARGUMENT"), "failed"),
        (BenchmarkError("slow", code="DEADLINE_EXCEEDED"), "failed"),
        (BenchmarkError("nort", code="FAILED_PRECONDITION"), "failed"),
        (DeviceAuthError("key"), "fatal"),
        (ProtocolMismatchError("v2"), "fatal"),
        (ConfigError("flag"), "fatal"),
        (ConnectionResetError(), "transient"),
        (ValueError("bug"), "fatal"),
    ],
)
def test_classify(exc, kind):
    assert classify(exc) == kind


def test_only_idempotent_calls_retry_after_a_lost_connection():
    lost = DeviceUnreachableError("tunnel dropped")
    assert is_retryable(lost, idempotent=True)
    assert not is_retryable(lost, idempotent=False)
    # A full queue proves the agent did not run it: safe even for non-idempotent calls.
    assert is_retryable(BenchmarkError("queue full", code="RESOURCE_EXHAUSTED"), idempotent=False)
    assert not is_retryable(BenchmarkError("bad", code="INVALID_ARGUMENT"), idempotent=True)


def test_backoff_grows_and_is_capped():
    policy = RetryPolicy(base_delay=0.5, multiplier=2, max_delay=3, jitter=0)
    assert [policy.delay(i) for i in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittery = RetryPolicy(base_delay=1, jitter=0.2)
    rng = random.Random(0)
    delays = [jittery.delay(0, rng) for _ in range(50)]
    assert all(0.8 <= d <= 1.2 for d in delays) and len(set(delays)) > 1


def test_call_with_retry_retries_then_succeeds():
    calls, waits, hooks = [], [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise DeviceUnreachableError("down")
        return "ok"

    policy = RetryPolicy(attempts=4, base_delay=0.1, jitter=0)
    result = call_with_retry(flaky, policy, idempotent=True, sleep=waits.append,
                             on_retry=lambda a, e, d: hooks.append(a))
    assert result == "ok" and len(calls) == 3
    assert waits == [0.1, 0.2] and hooks == [0, 1]


def test_call_with_retry_gives_up_after_attempts_and_on_fatal():
    waits: list[float] = []
    policy = RetryPolicy(attempts=3, base_delay=0.1, jitter=0)

    def down():
        raise DeviceUnreachableError("down")

    with pytest.raises(DeviceUnreachableError):
        call_with_retry(down, policy, idempotent=True, sleep=waits.append)
    assert len(waits) == 2

    count = []

    def denied():
        count.append(1)
        raise DeviceAuthError("bad key")

    with pytest.raises(DeviceAuthError):
        call_with_retry(denied, policy, idempotent=True, sleep=waits.append)
    assert len(count) == 1

    with pytest.raises(DeviceUnreachableError):
        call_with_retry(down, policy, idempotent=False, sleep=waits.append)
    assert len(waits) == 2  # no new waits: never retried

