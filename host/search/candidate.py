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

Three parts: :class:`host.search.scorer.PlanScorer` builds and scores a plan on the host (masks, recovery,
accuracy, MACs, realization, export); :class:`host.search.measurer.Measurer` measures artifacts (devices,
cache, the dense model measured right after every candidate: the candidate's ratio to that paired figure
decides its reward, whether it meets a relative target and what the cost model learns); the
:class:`CandidateEvaluator` here decides what is measured and what a candidate is worth, and journals it.

Every candidate is realized (and run once) before its recovery fine-tune, measured or not: it costs about
0.35 s on ResNet-20 at 16 px against 7-9 s for masking and recovery (one thread), and an unmeasured plan
that cannot be built must not collect a predicted reward.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
from torch import nn

from host.cluster import Executor, InlineExecutor, TaskLost
from host.devices.results import BenchSpec
from host.errors import SearchError
from host.export import Artifact
from host.export.evaluate import artifact_accuracy
from host.kinds import ObjectiveName, Phase, Precision
from host.search.costmodel import MIN_RATIO, CostModel
from host.search.devicemodel import TRUST_ERROR, LatencyLearner, features_or_none
from host.search.devices import SearchDevice
from host.search.journal import STATUS_INVALID, CandidatePlan, CandidateRecord, Journal, plan_hash
from host.search.measurement import Measurements, MeasurementSummary
from host.search.measurer import Measurer, worst_ratio
from host.search.parallel import Exported, Failed, Scored, export_plan, score_plan
from host.search.reward import Objective
from host.search.scorer import CandidateFailure, EvalData, PlanScorer
from host.search.space import SearchSpace
from patterns.plan import Plan

logger = logging.getLogger(__name__)
T = TypeVar("T")

INVALID_REWARD = -1.0  # below every valid reward of the latency/energy objectives and the paper's "acc - 1"
# Candidate artifacts are written inside the run directory, not the system temp folder: a SIGKILL runs no
# cleanup, so whatever it leaves stays in the user's run folder, and the next process on the run clears it.
WORK_DIR_NAME = ".work"
# plans realized to move the cost model's prior onto the device latency model (warm_start_cost_model)
WARM_START_PLANS = 12


class Settle(Protocol):
    """Turns a candidate's first measurement into the one it is recorded with, while its artifact exists
    (int8: knowing the artifact's accuracy, which the reward it weighs uses)."""

    def __call__(self, artifact: Artifact, measurement: Measurements,
                 int8_accuracy: float | None = None) -> Measurements: ...


# builds a scored plan's artifact at the given path (int8 when asked)
Exporter = Callable[[Path, bool], Artifact]


@dataclass(frozen=True)
class _Job:
    """A plan about to be scored: its journal form, hash, per-layer choices and phase."""

    chosen: CandidatePlan
    key: str
    choices: np.ndarray
    phase: Phase

    @property
    def plan(self) -> Plan:
        return self.chosen.plan

    @property
    def names(self) -> Mapping[str, str]:
        return self.chosen.choices


def _timed(fn: Callable[..., T], *args: object) -> tuple[T, float]:
    """(fn(*args), its seconds)."""
    start = time.perf_counter()
    return fn(*args), time.perf_counter() - start


def _exported(result: object) -> Exporter:
    """What an export task returned, as the exporter :meth:`CandidateEvaluator._finish` calls: the artifact
    written to the path it asks for, or the failure raised."""

    def export(path: Path, _quantize: bool) -> Artifact:
        if isinstance(result, TaskLost):
            raise CandidateFailure("cluster", result.message)
        if isinstance(result, Failed):
            raise result.failure()
        if not isinstance(result, Exported):
            raise TypeError(f"an export task returned {type(result).__name__}")
        return result.write(path)

    return export


def candidate_plan(space: SearchSpace, choices: np.ndarray) -> CandidatePlan:
    """The plan per-layer choice indices stand for, with each layer's choice name (what the journal keeps)."""
    plan, names = space.decode(choices)
    return CandidatePlan(plan, names)


@dataclass(frozen=True)
class MeasurePolicy:
    """Which candidates are exported and measured (most of a candidate's cost) and how they recover.

    A candidate is measured when it is accurate enough to compete (at most ``min_accuracy_drop`` below the
    most accurate measured plan that meets the target, or below dense when dense meets it; any accuracy while
    no measured plan does) and either fewer than ``min_measured`` search candidates were measured yet, or its
    PREDICTED reward (cost model) is within ``slack`` of the best measured reward. Others get the predicted
    reward.

    Where the device's persisted latency model is trusted (:meth:`LatencyLearner.distrust`: its recent
    predictions on this device were right, and it has measured every kind of GEMM the model runs), it stands in
    for the device: a candidate's predicted latency comes from its realized operators instead of the cost
    model, the first ``min_measured`` candidates are not measured just to calibrate, and under a hard target a
    plan is measured only when it is predicted to meet it (within half the trusted error) and, once a measured
    plan meets it, is more accurate than that plan. What is delivered is still measured.
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
        host_threads: int | None = 1,
        model_name: str | None = None,
    ) -> None:
        self.base_model = base_model.eval()
        # masks, scores, realizes and exports plans (no device, journal or reward)
        self.scorer = PlanScorer(self.base_model, data, policy.recover_lr)
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
        self.host_threads = host_threads  # torch threads of each cluster task (evaluate_many)
        self._shared: tuple[Executor, object] | None = None  # the scorer in an executor's object store
        if precision == Precision.INT8 and not data.calibration:
            raise ValueError("an int8 evaluator needs calibration batches (EvalData.from_splits calibration_images)")
        self.dense: CandidateRecord | None = None
        # devices, the measurement cache and the dense pairs; the dense artifact is exported on the first pairing
        self.measurer = Measurer(self.devices, bench, journal, objective.name, self._export_dense_reference)
        # cost relative to dense: measured latency/energy (worst device) or, for the flops objective, MACs
        self.cost_model = CostModel.from_space(space)
        # the device's persisted latency model (latency objective): learns from every measured candidate of every
        # search on the device, warm-starts this run's cost model (warm_start_cost_model)
        timed = [(d.name, d.fingerprint) for d in self.devices] if objective.name == ObjectiveName.LATENCY else []
        self.latency = LatencyLearner(
            timed, str(precision), f"{model_name or space.model_name or type(base_model).__name__}@"
                                   f"{list(data.example_input.shape)}",
            features_or_none(self.base_model, data.example_input) if timed else None,
            run=str(Path(journal.path).parent))
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
        # a resumed run: the pairs taken so far count among the dense samples
        self.measurer.start_dense(self.dense.measurement, (r.measurement for r in self.journal.candidates()
                                                           if r.phase != Phase.DENSE and not r.reused))
        self.refit_cost_model()
        return self.dense

    def dense_figures(self) -> dict[str, float]:
        """Per-device figure (ms or mJ) of the dense model (:meth:`Measurer.dense_figures`): the reference of
        plans without a paired figure."""
        if self.dense is None:
            raise RuntimeError("evaluate_dense() first")
        return self.measurer.dense_figures()

    def _export_dense_reference(self) -> Artifact:
        """The dense model's artifact in the run's precision, for the measurer's pairs (kept in the workdir)."""
        plan = candidate_plan(self.space, self.space.dense_choices()).plan
        int8 = self.precision == Precision.INT8
        path = self._workdir / ("dense-reference.int8.pte" if int8 else "dense-reference.pte")
        return self.scorer.export(self.scorer.realize_checked(plan), path, quantize=int8)

    def _settle(self, artifact: Artifact, measurement: Measurements, acc: float, macs: int, choices: np.ndarray | None,
                confirm: bool = True, first: Measurements | None = None) -> dict[str, MeasurementSummary]:
        """The measurement a candidate is recorded with: ``measurement`` paired with dense measured right after
        it; and, when ``confirm`` and that one pair would make the plan the best measured plan that meets a
        hard constraint's target (:meth:`_would_set_the_bar`), measured again until two pairs agree on
        whether it meets the target (at most three), keeping the pair of median ratio (of two that agree, the
        slower one).

        Such a plan sets the bar for which plans are worth measuring after it, and is what the search
        delivers, so one lucky pair must not make it: on a shared host a 256 px MobileNetV3-small plan
        measured 0.68x of its paired dense once and 0.88-1.12x every time after, and no plan less accurate
        than it was measured for the rest of the search."""
        measurer = self.measurer
        samples = [first if first is not None else measurer.pair_with_dense(measurement)]
        if not confirm or not self._would_set_the_bar(acc, macs, samples[0], choices):
            return samples[0]
        while len(samples) < 3:
            # a pool's candidate and its dense pair on one board
            samples.append(measurer.on_same_boards(
                lambda: measurer.pair_with_dense(measurer.measure(artifact.path, artifact.sha256, use_cache=False))))
            if len(samples) == 2 and self.meets_target(samples[0]) == self.meets_target(samples[1]):
                break
        ratios = [measurer.ratio(s) for s in samples]
        logger.info("candidate met the target on one measurement; measured %d times side by side with dense: "
                    "%s of dense", len(samples), ", ".join(f"{r:.3f}x" for r in ratios if r is not None))
        order = sorted(range(len(samples)), key=lambda i: ratios[i] if ratios[i] is not None else float("inf"))
        return samples[order[1]]

    def _would_set_the_bar(self, acc: float, macs: int, measurement: Measurements, choices: np.ndarray | None) -> bool:
        """Under a hard constraint, ``measurement`` meets the target and its reward beats every measured search
        plan that meets it (or none does yet)."""
        if not self.objective.constraint.budget or not self.meets_target(measurement):
            return False
        winners = [r.reward for r in self.journal.candidates(Phase.SEARCH)
                   if r.measurement and not r.reused and self.meets_target(r.measurement)]
        return not winners or self._reward(acc, macs, measurement, choices) > max(winners)

    # -- cost model ----------------------------------------------------------------------------------
    def choices_of(self, record: CandidateRecord) -> np.ndarray:
        """The per-layer choice indices a journal row stands for."""
        return self.space.encode(record.plan.choices)

    def cost_ratio(self, record: CandidateRecord) -> float | None:
        """The candidate's true cost relative to dense: worst-device measured ratio, or the MAC ratio for
        the flops objective; None when it has not been measured."""
        if self.dense is None:
            return None
        if not self.objective.needs_measurement:
            return record.macs / self.dense.macs if self.dense.macs else None
        return self.measurer.ratio(record.measurement)

    def warm_start_cost_model(self, plans: int = WARM_START_PLANS, seed: int = 0) -> str:
        """Start the cost model from the device's persisted latency model (:mod:`host.search.devicemodel`)
        instead of "latency follows MACs", when the store has a model for every device: ``plans`` plans drawn
        from the uniform prior at spread keep preferences are realized (no recovery, no export, no device),
        their cost predicted from their operators, and the prior moved to fit them
        (:meth:`CostModel.set_prior`). The prior is kept in the journal, so a resumed run starts from the same
        one whatever the store learned meanwhile. Returns where the prior came from, for the log."""
        from host.search.projection import sample_prior

        stored = self.journal.get_value("cost_prior")
        if stored is not None:
            if stored.get("weights") is not None:
                self.cost_model.restore_prior(stored["weights"])
                self.refit_cost_model()
            return str(stored.get("source", "MACs"))
        source = "MACs (no latency model of this device yet)"
        if self.latency.ready:
            space, rng, pseudo = self.space, np.random.default_rng(seed), []
            for logit in np.linspace(-3.0, 3.0, plans):
                choices = sample_prior(space.choice_mask, space.keep_index, float(logit), rng.random(len(space.layer_names)))
                try:
                    realized = self.scorer.realize_checked(candidate_plan(space, choices).plan)
                except CandidateFailure:
                    continue
                ratio = self.latency.predict_ratio(features_or_none(realized, self.data.example_input))
                if ratio is not None:
                    pseudo.append((choices, ratio))
            if pseudo:
                weights = self.cost_model.set_prior(pseudo)
                models = sorted(set().union(*(m.models() for m in self.latency.models.values())))
                source = (f"the device latency model ({sum(len(m.samples) for m in self.latency.models.values())} "
                          f"measurements of {len(models)} model(s)) on {len(pseudo)} realized plans")
                self.journal.set_value("cost_prior", {"source": source, "weights": [float(w) for w in weights]})
                self.refit_cost_model()
                logger.info("cost model starts from %s", source)
                return source
        self.journal.set_value("cost_prior", {"source": source, "weights": None})
        return source

    def _learn_latency(self, phase: Phase, features: tuple[float, ...] | None, measurement: Measurements) -> None:
        """A measured candidate for the device latency model. Its figure is taken as its ratio to the dense model
        measured right after it, times the median dense figure: the pair cancels the load the host had at that
        moment (on a busy host one ResNet-56 plan measured 3.7 ms where its dense pair took 2x its usual time)."""
        if phase == Phase.DENSE:
            self.latency.learn(features, self.measurer.figures(measurement), None, search=False)
            return
        dense = self.dense_figures()
        figures, paired = self.measurer.figures(measurement), self.measurer.reference(measurement)
        steady = {dev: value / paired[dev] * dense[dev] for dev, value in figures.items()
                  if paired.get(dev) and dev in dense}
        self.latency.learn(features, steady, dense, search=phase == Phase.SEARCH)

    def refit_cost_model(self) -> None:
        """Fit the cost model on every candidate with a known cost (the journal is the only state).

        Only measured costs (latency, energy) are fitted. The FLOPs objective keeps the MAC-proportional prior: its
        plans are projected on their exact MAC count, and fitted to the counted ratios of a few dozen plans the model
        ranked the choices worse than the prior, so the exact walk, which starts from the model, left 20-30% of
        projected ResNet-20 plans (0.8 MAC cut) outside the reward band (none with the prior)."""
        if not self.objective.needs_measurement:
            return
        samples = []
        for record in self.journal.candidates():
            if record.phase in (Phase.DENSE, Phase.FINAL) or record.reused or not record.valid or record.accuracy <= 0:
                continue
            ratio = self.cost_ratio(record)
            if ratio is not None:
                samples.append((self.choices_of(record), ratio))
        self.cost_model.fit(samples)

    def predicted_figures(self, choices: np.ndarray, optimistic: bool = False) -> dict[str, float]:
        """Per-device figure the cost model predicts for ``choices`` (``optimistic``: less its typical error on
        plans it has not seen, :attr:`CostModel.error`)."""
        ratio = self.cost_model.predict(choices)
        if optimistic:
            ratio = max(MIN_RATIO, ratio - self.cost_model.error)
        return {dev: value * ratio for dev, value in self.dense_figures().items()}

    # -- one candidate -------------------------------------------------------------------------------
    def evaluate(self, choices: np.ndarray, phase: Phase = Phase.SEARCH, force_measure: bool = False) -> CandidateRecord:
        """Evaluate a plan given as per-layer choice indices, record it in the journal and return the row."""
        job = self._prepare(choices, phase)
        if isinstance(job, CandidateRecord):
            return job
        start = time.perf_counter()
        scorer = self.scorer
        try:
            # realized first: a plan that cannot be built costs no recovery fine-tune
            realized = scorer.realize_checked(job.plan, names=job.names)
            features = features_or_none(realized, self.data.example_input)
            model, masks = scorer.masked_model(job.plan)
            acc = scorer.accuracy(model)
            cost = scorer.count(model, masks)
        except CandidateFailure as failure:
            return self._finish(job, Failed.of(failure, time.perf_counter() - start), force_measure=force_measure)

        def export(path: Path, quantize: bool) -> Artifact:
            if quantize:  # int8 accuracy depends on the recovered weights (and on the calibration)
                return scorer.export(scorer.realize_checked(job.plan, weights_from=model, names=job.names), path,
                                     quantize=True)
            return scorer.export(realized, path)

        scored = Scored(acc, int(cost.macs), int(cost.params), time.perf_counter() - start, features=features)
        return self._finish(job, scored, export, force_measure=force_measure)

    def evaluate_many(self, batch: Sequence[np.ndarray], phase: Phase = Phase.SEARCH,
                      executor: Executor | None = None,
                      on_record: Callable[[CandidateRecord], None] | None = None) -> list[CandidateRecord]:
        """Evaluate several plans at once on ``executor`` (a cluster), each journaled as soon as it is done; the
        rows come back in the order of ``batch``.

        A pipeline: every plan is scored as a task; as each score arrives, the driver decides (with every
        earlier arrival already journaled, as :meth:`evaluate` would decide in that order) whether it is worth
        measuring. A plan that is not is journaled at once; one that is gets an export task, and when its
        artifact arrives the driver measures it on the device(s) and journals it. So the exports (seconds
        each) run on the workers side by side while the driver measures. A plan that appears twice in
        ``batch`` is scored once; its second row reuses the first. ``on_record`` is called with each row as
        it is journaled (progress)."""
        records: list[CandidateRecord | None] = [None] * len(batch)

        def done(i: int, record: CandidateRecord) -> None:
            records[i] = record
            if on_record is not None:
                on_record(record)

        lanes = self.measure_lanes()
        if (executor is None or isinstance(executor, InlineExecutor)) and lanes <= 1:
            for i, choices in enumerate(batch):  # one by one, the realized module kept for the export
                done(i, self.evaluate(choices, phase))
            return records  # type: ignore[return-value]
        # without a cluster but with a pool, plans are scored and exported here one after another while the
        # measurements of the earlier ones run on the boards
        executor = executor or InlineExecutor()
        int8 = self.precision == Precision.INT8
        shared = self._shared_scorer(executor)
        scoring: dict[object, tuple[int, _Job]] = {}
        exporting: dict[object, tuple[int, _Job, Scored]] = {}
        first: dict[str, int] = {}
        again: list[int] = []
        for i, choices in enumerate(batch):
            job = self._prepare(choices, phase)
            if isinstance(job, CandidateRecord):
                done(i, job)
            elif job.key in first:
                again.append(i)
            else:
                first[job.key] = i
                scoring[executor.submit(score_plan, shared, job.plan, job.names, int8, self.host_threads)] = (i, job)
        # several boards (a pool): the artifacts are measured side by side in threads (device calls only; the
        # journal, cost model and decisions stay on this thread)
        threads = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="measure") if lanes > 1 else None
        measuring: dict[Future, tuple[int, _Job, Scored, Artifact, float | None]] = {}
        try:
            while scoring or exporting or measuring:
                finished = next((f for f in measuring if f.done()), None)
                if finished is not None:
                    i, job, scored, artifact, int8_acc = measuring.pop(finished)
                    done(i, self._finish_pooled(job, scored, artifact, int8_acc, finished))
                    continue
                if not (scoring or exporting):
                    wait_futures(list(measuring), return_when=FIRST_COMPLETED)
                    continue
                got = executor.next_done([*scoring, *exporting], timeout=0.05 if measuring else None)
                if got is None:
                    continue
                handle, result = got
                if isinstance(result, BaseException) and not isinstance(result, TaskLost):
                    raise result  # a bug, not a plan that does not build: the search stops
                if handle in scoring:
                    i, job = scoring.pop(handle)
                    if isinstance(result, TaskLost):
                        result = Failed("cluster", result.message, None)
                    if isinstance(result, Scored) and self._wants_measurement(job, result):
                        weights = result.weights if int8 else None
                        exporting[executor.submit(export_plan, shared, job.plan, job.names, int8, weights,
                                                  self.host_threads)] = (i, job, result)
                    else:
                        done(i, self._finish(job, result, measure=False))
                    continue
                i, job, scored = exporting.pop(handle)
                if threads is None:
                    done(i, self._finish(job, scored, _exported(result), measure=True))
                    continue
                try:
                    artifact = _exported(result)(self._artifact_path(job.key), int8)
                    int8_acc = self._int8_accuracy(artifact) if int8 else None
                except CandidateFailure as failure:
                    done(i, self._record_invalid(job.phase, job.chosen, failure, scored.seconds))
                    continue
                if self.measurer.cached(artifact.sha256) is not None:  # nothing to measure: as one at a time
                    done(i, self._finish(job, scored, lambda _path, _q, a=artifact: a, measure=True))
                    continue
                future = threads.submit(_timed, self.measurer.measure_with_dense, artifact.path)
                measuring[future] = (i, job, scored, artifact, int8_acc)
        finally:
            if threads is not None:
                threads.shutdown(wait=True, cancel_futures=True)
        for i in again:  # the plan's first row is journaled now: this one reuses it
            done(i, self.evaluate(batch[i], phase))
        return records  # type: ignore[return-value]

    def measure_lanes(self) -> int:
        """How many candidates can be measured at once: the boards of the run's pool when it measures on one
        pool only (each candidate with its dense pair on one board), else 1."""
        return self.devices[0].boards if len(self.devices) == 1 else 1

    def _artifact_path(self, key: str) -> Path:
        return self._workdir / f"{key[:16]}{'.int8' if self.precision == Precision.INT8 else ''}.pte"

    def _int8_accuracy(self, artifact: Artifact) -> float:
        """Validation accuracy of an int8 artifact, run by the ExecuTorch runtime."""
        x_val, y_val = self.data.val_tensors()
        return artifact_accuracy(artifact.path, "pte", x_val, y_val)

    def _finish_pooled(self, job: _Job, scored: Scored, artifact: Artifact, int8_acc: float | None,
                       future: Future) -> CandidateRecord:
        """A candidate measured in a pool's thread (:meth:`Measurer.measure_with_dense`): cached, paired with the
        dense figures taken right after it on the same board, confirmed as :meth:`_settle` does, journaled."""
        try:
            (raw, dense), seconds = future.result()
            self.measurer.persist_count()
            self.measurer.store(artifact.sha256, raw)
            measurement = self.measurer.paired_with(raw, dense)
            start = time.perf_counter()
            if job.phase != Phase.DENSE and self.objective.needs_measurement:
                measurement = self._settle(artifact, raw, self.scored_accuracy(scored.accuracy, int8_acc),
                                           scored.macs, job.choices, confirm=job.phase == Phase.SEARCH,
                                           first=measurement)
            stages = {"export": artifact.seconds, "measure": seconds + time.perf_counter() - start}
        finally:
            Path(artifact.path).unlink(missing_ok=True)
        return self._finish(job, scored, measured=(artifact.sha256, measurement, int8_acc, stages))

    def _shared_scorer(self, executor: Executor) -> object:
        """The scorer as the executor's tasks take it (put into a cluster's object store once per run)."""
        if self._shared is None or self._shared[0] is not executor:
            self._shared = (executor, executor.share(self.scorer))
        return self._shared[1]

    def _prepare(self, choices: np.ndarray, phase: Phase) -> _Job | CandidateRecord:
        """The plan to evaluate, or (a plan already in the journal) its reused row, journaled."""
        chosen = candidate_plan(self.space, choices)
        key = plan_hash(chosen)
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
                    reward=self._reward(scored, known.macs, known.measurement, choices, known.features),
                    eval_seconds=0.0, artifact_sha256=known.artifact_sha256, measurement=known.measurement,
                    reused=True, int8_accuracy=known.int8_accuracy, features=known.features,
                )
            )
        return _Job(chosen, key, np.asarray(choices), phase)

    def _wants_measurement(self, job: _Job, scored: Scored, force_measure: bool = False) -> bool:
        """Whether a scored plan is exported and measured (:meth:`_worth_measuring`, or forced). The floor plan
        (forced: it tells whether the target is reachable) is not measured when a trusted device latency model
        predicts it meets the target even 10% slower than predicted."""
        if job.phase == Phase.FLOOR and self.devices:
            device = self.device_predicted_figures(scored.features)
            if device is not None and self.figures_meet_target(
                    {dev: value * (1.0 + TRUST_ERROR) for dev, value in device.items()}, self.dense_figures()):
                logger.info("the most aggressive plan is predicted at %s of dense by the trusted device latency "
                            "model: the target is reachable, not measured", ", ".join(
                                f"{value / self.dense_figures()[dev]:.2f}x on {dev}" for dev, value in device.items()))
                return False
        return bool(self.devices) and (force_measure or self._worth_measuring(scored.accuracy, scored.macs, job.choices,
                                                                              scored.features))

    def _finish(self, job: _Job, scored: Scored | Failed, export: Exporter | None = None,
                force_measure: bool = False, measure: bool | None = None,
                measured: tuple[str, Measurements, float | None, dict[str, float]] | None = None) -> CandidateRecord:
        """A scored plan measured (``measure``, or when None: :meth:`_wants_measurement`; exported with
        ``export(path, quantize)``; ``measured``: (sha256, measurement, int8 accuracy, stage seconds) taken
        already), rewarded and journaled."""
        phase, choices = job.phase, job.choices
        start = time.perf_counter() - scored.seconds
        if isinstance(scored, Failed):
            # the worst reward, recorded so the policy learns from it and a resume does not retry it
            return self._record_invalid(phase, job.chosen, scored.failure(), scored.seconds)
        acc = scored.accuracy
        sha, measurement, int8_acc, stages = None, None, None, {}
        if measure is None:
            measure = self._wants_measurement(job, scored, force_measure)
        try:
            if measured is not None:
                sha, measurement, int8_acc, stages = measured
            elif measure and export is not None:
                settle = None
                if phase != Phase.DENSE and self.objective.needs_measurement:
                    def settle(artifact: Artifact, measured: Measurements,
                               int8_accuracy: float | None = None) -> Measurements:
                        return self._settle(artifact, measured, self.scored_accuracy(acc, int8_accuracy),
                                            scored.macs, choices, confirm=phase == Phase.SEARCH)
                sha, measurement, int8_acc, stages = self._measure(job.key, export, settle)
        except CandidateFailure as failure:
            return self._record_invalid(phase, job.chosen, failure, time.perf_counter() - start)
        reward = self._reward(self.scored_accuracy(acc, int8_acc), scored.macs, measurement, choices,
                              scored.features) if phase != Phase.DENSE else 0.0
        record = CandidateRecord(
            phase=phase, plan=job.chosen, accuracy=acc, macs=scored.macs, params=scored.params,
            reward=reward, eval_seconds=time.perf_counter() - start, artifact_sha256=sha, measurement=measurement,
            int8_accuracy=int8_acc, stage_seconds={"score": scored.seconds, **stages}, features=scored.features,
        )
        record = self.journal.record(record)
        if measurement is not None:
            self._learn_latency(phase, scored.features, measurement)
        predicted = self.cost_model.predict(choices)
        if phase != Phase.DENSE and (measurement is not None or not self.objective.needs_measurement):
            self.refit_cost_model()
        logger.info(
            "%s candidate %s: acc %.4f%s macs %d measured %s predicted %.3f reward %.4f (%.1fs)", phase, record.id,
            acc, "" if int8_acc is None else f" (int8 {int8_acc:.4f})", scored.macs,
            None if measurement is None else self.measurer.figures(measurement), predicted, reward, record.eval_seconds,
        )
        return record

    def _measure(self, key: str, export: Exporter, settle: Settle | None = None
                 ) -> tuple[str, Measurements, float | None, dict[str, float]]:
        """(sha256, measurement, int8 validation accuracy or None) of the plan's artifact in the run's precision:
        exported into the work folder, scored by the ExecuTorch runtime when int8, measured on every device
        (cache first); ``settle(artifact, measurement)``, while the artifact exists, turns that into the recorded
        measurement (:meth:`_settle`: paired with dense, confirmed)."""
        int8 = self.precision == Precision.INT8
        artifact = export(self._artifact_path(key), int8)
        try:
            int8_acc = self._int8_accuracy(artifact) if int8 else None
            start = time.perf_counter()
            measurement = self.measurer.measure(artifact.path, artifact.sha256)
            if settle is not None:  # the reward it weighs uses the int8 accuracy in an int8 search
                measurement = settle(artifact, measurement, int8_acc)
            stages = {"export": artifact.seconds, "measure": time.perf_counter() - start}
        finally:
            Path(artifact.path).unlink(missing_ok=True)
        return artifact.sha256, measurement, int8_acc, stages

    def scored_accuracy(self, acc: float, int8_acc: float | None) -> float:
        """The accuracy a reward uses: fp32 searches ``acc``; int8 searches the int8 artifact's accuracy, or,
        for a candidate that was not quantized (not measured), ``acc`` less the mean fp32 -> int8 drop of the
        candidates that were (an unmeasured plan must not look better for having skipped quantization)."""
        if self.precision != Precision.INT8 or int8_acc is not None:
            return acc if int8_acc is None else int8_acc
        drops = [r.accuracy - r.int8_accuracy for r in self.journal.candidates()
                 if r.int8_accuracy is not None and not r.reused and r.phase != Phase.FINAL]
        return acc - (sum(drops) / len(drops) if drops else 0.0)

    def _record_invalid(self, phase: str, plan: CandidatePlan, failure: CandidateFailure,
                        seconds: float) -> CandidateRecord:
        if phase == Phase.DENSE:  # no reference to compare against: nothing else can be scored either
            raise SearchError(f"the unpruned model cannot be measured: {failure.message}",
                              hint="check that it exports on its own: sculpt-host export --model ... --out m.pte")
        logger.info("%s candidate invalid: %s", phase, failure.message)
        return self.journal.record(
            CandidateRecord(
                phase=phase, plan=plan, accuracy=0.0,
                macs=self.dense.macs if self.dense else 0, params=self.dense.params if self.dense else 0,
                reward=INVALID_REWARD, eval_seconds=seconds, status=STATUS_INVALID,
                reason=f"{failure.stage} failed: {failure.reason}", failed_layer=failure.layer,
            )
        )

    def remeasure_side_by_side(self, records: Sequence[CandidateRecord], rounds: int = 2) -> list[dict[str, float]]:
        """The objective's figures of measured rows measured again now, alternating between them ``rounds``
        times (median per device), bypassing the cache: two figures taken minutes apart on a busy board can
        be tens of percent off, figures taken side by side are comparable. Re-exports each row's plan (the
        search does not keep artifacts), so it is for rare checks, not for every candidate. An int8 search
        re-exports in int8 (calibrated as its candidates are; weights of the base model: the int8 program's
        latency depends on its shapes, not on the weights' values)."""
        artifacts = []
        try:
            for i, record in enumerate(records):
                plan = candidate_plan(self.space, self.choices_of(record)).plan
                artifacts.append(self.scorer.export(self.scorer.realize_checked(plan),
                                                    self._workdir / f"side-by-side-{i}.pte",
                                                    quantize=self.precision == Precision.INT8))
            return self.measurer.side_by_side(artifacts, rounds)
        finally:
            for artifact in artifacts:
                Path(artifact.path).unlink(missing_ok=True)

    # -- reward --------------------------------------------------------------------------------------
    def cost_estimate(self, record: CandidateRecord) -> float:
        """Worst-device cost of a candidate relative to dense: measured (to its paired reference), else predicted
        by the trusted device latency model (:meth:`search_figures`), else 1.0."""
        ratio = self.cost_ratio(record)
        if ratio is None and self.objective.needs_measurement:
            known = self.search_figures(record)
            ratio = None if known is None else worst_ratio(*known)
        return 1.0 if ratio is None else ratio

    def search_figures(self, record: CandidateRecord) -> tuple[dict[str, float], dict[str, float]] | None:
        """(per-device figures, the dense figures they compare with) the search holds for a row: its measurement
        and the dense figures taken right after it; for a row that was not measured, what the trusted device
        latency model predicts from its realized operators (a trusted search under a hard target measures
        nothing itself, :meth:`_worth_measuring`) and the median dense figures; else None."""
        if record.measurement:
            return self.measurer.figures(record.measurement), self.measurer.reference(record.measurement)
        predicted = self.device_predicted_figures(record.features)
        return None if predicted is None else (predicted, self.dense_figures())

    def row_meets_target(self, record: CandidateRecord) -> bool:
        """The row's search figures (:meth:`search_figures`: measured, or trusted predictions) meet the target."""
        known = self.search_figures(record)
        return known is not None and self.figures_meet_target(*known)

    def learn_confirmed(self, record: CandidateRecord, figures: dict[str, float], dense: dict[str, float]) -> None:
        """A row measured side by side with dense in the final stage (``figures``, ``dense``) for the device
        latency model, predicted first as a search candidate is (:meth:`_learn_latency`). For a trusted search
        under a hard target these are its only measured candidates, and what keeps or ends the trust."""
        if record.measurement or self.objective.name != ObjectiveName.LATENCY:
            return  # a measured row is in the store already
        median = self.dense_figures()
        steady = {dev: value / dense[dev] * median[dev] for dev, value in figures.items()
                  if dense.get(dev) and dev in median}
        self.latency.learn(record.features, steady, median, search=True)

    def device_predicted_figures(self, features: tuple[float, ...] | None) -> dict[str, float] | None:
        """Per-device figure (ms) the device latency model predicts for a realized plan with operator ``features``,
        when that model is trusted to stand in for the devices (:meth:`LatencyLearner.distrust`); else None."""
        if self.objective.name != ObjectiveName.LATENCY or features is None or self.dense is None:
            return None
        if self.latency.distrust():
            return None
        ratios = self.latency.predict_ratios(features)
        if ratios is None:
            return None
        dense = self.dense_figures()
        return {dev: dense[dev] * ratio for dev, ratio in ratios.items() if dev in dense}

    def _worth_measuring(self, acc: float, macs: int, choices: np.ndarray,
                         features: tuple[float, ...] | None = None) -> bool:
        if not self.objective.needs_measurement:
            return False
        if self.dense is None:
            return True
        # a trusted device latency model stands in for the first min_measured measurements (they calibrate the
        # per-run cost model) and says which plans can meet a target. Under a hard target it stands in for the
        # board for the whole search: the final stage measures the plans it predicts best, side by side with
        # dense (FinalStage._confirmed), and the board runs a handful of benchmarks instead of two per candidate
        device = self.device_predicted_figures(features)
        if device is not None and self.objective.constraint.budget:
            return False
        measured = [r for r in self.journal.candidates(Phase.SEARCH) if r.measurement and not r.reused]
        drop = self.policy.min_accuracy_drop
        if drop is not None:
            # "cannot win" holds only against a measured plan that meets the target: until one does, the most
            # accurate plans near the target are the ones to measure, however far below dense they fall
            # before fine-tuning (MobileNetV2 at 0.7x lost 20-30 points after the recovery steps)
            winners = [r.accuracy for r in measured if self.meets_target(r.measurement)]
            bar = max(winners) if winners else (self.dense.accuracy if self.meets_target(self.dense.measurement)
                                                 else None)
            if bar is not None and acc < bar - drop:
                return False
        if device is None and len(measured) < self.policy.min_measured:
            return True
        pool = measured
        if self.objective.constraint.budget:
            # the target is a wall for what is delivered: only a plan that meets it can be beaten, and while
            # none measured does, one the cost model expects to meet it is worth measuring whatever its
            # accuracy (an accurate plan at 0.80x must not keep 85%-accurate plans at 0.70x from being measured).
            # "Expects" within its own error: the projection proposes plans up to a little over the target, and
            # a model misled by one noisy measurement put all of them just over it, so none was ever measured
            pool = [r for r in measured if self.meets_target(r.measurement)]
            if not pool:
                if choices is not None and self.figures_meet_target(self.predicted_figures(choices, optimistic=True),
                                                                    self.dense_figures()):
                    return True
                pool = measured
        if not pool:  # a trusted device model under a soft constraint: the first plan is measured
            return not self.objective.constraint.budget
        best = max(r.reward for r in pool)
        predicted = self._reward(acc, macs, None, choices, features)
        return predicted >= best * (1.0 - self.policy.slack)

    def meets_target(self, measurement: Measurements | None) -> bool:
        """The measured figures are within the objective's target on every device."""
        return self.figures_meet_target(self.measurer.figures(measurement), self.measurer.reference(measurement))

    def figures_meet_target(self, figures: dict[str, float], dense: dict[str, float]) -> bool:
        """``figures`` (ms or mJ per device) are within the objective's target of ``dense`` on every device."""
        return bool(figures) and all(value <= self.objective.target.resolve(dense[dev])
                                     for dev, value in figures.items() if dev in dense)

    def predicted_reward(self, accuracy: float, choices: np.ndarray, mac_ratio: float) -> float:
        """The reward of an unevaluated plan with a predicted ``accuracy`` and MAC ratio (of dense): its latency or
        energy as the cost model predicts it (as for an unmeasured candidate), its MACs from ``mac_ratio``."""
        dense_macs = self.dense.macs if self.dense is not None else 0
        return self._reward(accuracy, max(1, round(dense_macs * mac_ratio)), None, choices)

    def _reward(self, acc: float, macs: int, measurement: Measurements | None,
                choices: np.ndarray | None = None, features: tuple[float, ...] | None = None) -> float:
        dense_macs = self.dense.macs if self.dense is not None else macs
        if not self.objective.needs_measurement:
            return self.objective.reward(acc, macs, dense_macs)
        dense = self.measurer.reference(measurement)
        figures = self.measurer.figures(measurement)
        if not figures:
            # not measured: the trusted device latency model's prediction from the realized plan's operators, else
            # the cost model's (fitted on the measured candidates). Without either, credit no speed-up: an
            # optimistic guess teaches the policy to prefer unmeasured plans.
            figures = self.device_predicted_figures(features) or (
                self.predicted_figures(choices) if choices is not None else dict(dense))
        return self.objective.reward(acc, macs, dense_macs, measured=figures, dense_measured=dense)

    def close(self) -> None:
        """Remove the run's working folder (``<run>/.work``)."""
        shutil.rmtree(self._workdir, ignore_errors=True)
