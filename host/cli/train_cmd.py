"""``sculpt-host train``: train any classifier (zoo, timm, torchvision, ``package.module:factory``) on any of the
datasets with the recipe the search uses, and write its checkpoint. The checkpoint is also cached, so a
search of the same model and data without ``--checkpoint`` starts from it instead of training again."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from host.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    from host.search.config import ModelSpec

    p = subparsers.add_parser(
        "train", help="train a model on a dataset with the search's recipe and write its checkpoint",
        description="Train MODEL on DATA (SGD, one-cycle learning rate, the recipe a search uses when it has no "
                    "--checkpoint) and write the state dict to --out, with a JSON record of the accuracy next to "
                    "it. The sizes default to the search's, so `sculpt-host search` with the same flags (or "
                    "--checkpoint OUT) starts from this model.")
    p.add_argument("--model", required=True,
                   help="zoo name, timm:NAME, torchvision:NAME or package.module:factory")
    p.add_argument("--model-arg", action="append", dest="model_args", metavar="KEY=VALUE",
                   help="constructor argument for timm/torchvision/factory models, repeatable")
    p.add_argument("--data", default="mnist", help="dataset name (default mnist)")
    p.add_argument("--data-root", help="folder of a local dataset (cifar10, imagefolder)")
    p.add_argument("--image-size", type=int, default=16, help="input size in pixels (default 16, as search)")
    p.add_argument("--channels", type=int, choices=(1, 3),
                   help="input channels (default: the dataset's own: 1 for mnist/digits, 3 for cifar10/imagefolder)")
    p.add_argument("--width", type=float, default=1.0, help="zoo model width multiplier (default 1)")
    p.add_argument("--data-limit", type=int, help="use a stratified subset of N images")
    p.add_argument("--epochs", type=int, default=ModelSpec().train_epochs,
                   help=f"training epochs (default {ModelSpec().train_epochs}, as search)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule (0.1)")
    p.add_argument("--seed", type=int, default=0, help="data split and initialization seed (default 0)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write (state dict)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from host.data import default_channels, load_dataset
    from host.data.checks import data_warnings
    from host.models.external import parse_model_args
    from host.models.train import TrainConfig, get_or_train_checkpoint
    from host.search.runner import cache_dir

    if args.model.endswith(".pt2"):
        raise ConfigError(f"'{args.model}' is an exported program and cannot be trained",
                          hint="pass the model as a zoo name, timm:NAME, torchvision:NAME or package.module:factory")
    args.channels = args.channels or default_channels(args.data)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    splits = load_dataset(args.data, root=args.data_root, image_size=args.image_size, channels=args.channels,
                          seed=args.seed, limit=args.data_limit)  # a bad dataset fails before any training
    for warning in data_warnings(splits, args.batch_size):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"training {args.model} on {args.data}: {len(splits.train)} train / {len(splits.val)} val images of "
          f"{args.channels}x{args.image_size}x{args.image_size}, {splits.num_classes} classes, {args.epochs} epochs",
          file=sys.stderr, flush=True)

    def on_epoch(epoch: int, epochs: int, loss: float, val: float) -> None:
        print(f"epoch {epoch}/{epochs}: train loss {loss:.4f}, val accuracy {val:.2%}", file=sys.stderr, flush=True)

    started = time.time()
    cached = get_or_train_checkpoint(
        args.model, args.data, cache_dir=cache_dir(), config=config, data_root=args.data_root,
        data_limit=args.data_limit, progress=on_epoch, model_args=parse_model_args(args.model_args) or None,
        width=args.width, num_classes=splits.num_classes, image_size=args.image_size, in_channels=args.channels,
    )
    meta = json.loads(cached.with_suffix(".json").read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, args.out)
    meta["checkpoint"] = str(args.out)
    meta["cached"] = str(cached)
    meta["reused"] = cached.stat().st_mtime < started  # trained before, by a search or an earlier train
    meta["warnings"] = data_warnings(splits, args.batch_size, meta["val_accuracy"])
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    if args.json:
        print(json.dumps(meta, indent=2, sort_keys=True, default=str))
        return 0
    for warning in meta["warnings"][len(data_warnings(splits, args.batch_size)):]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {args.out}: {meta['val_accuracy']:.2%} validation accuracy after {args.epochs} epochs "
          + (f" (reused the checkpoint cached in {cached.parent})" if meta["reused"] else f" ({meta['seconds']:.1f} s)"))
    print(f"search it with: sculpt-host search --model {args.model} --checkpoint {args.out} --data {args.data} "
          f"--image-size {args.image_size} --channels {args.channels}"
          + "".join(f" --model-arg {a}" for a in args.model_args or [])
          + (f" --data-root {args.data_root}" if args.data_root else ""))
    return 0
