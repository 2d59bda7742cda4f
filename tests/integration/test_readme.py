"""The README's examples, executed: every Python snippet runs as written (in a folder holding the files they
name), every `sculpt-host` / `sculpt-agent` command line parses with today's flags, and the ones that need
neither a board, a network nor a finished search run end to end."""

from __future__ import annotations

import re
import runpy
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)

pytestmark = [pytest.mark.integration]


def blocks(lang: str) -> list[str]:
    return [body for fence, body in FENCE.findall(README.read_text()) if fence == lang]


def command_lines() -> list[str]:
    """Every shell line of the README that runs one of our commands (continuations joined, comments cut)."""
    text = "\n".join(body for fence, body in FENCE.findall(README.read_text()) if fence in ("bash", ""))
    lines = []
    for line in text.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line.startswith(("sculpt-host", "sculpt-agent")):
            lines.append(line)
    return lines


def argv_of(line: str) -> list[str]:
    """The arguments, without shell redirection and with `[--optional]` documentation brackets opened."""
    line = line.split(" > ")[0]
    line = re.sub(r"\[([^\]]*)\]", r"\1", line)
    return shlex.split(line)


USER_PACKAGE = textwrap.dedent("""
    from torch import nn

    def build(num_classes=10, in_channels=3, image_size=32):
        return nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
""")


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    """A folder with the files the snippets name: mypkg.nets:build, weights.pt, model.pte."""
    import torch

    from host.export import export_pte

    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "nets.py").write_text(USER_PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    from mypkg.nets import build

    model = build().eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    export_pte(model, (torch.randn(1, 3, 32, 32),), tmp_path / "model.pte")
    return tmp_path


@pytest.mark.executorch
@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_snippet_runs_as_written(index, workspace, capsys):
    source = blocks("python")[index]
    path = workspace / f"snippet{index}.py"
    path.write_text(source)
    runpy.run_path(str(path), run_name="__main__")


@pytest.mark.parametrize("line", command_lines())
def test_command_line_parses(line):
    argv = argv_of(line)
    if argv[0] == "sculpt-host":
        from host.cli.main import build_parser
    else:
        from device_agent.cli import build_parser
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as exc:  # argparse exits 2 on an unknown flag or a bad value
        pytest.fail(f"`{line}` does not parse (exit {exc.code})")


# the command lines that need no board, network or finished run: executed for real
RUNNABLE = ("sculpt-host inspect", "sculpt-host export --model resnet20", "sculpt-agent info")


@pytest.mark.slow
@pytest.mark.executorch
def test_runnable_command_lines_succeed(workspace):
    import json

    (workspace / "plan.json").write_text(json.dumps(json.loads(blocks("json")[0])))  # the README's own plan
    script_dir = Path(sys.executable).parent
    ran = 0
    for line in command_lines():
        if not line.startswith(RUNNABLE) or "--from-run" in line:
            continue
        argv = argv_of(line)
        done = subprocess.run([str(script_dir / argv[0]), *argv[1:]], cwd=workspace, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"`{line}` failed:\n{done.stderr[-2000:]}"
        ran += 1
    assert ran >= 6
