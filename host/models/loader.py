"""Load a model from a zoo name, ``timm:NAME`` / ``torchvision:NAME``, a ``package.module:factory`` spec or a
saved ExportedProgram (``.pt2``)."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from host.errors import ModelError
from host.models.external import import_library, is_external, load_external
from host.models.zoo import available_models, create_model

log = logging.getLogger(__name__)

def _spec_hint() -> str:
    return (f"use a zoo name ({', '.join(available_models())}), timm:NAME, torchvision:NAME, "
            "'package.module:factory' or a path to a .pt2 file saved with torch.export.save")


def load_model(spec: str, *, checkpoint: str | Path | None = None, num_classes: int = 10, in_channels: int = 3,
               image_size: int = 32, width: float = 1.0, model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """Build the model named by ``spec`` and optionally load a state-dict ``checkpoint`` into it.

    ``spec`` is a zoo name, ``timm:NAME`` / ``torchvision:NAME`` (optional libraries, see
    :mod:`host.models.external`; ``width`` does not apply), ``package.module:factory`` (the factory is called
    with whichever of num_classes/in_channels/image_size/width it accepts) or a path to an ExportedProgram
    ``.pt2`` (whose sizes are fixed by the saved program). ``model_args`` (``--model-arg key=value``) are extra
    constructor keyword arguments for timm, torchvision and factory models; they override the sizes. The
    model is returned in eval mode.
    """
    sizes = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size, "width": width}
    model_args = dict(model_args or {})
    if model_args and (spec.lower() in available_models() or spec.endswith(".pt2")):
        raise ModelError(f"--model-arg does not apply to '{spec}' ({', '.join(sorted(model_args))})",
                         hint="zoo models take --image-size/--channels/--width; --model-arg is for timm:NAME, "
                              "torchvision:NAME and package.module:factory models")
    if spec.lower() in available_models():
        model = create_model(spec, **sizes)
    elif is_external(spec):
        model = load_external(spec, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                              model_args=model_args)
    elif spec.endswith(".py"):
        path = Path(spec)
        raise ModelError(f"'{spec}' is a Python file, not a model spec",
                         hint=f"name the function that builds the model: '{spec}:FACTORY' (or '{path.stem}:FACTORY' "
                              f"from {path.parent.resolve()})")
    elif spec.endswith(".pt2") or Path(spec).is_file():
        model = _load_exported(Path(spec))
    elif ":" in spec:
        model = _load_factory(spec, sizes, model_args)
    else:
        raise ModelError(f"unknown model '{spec}'", hint=_spec_hint())
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()


def load_checkpoint(model: nn.Module, checkpoint: str | Path) -> None:
    """Load a state dict (optionally wrapped as ``{"state_dict": ...}``) into ``model`` strictly."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}", hint="pass the path of a file saved with torch.save")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (pickle, zip, runtime) for a bad file
        raise ModelError(f"cannot read checkpoint {path}: {exc}",
                         hint="the checkpoint must be a state dict saved with torch.save(model.state_dict())") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict",
                         hint="save it with torch.save(model.state_dict(), path)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"checkpoint {path} does not fit the model: {exc}".splitlines()[0],
                         hint="check the model name and --num-classes/--channels/--image-size used "
                              "when the checkpoint was trained") from exc


def _load_exported(path: Path) -> nn.Module:
    if not path.is_file():
        raise ModelError(f"ExportedProgram file not found: {path}", hint=_spec_hint())
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # corrupt archive, wrong format, version skew
        raise ModelError(f"cannot load ExportedProgram {path}: {exc}",
                         hint="save it with torch.export.save(torch.export.export(model, (x,)), 'model.pt2')") from exc
    return ExportedModule(program.module())


class ExportedModule(nn.Module):
    """A loaded ExportedProgram's module, usable like any other: ``eval()``/``train()`` (which the unlifted
    program refuses, "Calling eval() is not supported yet") only set the flag; the program keeps the mode it
    was exported in (inference, for every ``.pt2`` sculpt-host writes)."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def forward(self, *args, **kwargs):
        return self.program(*args, **kwargs)

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode
        return self


def _import_module(module_name: str, spec: str):
    """``module_name`` imported as Python would from the working directory (``python -c``/``-m`` put it first on
    sys.path; the ``sculpt-host`` script does not): the working directory is tried last, never shadowing an
    installed package."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import '{module_name}' for model '{spec}': {exc}",
                         hint="make sure the package is importable (installed, in the working directory, or its "
                              "folder on PYTHONPATH); " + _spec_hint()) from exc


def _import_file(path_text: str, spec: str):
    """``./nets/mynet.py:build``: the file imported as a module of its own (its folder first on sys.path while
    it runs, so its sibling modules import too)."""
    import importlib.util

    path = Path(path_text).resolve()
    if not path.is_file():
        raise ModelError(f"model file not found: {path_text} (in '{spec}')", hint=_spec_hint())
    name = f"_sculpt_user_{path.stem}_{abs(hash(str(path))) % 10**8}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(path.parent))
    try:
        sys.modules[name] = module  # pickling and dataclasses look their module up
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file may raise anything at import
        sys.modules.pop(name, None)
        raise ModelError(f"importing {path_text} failed: {type(exc).__name__}: {exc}",
                         hint="run `python " + path_text + "` to see the error in the file") from exc
    finally:
        sys.path.remove(str(path.parent))
    return module


def _load_factory(spec: str, sizes: dict[str, float], model_args: dict[str, Any]) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelError(f"bad model spec '{spec}'", hint=_spec_hint())
    if module_name.partition(".")[0] in ("timm", "torchvision"):  # e.g. torchvision.models.densenet:DenseNet
        import_library(module_name.partition(".")[0])
    module = _import_file(module_name, spec) if module_name.endswith(".py") else _import_module(module_name, spec)
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ModelError(f"'{module_name}' has no attribute '{attr}'", hint=_spec_hint())
    if not callable(factory):
        raise ModelError(f"'{spec}' is not callable", hint="point at a function or class that returns an nn.Module")
    try:
        params = inspect.signature(factory).parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in sizes.items() if accepts_any or k in params}
    except (TypeError, ValueError):  # builtins without a signature
        kwargs = {}
    kwargs.update(model_args)
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise ModelError(f"factory '{spec}' failed: {exc}", hint="call it by hand to debug it") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"factory '{spec}' returned {type(model).__name__}, not a torch.nn.Module",
                         hint="the factory must return an nn.Module")
    log.info("loaded %s via factory with %s", spec, sorted(kwargs))
    return model
