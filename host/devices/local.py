"""A private agent on this machine (``--device local``): ``sculpt-agent serve --port 0`` as a subprocess."""

from __future__ import annotations

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
        self._log_path: Path | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """PID of the agent process while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> LocalAgent:
        """Start the agent and wait until its health service reports SERVING."""
        self._tmp = tempfile.mkdtemp(prefix="sculpt-local-agent-")
        store = self.store_dir or Path(self._tmp) / "store"
        self._log_path = Path(self._tmp) / "agent.log"
        cmd = [self.python, "-m", "device_agent.cli", "serve", "--host", "127.0.0.1", "--port", "0",
               "--store", str(store)]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        if self.preload:
            cmd += ["--preload", ",".join(self.preload)]
        log.info("starting local agent: %s", " ".join(cmd))
        err = self._log_path.open("wb")
        try:
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
        finally:
            err.close()
        try:
            self.port = self._read_port()
            self.target = f"127.0.0.1:{self.port}"
            self._wait_serving()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_port(self) -> int:
        found: list[int] = []

        def reader() -> None:
            assert self._proc is not None and self._proc.stdout is not None  # set by start()
            for raw in self._proc.stdout:
                match = _LISTENING.match(raw.decode(errors="replace"))
                if match and not found:
                    found.append(int(match["port"]))
                # Keep draining: an agent blocked on a full stdout pipe would stop answering.

        thread = threading.Thread(target=reader, daemon=True, name="local-agent-stdout")
        thread.start()
        self._reader = thread
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
        tail = ""
        if self._log_path is not None and self._log_path.exists():
            tail = self._log_path.read_text(errors="replace")[-2000:]
        state = f"exited with code {code}" if code is not None else "is still running"
        return DeviceUnreachableError(f"the local agent {what} (it {state}). Its log:\n{tail}",
                                      hint="run `sculpt-agent serve --port 0` yourself to see the problem")

    def client(self, timeout: float = 30.0) -> AgentClient:
        """A new client connected to this agent."""
        if not self.target:
            raise DeviceUnreachableError("the local agent is not started", hint="use `with LocalAgent() as agent:`")
        return AgentClient(self.target, timeout=timeout)

    def stop(self) -> None:
        """Stop the agent (SIGTERM, then SIGKILL after 10 s) and remove its temporary store."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            if self._reader is not None:
                self._reader.join(timeout=5)  # EOF after the exit; then the pipe can be closed
                self._reader = None
            if proc.stdout is not None:
                proc.stdout.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self.target = ""

    def __enter__(self) -> LocalAgent:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
