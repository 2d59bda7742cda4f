"""One policy trained across models (``sculpt-host pretrain``), to start later searches from (``--policy``).

The policy's parameters do not depend on the model's size (:mod:`host.search.policy`), so one policy can learn
on several models in turn: for each round, and each model of ``--models`` in order, a PPO search of that model
starts from the policy the previous search ended with, and its own ``policy.pt`` is handed to the next. The
searches use the paper's FLOPs reward (each candidate masked, given its few recovery steps and scored on the
validation split: a real evaluation, about 2-3 s on a 2-core host, no export and no device) and skip the final
fine-tuning stage and the family seeds (plans the policy did not choose): every candidate is the policy's, and
the point is the policy, not a model. Each search is a normal run folder under ``runs_dir``
(journal, report), so a killed pretraining resumes where it stopped, and a finished search is not run again.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from host.errors import ConfigError
from host.kinds import ObjectiveName, Phase, Strategy
from host.search.config import SearchConfig
from host.search.progress import ProgressFn

logger = logging.getLogger(__name__)
# a mean probability of keeping a layer from which the policy is taken to propose the dense model
DENSE_KEEP = 0.99


@dataclass(frozen=True)
class PretrainStep:
    """One search of the pretraining: its model, round, run folder and what it found."""

    model: str
    round: int
    run_dir: Path
    candidates: int
    best_reward: float | None
    # the policy at the end of this search, on this model (host.search.ppo.policy_spread; None in runs from before it)
    spread: dict[str, float] | None = None

    @property
    def proposes_dense(self) -> bool:
        """The policy keeps (nearly) every layer of this model: it no longer says where to prune, and a search
        started from it evaluates only what the projection cuts from the dense model."""
        return self.spread is not None and self.spread["keep_probability"] >= DENSE_KEEP


def _folder(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "model"


def pretrain(models: Sequence[str], out: Path, base: SearchConfig, *, rounds: int = 1, runs_dir: Path | None = None,
             policy_file: str | None = None, proxy_plans: int | None = None,
             on_step: Callable[[int, int, PretrainStep], None] | None = None,
             progress: ProgressFn | None = None) -> list[PretrainStep]:
    """Train one policy on ``models`` (``rounds`` passes over them) and write it to ``out``.

    ``base`` gives everything else of each search (data, sizes, budget per model, FLOPs target, seed; its
    objective, strategy and final stage are set here); ``policy_file`` starts the first search from a policy
    already trained. ``proxy_plans`` (default ``base.ppo.proxy_plans``): plans each search trains PPO on, rewarded
    by their adaptive-BN proxy, before its real candidates (``PPOSettings.proxy_plans``). ``on_step(done, total,
    step)`` is called after each search; ``progress`` is every search's progress callback."""
    from host.search.journal import JOURNAL_NAME, Journal
    from host.search.runner import POLICY_FILE, SearchRunner

    names = [m.strip() for m in models if m.strip()]
    if not names:
        raise ConfigError("pretrain needs at least one model", hint="e.g. --models resnet20,vgg16")
    if proxy_plans is not None and proxy_plans < 0:
        raise ConfigError(f"--proxy-plans {proxy_plans} must not be negative",
                          hint="e.g. --proxy-plans 256, or 0 for none")
    if rounds < 1:
        raise ConfigError(f"--rounds {rounds} must be at least 1", hint="e.g. --rounds 2")
    out = Path(out)
    runs_dir = Path(runs_dir) if runs_dir is not None else out.with_name(out.stem + "-runs")
    total = rounds * len(names)
    steps: list[PretrainStep] = []
    current = policy_file
    for r in range(rounds):
        for name in names:
            run_dir = runs_dir / f"round{r + 1}-{_folder(name)}"
            config = replace(base, out=run_dir, model=replace(base.model, model=name), objective=ObjectiveName.FLOPS,
                             target=None, devices=(), device_pools=(), strategy=Strategy.PPO, final_top=0,
                             policy_file=current, seed=base.seed + r,
                             ppo=replace(base.ppo, family_seeds=False,
                                         proxy_plans=base.ppo.proxy_plans if proxy_plans is None else proxy_plans))
            policy = run_dir / POLICY_FILE
            if not policy.is_file():  # not finished: started, or resumed after a kill
                if (run_dir / JOURNAL_NAME).exists():
                    SearchRunner.resume(run_dir, progress=progress).run()
                else:
                    SearchRunner.start(config, progress=progress).run()
            with Journal.open(run_dir) as journal:
                rows = [c for c in journal.candidates(Phase.SEARCH) if not c.reused]
                spread = journal.get_value("policy_spread")
            step = PretrainStep(name, r + 1, run_dir, len(rows), max((c.reward for c in rows), default=None), spread)
            if step.proposes_dense:
                logger.warning("after %s the policy keeps every layer (probability %.3f on average): it proposes the "
                               "dense model and no longer says where to prune, so a search started from it evaluates "
                               "only the projection's cuts; compare it with a fresh policy (benchmarks/policy_bench.py "
                               "--strategies no-learn,pretrained) before relying on it", name,
                               spread["keep_probability"])
            steps.append(step)
            current = str(policy)
            if on_step is not None:
                on_step(len(steps), total, step)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(current, out)
    logger.info("pretrained policy written to %s (%d searches under %s)", out, len(steps), runs_dir)
    return steps
