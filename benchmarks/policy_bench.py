"""Does the policy learn? Best validation reward after N evaluated candidates, per search strategy (issue 17).

For every model (default ResNet-20 and MobileNetV2 on MNIST-5k, plus any held-out model named in --models)
and every seed, one search per strategy, all with the same budget, objective, target, dense checkpoint,
evaluator and cost model (the journal of each run is kept under --out):

  ppo         the GNN + PPO policy (calibrated prior, family seeds, projection, online cost model, learning)
  ppo-dyna    the same with --dyna N imagined plans per real one (host.search.surrogate; --dyna, default 8)
  ppo-relabel PPO learning from the evaluated (projected) plans instead of its proposals (PPOSettings.relabel)
  ppo-screen  PPO with best-of-k screening: each real step evaluates the best of k plans drawn from the policy,
              judged by their adaptive-BN proxy accuracy (PPOSettings.screen; --screen, default 8)
  ppo-screen-learn  ppo-screen that also trains PPO on the screened plans it did not evaluate, rewarded as the
              proxy predicted (PPOSettings.screen_learn)
  ppo-screen-replay  ppo-screen whose every update also trains on all the plans the run has evaluated, with their
              real rewards (PPOSettings.replay)
  screen-no-learn  the same screening with PPO's learning rate 0: the policy stays its prior
  ppo-warm    PPO whose policy first trains on --proxy-plans plans (default 256) rewarded by their adaptive-BN proxy
              accuracy, before its first real candidate (PPOSettings.proxy_plans; no budget spent)
  ppo-warm-credit  ppo-warm whose PPO credits each layer on its own (PPOSettings.credit = "layer": a counterfactual
              baseline per layer from an additive reward model, the ratio clipped per layer; host.search.ppo)
  ppo-credit  PPO with that per-layer credit, no warm-up
  ppo-warm-evolve  ppo-warm whose steps, once the population is full, are policy-guided evolution (ppo-evolve)
  ppo-warm-evolve-parent  ppo-warm-evolve whose PPO judges each child against its parent (PPOSettings.credit =
              "parent": the child's changed layers get its reward minus its parent's, the other layers none)
  ppo-warm-screen  ppo-warm with best-of-k screening (its learning-rate-0 ablation is screen-no-learn)
  ppo-evolve  policy-guided evolution: aging evolution whose children take one or two of the PPO policy's proposed
              choices, PPO learning from the evaluated children (PPOSettings.evolve)
  evolve-no-learn  the same with PPO's learning rate 0: mutations drawn from the calibrated prior
  no-learn    the same with PPO's learning rate 0: the policy stays its calibrated prior
  random      plans drawn from that prior, no seeds, no projection, no learning
  evolution   aging evolution (host.search.evolution) from the family seeds and the prior, same projection
  pretrained  (with --policy FILE) the PPO search started from a policy trained beforehand
  pretrained-screen, pretrained-warm  the same, with --screen or with the --proxy-plans warm-up on the target model

The figure is, for each run, the best reward among its first N newly evaluated candidates (reused plans spend
no budget and are not counted), read from its journal, at every N of --checkpoints. The table gives the mean
over seeds; the paired table gives, per checkpoint and model, ppo minus each other strategy, mean over seeds
with its standard error (the seeds pair the runs: same data split, dense model and seed). A PNG of the curves
(mean over seeds) is written next to the table. Nothing is fine-tuned (--final-top 0): this is about what
the search finds, not the final stage. With --held-out, the plan each run would pick after N (its best
validation reward) is re-made as the search scored it and scored on the test split too (HeldOut): the best of
N noisy validation figures is biased upwards, the more so the more near-equal plans a strategy evaluates, and
the test split chose nothing.

    .venv/bin/python benchmarks/policy_bench.py [--models resnet20,mobilenetv2] [--seeds 3]
        [--budget 48] [--checkpoints 8,16,32,48] [--strategies ppo,no-learn,random,evolution]
        [--policy zoo-policy.pt] [--objective latency] [--target-latency 0.5x] [--out runs/policy_bench]
        [--held-out]

Costs: a latency-objective candidate is scored (~2-3 s), and exported and measured when the cost model
thinks it worth it (~8 s more for a kernel-pattern plan): about 6 s per candidate on average here, so the
default grid (2 models x 3 seeds x 4 strategies x 48) is ~3 h on this 2-core machine; `--objective flops`
(no export, no device) takes ~2.5 s per candidate. A run that exists under --out is not run again (its
journal is read), so an interrupted bench continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STRATEGIES = ("ppo", "ppo-dyna", "ppo-relabel", "ppo-screen", "ppo-screen-learn", "ppo-screen-replay", "screen-no-learn",
              "ppo-warm", "ppo-warm-credit", "ppo-credit", "ppo-warm-evolve", "ppo-warm-evolve-parent", "ppo-warm-screen",
              "ppo-evolve", "evolve-no-learn", "no-learn", "random", "evolution", "pretrained", "pretrained-screen", "pretrained-warm")
# rows whose paired differences are printed
OURS = ("ppo", "ppo-dyna", "ppo-relabel", "ppo-screen", "ppo-screen-learn", "ppo-screen-replay", "screen-no-learn",
        "ppo-warm", "ppo-warm-credit", "ppo-credit", "ppo-warm-evolve", "ppo-warm-evolve-parent", "ppo-warm-screen", "ppo-evolve",
        "evolve-no-learn", "pretrained", "pretrained-screen", "pretrained-warm")


def best_after(rewards: list[float], checkpoints: list[int]) -> dict[int, float | None]:
    """Best reward among the first N evaluated candidates, for each N (None past the run's length)."""
    out: dict[int, float | None] = {}
    for n in checkpoints:
        out[n] = max(rewards[:n]) if len(rewards) >= n and n > 0 else None
    return out


def mean_between(rewards: list[float], checkpoints: list[int]) -> dict[int, float | None]:
    """Mean reward of the candidates evaluated after the previous checkpoint and up to N, for each N: does a
    strategy propose better plans as the run goes on (None past the run's length)."""
    out: dict[int, float | None] = {}
    previous = 0
    for n in checkpoints:
        out[n] = statistics.mean(rewards[previous:n]) if len(rewards) >= n > previous else None
        previous = n
    return out


def paired(ours: list[float | None], theirs: list[float | None]) -> tuple[float, float, int] | None:
    """Mean and standard error of ``ours - theirs`` over the seeds where both exist."""
    diffs = [a - b for a, b in zip(ours, theirs, strict=True) if a is not None and b is not None]
    if not diffs:
        return None
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return statistics.mean(diffs), se, len(diffs)


def _paired_cells(ours: list[dict[int, float | None]], theirs: list[dict[int, float | None]],
                  checkpoints: list[int]) -> list[str]:
    """One table cell per checkpoint: :func:`paired` of two strategies' per-seed figures."""
    cells = []
    for n in checkpoints:
        d = paired([s[n] for s in ours], [s[n] for s in theirs])
        cells.append("-" if d is None else f"{d[0]:+.4f} +- {d[1]:.4f} ({d[2]})")
    return cells


def _mean_rows(table: dict[str, dict[str, list[dict[int, float | None]]]], checkpoints: list[int]) -> list[str]:
    """One markdown row per model and strategy: the mean over seeds at each checkpoint, 2 decimals."""
    lines = []
    for model, rows in table.items():
        for strategy, per_seed in rows.items():
            cells = []
            for n in checkpoints:
                values = [s[n] for s in per_seed if s[n] is not None]
                cells.append(f"{statistics.mean(values):.2f}" if values else "-")
            lines.append("| " + " | ".join([model, strategy, *cells]) + " |")
    return lines


def journal_rewards(run_dir: Path) -> list[float]:
    """Rewards of the newly evaluated search candidates of a run, in evaluation order."""
    from host.kinds import Phase
    from host.search.journal import Journal

    journal = Journal.open(run_dir)
    return [r.reward for r in journal.candidates(Phase.SEARCH) if not r.reused]


def strategy_changes(name: str, base, policy: str | None, dyna: int = 8, screen: int = 8,
                     proxy_plans: int = 256) -> dict:
    if name == "ppo":
        return {}
    if name == "ppo-warm":
        return {"ppo": replace(base.ppo, proxy_plans=proxy_plans)}
    if name == "ppo-warm-credit":
        return {"ppo": replace(base.ppo, proxy_plans=proxy_plans, credit="layer")}
    if name == "ppo-warm-evolve":
        return {"ppo": replace(base.ppo, proxy_plans=proxy_plans, evolve=True)}
    if name == "ppo-warm-evolve-parent":
        return {"ppo": replace(base.ppo, proxy_plans=proxy_plans, evolve=True, credit="parent")}
    if name == "ppo-credit":
        return {"ppo": replace(base.ppo, credit="layer")}
    if name == "ppo-warm-screen":
        return {"ppo": replace(base.ppo, proxy_plans=proxy_plans, screen=screen)}
    if name == "ppo-dyna":
        return {"ppo": replace(base.ppo, dyna=dyna)}
    if name == "ppo-relabel":
        return {"ppo": replace(base.ppo, relabel=True)}
    if name == "ppo-screen":
        return {"ppo": replace(base.ppo, screen=screen)}
    if name == "ppo-screen-learn":
        return {"ppo": replace(base.ppo, screen=screen, screen_learn=True)}
    if name == "ppo-screen-replay":
        return {"ppo": replace(base.ppo, screen=screen, replay=True)}
    if name == "screen-no-learn":
        return {"ppo": replace(base.ppo, learning_rate=0.0, screen=screen)}
    if name == "ppo-evolve":
        return {"ppo": replace(base.ppo, evolve=True)}
    if name == "evolve-no-learn":
        return {"ppo": replace(base.ppo, learning_rate=0.0, evolve=True)}
    if name == "no-learn":
        return {"ppo": replace(base.ppo, learning_rate=0.0)}
    if name in ("random", "evolution"):
        return {"strategy": name}
    if name.startswith("pretrained"):
        if not policy:
            raise SystemExit(f"the {name} row needs --policy FILE (a policy.pt from a search or pretraining)")
        if name == "pretrained":
            return {"policy_file": policy}
        if name == "pretrained-screen":  # the pretrained policy proposes, the target model's proxy picks
            return {"policy_file": policy, "ppo": replace(base.ppo, screen=screen)}
        if name == "pretrained-warm":  # the pretrained policy first trains on the target model's proxy
            return {"policy_file": policy, "ppo": replace(base.ppo, proxy_plans=proxy_plans)}
    raise SystemExit(f"unknown strategy {name!r}; use some of {', '.join(STRATEGIES)}")


def run_one(base, out: Path, progress: bool) -> tuple[list[float], float]:
    """The search of ``base`` (resumed if its journal exists, extended if it has fewer than ``base.budget``
    candidates); its rewards and wall time (0 if reused)."""
    from host.search.journal import JOURNAL_NAME
    from host.search.runner import SearchRunner

    start = time.perf_counter()
    if (out / "result.json").exists() and len(journal_rewards(out)) >= base.budget:
        return journal_rewards(out), 0.0
    show = (lambda p: print(f"  {p.stage} {p.done}/{p.total} {p.message}", file=sys.stderr, flush=True)) \
        if progress else None
    # a run kept in --out continues, up to this invocation's --budget (a budget-32 run grows to 48)
    if (out / JOURNAL_NAME).exists():
        _check_extendable(out, base.budget)
        runner = SearchRunner.resume(out, progress=show, budget=base.budget)
    else:
        runner = SearchRunner.start(replace(base, out=out), progress=show)
    runner.run()
    return journal_rewards(out), time.perf_counter() - start


def _check_extendable(out: Path, budget: int) -> None:
    """Refuse to extend an evolution run started with another budget: its population is sized from the budget at
    the start (``population_size``) and kept on a resume, so a budget-32 run grown to 48 is not the budget-48 search
    the other rows of the table ran (a budget-48 run has 16 plans in its population, a budget-32 one 10)."""
    from host.search.evolution import population_size
    from host.search.journal import Journal

    kept = Journal.open(out).get_value("evolution_population")
    if kept is not None and int(kept) != population_size(budget):
        raise SystemExit(f"{out} is an evolution run whose population ({kept}) was sized for another budget than "
                         f"--budget {budget} ({population_size(budget)}): extended, it would not be a budget-{budget} "
                         "run. Move it away or use another --out")


class HeldOut:
    """The test-split accuracy of the plans a run's validation rewards chose (``--held-out``).

    The best validation reward after N candidates is a maximum over noisy figures (500 validation images at
    MNIST-5k: one image is 0.2 points, a binomial standard error near 1 point at 95%), so a strategy that evaluates
    many plans of about the same quality near its best gains from that noise alone (the winner's curse). The plan a
    run would pick at N is therefore re-made here exactly as the search scored it (the same masks, recovery batches
    and BatchNorm batches, one torch thread) and scored once more on the test split, which chose nothing. Its
    validation accuracy is re-computed too, as a check that the re-made model is the searched one."""

    def __init__(self, base) -> None:
        import torch

        from host.search.runner import load_trained, scoring_data
        from host.search.scorer import PlanScorer, batches
        from host.search.space import SearchSpace, excluded_patterns

        torch.set_num_threads(base.evaluation.host_threads or torch.get_num_threads())
        model, splits = load_trained(base, lambda _p: None)
        data = scoring_data(base, model, splits)  # the search's own batches and BatchNorm recalibration
        self.space = SearchSpace(model, data.example_input, exclude=excluded_patterns(base.precision))
        self.scorer = PlanScorer(model, data, base.evaluation.recover_lr)
        self.test = batches(*splits.test.tensors(), 256)
        self.checked = self.mismatched = 0
        self._memo: dict[tuple, float] = {}

    def chosen(self, run_dir: Path, checkpoints: list[int]) -> dict[int, float | None]:
        """Test accuracy (%) of the plan with the best validation reward among the run's first N newly evaluated
        candidates (the first of equals), for each N; None past the run's length."""
        from host.kinds import Phase
        from host.search.journal import Journal

        records = [r for r in Journal.open(run_dir).candidates(Phase.SEARCH) if not r.reused]
        out: dict[int, float | None] = {}
        for n in checkpoints:
            if len(records) < n:
                out[n] = None
                continue
            best = max(records[:n], key=lambda r: r.reward)  # max keeps the first of equals
            out[n] = self._test_accuracy(best)
        return out

    def _test_accuracy(self, record) -> float:
        from host.search.finetune import accuracy

        choices = self.space.encode(record.plan.choices)
        key = tuple(choices.tolist())
        if key not in self._memo:
            model, _ = self.scorer.masked_model(self.space.decode(choices)[0])
            self.checked += 1
            self.mismatched += abs(self.scorer.accuracy(model) - record.accuracy) > 1e-6
            self._memo[key] = 100.0 * accuracy(model, self.test)
        return self._memo[key]


def plot(curves: dict[str, dict[str, dict[int, float | None]]], checkpoints: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for ax, (model, rows) in zip(axes[0], curves.items(), strict=True):
        for strategy, points in rows.items():
            xs = [n for n in checkpoints if points.get(n) is not None]
            ax.plot(xs, [points[n] for n in xs], marker="o", label=strategy)
        ax.set_title(model)
        ax.set_xlabel("evaluated candidates")
        ax.set_ylabel("best validation reward (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet20,mobilenetv2", help="zoo names (default resnet20,mobilenetv2)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds are first-seed .. first-seed + seeds - 1 (to split a grid over processes)")
    parser.add_argument("--budget", type=int, default=48)
    parser.add_argument("--checkpoints", default="8,16,32,48")
    parser.add_argument("--strategies", default="ppo,no-learn,random,evolution",
                        help=f"some of {','.join(STRATEGIES)} (the pretrained rows need --policy)")
    parser.add_argument("--policy", help="a policy.pt to start the pretrained rows from")
    parser.add_argument("--dyna", type=int, default=8, help="imagined plans per real one in the ppo-dyna row (8)")
    parser.add_argument("--screen", type=int, default=8,
                        help="plans screened by their proxy accuracy per real one in the screening rows (8)")
    parser.add_argument("--proxy-plans", type=int, default=256,
                        help="proxy-rewarded plans the ppo-warm rows train on before their first candidate (256)")
    parser.add_argument("--objective", default="latency", choices=("latency", "flops"))
    parser.add_argument("--target-latency", default="0.5x")
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--data-limit", type=int, default=5000)
    parser.add_argument("--train-epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "policy_bench")
    parser.add_argument("--progress", action="store_true", help="print each run's progress to stderr")
    parser.add_argument("--held-out", action="store_true",
                        help="also score on the test split the plan each run's validation rewards chose after N "
                             "(re-made as the search scored it: a few seconds a plan)")
    args = parser.parse_args(argv)

    from host.search.config import ModelSpec, SearchConfig

    checkpoints = sorted({int(c) for c in args.checkpoints.split(",") if c.strip()})
    if not checkpoints or checkpoints[0] < 1 or checkpoints[-1] > args.budget:
        raise SystemExit(f"--checkpoints must lie within 1..--budget ({args.budget})")
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    # results[model][strategy] = one {checkpoint: best reward} per seed
    results: dict[str, dict[str, list[dict[int, float | None]]]] = {}
    seconds: dict[str, float] = {}
    trends: dict[str, dict[str, list[dict[int, float | None]]]] = {}  # mean_between per run
    held: dict[str, dict[str, list[dict[int, float | None]]]] = {}  # --held-out: test accuracy of the chosen plans
    checks = [0, 0]  # --held-out: plans re-made, and of them whose validation accuracy differed from the journal's
    for model in models:
        results[model] = {s: [] for s in strategies}
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            base = SearchConfig(
                budget=args.budget, final_top=0, seed=seed, export_tflite=False, objective=args.objective,
                target=args.target_latency if args.objective == "latency" else None,
                target_flops=args.target_flops,
                devices=("local",) if args.objective == "latency" else (),
                model=ModelSpec(model=model, data_limit=args.data_limit, train_epochs=args.train_epochs))
            for strategy in strategies:
                changes = strategy_changes(strategy, base, args.policy, args.dyna, args.screen, args.proxy_plans)
                config = replace(base, **changes)
                print(f"{model} seed {seed} {strategy}", file=sys.stderr, flush=True)
                rewards, took = run_one(config, args.out / model / f"seed{seed}" / strategy, args.progress)
                seconds[strategy] = seconds.get(strategy, 0.0) + took
                results[model][strategy].append(best_after(rewards, checkpoints))
                trends.setdefault(model, {}).setdefault(strategy, []).append(mean_between(rewards, checkpoints))
            if args.held_out:
                print(f"{model} seed {seed}: scoring the chosen plans on the test split", file=sys.stderr, flush=True)
                scorer = HeldOut(base)
                for strategy in strategies:
                    held.setdefault(model, {}).setdefault(strategy, []).append(
                        scorer.chosen(args.out / model / f"seed{seed}" / strategy, checkpoints))
                checks[0] += scorer.checked
                checks[1] += scorer.mismatched

    lines = [f"objective {args.objective}"
             f"{' ' + args.target_latency if args.objective == 'latency' else f' {args.target_flops:g} MAC cut'}, "
             f"budget {args.budget}, {args.seeds} seed(s); best validation reward after N evaluated candidates "
             "(mean over seeds)", ""]
    header = ["model", "strategy", *[f"N={n}" for n in checkpoints]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    curves: dict[str, dict[str, dict[int, float | None]]] = {}
    for model, rows in results.items():
        curves[model] = {}
        for strategy, per_seed in rows.items():
            means = {}
            for n in checkpoints:
                values = [s[n] for s in per_seed if s[n] is not None]
                means[n] = statistics.mean(values) if values else None
            curves[model][strategy] = means
            lines.append("| " + " | ".join([model, strategy, *[
                "-" if means[n] is None else f"{means[n]:.4f}" for n in checkpoints]]) + " |")
    spans = [f"{a + 1}-{b}" for a, b in zip([0, *checkpoints[:-1]], checkpoints, strict=True)]
    lines += ["", "mean reward of the candidates evaluated in each span (mean over seeds): does a strategy propose "
              "better plans as the run goes on", "", "| " + " | ".join(["model", "strategy", *spans]) + " |",
              "|" + "---|" * (len(spans) + 2)]
    lines += _mean_rows(trends, checkpoints)
    if held:
        lines += ["", "test accuracy (%) of the plan with the best validation reward after N (mean over seeds; "
                  f"{checks[0]} plans re-made, {checks[1]} of them not at their journaled validation accuracy)", "",
                  "| " + " | ".join(["model", "strategy", *[f"N={n}" for n in checkpoints]]) + " |",
                  "|" + "---|" * (len(checkpoints) + 2)]
        lines += _mean_rows(held, checkpoints)
    for ours in OURS:
        if ours not in strategies:
            continue
        for title, table, columns in (("best reward after N", results, [f"N={n}" for n in checkpoints]),
                                      ("mean reward of the span's candidates", trends, spans),
                                      ("test accuracy of the plan chosen after N", held, [f"N={n}" for n in checkpoints])):
            if not table:
                continue
            lines += ["", f"{ours} minus each other strategy, {title}, paired by seed: mean +- standard error (seeds)",
                      ""]
            header = ["model", "vs", *columns]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for model, rows in table.items():
                lines += [f"| {model} | {other} | " + " | ".join(_paired_cells(rows[ours], rows[other], checkpoints))
                          + " |" for other in strategies if other != ours]
    lines += ["", "search wall time this invocation (s, runs reused from --out count 0): "
              + ", ".join(f"{s} {t:.0f}" for s, t in seconds.items())]
    text = "\n".join(lines)
    print(text)
    (args.out / "policy_bench.md").write_text(text + "\n")
    (args.out / "policy_bench.json").write_text(json.dumps(
        {m: {s: [{str(k): v for k, v in seed.items()} for seed in per] for s, per in rows.items()}
         for m, rows in results.items()}, indent=2))
    plot(curves, checkpoints, args.out / "policy_bench.png")
    print(f"\nwritten: {args.out / 'policy_bench.md'}, .json, .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
