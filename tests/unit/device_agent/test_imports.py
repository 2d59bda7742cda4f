"""The agent must stay light: no host, no patterns, and torch only inside the ExecuTorch adapter."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import device_agent

MODULES = ["device_agent", "device_agent.cli", "device_agent.server", "device_agent.agent",
           "device_agent.worker", "device_agent.worker_launch", "device_agent.energy", "device_agent.runtimes", "device_agent.runtimes.litert"]


def test_importing_the_agent_pulls_neither_host_patterns_nor_torch():
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in MODULES) +
            "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    top = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert "device_agent" in top
    assert not top & {"host", "patterns", "torch", "executorch"}, sorted(top & {"host", "patterns", "torch"})


def test_no_agent_module_imports_host_or_patterns_and_only_one_imports_torch():
    root = Path(device_agent.__file__).parent
    torch_users = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in {"host", "patterns"}, f"{path} imports {name}"
                if top in {"torch", "executorch"}:
                    torch_users.add(path.relative_to(root).as_posix())
    assert torch_users == {"runtimes/executorch.py"}
