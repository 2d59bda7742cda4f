"""Small helpers shared by test modules (fixtures live in tests/fixtures)."""

from __future__ import annotations

import importlib.util


def require_models_extra() -> None:
    """Fail (not skip) when timm or torchvision is missing: `make setup` installs the models extra, so a
    missing one is a broken setup that must not turn the corpus and loader tests into silent skips.
    ``find_spec`` rather than an import: importing torchvision here would bypass the loader's preparation
    of its ops on CPU torch."""
    missing = [p for p in ("timm", "torchvision") if importlib.util.find_spec(p) is None]
    assert not missing, f"the models extra is missing ({', '.join(missing)}): run `make setup`"
