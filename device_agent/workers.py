"""Daemon-side handles of the isolated worker processes (one per runtime), restarted after a crash or hang."""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from device_agent.errors import AgentError

log = logging.getLogger(__name__)


class WorkerHandle:
    """One worker process for one runtime. Not thread-safe: the agent runs one benchmark at a time."""

    def __init__(self, runtime: str, start_timeout_s: float, programs_cached: int,
                 cpus: tuple[int, ...] = ()) -> None:
        self.runtime = runtime
        self.cpus = cpus
        self.start_timeout_s = start_timeout_s
        self.programs_cached = programs_cached
        self.version = ""
        self.restarts = 0  # workers replaced after a crash, a hang or an unexpected exit
        self._proc = None
        self._conn = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """PID of the running worker, or None."""
        return self._proc.pid if self._alive() else None

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the worker if it is not running and wait until its runtime is imported."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._alive():
            return
        if self._proc is not None:
            self.restarts += 1
        self.stop()
        # A fresh interpreter (never fork a process that runs gRPC threads), talking over a socketpair with
        # multiprocessing's pickling Connection. Unlike multiprocessing's 'spawn' this does not re-import the
        # parent's __main__, so embedding the agent in any script works.
        ours, theirs = socket.socketpair()
        cmd = [sys.executable, "-m", "device_agent.worker_launch", self.runtime, str(theirs.fileno()),
               str(self.programs_cached), ",".join(map(str, self.cpus))]
        try:
            # The runtimes log on stdout; keep the daemon's stdout for its own "listening on" line.
            proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                    stdout=_stderr_fd())
        finally:
            theirs.close()
        parent = Connection(ours.detach())
        self._proc, self._conn = proc, parent
        if not parent.poll(self.start_timeout_s):
            self.stop()
            raise AgentError("UNAVAILABLE", f"the {self.runtime} worker did not start within "
                             f"{self.start_timeout_s:.0f} s; raise worker_start_timeout_s in the agent config")
        try:
            msg = parent.recv()
        except EOFError:
            code = proc.wait(timeout=5)
            self.stop()
            raise AgentError("INTERNAL", f"the {self.runtime} worker died while starting (exit code {code})") from None
        if msg[0] != "ready":
            self.stop()
            raise AgentError(msg[1], msg[2])
        self.version = msg[1]
        log.info("started %s worker pid %d (%s)", self.runtime, proc.pid, self.version)

    def run(self, request: dict, timeout_s: float, on_phase: Callable[[str], None] | None = None) -> dict:
        """Send one benchmark request and wait at most ``timeout_s`` for its result."""
        with self._lock:
            self._start()
            assert self._conn is not None  # start() guarantees it; not user input
            self._conn.send(request)
            deadline = time.monotonic() + timeout_s
            phase = "loading"
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._conn.poll(remaining):
                    self.stop(force=True)
                    self.restarts += 1
                    raise AgentError(
                        "DEADLINE_EXCEEDED",
                        f"benchmark did not finish within {timeout_s:g} s (while {phase}); the worker was "
                        "restarted. Raise the request's timeout (BenchSpec.timeout_s / --timeout) or the agent's "
                        "default_timeout_s, or lower the policy's max_runs / max_seconds",
                    )
                try:
                    msg = self._conn.recv()
                except (EOFError, OSError):
                    code = self._exitcode()
                    self.stop(force=True)
                    self.restarts += 1
                    raise AgentError(
                        "INVALID_ARGUMENT" if phase == "loading" else "INTERNAL",
                        f"the {self.runtime} runtime crashed (exit code {code}) while {phase} the artifact; "
                        "the agent restarted its worker. The artifact is probably corrupt: re-export it",
                    ) from None
                if msg[0] == "phase":
                    phase = msg[1]
                    if on_phase is not None:
                        on_phase(phase)
                elif msg[0] == "result":
                    return msg[1]
                else:
                    raise AgentError(msg[1], msg[2])

    def _exitcode(self) -> int | None:
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, force: bool = False) -> None:
        """Stop the worker: ask it to exit (unless ``force``), then kill it if it is still alive."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if force and proc is not None and proc.poll() is None:
            proc.kill()
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
            conn.close()
        if proc is not None:
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # e.g. pytest's captured stderr has no descriptor
        return None


class WorkerPool:
    """Lazily started workers, one per runtime name."""

    def __init__(self, start_timeout_s: float, programs_cached: int, cpus: tuple[int, ...] = ()) -> None:
        self._cpus = cpus
        self._start_timeout_s = start_timeout_s
        self._programs_cached = programs_cached
        self._workers: dict[str, WorkerHandle] = {}
        self._lock = threading.Lock()

    def get(self, runtime: str) -> WorkerHandle:
        """The handle for ``runtime`` (created, not started, on first use)."""
        with self._lock:
            if runtime not in self._workers:
                self._workers[runtime] = WorkerHandle(runtime, self._start_timeout_s, self._programs_cached,
                                                      self._cpus)
            return self._workers[runtime]

    def stop_all(self) -> None:
        """Stop every worker."""
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.stop()
