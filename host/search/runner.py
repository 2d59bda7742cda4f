"""The search loop: prepare (fail fast), measure dense, PPO over plans, final fine-tune + verify, report.

Order of work (the cheap checks that can fail come first):
1. config and names (model, dataset, target) -> ConfigError/ModelError/DataError immediately;
2. devices opened and asked for their info -> DeviceUnreachableError before any training;
3. trained checkpoint (cached), dataset splits, graph and search space; unreachable flops target -> SearchError;
4. dense model evaluated and measured (reference for "0.5x"); the most aggressive plan measured ("floor")
   so an unreachable latency/energy target is reported before the budget is spent;
5. PPO: one env step = one candidate, journaled as it completes; the policy is saved after every rollout
   (``--strategy random``: plans of the prior; ``evolution``: aging evolution, :mod:`host.search.evolution`;
   neither has a policy to save);
6. final stage (:mod:`host.search.final`): Pareto-optimal candidates fine-tuned with masks fixed
   (+ distillation), realized, exported, measured with the longer final benchmark policy, test accuracy
   reported (never used to choose); result.json, report.md, plots, TensorBoard.

Resume: the journal holds every finished candidate and the stored config; ``ppo.zip`` the last policy (an
evolution run rebuilds its population from the journal).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from host.cache import cache_root
from host.cluster import ClusterSpec, Executor, open_executor
from host.errors import ConfigError, DataError, ModelError, SearchError
from host.kinds import ObjectiveName, Phase, Precision, Stage, Strategy
from host.search.config import SearchConfig
from host.search.journal import CandidateRecord, Journal
from host.search.progress import Progress, ProgressFn

# Own modules that load torch (and through it ExecuTorch, SB3, PyG) are imported where they are used: this
# module is imported by the CLI, whose --help and argument errors must not wait for torch.
if TYPE_CHECKING:
    from torch import nn

    from host.data.splits import DatasetSplits
    from host.report.summary import RunSummary
    from host.search.candidate import CandidateEvaluator
    from host.search.env import StepOutcome
    from host.search.projection import TargetBand
    from host.search.space import SearchSpace

logger = logging.getLogger(__name__)

PPO_FILE = "ppo.zip"
POLICY_FILE = "policy.pt"
# plans per PPO update of the proxy warm-up (PPOSettings.proxy_plans)
PROXY_ROLLOUT = 16


def cache_dir() -> Path:
    """Where trained checkpoints are cached (``AUTOSCULPT_CACHE_DIR``, default ``~/.cache/autosculpt``)."""
    return cache_root() / "checkpoints"


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
    if spec.checkpoint is None and spec.model.endswith(".pt2"):
        raise ConfigError(
            f"'{spec.model}' is an exported program: it cannot be trained here",
            hint="pass the model as package.module:factory (trained here when --checkpoint is left out), or "
                 "export it after training",
        )


def scoring_data(config: SearchConfig, model: nn.Module, splits: DatasetSplits):
    """The run's :class:`~host.search.scorer.EvalData` (the batches every candidate is recovered, recalibrated, scored
    and, in int8, calibrated on), with ``model``'s BatchNorm statistics recalibrated on them in place."""
    from host.search.finetune import recalibrate_bn
    from host.search.scorer import EvalData

    ev = config.evaluation
    data = EvalData.from_splits(splits, ev.bn_batches, ev.batch_size, ev.val_limit, config.seed,
                                ev.recover_steps, ev.recover_batch_size,
                                calibration_images=ev.calibration_images if config.precision == Precision.INT8 else 0)
    # Every candidate's BatchNorm statistics are recalibrated on the run's batches, and so is dense when it is
    # scored; the base model is the teacher of every recovery step and the final reference, so it gets the
    # same. A checkpoint's own running statistics can be useless: torchvision's MobileNetV3 uses BN momentum
    # 0.01, and after 10 epochs on 3k images it scored 10% in eval mode (97% recalibrated), so recovery steps
    # distilled every candidate towards noise and all of them ended at chance.
    recalibrate_bn(model, data.bn_batches, num_batches=len(data.bn_batches))
    return data


def load_trained(config: SearchConfig, progress: ProgressFn) -> tuple[nn.Module, DatasetSplits]:
    """(trained model in eval mode, dataset splits); trains and caches a checkpoint on first use."""
    import torch

    from host.data import load_dataset
    from host.models.loader import load_model
    from host.models.train import TrainConfig, get_or_train_checkpoint

    spec = config.model
    splits = load_dataset(
        spec.data, root=spec.data_root, image_size=spec.image_size, channels=spec.in_channels, seed=config.seed,
        limit=spec.data_limit,
    )
    sizes = {"num_classes": splits.num_classes, "in_channels": spec.in_channels, "image_size": spec.image_size}
    if spec.checkpoint is not None:
        model = load_model(spec.model, checkpoint=spec.checkpoint, width=spec.width, model_args=spec.model_args,
                           **sizes)
        return model.eval(), splits

    def on_epoch(epoch: int, epochs: int, loss: float, val: float) -> None:
        progress(Progress(Stage.PREPARE, epoch, epochs, f"training {spec.model}: epoch {epoch}/{epochs} val {val:.3f}"))

    progress(Progress(Stage.PREPARE, 0, spec.train_epochs, f"loading or training {spec.model} on {spec.data}"))
    # any model, zoo or not, is trained with the same recipe (and cached) when no checkpoint is given
    path = get_or_train_checkpoint(
        spec.model, spec.data, cache_dir=cache_dir(), config=TrainConfig(epochs=spec.train_epochs, seed=config.seed),
        data_root=spec.data_root, data_limit=spec.data_limit, progress=on_epoch, model_args=spec.model_args or None,
        width=spec.width, **sizes,
    )
    torch.manual_seed(config.seed)
    model = load_model(spec.model, checkpoint=path, width=spec.width, model_args=spec.model_args, **sizes)
    return model.eval(), splits


class SearchRunner:
    """One search run in ``config.out``. Use :meth:`run`."""

    def __init__(self, config: SearchConfig, journal: Journal, progress: ProgressFn | None = None,
                 ray: str | None = None) -> None:
        self.config = config
        self.journal = journal
        self.run_dir = Path(config.out)
        self.progress = progress or (lambda _p: None)
        self.fresh = False  # True when this process created the journal (see run())
        # --ray: where candidates are scored and exported (None: in this process). Not part of the stored
        # config: a run started on one cluster may be resumed on another, or without one
        self.ray = ray
        self._screen = None  # a PPO search's best-of-k screening (host.search.surrogate.Screen), when configured
        self._evolve = None  # a PPO search's aging-evolution population (PPOSettings.evolve), when configured
        self._parents = None  # which child came from which parent (PPOSettings.credit == "parent")

    # -- entry points --------------------------------------------------------------------------------
    @classmethod
    def start(cls, config: SearchConfig, progress: ProgressFn | None = None, ray: str | None = None) -> SearchRunner:
        """A new run: checks names first, then creates the journal with the config and versions."""
        check_names(config)
        if ray:
            ClusterSpec.parse(ray)  # a malformed --ray fails before the journal exists
        journal = Journal.create(config.out, {"config": config.to_dict(), "versions": _versions()})
        runner = cls(config, journal, progress, ray)
        runner.fresh = True
        return runner

    @classmethod
    def resume(cls, run_dir: Path, progress: ProgressFn | None = None, budget: int | None = None,
               ray: str | None = None) -> SearchRunner:
        """Continue the run in ``run_dir`` with its stored config (optionally a larger budget)."""
        journal = Journal.open(run_dir)
        stored = journal.metadata.get("config")
        if not isinstance(stored, dict):
            raise SearchError(f"the journal in {run_dir} has no search config", hint="start a new run")
        config = SearchConfig.from_dict(stored)
        config = replace(config, out=Path(run_dir), budget=budget or config.budget)
        check_names(config)
        logger.info("resuming %s: %d candidates done", run_dir, journal.count(Phase.SEARCH))
        return cls(config, journal, progress, ray)

    def run(self) -> RunSummary:
        """Run (or finish) the search; returns its summary (``result.json`` holds :meth:`RunSummary.to_dict`)."""
        import torch

        from host.search.devices import open_devices

        objective = self.config.reward_objective()
        # the run's seconds add up over the original and every resumed process (kept in the journal)
        self.journal.start_clock()
        threads = torch.get_num_threads()
        if self.config.evaluation.host_threads:
            torch.set_num_threads(self.config.evaluation.host_threads)
        executor: Executor | None = None
        try:
            # Ray first: it starts its processes with Python code run between fork and exec, which can hang when
            # other threads (the device connections' gRPC threads) hold a lock at the fork
            executor = open_executor(self.ray)
            with open_devices(self.config.devices, self.config.fleet, self.config.pools()) as devices:
                if executor.parallelism > 1 and any(d.name == "local" for d in devices):
                    logger.warning("measuring on 'local' while %d cluster workers may run on this host: their load "
                                   "reaches the measurements (each candidate is paired with dense measured right "
                                   "after it, which corrects for slow drift, not for bursts)", executor.parallelism)
                if objective.name == ObjectiveName.ENERGY and not all(d.has_energy for d in devices):
                    missing = [f"{d.name} has none ({d.energy_unavailable_reason or 'no meter found'})"
                               for d in devices if not d.has_energy]
                    raise SearchError(
                        f"--objective energy needs an energy meter, but {'; '.join(missing)}",
                        hint="use --objective latency there, or a board with a meter (Jetson, Pi 5, RAPL)",
                    )
                return self._run_with(devices, objective, executor)
        except BaseException:
            if self.fresh and self.journal.count(Phase.SEARCH) == 0 and self.journal.count(Phase.FINAL) == 0:
                # failed before the search proper (bad device, unreachable target...): leave no half-made
                # run behind, so the corrected command can reuse the same --out
                self.journal.close()
                for suffix in ("", "-wal", "-shm"):
                    Path(str(self.journal.path) + suffix).unlink(missing_ok=True)
            raise
        finally:
            if executor is not None:
                executor.close()
            torch.set_num_threads(threads)
            self.journal.close()

    # -- stages --------------------------------------------------------------------------------------
    def _run_with(self, devices: list, objective, executor: Executor) -> RunSummary:
        from host.devices.results import BenchSpec
        from host.search.candidate import CandidateEvaluator, MeasurePolicy
        from host.search.final import FinalStage
        from host.search.space import INT8_EXCLUDED, SearchSpace, excluded_patterns

        cfg = self.config
        model, splits = load_trained(cfg, self.progress)
        ev = cfg.evaluation
        data = scoring_data(cfg, model, splits)
        self.progress(Progress(Stage.PREPARE, 1, 1, "building the model graph"))
        space = SearchSpace(model, data.example_input, exclude=excluded_patterns(cfg.precision))
        if cfg.precision == Precision.INT8:
            logger.info("int8: the exact per-filter kernel mixes (%s) are not searched: in int8 on XNNPACK they run slower "
                        "than dense at narrow widths and take 4-6x as long to quantize; kernel:paper6_tiled is their "
                        "tile-aligned form", ", ".join(INT8_EXCLUDED))
        if objective.name == ObjectiveName.FLOPS:
            self._check_flops_reachable(space, model, data)
        bench = BenchSpec(threads=ev.threads, policy=ev.bench, measure_energy=objective.name == ObjectiveName.ENERGY)
        measure_policy = MeasurePolicy(ev.measure_min_accuracy_drop, ev.min_measured, ev.measure_slack, ev.recover_lr)
        evaluator = CandidateEvaluator(model, space, data, self.journal, objective, devices, bench, measure_policy,
                                       precision=cfg.precision, host_threads=ev.host_threads, model_name=cfg.model.model)
        try:
            self.progress(Progress(Stage.DENSE, 0, 2, "evaluating and measuring the dense model"))
            evaluator.evaluate_dense()
            from host.data.checks import data_warnings

            for warning in data_warnings(splits, ev.batch_size, evaluator.dense.accuracy):  # also in the report
                logger.warning("%s", warning)
            if objective.needs_measurement:
                self.progress(Progress(Stage.DENSE, 1, 2, "measuring the most aggressive plan (is the target reachable?)"))
                self._check_target_reachable(evaluator, space)
            self.progress(Progress(Stage.DENSE, 2, 2, "dense model measured"))
            if evaluator.latency.models:
                evaluator.warm_start_cost_model(seed=cfg.seed)
                why = evaluator.latency.distrust()
                self.journal.set_value("latency_model_trust", {"trusted": not why, "why": why})
                logger.info("device latency model: %s", (
                    "trusted to stand in for the device (the search measures nothing: the final stage measures the "
                    "plans it predicts best, side by side with dense)" if objective.constraint.budget else
                    "trusted to stand in for the device (candidates predicted to lose are not measured)")
                    if not why else f"not trusted yet ({why}); candidates are measured as usual")
            self._search(evaluator, space, executor)
            self._check_some_valid()
            final = FinalStage(cfg, self.journal, self.progress)
            finals = final.run(evaluator, splits, model)
            self._report_latency_model(evaluator)  # after the final stage's confirmations, which it predicted too
            self._report_pools(devices, evaluator.measurer.dense_artifact_name)
            return final.report(evaluator, space, devices, finals, self.journal.elapsed_seconds())
        finally:
            evaluator.close()

    def _report_latency_model(self, evaluator: CandidateEvaluator) -> None:
        """How well the device's persisted latency model predicted this run's measured search candidates before
        each was measured, and the final stage's side-by-side confirmations (logged, and kept in the journal as
        ``latency_model``)."""
        from host.search.devicemodel import summary_line

        if not evaluator.latency.models:
            return
        stats = evaluator.latency.report()
        self.journal.set_value("latency_model", stats)
        logger.info("device latency model: %s", summary_line(stats))

    def _report_pools(self, devices: list, dense_name: str | None) -> None:
        """Log (and keep in the journal) each board pool's per-board spread: benchmarks run and the median of the
        dense artifact ``dense_name`` there."""
        from host.search.devices import BoardPool

        for device in devices:
            if not isinstance(device.client, BoardPool):
                continue
            spread = device.client.spread(dense_name)
            offline = sorted(device.client.pool.offline)
            self.journal.set_value(f"pool_spread:{device.name}", {"boards": spread, "offline": offline})
            logger.info("pool %s: %s%s", device.name, "; ".join(
                f"{board} {n} benchmarks, dense {'n/a' if ms is None else f'{ms:.3f} ms'}"
                for board, (n, ms) in spread.items()), f" (left the pool: {', '.join(offline)})" if offline else "")

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

    def _floor_record(self, evaluator, space) -> CandidateRecord:
        """The most aggressive plan that realizes, measured (from the journal after a resume).

        :meth:`SearchSpace.floor_choices` gives every layer its most aggressive choice; when that plan
        cannot be realized or exported, it is relaxed one step at a time (the layer found responsible, or
        else every layer holding the most aggressive choice in use) until one builds. Each failed attempt
        is journaled as an invalid "floor" row, so a resume walks the same path without rebuilding.
        """
        valid = [r for r in self.journal.candidates(Phase.FLOOR) if r.valid]
        if valid:
            return valid[0]
        choices, failures = space.floor_choices(), []
        while True:
            record = evaluator.evaluate(choices, phase=Phase.FLOOR, force_measure=True)
            if record.valid:
                if failures:
                    logger.warning("the most aggressive plan could not be built (%s); the reachability check "
                                   "uses the most aggressive plan that could, after %d attempt(s)",
                                   failures[0], len(failures))
                return record
            failures.append(record.reason)
            choices = space.relax(choices, record.failed_layer)
            if choices is None:
                raise SearchError(
                    f"no pruned plan of this model can be built: {len(failures)} attempts from the most aggressive "
                    f"plan down to single choices failed, the first with: {failures[0]}",
                    hint="run `sculpt-host inspect` on the model and check that `sculpt-host export` works with a "
                         "small plan; report the error above if the model exports unpruned",
                )

    def _check_target_reachable(self, evaluator, space) -> None:
        record = self._floor_record(evaluator, space)
        if record.measurement is None:
            return  # the trusted device latency model predicted it within the target with room to spare
        objective = self.config.reward_objective()
        dense = evaluator.measurer.reference(record.measurement)  # dense as measured right after the floor plan
        floor_figs = evaluator.measurer.figures(record.measurement)
        unit = "mJ" if objective.name == ObjectiveName.ENERGY else "ms"

        def missed(dense_figs: dict[str, float], floor: dict[str, float]) -> list[str]:
            return [dev for dev, value in floor.items() if value > objective.target.resolve(dense_figs[dev])]

        if not missed(dense, floor_figs):
            return
        # Refusing the search is expensive for the user; dense and the floor plan were measured minutes apart,
        # and on a busy board (or a model that runs in microseconds) that alone can move the ratio by tens of
        # percent. Measure both again, alternating, before saying no.
        first = {dev: floor_figs[dev] / dense[dev] for dev in missed(dense, floor_figs)}
        dense, floor_figs = evaluator.remeasure_side_by_side([evaluator.dense, record])
        if not missed(dense, floor_figs):
            logger.warning("the most aggressive plan first measured at %s of dense; measured again side by side "
                           "with dense it reaches the target (%s)",
                           ", ".join(f"{r:.2f}x on {d}" for d, r in first.items()),
                           ", ".join(f"{floor_figs[d] / dense[d]:.2f}x on {d}" for d in first))
            return
        dev = missed(dense, floor_figs)[0]
        value, target = floor_figs[dev], objective.target.resolve(dense[dev])
        raise SearchError(
            f"no plan reaches the {objective.name} target {objective.target} on {dev}: target "
            f"{target:.3f} {unit}, dense {dense[dev]:.3f} {unit}, most aggressive plan {value:.3f} {unit} "
            "(measured side by side)",
            hint=f"use a target of at least {value / dense[dev]:.2f}x (or {value:.3f}{unit})",
        )

    def _search(self, evaluator: CandidateEvaluator, space: SearchSpace, executor: Executor | None = None) -> None:
        from host.search.projection import TargetBand
        from host.search.reward import FLOPS_BAND

        cfg = self.config
        budget = cfg.budget
        # the budget counts EVALUATED candidates; steps that drew an already evaluated plan are free, but
        # capped so a policy that keeps proposing the same plans cannot loop forever
        done = self.journal.count(Phase.SEARCH, evaluated_only=True)
        max_steps = 3 * budget
        self.progress(Progress(Stage.SEARCH, done, budget, "searching", self._best()))
        if done >= budget:
            return
        # plans proposed together: as many as the cluster scores at once or the pool's boards measure at once
        width = max(executor.parallelism if executor is not None else 1, evaluator.measure_lanes())
        target = self._target_ratio(evaluator)
        keep_logit = self._keep_logit(evaluator, space, target)
        if cfg.strategy == Strategy.RANDOM:
            self._random_search(evaluator, space, done, budget, keep_logit, executor, width)
            return
        objective = cfg.reward_objective()
        if objective.needs_measurement:
            band = TargetBand(target, cfg.ppo.band, hard=objective.constraint.budget)
        else:  # FLOPs: plans are projected on their exact MAC count, into the band the reward pays for
            band = TargetBand(target, min(cfg.ppo.band, FLOPS_BAND), exact=True)
        rng = np.random.default_rng(cfg.seed + 1000 + self.journal.count(Phase.SEARCH))
        self._family_seeds(evaluator, space, band, rng, executor, width)
        if cfg.strategy == Strategy.EVOLUTION:
            self._evolution_search(evaluator, space, band, rng, keep_logit, executor, width)
            return
        # PPO only from here: the baselines above need neither SB3 nor the graph policy
        from host.search.env import BatchedPruningEnv, PruningEnv
        from host.search.policy import save_policy
        from host.search.ppo import BudgetCallback, policy_spread, ppo_model, save_learner

        if width > 1:
            env = BatchedPruningEnv(space.observation(), width,
                                    partial(self._step_batch, evaluator, space, band, rng, executor))
        else:
            env = PruningEnv(space.observation(), partial(self._step, evaluator, space, band, rng))
        ppo_path = self.run_dir / PPO_FILE
        model = ppo_model(env, space, cfg.ppo, keep_logit, cfg.seed, ppo_path, cfg.policy_file)
        if cfg.ppo.proxy_plans > 0 and not self.journal.get_value("proxy_warmup_done"):
            # the mean proxy reward of each update's plans: does the warm-up raise it
            self.journal.set_value("proxy_warmup_rewards", self._proxy_warmup(evaluator, space, band, model))
            save_learner(model, ppo_path)  # a resumed run starts from the warmed-up policy and does not warm up again
            self.journal.set_value("proxy_warmup_done", True)
        if self.journal.count(Phase.SEARCH, evaluated_only=True) < budget:  # the seeds may have used it all
            imagination = None
            if cfg.ppo.dyna > 0:
                from host.search.surrogate import Imagination

                imagination = Imagination(*self._surrogate(evaluator, space, band, rng), cfg.ppo.dyna,
                                          relabel=cfg.ppo.relabel)
            if cfg.ppo.screen > 1:
                self._screen = self._screening(evaluator, space, band, rng, model)
            if cfg.ppo.evolve:
                self._evolve = self._population(evaluator, space, band, rng, keep_logit)
            if cfg.ppo.credit == "parent":
                from host.search.ppo import ParentCredit

                self._parents = model.parents = ParentCredit(space.layer_nodes)
            screen = self._screen if cfg.ppo.screen_learn else None

            def imagine(m) -> None:
                if imagination is not None:
                    imagination.update(m, space.observation(), m.n_steps * m.n_envs)
                if screen is not None:
                    screen.learn(m, space.observation())
                if cfg.ppo.replay:
                    self._replay(m, evaluator, space)

            callback = BudgetCallback(
                self.journal, budget, max_steps, ppo_path, partial(self._report_search, info="searching"),
                imagine=imagine if imagination is not None or screen is not None or cfg.ppo.replay else None,
                # a screened step evaluates a plan the policy did not propose: PPO must learn from that plan
                relabel=space.layer_nodes if cfg.ppo.relabel or self._screen is not None or cfg.ppo.evolve else None)
            try:
                model.learn(total_timesteps=max_steps, callback=callback, reset_num_timesteps=False)
            finally:
                if self._screen is not None:
                    logger.info("screening: the proxy chose among %d proposals on %d steps, another plan than the "
                                "policy's own on %d; PPO learned from %d screened plans", self._screen.k,
                                self._screen.screened, self._screen.replaced, self._screen.learned)
                self._screen = None
                self._evolve = None
                self._parents = None
        spread = policy_spread(model, space.observation(), space.keep_index)
        self.journal.set_value("policy_spread", spread)
        logger.info("the policy ends with %.3f nats of entropy per layer (uniform over the valid patterns: %.3f); on "
                    "average its top choice has probability %.3f and keeping a layer %.3f", spread["entropy"],
                    spread["uniform_entropy"], spread["top_probability"], spread["keep_probability"])
        save_policy(model.policy, self.run_dir / POLICY_FILE, space.vocab)

    def _proxy_warmup(self, evaluator: CandidateEvaluator, space: SearchSpace, band: TargetBand, model) -> list[float]:
        """PPO updates on ``PPOSettings.proxy_plans`` plans before the first real rollout: each drawn from the
        current policy, projected into ``band`` with the cost model, and rewarded as an unevaluated plan whose
        accuracy is its adaptive-BN proxy (:meth:`host.search.scorer.PlanScorer.proxy_accuracy`: masked, BatchNorm
        recalibrated, no recovery step). Nothing is journaled and no budget is spent; the proxy ranks plans but sits
        far below the recovered accuracy, and PPO normalizes each update's advantages, so only the ranking teaches.
        :data:`PROXY_ROLLOUT` plans per update. Returns the mean reward of each update's plans."""
        from host.search.candidate import INVALID_REWARD
        from host.search.costmodel import CostModel
        from host.search.env import StepOutcome
        from host.search.ppo import train_on_imagined

        total = self.config.ppo.proxy_plans
        proxy, reward = _proxy(evaluator, space), _unevaluated_reward(evaluator, CostModel.from_space(space))
        # a generator of its own: the warm-up draws nothing from the search's
        projected = self._projection(evaluator, space, band, np.random.default_rng(self.config.seed + 7919),
                                     exact=False)
        observation = space.observation()

        def outcome(choices: np.ndarray) -> StepOutcome:
            plan = projected(np.asarray(choices, np.int64))
            accuracy = proxy(plan)
            value = INVALID_REWARD if accuracy is None else reward(plan, accuracy)
            return StepOutcome(float(value), {"imagined": True, "choices": plan.tolist()})

        means, done = [], 0
        while done < total:
            steps = min(PROXY_ROLLOUT, total - done)
            if steps < 2:  # a one-plan update has no advantage to normalize
                break
            rewards = train_on_imagined(model, observation, outcome, steps, relabel=True, stream="proxy")
            means.append(float(np.mean(rewards)))
            done += steps
            self.progress(Progress(Stage.WARMUP, done, total, f"mean proxy reward {means[-1]:.4f} of the last "
                                                              f"{steps} plans"))
            logger.info("proxy warm-up: %d of %d plans, mean proxy reward of the last %d: %.4f", done, total, steps,
                        means[-1])
        return means

    def _replay(self, model, evaluator: CandidateEvaluator, space: SearchSpace) -> int:
        """One PPO update on every search plan evaluated so far (invalid ones included), with its real reward
        (``PPOSettings.replay``). Returns how many plans it trained on."""
        from host.search.ppo import train_on_plans

        rows = [r for r in self.journal.candidates(Phase.SEARCH) if not r.reused]
        layers = np.arange(len(space.layer_names))
        # a plan of an earlier version may use a choice the space no longer offers (an int8 run's exact kernel mixes):
        # its log-probability would be -inf
        plans = [(c, r.reward) for r, c in ((r, evaluator.choices_of(r)) for r in rows)
                 if space.choice_mask[layers, c].all()]
        if len(plans) < 2:
            return 0
        rewards = train_on_plans(model, space.observation(), plans, stream="search")  # real rewards
        logger.debug("replayed %d evaluated plans (mean reward %.4f)", len(plans), float(rewards.mean()))
        return len(plans)

    def _surrogate(self, evaluator: CandidateEvaluator, space: SearchSpace, band: TargetBand, rng: np.random.Generator):
        """What Dyna's imagined updates and best-of-k screening (:mod:`host.search.surrogate`) judge plans with:
        ``(surrogate, samples, project, reward)``. The accuracy surrogate is fitted on every valid plan the run
        evaluated (dense and floor included), plans are projected with the cost model (with a generator of their
        own, so imagining draws nothing from the search's), and the reward is the evaluator's for an unmeasured
        plan."""
        from host.search.costmodel import CostModel
        from host.search.surrogate import AccuracySurrogate, choice_tables

        macs = CostModel.from_space(space)  # the MAC-proportional prior: a plan's MAC ratio
        surrogate = AccuracySurrogate(*choice_tables(space, macs))
        reward = _unevaluated_reward(evaluator, macs)
        imagined_rng = np.random.default_rng(int(rng.integers(2**32)))

        def samples() -> list[tuple[np.ndarray, float]]:
            return [(evaluator.choices_of(r), r.accuracy) for r in self.journal.candidates()
                    if r.phase != Phase.FINAL and r.valid and not r.reused]

        # the cost model's projection only: counting the exact MACs (FLOPs objective) of every step of every imagined
        # or screened plan would cost more than the real evaluations it saves
        projected = self._projection(evaluator, space, band, imagined_rng, exact=False)
        return surrogate, samples, projected, reward

    def _screening(self, evaluator: CandidateEvaluator, space: SearchSpace, band: TargetBand, rng: np.random.Generator,
                   model):
        """Best-of-k screening (:class:`host.search.surrogate.Screen`) of ``model``'s proposals by their adaptive-BN
        proxy accuracy (:meth:`host.search.scorer.PlanScorer.proxy_accuracy`), computed here, in the search's process,
        whatever executes the candidates."""
        from host.search.ppo import policy_draws
        from host.search.surrogate import ProxyAccuracy, Screen

        _, samples, projected, reward = self._surrogate(evaluator, space, band, rng)
        return Screen(ProxyAccuracy(_proxy(evaluator, space), samples), policy_draws(model, space.observation()), projected, reward,
                      k=self.config.ppo.screen, collect=self.config.ppo.screen_learn)

    def _family_seeds(self, evaluator: CandidateEvaluator, space: SearchSpace, band: TargetBand, rng: np.random.Generator,
                      executor: Executor | None, width: int) -> None:
        """The search's first plans, one per pattern family (:func:`~host.search.projection.family_seeds`), when
        plans are projected and seeds are configured; once per run (the journal's ``seeds_done``)."""
        from host.search.projection import family_seeds

        cfg = self.config
        if not (cfg.ppo.project and cfg.ppo.family_seeds) or self.journal.get_value("seeds_done"):
            return
        model = evaluator.cost_model
        seeds = iter(family_seeds(space.choice_mask, space.vocab, space.keep_index, model, band.for_model(model), rng,
                                  exact=self._exact_cost(space)))
        while (left := cfg.budget - self.journal.count(Phase.SEARCH, evaluated_only=True)) > 0:
            chunk = list(islice(seeds, min(width, left)))
            if not chunk:
                break
            evaluator.evaluate_many(chunk, Phase.SEARCH, executor, self._on_record("family seeds"))
        self.journal.set_value("seeds_done", True)

    def _evolution_search(self, evaluator: CandidateEvaluator, space: SearchSpace, band: TargetBand,
                          rng: np.random.Generator, keep_logit: float, executor: Executor | None = None,
                          width: int = 1) -> None:
        """Aging evolution (:mod:`host.search.evolution`) over :meth:`_population`, ``width`` plans at a time on
        ``executor``: a resumed run continues with the population the killed one had."""
        from host.search.evolution import Outcome, evolve

        cfg = self.config
        algorithm = self._population(evaluator, space, band, rng, keep_logit)

        def evaluate(batch: list[np.ndarray]) -> list[Outcome]:
            records = evaluator.evaluate_many(batch, Phase.SEARCH, executor, self._on_record("evolution"))
            return [_outcome(evaluator, r) for r in records]

        evolve(algorithm, evaluate, cfg.budget, width, spent=self.journal.count(Phase.SEARCH, evaluated_only=True),
               steps=self.journal.count(Phase.SEARCH))

    def _population(self, evaluator: CandidateEvaluator, space: SearchSpace, band: TargetBand, rng: np.random.Generator,
                    keep_logit: float):
        """The aging-evolution population (:class:`~host.search.evolution.AgingEvolution`) of ``--strategy
        evolution`` and of policy-guided evolution (``PPOSettings.evolve``): filled with plans of the calibrated prior
        (with ``evolve``, the policy's own proposals), every plan projected into ``band``, rebuilt from the journal's
        search rows in their order (the family seeds, and on a resume everything the killed run evaluated). Its size
        is fixed at the run's start and kept in the journal, so a resume with a larger budget keeps it too."""
        from host.search.evolution import AgingEvolution, population_size
        from host.search.projection import sample_prior

        size = self.journal.get_value("evolution_population")
        if size is None:
            size = population_size(self.config.budget)
            self.journal.set_value("evolution_population", size)
        algorithm = AgingEvolution(
            space.choice_mask, rng,
            lambda g: sample_prior(space.choice_mask, space.keep_index, keep_logit, g.random(len(space.layer_names))),
            self._projection(evaluator, space, band, rng), population=int(size),
        )
        algorithm.observe_all(_outcome(evaluator, r) for r in self.journal.candidates(Phase.SEARCH))
        return algorithm

    def _propose(self, proposal: np.ndarray, projected: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The plan a PPO step evaluates for the policy's ``proposal``: with policy-guided evolution and a full
        population, a child of a tournament winner mutated toward the proposal; else the proposal (the best of k
        by the proxy, with screening) projected."""
        if self._evolve is not None and self._evolve.full:
            child = self._evolve.child(toward=proposal)
            if self._parents is not None:  # PPOSettings.credit == "parent": the mutation is judged against its parent
                parent = self._evolve.last_parent
                self._parents.record(child, parent.choices, parent.reward)
            return child
        if self._screen is not None:
            proposal = self._screen.choose(proposal)
        return projected(proposal)

    def _observe(self, evaluator: CandidateEvaluator, record: CandidateRecord) -> None:
        if self._evolve is not None:
            self._evolve.observe(_outcome(evaluator, record))

    def _step(self, evaluator: CandidateEvaluator, space: SearchSpace, band: TargetBand, rng: np.random.Generator,
              choices: np.ndarray) -> StepOutcome:
        """One PPO step: the policy's choices (projected into the cost band when configured) evaluated."""
        from host.search.env import StepOutcome

        choices = self._propose(choices, self._projection(evaluator, space, band, rng))
        record = evaluator.evaluate(choices, phase=Phase.SEARCH)
        self._observe(evaluator, record)
        return StepOutcome(record.reward, {"candidate": record.id, "accuracy": record.accuracy,
                                           "choices": choices.tolist()})

    def _step_batch(self, evaluator: CandidateEvaluator, space: SearchSpace, band: TargetBand, rng: np.random.Generator,
                    executor: Executor, batch: list[np.ndarray]) -> list[StepOutcome]:
        """One PPO step of a :class:`BatchedPruningEnv`: its plans (projected) evaluated together, each reward
        to its own plan. Plans beyond the budget's end are not evaluated: they get reward 0 and a ``skipped``
        info, and :class:`BudgetCallback` ends learning on that step, before any update could use them."""
        from host.search.env import StepOutcome

        projected = self._projection(evaluator, space, band, rng)
        batch = [self._propose(c, projected) for c in batch]
        left = max(0, self.config.budget - self.journal.count(Phase.SEARCH, evaluated_only=True))
        records = evaluator.evaluate_many(batch[:left], Phase.SEARCH, executor, self._on_record("searching"))
        for record in records:
            self._observe(evaluator, record)
        return ([StepOutcome(r.reward, {"candidate": r.id, "accuracy": r.accuracy, "choices": c.tolist()})
                 for r, c in zip(records, batch[:left], strict=True)]
                + [StepOutcome(0.0, {"skipped": True}) for _ in batch[left:]])

    def _projection(self, evaluator: CandidateEvaluator, space: SearchSpace, band: TargetBand,
                    rng: np.random.Generator, exact: bool = True) -> Callable[[np.ndarray], np.ndarray]:
        """How the search moves a proposed plan into the cost band (:func:`~host.search.projection.project`) before
        evaluating it: with the evaluator's current cost model and, when ``exact`` and the objective allows it,
        the plan's exact cost (:meth:`_exact_cost`); the identity when projection is off."""
        from host.search.projection import project

        if not self.config.ppo.project:
            return lambda choices: choices
        counted = self._exact_cost(space) if exact else None

        def projected(choices: np.ndarray) -> np.ndarray:
            model = evaluator.cost_model
            return project(choices, space.choice_mask, model, band.for_model(model), rng, exact=counted)
        return projected

    def _exact_cost(self, space: SearchSpace) -> Callable[[np.ndarray], float | None] | None:
        """A plan's exact cost ratio when it is known before evaluation: the FLOPs objective's MAC count
        (:meth:`SearchSpace.mac_ratio`). Measured objectives have none (a latency is known once measured)."""
        return None if self.config.reward_objective().needs_measurement else space.mac_ratio

    def _on_record(self, info: str):
        def report(_record: CandidateRecord) -> None:
            self._report_search(self.journal.count(Phase.SEARCH, evaluated_only=True), info)
        return report

    def _report_search(self, evaluated: int, info: str) -> None:
        self.progress(Progress(Stage.SEARCH, evaluated, self.config.budget, info, self._best()))

    def _target_ratio(self, evaluator: CandidateEvaluator) -> float:
        """The objective's target as a fraction of the dense cost (MACs, or the worst device's figure)."""
        objective = self.config.reward_objective()
        if not objective.needs_measurement:
            return 1.0 - objective.target_flops
        dense = evaluator.dense_figures()
        return min(objective.target.resolve(value) / value for value in dense.values())

    def _keep_logit(self, evaluator: CandidateEvaluator, space: SearchSpace, target: float) -> float:
        """The prior's keep preference: configured, or calibrated once to the target and kept in the journal
        (so a resumed run draws from the same prior)."""
        from host.search.projection import calibrate_keep_logit

        if self.config.ppo.keep_logit is not None:
            return self.config.ppo.keep_logit
        stored = self.journal.get_value("keep_logit")
        if stored is None:
            stored = calibrate_keep_logit(space.choice_mask, space.keep_index, evaluator.cost_model, target,
                                          seed=self.config.seed)
            self.journal.set_value("keep_logit", stored)
        return float(stored)

    def _random_search(self, evaluator: CandidateEvaluator, space: SearchSpace, done: int, budget: int,
                       keep_logit: float, executor: Executor | None = None, width: int = 1) -> None:
        """Baseline: plans drawn from the untrained policy's prior (the same calibrated keep preference), no
        learning and no projection; ``width`` plans at a time on ``executor``."""
        from host.search.projection import sample_prior

        rng = np.random.default_rng(self.config.seed + done)  # a resumed run continues a different stream
        steps = self.journal.count(Phase.SEARCH)
        while (left := budget - self.journal.count(Phase.SEARCH, evaluated_only=True)) > 0 and steps < 3 * budget:
            take = min(width, left, 3 * budget - steps)
            steps += take
            batch = [sample_prior(space.choice_mask, space.keep_index, keep_logit, rng.random(len(space.layer_names)))
                     for _ in range(take)]
            evaluator.evaluate_many(batch, Phase.SEARCH, executor, self._on_record("random search"))

    def _best(self) -> CandidateRecord | None:
        rows = [r for r in self.journal.candidates(Phase.SEARCH) if not r.reused and r.valid]
        return max(rows, key=lambda r: r.reward) if rows else None

    def _check_some_valid(self) -> None:
        """Invalid candidates only cost their budget, unless there is nothing else: then stop and say why."""
        rows = [r for r in self.journal.candidates(Phase.SEARCH) if not r.reused]
        if not rows or any(r.valid for r in rows):
            return
        reasons = Counter(r.reason or "no reason recorded" for r in rows)
        layers = Counter(r.failed_layer for r in rows if r.failed_layer)
        top = "; ".join(f"{n}x {reason}" for reason, n in reasons.most_common(3))
        blamed = f" (layers responsible: {', '.join(f'{k} {n}x' for k, n in layers.most_common(5))})" if layers else ""
        raise SearchError(
            f"every one of the {len(rows)} search candidates failed to build{blamed}: {top}",
            hint=f"the journal {self.journal.path} lists every plan and its reason; fix the cause (or report it), "
                 "then start a new run with another --out",
        )

def _outcome(evaluator: CandidateEvaluator, record: CandidateRecord):
    """What aging evolution (:mod:`host.search.evolution`) learns from an evaluated record."""
    from host.search.evolution import Outcome

    return Outcome(evaluator.choices_of(record), record.reward, record.valid, record.reused)


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("autosculpt", "torch", "executorch", "stable-baselines3", "torch-geometric", "gymnasium"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def _proxy(evaluator: CandidateEvaluator, space: SearchSpace) -> Callable[[np.ndarray], float | None]:
    """A plan's (per-layer choices) adaptive-BN proxy accuracy (:meth:`host.search.scorer.PlanScorer.proxy_accuracy`),
    None for a plan that cannot be built: what screening and the proxy warm-up judge plans by."""
    return lambda choices: evaluator.scorer.proxy_accuracy(space.decode(choices)[0])


def _unevaluated_reward(evaluator: CandidateEvaluator, macs) -> Callable[[np.ndarray, float], float]:
    """``reward(choices, accuracy)`` of a plan that is not evaluated: the run's reward with a predicted accuracy and
    the MAC ratio of the cost model ``macs`` (:meth:`CandidateEvaluator.predicted_reward`)."""
    return lambda choices, accuracy: evaluator.predicted_reward(accuracy, choices, macs.predict(choices))
