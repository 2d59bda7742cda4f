"""How well can a plan's recovered accuracy be told before it is evaluated? Two predictors, on finished searches.

For each search run directory given (its journal: every evaluated plan with the accuracy it recovered to), this
re-creates the run's trained model and data, then, for every evaluated search plan in journal order:

  surrogate   the ridge surrogate of --dyna (host.search.surrogate.AccuracySurrogate), fitted on the plans evaluated
              BEFORE it (dense and floor included), predicts its accuracy: the prediction the search had;
  proxy       the adaptive-BN proxy that --screen judges plans by (PlanScorer.proxy_accuracy: masked, BatchNorm
              recalibrated on one training batch, no recovery, one validation batch), and its cost per plan.

It prints one row per run: Spearman rank correlation of each with the recovered accuracy, the surrogate's mean
absolute error, the spread (standard deviation) of the recovered accuracies, and the proxy's seconds per plan.
Nothing is trained (the run's checkpoint is in the cache) or exported; ~0.2-0.5 s per plan.

    .venv/bin/python benchmarks/proxy_bench.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MIN_FIT = 6  # plans before the first surrogate prediction that is scored


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0]) if len(a) > 2 else float("nan")


def study(run: Path) -> tuple:
    import torch

    from host.kinds import Phase
    from host.search.costmodel import CostModel
    from host.search.finetune import recalibrate_bn
    from host.search.runner import SearchRunner, load_trained
    from host.search.scorer import EvalData, PlanScorer
    from host.search.space import SearchSpace
    from host.search.surrogate import AccuracySurrogate, choice_tables

    torch.set_num_threads(1)
    runner = SearchRunner.resume(run)
    cfg, journal = runner.config, runner.journal
    model, splits = load_trained(cfg, lambda _progress: None)
    ev = cfg.evaluation
    data = EvalData.from_splits(splits, ev.bn_batches, ev.batch_size, ev.val_limit, cfg.seed, ev.recover_steps,
                                ev.recover_batch_size)
    recalibrate_bn(model, data.bn_batches, num_batches=len(data.bn_batches))  # as the search does
    space = SearchSpace(model, data.example_input)
    scorer = PlanScorer(model, data, ev.recover_lr)
    keep = space.vocab[space.keep_index]

    def choices(record) -> np.ndarray:
        return np.array([space.vocab.index(record.plan.choices.get(layer, keep)) for layer in space.layer_names])

    rows = [r for r in journal.candidates() if r.phase != Phase.FINAL and r.valid and not r.reused]
    history = [(choices(r), r.accuracy) for r in rows]
    surrogate = AccuracySurrogate(*choice_tables(space, CostModel.from_space(space)))
    predicted, proxies, actual, seconds = [], [], [], []
    for i, record in enumerate(rows):
        if record.phase != Phase.SEARCH:
            continue
        actual.append(record.accuracy)
        start = time.perf_counter()
        proxies.append(scorer.proxy_accuracy(record.plan.plan))
        seconds.append(time.perf_counter() - start)
        if i >= MIN_FIT:
            surrogate.fit(history[:i])
            predicted.append((surrogate.predict(history[i][0]), record.accuracy))
    journal.close()
    pairs = [(p, a) for p, a in zip(proxies, actual, strict=True) if p is not None]
    return (cfg.model.model, run.name, len(actual),
            spearman([p for p, _ in predicted], [a for _, a in predicted]),
            float(np.mean([abs(p - a) for p, a in predicted])) if predicted else float("nan"),
            spearman([p for p, _ in pairs], [a for _, a in pairs]), float(np.std(actual)), float(np.mean(seconds)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="search run directories (with journal.sqlite)")
    args = parser.parse_args(argv)
    header = ("model", "run", "plans", "surrogate Spearman", "surrogate MAE", "proxy Spearman", "accuracy std",
              "proxy s/plan")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in args.runs:
        m, name, n, s_rho, s_mae, p_rho, std, sec = study(run)
        lines.append(f"| {m} | {run.parent.name}/{name} | {n} | {s_rho:+.2f} | {s_mae:.3f} | {p_rho:+.2f} | {std:.3f} | "
                     f"{sec:.2f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
