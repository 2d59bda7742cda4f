"""One benchmark at a time per agent: a bounded FIFO queue, idempotent by job id."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from device_agent.errors import AgentError

T = TypeVar("T")
POLL_S = 0.2  # how often a waiting caller checks that it is still wanted


class _Job:
    """A queued or running job and the liveness checks of every caller waiting for it."""

    def __init__(self) -> None:
        self.future: Future = Future()
        self.callers: list[Callable[[], bool]] = []

    def wanted(self) -> bool:
        # A retry that joined the job keeps it alive although the first caller (whose connection dropped,
        # which is why it retried) is gone.
        return any(alive() for alive in list(self.callers))


class BenchQueue:
    """Runs submitted jobs one after another. At most ``capacity`` jobs wait or run; more are refused.

    A job id that already finished returns its stored result; one that is queued or running is joined.
    Finished results are kept up to ``results_kept`` of them and ``results_kept_bytes`` in total (by
    ``size_of``), oldest dropped first.
    """

    def __init__(self, capacity: int, results_kept: int, results_kept_bytes: int = 64 * 2**20,
                 size_of: Callable[[object], int] = lambda _result: 0) -> None:
        self.capacity = capacity
        self.results_kept = results_kept
        self.results_kept_bytes = results_kept_bytes
        self._size_of = size_of
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)
        self._tickets = 0
        self._serving = 0
        self._depth = 0
        self._skipped: set[int] = set()
        self._inflight: dict[str, _Job] = {}
        self._done: OrderedDict[str, tuple[object, int]] = OrderedDict()
        self._done_bytes = 0

    @property
    def depth(self) -> int:
        """Jobs waiting or running now."""
        with self._lock:
            return self._depth

    def finished(self, job_id: str):
        """The stored result of a finished job, or None."""
        if not job_id:
            return None
        with self._lock:
            entry = self._done.get(job_id)
            return entry[0] if entry is not None else None

    def submit(self, job_id: str, fn: Callable[[float, Callable[[], bool]], T],
               is_active: Callable[[], bool] = lambda: True) -> T:
        """Run ``fn(queued_seconds, wanted)`` in turn and return its result (or raise its error).

        ``is_active`` lets a caller that went away (RPC cancelled) leave the queue; ``wanted()`` tells a
        running job whether any caller still waits for it, so it can stop early when none does.
        """
        with self._lock:
            if job_id and job_id in self._done:
                self._done.move_to_end(job_id)
                return self._done[job_id][0]  # type: ignore[return-value]
            joined = self._inflight.get(job_id) if job_id else None
            if joined is not None:
                joined.callers.append(is_active)
            else:
                if self._depth >= self.capacity:
                    raise AgentError("RESOURCE_EXHAUSTED",
                                     f"the agent's queue is full ({self.capacity} benchmarks waiting or running); "
                                     "retry later or raise queue_capacity in the agent config")
                self._depth += 1
                ticket = self._tickets
                self._tickets += 1
                job = _Job()
                job.callers.append(is_active)
                if job_id:
                    self._inflight[job_id] = job
        if joined is not None:
            return self._join(joined, is_active)
        enqueued = time.monotonic()
        try:
            with self._turn:
                while self._serving != ticket:
                    self._turn.wait(POLL_S)
                    if not job.wanted() and self._serving != ticket:
                        raise AgentError("CANCELLED", "the caller went away while the benchmark was queued")
            try:
                result = fn(time.monotonic() - enqueued, job.wanted)
            except BaseException as exc:
                job.future.set_exception(exc)
                raise
            job.future.set_result(result)
            if job_id:
                self._keep(job_id, result)
            return result
        finally:
            with self._lock:
                self._depth -= 1
                if job_id:
                    self._inflight.pop(job_id, None)
                if not job.future.done():
                    job.future.set_exception(AgentError("CANCELLED", "the job was cancelled while queued"))
                self._advance(ticket)

    def _join(self, job: _Job, is_active: Callable[[], bool]):
        while True:
            try:
                return job.future.result(timeout=POLL_S)
            except TimeoutError:
                if not is_active():
                    with self._lock:
                        if is_active in job.callers:
                            job.callers.remove(is_active)
                    raise AgentError("CANCELLED", "the caller went away while waiting for the job") from None

    def _keep(self, job_id: str, result) -> None:
        size = int(self._size_of(result))
        with self._lock:
            if size > self.results_kept_bytes:  # too big to keep at all: a repeat re-runs it
                return
            self._done[job_id] = (result, size)
            self._done_bytes += size
            while len(self._done) > self.results_kept or self._done_bytes > self.results_kept_bytes:
                _, (_, dropped) = self._done.popitem(last=False)
                self._done_bytes -= dropped

    def _advance(self, ticket: int) -> None:
        # Called with the lock held. A cancelled waiter leaves a gap: skip tickets that nobody will serve.
        if ticket == self._serving:
            self._serving += 1
            while self._serving in self._skipped:
                self._skipped.discard(self._serving)
                self._serving += 1
        else:
            self._skipped.add(ticket)
        self._turn.notify_all()
