"""``sculpt-host pretrain``: train one search policy across several models, for ``sculpt-host search --policy``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# proxy-rewarded plans per model and round before the real candidates (PPOSettings.proxy_plans)
DEFAULT_PROXY_PLANS = 256


def register(subparsers: argparse._SubParsersAction) -> None:
    from host.search.config import ModelSpec, SearchConfig

    spec, cfg = ModelSpec(), SearchConfig()
    p = subparsers.add_parser(
        "pretrain", help="train one search policy across several models (start searches from it with --policy)",
        description="Train the GNN + PPO search policy on each of --models in turn (FLOPs-reward searches: every "
                    "candidate masked, recovered and scored, no export and no device; no final fine-tuning), each "
                    "search starting from the policy the previous one ended with, and write the policy to --out. "
                    "Start a search of any model from it with `sculpt-host search --policy FILE`. Each search is a "
                    "run folder under --runs (default: next to --out), so an interrupted pretraining resumes.")
    p.add_argument("--models", required=True,
                   help="comma-separated models (zoo names, timm:NAME, torchvision:NAME, package.module:factory)")
    p.add_argument("--out", required=True, help="the policy file to write (e.g. zoo-policy.pt)")
    p.add_argument("--budget", type=int, default=32, help="evaluated candidates per model and round (default 32)")
    p.add_argument("--rounds", type=int, default=1, help="passes over --models (default 1)")
    p.add_argument("--proxy-plans", type=int, default=DEFAULT_PROXY_PLANS,
                   help="plans each search first trains the policy on, drawn from it and rewarded by their adaptive-BN "
                        "proxy accuracy (no recovery step: ~0.4 s a plan against ~2.5 s for a candidate) before its "
                        f"--budget real candidates (default {DEFAULT_PROXY_PLANS}; 0 = none)")
    p.add_argument("--target-flops", type=float, default=cfg.target_flops,
                   help=f"MAC reduction the searches aim at (default {cfg.target_flops:g})")
    p.add_argument("--policy", dest="policy_file", help="start from this policy instead of a fresh one")
    p.add_argument("--runs", help="folder of the searches' run folders (default: OUT's name + '-runs')")
    p.add_argument("--data", default=spec.data, help=f"dataset name (default {spec.data})")
    p.add_argument("--data-root", help="folder of a local dataset (cifar10, imagefolder)")
    p.add_argument("--image-size", type=int, default=spec.image_size,
                   help=f"input size in pixels (default {spec.image_size})")
    p.add_argument("--data-limit", type=int, help="use a stratified subset of N images")
    p.add_argument("--train-epochs", type=int, default=spec.train_epochs,
                   help=f"epochs to train each model when it has no cached checkpoint (default {spec.train_epochs})")
    p.add_argument("--seed", type=int, default=cfg.seed,
                   help=f"seed of the searches (default {cfg.seed}); pretrainings that differ only in it can end with "
                        "policies that transfer very differently (README), so compare one with policy_bench.py")
    p.add_argument("--json", action="store_true", help="print the searches as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from host.data import default_channels
    from host.search.config import ModelSpec, SearchConfig
    from host.search.pretrain import pretrain

    spec = ModelSpec(data=args.data, data_root=args.data_root, image_size=args.image_size,
                     in_channels=default_channels(args.data), data_limit=args.data_limit,
                     train_epochs=args.train_epochs)
    base = replace(SearchConfig(objective="flops", target=None, devices=()), model=spec, budget=args.budget,
                   target_flops=args.target_flops, seed=args.seed)

    def report(done: int, total: int, step) -> None:
        if not args.json:
            best = "-" if step.best_reward is None else f"{step.best_reward:.4f}"
            spread = "" if step.spread is None else (
                f", policy entropy {step.spread['entropy']:.2f} of {step.spread['uniform_entropy']:.2f} nats per layer, "
                f"keeps {step.spread['keep_probability']:.0%} of layers"
                f"{' (it proposes the dense model)' if step.proposes_dense else ''}")
            print(f"[{done}/{total}] {step.model} (round {step.round}): {step.candidates} candidates, best reward "
                  f"{best}{spread}  ({step.run_dir})", file=sys.stderr, flush=True)

    from host.cli.search_cmd import _Display

    with _Display(enabled=not args.json) as display:  # each search's progress, as `sculpt-host search` shows it
        steps = pretrain(args.models.split(","), Path(args.out), base, rounds=args.rounds,
                         runs_dir=Path(args.runs) if args.runs else None, policy_file=args.policy_file,
                         proxy_plans=args.proxy_plans,
                         on_step=report, progress=display.update)
    if args.json:
        print(json.dumps({"policy": str(args.out), "searches": [
            {"model": s.model, "round": s.round, "run_dir": str(s.run_dir), "candidates": s.candidates,
             "best_reward": s.best_reward, "policy_spread": s.spread} for s in steps]}, indent=2))
    else:
        print(f"policy written to {args.out}; start a search from it with: sculpt-host search --policy {args.out} ...")
    return 0
