import threading
import time

import pytest

from device_agent.errors import AgentError
from device_agent.queue import BenchQueue


def _wait_for(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_runs_one_at_a_time_in_arrival_order():
    queue = BenchQueue(capacity=5, results_kept=10)
    running = []
    order = []
    overlap = []
    gate = threading.Event()  # the first job holds the queue until all four arrived

    def job(name):
        def fn(_queued, _wanted):
            running.append(name)
            overlap.append(len(running))
            gate.wait(30)
            time.sleep(0.01)
            order.append(name)
            running.remove(name)
            return name
        return fn

    threads = []
    for i in range(4):
        t = threading.Thread(target=queue.submit, args=(f"j{i}", job(f"j{i}")))
        t.start()
        threads.append(t)
        _wait_for(lambda n=i + 1: queue.depth == n, f"job {i} to be queued")  # arrival order, whatever the load
    gate.set()
    for t in threads:
        t.join()
    assert max(overlap) == 1
    assert order == ["j0", "j1", "j2", "j3"]
    assert queue.depth == 0


def test_full_queue_is_refused_and_frees_up():
    queue = BenchQueue(capacity=1, results_kept=10)
    release = threading.Event()
    t = threading.Thread(target=queue.submit, args=("a", lambda _q, _w: release.wait(30)))
    t.start()
    _wait_for(lambda: queue.depth == 1, "the first job to run")
    with pytest.raises(AgentError) as err:
        queue.submit("b", lambda _q, _w: 1)
    assert err.value.code == "RESOURCE_EXHAUSTED"
    release.set()
    t.join()
    assert queue.submit("b", lambda _q, _w: 2) == 2


def test_same_job_id_runs_once():
    queue = BenchQueue(capacity=4, results_kept=10)
    calls = []
    gate = threading.Event()

    def fn(_q, _w):
        calls.append(1)
        gate.wait(30)
        return "result"

    results = []
    # A caller that joined a running job checks its is_active while it waits; the first caller, whose
    # ticket is served at once, never does. Two submitters checked in = both joined the running job.
    checked_in = set()

    def submit(i):
        def is_active():
            checked_in.add(i)
            return True
        results.append(queue.submit("same", fn, is_active=is_active))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    _wait_for(lambda: len(checked_in) == 2, "the other two submitters to join the running job")
    gate.set()
    for t in threads:
        t.join()
    assert results == ["result"] * 3 and len(calls) == 1
    assert queue.submit("same", fn) == "result" and len(calls) == 1


def test_errors_propagate_and_do_not_wedge_the_queue():
    queue = BenchQueue(capacity=2, results_kept=10)

    def boom(_q, _w):
        raise AgentError("INVALID_ARGUMENT", "bad")

    with pytest.raises(AgentError):
        queue.submit("x", boom)
    assert queue.submit("y", lambda _q, _w: "ok") == "ok"


def test_a_caller_that_goes_away_leaves_the_queue():
    queue = BenchQueue(capacity=3, results_kept=10)
    release = threading.Event()
    t = threading.Thread(target=queue.submit, args=("long", lambda _q, _w: release.wait(30)))
    t.start()
    _wait_for(lambda: queue.depth == 1, "the long job to run")
    active = [True]
    errors = []

    def waiter():
        try:
            queue.submit("gone", lambda _q, _w: "never", is_active=lambda: active[0])
        except AgentError as exc:
            errors.append(exc.code)

    w = threading.Thread(target=waiter)
    w.start()
    _wait_for(lambda: queue.depth == 2, "the waiter to be queued behind the long job")
    active[0] = False
    w.join(30)
    assert errors == ["CANCELLED"]
    release.set()
    t.join()
    assert queue.submit("next", lambda _q, _w: "ran") == "ran"  # the skipped ticket did not block the queue


def test_finished_results_are_kept_up_to_the_limit():
    queue = BenchQueue(capacity=2, results_kept=2)
    for name in ("a", "b", "c"):
        queue.submit(name, lambda _q, _w, n=name: n.upper())
    assert queue.finished("a") is None  # oldest forgotten
    assert queue.finished("b") == "B" and queue.finished("c") == "C"
    assert queue.finished("") is None


def test_finished_results_are_kept_within_a_byte_budget():
    queue = BenchQueue(capacity=2, results_kept=100, results_kept_bytes=100, size_of=len)
    for name in ("a", "b", "c"):
        queue.submit(name, lambda _q, _w, n=name: n * 40)
    assert queue.finished("a") is None  # 3 x 40 bytes > 100: the oldest went
    assert queue.finished("b") == "b" * 40 and queue.finished("c") == "c" * 40
    queue.submit("huge", lambda _q, _w: "x" * 500)
    assert queue.finished("huge") is None and queue.finished("c") is not None  # never kept, nothing evicted


def test_a_running_job_learns_when_nobody_waits_any_more():
    queue = BenchQueue(capacity=2, results_kept=10)
    first, retry = [True], [True]
    seen = []
    asked = []  # the job asked the retry whether it still waits: the retry has joined

    def retry_active():
        asked.append(1)
        return retry[0]

    polls = []  # the job's checks of wanted()

    def job(_q, wanted):
        deadline = time.monotonic() + 30
        while wanted() and time.monotonic() < deadline:
            polls.append(1)
            time.sleep(0.01)
        seen.append(wanted())
        return "stopped"

    t = threading.Thread(target=queue.submit, args=("j", job), kwargs={"is_active": lambda: first[0]})
    t.start()
    _wait_for(lambda: queue.depth == 1, "the job to run")
    joined = []

    def join():
        try:
            joined.append(queue.submit("j", job, is_active=retry_active))
        except AgentError as exc:
            joined.append(exc.code)

    j = threading.Thread(target=join)
    j.start()
    _wait_for(lambda: asked, "the retry to join the running job")
    first[0] = False  # the first caller's connection dropped: the retry that joined keeps the job wanted
    # The job must not stop: give it at least 0.1 s and two checks of wanted() begun after the drop, however
    # slowly the machine runs them (a job that stopped wrongly ends the wait through ``seen``).
    after = len(polls) + 2
    time.sleep(0.1)
    _wait_for(lambda: len(polls) > after or seen, "the job to check wanted() twice after the drop")
    assert t.is_alive() and not seen
    retry[0] = False
    t.join(30)
    j.join(30)
    assert seen == [False] and joined in (["stopped"], ["CANCELLED"]) and queue.depth == 0
