"""ExecuTorch export: torch.export -> to_edge_transform_and_lower(XnnpackPartitioner) -> .pte.

Optional int8: post-training quantization with the XNNPACK quantizer (PT2E, symmetric, per-channel
weights; see :mod:`host.export.int8`), calibrated on ``calibration`` batches (or the example inputs). Every
artifact is loaded with the real ``executorch.runtime`` and compared with the reference outputs; a mismatch
raises ExportError and leaves no file behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from host.cache import cache_root
from host.errors import ExportError, MissingDependencyError
from host.export.artifact import Artifact, file_digest
from host.export.fold import prepare_for_lowering, symmetric_padded_convs
from host.quiet import muted

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-3  # relative to the output's scale: XNNPACK reorders float sums
INT8_TOLERANCE = 0.05  # int8 kernels round differently from the PyTorch reference of the quantized graph
EXPORTER_REVISION = 2  # part of the cache key: bump when a change here changes the lowered program
CACHE_MAX_ENTRIES = 256
CACHE_MAX_BYTES = 1 << 30


def _tolerance(reference: torch.Tensor, rel: float) -> float:
    return rel * max(1.0, float(reference.abs().max()))


def export_cache_dir() -> Path | None:
    """Where lowered programs are kept for reuse: ``$AUTOSCULPT_CACHE_DIR/pte`` (default
    ``~/.cache/autosculpt/pte``); None when ``AUTOSCULPT_EXPORT_CACHE=0``."""
    if os.environ.get("AUTOSCULPT_EXPORT_CACHE", "1").strip().lower() in ("0", "no", "off", "false"):
        return None
    return cache_root() / "pte"


def program_key(program: torch.export.ExportedProgram, quantize: bool) -> str:
    """A digest of everything the lowered program depends on: the exported graph's code and signature, the
    input shapes and dtypes (static shapes are baked into the .pte), every parameter, buffer and constant, the
    precision, and the ExecuTorch version and this exporter's revision. ``torch.export.save`` bytes are not
    stable across two exports of one model, so they are not used."""
    import executorch

    digest = hashlib.sha256(f"{EXPORTER_REVISION}|{getattr(executorch, '__version__', '?')}|{quantize}".encode())
    digest.update(program.graph_module.code.encode())
    digest.update(str(program.graph_signature).encode())
    for node in program.graph.nodes:
        if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.Tensor):
            digest.update(f"{node.name}:{tuple(node.meta['val'].shape)}:{node.meta['val'].dtype}".encode())
    for name, value in sorted({**program.state_dict, **program.constants}.items()):
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            value = value.detach().contiguous().cpu()
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def _cached(cache: Path | None, key: str, path: Path) -> bool:
    """Copy the cached lowering of ``key`` to ``path``; False when there is none (or it cannot be read)."""
    if cache is None:
        return False
    entry = cache / f"{key}.pte"
    try:
        shutil.copyfile(entry, path)
        os.utime(entry)  # recently used: trimmed last
        return True
    except OSError:
        return False


def _store(cache: Path | None, key: str, buffer: bytes) -> None:
    """Keep a lowered program for reuse (atomically), then trim the cache to its size budget, oldest first.
    A cache that cannot be written only costs the reuse."""
    if cache is None:
        return
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{key}.{os.getpid()}.tmp"
        tmp.write_bytes(buffer)
        os.replace(tmp, cache / f"{key}.pte")
        entries = sorted(cache.glob("*.pte"), key=lambda e: e.stat().st_mtime, reverse=True)
        total = 0
        for i, entry in enumerate(entries):
            total += entry.stat().st_size
            if i >= CACHE_MAX_ENTRIES or total > CACHE_MAX_BYTES:
                entry.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not keep the lowered program in %s: %s", cache, exc)


def export_pte(module: nn.Module, example_inputs: Sequence[torch.Tensor], path: str | Path, *,
               quantize: bool = False, calibration: Sequence[Sequence[torch.Tensor]] | None = None,
               cache: bool = True) -> Artifact:
    """Export ``module`` to an XNNPACK-delegated ``.pte`` at ``path`` and verify it with the runtime.

    Lowering (most of the time) is skipped when :func:`export_cache_dir` holds a program with the same
    :func:`program_key`; the copy is verified against eager like a fresh one, and re-lowered if it fails.
    ``cache=False`` always lowers."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise MissingDependencyError("executorch", "executorch", "export to .pte") from exc
    path = Path(path)
    inputs = tuple(example_inputs)
    # A top-level nn.Sequential names parameters "0.weight"; ExecuTorch's BN decomposition then fails on the
    # digit-leading placeholder names, so every module is exported under a named attribute.
    module = _Named(module.eval()).eval()
    timings: list[tuple[str, float]] = []
    start = time.perf_counter()
    try:
        with torch.no_grad():
            reference = module(*inputs)
            program = torch.export.export(module, inputs)
            # XNNPACK's own BN fusion fails on parameter paths that are not identifiers, and (fp32) an activation after
            # a concatenation of sub-convs would run on its own (see host.export.fold)
            program, _, _ = prepare_for_lowering(program, inputs, activations=not quantize)
            timings.append(("torch.export", time.perf_counter() - start))
            if quantize:
                start = time.perf_counter()
                program, reference = _quantize(program, inputs, calibration)
                timings.append(("quantize", time.perf_counter() - start))
            store = export_cache_dir() if cache else None
            key = program_key(program, quantize) if store is not None else ""
            path.parent.mkdir(parents=True, exist_ok=True)
            if _cached(store, key, path):
                start = time.perf_counter()
                try:
                    outputs = run_pte(path, inputs)
                    err = _compare(reference, outputs, INT8_TOLERANCE if quantize else FP32_TOLERANCE, path)
                except Exception as exc:  # noqa: BLE001 - a bad cache entry is dropped and the program lowered
                    log.warning("cached lowering %s failed verification (%s); lowering again", key[:12], exc)
                    (store / f"{key}.pte").unlink(missing_ok=True)
                else:
                    timings.append(("cached lowering, verify", time.perf_counter() - start))
                    return _artifact(path, inputs, err, quantize, timings)
            start = time.perf_counter()
            edge = to_edge_transform_and_lower(program, transform_passes=[drop_aliases],
                                               partitioner=[XnnpackPartitioner()])
            timings.append(("lower", time.perf_counter() - start))
            start = time.perf_counter()
            buffer = edge.to_executorch().buffer
            timings.append(("to_executorch", time.perf_counter() - start))
    except Exception as exc:  # export failures surface as many torch/ExecuTorch exception types
        raise ExportError(f"exporting to .pte failed: {type(exc).__name__}: {exc}",
                          hint="the module must be torch.export-able with static shapes; run it once on the "
                               "example input to check") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer)
    start = time.perf_counter()
    try:
        outputs = run_pte(path, inputs)
    except Exception as exc:  # the runtime's delegate compiles the program only when it loads
        path.unlink(missing_ok=True)  # an artifact that cannot load is not left behind
        raise ExportError(
            f"the lowered program does not load in the ExecuTorch runtime: {type(exc).__name__}: {exc}",
            hint=("export fp32 (without --quantize) and report the error with the plan file" if quantize else
                  "export with --masks-only to check the plan, and report the error with the plan file"),
        ) from exc
    timings.append(("verify", time.perf_counter() - start))
    try:
        err = _compare(reference, outputs, INT8_TOLERANCE if quantize else FP32_TOLERANCE, path)
    except ExportError:
        path.unlink(missing_ok=True)  # an artifact that disagrees with its reference is not left behind
        raise
    _store(store, key, buffer)  # verified programs only
    return _artifact(path, inputs, err, quantize, timings)


def _artifact(path: Path, inputs, err: float, quantize: bool, timings) -> Artifact:
    sha, size = file_digest(path)
    log.info("exported %s (%d bytes, max |err| %.2e) in %.2fs", path, size, err, sum(t for _, t in timings))
    return Artifact(path, "pte", sha, size, err, tuple(tuple(t.shape) for t in inputs), quantize, tuple(timings))


def drop_aliases(graph_module: torch.fx.GraphModule):
    """Edge pass: route the users of ``alias_copy(x)`` to ``x``.

    ``torch.export`` turns a slice that keeps a whole dimension (timm's GhostNet ends every ghost module with
    ``out[:, :self.out_chs]``; a realized model can keep every channel of a slice) into ``aten.alias``, and
    XNNPACK delegates no alias: each one cut the graph into one more delegate call and ran as a portable copy
    (GhostNet-0.5: 49 delegate calls and 64 copies, lowering 2x slower). An inference graph is functional, so
    the alias's users can read ``x`` itself. Aliases that feed the graph's output stay (the output must not
    be an input or another output's buffer).
    """
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import PassResult

    targets = {exir_ops.edge.aten.alias_copy.default, torch.ops.aten.alias_copy.default, torch.ops.aten.alias.default}
    return PassResult(graph_module, _route_aliases(graph_module, targets))


def _route_aliases(graph_module: torch.fx.GraphModule, targets: set) -> bool:
    """Route the users of every ``targets`` node (an alias) that does not feed the output to its input;
    True when the graph changed."""
    changed = False
    for node in list(graph_module.graph.nodes):
        if node.op == "call_function" and node.target in targets and all(u.op != "output" for u in node.users):
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
            changed = True
    if changed:
        graph_module.graph.lint()
        graph_module.recompile()
    return changed


class _Named(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.model = module

    def forward(self, *args):
        return self.model(*args)


def _quantize(program, inputs, calibration):
    # the out variants of quantize/dequantize, for the few that stay outside the XNNPACK delegate (e.g. the
    # zero channels a layer keeps when its channels cannot be removed); the runtime has their kernels
    import executorch.kernels.quantized  # noqa: F401

    from host.export.int8 import calibrate, xnnpack_quantizer

    # off-centre kernel windows in their symmetric-padding form (see host.export.fold.symmetric_padded_convs)
    graph_module = symmetric_padded_convs(program.module(), inputs)
    # the aliases drop_aliases removes after lowering must go before quantizing: between timm GhostNet's concat
    # and its squeeze-excitation mean, an alias (its ``out[:, :out_chs]``) made XNNPACK's int8 mean reduce
    # the wrong axes at run time ("Attempted to resize a static tensor. Expected shape (1, 60, 1, 1), but
    # received (1, 8, 1, 1)"): the dense int8 GhostNet-0.5 did not load
    _route_aliases(graph_module, {torch.ops.aten.alias.default})
    converted = calibrate(graph_module, xnnpack_quantizer(), inputs, calibration)
    reference = converted(*inputs)
    return torch.export.export(converted, inputs), reference


def run_pte(path: str | Path, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Run the ``forward`` method of a .pte with the real ExecuTorch runtime."""
    from executorch.runtime import Runtime

    # The runtime's C++ log (a cpuinfo probe on a process's first load) reaches sys.stderr through the
    # bindings, past any logging setting; muted() shows it only if loading or running fails, or at -v.
    with muted():
        runtime = Runtime.get()
        program = runtime.load_program(Path(path))
        method = program.load_method("forward")
        return [torch.as_tensor(out) for out in method.execute(list(inputs))]


def _compare(reference, outputs: list[torch.Tensor], rel: float, path: Path) -> float:
    refs = list(reference) if isinstance(reference, list | tuple) else [reference]
    if len(refs) != len(outputs):
        raise ExportError(f"{path} returned {len(outputs)} outputs, eager returned {len(refs)}",
                          hint="export a module with a single tensor (or tuple of tensors) output")
    worst = 0.0
    for ref, out in zip(refs, outputs, strict=True):
        if tuple(ref.shape) != tuple(out.shape):
            raise ExportError(f"{path} output shape {tuple(out.shape)} differs from eager {tuple(ref.shape)}")
        err = float((ref.float() - out.float()).abs().max()) if ref.numel() else 0.0
        if not err <= _tolerance(ref, rel):
            raise ExportError(f"{path} disagrees with eager PyTorch: max |err| {err:.3g} > "
                              f"{_tolerance(ref, rel):.3g}",
                              hint="report this model; try without --quantize or another runtime version")
        worst = max(worst, err)
    return worst
