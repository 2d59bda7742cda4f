"""The isolated benchmark worker: one process per runtime, kept alive across benchmarks.

The runtime is imported once and loaded programs are cached by (sha256, threads). A model that crashes or
hangs the runtime takes down only this process; the daemon (see ``workers.py``) restarts it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import queue
import resource
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.bench import Cancelled, Policy, latency_stats, run_policy
from device_agent.errors import AgentError, invalid
from device_agent.runtimes import RUNTIMES, TensorSpec, load_adapter

log = logging.getLogger(__name__)


@dataclass
class _Cached:
    model: Any
    load_ms: float
    first_run_ms: float


ORPHAN_GRACE_S = 3.0  # after the daemon is gone, a benchmark stuck inside one inference gets this long


class _Inbox:
    """Reads the daemon's messages on a thread of its own, so a cancel reaches a benchmark that is running.

    Messages: a request dict (queued for the main thread), ``("cancel",)`` (stops the latest request) and
    None or end of file (the daemon is stopping or gone: stop, then exit even if an inference hangs).
    """

    def __init__(self, conn) -> None:
        self._conn = conn
        self._requests: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        threading.Thread(target=self._read, name="worker-inbox", daemon=True).start()

    def next(self):
        """The next ``(request, cancel_event)``, or None when the worker must exit."""
        return self._requests.get()

    def _read(self) -> None:
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                msg = None
            if msg is None:
                self._cancel.set()
                self._requests.put(None)
                # The main thread exits at the next inference boundary; one that never returns (a hung model)
                # must not leave an orphan holding the CPU after the daemon has died.
                time.sleep(ORPHAN_GRACE_S)
                os._exit(0)
            if isinstance(msg, dict):
                self._cancel = threading.Event()  # in order: a later cancel refers to this request
                self._requests.put((msg, self._cancel))
            elif msg == ("cancel",):
                self._cancel.set()


def worker_main(conn, runtime: str, programs_cached: int) -> None:
    """Entry point of the worker process: import the runtime, then serve benchmark requests until EOF."""
    try:
        adapter = load_adapter(RUNTIMES[runtime])
        adapter.warm_up_import()
        conn.send(("ready", adapter.version()))
    except Exception as exc:  # noqa: BLE001 - report any import failure to the daemon
        conn.send(("error", "FAILED_PRECONDITION", f"cannot start the {runtime} runtime: {type(exc).__name__}: {exc}"))
        return
    cache: OrderedDict[tuple[str, int], _Cached] = OrderedDict()
    inbox = _Inbox(conn)
    while True:
        item = inbox.next()
        if item is None:
            return
        request, cancel = item
        try:
            result = _benchmark(adapter, cache, programs_cached, request, conn, cancel.is_set)
            conn.send(("result", result))
        except Cancelled:
            conn.send(("error", "CANCELLED", "the benchmark was cancelled: its caller went away"))
        except AgentError as exc:
            conn.send(("error", exc.code, exc.message))
        except Exception as exc:  # noqa: BLE001 - the daemon turns this into INTERNAL
            log.exception("benchmark failed")
            conn.send(("error", "INTERNAL", f"{type(exc).__name__}: {exc}"))


def _reset_peak_rss() -> bool:
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so the peak covers this benchmark only.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes(reset_ok: bool) -> int:
    if reset_ok:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_inputs(specs: list[TensorSpec], given: list[tuple[list[int], str, bytes]], seed: int) -> list[np.ndarray]:
    """Inputs from the request: full tensors as given, specs (no data) filled with seeded random values.

    With no inputs in the request, the model's declared inputs are filled.
    """
    rng = np.random.default_rng(seed)
    wanted = given or [(list(s.shape), s.dtype, b"") for s in specs]
    arrays = []
    for i, (shape, dtype, data) in enumerate(wanted):
        dt = np.dtype(dtype)
        count = math.prod(int(d) for d in shape)  # Python integers: np.prod wraps around at 2**63
        if data:
            if len(data) != count * dt.itemsize:
                raise invalid(f"input {i}: {len(data)} bytes of data do not fill shape {shape} of {dtype}")
            arrays.append(np.frombuffer(data, dtype=dt).reshape(shape).copy())
        elif dt.kind == "f":
            arrays.append(rng.uniform(-1.0, 1.0, size=shape).astype(dt))
        elif dt.kind == "b":
            arrays.append(rng.integers(0, 2, size=shape).astype(dt))
        else:
            info = np.iinfo(dt)
            arrays.append(rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=shape).astype(dt))
    return arrays


def _benchmark(adapter, cache, programs_cached: int, req: dict, conn, should_stop) -> dict:
    reset_ok = _reset_peak_rss()
    threads = int(req["threads"])
    key = (req["sha256"], threads)
    entry = cache.get(key)
    cached = entry is not None
    if hasattr(adapter, "set_threads"):
        adapter.set_threads(threads)
    if entry is None:
        t = time.perf_counter_ns()
        model = adapter.load(Path(req["path"]), threads)
        load_ms = (time.perf_counter_ns() - t) / 1e6
        entry = _Cached(model, load_ms, 0.0)
    else:
        cache.move_to_end(key)
    model = entry.model
    inputs = make_inputs(model.input_specs(), req["inputs"], int(req["seed"]))
    model.bind(inputs)
    conn.send(("phase", "running"))
    policy = Policy(**req["policy"])
    if should_stop():  # cancelled while loading: do not start the runs
        raise Cancelled()
    timing = run_policy(model.invoke, policy, first_run=not cached,
                        on_timed_start=lambda: conn.send(("phase", "timed")), should_stop=should_stop)
    if not cached:
        entry.first_run_ms = timing.first_run_ms
        cache[key] = entry
        while len(cache) > max(1, programs_cached):
            cache.popitem(last=False)
    outputs = model.outputs()
    stats = latency_stats(timing.latencies_ms)
    return {
        "runtime_version": adapter.version(),
        "threads": getattr(model, "threads", None) or adapter.current_threads(),
        "latencies_ms": timing.latencies_ms,
        "stats": stats.__dict__,
        "load_ms": entry.load_ms,
        "first_run_ms": entry.first_run_ms,
        "load_cached": cached,
        "warmup_runs": timing.warmup_runs,
        "warmup_s": timing.warmup_s,
        "timed_window_s": timing.timed_window_s,
        "peak_rss_bytes": _peak_rss_bytes(reset_ok),
        "output_sha256": [hashlib.sha256(np.ascontiguousarray(o).tobytes()).hexdigest() for o in outputs],
        "outputs": [(list(o.shape), o.dtype.name, np.ascontiguousarray(o).tobytes()) for o in outputs]
        if req["return_outputs"] else [],
    }


def main(argv: list[str] | None = None) -> int:
    """``RUNTIME FD PROGRAMS_CACHED``: serve on the inherited socket ``FD`` (see ``worker_launch``)."""
    from multiprocessing.connection import Connection

    runtime, fd, programs_cached = list(argv or sys.argv[1:])[:3]
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s worker %(levelname)s %(name)s: %(message)s")
    worker_main(Connection(int(fd)), runtime, int(programs_cached))
    return 0
