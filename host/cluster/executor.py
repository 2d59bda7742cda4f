"""Executors: run a function on its arguments here (:class:`InlineExecutor`) or as Ray tasks (:class:`RayExecutor`).

Ray's own fault tolerance carries the retries: a task whose worker process or node dies is run again on
another worker, up to ``max_retries`` times; an exception raised by the function itself is not retried (it
would fail the same way) and reaches the caller as that exception. A task that is still lost after its
retries comes back as :class:`TaskLost`, so the caller can record it and go on.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from host.errors import ConfigError, MissingDependencyError, SculptError

logger = logging.getLogger(__name__)

# a task whose worker dies is run again this many times (elsewhere when its node is gone) before it is lost
TASK_RETRIES = 3
_LOCAL = re.compile(r"^local(?::(\d+))?$")
_GCS = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d+$")  # HOST:PORT of a head's GCS, as `ray start --head` prints it


class TaskLost(SculptError):
    """A task that never finished: its worker (or node) died on every attempt."""


@dataclass(frozen=True)
class ClusterSpec:
    """Where tasks run, as given to ``--ray``: ``local:N``, ``auto``, ``HOST:PORT`` (the head's address that
    ``ray start --head`` prints) or ``ray://HOST:PORT`` (Ray Client)."""

    address: str

    @classmethod
    def parse(cls, text: str) -> ClusterSpec:
        """Check the text's form (no connection is made): a clear ConfigError otherwise."""
        text = text.strip()
        local = _LOCAL.match(text)
        if local:
            if local.group(1) is not None and int(local.group(1)) < 1:
                raise ConfigError(f"--ray {text}: a local cluster needs at least one worker", hint="e.g. --ray local:2")
            return cls(text)
        if text == "auto" or (text.startswith("ray://") and len(text) > len("ray://")) or _GCS.match(text):
            return cls(text)
        raise ConfigError(f"--ray {text!r} is not a cluster address",
                          hint="use local:N (a private Ray on this machine with N workers), auto (the cluster "
                               "`ray start` joined this machine to), HEAD:6379 or ray://HEAD:10001 (Ray Client)")

    @property
    def local_workers(self) -> int | None:
        """N of ``local:N`` (``local`` alone: this machine's CPU count); None for an existing cluster."""
        local = _LOCAL.match(self.address)
        if not local:
            return None
        return int(local.group(1)) if local.group(1) else (os.cpu_count() or 1)


class Handle(Protocol):
    """What :meth:`Executor.submit` returns: opaque, passed back to :meth:`Executor.next_done`."""


class Executor(Protocol):
    """Runs functions on arguments, possibly elsewhere and several at once."""

    parallelism: int  # how many tasks run at once

    def share(self, obj: Any) -> Any:
        """``obj`` as an argument every task can take without copying it again per task."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Handle:
        """Start ``fn(*args)``; its result comes from :meth:`next_done`."""

    def next_done(self, handles: Sequence[Handle], timeout: float | None = None) -> tuple[Handle, Any] | None:
        """(handle, result) of one finished task among ``handles``, waiting at most ``timeout`` seconds (then
        None). A task that raised gives the exception object as its result (:class:`TaskLost` when its worker
        died on every attempt)."""

    def close(self) -> None:
        """Release the cluster connection (stop a private local cluster)."""


class _Done:
    def __init__(self, value: Any) -> None:
        self.value = value


class InlineExecutor:
    """Runs each task in this process when it is submitted: the search without a cluster."""

    parallelism = 1

    def share(self, obj: Any) -> Any:
        return obj

    def submit(self, fn: Callable[..., Any], *args: Any) -> _Done:
        try:
            return _Done(fn(*args))
        except Exception as exc:  # noqa: BLE001 - handed to the caller, as a remote task's would be
            return _Done(exc)

    def next_done(self, handles: Sequence[_Done], timeout: float | None = None) -> tuple[_Done, Any] | None:
        return handles[0], handles[0].value

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class _Shared:
    """An object in Ray's object store, as a task argument: the reference sits inside a list, so Ray does not
    fetch it for every task; :func:`_run` fetches it once per worker process and keeps it."""

    token: str
    refs: list


_WORKER_CACHE: dict[str, Any] = {}  # in a worker process: token -> the shared object, fetched once
_WORKER_CACHE_SIZE = 4  # a worker that serves several runs keeps the latest few


def _run(fn: Callable[..., Any], *args: Any) -> Any:
    """The one remote function: ``fn(*args)`` with shared arguments taken from this worker's cache. Unpickling
    the run's model and batches costs a fifth of a second to seconds; without the cache every task paid it."""
    resolved = []
    for arg in args:
        if isinstance(arg, _Shared):
            if arg.token not in _WORKER_CACHE:
                import ray

                while len(_WORKER_CACHE) >= _WORKER_CACHE_SIZE:
                    _WORKER_CACHE.pop(next(iter(_WORKER_CACHE)))
                _WORKER_CACHE[arg.token] = ray.get(arg.refs[0])
            arg = _WORKER_CACHE[arg.token]
        resolved.append(arg)
    return fn(*resolved)


class RayExecutor:
    """Ray tasks (one CPU each) on the cluster of ``spec``; use :func:`open_executor`."""

    def __init__(self, spec: ClusterSpec) -> None:
        try:
            import ray
        except ImportError as exc:
            raise MissingDependencyError("ray", "cluster", "--ray (evaluating candidates on a Ray cluster)") from exc
        self._ray = ray
        self.spec = spec
        self._started = False
        self._remote = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=False)(_run)
        workers = spec.local_workers
        # the workers' own output (library warnings of every task) stays in Ray's session logs, not on the terminal
        quiet = {"logging_level": logging.WARNING, "configure_logging": True, "log_to_driver": False}
        try:
            if ray.is_initialized():  # a caller (a test, a notebook) connected already: use that cluster
                pass
            elif workers is not None:
                ray.init(num_cpus=workers, include_dashboard=False, **quiet)
                self._started = True
            else:
                ray.init(address=spec.address, **quiet)
                self._started = True
        except ConnectionError as exc:
            raise ConfigError(f"cannot reach the Ray cluster at {spec.address}: {exc}",
                              hint="start one (`ray start --head` on the head, `ray start --address HEAD:6379` on "
                                   "each worker) or use --ray local:2 for workers on this machine") from exc
        self.parallelism = max(1, int(ray.cluster_resources().get("CPU", 1)))
        logger.info("Ray cluster %s: %d CPUs on %d node(s)", spec.address, self.parallelism,
                    sum(1 for n in ray.nodes() if n.get("Alive")))

    def share(self, obj: Any) -> Any:
        return _Shared(uuid.uuid4().hex, [self._ray.put(obj)])

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._remote.remote(fn, *args)

    def next_done(self, handles: Sequence[Any], timeout: float | None = None) -> tuple[Any, Any] | None:
        ray = self._ray
        ready, _ = ray.wait(list(handles), num_returns=1, timeout=timeout)
        if not ready:
            return None
        handle = ready[0]
        try:
            value = ray.get(handle)
        except ray.exceptions.RayTaskError as exc:  # the function raised: its own exception
            value = getattr(exc, "cause", None) or exc.as_instanceof_cause()
        except ray.exceptions.RayError as exc:  # worker/node died on every attempt, object lost, ...
            value = TaskLost(f"a cluster task was lost after {TASK_RETRIES} retries: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]}",
                             hint="check the Ray workers (`ray status`); the search goes on without it")
        return handle, value

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


def open_executor(ray_address: str | None) -> Executor:
    """The executor for ``--ray`` (None or empty: inline, Ray not imported)."""
    if not ray_address:
        return InlineExecutor()
    return RayExecutor(ClusterSpec.parse(ray_address))
