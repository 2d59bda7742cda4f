"""Search configuration: small frozen dataclasses, built from CLI flags at the edge and stored in the journal.

The defaults are the README quick start: ResNet-20 on the 5k MNIST digits at 16 px, the local agent, the
latency objective at half the dense latency, a budget that finishes in a few minutes on 2 cores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from host.devices.policy import BenchPolicy
from host.errors import ConfigError
from host.kinds import Aggregate, ConstraintName, ObjectiveName, Precision, Strategy, choices
from host.search.devices import PoolSpec
from host.search.reward import DEFAULT_TARGET, Constraint, Objective, Target


@dataclass(frozen=True)
class FinetuneConfig:
    """Masked fine-tuning settings. ``distill_alpha`` > 0 mixes in KL to the dense teacher's logits.

    ``schedule`` "cosine" anneals the learning rate from ``lr`` to 0 over all steps (per batch when the batches
    have a length, else per epoch); "constant" keeps ``lr`` (the per-candidate recovery steps use it).
    """

    epochs: int = 4
    lr: float = 0.03
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    distill_alpha: float = 0.0
    temperature: float = 4.0
    max_batches_per_epoch: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Which model and data to prune, at which size."""

    model: str = "resnet20"
    data: str = "mnist"
    image_size: int = 16
    in_channels: int = 1
    width: float = 1.0
    data_limit: int | None = None  # stratified subset of the dataset (None = all of it)
    data_root: str | None = None
    checkpoint: str | None = None  # a user checkpoint; None = train (and cache) one
    model_args: dict[str, Any] = field(default_factory=dict)  # --model-arg: timm/torchvision/factory kwargs
    train_epochs: int = 12


@dataclass(frozen=True)
class EvalConfig:
    """How one candidate is scored. Sizes are kept small on purpose: the search ranks, the final stage verifies."""

    bn_batches: int = 4
    batch_size: int = 128
    val_limit: int | None = None  # evaluate on the first N validation images only (None = all)
    # candidates this far below the most accurate measured plan that meets the target are not measured (their
    # reward uses the cost model's estimate): they cannot win, and export + measurement is most of a
    # candidate's cost. While no measured plan meets the target, every accuracy is measured. None = measure all.
    measure_min_accuracy_drop: float | None = 0.15
    # of the candidates accurate enough, only those whose reward PREDICTED by the cost model is within
    # measure_slack of the best measured one are exported and measured (after the first min_measured)
    min_measured: int = 3
    measure_slack: float = 0.03
    # every candidate gets this many distillation steps (masks fixed) before its validation accuracy
    recover_steps: int = 16
    recover_batch_size: int = 64
    recover_lr: float = 0.01
    # how every measured candidate is timed, and how the final models (and dense beside them) are timed in
    # each of the interleaved rounds: the presets of host.devices.policy
    bench: BenchPolicy = field(default_factory=BenchPolicy.search)
    final_bench: BenchPolicy = field(default_factory=BenchPolicy.final)
    threads: int = 1
    # int8 searches: training images (batches of one) every quantized candidate is calibrated on, the same ones
    calibration_images: int = 32
    # torch intra-op threads on the host while the search runs: on a busy 2-core machine two threads ran
    # the recovery fine-tune 10-30x slower (OpenMP spin-waiting); None keeps torch's setting
    host_threads: int | None = 1


CREDITS = ("plan", "layer", "parent")  # PPOSettings.credit


@dataclass(frozen=True)
class PPOSettings:
    """PPO hyper-parameters. One rollout is ``n_steps`` candidates; the policy updates after each rollout."""

    n_steps: int = 4
    batch_size: int = 4
    n_epochs: int = 10
    learning_rate: float = 1e-3
    ent_coef: float = 0.01
    hidden: int = 128
    gnn_layers: int = 2
    # initial preference for "keep" (see GraphActorCriticPolicy); None = calibrated so that the untrained
    # policy's plans cost about the target on average (host.search.projection)
    keep_logit: float | None = None
    project: bool = True  # project every proposed plan onto the target band (AMC-style), see projection.py
    band: float = 0.06  # half-width of that band, as a fraction of the dense cost
    family_seeds: bool = True  # start with one projected plan per pattern family (projection.family_seeds)
    # Dyna: imagined plans (rewarded by a surrogate fitted on the evaluated ones) per real plan, trained on between
    # two real rollouts (host.search.surrogate); 0 = off
    dyna: int = 0
    # PPO learns from the plan that was evaluated (the projected one), not from the one it proposed: each step's
    # action and its log-probability are replaced by the evaluated plan's (host.search.ppo.relabel_evaluated)
    relabel: bool = False
    # best-of-k screening: each real step evaluates the best, by an adaptive-BN proxy of the accuracy and the cost
    # model, of the policy's proposal and k - 1 more plans drawn from the policy (host.search.surrogate.Screen);
    # 0 or 1 = off
    screen: int = 0
    # with screening: PPO also trains, before each real rollout, on the screened plans that were not evaluated,
    # rewarded as the proxy predicted (host.search.surrogate.Screen.learn)
    screen_learn: bool = False
    # before each real rollout, PPO also trains on every plan the search has evaluated so far, with its real reward
    # (relabelled with its log-probability under the current policy): each update sees the whole run, not only its
    # own rollout (host.search.ppo.train_on_plans)
    replay: bool = False
    # policy-guided evolution: once the aging-evolution population is full (the family seeds and the policy's first
    # plans), each step evaluates a child of a tournament winner whose one or two mutated layers take the policy's
    # proposed choices; PPO learns from the evaluated child (host.search.evolution.AgingEvolution.child)
    evolve: bool = False
    # before its first real rollout, PPO trains on this many plans drawn from its own policy, projected into the band
    # and rewarded by their adaptive-BN proxy accuracy (no recovery, no export, no device: ~0.4 s a plan against
    # ~2.5 s for a scored candidate), PROXY_ROLLOUT plans per update (host.search.runner.SearchRunner._proxy_warmup);
    # what ``sculpt-host pretrain --proxy-plans`` spends on each model. 0 = off
    proxy_plans: int = 0
    # how PPO credits a plan's reward to its layers: "plan" (SB3's PPO: every layer gets the plan's advantage, the
    # plan's ratio is clipped) or "layer" (each layer's advantage against a counterfactual baseline from an additive
    # reward model, each layer's ratio clipped on its own): host.search.ppo.LayerCreditPPO; or, with ``evolve``, "parent"
    # (each child's changed layers get its reward minus its parent's, the others none: host.search.ppo.ParentCreditPPO)
    credit: str = "plan"

    def __post_init__(self) -> None:
        if self.credit not in CREDITS:
            raise ConfigError(f"unknown PPO credit {self.credit!r}", hint=f"use one of: {', '.join(CREDITS)}")
        if self.credit == "parent" and not self.evolve:
            raise ConfigError("PPO credit 'parent' judges evolution's children against their parents, but evolve is off",
                              hint="set evolve=True, or use credit 'plan' or 'layer'")


@dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs; stored in the journal so ``--resume`` continues exactly the same search."""

    out: Path = Path("runs/search")
    model: ModelSpec = field(default_factory=ModelSpec)
    devices: tuple[str, ...] = ("local",)
    fleet: str | None = None  # fleet file whose device names --device may use (with their credentials)
    # --device-pool NAME=ADDR,ADDR,...: identical boards measured as one device, any free board per candidate
    device_pools: tuple[str, ...] = ()
    budget: int = 16
    objective: ObjectiveName = ObjectiveName.LATENCY
    target_flops: float = 0.5
    target: str | None = DEFAULT_TARGET
    constraint: ConstraintName = ConstraintName.HARD
    aggregate: Aggregate = Aggregate.WORST
    seed: int = 0
    policy_file: str | None = None
    strategy: Strategy = Strategy.PPO
    # int8: measured candidates are quantized (PT2E, XNNPACK) and rewarded with their int8 artifact's accuracy
    # and latency; relative targets are of the dense int8 model. fp32: no quantization.
    precision: Precision = Precision.FP32
    final_top: int = 1
    export_tflite: bool = True  # also write final-N.tflite when litert-torch is installed
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(epochs=4, distill_alpha=0.5))
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    ppo: PPOSettings = field(default_factory=PPOSettings)

    def __post_init__(self) -> None:
        # names given as text (the CLI, a stored journal) become their enum members, or a clear error
        for name, kind, label in (("objective", ObjectiveName, "objective"), ("constraint", ConstraintName, "constraint"),
                                  ("aggregate", Aggregate, "device aggregation"),
                                  ("strategy", Strategy, "search strategy"), ("precision", Precision, "precision")):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, kind(value))
            except ValueError:
                raise ConfigError(f"unknown {label} {value!r}",
                                  hint=f"use one of: {', '.join(choices(kind))}") from None
        if self.budget < 1:
            raise ConfigError(f"--budget {self.budget} must be at least 1", hint="e.g. --budget 24")
        if self.policy_file is not None and self.strategy != Strategy.PPO:
            raise ConfigError(f"--policy starts the PPO policy from a file, but --strategy {self.strategy} has no "
                              "policy", hint="leave out --policy, or use --strategy ppo")
        pools = self.pools()
        names = list(self.devices) + [p.name for p in pools]
        if len(set(names)) != len(names):
            raise ConfigError(f"a device or pool name is given twice: {', '.join(names)}",
                              hint="give every --device and --device-pool its own name")
        tagged = [p.name for p in pools if any(a.startswith("tag:") for a in p.addresses)]
        if tagged and self.fleet is None:
            raise ConfigError(f"--device-pool {tagged[0]} selects boards by tag, but no fleet file was given",
                              hint="add --fleet FILE (its [[device]] entries carry tags)")
        if not self.devices and not pools and self.objective.measured:
            raise ConfigError(
                f"the {self.objective} objective needs a device to measure on", hint="add --device local"
            )
        if self.precision == Precision.INT8 and self.evaluation.calibration_images < 1:
            raise ConfigError("an int8 search needs at least one calibration image",
                              hint="pass --calibration-images N with N >= 1")
        if self.final_top < 0:
            raise ConfigError("final_top must be >= 0", hint="0 skips the final fine-tuning stage")
        self.reward_objective()  # validates objective, targets and constraint early

    def pools(self) -> list[PoolSpec]:
        """The parsed ``device_pools``."""
        return [PoolSpec.parse(text) for text in self.device_pools]

    def reward_objective(self) -> Objective:
        """The :class:`Objective` these settings describe."""
        target = None
        if self.objective.measured:
            target = Target.parse(self.target or DEFAULT_TARGET, self.objective)
        return Objective(
            name=self.objective,
            target_flops=self.target_flops,
            target=target,
            constraint=Constraint.named(self.constraint),
            aggregate=self.aggregate,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in the journal's metadata)."""
        data = asdict(self)
        data["out"] = str(self.out)
        data["devices"] = list(self.devices)
        data["device_pools"] = list(self.device_pools)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a journal from another version)."""
        try:
            kwargs = dict(data)
            kwargs["out"] = Path(kwargs["out"])
            kwargs["devices"] = tuple(kwargs["devices"])
            kwargs["device_pools"] = tuple(kwargs.get("device_pools", ()))  # journals from before pools
            kwargs["model"] = _build(ModelSpec, kwargs["model"])
            kwargs["finetune"] = _build(FinetuneConfig, kwargs["finetune"])
            kwargs["evaluation"] = _evaluation(kwargs["evaluation"])
            kwargs["ppo"] = _build(PPOSettings, kwargs["ppo"])
            return _build(cls, kwargs)
        except (KeyError, TypeError) as exc:
            raise ConfigError(
                f"stored search config cannot be read ({exc})",
                hint="the run was made by another AutoSculpt version; start a new run",
            ) from exc


# EvalConfig fields of journals written before the one benchmark policy type (read so that --resume works)
_LEGACY_BENCH = ("warmup_runs", "min_runs", "min_time_s", "final_min_time_s")


def _evaluation(data: dict[str, Any]) -> EvalConfig:
    data = dict(data)
    if any(key in data for key in _LEGACY_BENCH):
        warmup = data.pop("warmup_runs")
        data["bench"] = BenchPolicy.timed(data.pop("min_runs"), data.pop("min_time_s"), warmup)
        data["final_bench"] = BenchPolicy.final(seconds=data.pop("final_min_time_s"), warmup_runs=2 * warmup)
    else:
        data["bench"] = _build(BenchPolicy, data["bench"])
        data["final_bench"] = _build(BenchPolicy, data["final_bench"])
    return _build(EvalConfig, data)


def _build(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise TypeError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    return cls(**data)
