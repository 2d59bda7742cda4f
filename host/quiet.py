"""What ``sculpt-host`` lets through to stderr: our own records, and third-party output only when asked.

By default (verbosity 0) stderr carries only lines of this project: records of our loggers (``host``,
``device_agent``, ``patterns``) at WARNING and above, progress lines, ``error:`` lines. Third-party loggers
below ERROR and third-party Python warnings are hidden; ``-v`` shows them (and our INFO), ``-vv`` shows
everything (DEBUG). Python warnings go through logging: a warning issued by our code is a record of the
issuing module's logger, any other one a record of ``py.warnings``.

C and C++ code writes past any Python setting: TensorFlow/absl and LiteRT's delegate straight to file
descriptor 2, ExecuTorch (its cpuinfo probe when a process first loads a program) through pybind11, which
forwards ``std::cerr`` to ``sys.stderr`` during the call. ExecuTorch's log level is fixed when it is compiled
(``ET_MIN_LOG_LEVEL``); its Python runtime has no switch. :func:`muted` holds such output back around the
calls that make it: inside the block fd 2 (optionally fd 1) points to a temporary file and the calling
thread's ``sys.stderr`` writes go there too; what was written is shown on stderr when the block raises (the
user must see what a failing library said) or at ``-v``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from typing import TextIO

OUR_PACKAGES = ("host", "device_agent", "patterns")
THIRD_PARTY_WARNINGS = "py.warnings"  # the logger name logging.captureWarnings uses too
PLAIN_FORMAT = "%(levelname)s %(name)s: %(message)s"
_HANDLER_MARK = "_sculpt_quiet"


def is_ours(logger_name: str) -> bool:
    """True for loggers of this project's packages (``host``, ``host.export.pte``, ``patterns``, ...)."""
    return logger_name.split(".", 1)[0] in OUR_PACKAGES


def stderr_is_terminal() -> bool:
    """True when stderr is an interactive terminal (live progress bars); False when piped or a file."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def levels(verbosity: int) -> tuple[int, int]:
    """(lowest level shown for our loggers, lowest level shown for third-party loggers)."""
    if verbosity <= 0:
        return logging.WARNING, logging.ERROR
    if verbosity == 1:
        return logging.INFO, logging.WARNING
    return logging.DEBUG, logging.DEBUG


class _Gate(logging.Filter):
    """Lets a record through when it reaches the level of its side (ours or third-party)."""

    def __init__(self, verbosity: int) -> None:
        super().__init__()
        self.ours, self.others = levels(verbosity)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= (self.ours if is_ours(record.name) else self.others)


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when a record is emitted (the real stderr inside a
    :func:`muted` block)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return real_stream(sys.stderr)  # type: ignore[return-value]

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ and setStream assign it
        pass


def _handler(verbosity: int) -> logging.Handler:
    handler: logging.Handler
    if stderr_is_terminal():
        try:
            from rich.console import Console
            from rich.logging import RichHandler
        except ImportError:  # the host extra ships rich; stay usable without it
            pass
        else:
            handler = RichHandler(console=Console(file=_RealStderr()), show_path=False,  # type: ignore[arg-type]
                                  rich_tracebacks=verbosity > 1)
            handler.setFormatter(logging.Formatter("%(message)s"))
            return handler
    # Piped, CI or a log file: one plain line per record, no colours, no wrapping at 80 columns.
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    return handler


def _issuer() -> str:
    """``__name__`` of the module whose code called ``warnings.warn`` (the first frame outside the warnings
    machinery and this module)."""
    frame = sys._getframe(1)
    skip = {"warnings", "_py_warnings", __name__}  # _py_warnings: the Python part of warnings since 3.14
    while frame is not None and frame.f_globals.get("__name__") in skip:
        frame = frame.f_back
    return str(frame.f_globals.get("__name__", "")) if frame is not None else ""


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if file is not None:  # an explicit destination: not ours to redirect
        warnings._showwarning_orig(message, category, filename, lineno, file, line)  # type: ignore[attr-defined]
        return
    issuer = _issuer()
    logger = logging.getLogger(issuer if is_ours(issuer) else THIRD_PARTY_WARNINGS)
    logger.warning("%s: %s (%s:%s)", category.__name__, message, filename, lineno)


@contextlib.contextmanager
def configured(verbosity: int) -> Iterator[None]:
    """Logging and warnings of one ``sculpt-host`` command at ``verbosity`` (0 default, 1 ``-v``, 2 ``-vv``);
    everything is put back on exit, so in-process callers (tests) are left as they were."""
    root = logging.getLogger()
    saved_level, saved_showwarning = root.level, warnings.showwarning
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    handler = _handler(verbosity)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(_Gate(verbosity))
    root.addHandler(handler)
    root.setLevel(min(levels(verbosity)))
    warnings.showwarning = _show_warning
    # torch logs through handlers of its own (not the root's), and sets its level from TORCH_LOGS when it is
    # imported; "-all" is TORCH_LOGS for "torch at ERROR". A TORCH_LOGS the user set wins.
    torch_logger, torch_level, set_env = logging.getLogger("torch"), None, False
    if verbosity <= 0 and "TORCH_LOGS" not in os.environ:
        if "torch" in sys.modules:
            torch_level = torch_logger.level
            torch_logger.setLevel(logging.ERROR)
        else:
            os.environ["TORCH_LOGS"] = "-all"
            set_env = True
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)
        warnings.showwarning = saved_showwarning
        if torch_level is not None:
            torch_logger.setLevel(torch_level)
        if set_env:
            os.environ.pop("TORCH_LOGS", None)


# -- output of native code --------------------------------------------------------------------------------

_lock = threading.RLock()
_terminals: dict[tuple[int, int], TextIO] = {}


class _Routed:
    """``sys.stderr`` (or ``sys.stdout``) inside a :func:`muted` block. What the muting thread writes goes to
    the capture: third-party Python code (litert-torch's rich console), and the C++ ``std::cerr`` that
    ExecuTorch's pybind11 bindings forward to ``sys.stderr``. Other threads (our progress display's refresh,
    log records of the local agent's reader) keep writing to the real stream."""

    def __init__(self, capture: TextIO, real: TextIO) -> None:
        self._owner = threading.get_ident()
        self._capture: TextIO | None = capture
        self.real = real

    def write(self, text: str) -> int:
        capture = self._capture
        if capture is not None and threading.get_ident() == self._owner:
            return capture.write(text)
        return self.real.write(text)

    def flush(self) -> None:
        for stream in (self._capture, self.real):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()

    def close_capture(self) -> None:
        """After the block: anything still holding this object writes to the real stream."""
        self._capture = None

    def __getattr__(self, name: str):  # isatty, fileno, encoding, errors, ...
        return getattr(self.real, name)


def real_stream(stream: object) -> object:
    """The stream our own output should use for ``sys.stderr``/``sys.stdout``: inside a muted block the real
    one rather than the capture."""
    return stream.real if isinstance(stream, _Routed) else stream


class _RealStderr:
    """File-like for our log records: the real stderr at each call, never a muted block's capture. Rich reads
    ``rich_proxied_file`` through it, so a live progress display's stderr proxy is bypassed as before."""

    def __getattr__(self, name: str):
        return getattr(real_stream(sys.stderr), name)


def _terminal(fd: int, like: object) -> TextIO:
    """A line-buffered text stream on a duplicate of ``fd``, one per file it points to. Kept open for good: a
    thread that looked ``sys.stderr`` up inside a block may still write to it after the block."""
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    stream = _terminals.get(key)
    if stream is None:
        stream = open(os.dup(fd), "w", buffering=1,  # noqa: SIM115 - see above
                      encoding=getattr(like, "encoding", None) or "utf-8", errors="backslashreplace")
        _terminals[key] = stream
    return stream


def _flush_c_stdio() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)  # C stdout is block-buffered into a pipe: flush it into the capture


def _fileno(stream: object) -> int | None:
    try:
        return stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


@contextlib.contextmanager
def muted(*, stdout: bool = False) -> Iterator[None]:
    """Hold back what the block writes on stderr: to file descriptor 2 (C and C++ code) and, from the calling
    thread, to ``sys.stderr``; with ``stdout`` the same for fd 1 and ``sys.stdout`` (``--json`` output stays
    clean). The text is written to stderr after the block when the block raises or when our INFO logging is
    on (``-v``); otherwise it is dropped. Our log records still go out as they are emitted.

    Blocks nest. File descriptors belong to the whole process, so blocks of different threads take turns: a
    second thread's text must not land in (and be dropped with) the first one's capture."""
    with _lock, tempfile.TemporaryFile() as capture:
        failed = False
        try:
            with _redirected(capture.fileno(), stdout):
                yield
        except Exception:
            failed = True
            raise
        finally:  # the descriptors are back: replay on the real stderr
            if failed or logging.getLogger(OUR_PACKAGES[0]).isEnabledFor(logging.INFO):
                _replay(capture)


@contextlib.contextmanager
def _redirected(target: int, stdout: bool) -> Iterator[None]:
    """fd 2 (and fd 1) to ``target`` inside the block, and ``sys.stderr`` (``sys.stdout``) routed there for the
    calling thread."""
    names = {2: "stderr", 1: "stdout"} if stdout else {2: "stderr"}
    for name in names.values():
        with contextlib.suppress(AttributeError, OSError, ValueError):
            getattr(sys, name).flush()
    _flush_c_stdio()
    saved: dict[int, int] = {}
    try:
        for fd in names:
            saved[fd] = os.dup(fd)
    except OSError:  # no such descriptor (a daemon's): leave the descriptors alone
        for dup in saved.values():
            os.close(dup)
        saved = {}
    old = {fd: getattr(sys, name) for fd, name in names.items()}
    capture = open(os.dup(target), "w", buffering=1, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
    routed: dict[int, _Routed] = {}
    try:
        for fd in saved:
            os.dup2(target, fd)
        for fd, name in names.items():
            stream = real_stream(old[fd])
            if fd in saved and _fileno(stream) == fd:  # it writes to the descriptor that now points to target
                stream = _terminal(saved[fd], stream)
            routed[fd] = _Routed(capture, stream)
            setattr(sys, name, routed[fd])
        yield
    finally:
        for stream in routed.values():
            stream.flush()
        capture.flush()
        _flush_c_stdio()
        for fd, dup in saved.items():
            os.dup2(dup, fd)
            os.close(dup)
        for fd, name in names.items():
            if fd in routed:
                routed[fd].close_capture()
                if getattr(sys, name) is routed[fd]:
                    setattr(sys, name, old[fd])
        capture.close()


def _replay(capture) -> None:
    capture.seek(0)
    text = capture.read().decode(errors="replace")
    if text:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
        sys.stderr.flush()
