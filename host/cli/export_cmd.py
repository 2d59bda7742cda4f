"""``sculpt-host export``: build a zoo/user model, apply a plan (realized), export and verify the artifact."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from host.errors import ConfigError, PlanError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a (pruned) model to .pte or .tflite and verify it against PyTorch",
        description="Build MODEL, realize --plan into a smaller dense model, export it with ExecuTorch/XNNPACK "
                    "(.pte) or litert-torch (.tflite) and check the artifact's outputs against eager PyTorch.")
    parser.add_argument("--model", required=True,
                        help="zoo name (resnet20, mobilenetv2, ...), timm:NAME, torchvision:NAME, "
                             "'package.module:factory' or a .pt2 file")
    parser.add_argument("--model-arg", action="append", dest="model_args", metavar="KEY=VALUE",
                        help="constructor argument for timm/torchvision/factory models, repeatable (e.g. depth=2)")
    parser.add_argument("--plan", type=Path, help="plan JSON (see README 'Plans'); default: dense")
    parser.add_argument("--checkpoint", type=Path, help="state-dict checkpoint to load into the model")
    parser.add_argument("--format", choices=("pte", "tflite"), default="pte")
    parser.add_argument("--out", type=Path, required=True, help="artifact path to write")
    parser.add_argument("--quantize", action="store_true", help="int8 via the XNNPACK quantizer (pte only)")
    parser.add_argument("--input-shape", default="1,3,32,32",
                        help="example input shape N,C,H,W (default 1,3,32,32)")
    parser.add_argument("--num-classes", type=int, default=10, help="zoo models: number of classes")
    parser.add_argument("--width", type=float, default=1.0, help="zoo models: width multiplier")
    parser.add_argument("--masks-only", action="store_true",
                        help="export the masked dense model instead of the realized one (for comparison)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ConfigError(f"--input-shape must be four positive integers N,C,H,W, got '{text}'",
                          hint="e.g. --input-shape 1,3,32,32")
    return shape


def build_model(name: str, *, checkpoint: Path | None, shape: tuple[int, ...], num_classes: int, width: float,
                model_args: list[str] | None = None):
    """The model named on the command line (zoo name, timm/torchvision, ``package.module:factory`` or ``.pt2``)."""
    from host.models.external import parse_model_args
    from host.models.loader import load_model

    return load_model(name, checkpoint=checkpoint, num_classes=num_classes, in_channels=shape[1],
                      image_size=shape[2], width=width, model_args=parse_model_args(model_args))


def load_plan(path: Path):
    """The plan file at ``path``; ConfigError naming the file when it cannot be read or is not UTF-8 JSON."""
    from patterns import Plan

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read plan file {path}: {exc.strerror}", hint="check the --plan path") from None
    try:
        text = data.decode("utf-8")  # JSON files are UTF-8 (RFC 8259), whatever the locale says
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"plan file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})",
            hint="pass the JSON plan a search wrote (final-N.plan.json), or save the file as UTF-8",
        ) from None
    try:
        return Plan.from_json(text)
    except (ConfigError, PlanError) as exc:  # the library's message does not know which file it came from
        raise type(exc)(f"plan file {path}: {exc.message}", hint=exc.hint) from None


@contextlib.contextmanager
def _status(message: str, *, quiet: bool):
    """A spinner on stderr while the (10-60 s) export and runtime check run."""
    if quiet:
        yield
        return
    try:
        from rich.console import Console
    except ImportError:
        print(message + " ...", file=sys.stderr)
        yield
        return
    with Console(stderr=True).status(message + " ..."):
        yield


def run(args: argparse.Namespace) -> int:
    import copy

    import torch

    from host.export import export_pte, export_tflite
    from patterns import Plan, apply_masks, count, fuse_batchnorm, realize

    shape = _shape(args.input_shape)
    if args.quantize and args.format != "pte":
        raise ConfigError("--quantize is only available with --format pte", hint="drop --quantize or use pte")
    plan = load_plan(args.plan) if args.plan else Plan()  # before the model: a bad file fails in no time
    torch.manual_seed(0)
    model = build_model(args.model, checkpoint=args.checkpoint, shape=shape, num_classes=args.num_classes,
                        width=args.width, model_args=args.model_args).eval()
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    base = count(model, example)
    if args.masks_only:
        module = copy.deepcopy(model)
        apply_masks(module, plan, example)
        notes = ["masks only: zeros are still computed by the dense engine"]
    else:
        module = realize(model, plan, example) if plan.layers else model
        notes = list(getattr(module, "sculpt_notes", []))
    cost = count(module, example)
    if not args.masks_only:
        fuse_batchnorm(module, example)  # BN after a concat of sub-convs would otherwise run separately
    exporter = export_pte if args.format == "pte" else export_tflite
    with _status(f"exporting {args.model} ({len(plan)} planned layers) to {args.out}", quiet=args.json):
        artifact = exporter(module, (example,), args.out, quantize=args.quantize)
    result = {"artifact": artifact.to_dict(), "base_macs": base.dense_macs, "macs": cost.macs,
              "dense_macs": cost.dense_macs, "params": cost.params, "dense_params": cost.dense_params,
              "mac_reduction": round(cost.reduction(base, dense=True), 4), "notes": notes}
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    print(f"wrote {artifact.path} ({artifact.size_bytes / 1e6:.2f} MB, sha256 {artifact.sha256[:12]}...)")
    print(f"verified with the {args.format} runtime: max |err| vs PyTorch {artifact.max_abs_err:.2e}")
    print(f"MACs {cost.dense_macs / 1e6:.2f} M executed ({cost.macs / 1e6:.2f} M non-zero) vs "
          f"{base.dense_macs / 1e6:.2f} M dense: {cost.reduction(base, dense=True):.1%} fewer")
    print("export time: " + ", ".join(f"{k} {v:.2f}s" for k, v in artifact.timings))
    for note in notes:
        print(f"note: {note}")
    return 0
