"""host.devices is transport only: none of its modules imports the fleet feature, the search or the CLI (even
lazily), its public names load on first use, and host.fleet builds on it."""

from __future__ import annotations

import ast
from pathlib import Path

import host.devices
import host.fleet

ABOVE = ("host.fleet", "host.search", "host.cli", "host.report")


def _imports(package) -> dict[str, set[str]]:
    found = {}
    for path in Path(package.__file__).parent.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        found[path.stem] = names
    return found


def test_no_transport_module_imports_what_is_built_on_it():
    for module, names in _imports(host.devices).items():
        above = sorted(n for n in names if n.startswith(ABOVE))
        assert not above, f"host/devices/{module}.py imports {above}"


def test_the_fleet_feature_uses_the_transport():
    used = set().union(*_imports(host.fleet).values())
    assert any(n.startswith("host.devices") for n in used)


def test_the_public_names_load_on_first_use():
    assert sorted(host.devices.__all__) == sorted(host.devices._EXPORTS)
    for name in host.devices.__all__:
        assert getattr(host.devices, name).__name__ == name
