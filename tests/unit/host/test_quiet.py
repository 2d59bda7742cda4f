"""host.quiet: what reaches stderr at each verbosity, and the fd-2 capture around native calls."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import types
import warnings

import pytest

from host.cli.search_cmd import _Display
from host.quiet import configured, is_ours, muted
from host.search.progress import Progress


def _module(name: str) -> types.ModuleType:
    """A module called ``name`` whose ``warn()`` issues a FutureWarning from its own code."""
    module = types.ModuleType(name)
    exec(compile("import warnings\ndef warn(text):\n    warnings.warn(text, FutureWarning)\n",
                 f"{name.replace('.', '/')}.py", "exec"), module.__dict__)
    return module


def _warn_and_log(verbosity: int, capsys) -> str:
    with configured(verbosity), warnings.catch_warnings():
        warnings.simplefilter("always")
        _module("somelib.internals").warn("somelib's deprecation")
        _module("host.search.fake").warn("our own warning")
        logging.getLogger("somelib").warning("somelib's log warning")
        logging.getLogger("somelib").error("somelib's log error")
        logging.getLogger("host.export.fake").warning("our log warning")
        logging.getLogger("host.export.fake").info("our log info")
    return capsys.readouterr().err


def test_third_party_warnings_and_logs_are_hidden_by_default(capsys):
    err = _warn_and_log(0, capsys)
    assert "somelib's deprecation" not in err and "somelib's log warning" not in err
    assert "our log info" not in err
    # ours, and third-party errors, still show; each is one line in the plain (not a terminal) format
    assert "WARNING host.search.fake: FutureWarning: our own warning (host/search/fake.py:3)\n" in err
    assert "WARNING host.export.fake: our log warning\n" in err
    assert "ERROR somelib: somelib's log error\n" in err


def test_v_shows_third_party_warnings_and_our_info(capsys):
    err = _warn_and_log(1, capsys)
    assert "WARNING py.warnings: FutureWarning: somelib's deprecation (somelib/internals.py:3)\n" in err
    assert "WARNING somelib: somelib's log warning\n" in err
    assert "INFO host.export.fake: our log info\n" in err


def test_configured_leaves_logging_and_warnings_as_they_were():
    root = logging.getLogger()
    before = (root.level, list(root.handlers), warnings.showwarning)
    with configured(2):
        assert root.level == logging.DEBUG and warnings.showwarning is not before[2]
    assert (root.level, list(root.handlers), warnings.showwarning) == before


def test_is_ours():
    assert is_ours("host") and is_ours("host.export.pte") and is_ours("device_agent.worker") and is_ours("patterns")
    assert not is_ours("hostile") and not is_ours("torch") and not is_ours("py.warnings")


def test_fd2_text_of_a_failing_call_is_replayed(capfd):
    with pytest.raises(RuntimeError, match="lowering broke"), muted():
        os.write(2, b"[backend.cpp:12] the real reason\n")
        raise RuntimeError("lowering broke")
    assert "[backend.cpp:12] the real reason\n" in capfd.readouterr().err


def test_fd2_text_of_a_call_that_works_is_dropped_unless_verbose(capfd):
    with muted():
        os.write(2, b"[cpuinfo_utils.cpp:71] Reading file\n")
    assert "cpuinfo" not in capfd.readouterr().err
    with configured(1), muted():
        os.write(2, b"[cpuinfo_utils.cpp:71] Reading file\n")
    assert "[cpuinfo_utils.cpp:71] Reading file\n" in capfd.readouterr().err


def test_stdout_capture_keeps_stdout_clean_and_replays_on_stderr(capfd):
    with pytest.raises(ValueError), muted(stdout=True):
        print("[START] Convert")
        os.write(1, b"native stdout\n")
        raise ValueError("conversion failed")
    out, err = capfd.readouterr()
    assert out == ""
    assert "[START] Convert\n" in err and "native stdout\n" in err


def test_on_a_real_stderr_only_the_calling_threads_and_native_writes_are_held(repo_root):
    """With stderr a real descriptor (a pipe here, as in a CLI run): inside a block, native fd-2 writes and the
    calling thread's sys.stderr writes (what pybind11 forwards from C++) are held back; our log records and
    another thread's writes go out as they happen, and stderr works as before after the block."""
    script = textwrap.dedent("""
        import logging, os, sys, threading
        from host.quiet import configured, muted
        with configured(0):
            with muted():
                os.write(2, b"native noise\\n")
                print("forwarded noise", file=sys.stderr)
                logging.getLogger("host.export.pte").warning("our warning inside")
                t = threading.Thread(target=lambda: print("another thread", file=sys.stderr, flush=True))
                t.start(); t.join()
            print("after the block", file=sys.stderr)
            os.write(2, b"native after\\n")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=repo_root)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert lines == ["WARNING host.export.pte: our warning inside", "another thread", "after the block",
                     "native after"]


def _progress(stage: str, done: int, total: int, message: str = "working") -> Progress:
    return Progress(stage, done, total, message)


def test_piped_search_progress_is_plain_rate_limited_lines(capsys):
    now = [0.0]
    with _Display(enabled=True, live=False, clock=lambda: now[0]) as display:
        for t, event in [(1, _progress("prepare", 1, 1, "building the model graph")),
                         (2, _progress("dense", 0, 2)), (3, _progress("dense", 1, 2)),  # within 5 s: held
                         (4, _progress("dense", 2, 2, "dense model measured")),  # a stage's last count shows
                         (5, _progress("search", 0, 4)), (6, _progress("search", 0, 4)),  # no change
                         (7, _progress("search", 1, 4)), (11, _progress("search", 2, 4)),  # 6 s after: shows
                         (12, _progress("search", 3, 4))]:
            now[0] = t
            display.update(event)
    assert capsys.readouterr().err.splitlines() == [
        "progress: prepare 1/1 building the model graph [1 s]",
        "progress: dense 0/2 working [2 s]",
        "progress: dense 2/2 dense model measured [4 s]",
        "progress: search 0/4 working [5 s]",
        "progress: search 2/4 working [11 s]",
    ]


def test_json_search_prints_no_progress(capsys):
    with _Display(enabled=False, live=False) as display:
        display.update(_progress("search", 1, 4))
    assert capsys.readouterr().err == ""
