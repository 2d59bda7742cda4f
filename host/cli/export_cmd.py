"""``sculpt-host export``: build a zoo/user model, apply a plan (realized), export and verify the artifact."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from host.errors import ConfigError, PlanError
from host.export.sidecar import read_sidecar, sidecar_path, write_sidecar


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a (pruned) model to .pte or .tflite and verify it against PyTorch",
        description="Build MODEL, realize --plan into a smaller dense model, export it with ExecuTorch/XNNPACK "
                    "(.pte) or litert-torch (.tflite) and check the artifact's outputs against eager PyTorch. "
                    "Or re-export a search's fine-tuned final model exactly with --from-run RUN. A JSON sidecar "
                    "next to the artifact (m.pte -> m.json) records the input preprocessing and digests.")
    parser.add_argument("--model",
                        help="zoo name (resnet20, mobilenetv2, ...), timm:NAME, torchvision:NAME, "
                             "'package.module:factory' or a .pt2 file")
    parser.add_argument("--from-run", type=Path, metavar="RUN",
                        help="a finished search's folder: export its fine-tuned final model (see --final) "
                             "instead of --model/--plan/--checkpoint")
    parser.add_argument("--final", type=int, default=1, metavar="N",
                        help="with --from-run: which final model (final-N, default 1)")
    parser.add_argument("--model-arg", action="append", dest="model_args", metavar="KEY=VALUE",
                        help="constructor argument for timm/torchvision/factory models, repeatable (e.g. depth=2)")
    parser.add_argument("--plan", type=Path, help="plan JSON (see README 'Plans'); default: dense")
    parser.add_argument("--checkpoint", type=Path, help="state-dict checkpoint to load into the model")
    parser.add_argument("--format", choices=("pte", "tflite"), default="pte")
    parser.add_argument("--out", type=Path,
                        help="artifact path to write (with --from-run default RUN/final-N.pte|.tflite, "
                             "final-N-int8.pte|.tflite with --quantize)")
    parser.add_argument("--quantize", action="store_true",
                        help="int8 (per-channel weights, PT2E: XNNPACK's quantizer for pte, litert-torch's for "
                             "tflite), calibrated on --data's training images (or the run's with --from-run); "
                             "reports int8 accuracy next to fp32 on the validation split")
    parser.add_argument("--calibration-images", type=int, default=None, metavar="N",
                        help=f"with --quantize: training images to calibrate on (default {_calibration_default()})")
    parser.add_argument("--data", help="dataset whose channels/classes size the model, as inspect (mnist, digits, "
                                        "cifar10, imagefolder)")
    parser.add_argument("--data-root", help="folder of a local dataset (cifar10, imagefolder)")
    parser.add_argument("--image-size", type=int, help="input size in pixels, as inspect (default 32)")
    parser.add_argument("--channels", type=int, choices=(1, 3),
                        help="input channels, as inspect (default: the dataset's, else 3)")
    parser.add_argument("--input-shape", help="example input shape N,C,H,W instead of --image-size/--channels "
                                              "(e.g. a batch of 4, or a non-square input)")
    parser.add_argument("--num-classes", type=int, help="classes (default: the dataset's, else 10)")
    parser.add_argument("--width", type=float, default=1.0, help="zoo models: width multiplier")
    parser.add_argument("--masks-only", action="store_true",
                        help="export the masked dense model instead of the realized one (for comparison)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def _calibration_default() -> int:
    from host.export.int8 import DEFAULT_CALIBRATION_IMAGES

    return DEFAULT_CALIBRATION_IMAGES


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ConfigError(f"--input-shape must be four positive integers N,C,H,W, got '{text}'",
                          hint="e.g. --input-shape 1,3,32,32")
    return shape


def _input(args: argparse.Namespace) -> tuple[tuple[int, ...], int]:
    """(example input shape, number of classes) from --input-shape or --data/--image-size/--channels, with the
    defaults `inspect` uses: 3 x 32 x 32 and 10 classes unless a dataset says otherwise."""
    from host.data import dataset_info

    channels, classes = 3, 10
    if args.data:
        info = dataset_info(args.data, root=args.data_root)
        channels, classes = info.channels, info.num_classes
    classes = args.num_classes or classes
    if args.input_shape is not None:
        if args.image_size is not None or args.channels is not None:
            raise ConfigError("--input-shape gives the whole shape: drop --image-size/--channels",
                              hint="e.g. --input-shape 1,3,64,64, or --image-size 64 --channels 3")
        return _shape(args.input_shape), classes
    return (1, args.channels or channels, args.image_size or 32, args.image_size or 32), classes


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
    """A spinner on stderr while the (10-60 s) export and runtime check run; piped, in CI or into a file (or
    without rich), a plain ``progress:`` line when it starts and one when it is done."""
    import time

    from host.quiet import stderr_is_terminal

    if quiet:
        yield
        return
    if stderr_is_terminal():
        try:
            from rich.console import Console
        except ImportError:
            pass
        else:
            with Console(stderr=True).status(message + " ..."):
                yield
            return
    started = time.monotonic()
    print(f"progress: {message} ...", file=sys.stderr, flush=True)
    yield
    print(f"progress: {message}: done in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)


def _random_weights(args: argparse.Namespace) -> bool:
    """True when the model's weights are its constructor's: no checkpoint, no .pt2, no pretrained=..."""
    from host.models.external import parse_model_args

    pretrained = parse_model_args(args.model_args).get("pretrained") not in (None, False, "false", "False", 0)
    return args.checkpoint is None and not str(args.model).endswith(".pt2") and not pretrained


def run(args: argparse.Namespace) -> int:
    import copy

    import torch

    from host.export import export_pte, export_tflite
    from patterns import Plan, apply_masks, count, fuse_batchnorm, realize

    if args.calibration_images is not None and not args.quantize:
        raise ConfigError("--calibration-images only applies to int8", hint="add --quantize, or drop it")
    if args.calibration_images is not None and args.calibration_images < 1:
        raise ConfigError(f"--calibration-images must be at least 1, got {args.calibration_images}",
                          hint="e.g. --calibration-images 64")
    if args.from_run is not None:
        return run_from_run(args)
    if args.model is None:
        raise ConfigError("export needs --model MODEL (or --from-run RUN)",
                          hint="e.g. sculpt-host export --model resnet20 --out m.pte, or --from-run runs/quickstart")
    if args.out is None:
        raise ConfigError("export needs --out PATH", hint="e.g. --out model.pte")
    shape, num_classes = _input(args)
    plan = load_plan(args.plan) if args.plan else Plan()  # before the model: a bad file fails in no time
    torch.manual_seed(0)
    model = build_model(args.model, checkpoint=args.checkpoint, shape=shape, num_classes=num_classes,
                        width=args.width, model_args=args.model_args)
    random_weights = _random_weights(args)
    if random_weights:
        print(f"warning: no --checkpoint: {args.model} is exported with its random initial weights (the "
              "artifact's outputs are meaningless; pass --checkpoint FILE, or --from-run RUN for a search's "
              "fine-tuned model)", file=sys.stderr)
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    splits, calibration = None, None
    if args.quantize:
        splits, example, calibration = _int8_inputs(args, shape, example)
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
    kwargs = {"calibration": calibration} if args.quantize else {}
    with _status(f"exporting {args.model} ({len(plan)} planned layers) to {args.out}", quiet=args.json):
        artifact = exporter(module, (example,), args.out, quantize=args.quantize, **kwargs)
    if random_weights:
        notes.append("random weights: exported without a checkpoint")
    int8 = _int8_accuracy(args, module, artifact, splits, shape)
    if args.quantize and splits is None:
        notes.append("int8 calibrated on one random input: pass --data (and --checkpoint) to calibrate on real "
                     "images and see the int8 accuracy")
    sidecar = write_sidecar(
        sidecar_path(artifact.path), artifacts=[artifact], preprocessing=None, notes=notes,
        accuracy={"int8_eval": int8} if int8 else None,
        model={"spec": args.model, "model_args": list(args.model_args or []),
               "checkpoint": str(args.checkpoint) if args.checkpoint else None,
               "plan": str(args.plan) if args.plan else None, "masks_only": bool(args.masks_only),
               "input_shape": list(shape)},
    )
    result = {"artifact": artifact.to_dict(), "base_macs": base.dense_macs, "macs": cost.macs,
              "dense_macs": cost.dense_macs, "params": cost.params, "dense_params": cost.dense_params,
              "mac_reduction": round(cost.reduction(base, dense=True), 4), "notes": notes,
              "sidecar": str(sidecar), "int8_eval": int8, "schema_version": 1}
    return _print_result(args, artifact, result, notes, cost=cost, base=base)


def _print_result(args, artifact, result, notes, *, cost=None, base=None) -> int:
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    print(f"wrote {artifact.path} ({artifact.size_bytes / 1e6:.2f} MB, sha256 {artifact.sha256[:12]}...)")
    print(f"verified with the {args.format} runtime: max |err| vs PyTorch {artifact.max_abs_err:.2e}")
    if cost is not None:
        print(f"MACs {cost.dense_macs / 1e6:.2f} M executed ({cost.macs / 1e6:.2f} M non-zero) vs "
              f"{base.dense_macs / 1e6:.2f} M dense: {cost.reduction(base, dense=True):.1%} fewer")
    accuracy = result.get("int8_eval") or {}
    if accuracy:
        print(f"int8 accuracy {accuracy['int8']:.2%} vs fp32 {accuracy['fp32']:.2%} on {accuracy['images']} "
              f"{accuracy['split']} images ({100 * (accuracy['int8'] - accuracy['fp32']):+.1f} points), run by "
              f"the {args.format} runtime")
    print(f"sidecar (preprocessing, digests): {result['sidecar']}")
    print("export time: " + ", ".join(f"{k} {v:.2f}s" for k, v in artifact.timings))
    for note in notes:
        print(f"note: {note}")
    return 0


def run_from_run(args: argparse.Namespace) -> int:
    """``export --from-run RUN``: the fine-tuned, realized final model a search saved (``final-N.pt2``),
    exported again, with the run's preprocessing in the sidecar."""
    import torch

    from host.export import export_pte, export_tflite
    from host.models.loader import load_model

    given = [flag for flag, value in (("--model", args.model), ("--plan", args.plan), ("--checkpoint", args.checkpoint),
                                      ("--masks-only", args.masks_only), ("--model-arg", args.model_args),
                                      ("--input-shape", args.input_shape), ("--image-size", args.image_size),
                                      ("--channels", args.channels), ("--data", args.data))
             if value]
    if given:
        raise ConfigError(f"--from-run exports the run's own final model; {', '.join(given)} cannot be combined with it",
                          hint="drop those flags, or drop --from-run to export MODEL with a plan")
    run = args.from_run
    name = f"final-{args.final}"
    sidecar = run / f"{name}.json"
    if not (run / "result.json").is_file():
        raise ConfigError(f"{run} is not a finished search run (no result.json)",
                          hint="pass the --out folder of a search that completed (resume it with "
                               f"sculpt-host search --resume {run})")
    if not sidecar.is_file():
        raise ConfigError(f"{run} has no {name}.json", hint=f"pick one of its final models with --final "
                          f"({', '.join(sorted(p.stem for p in run.glob('final-*.json')) ) or 'none saved'})")
    meta = read_sidecar(sidecar)
    program = run / meta["model"]["pytorch"]
    if not program.is_file():
        raise ConfigError(f"{program} is missing", hint="the run was made before final weights were saved, or "
                          "the file was removed: run the search again")
    module = load_model(str(program))
    pre = meta["preprocessing"]
    shape = tuple(pre["input"]["shape"]) if pre else None
    if shape is None:
        raise ConfigError(f"{sidecar} records no input shape", hint="run the search again")
    suffix = f"-int8.{args.format}" if args.quantize else f".{args.format}"
    out = args.out or run / f"{name}{suffix}"
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    splits, calibration = None, None
    if args.quantize:  # calibrated on the run's own training images
        data = meta["model"].get("data") or {}
        splits, example, calibration = _int8_inputs(args, shape, example, dataset=data.get("name", pre["dataset"]),
                                                    root=data.get("root"), seed=data.get("seed", 0),
                                                    limit=data.get("limit"))
    exporter = export_pte if args.format == "pte" else export_tflite
    kwargs = {"calibration": calibration} if args.quantize else {}
    with _status(f"exporting {run}/{name} to {out}", quiet=args.json), torch.no_grad():
        artifact = exporter(module, (example,), out, quantize=args.quantize, **kwargs)
    int8 = _int8_accuracy(args, module, artifact, splits, shape)
    accuracy = {**(meta.get("accuracy") or {}), **({"int8_eval": int8} if int8 else {})}
    written = write_sidecar(sidecar_path(artifact.path), artifacts=[artifact], preprocessing=pre, model=meta["model"],
                            accuracy=accuracy, notes=meta.get("notes") or [])
    result = {"artifact": artifact.to_dict(), "from_run": str(run), "final": name, "sidecar": str(written),
              "accuracy": meta.get("accuracy"), "int8_eval": int8, "notes": [], "schema_version": 1}
    return _print_result(args, artifact, result, [])


def _int8_inputs(args: argparse.Namespace, shape: tuple[int, ...], example, *, dataset: str | None = None,
                 root: str | None = None, seed: int = 0, limit: int | None = None):
    """(splits or None, example input, calibration batches) for an int8 export: the first training images of
    the dataset (``--data`` for a plain export, the run's for ``--from-run``), one random input without one."""
    from host.data import load_dataset
    from host.export.int8 import DEFAULT_CALIBRATION_IMAGES, calibration_from

    name = dataset or args.data
    if name is None:
        print("warning: --quantize without --data calibrates int8 on one random input: activation ranges will "
              "not match real images (pass --data, with --checkpoint, to calibrate on training images)",
              file=sys.stderr)
        return None, example, None
    splits = load_dataset(name, root=root if dataset else args.data_root, image_size=shape[2], channels=shape[1],
                          seed=seed, limit=limit)
    x, _ = splits.train.tensors()
    calibration = calibration_from(x, args.calibration_images or DEFAULT_CALIBRATION_IMAGES, batch=shape[0])
    return splits, calibration[0][0], calibration


def _int8_accuracy(args: argparse.Namespace, module, artifact, splits, shape: tuple[int, ...]) -> dict | None:
    """fp32 (the PyTorch module) and int8 (the artifact, in its runtime) accuracy on the validation split."""
    from host.export.evaluate import compare_accuracy

    if not args.quantize or splits is None or shape[0] != 1:
        return None
    x, y = splits.val.tensors()
    with _status(f"scoring int8 vs fp32 on {min(len(x), 1000)} validation images", quiet=args.json):
        return compare_accuracy(module, artifact.path, artifact.kind, x, y, split="val").to_dict()
