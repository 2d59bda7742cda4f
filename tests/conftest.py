"""Shared pytest fixtures. Expensive artifacts (trained checkpoints, exported programs) are built once per
session and cached under the session's temporary directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Session fixtures shared across areas are registered once here, so each is built once per test run.
pytest_plugins = [
    "tests.fixtures.agent",
    "tests.fixtures.models",
    "tests.fixtures.sshd",
    "tests.fixtures.netns",
]


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory):
    """Checkpoints and lowered programs (``AUTOSCULPT_CACHE_DIR``) go to a folder of this test session, not to
    ``~/.cache/autosculpt``: within the session the searches reuse dense and floor programs. With
    ``$AUTOSCULPT_TEST_CACHE`` set (``make test`` sets it for all its phases) the folder is in there, so the
    later phases reuse what the earlier ones trained and lowered (a lowered program is checked against eager
    on every reuse; checkpoints and programs are written atomically, so xdist workers can share them).
    Subprocesses (the CLI searches) inherit it."""
    shared = os.environ.get("AUTOSCULPT_TEST_CACHE")
    if shared:
        folder = Path(shared) / "autosculpt-cache"
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = tmp_path_factory.mktemp("autosculpt-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTOSCULPT_CACHE_DIR", str(folder))
        yield


@pytest.fixture(autouse=True)
def _own_device_models(tmp_path, monkeypatch):
    """Each test's searches learn into (and warm-start from) a device latency model store of their own
    (``AUTOSCULPT_DEVICE_MODELS``), so no test's plans depend on which tests ran before it on the same agent.
    Fixtures wider than a test are set up before this one and share the session's store."""
    monkeypatch.setenv("AUTOSCULPT_DEVICE_MODELS", str(tmp_path / "device-models"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """Directory holding the console scripts of the interpreter running the tests."""
    return Path(sys.executable).parent


def require_root(reason: str) -> None:
    """Skip (with the reason) a test that needs root, e.g. network namespaces or a privileged sshd."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {reason}")


# Tests whose checks rest on real measurements (latency ratios, energy, cool-downs, deadlines, lossy links) run
# with nothing beside them: `make test` runs the rest two at a time (pytest-xdist), then these one at a time.
ALONE_DIRS = ("integration/search", "integration/agent", "integration/remote", "integration/cluster")


def pytest_collection_modifyitems(config, items):
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        where = Path(str(item.path)).resolve().relative_to(tests_dir).as_posix()
        if where.startswith(ALONE_DIRS):
            item.add_marker(pytest.mark.alone)
