"""The host's packages stand in layers and import only downwards (even lazily): the command line on top, the
search under it, then the features and the libraries, the shared roots at the bottom. An import upwards (an
exporter reaching into the CLI, a library into the search) is a circle waiting to happen."""

from __future__ import annotations

import ast
from pathlib import Path

import host

LAYERS = (  # bottom first
    {"host.errors", "host.kinds", "host.cache", "host.quiet"},
    {"host.data", "host.devices", "host.graph", "host.export", "host.report", "host.cluster"},
    {"host.models", "host.fleet"},
    {"host.search"},
    {"host.cli"},
)


def _package(name: str) -> str:
    return ".".join(name.split(".")[:2])


def _imports() -> dict[Path, set[str]]:
    root = Path(host.__file__).parent
    found = {}
    for path in root.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[path.relative_to(root.parent)] = {n for n in names if n.startswith("host.")}
    return found


def test_every_host_package_has_a_layer():
    packages = {_package(".".join(p.with_suffix("").parts)) for p in _imports() if len(p.parts) > 1}
    placed = set().union(*LAYERS)
    assert packages - {"host.__init__"} <= placed, f"not in a layer: {sorted(packages - placed - {'host.__init__'})}"


def test_host_packages_import_only_downwards():
    level = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    upward = []
    for path, names in _imports().items():
        own = _package(".".join(path.with_suffix("").parts))
        if own not in level:
            continue  # host/__init__.py
        for name in names:
            target = _package(name)
            if target != own and level.get(target, -1) >= level[own]:
                upward.append(f"{path} imports {name}")
    assert not upward, "\n".join(sorted(upward))
