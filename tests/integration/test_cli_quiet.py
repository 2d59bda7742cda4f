"""Real ``sculpt-host export`` and ``sculpt-host search`` runs with stderr piped (as in CI or ``2> log``): by
default every stderr line is one of ours, and a piped search prints plain progress lines.

A line is ours when it is one of (see host.quiet):
- a progress line, ``progress: ...`` (the search display and the export status when stderr is not a terminal);
- a record of our loggers in the plain format, ``LEVEL logger: message`` with the logger in ``host``,
  ``device_agent`` or ``patterns``;
- a CLI message: ``error: ...`` and its ``  hint: ...`` line, ``warning: ...``, ``note: ...``, ``interrupted``.
Everything else (torchao's load failures, torch's pytree and LeafSpec warnings, ExecuTorch's cpuinfo probe,
litert-torch's [START]/[DONE] lines, TensorFlow's C++ logging) is third-party.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess

import pytest

# one xdist worker for the module: its fixtures (an export, a search) then run once, not once per worker; they are
# session-scoped because a module fixture is set up again whenever the worker comes back to the module
pytestmark = [pytest.mark.integration, pytest.mark.executorch, pytest.mark.slow, pytest.mark.xdist_group("cli_quiet")]

OURS = re.compile(
    r"progress: "
    r"|(DEBUG|INFO|WARNING|ERROR|CRITICAL) (host|device_agent|patterns)(\.\w+)*: "
    r"|(error|warning|note): "
    r"|  hint: "
    r"|interrupted$"
)
SEARCH_STAGES = ("prepare", "dense", "search")


def _not_ours(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not OURS.match(line)]


def _env() -> dict[str, str]:
    # the user's defaults: no torch or Python warning settings inherited from the test session
    return {k: v for k, v in os.environ.items() if k not in ("TORCH_LOGS", "PYTHONWARNINGS")}


def _sculpt(venv_bin, *args: str) -> subprocess.CompletedProcess:
    run = subprocess.run([str(venv_bin / "sculpt-host"), *args], capture_output=True, text=True, timeout=600,
                         env=_env())
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def _export_args(out, checkpoint, *extra: str) -> list[str]:
    return ["export", "--model", "resnet20", "--checkpoint", str(checkpoint), "--input-shape", "1,1,16,16",
            "--out", str(out), *extra]


@pytest.fixture(scope="session")
def exported(venv_bin, tmp_path_factory, trained_resnet20_mnist):
    """A default export (lowering from scratch: torch.export, XNNPACK, the runtime check)."""
    out = tmp_path_factory.mktemp("quiet-export") / "r20.pte"
    return out, _sculpt(venv_bin, *_export_args(out, trained_resnet20_mnist))


@pytest.fixture(scope="session")
def searched(venv_bin, tmp_path_factory, trained_resnet20_mnist):
    """A tiny latency search on the local agent (dense, floor and 2 candidates measured; no final stage)."""
    run_dir = tmp_path_factory.mktemp("quiet-search") / "run"
    return _sculpt(venv_bin, "search", "--model", "resnet20", "--data", "mnist",
                   "--checkpoint", str(trained_resnet20_mnist), "--device", "local", "--budget", "2",
                   "--final-top", "0", "--target", "0.9x", "--out", str(run_dir), "--image-size", "16",
                   "--channels", "1", "--data-limit", "1500", "--bench-runs", "5", "--recover-steps", "3",
                   "--seed", "0")


def test_default_export_prints_only_our_lines(exported):
    out, run = exported
    assert _not_ours(run.stderr) == []
    progress = [line for line in run.stderr.splitlines() if line.startswith("progress: ")]
    assert len(progress) == 2, run.stderr
    assert progress[0] == f"progress: exporting resnet20 (0 planned layers) to {out} ..."
    assert re.fullmatch(rf"progress: exporting resnet20 \(0 planned layers\) to {re.escape(str(out))}: "
                        r"done in \d+\.\d s", progress[1])
    assert f"wrote {out}" in run.stdout and out.stat().st_size > 0


def test_v_export_shows_third_party_output_and_our_info(exported, venv_bin, trained_resnet20_mnist):
    out, _ = exported
    run = _sculpt(venv_bin, "-v", *_export_args(out, trained_resnet20_mnist))
    # what the default run hid is there: third-party records and warnings, the runtime's cpuinfo probe
    assert _not_ours(run.stderr), run.stderr
    assert "[cpuinfo_utils.cpp" in run.stderr
    assert re.search(r"^INFO host\.export\.pte: exported ", run.stderr, re.M), run.stderr


def test_tflite_export_keeps_litert_progress_off_stdout_and_stderr(venv_bin, tmp_path, trained_resnet20_mnist):
    if importlib.util.find_spec("litert_torch") is None:
        pytest.skip("litert-torch is not installed (the tflite-export extra)")
    out = tmp_path / "r20.tflite"
    run = _sculpt(venv_bin, *_export_args(out, trained_resnet20_mnist, "--format", "tflite", "--json"))
    assert json.loads(run.stdout)["artifact"]["path"] == str(out)  # nothing but the JSON on stdout
    assert _not_ours(run.stderr) == []
    assert "progress: " not in run.stderr  # --json: no status lines either


def test_piped_search_prints_only_our_lines(searched):
    assert _not_ours(searched.stderr) == []
    assert "evaluated 2 candidates" in searched.stdout


def test_piped_search_prints_plain_progress_lines(searched):
    lines = [line for line in searched.stderr.splitlines() if line.startswith("progress: ")]
    stages = [line.split()[1] for line in lines]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s][:3] == list(SEARCH_STAGES), lines
    # each line has the stage's count; every stage's last count shows
    assert all(re.match(r"progress: \w+ \d+/\d+ .* \[\d+ s\]$", line) for line in lines), lines
    assert any(line.startswith("progress: search 2/2 ") for line in lines), lines
    assert any(line.startswith("progress: dense 2/2 ") for line in lines), lines
