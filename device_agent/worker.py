"""The isolated benchmark worker: one process per runtime, kept alive across benchmarks.

The runtime is imported once and loaded programs are cached by (sha256, threads). A model that crashes or
hangs the runtime takes down only this process; the daemon (see ``workers.py``) restarts it.
"""

from __future__ import annotations

import hashlib
import logging
import resource
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.bench import Policy, latency_stats, run_policy
from device_agent.errors import AgentError, invalid
from device_agent.runtimes import RUNTIMES, TensorSpec, load_adapter

log = logging.getLogger(__name__)


@dataclass
class _Cached:
    model: Any
    load_ms: float
    first_run_ms: float


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
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        try:
            result = _benchmark(adapter, cache, programs_cached, request, conn)
            conn.send(("result", result))
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
        count = int(np.prod(shape)) if shape else 1
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


def _benchmark(adapter, cache, programs_cached: int, req: dict, conn) -> dict:
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
    timing = run_policy(model.invoke, policy, first_run=not cached,
                        on_timed_start=lambda: conn.send(("phase", "timed")))
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
