"""Candidate evaluation: plan -> masks on a copy of the trained model -> BN recalibration -> validation
accuracy -> exact MACs/params -> realize -> export -> measured latency/energy -> reward -> journal.

Measurements are cached in the journal by (artifact sha256, device fingerprint); a plan already in the
journal is not evaluated again (its row is reused). The test split is never touched here.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from host.errors import PlanError
from host.search.devices import BenchSettings, DeviceHandle, measure
from host.search.finetune import FinetuneConfig, accuracy, masked_finetune, recalibrate_bn
from host.search.journal import CandidateRecord, Journal, plan_hash
from host.search.reward import Objective
from host.search.space import SearchSpace

logger = logging.getLogger(__name__)

Batches = list[tuple[torch.Tensor, torch.Tensor]]
INVALID_REWARD = -1.0  # below every valid reward of the latency/energy objectives and the paper's "acc - 1"


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int | None = None,
            max_batches: int | None = None) -> Batches:
    """(x, y) in batches: in order (``seed`` None, for evaluation) or shuffled with ``seed`` (for training,
    where a trailing one-sample batch is dropped: BatchNorm cannot train on it); at most ``max_batches``."""
    order = torch.arange(len(x)) if seed is None else torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    stop = len(x) if max_batches is None else min(len(x), max_batches * batch_size)
    return [(x[index], y[index]) for index in (order[i : i + batch_size] for i in range(0, stop, batch_size))
            if seed is None or len(index) > 1]


@dataclass(frozen=True)
class EvalData:
    """The tensors candidate evaluation needs, cut once: a few training batches and the validation set."""

    example_input: torch.Tensor
    bn_batches: Batches
    val_batches: Batches
    recover_batches: Batches = ()  # the short recovery fine-tune of every candidate (empty: none)

    @classmethod
    def from_splits(cls, splits: Any, bn_batches: int, batch_size: int, val_limit: int | None, seed: int,
                    recover_steps: int = 0, recover_batch_size: int = 64) -> EvalData:
        """Cut the batches once (seeded, so every candidate sees the same ones)."""
        x_train, y_train = splits.train.tensors()
        bn = batches(x_train, y_train, batch_size, seed, max_batches=bn_batches)
        recover = batches(x_train, y_train, recover_batch_size, seed + 1, max_batches=recover_steps)
        x_val, y_val = splits.val.tensors()
        if val_limit is not None:
            x_val, y_val = x_val[:val_limit], y_val[:val_limit]
        val = batches(x_val, y_val, 256)
        return cls(example_input=x_val[:1].clone(), bn_batches=bn, val_batches=val, recover_batches=tuple(recover))


def plan_record_data(space: SearchSpace, choices: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """(Plan, the JSON stored in the journal: per-layer choice names plus the plan itself)."""
    plan, names = space.decode(choices)
    return plan, {"choices": names, "plan": json.loads(plan.to_json(indent=None))}


@dataclass(frozen=True)
class MeasurePolicy:
    """Which candidates are exported and measured (most of a candidate's cost) and how they recover.

    A candidate is measured when it is accurate enough to compete (``min_accuracy_drop`` below dense at
    most) and either fewer than ``min_measured`` search candidates were measured yet, or its PREDICTED
    reward (cost model) is within ``slack`` of the best measured reward. Others get the predicted reward.
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
        devices: Sequence[DeviceHandle],
        bench: BenchSettings,
        policy: MeasurePolicy = MeasurePolicy(),
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
        self.dense: CandidateRecord | None = None
        self.measurements_taken = 0
        # cost relative to dense: measured latency/energy (worst device) or, for the flops objective, MACs
        self.cost_model = CostModel.from_space(space)
        self._workdir = Path(tempfile.mkdtemp(prefix="sculpt-candidates-"))

    # -- references ----------------------------------------------------------------------------------
    def evaluate_dense(self) -> CandidateRecord:
        """Evaluate (or reload) the dense model: the reference of relative targets and MAC cuts."""
        found = self.journal.candidates("dense")
        if found:
            self.dense = found[0]
        else:
            self.dense = self.evaluate(self.space.dense_choices(), phase="dense", force_measure=True)
        self.refit_cost_model()
        return self.dense

    def dense_figures(self) -> dict[str, float]:
        """Per-device figure (ms or mJ) of the dense model that the objective compares against."""
        if self.dense is None:
            raise RuntimeError("evaluate_dense() first")
        return self._figures(self.dense.measurement)

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
        figures, dense = self._figures(record.measurement), self.dense_figures()
        ratios = [figures[d] / dense[d] for d in figures if d in dense and dense[d] > 0]
        return max(ratios) if ratios else None

    def refit_cost_model(self) -> None:
        """Fit the cost model on every candidate with a known cost (the journal is the only state)."""
        samples = []
        for record in self.journal.candidates():
            if record.phase in ("dense", "final") or record.reused or record.accuracy <= 0:
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
    def evaluate(self, choices: np.ndarray, phase: str = "search", force_measure: bool = False) -> CandidateRecord:
        """Evaluate a plan given as per-layer choice indices, record it in the journal and return the row."""
        plan, plan_data = plan_record_data(self.space, choices)
        key = plan_hash(plan_data)
        known = self.journal.find(key, phase if phase != "search" else None)
        if known is not None and known.phase in ("search", "floor", "dense") and phase in ("search", "floor"):
            logger.debug("plan %s already evaluated (row %s); reusing", key[:12], known.id)
            return self.journal.record(
                CandidateRecord(
                    phase=phase, plan=known.plan, accuracy=known.accuracy, macs=known.macs, params=known.params,
                    reward=self._reward(known.accuracy, known.macs, known.measurement, choices), eval_seconds=0.0,
                    artifact_sha256=known.artifact_sha256, measurement=known.measurement, reused=True,
                )
            )
        start = time.perf_counter()
        try:
            model, masks = self.masked_model(plan)
        except PlanError as exc:
            # a combination the pattern library refuses (e.g. every channel of a group removed): the worst
            # reward, recorded so the policy learns from it and a resume does not retry it
            logger.info("plan rejected: %s", exc)
            return self.journal.record(
                CandidateRecord(
                    phase=phase, plan=plan_data, accuracy=0.0,
                    macs=self.dense.macs if self.dense else 0, params=self.dense.params if self.dense else 0,
                    reward=INVALID_REWARD, eval_seconds=time.perf_counter() - start,
                )
            )
        acc = accuracy(model, self.data.val_batches)
        cost = self.count(model, masks)
        sha, measurement = None, None
        if self.devices and (force_measure or self._worth_measuring(acc, cost.macs, choices)):
            sha, measurement = self.measure_plan(model, plan, key)
        reward = self._reward(acc, cost.macs, measurement, choices) if phase != "dense" else 0.0
        record = CandidateRecord(
            phase=phase, plan=plan_data, accuracy=acc, macs=int(cost.macs), params=int(cost.params),
            reward=reward, eval_seconds=time.perf_counter() - start, artifact_sha256=sha, measurement=measurement,
        )
        record = self.journal.record(record)
        predicted = self.cost_model.predict(choices)
        if phase != "dense" and (measurement is not None or not self.objective.needs_measurement):
            self.refit_cost_model()
        logger.info(
            "%s candidate %s: acc %.4f macs %d measured %s predicted %.3f reward %.4f (%.1fs)", phase, record.id,
            acc, cost.macs, None if measurement is None else self._figures(measurement), predicted, reward,
            record.eval_seconds,
        )
        return record

    def masked_model(self, plan: Any, recover: bool = True) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """A copy of the base model with the plan's masks applied, briefly fine-tuned (``recover``: a few
        distillation steps, masks fixed) and its BatchNorm statistics recalibrated.

        The short recovery makes candidates comparable: right after masking, BN recalibration alone leaves
        an aggressive plan near chance (measured: uniform ``row2`` 28% val) although a real fine-tune
        brings it back (94% after 25 steps), so without it the search ranks plans by how little they
        prune rather than by what they can become.
        """
        import patterns

        model = copy.deepcopy(self.base_model)
        masks = mask_dict(patterns.apply_masks(model, plan, self.data.example_input))
        if recover and self.data.recover_batches and plan.layers:
            config = FinetuneConfig(epochs=1, lr=self.policy.recover_lr, schedule="constant", distill_alpha=0.5)
            masked_finetune(model, masks, self.data.recover_batches, config, teacher=self.base_model)
        recalibrate_bn(model, self.data.bn_batches, num_batches=len(self.data.bn_batches))
        return model, masks

    def count(self, model: nn.Module, masks: Any) -> Any:
        import patterns

        return patterns.count(model, self.data.example_input, masks=masks or None)

    def measure_plan(self, model: nn.Module, plan: Any, key: str) -> tuple[str, dict[str, Any]]:
        """Realize and export the plan, then measure it on every device (cache first)."""
        import patterns
        from host.export import export_pte

        # decisions (which filters get which shape) are made on the ORIGINAL weights, as in the plan's
        # definition; the masked copy's weights would rank filters differently. Latency depends only on the
        # structure, so the base model's weights are the right input here.
        del model
        realized = patterns.realize(self.base_model, plan, self.data.example_input)
        path = self._workdir / f"{key[:16]}.pte"
        artifact = export_pte(realized, (self.data.example_input,), path)
        try:
            measurement = self.measure_artifact(artifact.path, artifact.sha256, self.bench)
        finally:
            Path(artifact.path).unlink(missing_ok=True)
        return artifact.sha256, measurement

    def measure_artifact(self, path: Path, sha256: str, bench: BenchSettings, use_cache: bool = True) -> dict[str, Any]:
        """{device name: summary} for an exported artifact, from the cache where possible."""
        result: dict[str, Any] = {}
        for device in self.devices:
            cached = self.journal.cached_measurement(sha256, device.fingerprint) if use_cache else None
            if cached is None:
                cached = measure(device, path, bench)
                self.measurements_taken += 1
                if use_cache:
                    self.journal.store_measurement(sha256, device.fingerprint, cached)
            result[device.name] = cached
        return result

    # -- reward --------------------------------------------------------------------------------------
    def _figures(self, measurement: Any) -> dict[str, float]:
        key = "energy_mj" if self.objective.name == "energy" else "p50_ms"
        if not measurement:
            return {}
        return {dev: float(m[key]) for dev, m in measurement.items() if m.get(key) is not None}

    def cost_estimate(self, record: CandidateRecord) -> float:
        """Worst-device figure of a candidate: measured, or the dense figure when it was not measured."""
        figures = self._figures(record.measurement) or self.dense_figures()
        return max(figures.values())

    def _worth_measuring(self, acc: float, macs: int, choices: np.ndarray) -> bool:
        if not self.objective.needs_measurement:
            return False
        if self.dense is None:
            return True
        drop = self.policy.min_accuracy_drop
        if drop is not None and acc < self.dense.accuracy - drop:
            return False
        measured = [r for r in self.journal.candidates("search") if r.measurement and not r.reused]
        if len(measured) < self.policy.min_measured:
            return True
        best = max(r.reward for r in measured)
        predicted = self._reward(acc, macs, None, choices)
        return predicted >= best * (1.0 - self.policy.slack)

    def _reward(self, acc: float, macs: int, measurement: Any, choices: np.ndarray | None = None) -> float:
        dense_macs = self.dense.macs if self.dense is not None else macs
        if not self.objective.needs_measurement:
            return self.objective.reward(acc, macs, dense_macs)
        dense = self.dense_figures()
        figures = self._figures(measurement)
        if not figures:
            # not measured: the cost model's prediction (fitted on the measured candidates). Without
            # choices, credit no speed-up: an optimistic guess teaches the policy to prefer unmeasured plans.
            figures = self.predicted_figures(choices) if choices is not None else dict(dense)
        return self.objective.reward(acc, macs, dense_macs, measured=figures, dense_measured=dense)

    def close(self) -> None:
        import shutil

        shutil.rmtree(self._workdir, ignore_errors=True)


def mask_dict(masks: Any) -> dict[str, torch.Tensor]:
    """Parameter-name -> 0/1 mask from whatever ``patterns.apply_masks`` returned."""
    if masks is None:
        return {}
    if isinstance(masks, dict):
        return dict(masks)
    for attr in ("param_masks", "masks", "by_param"):
        value = getattr(masks, attr, None)
        if isinstance(value, dict):
            return dict(value)
    if hasattr(masks, "items"):
        return dict(masks.items())
    raise TypeError(f"cannot read masks of type {type(masks).__name__}")

