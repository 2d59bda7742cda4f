"""A private agent on this machine (``--device local``): ``sculpt-agent serve --port 0`` as a subprocess.

The agent must not outlive this process however it ends (a SIGKILL runs none of our cleanup), so it is
started with ``--exit-with-parent`` (it watches a pipe on its stdin whose write end only we hold, plus the
Linux parent-death signal) and, unless a store is given, ``--ephemeral-store`` on a fresh temporary folder
that the agent deletes itself when it stops. Its log goes through a pipe too, so nothing is left on disk.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from host.devices.client import AgentClient
from host.errors import DeviceUnreachableError

log = logging.getLogger(__name__)
_LISTENING = re.compile(r"^listening on (?P<host>\S+):(?P<port>\d+)\s*$")
LOG_TAIL_LINES = 200  # of the agent's log, kept in memory to explain a failure


class LocalAgent:
    """Starts an agent bound to 127.0.0.1 on a free port with its own temporary store; stops it on exit.

    ``store_dir`` keeps artifacts across runs when given; ``config`` is an agent TOML file; ``preload`` names
    runtimes ("executorch", "litert") whose workers start right away instead of on the first benchmark.
    """

    def __init__(self, *, store_dir: Path | None = None, config: Path | None = None,
                 startup_timeout: float = 60.0, python: str | None = None, preload: tuple[str, ...] = ()) -> None:
        self.preload = tuple(preload)
        self.store_dir = store_dir
        self.config = config
        self.startup_timeout = startup_timeout
        self.python = python or sys.executable
        self.target: str = ""
        self.port: int = 0
        self._proc: subprocess.Popen | None = None
        self._tmp: str | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._readers: list[threading.Thread] = []

    @property
    def pid(self) -> int | None:
        """PID of the agent process while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def temp_dir(self) -> Path | None:
        """The temporary store folder while the agent runs (None with a given ``store_dir``)."""
        return Path(self._tmp) if self._tmp is not None else None

    def log_tail(self) -> str:
        """The last lines the agent logged (its stderr)."""
        return "".join(self._log)

    def start(self) -> LocalAgent:
        """Start the agent and wait until its health service reports SERVING."""
        cmd = [self.python, "-m", "device_agent.cli", "serve", "--host", "127.0.0.1", "--port", "0",
               "--exit-with-parent"]
        if self.store_dir is not None:
            cmd += ["--store", str(self.store_dir)]
        else:
            self._tmp = tempfile.mkdtemp(prefix="sculpt-local-agent-")
            cmd += ["--store", self._tmp, "--ephemeral-store"]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        if self.preload:
            cmd += ["--preload", ",".join(self.preload)]
        log.info("starting local agent: %s", " ".join(cmd))
        self._log.clear()
        # stdin: a pipe whose write end only this process holds (Python makes it non-inheritable) and never
        # writes to; the agent stops when it reads end of file, i.e. when we are gone.
        try:
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          stdin=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except OSError:
            self.stop()
            raise
        self._readers = [self._drain(self._proc.stderr, self._on_log_line, "local-agent-stderr")]
        try:
            self.port = self._read_port()
            self.target = f"127.0.0.1:{self.port}"
            self._wait_serving()
        except BaseException:
            self.stop()
            raise
        return self

    def _on_log_line(self, line: str) -> None:
        self._log.append(line)
        log.debug("local agent: %s", line.rstrip())

    @staticmethod
    def _drain(stream, on_line, name: str) -> threading.Thread:
        # Keep draining: an agent blocked on a full pipe would stop answering.
        def reader() -> None:
            for raw in stream:
                on_line(raw.decode(errors="replace"))

        thread = threading.Thread(target=reader, daemon=True, name=name)
        thread.start()
        return thread

    def _read_port(self) -> int:
        found: list[int] = []

        def on_line(line: str) -> None:
            match = _LISTENING.match(line)
            if match and not found:
                found.append(int(match["port"]))

        assert self._proc is not None and self._proc.stdout is not None  # set by start()
        thread = self._drain(self._proc.stdout, on_line, "local-agent-stdout")
        self._readers.append(thread)
        deadline = time.monotonic() + self.startup_timeout
        while not found and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not found:
            raise self._failed(f"did not report its port within {self.startup_timeout:.0f} s")
        return found[0]

    def _wait_serving(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        with self.client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if client.health():
                    return
                if self._proc is not None and self._proc.poll() is not None:
                    break
                time.sleep(0.1)
        raise self._failed("never reported SERVING")

    def _failed(self, what: str) -> DeviceUnreachableError:
        code = self._proc.poll() if self._proc is not None else None
        if code is not None:  # it has exited: let the stderr reader catch up with its last lines
            for thread in self._readers:
                thread.join(timeout=2)
        tail = self.log_tail()[-2000:]
        state = f"exited with code {code}" if code is not None else "is still running"
        return DeviceUnreachableError(f"the local agent {what} (it {state}). Its log:\n{tail}",
                                      hint="run `sculpt-agent serve --port 0` yourself to see the problem")

    def client(self, timeout: float = 30.0) -> AgentClient:
        """A new client connected to this agent."""
        if not self.target:
            raise DeviceUnreachableError("the local agent is not started", hint="use `with LocalAgent() as agent:`")
        return AgentClient(self.target, timeout=timeout)

    def stop(self) -> None:
        """Stop the agent (SIGTERM, then SIGKILL after 10 s); its temporary store goes with it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            for thread in self._readers:
                thread.join(timeout=5)  # EOF after the exit; then the pipes can be closed
            self._readers = []
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        if self._tmp is not None:
            # The agent deletes its ephemeral store itself; this covers an agent that died without cleaning up.
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self.target = ""

    def __enter__(self) -> LocalAgent:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
