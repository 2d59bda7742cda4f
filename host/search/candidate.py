"""Candidate evaluation: plan -> masks on a copy of the trained model -> BN recalibration -> validation
accuracy -> exact MACs/params -> realize -> export -> measured latency/energy -> reward -> journal.

Measurements are cached in the journal by (artifact sha256, device fingerprint); a plan already in the
journal is not evaluated again (its row is reused). The test split is never touched here.

A plan that cannot be built (the pattern library refuses it, its realization raises or yields a module that
does not run, its export fails) does not end the search: it is journaled as invalid with the reason and,
where it can be told cheaply, the layer whose choice is responsible, and gets :data:`INVALID_REWARD`.
In an int8 search (``precision="int8"``) a measured candidate is realized again with its recovered weights,
quantized (PT2E, XNNPACK, calibrated on the same training images for every candidate), exported, scored on
the validation split by the ExecuTorch runtime and measured in int8; its reward uses that int8 accuracy and
latency, and the dense reference is the dense int8 model. A quantized artifact differs in bytes from the fp32
one, so the measurement cache (keyed by artifact sha256) keeps the precisions apart.

Every measured candidate is paired with the dense model: dense is measured again right after it (same
device, same policy, cache bypassed) and the candidate's ratio to dense, which decides its reward, whether it
meets a relative target and what the cost model learns, is taken against that paired figure
(:attr:`MeasurementSummary.dense_p50_ms` / ``dense_energy_mj``). A search runs for minutes to hours on a
board whose speed drifts (thermal throttling, other load): one dense figure taken at the start made every
later ratio carry its error (RepVGG's dense first measured at 2.51 ms on a busy host, 1.5 ms side by side,
so a 0.76x plan was credited 0.43x). :meth:`CandidateEvaluator.dense_figures` is the median of every dense
figure taken, for the references that are not paired (unmeasured plans, absolute targets' reports).

Every candidate is realized (and run once) before its recovery fine-tune, measured or not: it costs about
0.35 s on ResNet-20 at 16 px against 7-9 s for masking and recovery (one thread), and an unmeasured plan
that cannot be built must not collect a predicted reward.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from host.devices.results import BenchSpec
from host.errors import MissingDependencyError, PlanError, SculptError, SearchError
from host.kinds import Phase, Precision
from host.search.devices import SearchDevice, measure
from host.search.finetune import FinetuneConfig, accuracy, masked_finetune, recalibrate_bn
from host.search.journal import STATUS_INVALID, CandidateRecord, Journal, plan_hash
from host.search.measurement import Measurements, MeasurementSummary
from host.search.reward import Objective
from host.search.space import SearchSpace
from patterns.masks import MaskSet

logger = logging.getLogger(__name__)

Batches = list[tuple[torch.Tensor, torch.Tensor]]
INVALID_REWARD = -1.0  # below every valid reward of the latency/energy objectives and the paper's "acc - 1"
# Candidate artifacts are written inside the run directory, not the system temp folder: a SIGKILL runs no
# cleanup, so whatever it leaves stays in the user's run folder, and the next process on the run clears it.
WORK_DIR_NAME = ".work"


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
    def from_splits(cls, splits: Any, bn_batches: int, batch_size: int, val_limit: int | None, seed: int,
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
            from host.export.int8 import calibration_from

            order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed + 2))
            calibration = tuple(calibration_from(x_train[order[:calibration_images]], calibration_images))
        return cls(example_input=x_val[:1].clone(), bn_batches=bn, val_batches=val, recover_batches=tuple(recover),
                   calibration=calibration)

    def val_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation images and labels in one tensor each (the runtime scores them one at a time)."""
        return torch.cat([x for x, _ in self.val_batches]), torch.cat([y for _, y in self.val_batches])


def plan_record_data(space: SearchSpace, choices: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """(Plan, the JSON stored in the journal: per-layer choice names plus the plan itself)."""
    plan, names = space.decode(choices)
    return plan, {"choices": names, "plan": json.loads(plan.to_json(indent=None))}


@dataclass(frozen=True)
class MeasurePolicy:
    """Which candidates are exported and measured (most of a candidate's cost) and how they recover.

    A candidate is measured when it is accurate enough to compete (at most ``min_accuracy_drop`` below the
    most accurate measured plan that meets the target, or below dense when dense meets it; any accuracy while
    no measured plan does) and either fewer than ``min_measured`` search candidates were measured yet, or its
    PREDICTED reward (cost model) is within ``slack`` of the best measured reward. Others get the predicted
    reward.
    """

    min_accuracy_drop: float | None = 0.15
    min_measured: int = 3
    slack: float = 0.03
    recover_lr: float = 0.01


class CandidateEvaluator:
    """Scores plans for one search run; see the module docstring for the pipeline."""

    def __init__(
        self,
        base_model: nn.Module,
        space: SearchSpace,
        data: EvalData,
        journal: Journal,
        objective: Objective,
        devices: Sequence[SearchDevice],
        bench: BenchSpec,
        policy: MeasurePolicy = MeasurePolicy(),
        precision: Precision = Precision.FP32,
    ) -> None:
        from host.search.costmodel import CostModel

        self.base_model = base_model.eval()
        self.space = space
        self.data = data
        self.journal = journal
        self.objective = objective
        self.devices = list(devices)
        self.bench = bench
        self.policy = policy
        # "int8": every measured candidate (dense included) is realized with its fine-tuned weights, quantized on
        # data.calibration, exported, scored on the validation split by the runtime and measured in int8
        self.precision = precision
        if precision == Precision.INT8 and not data.calibration:
            raise ValueError("an int8 evaluator needs calibration batches (EvalData.from_splits calibration_images)")
        self.dense: CandidateRecord | None = None
        self.measurements_taken = 0
        # cost relative to dense: measured latency/energy (worst device) or, for the flops objective, MACs
        self.cost_model = CostModel.from_space(space)
        self._out_shape: tuple[int, ...] | None = None  # the base model's output shape, for realize_checked
        self._dense_artifact: Any = None  # the dense model's artifact, kept for the paired measurements
        self._dense_samples: dict[str, list[float]] = {}  # every dense figure taken, per device
        # <run>/.work: emptied here (a killed process may have left a half-written artifact), removed by close()
        self._workdir = Path(journal.path).parent / WORK_DIR_NAME
        shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir.mkdir(parents=True, exist_ok=True)

    # -- references ----------------------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        """The run's scratch folder for artifacts that are measured and deleted."""
        return self._workdir

    def evaluate_dense(self) -> CandidateRecord:
        """Evaluate (or reload) the dense model: the reference of relative targets and MAC cuts."""
        found = self.journal.candidates(Phase.DENSE)
        if found:
            self.dense = found[0]
        else:
            self.dense = self.evaluate(self.space.dense_choices(), phase=Phase.DENSE, force_measure=True)
        self._dense_samples = {dev: [value] for dev, value in self._figures(self.dense.measurement).items()}
        for record in self.journal.candidates():  # a resumed run: the pairs taken so far
            if record.phase != Phase.DENSE and not record.reused:
                self._add_dense_samples(self._paired(record.measurement))
        self.refit_cost_model()
        return self.dense

    def dense_figures(self) -> dict[str, float]:
        """Per-device figure (ms or mJ) of the dense model: the median of every time it was measured (at the
        start, and paired with each measured candidate). The reference of plans without a paired figure."""
        import statistics

        if self.dense is None:
            raise RuntimeError("evaluate_dense() first")
        if not self._dense_samples:
            return self._figures(self.dense.measurement)
        return {dev: statistics.median(values) for dev, values in self._dense_samples.items()}

    def reference(self, measurement: Measurements | None) -> dict[str, float]:
        """Per-device dense figure a measured candidate is compared with: the one measured right after it,
        where it was paired, else :meth:`dense_figures`."""
        return {**self.dense_figures(), **self._paired(measurement)}

    def _paired(self, measurement: Measurements | None) -> dict[str, float]:
        """Per-device dense figure measured right after ``measurement`` (only the devices where it was)."""
        pairs = {dev: m.dense_figure(self.objective.name) for dev, m in (measurement or {}).items()}
        return {dev: float(value) for dev, value in pairs.items() if value is not None}

    def _add_dense_samples(self, figures: dict[str, float]) -> None:
        for dev, value in figures.items():
            self._dense_samples.setdefault(dev, []).append(value)

    def _pair_with_dense(self, measurement: Measurements) -> dict[str, MeasurementSummary]:
        """``measurement`` with the dense model measured right after it on every device (cache bypassed)."""
        if self._dense_artifact is None:
            plan, _ = plan_record_data(self.space, self.space.dense_choices())
            path = self._workdir / ("dense-reference.int8.pte" if self.precision == Precision.INT8
                                    else "dense-reference.pte")
            self._dense_artifact = self.export(self.realize_checked(plan), path,
                                               quantize=self.precision == Precision.INT8)
        dense = self._figures(self.measure_artifact(self._dense_artifact.path, self._dense_artifact.sha256,
                                                    self.bench, use_cache=False))
        self._add_dense_samples(dense)
        return {dev: summary.paired(self.objective.name, dense[dev]) if dev in dense else summary
                for dev, summary in measurement.items()}

    def _settle(self, artifact: Any, measurement: Measurements, acc: float, macs: int, choices: np.ndarray | None,
                confirm: bool = True) -> dict[str, MeasurementSummary]:
        """The measurement a candidate is recorded with: ``measurement`` paired with dense measured right after
        it; and, when ``confirm`` and that one pair would make the plan the best measured plan that meets a
        hard constraint's target (:meth:`_would_set_the_bar`), measured again until two pairs agree on
        whether it meets the target (at most three), keeping the pair of median ratio (of two that agree, the
        slower one).

        Such a plan sets the bar for which plans are worth measuring after it, and is what the search
        delivers, so one lucky pair must not make it: on a shared host a 256 px MobileNetV3-small plan
        measured 0.68x of its paired dense once and 0.88-1.12x every time after, and no plan less accurate
        than it was measured for the rest of the search."""
        samples = [self._pair_with_dense(measurement)]
        if not confirm or not self._would_set_the_bar(acc, macs, samples[0], choices):
            return samples[0]
        while len(samples) < 3:
            again = self.measure_artifact(artifact.path, artifact.sha256, self.bench, use_cache=False)
            samples.append(self._pair_with_dense(again))
            if len(samples) == 2 and self._meets_target(samples[0]) == self._meets_target(samples[1]):
                break
        ratios = [self.measured_ratio(s) for s in samples]
        logger.info("candidate met the target on one measurement; measured %d times side by side with dense: "
                    "%s of dense", len(samples), ", ".join(f"{r:.3f}x" for r in ratios if r is not None))
        order = sorted(range(len(samples)), key=lambda i: ratios[i] if ratios[i] is not None else float("inf"))
        return samples[order[1]]

    def _would_set_the_bar(self, acc: float, macs: int, measurement: Measurements, choices: np.ndarray | None) -> bool:
        """Under a hard constraint, ``measurement`` meets the target and its reward beats every measured search
        plan that meets it (or none does yet)."""
        if not self.objective.constraint.budget or not self._meets_target(measurement):
            return False
        winners = [r.reward for r in self.journal.candidates(Phase.SEARCH)
                   if r.measurement and not r.reused and self._meets_target(r.measurement)]
        return not winners or self._reward(acc, macs, measurement, choices) > max(winners)

    # -- cost model ----------------------------------------------------------------------------------
    def choices_of(self, record: CandidateRecord) -> np.ndarray:
        """The per-layer choice indices a journal row stands for."""
        names = record.plan.get("choices", {})
        keep = self.space.vocab[self.space.keep_index]
        return np.array([self.space.vocab.index(names.get(layer, keep)) for layer in self.space.layer_names],
                        np.int64)

    def cost_ratio(self, record: CandidateRecord) -> float | None:
        """The candidate's true cost relative to dense: worst-device measured ratio, or the MAC ratio for
        the flops objective; None when it has not been measured."""
        if self.dense is None:
            return None
        if not self.objective.needs_measurement:
            return record.macs / self.dense.macs if self.dense.macs else None
        return self.measured_ratio(record.measurement)

    def measured_ratio(self, measurement: Measurements | None) -> float | None:
        """Worst-device ratio of a measurement to its dense reference; None when nothing was measured."""
        figures, dense = self._figures(measurement), self.reference(measurement)
        ratios = [figures[d] / dense[d] for d in figures if d in dense and dense[d] > 0]
        return max(ratios) if ratios else None

    def refit_cost_model(self) -> None:
        """Fit the cost model on every candidate with a known cost (the journal is the only state)."""
        samples = []
        for record in self.journal.candidates():
            if record.phase in (Phase.DENSE, Phase.FINAL) or record.reused or not record.valid or record.accuracy <= 0:
                continue
            ratio = self.cost_ratio(record)
            if ratio is not None:
                samples.append((self.choices_of(record), ratio))
        self.cost_model.fit(samples)

    def predicted_figures(self, choices: np.ndarray) -> dict[str, float]:
        """Per-device figure the cost model predicts for ``choices``."""
        ratio = self.cost_model.predict(choices)
        return {dev: value * ratio for dev, value in self.dense_figures().items()}

    # -- one candidate -------------------------------------------------------------------------------
    def evaluate(self, choices: np.ndarray, phase: Phase = Phase.SEARCH, force_measure: bool = False) -> CandidateRecord:
        """Evaluate a plan given as per-layer choice indices, record it in the journal and return the row."""
        plan, plan_data = plan_record_data(self.space, choices)
        key = plan_hash(plan_data)
        known = self.journal.find(key, phase if phase != Phase.SEARCH else None)
        if known is not None and known.phase in (Phase.SEARCH, Phase.FLOOR, Phase.DENSE) and phase in (Phase.SEARCH, Phase.FLOOR):
            logger.debug("plan %s already evaluated (row %s); reusing", key[:12], known.id)
            if not known.valid:  # a plan that failed to build fails again: same reason, no second attempt
                return self.journal.record(replace(known, phase=phase, reward=INVALID_REWARD, eval_seconds=0.0,
                                                   reused=True, id=None, created=None))
            scored = self.scored_accuracy(known.accuracy, known.int8_accuracy)
            return self.journal.record(
                CandidateRecord(
                    phase=phase, plan=known.plan, accuracy=known.accuracy, macs=known.macs, params=known.params,
                    reward=self._reward(scored, known.macs, known.measurement, choices), eval_seconds=0.0,
                    artifact_sha256=known.artifact_sha256, measurement=known.measurement, reused=True,
                    int8_accuracy=known.int8_accuracy,
                )
            )
        start = time.perf_counter()
        try:
            # realized first: a plan that cannot be built costs no recovery fine-tune
            realized = self.realize_checked(plan, names=plan_data["choices"])
            model, masks = self.masked_model(plan)
            acc = accuracy(model, self.data.val_batches)
            cost = self.count(model, masks)
            sha, measurement, int8_acc = None, None, None
            if self.devices and (force_measure or self._worth_measuring(acc, cost.macs, choices)):
                settle = None
                if phase != Phase.DENSE and self.objective.needs_measurement:
                    def settle(artifact, measured, int8_accuracy=None):
                        return self._settle(artifact, measured, self.scored_accuracy(acc, int8_accuracy),
                                            cost.macs, choices, confirm=phase == Phase.SEARCH)
                if self.precision == Precision.INT8:
                    sha, measurement, int8_acc = self.measure_int8(plan, model, key, plan_data["choices"], settle)
                else:
                    sha, measurement = self.measure_realized(realized, key, settle)
        except CandidateFailure as failure:
            # the worst reward, recorded so the policy learns from it and a resume does not retry it
            return self._record_invalid(phase, plan_data, failure, time.perf_counter() - start)
        scored = self.scored_accuracy(acc, int8_acc)
        reward = self._reward(scored, cost.macs, measurement, choices) if phase != Phase.DENSE else 0.0
        record = CandidateRecord(
            phase=phase, plan=plan_data, accuracy=acc, macs=int(cost.macs), params=int(cost.params),
            reward=reward, eval_seconds=time.perf_counter() - start, artifact_sha256=sha, measurement=measurement,
            int8_accuracy=int8_acc,
        )
        record = self.journal.record(record)
        predicted = self.cost_model.predict(choices)
        if phase != Phase.DENSE and (measurement is not None or not self.objective.needs_measurement):
            self.refit_cost_model()
        logger.info(
            "%s candidate %s: acc %.4f%s macs %d measured %s predicted %.3f reward %.4f (%.1fs)", phase, record.id,
            acc, "" if int8_acc is None else f" (int8 {int8_acc:.4f})", cost.macs,
            None if measurement is None else self._figures(measurement), predicted, reward, record.eval_seconds,
        )
        return record

    def masked_model(self, plan: Any, recover: bool = True) -> tuple[nn.Module, MaskSet]:
        """A copy of the base model with the plan's masks applied, briefly fine-tuned (``recover``: a few
        distillation steps, masks fixed) and its BatchNorm statistics recalibrated.

        The short recovery makes candidates comparable: right after masking, BN recalibration alone leaves
        an aggressive plan near chance (measured: uniform ``row2`` 28% val) although a real fine-tune
        brings it back (94% after 25 steps), so without it the search ranks plans by how little they
        prune rather than by what they can become.
        """
        import patterns

        model = copy.deepcopy(self.base_model)
        try:
            masks = patterns.apply_masks(model, plan, self.data.example_input)
        except PlanError as exc:  # a combination the library refuses, e.g. every channel of a group removed
            raise CandidateFailure("mask", _reason(exc)) from exc
        if recover and self.data.recover_batches and plan.layers:
            config = FinetuneConfig(epochs=1, lr=self.policy.recover_lr, schedule="constant", distill_alpha=0.5)
            masked_finetune(model, masks, self.data.recover_batches, config, teacher=self.base_model)
        recalibrate_bn(model, self.data.bn_batches, num_batches=len(self.data.bn_batches))
        return model, masks

    def count(self, model: nn.Module, masks: Any) -> Any:
        import patterns

        return patterns.count(model, self.data.example_input, masks=masks or None)

    def measure_realized(self, realized: nn.Module, key: str, settle: Any = None) -> tuple[str, Measurements]:
        """Export a realized plan (:meth:`realize_checked`), then measure it on every device (cache first).
        ``settle(artifact, measurement)``, while the artifact exists, turns that into the recorded measurement
        (:meth:`_settle`: paired with dense, confirmed)."""
        path = self._workdir / f"{key[:16]}.pte"
        artifact = self.export(realized, path)
        try:
            measurement = self.measure_artifact(artifact.path, artifact.sha256, self.bench)
            if settle is not None:
                measurement = settle(artifact, measurement)
        finally:
            Path(artifact.path).unlink(missing_ok=True)
        return artifact.sha256, measurement

    def measure_int8(self, plan: Any, model: nn.Module, key: str, names: dict[str, str] | None = None,
                     settle: Any = None) -> tuple[str, Measurements, float]:
        """(sha256, measurement, validation accuracy) of the plan's int8 artifact: realized with the weights of
        ``model`` (the masked, recovered copy: int8 accuracy depends on them and on the calibration), quantized
        on the run's calibration batches, scored by the ExecuTorch runtime, then measured on every device."""
        from host.export.evaluate import artifact_accuracy

        realized = self.realize_checked(plan, weights_from=model, names=names)
        artifact = self.export(realized, self._workdir / f"{key[:16]}.int8.pte", quantize=True)
        try:
            x_val, y_val = self.data.val_tensors()
            int8_acc = artifact_accuracy(artifact.path, "pte", x_val, y_val)
            measurement = self.measure_artifact(artifact.path, artifact.sha256, self.bench)
            if settle is not None:  # as in measure_realized; the reward it weighs uses the int8 accuracy
                measurement = settle(artifact, measurement, int8_acc)
        finally:
            Path(artifact.path).unlink(missing_ok=True)
        return artifact.sha256, measurement, int8_acc

    def scored_accuracy(self, acc: float, int8_acc: float | None) -> float:
        """The accuracy a reward uses: fp32 searches ``acc``; int8 searches the int8 artifact's accuracy, or,
        for a candidate that was not quantized (not measured), ``acc`` less the mean fp32 -> int8 drop of the
        candidates that were (an unmeasured plan must not look better for having skipped quantization)."""
        if self.precision != Precision.INT8 or int8_acc is not None:
            return acc if int8_acc is None else int8_acc
        drops = [r.accuracy - r.int8_accuracy for r in self.journal.candidates()
                 if r.int8_accuracy is not None and not r.reused and r.phase != Phase.FINAL]
        return acc - (sum(drops) / len(drops) if drops else 0.0)

    def export(self, realized: nn.Module, path: Path, exporter: Any = None, quantize: bool = False) -> Any:
        """``exporter`` (default :func:`host.export.export_pte`) on the example input (``quantize``: int8,
        calibrated on the run's calibration batches); CandidateFailure when the plan's module does not export
        or its artifact disagrees with its reference."""
        if exporter is None:
            from host.export import export_pte as exporter
        try:
            if quantize:
                return exporter(realized, (self.data.example_input,), path, quantize=True,
                                calibration=self.data.calibration)
            return exporter(realized, (self.data.example_input,), path)
        except MissingDependencyError:
            raise  # the environment, not the plan: every candidate would fail the same way
        except Exception as exc:  # noqa: BLE001 - torch.export/ExecuTorch fail with many exception types
            raise CandidateFailure("export", _reason(exc)) from exc

    def realize_checked(self, plan: Any, weights_from: nn.Module | None = None,
                        names: dict[str, str] | None = None) -> nn.Module:
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

    def _realize_and_run(self, plan: Any, weights_from: nn.Module | None = None) -> nn.Module:
        import patterns

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

    def _responsible_layer(self, plan: Any, failed: _ForwardFailed | None) -> str | None:
        """The plan layer whose choice breaks the realization, or None when it cannot be told cheaply.

        First from the forward that failed (free): the innermost running module when it is a plan layer
        (e.g. a conv left with zero filters). Otherwise at most :data:`ATTRIBUTION_TRIES` re-realizations
        with one layer reverted to dense, trying first the plan layers that ran last before the failure
        (a shape check in a parent's forward fails right after its producer), then channel choices (the
        ones that change shapes across layers), then the rest in plan order.
        """
        from patterns.plan import Plan

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

    def _record_invalid(self, phase: str, plan_data: dict[str, Any], failure: CandidateFailure,
                        seconds: float) -> CandidateRecord:
        if phase == Phase.DENSE:  # no reference to compare against: nothing else can be scored either
            raise SearchError(f"the unpruned model cannot be measured: {failure.message}",
                              hint="check that it exports on its own: sculpt-host export --model ... --out m.pte")
        logger.info("%s candidate invalid: %s", phase, failure.message)
        return self.journal.record(
            CandidateRecord(
                phase=phase, plan=plan_data, accuracy=0.0,
                macs=self.dense.macs if self.dense else 0, params=self.dense.params if self.dense else 0,
                reward=INVALID_REWARD, eval_seconds=seconds, status=STATUS_INVALID,
                reason=f"{failure.stage} failed: {failure.reason}", failed_layer=failure.layer,
            )
        )

    def measure_artifact(self, path: Path, sha256: str, bench: BenchSpec,
                         use_cache: bool = True) -> dict[str, MeasurementSummary]:
        """{device name: summary} for an exported artifact, from the cache where possible."""
        result: dict[str, MeasurementSummary] = {}
        for device in self.devices:
            cached = self.journal.cached_measurement(sha256, device.fingerprint) if use_cache else None
            if cached is None:
                cached = measure(device, path, bench)
                self.measurements_taken += 1
                if use_cache:
                    self.journal.store_measurement(sha256, device.fingerprint, cached)
            result[device.name] = cached
        return result

    def remeasure_side_by_side(self, records: Sequence[CandidateRecord], rounds: int = 2) -> list[dict[str, float]]:
        """The objective's figures of measured rows measured again now, alternating between them ``rounds``
        times (median per device), bypassing the cache: two figures taken minutes apart on a busy board can
        be tens of percent off, figures taken side by side are comparable. Re-exports each row's plan (the
        search does not keep artifacts), so it is for rare checks, not for every candidate. An int8 search
        re-exports in int8 (calibrated as its candidates are; weights of the base model: the int8 program's
        latency depends on its shapes, not on the weights' values)."""
        import statistics

        artifacts = []
        try:
            for i, record in enumerate(records):
                plan, _ = plan_record_data(self.space, self.choices_of(record))
                artifacts.append(self.export(self.realize_checked(plan), self._workdir / f"side-by-side-{i}.pte",
                                             quantize=self.precision == Precision.INT8))
            taken: list[list[dict[str, float]]] = [[] for _ in records]
            for _ in range(rounds):
                for i, artifact in enumerate(artifacts):
                    measurement = self.measure_artifact(artifact.path, artifact.sha256, self.bench, use_cache=False)
                    taken[i].append(self._figures(measurement))
        finally:
            for artifact in artifacts:
                Path(artifact.path).unlink(missing_ok=True)
        return [{dev: statistics.median(f[dev] for f in rows) for dev in rows[0]} for rows in taken]

    # -- reward --------------------------------------------------------------------------------------
    def _figures(self, measurement: Measurements | None) -> dict[str, float]:
        """Per-device figure of the objective (ms or mJ) in ``measurement``; {} when nothing was measured."""
        figures = {dev: m.figure(self.objective.name) for dev, m in (measurement or {}).items()}
        return {dev: float(value) for dev, value in figures.items() if value is not None}

    def cost_estimate(self, record: CandidateRecord) -> float:
        """Worst-device cost of a candidate relative to dense (its paired reference): measured, or 1.0 when it
        was not measured."""
        ratio = self.cost_ratio(record)
        return 1.0 if ratio is None else ratio

    def _worth_measuring(self, acc: float, macs: int, choices: np.ndarray) -> bool:
        if not self.objective.needs_measurement:
            return False
        if self.dense is None:
            return True
        measured = [r for r in self.journal.candidates(Phase.SEARCH) if r.measurement and not r.reused]
        drop = self.policy.min_accuracy_drop
        if drop is not None:
            # "cannot win" holds only against a measured plan that meets the target: until one does, the most
            # accurate plans near the target are the ones to measure, however far below dense they fall
            # before fine-tuning (MobileNetV2 at 0.7x lost 20-30 points after the recovery steps)
            winners = [r.accuracy for r in measured if self._meets_target(r.measurement)]
            bar = max(winners) if winners else (self.dense.accuracy if self._meets_target(self.dense.measurement)
                                                 else None)
            if bar is not None and acc < bar - drop:
                return False
        if len(measured) < self.policy.min_measured:
            return True
        pool = measured
        if self.objective.constraint.budget:
            # the target is a wall for what is delivered: only a plan that meets it can be beaten, and while
            # none measured does, one the cost model expects to meet it is worth measuring whatever its
            # accuracy (an accurate plan at 0.80x must not keep 85%-accurate plans at 0.70x from being measured)
            pool = [r for r in measured if self._meets_target(r.measurement)]
            if not pool:
                if choices is not None and self.meets_target(self.predicted_figures(choices), self.dense_figures()):
                    return True
                pool = measured
        best = max(r.reward for r in pool)
        predicted = self._reward(acc, macs, None, choices)
        return predicted >= best * (1.0 - self.policy.slack)

    def _meets_target(self, measurement: Measurements | None) -> bool:
        """The measured figures are within the objective's target on every device."""
        return self.meets_target(self._figures(measurement), self.reference(measurement))

    def meets_target(self, figures: dict[str, float], dense: dict[str, float]) -> bool:
        """``figures`` (ms or mJ per device) are within the objective's target of ``dense`` on every device."""
        return bool(figures) and all(value <= self.objective.target.resolve(dense[dev])
                                     for dev, value in figures.items() if dev in dense)

    def _reward(self, acc: float, macs: int, measurement: Measurements | None,
                choices: np.ndarray | None = None) -> float:
        dense_macs = self.dense.macs if self.dense is not None else macs
        if not self.objective.needs_measurement:
            return self.objective.reward(acc, macs, dense_macs)
        dense = self.reference(measurement)
        figures = self._figures(measurement)
        if not figures:
            # not measured: the cost model's prediction (fitted on the measured candidates). Without
            # choices, credit no speed-up: an optimistic guess teaches the policy to prefer unmeasured plans.
            figures = self.predicted_figures(choices) if choices is not None else dict(dense)
        return self.objective.reward(acc, macs, dense_macs, measured=figures, dense_measured=dense)

    def close(self) -> None:
        """Remove the run's working folder (``<run>/.work``)."""
        shutil.rmtree(self._workdir, ignore_errors=True)
