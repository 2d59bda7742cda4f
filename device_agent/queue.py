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


class BenchQueue:
    """Runs submitted jobs one after another. At most ``capacity`` jobs wait or run; more are refused.

    A job id that already finished returns its stored result; one that is queued or running is joined.
    """

    def __init__(self, capacity: int, results_kept: int) -> None:
        self.capacity = capacity
        self.results_kept = results_kept
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)
        self._tickets = 0
        self._serving = 0
        self._depth = 0
        self._skipped: set[int] = set()
        self._inflight: dict[str, Future] = {}
        self._done: OrderedDict[str, object] = OrderedDict()

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
            return self._done.get(job_id)

    def submit(self, job_id: str, fn: Callable[[float], T], is_active: Callable[[], bool] = lambda: True) -> T:
        """Run ``fn(queued_seconds)`` in turn and return its result (or raise its error).

        ``is_active`` lets a waiting caller that went away (RPC cancelled) leave the queue.
        """
        with self._lock:
            if job_id and job_id in self._done:
                self._done.move_to_end(job_id)
                return self._done[job_id]  # type: ignore[return-value]
            joined = self._inflight.get(job_id) if job_id else None
            if joined is None:
                if self._depth >= self.capacity:
                    raise AgentError("RESOURCE_EXHAUSTED",
                                     f"the agent's queue is full ({self.capacity} benchmarks waiting or running); "
                                     "retry later or raise queue_capacity in the agent config")
                self._depth += 1
                ticket = self._tickets
                self._tickets += 1
                future: Future = Future()
                if job_id:
                    self._inflight[job_id] = future
        if joined is not None:
            return joined.result()
        enqueued = time.monotonic()
        try:
            with self._turn:
                while self._serving != ticket:
                    self._turn.wait(0.2)
                    if not is_active() and self._serving != ticket:
                        raise AgentError("CANCELLED", "the caller went away while the benchmark was queued")
            try:
                result = fn(time.monotonic() - enqueued)
            except BaseException as exc:
                future.set_exception(exc)
                raise
            future.set_result(result)
            with self._lock:
                if job_id:
                    self._done[job_id] = result
                    while len(self._done) > self.results_kept:
                        self._done.popitem(last=False)
            return result
        finally:
            with self._lock:
                self._depth -= 1
                if job_id:
                    self._inflight.pop(job_id, None)
                if not future.done():
                    future.set_exception(AgentError("CANCELLED", "the job was cancelled while queued"))
                self._advance(ticket)

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
