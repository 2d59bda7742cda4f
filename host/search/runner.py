"""The search loop: prepare (fail fast), measure dense, PPO over plans, final fine-tune + verify, report.

Order of work (the cheap checks that can fail come first):
1. config and names (model, dataset, target) -> ConfigError/ModelError/DataError immediately;
2. devices opened and asked for their info -> DeviceUnreachableError before any training;
3. trained checkpoint (cached), dataset splits, graph and search space; unreachable flops target -> SearchError;
4. dense model evaluated and measured (reference for "0.5x"); the most aggressive plan measured ("floor")
   so an unreachable latency/energy target is reported before the budget is spent;
5. PPO: one env step = one candidate, journaled as it completes; the policy is saved after every rollout;
6. final stage: Pareto-optimal candidates fine-tuned with masks fixed (+ distillation), realized, exported,
   measured with the longer final benchmark policy, test accuracy reported (never used to choose);
7. result.json, report.md, plots, TensorBoard.

Resume: the journal holds every finished candidate and the stored config; ``ppo.zip`` the last policy.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from host.errors import ConfigError, DataError, ModelError, SearchError
from host.search.config import SearchConfig
from host.search.journal import CandidateRecord, Journal

logger = logging.getLogger(__name__)

PPO_FILE = "ppo.zip"
POLICY_FILE = "policy.pt"
FINAL_BENCH_RUNS = 50


@dataclass(frozen=True)
class Progress:
    """What the CLI shows after each candidate."""

    stage: str  # "prepare", "dense", "search", "final", "report"
    done: int
    total: int
    message: str = ""
    best: CandidateRecord | None = None


ProgressFn = Callable[[Progress], None]


def cache_dir() -> Path:
    """Where trained checkpoints are cached (``AUTOSCULPT_CACHE_DIR``, default ``~/.cache/autosculpt``)."""
    return Path(os.environ.get("AUTOSCULPT_CACHE_DIR", Path.home() / ".cache" / "autosculpt")) / "checkpoints"


def check_names(config: SearchConfig) -> None:
    """Unknown model or dataset -> a clear error before anything slow happens."""
    from host.data import available_datasets
    from host.models import available_models

    spec = config.model
    if spec.data.lower() not in available_datasets():
        raise DataError(f"unknown dataset '{spec.data}'", hint=f"available: {', '.join(available_datasets())}")
    is_zoo = spec.model.lower() in available_models()
    if not is_zoo and ":" not in spec.model and not Path(spec.model).is_file():
        raise ModelError(
            f"unknown model '{spec.model}'",
            hint=f"use a zoo model ({', '.join(available_models())}) or package.module:factory with --checkpoint",
        )
    if not is_zoo and spec.checkpoint is None:
        raise ConfigError(
            f"model '{spec.model}' is not in the zoo, so there is no recipe to train it",
            hint="pass --checkpoint FILE with its trained state dict",
        )


def load_trained(config: SearchConfig, progress: ProgressFn) -> tuple[Any, Any]:
    """(trained model in eval mode, dataset splits); trains and caches a checkpoint on first use."""
    import torch

    from host.data import load_dataset
    from host.models.loader import load_checkpoint, load_model
    from host.models.train import TrainConfig, get_or_train_checkpoint
    from host.models.zoo import available_models, create_model

    spec = config.model
    splits = load_dataset(
        spec.data, root=spec.data_root, image_size=spec.image_size, channels=spec.in_channels, seed=config.seed,
        limit=spec.data_limit,
    )
    sizes = {"num_classes": splits.num_classes, "in_channels": spec.in_channels, "image_size": spec.image_size}
    if spec.checkpoint is not None:
        model = load_model(spec.model, checkpoint=spec.checkpoint, **sizes)
        return model.eval(), splits
    if spec.model.lower() not in available_models():
        raise ConfigError(f"model '{spec.model}' needs --checkpoint", hint="pass its trained state dict")

    def on_epoch(epoch: int, epochs: int, loss: float, val: float) -> None:
        progress(Progress("prepare", epoch, epochs, f"training {spec.model}: epoch {epoch}/{epochs} val {val:.3f}"))

    progress(Progress("prepare", 0, spec.train_epochs, f"loading or training {spec.model} on {spec.data}"))
    path = get_or_train_checkpoint(
        spec.model, spec.data, cache_dir=cache_dir(), config=TrainConfig(epochs=spec.train_epochs, seed=config.seed),
        data_root=spec.data_root, data_limit=spec.data_limit, progress=on_epoch, width=spec.width, **sizes,
    )
    torch.manual_seed(config.seed)
    model = create_model(spec.model, width=spec.width, **sizes)
    load_checkpoint(model, path)
    return model.eval(), splits


class SearchRunner:
    """One search run in ``config.out``. Use :meth:`run`."""

    def __init__(self, config: SearchConfig, journal: Journal, progress: ProgressFn | None = None) -> None:
        self.config = config
        self.journal = journal
        self.run_dir = Path(config.out)
        self.progress = progress or (lambda _p: None)
        self.started = time.perf_counter()
        self.fresh = False  # True when this process created the journal (see run())
        self._dense_test: float | None = None

    # -- entry points --------------------------------------------------------------------------------
    @classmethod
    def start(cls, config: SearchConfig, progress: ProgressFn | None = None) -> SearchRunner:
        """A new run: checks names first, then creates the journal with the config and versions."""
        check_names(config)
        journal = Journal.create(config.out, {"config": config.to_dict(), "versions": _versions()})
        runner = cls(config, journal, progress)
        runner.fresh = True
        return runner

    @classmethod
    def resume(cls, run_dir: Path, progress: ProgressFn | None = None, budget: int | None = None) -> SearchRunner:
        """Continue the run in ``run_dir`` with its stored config (optionally a larger budget)."""
        journal = Journal.open(run_dir)
        stored = journal.metadata.get("config")
        if not isinstance(stored, dict):
            raise SearchError(f"the journal in {run_dir} has no search config", hint="start a new run")
        config = SearchConfig.from_dict(stored)
        config = replace(config, out=Path(run_dir), budget=budget or config.budget)
        check_names(config)
        logger.info("resuming %s: %d candidates done", run_dir, journal.count("search"))
        return cls(config, journal, progress)

    def run(self) -> dict[str, Any]:
        """Run (or finish) the search; returns the result summary as a dict (also in result.json)."""
        from host.search.devices import open_devices

        objective = self.config.reward_objective()
        try:
            with open_devices(self.config.devices) as devices:
                if objective.name == "energy" and not all(d.has_energy for d in devices):
                    missing = [d.name for d in devices if not d.has_energy]
                    raise SearchError(
                        f"--objective energy needs an energy meter, but {', '.join(missing)} has none",
                        hint="use --objective latency there, or a board with a meter (Jetson, Pi 5, RAPL)",
                    )
                return self._run_with(devices, objective)
        except BaseException:
            if self.fresh and self.journal.count("search") == 0 and self.journal.count("final") == 0:
                # failed before the search proper (bad device, unreachable target...): leave no half-made
                # run behind, so the corrected command can reuse the same --out
                self.journal.close()
                for suffix in ("", "-wal", "-shm"):
                    Path(str(self.journal.path) + suffix).unlink(missing_ok=True)
            raise
        finally:
            self.journal.close()

    # -- stages --------------------------------------------------------------------------------------
    def _run_with(self, devices: list, objective) -> dict[str, Any]:
        from host.search.candidate import CandidateEvaluator, EvalData
        from host.search.devices import BenchSettings
        from host.search.space import SearchSpace

        cfg = self.config
        model, splits = load_trained(cfg, self.progress)
        ev = cfg.evaluation
        data = EvalData.from_splits(splits, ev.bn_batches, ev.batch_size, ev.val_limit, cfg.seed)
        self.progress(Progress("prepare", 1, 1, "building the model graph"))
        space = SearchSpace(model, data.example_input)
        if objective.name == "flops":
            self._check_flops_reachable(space, model, data)
        bench = BenchSettings(ev.warmup_runs, ev.min_runs, ev.min_time_s, ev.threads, objective.name == "energy")
        evaluator = CandidateEvaluator(model, space, data, self.journal, objective, devices, bench,
                                       ev.measure_min_accuracy_drop)
        try:
            self.progress(Progress("dense", 0, 2, "evaluating and measuring the dense model"))
            dense = evaluator.evaluate_dense()
            if objective.needs_measurement:
                self._check_target_reachable(evaluator, space)
            self._search(evaluator, space)
            finals = self._final_stage(evaluator, space, splits, model, dense)
            return self._report(evaluator, space, devices, finals)
        finally:
            evaluator.close()

    def _check_flops_reachable(self, space, model, data) -> None:
        import patterns

        dense_cost = patterns.count(model, data.example_input)
        floor_model = copy.deepcopy(model)
        plan, _ = space.decode(space.floor_choices())
        masks = patterns.apply_masks(floor_model, plan, data.example_input)
        floor_cost = patterns.count(floor_model, data.example_input, masks=masks)
        best = 1 - floor_cost.macs / dense_cost.macs
        from host.search.reward import FLOPS_BAND

        if best + FLOPS_BAND < self.config.target_flops:
            raise SearchError(
                f"no plan reaches a {self.config.target_flops:.0%} MAC reduction: the most aggressive plan removes "
                f"{best:.1%}",
                hint=f"use --target-flops {max(0.05, round(best - 0.05, 2))} or lower",
            )

    def _check_target_reachable(self, evaluator, space) -> None:
        floor = self.journal.candidates("floor")
        record = floor[0] if floor else evaluator.evaluate(space.floor_choices(), phase="floor", force_measure=True)
        objective = self.config.reward_objective()
        dense = evaluator.dense_figures()
        floor_figs = evaluator._figures(record.measurement)
        unit = "mJ" if objective.name == "energy" else "ms"
        for dev, value in floor_figs.items():
            target = objective.target.resolve(dense[dev])
            if value > target:
                raise SearchError(
                    f"no plan reaches the {objective.name} target {objective.target} on {dev}: target "
                    f"{target:.3f} {unit}, dense {dense[dev]:.3f} {unit}, most aggressive plan {value:.3f} {unit}",
                    hint=f"use a target of at least {value / dense[dev]:.2f}x (or {value:.3f}{unit})",
                )

    def _search(self, evaluator, space) -> None:
        from stable_baselines3 import PPO
        from stable_baselines3.common.callbacks import BaseCallback

        from host.search.env import PruningEnv, StepOutcome
        from host.search.policy import (
            GraphActorCriticPolicy,
            load_policy_weights,
            policy_kwargs,
            read_policy_file,
            save_policy,
        )

        cfg = self.config
        budget = cfg.budget
        # the budget counts EVALUATED candidates; steps that drew an already evaluated plan are free, but
        # capped so a policy that keeps proposing the same plans cannot loop forever
        done = self.journal.count("search", evaluated_only=True)
        max_steps = 3 * budget
        best = self._best()
        self.progress(Progress("search", done, budget, "searching", best))
        if done >= budget:
            return
        if cfg.strategy == "random":
            self._random_search(evaluator, space, done, budget)
            return

        def evaluate(choices: np.ndarray) -> StepOutcome:
            record = evaluator.evaluate(choices, phase="search")
            return StepOutcome(record.reward, {"candidate": record.id, "accuracy": record.accuracy})

        env = PruningEnv(space.observation(), evaluate)
        ppo_path = self.run_dir / PPO_FILE
        settings = cfg.ppo
        if ppo_path.is_file():
            model = PPO.load(ppo_path, env=env, device="cpu")
            logger.info("resumed the policy from %s", ppo_path)
        else:
            model = PPO(
                GraphActorCriticPolicy, env, n_steps=settings.n_steps, batch_size=settings.batch_size,
                n_epochs=settings.n_epochs, learning_rate=settings.learning_rate, ent_coef=settings.ent_coef,
                gamma=0.0,  # one-step episodes: the return is the reward
                policy_kwargs=policy_kwargs(settings.hidden, settings.gnn_layers, settings.keep_logit, space.keep_index), seed=cfg.seed, device="cpu",
                verbose=0,
            )
            if cfg.policy_file:
                load_policy_weights(model.policy, read_policy_file(Path(cfg.policy_file)), space.vocab)
                logger.info("starting from the trained policy %s", cfg.policy_file)
        runner = self

        class Budget(BaseCallback):
            def _on_step(self) -> bool:
                count = runner.journal.count("search", evaluated_only=True)
                runner.progress(Progress("search", count, budget, "searching", runner._best()))
                return count < budget and runner.journal.count("search") < max_steps

            def _on_rollout_end(self) -> None:
                tmp = ppo_path.with_suffix(".tmp.zip")
                self.model.save(tmp)
                os.replace(tmp, ppo_path)  # atomic: a kill never leaves half a policy

        model.learn(total_timesteps=max_steps, callback=Budget(), reset_num_timesteps=False)
        save_policy(model.policy, self.run_dir / POLICY_FILE, space.vocab)

    def _random_search(self, evaluator, space, done: int, budget: int) -> None:
        """Baseline: plans drawn from the untrained policy's prior (same keep preference), no learning."""
        rng = np.random.default_rng(self.config.seed + done)  # a resumed run continues a different stream
        keep_logit = self.config.ppo.keep_logit
        steps = self.journal.count("search")
        while self.journal.count("search", evaluated_only=True) < budget and steps < 3 * budget:
            steps += 1
            choices = np.empty(len(space.layer_names), np.int64)
            for i, valid in enumerate(space.choice_mask):
                logits = np.where(valid, 0.0, -np.inf)
                logits[space.keep_index] = keep_logit
                probs = np.exp(logits - logits.max())
                choices[i] = rng.choice(len(probs), p=probs / probs.sum())
            evaluator.evaluate(choices, phase="search")
            done = self.journal.count("search", evaluated_only=True)
            self.progress(Progress("search", done, budget, "random search", self._best()))

    def _best(self) -> CandidateRecord | None:
        rows = [r for r in self.journal.candidates("search") if not r.reused]
        return max(rows, key=lambda r: r.reward) if rows else None

    # -- final stage ---------------------------------------------------------------------------------
    def _final_candidates(self, evaluator) -> list[CandidateRecord]:
        from host.search.reward import pareto_front

        rows = [r for r in self.journal.candidates("search") if not r.reused and r.accuracy > 0]
        if self.config.reward_objective().needs_measurement:
            # measured figure where there is one, else the dense figure, as in the reward
            costs = [evaluator.cost_estimate(r) for r in rows]
        else:
            costs = [float(r.macs) for r in rows]
        front = [rows[i] for i in pareto_front([(r.accuracy, c) for r, c in zip(rows, costs, strict=True)])]
        front.sort(key=lambda r: r.reward, reverse=True)
        unique, seen = [], set()
        for r in front:
            if r.plan_hash not in seen:
                unique.append(r)
                seen.add(r.plan_hash)
        return unique[: self.config.final_top]

    def _final_stage(self, evaluator, space, splits, base_model, dense) -> list[dict[str, Any]]:
        from host.search.finetune import accuracy, masked_finetune
        from host.search.journal import plan_hash
        from host.search.realize import realize_trained

        chosen = self._final_candidates(evaluator)
        finals: list[dict[str, Any]] = []
        x_train, y_train = splits.train.tensors()
        train_batches = _batches(x_train, y_train, self.config.evaluation.batch_size, self.config.seed)
        test_x, test_y = splits.test.tensors()
        test_batches = _batches(test_x, test_y, 256, None)
        self._dense_test = accuracy(base_model, test_batches)  # for the report only, never for choosing
        for i, row in enumerate(chosen, start=1):
            name = f"final-{i}"
            self.progress(Progress("final", i - 1, len(chosen), f"fine-tuning {name}"))
            plan = _plan_from_row(row)
            stored = self.journal.find(plan_hash(row.plan), "final")
            model, masks = evaluator.masked_model(plan)
            masked_finetune(model, masks, train_batches, self.config.finetune, teacher=base_model)
            masked_val = accuracy(model, evaluator.data.val_batches)
            # accuracy is taken on the REALIZED module, i.e. exactly what gets exported and deployed
            realized = realize_trained(base_model, model, plan, evaluator.data.example_input)
            val = accuracy(realized, evaluator.data.val_batches)
            test = accuracy(realized, test_batches)
            if abs(val - masked_val) > 0.005:
                logger.warning("%s: realized val accuracy %.4f differs from the masked model's %.4f", name, val,
                               masked_val)
            artifacts, measurement, sha = self._export_final(evaluator, realized, plan, name, stored)
            record = stored or self.journal.record(
                CandidateRecord(
                    phase="final", plan=row.plan, accuracy=val, macs=row.macs, params=row.params,
                    reward=row.reward, eval_seconds=0.0, artifact_sha256=sha, measurement=measurement,
                )
            )
            finals.append({"name": name, "record": record, "val": val, "test": test, "artifacts": artifacts,
                           "measurement": measurement, "search_row": row})
        self.progress(Progress("final", len(chosen), len(chosen), "final models done"))
        return finals

    def _export_final(self, evaluator, realized, plan, name, stored):
        from host.errors import ExportError, MissingDependencyError
        from host.export import export_pte
        from host.search.devices import BenchSettings

        artifacts: dict[str, str] = {}
        pte = export_pte(realized, (evaluator.data.example_input,), self.run_dir / f"{name}.pte")
        artifacts["pte"] = str(pte.path)
        if self.config.export_tflite:
            from host.export import export_tflite

            try:
                tfl = export_tflite(realized, (evaluator.data.example_input,), self.run_dir / f"{name}.tflite")
                artifacts["tflite"] = str(tfl.path)
            except MissingDependencyError as exc:
                logger.info("no .tflite for %s: %s", name, exc)
            except ExportError as exc:  # the .pte is the main artifact; a failed .tflite is reported, not fatal
                logger.warning("no .tflite for %s: %s", name, exc)
        plan.save(self.run_dir / f"{name}.plan.json")
        artifacts["plan"] = str(self.run_dir / f"{name}.plan.json")
        measurement = None
        if evaluator.devices:
            if stored is not None and stored.measurement and stored.artifact_sha256 == pte.sha256:
                measurement = stored.measurement
            else:
                ev = self.config.evaluation
                bench = BenchSettings(ev.warmup_runs * 2, FINAL_BENCH_RUNS, 1.0, ev.threads,
                                      self.config.objective == "energy")
                measurement = evaluator.measure_artifact(Path(pte.path), pte.sha256, bench, use_cache=False)
        return artifacts, measurement, pte.sha256

    # -- report --------------------------------------------------------------------------------------
    def _report(self, evaluator, space, devices, finals) -> dict[str, Any]:
        from host.report import ModelFigures, RunSummary, write_report, write_tensorboard

        self.progress(Progress("report", 0, 1, "writing the report"))
        cfg = self.config
        objective = cfg.reward_objective()
        dense = evaluator.dense

        def figures(name: str, record: CandidateRecord, **extra: Any) -> ModelFigures:
            meas = extra.pop("measurement", record.measurement) or {}
            return ModelFigures(
                name=name, val_accuracy=extra.pop("val", record.accuracy), macs=record.macs, params=record.params,
                latency_ms={d: m["p50_ms"] for d, m in meas.items()},
                energy_mj={d: m["energy_mj"] for d, m in meas.items() if m.get("energy_mj") is not None},
                choices=_ordered(record.plan.get("choices", {}), space.layer_names), reward=record.reward,
                **extra,
            )

        rows = [r for r in self.journal.candidates("search") if not r.reused]
        best = max(rows, key=lambda r: r.reward) if rows else None
        summary = RunSummary(
            model=cfg.model.model, dataset=cfg.model.data, objective=objective.name,
            target=str(objective.target) if objective.target else f"{cfg.target_flops:.0%} MAC reduction",
            devices={d.name: d.fingerprint for d in devices}, budget=cfg.budget,
            candidates_evaluated=self.journal.count("search", evaluated_only=True),
            measurements_taken=self.journal.measurement_count(), seconds=time.perf_counter() - self.started,
            dense=figures("dense", dense, test_accuracy=self._dense_test), best_search=figures("best-search", best) if best else None,
            finals=tuple(
                figures(f["name"], f["search_row"], val=f["val"], test_accuracy=f["test"], artifacts=f["artifacts"],
                        measurement=f["measurement"])
                for f in finals
            ),
            vocab=tuple(space.vocab),
            notes=_notes(cfg, rows),
        )
        if objective.needs_measurement:
            cost_label = "energy (mJ)" if objective.name == "energy" else "latency p50 (ms)"
            points = [(r.accuracy, max(evaluator._figures(r.measurement).values())) for r in rows if r.measurement]
        else:
            cost_label = "MACs"
            points = [(r.accuracy, float(r.macs)) for r in rows]
        write_report(self.run_dir, summary, points, [r.reward for r in rows], cost_label)
        tb_rows = []
        for r in rows:
            row = {"reward": r.reward, "accuracy": r.accuracy, "macs": float(r.macs)}
            figs = evaluator._figures(r.measurement)
            if figs:
                row["cost"] = max(figs.values())
            tb_rows.append(row)
        write_tensorboard(self.run_dir / "tensorboard", tb_rows)
        self.progress(Progress("report", 1, 1, f"report written to {self.run_dir / 'report.md'}"))
        return summary.to_dict()


def _ordered(choices: dict[str, str], layer_names: list[str]) -> dict[str, str]:
    """``choices`` in the model's layer order (the journal stores them sorted by name)."""
    return {name: choices[name] for name in layer_names if name in choices}


def _batches(x, y, batch_size: int, seed: int | None) -> list:
    import torch

    order = torch.arange(len(x)) if seed is None else torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [(x[order[i : i + batch_size]], y[order[i : i + batch_size]]) for i in range(0, len(x), batch_size)
            if seed is None or len(order[i : i + batch_size]) > 1]  # BN cannot train on one sample


def _plan_from_row(row: CandidateRecord):
    import json

    from patterns.plan import Plan

    return Plan.from_json(json.dumps(row.plan["plan"]))


def _notes(cfg: SearchConfig, rows: list[CandidateRecord]) -> tuple[str, ...]:
    notes = []
    unmeasured = sum(1 for r in rows if not r.measurement)
    if cfg.objective != "flops" and unmeasured:
        notes.append(
            f"{unmeasured} candidate(s) were far less accurate than dense and were not measured; their reward "
            "assumed no speed-up (the dense figure)"
        )
    return tuple(notes)


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("autosculpt", "torch", "executorch", "stable-baselines3", "torch-geometric", "gymnasium"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out
