"""Which device failures are worth retrying, and the backoff between attempts.

A call is retried only when repeating it cannot do harm: reads (GetInfo, HasArtifact), uploads addressed by
SHA-256 and benchmarks carrying a job id are idempotent; anything else is retried only when the failure
proves the request never reached the agent.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from host.errors import (
    BenchmarkError,
    DeviceAuthError,
    DeviceError,
    DeviceUnreachableError,
    ProtocolMismatchError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Codes meaning "the agent did not run it, try again later": transient transport loss or a full queue.
TRANSIENT_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
# Codes meaning the connection died mid-call; the agent may have started the work, so only idempotent
# calls may be repeated.
AMBIGUOUS_CODES = frozenset({"UNAVAILABLE", "CANCELLED", "UNKNOWN", "INTERNAL"})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: delay_n = min(max_delay, base_delay * multiplier**n) +- jitter."""

    attempts: int = 4
    base_delay: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 8.0
    jitter: float = 0.2

    def delay(self, retry_index: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry_index`` (0-based)."""
        raw = min(self.max_delay, self.base_delay * self.multiplier**retry_index)
        spread = raw * self.jitter
        return max(0.0, raw + (rng or random).uniform(-spread, spread))


def classify(exc: BaseException) -> str:
    """Sort an error into ``transient`` (retry may help), ``fatal`` (never retry) or ``failed``.

    ``failed`` is a benchmark the agent ran and that failed on its own terms (bad artifact, timeout):
    repeating it would fail again.
    """
    if isinstance(exc, (DeviceAuthError, ProtocolMismatchError)):
        return "fatal"
    if isinstance(exc, BenchmarkError):
        return "transient" if (exc.code or "") in TRANSIENT_CODES | AMBIGUOUS_CODES else "failed"
    if isinstance(exc, DeviceUnreachableError):
        return "transient"
    if isinstance(exc, DeviceError):
        return "fatal"
    if isinstance(exc, (ConnectionError, TimeoutError, EOFError)):
        return "transient"
    return "fatal"


def is_retryable(exc: BaseException, idempotent: bool) -> bool:
    """True when repeating the call that raised ``exc`` is both useful and safe."""
    if classify(exc) != "transient":
        return False
    if idempotent:
        return True
    # A non-idempotent call is repeated only when the agent certainly did not act on it.
    return isinstance(exc, BenchmarkError) and exc.code == "RESOURCE_EXHAUSTED"


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    idempotent: bool,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; on a retryable error wait with backoff and call again, up to ``policy.attempts`` times.

    ``on_retry(attempt, exc, delay)`` runs before each wait, e.g. to reconnect a dropped tunnel.
    """
    for attempt in range(max(1, policy.attempts)):
        try:
            return fn()
        except Exception as exc:
            if attempt + 1 >= policy.attempts or not is_retryable(exc, idempotent):
                raise
            delay = policy.delay(attempt)
            log.info("retrying after %s (attempt %d/%d, waiting %.1fs)", exc, attempt + 2, policy.attempts, delay)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover - the loop always returns or raises
