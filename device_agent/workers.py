"""Daemon-side handles of the isolated worker processes (one per runtime), restarted after a crash or hang."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from device_agent.errors import AgentError

log = logging.getLogger(__name__)
POLL_S = 0.1  # how often a waiting daemon thread checks deadline, caller and shutdown
CANCEL_GRACE_S = 2.0  # a cancelled worker must answer within this, else it is killed
# Signals that come from outside the runtime (an operator, systemd, the kernel's out-of-memory killer), as
# opposed to crash signals (SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL) that a corrupt model can cause.
EXTERNAL_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT})


def describe_exit(code: int | None) -> str:
    """A worker's return code in words: exit status, or the signal that ended it."""
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-code} ({name})"
    return f"exit code {code}"


def _died(runtime: str, code: int | None, phase: str) -> AgentError:
    if code is not None and code < 0 and -code in EXTERNAL_SIGNALS:
        return AgentError(
            "INTERNAL",
            f"the {runtime} worker was {describe_exit(code)} while {phase}: not a crash of the runtime, something "
            "outside the agent killed it (an operator, a service manager, or the kernel's out-of-memory killer: "
            "see `dmesg`). The agent restarted its worker; retry, and check the device's free memory",
        )
    return AgentError(
        "INVALID_ARGUMENT" if phase == "loading" else "INTERNAL",
        f"the {runtime} runtime crashed ({describe_exit(code)}) while {phase} the artifact; the agent restarted "
        "its worker. The artifact is probably corrupt: re-export it",
    )


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

    def start(self, is_active: Callable[[], bool] = lambda: True) -> None:
        """Start the worker if it is not running and wait until its runtime is imported."""
        with self._lock:
            self._start(is_active)

    def _start(self, is_active: Callable[[], bool]) -> None:
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
        deadline = time.monotonic() + self.start_timeout_s
        while not parent.poll(POLL_S):  # in slices: a caller that left, or a shutdown, stops the wait
            if not is_active():
                self.stop(force=True)
                raise AgentError("CANCELLED", f"stopped starting the {self.runtime} worker: its caller went away")
            if time.monotonic() >= deadline:
                self.stop(force=True)
                raise AgentError("UNAVAILABLE", f"the {self.runtime} worker did not start within "
                                 f"{self.start_timeout_s:.0f} s; raise worker_start_timeout_s in the agent config")
        try:
            msg = parent.recv()
        except EOFError:
            code = proc.wait(timeout=5)
            self.stop()
            raise AgentError("INTERNAL", f"the {self.runtime} worker died while starting "
                             f"({describe_exit(code)})") from None
        if msg[0] != "ready":
            self.stop()
            raise AgentError(msg[1], msg[2])
        self.version = msg[1]
        log.info("started %s worker pid %d (%s)", self.runtime, proc.pid, self.version)

    def run(self, request: dict, timeout_s: float, on_phase: Callable[[str], None] | None = None,
            is_active: Callable[[], bool] = lambda: True, *, deadline: float | None = None) -> dict:
        """Send one benchmark request and wait for its result until ``deadline`` (monotonic; default
        ``timeout_s`` from now). ``timeout_s`` is the job's whole budget, named in the timeout error.

        When ``is_active()`` turns false (nobody wants the result, or the agent is stopping) the worker is told
        to cancel, which it does between two inferences; one that does not answer within
        :data:`CANCEL_GRACE_S` (stuck inside the runtime) is killed.
        """
        if deadline is None:
            deadline = time.monotonic() + timeout_s
        with self._lock:
            self._start(is_active)
            conn = self._conn
            assert conn is not None  # start() guarantees it; not user input
            conn.send(request)
            phase = "loading"
            cancelled_at: float | None = None
            while True:
                now = time.monotonic()
                remaining = deadline - now
                if remaining <= 0:
                    self.stop(force=True)
                    self.restarts += 1
                    raise AgentError(
                        "DEADLINE_EXCEEDED",
                        f"benchmark did not finish within {timeout_s:g} s (while {phase}); the worker was "
                        "restarted. Raise the request's timeout (BenchSpec.timeout_s / --timeout) or the agent's "
                        "default_timeout_s, or lower the policy's max_runs / max_seconds",
                    )
                if cancelled_at is None and not is_active():
                    cancelled_at = now
                    with contextlib.suppress(OSError, ValueError):
                        conn.send(("cancel",))
                elif cancelled_at is not None and now - cancelled_at > CANCEL_GRACE_S:
                    self.stop(force=True)
                    self.restarts += 1
                    raise AgentError("CANCELLED", f"the benchmark was cancelled; the {self.runtime} worker did not "
                                     f"stop within {CANCEL_GRACE_S:g} s and was restarted")
                try:
                    if not conn.poll(min(remaining, POLL_S)):
                        continue
                    msg = conn.recv()
                except (EOFError, OSError):
                    if self._conn is not conn:  # stop() ran on another thread: the agent is shutting down
                        raise AgentError("UNAVAILABLE", "the agent is shutting down; retry on a running agent") from None
                    code = self._exitcode()
                    self.stop(force=True)
                    self.restarts += 1
                    raise _died(self.runtime, code, phase) from None
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
