import threading
import time

import pytest

from device_agent.errors import AgentError
from device_agent.queue import BenchQueue


def test_runs_one_at_a_time_in_arrival_order():
    queue = BenchQueue(capacity=5, results_kept=10)
    running = []
    order = []
    overlap = []

    def job(name):
        def fn(_queued):
            running.append(name)
            overlap.append(len(running))
            time.sleep(0.05)
            order.append(name)
            running.remove(name)
            return name
        return fn

    threads = []
    for i in range(4):
        t = threading.Thread(target=queue.submit, args=(f"j{i}", job(f"j{i}")))
        t.start()
        threads.append(t)
        time.sleep(0.01)
    for t in threads:
        t.join()
    assert max(overlap) == 1
    assert order == ["j0", "j1", "j2", "j3"]
    assert queue.depth == 0


def test_full_queue_is_refused_and_frees_up():
    queue = BenchQueue(capacity=1, results_kept=10)
    release = threading.Event()
    t = threading.Thread(target=queue.submit, args=("a", lambda _q: release.wait(5)))
    t.start()
    while queue.depth < 1:
        time.sleep(0.005)
    with pytest.raises(AgentError) as err:
        queue.submit("b", lambda _q: 1)
    assert err.value.code == "RESOURCE_EXHAUSTED"
    release.set()
    t.join()
    assert queue.submit("b", lambda _q: 2) == 2


def test_same_job_id_runs_once():
    queue = BenchQueue(capacity=4, results_kept=10)
    calls = []
    gate = threading.Event()

    def fn(_q):
        calls.append(1)
        gate.wait(5)
        return "result"

    results = []
    threads = [threading.Thread(target=lambda: results.append(queue.submit("same", fn))) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    gate.set()
    for t in threads:
        t.join()
    assert results == ["result"] * 3 and len(calls) == 1
    assert queue.submit("same", fn) == "result" and len(calls) == 1


def test_errors_propagate_and_do_not_wedge_the_queue():
    queue = BenchQueue(capacity=2, results_kept=10)

    def boom(_q):
        raise AgentError("INVALID_ARGUMENT", "bad")

    with pytest.raises(AgentError):
        queue.submit("x", boom)
    assert queue.submit("y", lambda _q: "ok") == "ok"


def test_a_caller_that_goes_away_leaves_the_queue():
    queue = BenchQueue(capacity=3, results_kept=10)
    release = threading.Event()
    t = threading.Thread(target=queue.submit, args=("long", lambda _q: release.wait(5)))
    t.start()
    while queue.depth < 1:
        time.sleep(0.005)
    active = [True]
    errors = []

    def waiter():
        try:
            queue.submit("gone", lambda _q: "never", is_active=lambda: active[0])
        except AgentError as exc:
            errors.append(exc.code)

    w = threading.Thread(target=waiter)
    w.start()
    time.sleep(0.05)
    active[0] = False
    w.join(5)
    assert errors == ["CANCELLED"]
    release.set()
    t.join()
    assert queue.submit("next", lambda _q: "ran") == "ran"  # the skipped ticket did not block the queue


def test_finished_results_are_kept_up_to_the_limit():
    queue = BenchQueue(capacity=2, results_kept=2)
    for name in ("a", "b", "c"):
        queue.submit(name, lambda _q, n=name: n.upper())
    assert queue.finished("a") is None  # oldest forgotten
    assert queue.finished("b") == "B" and queue.finished("c") == "C"
    assert queue.finished("") is None
