"""Ending the agent together with the process that started it (``sculpt-agent serve --exit-with-parent``).

A private agent (``--device local``) must not outlive its host process, however that process ends: a
SIGKILL runs no cleanup in the host, so the agent has to notice on its own. Two independent signs:

- **stdin**: the parent keeps the write end of a pipe on our stdin and never writes. The kernel closes it
  when the parent process dies, whatever killed it; we read end of file. Works on every POSIX system.
- **PR_SET_PDEATHSIG** (Linux): the kernel sends us a signal when the parent dies, even if the pipe's write
  end leaked into another process (a forked child of the host keeps it open). The signal also fires when
  only the *thread* that started us exits, so it is acted on only when our parent process really changed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable

from device_agent.errors import AgentConfigError

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
PARENT_DEATH_SIGNAL = signal.SIGUSR1  # not SIGTERM: a spurious one (thread exit) must be told apart


def watch_parent(on_gone: Callable[[str], None]) -> None:
    """Call ``on_gone(reason)`` (once) when the parent process dies. Needs stdin to be a pipe from it."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        mode = 0
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        raise AgentConfigError("--exit-with-parent watches stdin for the parent's end of a pipe, but stdin is not "
                               "a pipe; start the agent with stdin connected to a pipe the parent keeps open")
    parent = os.getppid()
    fired = threading.Event()

    def gone(reason: str) -> None:
        if not fired.is_set():
            fired.set()
            log.info("%s: shutting down", reason)
            on_gone(reason)

    def on_signal(_signum, _frame) -> None:
        if os.getppid() != parent:
            gone(f"parent process {parent} is gone (parent-death signal)")

    # The handler first: the signal's default action would end the process without cleaning up.
    previous = signal.signal(PARENT_DEATH_SIGNAL, on_signal)
    if not _set_pdeathsig(PARENT_DEATH_SIGNAL):
        signal.signal(PARENT_DEATH_SIGNAL, previous)
    if os.getppid() != parent:  # died before the signal was armed
        gone(f"parent process {parent} is gone")

    def read_stdin() -> None:
        while True:
            try:
                data = os.read(0, 4096)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                gone(f"parent process {parent} closed our stdin (it exited or was killed)")
                return

    threading.Thread(target=read_stdin, name="parent-watch", daemon=True).start()


def _set_pdeathsig(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0:
            return True
    log.debug("prctl(PR_SET_PDEATHSIG) unavailable; relying on the stdin pipe")
    return False
