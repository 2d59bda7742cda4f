"""Scoring a plan on the host: plan -> masks on a copy of the trained model -> short recovery -> BatchNorm
recalibration -> validation accuracy and exact MACs/params; plan -> realized smaller dense module (run once,
checked against the base model's output shape) -> exported artifact.

The :class:`PlanScorer` knows the base model and the run's data; it knows no device, journal or reward (the
:class:`host.search.measurer.Measurer` measures, :class:`host.search.candidate.CandidateEvaluator` decides
what a candidate is worth). A plan that cannot be built raises :class:`CandidateFailure` naming the stage
and, where it can be told cheaply, the layer whose choice is responsible.
"""

from __future__ import annotations

import copy
import logging
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

import patterns
from host.errors import MissingDependencyError, PlanError, SculptError
from host.export import Artifact, export_pte
from host.export.int8 import calibration_from
from host.models.external import prepare_unpickling
from host.search.finetune import FinetuneConfig, accuracy, masked_finetune, recalibrate_bn
from patterns.accounting import Cost
from patterns.masks import MaskSet
from patterns.plan import Plan

if TYPE_CHECKING:
    from host.data.splits import DatasetSplits

# what exports a module: (module, example inputs, path, **options) -> the checked artifact (host.export.export_pte)
Exporter = Callable[..., Artifact]

logger = logging.getLogger(__name__)

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int | None = None,
            max_batches: int | None = None) -> Batches:
    """(x, y) in batches: in order (``seed`` None, for evaluation) or shuffled with ``seed`` (for training,
    where a trailing one-sample batch is dropped: BatchNorm cannot train on it); at most ``max_batches``."""
    order = torch.arange(len(x)) if seed is None else torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    stop = len(x) if max_batches is None else min(len(x), max_batches * batch_size)
    return [(x[index], y[index]) for index in (order[i : i + batch_size] for i in range(0, stop, batch_size))
            if seed is None or len(index) > 1]


# how many extra realizations may be spent to tell which layer broke a plan: each costs about as much as the
# failed one, and a plan that fails is worth a reason, not a bisection of the whole model
ATTRIBUTION_TRIES = 4
REASON_CHARS = 600  # torch's messages can carry whole tensors or graphs; the journal keeps the head


class CandidateFailure(SculptError):
    """A plan that cannot be built into a deployable model.

    ``stage`` is "mask", "realize" or "export"; ``layer`` the layer whose choice is responsible when it
    could be told (the plan builds with that layer kept dense), else None.
    """

    def __init__(self, stage: str, reason: str, layer: str | None = None) -> None:
        where = f" (layer {layer})" if layer else ""
        super().__init__(f"{stage} failed{where}: {reason}",
                         hint="the plan is journaled as invalid and the search goes on without it")
        self.stage = stage
        self.reason = reason
        self.layer = layer


def _reason(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, SculptError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(str(text).split())
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


class _ModuleTrail:
    """Forward hooks that tell, when a forward raises, which module was running (innermost first) and which
    modules had finished before it (latest first): the cheap way to point at the layer responsible."""

    def __init__(self, model: nn.Module) -> None:
        self.running: list[str] = []
        self.finished: list[str] = []
        self._handles = []
        for name, module in model.named_modules():
            if name:
                self._handles.append(module.register_forward_pre_hook(self._enter(name)))
                self._handles.append(module.register_forward_hook(self._leave(name)))

    def _enter(self, name: str):
        def hook(_module, _args):
            self.running.append(name)
        return hook

    def _leave(self, name: str):
        def hook(_module, _args, _out):
            if self.running and self.running[-1] == name:
                self.running.pop()
            self.finished.append(name)
        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


class _ForwardFailed(Exception):
    """The realized module raised on the example input; ``running`` (innermost first) and ``finished``
    (latest first) are the modules from :class:`_ModuleTrail` at that moment."""

    def __init__(self, cause: Exception, trail: _ModuleTrail) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.running = tuple(reversed(trail.running))
        self.finished = tuple(reversed(trail.finished))


@dataclass(frozen=True)
class EvalData:
    """The tensors candidate evaluation needs, cut once: a few training batches and the validation set."""

    example_input: torch.Tensor
    bn_batches: Batches
    val_batches: Batches
    recover_batches: Batches = ()  # the short recovery fine-tune of every candidate (empty: none)
    # int8: the training images every quantized candidate is calibrated on, as batches of the example's shape
    calibration: tuple[tuple[torch.Tensor], ...] = ()

    @classmethod
    def from_splits(cls, splits: DatasetSplits, bn_batches: int, batch_size: int, val_limit: int | None, seed: int,
                    recover_steps: int = 0, recover_batch_size: int = 64, calibration_images: int = 0) -> EvalData:
        """Cut the batches once (seeded, so every candidate sees the same ones)."""
        x_train, y_train = splits.train.tensors()
        bn = batches(x_train, y_train, batch_size, seed, max_batches=bn_batches)
        recover = batches(x_train, y_train, recover_batch_size, seed + 1, max_batches=recover_steps)
        x_val, y_val = splits.val.tensors()
        if val_limit is not None:
            x_val, y_val = x_val[:val_limit], y_val[:val_limit]
        val = batches(x_val, y_val, 256)
        calibration: tuple[tuple[torch.Tensor], ...] = ()
        if calibration_images:
            order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed + 2))
            calibration = tuple(calibration_from(x_train[order[:calibration_images]], calibration_images))
        return cls(example_input=x_val[:1].clone(), bn_batches=bn, val_batches=val, recover_batches=tuple(recover),
                   calibration=calibration)

    def val_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation images and labels in one tensor each (the runtime scores them one at a time)."""
        return torch.cat([x for x, _ in self.val_batches]), torch.cat([y for _, y in self.val_batches])


class PlanScorer:
    """Masks, scores, realizes and exports plans of one base model on one run's data (:class:`EvalData`);
    every masked candidate gets the same short recovery (``recover_lr``, one pass over the recovery batches)."""

    def __init__(self, base_model: nn.Module, data: EvalData, recover_lr: float = 0.01) -> None:
        self.base_model = base_model.eval()
        self.data = data
        self.recover_lr = recover_lr
        self._out_shape: tuple[int, ...] | None = None  # the base model's output shape, for realize_checked

    def __reduce__(self):
        # a scorer crosses processes (--ray ships it to every worker); its base model may be a torchvision one,
        # whose unpickling imports torchvision, and that needs torchvision's ops declared in the new process first
        return _restore_scorer, (pickle.dumps(self.__dict__),)

    def accuracy(self, model: nn.Module) -> float:
        """Validation accuracy of ``model`` (eager)."""
        return accuracy(model, self.data.val_batches)

    def masked_model(self, plan: Plan, recover: bool = True) -> tuple[nn.Module, MaskSet]:
        """A copy of the base model with the plan's masks applied, briefly fine-tuned (``recover``: a few
        distillation steps, masks fixed) and its BatchNorm statistics recalibrated.

        The short recovery makes candidates comparable: right after masking, BN recalibration alone leaves
        an aggressive plan near chance (measured: uniform ``row2`` 28% val) although a real fine-tune
        brings it back (94% after 25 steps), so without it the search ranks plans by how little they
        prune rather than by what they can become.
        """
        model = copy.deepcopy(self.base_model)
        try:
            masks = patterns.apply_masks(model, plan, self.data.example_input)
        except PlanError as exc:  # a combination the library refuses, e.g. every channel of a group removed
            raise CandidateFailure("mask", _reason(exc)) from exc
        if recover and self.data.recover_batches and plan.layers:
            config = FinetuneConfig(epochs=1, lr=self.recover_lr, schedule="constant", distill_alpha=0.5)
            masked_finetune(model, masks, self.data.recover_batches, config, teacher=self.base_model)
        recalibrate_bn(model, self.data.bn_batches, num_batches=len(self.data.bn_batches))
        return model, masks

    def proxy_accuracy(self, plan: Plan, bn_batches: int = 1, val_batches: int = 1) -> float | None:
        """A cheap estimate of what :meth:`masked_model` + :meth:`accuracy` would give: the accuracy right after
        masking, with BatchNorm recalibrated on ``bn_batches`` training batches and no recovery step, on the first
        ``val_batches`` validation batches (EagleEye's adaptive-BN evaluation, Li et al. 2020). Its absolute value
        is far below the recovered accuracy, but it ranks plans: Spearman 0.37-0.85 against the recovered
        accuracy over the 48 plans of each of 12 ResNet-20 searches (MNIST-5k, 0.8 MAC cut;
        ``benchmarks/proxy_bench.py``), at 0.35-0.45 s per plan against ~2.5 s for a scored candidate (1.2-1.3 s
        for MobileNetV2). None for a plan the pattern library refuses."""
        model = copy.deepcopy(self.base_model)
        try:
            patterns.apply_masks(model, plan, self.data.example_input)
        except PlanError:
            return None
        recalibrate_bn(model, self.data.bn_batches[:bn_batches], num_batches=bn_batches)
        return accuracy(model, self.data.val_batches[:val_batches])

    def count(self, model: nn.Module, masks: MaskSet | None) -> Cost:
        """Exact MACs and parameters of ``model`` with ``masks`` (zeros not counted) on the example input."""
        return patterns.count(model, self.data.example_input, masks=masks or None)

    def export(self, realized: nn.Module, path: Path, exporter: Exporter | None = None,
               quantize: bool = False) -> Artifact:
        """``exporter`` (default :func:`host.export.export_pte`) on the example input (``quantize``: int8,
        calibrated on the run's calibration batches); CandidateFailure when the plan's module does not export
        or its artifact disagrees with its reference."""
        exporter = exporter or export_pte
        try:
            if quantize:
                return exporter(realized, (self.data.example_input,), path, quantize=True,
                                calibration=self.data.calibration)
            return exporter(realized, (self.data.example_input,), path)
        except MissingDependencyError:
            raise  # the environment, not the plan: every candidate would fail the same way
        except Exception as exc:  # noqa: BLE001 - torch.export/ExecuTorch fail with many exception types
            raise CandidateFailure("export", _reason(exc)) from exc

    def realize_checked(self, plan: Plan, weights_from: nn.Module | None = None,
                        names: Mapping[str, str] | None = None) -> nn.Module:
        """The plan realized into a smaller dense module that has run once on the example input and gives
        the base model's output shape; CandidateFailure (naming the layer responsible where it can be told)
        otherwise.

        Decisions (which filters get which shape) are made on the ORIGINAL weights, as in the plan's
        definition; ``weights_from`` (the masked fine-tuned copy) only supplies the weights. Latency depends
        only on the structure, so the base model's weights are right for search measurements.
        """
        try:
            return self._realize_and_run(plan, weights_from)
        except MissingDependencyError:
            raise
        except Exception as exc:  # noqa: BLE001 - realization bugs surface as any torch/Python exception
            cause = exc.cause if isinstance(exc, _ForwardFailed) else exc
            layer = self._responsible_layer(plan, exc if isinstance(exc, _ForwardFailed) else None)
            choice = f" ({names[layer]})" if layer and names and layer in names else ""
            logger.warning("plan cannot be realized%s: %s", f"; layer {layer}{choice} is responsible (the plan "
                           "realizes with it kept dense)" if layer else "", _reason(cause))
            raise CandidateFailure("realize", _reason(cause), layer) from cause

    def _realize_and_run(self, plan: Plan, weights_from: nn.Module | None = None) -> nn.Module:
        x = self.data.example_input
        realized = patterns.realize(self.base_model, plan, x, weights_from=weights_from).eval()
        # realize() does not run what it built; a broken module would otherwise fail later inside
        # torch.export with a message that names no layer, or export fine with the wrong output shape
        trail = _ModuleTrail(realized)
        try:
            with torch.no_grad():
                out = realized(x)
        except Exception as exc:
            raise _ForwardFailed(exc, trail) from exc
        finally:
            trail.close()
        if self._out_shape is None:
            with torch.no_grad():
                self._out_shape = tuple(self.base_model(x).shape)
        if tuple(out.shape) != self._out_shape:
            raise RuntimeError(f"the realized model's output has shape {tuple(out.shape)}, the model's "
                               f"{self._out_shape}")
        return realized

    def _responsible_layer(self, plan: Plan, failed: _ForwardFailed | None) -> str | None:
        """The plan layer whose choice breaks the realization, or None when it cannot be told cheaply.

        First from the forward that failed (free): the innermost running module when it is a plan layer
        (e.g. a conv left with zero filters). Otherwise at most :data:`ATTRIBUTION_TRIES` re-realizations
        with one layer reverted to dense, trying first the plan layers that ran last before the failure
        (a shape check in a parent's forward fails right after its producer), then channel choices (the
        ones that change shapes across layers), then the rest in plan order.
        """
        layers = [name for name, _ in plan.layers]
        if len(layers) == 1:
            return layers[0]

        def plan_layer(module_name: str) -> str | None:  # a realized layer may be a wrapper of sub-convs
            return next((n for n in layers if module_name == n or module_name.startswith(n + ".")), None)

        running = failed.running if failed else ()
        for name in running:
            if plan_layer(name):
                return plan_layer(name)
        recent = [plan_layer(n) for n in (failed.finished if failed else ()) if plan_layer(n)]
        channel = [n for n, a in plan.layers if a.family == "channel"]
        order = list(dict.fromkeys([*recent, *channel, *layers]))
        for name in order[:ATTRIBUTION_TRIES]:
            reverted = Plan(tuple(item for item in plan.layers if item[0] != name), model=plan.model)
            try:
                self._realize_and_run(reverted)
            except Exception:  # noqa: BLE001 - still broken without this layer: not (only) its fault
                continue
            return name
        return None


def _restore_scorer(state: bytes) -> PlanScorer:
    """Unpickle a :class:`PlanScorer` (see ``PlanScorer.__reduce__``)."""
    prepare_unpickling()
    scorer = PlanScorer.__new__(PlanScorer)
    scorer.__dict__.update(pickle.loads(state))
    return scorer
