"""Architectures defined by timm and torchvision: ``timm:NAME`` and ``torchvision:NAME`` model specs.

Both libraries are optional (``pip install 'autosculpt[models]'``, torchvision with ``--no-deps``); they are
imported only when such a spec is loaded. Weights are never downloaded unless the user asks for them with
``--model-arg pretrained=true`` (timm) or ``--model-arg weights=DEFAULT`` (torchvision; ``pretrained=true``
means the same there).

torchvision's wheel that matches torch 2.13 is a CUDA build whose compiled ops do not load on a CPU torch;
``import torchvision`` then fails on ``torchvision::nms``. Its model definitions need none of those ops, so
when the compiled library cannot be loaded the two operators its Python code registers fake kernels for are
declared first (shared/DESIGN.md §4). timm imports torchvision, so the same preparation runs before timm.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.machinery
import importlib.util
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from host.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

PREFIXES = ("timm", "torchvision")
_INSTALL = {
    "timm": "pip install 'autosculpt[models]' (timm==1.0.31; install torchvision==0.28.0 with --no-deps first)",
    "torchvision": "pip install --no-deps torchvision==0.28.0 (without --no-deps pip pulls a CUDA torch)",
}
_lock = threading.Lock()
_fragment: torch.library.Library | None = None  # kept alive: dropping it would undefine the ops


def is_external(spec: str) -> bool:
    """True for ``timm:NAME`` / ``torchvision:NAME`` specs."""
    prefix, sep, name = spec.partition(":")
    return bool(sep) and prefix.lower() in PREFIXES and bool(name)


def parse_value(text: str) -> Any:
    """A ``--model-arg`` value: a Python literal where it is one (ints, floats, tuples, quoted strings),
    ``true``/``false``/``none``/``null`` in any case, else the text itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_model_args(items: Iterable[str] | None) -> dict[str, Any]:
    """``["depth=2", "drop_rate=0.1"]`` -> ``{"depth": 2, "drop_rate": 0.1}`` (a later key wins)."""
    args: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"--model-arg must be KEY=VALUE with KEY a Python identifier, got '{item}'",
                              hint="e.g. --model-arg depth=2 --model-arg pretrained=true")
        args[key] = parse_value(value)
    return args


def _op_defined(qualname: str) -> bool:
    try:
        torch._C._get_schema(qualname, "")
    except RuntimeError:
        return False
    return True


def _load_compiled_ops(package_dir: Path) -> bool:
    """Load torchvision's compiled ``_C`` library the way torchvision does; False when it does not load."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = package_dir / f"_C{suffix}"
        if path.is_file():
            try:
                torch.ops.load_library(str(path))
            except (ImportError, OSError) as exc:
                log.debug("torchvision's compiled ops do not load (%s); declaring nms/qnms only", exc)
                return False
            return True
    return False


def prepare_torchvision() -> None:
    """Make ``import torchvision`` work on a CPU torch whose torchvision ops are a CUDA build.

    Done once, and only when ``torchvision::nms`` is not defined and the compiled library does not load:
    on a machine where torchvision's ops load, nothing is declared (a second definition would break them).
    """
    global _fragment
    with _lock:
        if _fragment is not None or _op_defined("torchvision::nms"):
            return
        spec = importlib.util.find_spec("torchvision")
        if spec is None or not spec.submodule_search_locations:
            raise ModelError("torchvision is not installed", hint=_INSTALL["torchvision"])
        if _load_compiled_ops(Path(next(iter(spec.submodule_search_locations)))) and _op_defined("torchvision::nms"):
            return
        lib = torch.library.Library("torchvision", "FRAGMENT")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _fragment = lib


def prepare_unpickling() -> None:
    """Call before unpickling a model in a fresh process (a cluster worker): a torchvision model's classes import
    torchvision on the way, which on this CPU torch needs its ops declared first (:func:`prepare_torchvision`).
    Nothing happens where torchvision is not installed."""
    if importlib.util.find_spec("torchvision") is not None:
        prepare_torchvision()


def import_library(name: str) -> Any:
    """Import ``timm`` or ``torchvision`` (preparing torchvision first), or raise a ModelError saying how to
    install it."""
    if importlib.util.find_spec(name) is None:
        raise ModelError(f"model specs '{name}:NAME' need the optional package {name}, which is not installed",
                         hint=_INSTALL[name])
    if importlib.util.find_spec("torchvision") is not None:
        prepare_torchvision()
    try:
        return importlib.import_module(name)
    except (ImportError, RuntimeError) as exc:
        raise ModelError(f"cannot import {name}: {type(exc).__name__}: {exc}".splitlines()[0],
                         hint=_INSTALL[name]) from exc


_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")


def _construct(factory, defaults: Mapping[str, Any], user: Mapping[str, Any], what: str) -> nn.Module:
    """``factory(**defaults, **user)``; a default size argument the architecture does not take is dropped
    (architectures differ: a ViT needs ``img_size``, a ResNet refuses it), a user argument never is."""
    kwargs = {**defaults, **user}
    while True:
        try:
            return factory(**kwargs)
        except TypeError as exc:
            match = _UNEXPECTED.search(str(exc))
            if match and match.group(1) in kwargs and match.group(1) not in user:
                log.debug("%s does not take %s; building it without", what, match.group(1))
                kwargs.pop(match.group(1))
                continue
            raise ModelError(f"building {what} failed: {exc}",
                             hint=f"check the --model-arg names against {what}'s constructor") from exc
        except Exception as exc:  # builders raise ValueError/RuntimeError/AssertionError for bad arguments
            raise ModelError(f"building {what} failed: {type(exc).__name__}: {exc}".splitlines()[0],
                             hint=_build_hint(user)) from exc


def _build_hint(user: Mapping[str, Any]) -> str:
    if user.get("pretrained") or user.get("weights"):
        return ("pretrained weights are downloaded on first use and need network access (or a filled cache); "
                "they also fix num_classes to the weights' classes")
    return "check the --model-arg values; build the model once by hand to debug it"


def load_external(spec: str, *, num_classes: int, in_channels: int, image_size: int,
                  model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """Build ``timm:NAME`` or ``torchvision:NAME`` for ``num_classes`` outputs on ``in_channels`` x
    ``image_size`` inputs; ``model_args`` go to the library's constructor and override those sizes."""
    prefix, _, name = spec.partition(":")
    prefix = prefix.lower()
    user = dict(model_args or {})
    if prefix == "timm":
        return _load_timm(name, num_classes, in_channels, image_size, user)
    return _load_torchvision(name, num_classes, in_channels, image_size, user)


def _load_timm(name: str, num_classes: int, in_channels: int, image_size: int, user: dict[str, Any]) -> nn.Module:
    timm = import_library("timm")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.6)
        raise ModelError(f"timm has no architecture '{name}'",
                         hint=f"similar names: {', '.join(close)}" if close else "see timm.list_models()")
    defaults = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels, "img_size": image_size}

    def factory(**kwargs):
        return timm.create_model(name, **kwargs)

    model = _construct(factory, defaults, user, f"timm:{name}")
    log.info("built timm:%s with %s", name, sorted({**defaults, **user}))
    return model


def _load_torchvision(name: str, num_classes: int, in_channels: int, image_size: int,
                      user: dict[str, Any]) -> nn.Module:
    torchvision = import_library("torchvision")
    models = torchvision.models
    available = models.list_models(module=models)  # classification models only
    if name.lower() not in available:
        close = difflib.get_close_matches(name.lower(), available, n=8, cutoff=0.6)
        raise ModelError(f"torchvision has no classification model '{name}'",
                         hint=f"similar names: {', '.join(close)}" if close else
                         f"available: {', '.join(available)}")
    if in_channels != 3:
        raise ModelError(f"torchvision:{name} takes 3-channel images, not {in_channels}",
                         hint="use 3 input channels (e.g. --channels 3; grayscale data is converted), or a "
                              "timm:NAME model, which takes in_chans")
    if user.pop("pretrained", False) and "weights" not in user:
        user["weights"] = "DEFAULT"
    defaults = {"weights": None, "num_classes": num_classes, "image_size": image_size}

    def factory(**kwargs):
        return models.get_model(name.lower(), **kwargs)

    model = _construct(factory, defaults, user, f"torchvision:{name}")
    log.info("built torchvision:%s with %s", name, sorted({**defaults, **user}))
    return model
