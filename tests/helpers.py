"""Small helpers shared by test modules (fixtures live in tests/fixtures)."""

from __future__ import annotations

import importlib.util
import socket


def require_models_extra() -> None:
    """Fail (not skip) when timm or torchvision is missing: `make setup` installs the models extra, so a
    missing one is a broken setup that must not turn the corpus and loader tests into silent skips.
    ``find_spec`` rather than an import: importing torchvision here would bypass the loader's preparation
    of its ops on CPU torch."""
    missing = [p for p in ("timm", "torchvision") if importlib.util.find_spec(p) is None]
    assert not missing, f"the models extra is missing ({', '.join(missing)}): run `make setup`"


# The zoo models whose cases stay in `make test-fast`, one per family (plain ResNet, VGG, ViT); the deeper and
# wider ones (ResNet-56/110, VGG-19, MobileNetV2) are marked `slow` and run in `make test` only.
FAST_ZOO = ("resnet20", "vgg16", "vit_tiny")


def zoo_params(names) -> list:
    """``pytest.param`` per zoo model name, ``slow`` unless it is in :data:`FAST_ZOO`."""
    import pytest

    return [pytest.param(name, id=name, marks=() if name in FAST_ZOO else pytest.mark.slow) for name in names]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then closed): nothing listens on
    it unless another process takes it in between."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
