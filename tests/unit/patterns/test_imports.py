"""The pattern library stands on its own: importing it loads neither the host nor the agent, and no module of
it imports them (its errors come from patterns.errors, which host.errors re-exports)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import patterns

MODULES = ["patterns"] + sorted(f"patterns.{p.stem}" for p in Path(patterns.__file__).parent.glob("*.py")
                                if p.stem != "__init__")


def test_importing_every_pattern_module_loads_neither_host_nor_the_agent():
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in MODULES) +
            "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    top = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert "patterns" in top and "torch" in top
    assert not top & {"host", "device_agent"}, sorted(top & {"host", "device_agent"})


def test_no_pattern_module_imports_host_or_the_agent_even_lazily():
    for path in Path(patterns.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                assert name.split(".")[0] not in {"host", "device_agent"}, f"{path.name} imports {name}"


def test_host_errors_are_the_pattern_library_errors():
    from host import errors
    from patterns import errors as base

    assert errors.PlanError is base.PlanError and errors.SculptError is base.SculptError
    assert issubclass(errors.DeviceError, base.SculptError)


def test_the_error_root_and_the_cli_entry_load_no_torch():
    """host.errors imports patterns.errors: that must not pull in the library (torch), or `sculpt-host --help`
    and every error path would pay for importing torch. The search config holds benchmark policies: their
    module must not load protobuf or gRPC either."""
    code = ("import json, sys\nimport patterns.errors, patterns.plan, host.errors, host.cli.main, host.search.config\n"
            "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert not loaded & {"torch", "google", "grpc"}, sorted(loaded & {"torch", "google", "grpc"})  # nor protobuf


def test_the_public_names_load_on_first_use():
    assert sorted(patterns.__all__) == sorted(patterns._EXPORTS)
    for name in patterns.__all__:
        assert getattr(patterns, name) is not None
