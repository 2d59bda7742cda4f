"""The agent's extras must stay light: a Pi installs `autosculpt[agent,litert]` without host dependencies."""

import json
import subprocess
import sys

import pytest

HOST_ONLY = {"torch-geometric", "stable-baselines3", "torch-pruning", "torch", "gymnasium", "paramiko"}


def _resolve(repo_root, tmp_path, spec):
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
         "--report", str(report), spec],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"pip could not resolve {spec}:\n{proc.stderr[-2000:]}")
    data = json.loads(report.read_text())
    return {item["metadata"]["name"].lower().replace("_", "-") for item in data["install"]}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("runtime,runtime_pkg", [("litert", "ai-edge-litert")])
def test_agent_extras_pull_no_host_dependencies(repo_root, tmp_path, runtime, runtime_pkg):
    names = _resolve(repo_root, tmp_path, f".[agent,{runtime}]")
    assert {"grpcio", "protobuf", "psutil", runtime_pkg, "autosculpt"} <= names
    assert not names & HOST_ONLY, f"agent install would pull host packages: {sorted(names & HOST_ONLY)}"
