"""The final stage of a search: the chosen plans are fine-tuned with masks held fixed (distillation from
dense), realized, exported (``.pte``, and ``.tflite`` when available), benchmarked on the device(s) with the
longer final policy, and reported (result.json, report.md, plots, TensorBoard).

Which plans: the Pareto front of the search candidates in (validation accuracy, cost), best reward first;
under the ``hard`` constraint (a budget), every plan that meets the target before any that does not.
For a latency/energy search, the front's best few measured plans (:data:`CONFIRM_TOP`, at least one more than
``final_top``) are first measured again side by side with dense and re-ranked on those figures: the best
reward over candidates measured once each is biased towards the luckiest measurement (the winner's curse;
RepVGG's winner was measured at 0.58x of dense during the search and ran at 0.75x beside it). Under a hard
target, a plan whose confirmation and search measurement disagree on meeting it is measured once more and
ranked on the median of the three. The order is
kept in the journal, so a resumed run finishes the same plans.
A plan that cannot be finished (its fine-tuned realization or export fails) is journaled as an invalid
"final" row with the reason, named in the report's notes, and the next plan of the front takes its place.
The test split is read here for the report only; it never chooses anything.

What a final model leaves in the run folder, for ``sculpt-host export --from-run`` and for deployment:
``final-N.pte`` (and ``.tflite``), ``final-N.plan.json``, ``final-N.pt2`` (the realized, fine-tuned model as a
``torch.export`` program: loads with plain torch, ``torch.export.load(path).module()``), ``final-N.pt`` (the
fine-tuned state dict of the original architecture, masked weights zero) and ``final-N.json`` (the sidecar:
input preprocessing, accuracy, artifact digests).

The speed-ups reported are dense and final models measured again side by side, in interleaved rounds, after
every final model is built: figures taken minutes apart on a busy board can differ by tens of percent.

An int8 search (``precision="int8"``) also writes ``final-N-int8.pte`` (quantized on the run's calibration
images, with its own sidecar ``final-N-int8.json``); its accuracy (validation and test, run by the ExecuTorch
runtime) and latency are the final model's figures, judged against the dense int8 model, and the fp32 twins
of dense and of every final model, measured in the same interleaved rounds, are reported beside them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from math import inf
from pathlib import Path
from typing import Any

import torch
from torch import nn

from host.data.checks import data_warnings
from host.data.preprocess import Preprocessing
from host.data.splits import DatasetSplits
from host.errors import DeviceError, ExportError, MissingDependencyError, SearchError
from host.export import Artifact, export_tflite
from host.export.evaluate import artifact_accuracy
from host.export.sidecar import write_sidecar
from host.kinds import ObjectiveName, Phase, Precision, Stage
from host.report import InvalidCandidate, ModelFigures, RunSummary, write_report, write_tensorboard
from host.report.pareto import pareto_front
from host.search.candidate import INVALID_REWARD, CandidateEvaluator
from host.search.config import SearchConfig
from host.search.devices import SearchDevice
from host.search.finetune import accuracy, masked_finetune, recalibrate_bn
from host.search.journal import STATUS_INVALID, CandidateRecord, Journal
from host.search.measurement import Measurements, median_measurements
from host.search.measurer import worst_ratio
from host.search.progress import Progress, ProgressFn
from host.search.scorer import Batches, CandidateFailure, batches
from host.search.space import SearchSpace
from patterns.plan import Plan

logger = logging.getLogger(__name__)

ACCURACY_WARNING_DROP = 0.10  # a final model this far below dense (validation) is flagged
CONFIRM_TOP = 3  # measured plans confirmed side by side with dense before choosing the final ones
FINAL_ORDER_KEY = "final_order"  # journal value: the confirmed order (plan hashes), for a resume
FINAL_ROUNDS = 3  # interleaved dense/final measurement rounds; the report gives the median of each


@dataclass(frozen=True)
class QuantizedModel:
    """A model's int8 ``.pte`` (calibrated on the run's calibration images) and its accuracy as the ExecuTorch
    runtime scores it on the validation and test splits."""

    artifact: Artifact
    val: float
    val_images: int
    test: float
    test_images: int

    @property
    def path(self) -> Path:
        return Path(self.artifact.path)

    @property
    def sha256(self) -> str:
        return self.artifact.sha256


@dataclass(frozen=True)
class FinalModel:
    """One finished final model: the search row it came from, its accuracy (realized module), its files in
    the run folder (``artifacts``: kind -> path) and, once measured side by side with dense, its measurement.
    In an int8 search ``int8`` is its quantized twin, ``measurement`` the int8 one and ``fp32_measurement``
    the fp32 model's."""

    name: str
    search_row: CandidateRecord
    val: float
    test: float
    artifacts: dict[str, str]
    sha256: str  # of the fp32 .pte
    int8: QuantizedModel | None = None
    stored: CandidateRecord | None = None  # its journal row, when a resumed run had finished it before
    measurement: Measurements | None = None
    fp32_measurement: Measurements | None = None
    record: CandidateRecord | None = None  # its "final" journal row


class FinalStage:
    """Fine-tunes, verifies and reports the best plans of one run (``config.out``)."""

    def __init__(self, config: SearchConfig, journal: Journal, progress: ProgressFn) -> None:
        self.config = config
        self.journal = journal
        self.run_dir = Path(config.out)
        self.progress = progress
        self._dense_test: float | None = None
        self.skipped: list[str] = []  # why Pareto plans were passed over, for the report's notes
        self.preprocessing: Preprocessing | None = None  # of the run's data, for the sidecars
        self.dense_measurement: Measurements | None = None  # dense, measured side by side with the finals
        # int8 searches: the dense int8 model (its accuracies) and, side by side, the fp32 dense's measurement
        # (dense_measurement is then the int8 one)
        self.dense_int8: QuantizedModel | None = None
        self.dense_fp32_measurement: Measurements | None = None
        self.data_warnings: list[str] = []  # host.data.checks: splits too small, a baseline near chance

    def candidates(self, evaluator: CandidateEvaluator) -> list[CandidateRecord]:
        """The plans to finish, in order: Pareto front in (val accuracy, cost), best reward first. :meth:`run`
        finishes the first ``final_top`` that can be built; the rest stand in for those that cannot."""
        rows = [r for r in self.journal.candidates(Phase.SEARCH) if not r.reused and r.valid and r.accuracy > 0]
        if self.config.reward_objective().needs_measurement:
            # rows with figures (measured, or predicted by a trusted device latency model: a trusted search under
            # a hard target measures none itself); an unmeasured row's reward otherwise rests on the cost model's
            # guess. Unless none has figures: then the front of all of them
            rows = [r for r in rows if evaluator.search_figures(r) is not None] or rows
            costs = [evaluator.cost_estimate(r) for r in rows]
        else:
            costs = [float(r.macs) for r in rows]
        points = [(r.deployed_accuracy, c) for r, c in zip(rows, costs, strict=True)]
        front = [rows[i] for i in pareto_front(points)]
        objective = self.config.reward_objective()
        if objective.needs_measurement:  # under a budget constraint, plans that meet the target first
            def order(r):
                return objective.rank_key(r.reward, evaluator.row_meets_target(r))
        else:
            def order(r):
                return -r.reward
        front.sort(key=order)
        # the runners-up off the front, for the confirmation: one lucky measurement can put a near-dense
        # plan alone on the front (MobileNetV3-small on a loaded host: a plan with 0.4% of the MACs cut
        # measured at 0.72x of dense dominated every other), and there is then nothing to compare it with
        runners_up = sorted((r for r in rows if evaluator.search_figures(r) is not None and r not in front), key=order)
        return self._confirmed(evaluator, _unique(front), _unique(runners_up))

    def _confirmed(self, evaluator: CandidateEvaluator, rows: list[CandidateRecord],
                   runners_up: list[CandidateRecord] = ()) -> list[CandidateRecord]:
        """``rows`` with the best few that have search figures (measured, or predicted by a trusted device model)
        re-ranked on a side-by-side measurement with dense; the best ``runners_up`` fill the confirmation up to
        its size and take part in the ranking. Under a hard target, when none of them meets it side by side and a
        plan was only predicted, the next few plans that are expected to meet it are confirmed too (once)."""
        objective = self.config.reward_objective()
        order = self.journal.get_value(FINAL_ORDER_KEY)
        pool = {r.plan_hash: r for r in [*runners_up, *rows]}
        if order is None:
            size = max(CONFIRM_TOP, self.config.final_top + 1)
            known = [r for r in rows if evaluator.search_figures(r) is not None]
            chosen = {r.plan_hash for r in known}
            known += [r for r in runners_up if r.plan_hash not in chosen]
            top = known[:size]
            if (not objective.needs_measurement or not evaluator.devices or self.config.final_top == 0
                    or len(top) < 2):
                return rows
            rewards: dict[str, float] = {}
            meets: dict[str, bool] = {}
            if not self._confirm(evaluator, top, rewards, meets):
                return rows
            more = [r for r in known[size:] if evaluator.row_meets_target(r)][:size]
            if (objective.constraint.budget and not any(meets.values()) and more
                    and any(not r.measurement for r in top)):
                logger.info("none of the %d plans confirmed meets the target; confirming the next %d the search "
                            "expects to meet it", len(top), len(more))
                if self._confirm(evaluator, more, rewards, meets):
                    top += more
            confirmed = sorted(top, key=lambda r: objective.rank_key(rewards[r.plan_hash], meets[r.plan_hash]))
            order = [r.plan_hash for r in confirmed]
            self.journal.set_value(FINAL_ORDER_KEY, order)
        rank = {h: i for i, h in enumerate(order)}
        confirmed = [pool[h] for h in order if h in pool]
        return confirmed + [r for r in rows if r.plan_hash not in rank]  # the rest of the front as it was

    def _confirm(self, evaluator: CandidateEvaluator, top: list[CandidateRecord], rewards: dict[str, float],
                 meets: dict[str, bool]) -> bool:
        """Measure ``top`` side by side with dense; their rewards and target verdicts on those figures go into
        ``rewards`` and ``meets`` (under a hard target, flipped verdicts settled, :meth:`_settle_flips`). False
        when the board failed (the caller keeps the search's order)."""
        objective = self.config.reward_objective()
        self.progress(Progress(Stage.FINAL, 0, self.config.final_top,
                               f"confirming the best {len(top)} plans side by side with dense"))
        try:
            dense, *figures = evaluator.remeasure_side_by_side([evaluator.dense, *top])
        except (DeviceError, CandidateFailure) as exc:  # a failing board: keep the search's order
            logger.warning("could not confirm the best plans side by side (%s); keeping the search's order", exc)
            return False
        batch_rewards = {r.plan_hash: objective.reward(evaluator.scored_accuracy(r.accuracy, r.int8_accuracy), r.macs,
                                                       evaluator.dense.macs, measured=f, dense_measured=dense)
                         for r, f in zip(top, figures, strict=True)}
        batch_meets = {r.plan_hash: evaluator.figures_meet_target(f, dense) for r, f in zip(top, figures, strict=True)}
        for r, f in zip(top, figures, strict=True):
            searched = evaluator.search_figures(r)
            logger.info("candidate %s confirmed side by side: %s of dense (search: %s%s), reward %.4f (search %.4f)",
                        r.id, _ratios(f, dense), "" if r.measurement else "predicted ",
                        _ratios(*searched) if searched else "-", batch_rewards[r.plan_hash], r.reward)
            evaluator.learn_confirmed(r, f, dense)
        if objective.constraint.budget:
            self._settle_flips(evaluator, top, dict(zip([r.plan_hash for r in top], figures, strict=True)), dense,
                               batch_rewards, batch_meets)
        rewards.update(batch_rewards)
        meets.update(batch_meets)
        return True

    def _settle_flips(self, evaluator: CandidateEvaluator, top: list[CandidateRecord], figures: dict[str, dict],
                      dense: dict[str, float], rewards: dict[str, float], meets: dict[str, bool]) -> None:
        """Under a hard target, a plan whose side-by-side measurement and search figures (measured, or predicted by
        the trusted device model) disagree on meeting the target is measured side by side once more, and ranked
        on the median of the three (by worst-device ratio to their dense figures): one lucky confirmation must not
        put a plan that missed the target in the search first (an int8 ResNet-20 at 16 px, 0.04 ms an inference:
        0.57x in the search, 0.48x confirmed, 0.57x in the final rounds, against a 0.5x target). ``rewards`` and
        ``meets`` are updated."""
        objective = self.config.reward_objective()
        searched = {r.plan_hash: evaluator.search_figures(r) for r in top}
        flipped = [r for r in top if searched[r.plan_hash] is not None
                   and evaluator.figures_meet_target(*searched[r.plan_hash]) != meets[r.plan_hash]]
        if not flipped:
            return
        try:
            again_dense, *again = evaluator.remeasure_side_by_side([evaluator.dense, *flipped])
        except (DeviceError, CandidateFailure) as exc:
            logger.warning("could not measure again the plans whose target verdicts disagreed (%s)", exc)
            return
        for r, f in zip(flipped, again, strict=True):
            observed = [searched[r.plan_hash], (figures[r.plan_hash], dense), (f, again_dense)]
            observed.sort(key=lambda pair: inf if (ratio := worst_ratio(*pair)) is None else ratio)
            median_figures, median_dense = observed[1]
            rewards[r.plan_hash] = objective.reward(evaluator.scored_accuracy(r.accuracy, r.int8_accuracy), r.macs,
                                                    evaluator.dense.macs, measured=median_figures,
                                                    dense_measured=median_dense)
            meets[r.plan_hash] = evaluator.figures_meet_target(median_figures, median_dense)
            logger.info("candidate %s: the search and the side-by-side measurement disagreed on the target; measured "
                        "again: %s of dense; ranked on the median, %s (%s the target)", r.id, _ratios(f, again_dense),
                        _ratios(median_figures, median_dense), "meets" if meets[r.plan_hash] else "misses")

    def run(self, evaluator: CandidateEvaluator, splits: DatasetSplits, base_model: nn.Module) -> list[FinalModel]:
        """Fine-tune, realize, export and measure every chosen plan, in the order of :meth:`candidates`."""
        self.preprocessing = Preprocessing.from_splits(splits)
        self.data_warnings = data_warnings(splits, self.config.evaluation.batch_size, evaluator.dense.accuracy)
        chosen = self.candidates(evaluator)
        wanted = min(self.config.final_top, len(chosen))
        finals: list[FinalModel] = []
        self.skipped = []
        x_train, y_train = splits.train.tensors()
        train_batches = batches(x_train, y_train, self.config.evaluation.batch_size, self.config.seed)
        test_x, test_y = splits.test.tensors()
        test_batches = batches(test_x, test_y, 256)
        self._dense_test = accuracy(base_model, test_batches)  # for the report only, never for choosing
        if wanted == 0:
            return finals
        if self.config.precision == Precision.INT8:
            self.progress(Progress(Stage.FINAL, 0, wanted, "quantizing the dense model (the int8 reference)"))
            self.dense_int8 = self._quantize(evaluator, base_model, evaluator.workdir / "final-dense-int8.pte",
                                             test_batches)
        for row in chosen:
            if len(finals) == wanted:
                break
            name = f"final-{len(finals) + 1}"
            self.progress(Progress(Stage.FINAL, len(finals), wanted, f"fine-tuning {name}"))
            stored = self.journal.find(row.plan_hash, Phase.FINAL)
            if stored is not None and not stored.valid:  # failed before this resume: it would fail again
                self._skip(row, stored.reason)
                continue
            try:
                finals.append(self._finish(evaluator, base_model, row, name, stored, train_batches, test_batches))
            except CandidateFailure as failure:
                self.journal.record(
                    CandidateRecord(
                        phase=Phase.FINAL, plan=row.plan, accuracy=0.0, macs=row.macs, params=row.params,
                        reward=INVALID_REWARD, eval_seconds=0.0, status=STATUS_INVALID,
                        reason=f"{failure.stage} failed: {failure.reason}", failed_layer=failure.layer,
                    )
                )
                self._skip(row, f"{failure.stage} failed: {failure.reason}")
        if not finals:
            raise SearchError(
                f"none of the {len(chosen)} plan(s) on the Pareto front could be finished: {self.skipped[0]}",
                hint=f"the journal {self.journal.path} keeps the search; report the error above",
            )
        try:
            if evaluator.devices:
                self.progress(Progress(Stage.FINAL, len(finals), wanted, "measuring dense and final models side by side"))
                finals = self._measure_side_by_side(evaluator, base_model, finals, self.dense_int8)
        finally:
            if self.dense_int8 is not None:
                self.dense_int8.path.unlink(missing_ok=True)
        finals = [replace(f, record=f.stored or self.journal.record(
            CandidateRecord(
                phase=Phase.FINAL, plan=f.search_row.plan, accuracy=f.val, macs=f.search_row.macs,
                params=f.search_row.params, reward=f.search_row.reward, eval_seconds=0.0,
                artifact_sha256=f.int8.sha256 if f.int8 else f.sha256, measurement=f.measurement,
                int8_accuracy=f.int8.val if f.int8 else None,
            )
        )) for f in finals]
        self.progress(Progress(Stage.FINAL, len(finals), wanted, "final models done"))
        return finals

    def _measure_side_by_side(self, evaluator: CandidateEvaluator, base_model: nn.Module, finals: list[FinalModel],
                              dense_int8: QuantizedModel | None = None) -> list[FinalModel]:
        """Measure dense and every final ``.pte`` (and, in an int8 search, their int8 twins) in
        :data:`FINAL_ROUNDS` interleaved rounds with the final benchmark policy; each model's measurement
        is the per-field median of its rounds. Returns ``finals`` with their measurements."""
        bench = replace(evaluator.bench, policy=self.config.evaluation.final_bench)
        dense = evaluator.scorer.export(base_model, evaluator.workdir / "final-dense.pte")
        paths = [(Path(dense.path), dense.sha256)] + [(Path(f.artifacts["pte"]), f.sha256) for f in finals]
        if dense_int8 is not None:
            paths += [(dense_int8.path, dense_int8.sha256)]
            paths += [(f.int8.path, f.int8.sha256) for f in finals]
        try:
            taken = evaluator.measurer.rounds(paths, FINAL_ROUNDS, bench)
        finally:
            Path(dense.path).unlink(missing_ok=True)
        medians = [median_measurements(rounds) for rounds in taken]
        fp32, int8 = medians[: len(finals) + 1], medians[len(finals) + 1:]
        if not int8:
            self.dense_measurement = fp32[0]
            return [replace(f, measurement=m) for f, m in zip(finals, fp32[1:], strict=True)]
        # int8 search: the int8 models are the results, the fp32 ones their twins
        self.dense_measurement, self.dense_fp32_measurement = int8[0], fp32[0]
        return [replace(f, measurement=m8, fp32_measurement=m32)
                for f, m32, m8 in zip(finals, fp32[1:], int8[1:], strict=True)]

    def _quantize(self, evaluator: CandidateEvaluator, realized: nn.Module, path: Path,
                  test_batches: Batches) -> QuantizedModel:
        """``realized`` exported int8 at ``path`` (calibrated on the run's calibration images) and scored by
        the runtime on the validation and test splits."""
        artifact = evaluator.scorer.export(realized, path, quantize=True)
        x_val, y_val = evaluator.data.val_tensors()
        x_test, y_test = torch.cat([x for x, _ in test_batches]), torch.cat([y for _, y in test_batches])
        return QuantizedModel(artifact=artifact, val=artifact_accuracy(artifact.path, "pte", x_val, y_val),
                              val_images=len(x_val), test=artifact_accuracy(artifact.path, "pte", x_test, y_test),
                              test_images=len(x_test))

    def _skip(self, row: CandidateRecord, reason: str | None) -> None:
        text = f"search candidate {row.id} was not finished: {reason}; the next plan of the Pareto front, if any, took its place"
        logger.warning("%s", text)
        self.skipped.append(text)

    def _finish(self, evaluator: CandidateEvaluator, base_model: nn.Module, row: CandidateRecord, name: str,
                stored: CandidateRecord | None, train_batches: Batches, test_batches: Batches) -> FinalModel:
        """Fine-tune, realize, export and measure one plan; CandidateFailure when it cannot be built."""
        plan = row.plan.plan
        model, masks = evaluator.scorer.masked_model(plan)
        masked_finetune(model, masks, train_batches, self.config.finetune, teacher=base_model)
        # as every candidate's: a BatchNorm with a low momentum (torchvision's MobileNetV3: 0.01) still holds
        # mostly the pre-fine-tuning statistics after a few epochs (a 256 px MobileNetV3-small final model,
        # not recalibrated, scored 73% validation where its candidate had 94% after the short recovery)
        recalibrate_bn(model, evaluator.data.bn_batches, num_batches=len(evaluator.data.bn_batches))
        masked_val = accuracy(model, evaluator.data.val_batches)
        # accuracy is taken on the REALIZED module, i.e. exactly what gets exported and deployed
        # decisions (filter ranking of mixed kernel patterns) from the base model the masks were made on,
        # weights from the fine-tuned copy: ranking the fine-tuned weights again could pick other filters
        realized = evaluator.scorer.realize_checked(plan, weights_from=model, names=row.plan.choices)
        val = accuracy(realized, evaluator.data.val_batches)
        test = accuracy(realized, test_batches)
        if abs(val - masked_val) > 0.005:
            logger.warning("%s: realized val accuracy %.4f differs from the masked model's %.4f", name, val,
                           masked_val)
        artifacts, sha = self._export_final(evaluator, realized, plan, name, model, {"val": val, "test": test})
        int8 = None
        if self.config.precision == Precision.INT8:
            int8 = self._quantize(evaluator, realized, self.run_dir / f"{name}-int8.pte", test_batches)
            artifacts["int8_pte"] = str(int8.path)
            artifacts["int8_sidecar"] = str(self._int8_sidecar(name, int8, {"val": val, "test": test},
                                                               len(evaluator.data.calibration)))
            logger.info("%s int8: val %.4f test %.4f (fp32 val %.4f test %.4f)", name, int8.val, int8.test,
                        val, test)
        return FinalModel(name=name, search_row=row, val=val, test=test, artifacts=artifacts, sha256=sha, int8=int8,
                          stored=stored)

    def _int8_sidecar(self, name: str, int8: QuantizedModel, fp32: dict[str, float], calibration: int) -> Path:
        """``name-int8.json``: the sidecar of the int8 artifact (its accuracy, with the fp32 model's beside it)."""
        return write_sidecar(
            self.run_dir / f"{name}-int8.json", artifacts=[int8.artifact], preprocessing=self.preprocessing.to_dict(),
            model=self.sidecar_model(name),
            # the shape `export --from-run --quantize` writes: the fp32 model's accuracy, then int8 beside fp32
            accuracy={**fp32, "int8_eval": {"fp32": round(fp32["val"], 4), "int8": round(int8.val, 4),
                                            "images": int8.val_images, "split": "val"},
                      "int8_test_eval": {"fp32": round(fp32["test"], 4), "int8": round(int8.test, 4),
                                         "images": int8.test_images, "split": "test"},
                      "calibration_batches": calibration},
            notes=[f"int8 (PT2E, XNNPACK quantizer, per-channel weights) of {name}; calibrated on training images"],
        )

    def _export_final(self, evaluator: CandidateEvaluator, realized: nn.Module, plan: Plan, name: str,
                      masked: nn.Module, accuracy: dict[str, Any]) -> tuple[dict[str, str], str]:
        """Write every file of one final model (see the module docstring); (artifact paths by kind, .pte sha)."""
        artifacts: dict[str, str] = {}
        pte = evaluator.scorer.export(realized, self.run_dir / f"{name}.pte")
        artifacts["pte"] = str(pte.path)
        exported = [pte]
        if self.config.export_tflite:
            try:
                tfl = export_tflite(realized, (evaluator.data.example_input,), self.run_dir / f"{name}.tflite")
                artifacts["tflite"] = str(tfl.path)
                exported.append(tfl)
            except MissingDependencyError as exc:
                logger.info("no .tflite for %s: %s", name, exc)
            except ExportError as exc:  # the .pte is the main artifact; a failed .tflite is reported, not fatal
                logger.warning("no .tflite for %s: %s", name, exc)
        notes = plan.notes or f"{name} of the search in {self.run_dir}"
        replace(plan, model=self.config.model.model, notes=notes).save(self.run_dir / f"{name}.plan.json")
        artifacts["plan"] = str(self.run_dir / f"{name}.plan.json")
        artifacts.update(self._save_weights(realized, masked, evaluator.data.example_input, name))
        artifacts["sidecar"] = str(write_sidecar(
            self.run_dir / f"{name}.json", artifacts=exported, preprocessing=self.preprocessing.to_dict(),
            model=self.sidecar_model(name), accuracy=accuracy,
        ))
        return artifacts, pte.sha256

    def sidecar_model(self, name: str) -> dict[str, Any]:
        """Where final model ``name`` came from, as its sidecar says (``export --from-run`` writes the same)."""
        spec = self.config.model
        return {"spec": spec.model, "model_args": dict(spec.model_args), "base_checkpoint": spec.checkpoint,
                "run": str(self.run_dir.resolve()), "final": name, "plan": f"{name}.plan.json",
                "pytorch": f"{name}.pt2", "state_dict": f"{name}.pt",
                "data": {"name": spec.data, "root": spec.data_root, "limit": spec.data_limit, "seed": self.config.seed,
                         "image_size": spec.image_size, "channels": spec.in_channels}}

    def _save_weights(self, realized: nn.Module, masked: nn.Module, example: torch.Tensor, name: str) -> dict[str, str]:
        """``name.pt2`` (the realized model, exported) and ``name.pt`` (the masked state dict), atomically."""
        pt2, state = self.run_dir / f"{name}.pt2", self.run_dir / f"{name}.pt"
        tmp = pt2.with_suffix(".tmp.pt2")
        with torch.no_grad():
            torch.export.save(torch.export.export(realized.eval(), (example,)), str(tmp))
        os.replace(tmp, pt2)
        tmp = state.with_suffix(".tmp.pt")
        torch.save(masked.state_dict(), tmp)
        os.replace(tmp, state)
        return {"pt2": str(pt2), "state_dict": str(state)}

    def report(self, evaluator: CandidateEvaluator, space: SearchSpace, devices: Sequence[SearchDevice], finals: list[FinalModel], seconds: float) -> RunSummary:
        """Write result.json, report.md, plots and TensorBoard logs; return the run's summary."""
        self.progress(Progress(Stage.REPORT, 0, 1, "writing the report"))
        cfg = self.config
        objective = cfg.reward_objective()
        dense = evaluator.dense

        def figures(name: str, record: CandidateRecord, **extra: Any) -> ModelFigures:
            meas = extra.pop("measurement", record.measurement) or {}
            return ModelFigures(
                name=name, val_accuracy=extra.pop("val", record.accuracy), macs=record.macs, params=record.params,
                latency_ms={d: m.p50_ms for d, m in meas.items()},
                energy_mj={d: m.energy_mj for d, m in meas.items() if m.energy_mj is not None},
                choices=_ordered(record.plan.choices, space.layer_names), reward=record.reward,
                **extra,
            )

        rows = [r for r in self.journal.candidates(Phase.SEARCH) if not r.reused]
        valid = [r for r in rows if r.valid]  # an invalid row has no accuracy or cost to plot or rank
        best = max(valid, key=lambda r: r.reward) if valid else None
        invalid = tuple(
            InvalidCandidate(id=r.id, phase=r.phase, reason=r.reason or "no reason recorded", failed_layer=r.failed_layer,
                             choice=r.plan.choice(r.failed_layer))
            for r in self.journal.candidates() if not r.valid and not r.reused
        )
        int8 = cfg.precision == Precision.INT8
        if int8:  # the int8 models are the results; their fp32 twins are reported beside them
            dense_figures = figures("dense", dense, val=dense.deployed_accuracy, precision=Precision.INT8,
                                    test_accuracy=self.dense_int8.test if self.dense_int8 else None,
                                    measurement=self.dense_measurement or dense.measurement)
            final_figures = tuple(
                figures(f.name, f.search_row, val=f.int8.val, test_accuracy=f.int8.test,
                        artifacts=f.artifacts, measurement=f.measurement, precision=Precision.INT8)
                for f in finals
            )
            twins = (figures("dense", dense, val=dense.accuracy, test_accuracy=self._dense_test,
                             measurement=self.dense_fp32_measurement or {}),) + tuple(
                figures(f.name, f.search_row, val=f.val, test_accuracy=f.test,
                        measurement=f.fp32_measurement or {})
                for f in finals
            )
        else:
            dense_figures = figures("dense", dense, test_accuracy=self._dense_test,
                                    measurement=self.dense_measurement or dense.measurement)
            final_figures = tuple(
                figures(f.name, f.search_row, val=f.val, test_accuracy=f.test, artifacts=f.artifacts,
                        measurement=f.measurement)
                for f in finals
            )
            twins = ()
        best_figures = None
        if best:
            best_figures = figures("best-search", best, val=best.deployed_accuracy,
                                   precision=Precision.INT8 if best.int8_accuracy is not None else Precision.FP32)
        summary = RunSummary(
            model=cfg.model.model, dataset=cfg.model.data, objective=objective.name,
            target=str(objective.target) if objective.target else f"{cfg.target_flops:.0%} MAC reduction",
            devices={d.name: d.fingerprint for d in devices}, budget=cfg.budget,
            candidates_evaluated=self.journal.count(Phase.SEARCH, evaluated_only=True),
            measurements_taken=evaluator.measurer.measurements_taken, seconds=seconds,
            dense=dense_figures, best_search=best_figures, finals=final_figures,
            precision=cfg.precision, fp32_twins=twins,
            vocab=tuple(space.vocab),
            notes=_notes(cfg, valid, len(rows) - len(valid)) + tuple(self.skipped),
            invalid=invalid,
            preprocessing=self.preprocessing.to_dict() if self.preprocessing is not None else None,
            warnings=tuple(self.data_warnings),
            pools={d.name: self.journal.get_value(f"pool_spread:{d.name}") for d in devices
                   if self.journal.get_value(f"pool_spread:{d.name}") is not None},
        )
        summary = target_verdicts(summary, objective)
        if objective.needs_measurement:
            points = [(r.deployed_accuracy, max(evaluator.measurer.figures(r.measurement).values()))
                      for r in valid if r.measurement]
        else:
            points = [(r.deployed_accuracy, float(r.macs)) for r in valid]
        write_report(self.run_dir, summary, points, [r.reward for r in rows])
        tb_rows = []
        for r in rows:
            row = {"reward": r.reward, "accuracy": r.deployed_accuracy, "macs": float(r.macs)}
            figs = evaluator.measurer.figures(r.measurement)
            if figs:
                row["cost"] = max(figs.values())
            tb_rows.append(row)
        write_tensorboard(self.run_dir / "tensorboard", tb_rows)
        self.progress(Progress(Stage.REPORT, 1, 1, f"report written to {self.run_dir / 'report.md'}"))
        return summary


def target_verdicts(summary, objective):
    """``summary`` with every final model's ``target_met`` set and a warning for each missed target and for
    each final model slower than dense on a device (speed-ups are of side-by-side measurements)."""
    warnings: list[str] = []
    finals = []
    dense = summary.dense
    for m in summary.finals:
        met = True
        if objective.needs_measurement:
            figs, dense_figs, unit = ((m.energy_mj, dense.energy_mj, "mJ") if objective.name == ObjectiveName.ENERGY
                                      else (m.latency_ms, dense.latency_ms, "ms"))
            for dev, value in figs.items():
                if dev not in dense_figs:
                    continue
                target = objective.target.resolve(dense_figs[dev])
                if value > target:
                    met = False
                    warnings.append(
                        f"{m.name} missed the {objective.name} target {objective.target} on {dev}: "
                        f"{value:.3f} {unit} = {value / dense_figs[dev]:.2f}x of dense ({dense_figs[dev]:.3f} {unit}), "
                        f"target {target:.3f} {unit}")
        else:
            cut = 1 - m.macs / dense.macs if dense.macs else 0.0
            if cut < objective.target_flops - 1e-9:
                met = False
                warnings.append(f"{m.name} missed the {objective.target_flops:.0%} MAC reduction target: it removes "
                                f"{cut:.1%}")
        if dense.val_accuracy - m.val_accuracy > ACCURACY_WARNING_DROP:
            warnings.append(f"{m.name} is {100 * (dense.val_accuracy - m.val_accuracy):.1f} points less accurate than "
                            f"dense ({m.val_accuracy:.1%} vs {dense.val_accuracy:.1%} validation): a looser target, a "
                            "larger budget or more --finetune-epochs may keep more of it")
        for dev, ms in m.latency_ms.items():
            if dev in dense.latency_ms and ms > dense.latency_ms[dev]:
                warnings.append(f"{m.name} is SLOWER than dense on {dev}: {ms:.3f} ms vs {dense.latency_ms[dev]:.3f} ms "
                                "(measured side by side)")
        finals.append(replace(m, target_met=met))
    return replace(summary, finals=tuple(finals), warnings=summary.warnings + tuple(warnings))


def _unique(rows: list[CandidateRecord]) -> list[CandidateRecord]:
    """``rows`` without repeated plans (the first of each kept)."""
    seen: set[str] = set()
    return [r for r in rows if not (r.plan_hash in seen or seen.add(r.plan_hash))]


def _ratios(figures: dict[str, float], dense: dict[str, float]) -> str:
    return ", ".join(f"{v / dense[d]:.2f}x on {d}" for d, v in figures.items() if dense.get(d))


def _ordered(choices: Mapping[str, str], layer_names: list[str]) -> dict[str, str]:
    """``choices`` in the model's layer order (the journal stores them sorted by name)."""
    return {name: choices[name] for name in layer_names if name in choices}


def _notes(cfg: SearchConfig, rows: list[CandidateRecord], invalid: int) -> tuple[str, ...]:
    """Notes on the valid search ``rows``, plus the count of ``invalid`` ones."""
    notes = []
    if invalid:
        notes.append(f"{invalid} search candidate(s) could not be built (see 'Plans that could not be built'); "
                     "each got the invalid reward and used its budget slot")
    unmeasured = sum(1 for r in rows if not r.measurement)
    if cfg.objective.measured and unmeasured:
        notes.append(
            f"{unmeasured} candidate(s) were not measured (too inaccurate, or their predicted reward was not "
            f"close to the best measured one); their reward used the {cfg.objective} predicted by the device's "
            "latency model where it was trusted, else by the cost model fitted on the measured candidates, and only "
            "measured candidates were eligible as final models"
        )
    return tuple(notes)

