"""The parts of candidate evaluation that run as cluster tasks (``--ray``), and what they send back.

A task gets the run's :class:`~host.search.scorer.PlanScorer` (base model and evaluation batches, put into the
object store once per run) and one plan; it returns plain data, never an exception (an exception's pickling is
fragile across processes): :class:`Scored` or :class:`Failed` from :func:`score_plan`, :class:`Exported` (the
artifact's bytes, which the driver writes into the run's work folder) or :class:`Failed` from
:func:`export_plan`. The driver keeps everything that decides (what is measured, what a candidate is worth) and
the journal, its single writer: see :meth:`host.search.candidate.CandidateEvaluator.evaluate_many`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from host.export import Artifact
from host.search.devicemodel import features_or_none
from host.search.scorer import CandidateFailure, PlanScorer
from patterns.plan import Plan


@dataclass(frozen=True)
class Scored:
    """A plan that built: its validation accuracy after the recovery steps, exact MACs and parameters."""

    accuracy: float
    macs: int
    params: int
    seconds: float
    # the masked, recovered model's state (int8 searches: the quantized artifact is realized with these weights)
    weights: dict[str, torch.Tensor] | None = None
    # the realized module's operator features (host.search.devicemodel), None where they could not be read
    features: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Failed:
    """A plan that did not build (the fields of :class:`CandidateFailure`)."""

    stage: str
    reason: str
    layer: str | None
    seconds: float = 0.0

    @classmethod
    def of(cls, failure: CandidateFailure, seconds: float = 0.0) -> Failed:
        return cls(failure.stage, failure.reason, failure.layer, seconds)

    def failure(self) -> CandidateFailure:
        return CandidateFailure(self.stage, self.reason, self.layer)


@dataclass(frozen=True)
class Exported:
    """An artifact built on a worker: its checked description and its bytes."""

    artifact: Artifact
    data: bytes

    def write(self, path: Path) -> Artifact:
        """The artifact written to ``path`` on this machine."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(self.data)
        tmp.replace(path)  # a kill never leaves half an artifact under the final name
        return Artifact(path=path, kind=self.artifact.kind, sha256=self.artifact.sha256,
                        size_bytes=self.artifact.size_bytes, max_abs_err=self.artifact.max_abs_err,
                        input_shapes=self.artifact.input_shapes, quantized=self.artifact.quantized,
                        timings=self.artifact.timings)


def score_plan(scorer: PlanScorer, plan: Plan, names: Mapping[str, str] | None, keep_weights: bool = False,
               threads: int | None = 1) -> Scored | Failed:
    """Realize (the cheap check that it builds), mask, recover and score ``plan``: what
    :meth:`CandidateEvaluator.evaluate` does before it decides whether to measure."""
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        realized = scorer.realize_checked(plan, names=names)
        features = features_or_none(realized, scorer.data.example_input)
        model, masks = scorer.masked_model(plan)
        acc = scorer.accuracy(model)
        cost = scorer.count(model, masks)
    except CandidateFailure as failure:
        return Failed.of(failure, time.perf_counter() - start)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()} if keep_weights else None
    return Scored(acc, int(cost.macs), int(cost.params), time.perf_counter() - start, weights, features)


def export_plan(scorer: PlanScorer, plan: Plan, names: Mapping[str, str] | None, quantize: bool = False,
                weights: dict[str, torch.Tensor] | None = None, threads: int | None = 1) -> Exported | Failed:
    """``plan`` realized (with ``weights``, the recovered masked model's state, when given) and exported (int8
    when ``quantize``, calibrated on the run's batches) into a temporary folder; its bytes come back."""
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        weights_from = None
        if weights is not None:
            weights_from, _ = scorer.masked_model(plan, recover=False)
            weights_from.load_state_dict(weights)
        realized = scorer.realize_checked(plan, weights_from=weights_from, names=names)
        with tempfile.TemporaryDirectory(prefix="autosculpt-task-") as tmp:
            artifact = scorer.export(realized, Path(tmp) / ("candidate.int8.pte" if quantize else "candidate.pte"),
                                     quantize=quantize)
            return Exported(artifact, Path(artifact.path).read_bytes())
    except CandidateFailure as failure:
        return Failed.of(failure, time.perf_counter() - start)
