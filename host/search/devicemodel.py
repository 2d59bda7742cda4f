"""A latency model of one device that persists across searches and carries across models.

The search's :class:`~host.search.costmodel.CostModel` is fitted per run on per-choice MAC shares of one
model: it knows nothing at the first candidate, and nothing it learns carries to the next model. This module
keeps, per device fingerprint and precision, every measured artifact's *operator features* next to its
measured latency, in the cache (``<cache>/devices/<fingerprint>/<precision>.jsonl``), and fits on them a
small model of latency that any model's realized plan can be fed to:

``ms = sum_j theta_j * f_j``, ``theta >= 0``, where the features ``f`` are read from the realized module's
ATen operators on the example input (:func:`operator_features`): GEMM work split by kind (k x k convolution,
1 x 1 convolution, depthwise convolution, matrix products), each counted with its output channels rounded
up to XNNPACK's register tile (12 of 16 channels cost what 16 do), the number of GEMM and of other
operators (each costs a fixed dispatch), the elements those other operators write (memory traffic), and a
constant. None of these depends on which model the operators came from.

The tile is the device's: XNNPACK's f32 GEMM microkernels compute 8 output channels at a time on Arm NEON
and 16 on x86 with AVX2 or AVX-512, and its int8 ones other widths again. The GEMM work is counted at each
width of :data:`TILES`, and the store keeps the width that predicts its own samples best when each (run,
model) group is left out in turn (:func:`choose_tile`); ``benchmarks/device_model_bench.py`` measures both
choices of this module on random plans of four zoo models.

Fit: non-negative least squares on two kinds of rows. Every sample's relative error (each row divided by
its latency) anchors the scale. Every sample's ratio to its group's dense model (the sample of the same run
and model with the most GEMM work, which a search measures first) is what a prediction uses: the error of
``model(sample) / model(dense)`` against the measured ratio, with a larger weight. On the absolute rows
alone, features that are constant within a model (the classifier's matrix product, the constant) absorbed
each model's scale, and plans of three models predicted a fourth's worse than the plans of one. Both are
regularized towards a three-feature model (constant, tiled MACs, operator count) fitted first on the relative
errors, so a kind of operator the device has not been seen running yet (depthwise convolutions, when only
ResNets were measured) costs what a MAC costs on average rather than nothing.

Use (``host.search.candidate``): a candidate's latency is predicted as the measured dense figure times
``model(candidate) / model(dense)`` of the *same* model, which cancels the device's drift between runs and
the model's error of scale; the prediction is kept with the measurement, so :meth:`DeviceLatencyModel.report`
says how well the model predicted what it had not seen. At a search's start the store warm-starts the
run's cost model (:func:`host.search.costmodel.CostModel.set_prior`) through a few realized plans.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from host.cache import cache_root

logger = logging.getLogger(__name__)

# XNNPACK's output-channel register tiles (GEMM microkernels' nr: 8 on Arm NEON, 16 on x86 AVX2/AVX-512 f32)
TILES = (8, 16)
# The GEMM work at tile 8 keeps the names it had before the 16-channel columns were added (stores and journals
# written then hold only the first 8 features)
FEATURES = ("constant", "conv_kxk_mmac", "conv_1x1_mmac", "conv_dw_mmac", "matmul_mmac", "gemm_ops", "other_ops",
            "other_melems", "conv_kxk_mmac_16", "conv_1x1_mmac_16", "conv_dw_mmac_16", "matmul_mmac_16")
LEGACY_FEATURES = 8
_GEMM = {8: (1, 2, 3, 4), 16: (8, 9, 10, 11)}  # per tile, the columns of its four GEMM kinds
# One tile's view of the features: constant, its four GEMM kinds, operators, elements (the fitted columns)
VIEWS = {tile: (0, *gemm, 5, 6, 7) for tile, gemm in _GEMM.items()}
RATIO_WEIGHT = 30.0  # weight of the ratio rows against the absolute rows (see the module docstring)
TILE_FOLDS = 6  # newest (run, model) groups left out in turn to choose the tile
TILE_SAMPLES = 400  # newest samples that choose the tile
BASE = ("constant", "mmac", "ops")  # the regularizing model: constant, all tiled MACs, all operators
MAX_SAMPLES = 4000  # newest kept per device and precision
MIN_SAMPLES = 6  # fewer samples: no model (the MAC-proportional prior stays)
RIDGE = 0.3  # pull of the full model towards the three-feature one (rows are relative errors, ~1 each)
# A device model is trusted to stand in for the device (an unmeasured candidate is credited its predicted
# latency, and a search measures only the plans predicted to win) when, of its newest TRUST_WINDOW samples,
# at least TRUST_SHARE were predicted within TRUST_ERROR without them (before they were measured, or left out
# of the fit for samples taken before the store had a model), and it has measured every kind of GEMM the
# model runs; one bad prediction in the window does not end it, two do
TRUST_WINDOW = 8
TRUST_SHARE = 0.85
TRUST_ERROR = 0.10
STORE_ENV = "AUTOSCULPT_DEVICE_MODELS"  # folder of the stores, default <cache>/devices

# operators that move no data on XNNPACK (views, shape bookkeeping) or disappear in export (BN is folded,
# dropout is identity in eval)
_FREE = {"view", "_unsafe_view", "reshape", "expand", "t", "transpose", "permute", "unsqueeze", "squeeze",
         "flatten", "alias", "detach", "clone", "contiguous", "slice", "select", "split", "split_with_sizes",
         "chunk", "unbind", "as_strided", "_to_copy", "to", "lift_fresh", "empty", "empty_like", "zeros",
         "ones", "full", "arange", "native_batch_norm", "_native_batch_norm_legit_no_training",
         "_native_batch_norm_legit", "batch_norm", "dropout", "native_dropout", "copy_", "size", "sym_size",
         "stride", "new_empty", "scalar_tensor", "lift", "_has_compatible_shallow_copy_type",
         # a zero pad: a realized off-centre kernel window's, which XNNPACK folds into the conv it feeds (fp32; the
         # int8 exporters turn it into a slice of the conv's output, free too)
         "constant_pad_nd"}
_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"}


def _tiled(channels: int, tile: int) -> int:
    return int(math.ceil(channels / tile) * tile)


def _column(kind: str, tile: int) -> str:
    """The name of GEMM ``kind``'s feature (e.g. "conv_kxk_mmac") counted at ``tile``."""
    return kind if tile == TILES[0] else f"{kind}_{tile}"


class _OperatorCounter(TorchDispatchMode):
    """Accumulates :data:`FEATURES` over the ATen operators a forward dispatches."""

    def __init__(self) -> None:
        super().__init__()
        self.totals = dict.fromkeys(FEATURES, 0.0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in _FREE:
            return out
        try:
            self._count(name, args, out)
        except Exception:  # noqa: BLE001 - an operator we cannot read costs a dispatch, nothing else
            self.totals["other_ops"] += 1
        return out

    def _count(self, name: str, args, out) -> None:
        t = self.totals
        if name == "convolution":
            x, w = args[0], args[1]
            groups = int(args[8]) if len(args) > 8 else 1
            out_c, in_per_group = int(w.shape[0]), int(w.shape[1])
            kernel = int(np.prod(w.shape[2:])) if w.dim() > 2 else 1
            spatial = int(np.prod(out.shape[2:])) if out.dim() > 2 else 1
            batch = int(x.shape[0])
            for tile in TILES:
                if groups > 1 and in_per_group == 1:  # depthwise: one filter per channel, tiled over channels
                    t[_column("conv_dw_mmac", tile)] += batch * spatial * kernel * _tiled(out_c, tile) / 1e6
                else:
                    per_group = _tiled(out_c // groups, tile) * groups
                    kind = "conv_1x1_mmac" if kernel == 1 else "conv_kxk_mmac"
                    t[_column(kind, tile)] += batch * spatial * kernel * in_per_group * per_group / 1e6
            t["gemm_ops"] += 1
        elif name in _MATMUL:
            a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
            k, n = int(a.shape[-1]), int(b.shape[-1])
            rows = int(np.prod(out.shape[:-1]))
            for tile in TILES:
                t[_column("matmul_mmac", tile)] += rows * k * _tiled(n, tile) / 1e6
            t["gemm_ops"] += 1
        elif name in ("_scaled_dot_product_flash_attention_for_cpu", "scaled_dot_product_attention",
                      "_scaled_dot_product_attention_math"):
            q, k = args[0], args[1]
            rows = int(np.prod(q.shape[:-1]))
            for tile in TILES:  # rows x keys x head dim, twice: nothing rounds to a tile in the model we count
                t[_column("matmul_mmac", tile)] += 2 * rows * int(k.shape[-2]) * int(q.shape[-1]) / 1e6
            t["gemm_ops"] += 2
            t["other_ops"] += 1  # the softmax
        else:
            t["other_ops"] += 1
            first = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(first, torch.Tensor):
                t["other_melems"] += first.numel() / 1e6


def operator_features(module: nn.Module, example_input: torch.Tensor) -> tuple[float, ...]:
    """:data:`FEATURES` of ``module`` run once in eval mode on ``example_input`` (the realized, exported form:
    BatchNorm and dropout count nothing, they are folded or gone on the device)."""
    counter = _OperatorCounter()
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), counter:
            module(example_input)
    finally:
        module.train(was_training)
    counter.totals["constant"] = 1.0
    return tuple(float(counter.totals[f]) for f in FEATURES)


def features_or_none(module: nn.Module, example_input: torch.Tensor) -> tuple[float, ...] | None:
    """:func:`operator_features`, or None (logged) when the module's operators cannot be read: a candidate
    without features is measured as any other, it only teaches the device model nothing."""
    try:
        return operator_features(module, example_input)
    except Exception as exc:  # noqa: BLE001 - a forward that ran once already; this is bookkeeping only
        logger.debug("operator features not read: %s: %s", type(exc).__name__, exc)
        return None


def padded(features: Sequence[float]) -> np.ndarray:
    """``features`` as a full :data:`FEATURES` row: a row written before the 16-channel columns existed (a store
    line or a journal of an earlier version) has NaN there, and only the tile-8 view can use it."""
    row = np.full(len(FEATURES), np.nan)
    row[:len(features)] = np.asarray(features, np.float64)[:len(FEATURES)]
    return row


def _known(sample: Sample, tile: int) -> bool:
    return not np.isnan(padded(sample.features)[list(VIEWS[tile])]).any()


def _base_rows(x: np.ndarray) -> np.ndarray:
    """The three :data:`BASE` features of rows of one tile's view (see :data:`VIEWS`)."""
    return np.stack([x[:, 0], x[:, 1:5].sum(axis=1), x[:, 5] + x[:, 6]], axis=1)


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    return nnls(a, b, maxiter=50 * a.shape[1])[0]


def _references(samples: Sequence[Sample]) -> list[int | None]:
    """Per sample, the index of its group's dense reference (None for the reference itself, and in a group
    with nothing else). A group is one (run, model); its reference is the sample with the most GEMM work
    (a plan never adds any), the first one measured when a search measured dense more than once."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, sample in enumerate(samples):
        groups.setdefault((sample.run, sample.model), []).append(i)
    references: list[int | None] = [None] * len(samples)
    for members in groups.values():
        work = [float(np.nansum(padded(samples[i].features)[1:5])) for i in members]
        top = max(work)
        reference = next(i for i, w in zip(members, work, strict=True) if w >= top * (1 - 1e-9))
        for i, w in zip(members, work, strict=True):
            if w < top * (1 - 1e-9):
                references[i] = reference
    return references


def fit_theta(samples: Sequence[Sample], tile: int, ratio_weight: float | None = None) -> np.ndarray:
    """theta (over ``tile``'s view) of :meth:`DeviceLatencyModel.fit` on ``samples`` (each known at ``tile``);
    ``ratio_weight`` (default :data:`RATIO_WEIGHT`) weighs the ratio rows, 0 leaves them out."""
    weight = RATIO_WEIGHT if ratio_weight is None else ratio_weight
    view = list(VIEWS[tile])
    x = np.array([padded(s.features)[view] for s in samples], np.float64)
    y = np.array([s.ms for s in samples], np.float64)
    relative = x / y[:, None]  # rows as relative errors
    ratios = [weight * (relative[i] - relative[ref]) for i, ref in enumerate(_references(samples))
              if ref is not None and weight > 0]
    a = np.vstack([relative, *ratios]) if ratios else relative
    b = np.concatenate([np.ones(len(relative)), np.zeros(len(ratios))])
    base = _nnls(_base_rows(relative), np.ones(len(relative)))  # the scale of each kind of work, from every sample
    # the base model spread onto the full features: every MAC kind at the mean MAC cost, every op alike
    prior = np.array([base[0], base[1], base[1], base[1], base[1], base[2], base[2], 0.0])
    scale = np.maximum(np.abs(relative).mean(axis=0), 1e-12)  # ridge in each feature's own units
    return _nnls(np.vstack([a, np.diag(RIDGE * scale)]), np.concatenate([b, RIDGE * scale * prior]))


def _predicted_ms(theta: np.ndarray, tile: int, sample: Sample, reference: Sample | None) -> float:
    """``sample``'s latency as a search predicts it: its ratio to ``reference`` (its run's dense model) under
    ``theta`` times the reference's measured figure; without a reference, ``theta``'s own figure."""
    view = list(VIEWS[tile])
    predicted = max(1e-6, float(padded(sample.features)[view] @ theta))
    if reference is not None:
        dense = float(padded(reference.features)[view] @ theta)
        if dense > 0:
            predicted = predicted / dense * reference.ms
    return predicted


def _ratio_errors(train: Sequence[Sample], held: Sequence[Sample], tile: int) -> list[float]:
    """|error| / measured of each ``held`` sample that has a reference in ``held``, predicted by the model fitted
    on ``train`` (:func:`_predicted_ms`)."""
    theta = fit_theta(train, tile)
    return [abs(_predicted_ms(theta, tile, sample, held[ref]) - sample.ms) / sample.ms
            for sample, ref in zip(held, _references(held), strict=True) if ref is not None]


def choose_tile(samples: Sequence[Sample]) -> int:
    """The :data:`TILES` width whose features predict ``samples`` best (the share of predictions off by more
    than :data:`TRUST_ERROR`, then the median error): each of the newest :data:`TILE_FOLDS` (run, model)
    groups is predicted from the others, or, with one group, every fourth sample from the rest. Only the
    samples known at every width take part; with fewer than :data:`MIN_SAMPLES` of them, the first tile."""
    common = [s for s in samples[-TILE_SAMPLES:] if all(_known(s, t) for t in TILES)]
    if len(common) < MIN_SAMPLES:
        return TILES[0]
    keys = list(dict.fromkeys((s.run, s.model) for s in reversed(common)))[:TILE_FOLDS]
    if len(keys) > 1:
        folds = [([s for s in common if (s.run, s.model) != key], [s for s in common if (s.run, s.model) == key])
                 for key in keys]
    else:
        folds = [([s for i, s in enumerate(common) if i % 4 != k], common) for k in range(4)]
    scores = {}
    for tile in TILES:
        errors = []
        for train, held in folds:
            if len(train) >= MIN_SAMPLES:
                errors += _ratio_errors(train, held, tile)
        errors = errors or [math.inf]
        scores[tile] = (float(np.mean(np.array(errors) > TRUST_ERROR)), float(np.median(errors)))
    return min(TILES, key=lambda t: (scores[t], t))


@dataclass(frozen=True)
class Sample:
    """One measured artifact: its operator features, measured figure (ms), and what the store predicted for
    it before it was measured (None: no model then)."""

    features: tuple[float, ...]
    ms: float
    model: str
    predicted_ms: float | None = None
    run: str = ""
    created: float = 0.0

    def to_json(self) -> dict:
        return {"features": list(self.features), "ms": self.ms, "model": self.model,
                "predicted_ms": self.predicted_ms, "run": self.run, "created": self.created}

    @classmethod
    def from_json(cls, data: dict) -> Sample:
        features = tuple(float(v) for v in data["features"])
        if len(features) not in (LEGACY_FEATURES, len(FEATURES)):
            raise ValueError(f"expected {len(FEATURES)} features, got {len(features)}")
        ms = float(data["ms"])
        if not ms > 0:
            raise ValueError(f"latency must be positive, got {ms}")
        predicted = data.get("predicted_ms")
        return cls(features, ms, str(data.get("model", "")), None if predicted is None else float(predicted),
                   str(data.get("run", "")), float(data.get("created", 0.0)))


def store_dir() -> Path:
    """Where the per-device stores live: ``$AUTOSCULPT_DEVICE_MODELS``, default ``<cache>/devices``."""
    return Path(os.environ.get(STORE_ENV) or cache_root() / "devices")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:120] or "unknown"


class DeviceLatencyModel:
    """The samples of one device fingerprint and precision (from every search that measured on it) and the
    model fitted on them. :meth:`add` appends to the store file under a lock, so concurrent searches on one
    machine share it; a malformed line (a crash mid-write, a foreign edit) is skipped with a warning."""

    def __init__(self, fingerprint: str, precision: str, root: Path | None = None) -> None:
        self.fingerprint = fingerprint
        self.precision = precision
        root = root or store_dir()
        self.path = root / _safe(fingerprint) / f"{_safe(precision)}.jsonl"
        self.samples: list[Sample] = []
        self.theta: np.ndarray | None = None  # over VIEWS[self.tile]
        self.tile = TILES[0]
        self._judged: dict[tuple, float] = {}  # leave-one-out errors of samples measured without a model
        self._load()
        self.fit()

    # -- store ---------------------------------------------------------------------------------------
    def _load(self) -> None:
        if not self.path.is_file():
            return
        bad = 0
        try:
            lines = self.path.read_text().splitlines()
        except OSError as exc:
            logger.warning("device latency model %s not read (%s); starting without it", self.path, exc)
            return
        for line in lines[-MAX_SAMPLES:]:
            if not line.strip():
                continue
            try:
                self.samples.append(Sample.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                bad += 1
        if bad:
            logger.warning("device latency model %s: %d malformed line(s) skipped", self.path, bad)

    def add(self, sample: Sample) -> None:
        """Keep ``sample`` (in memory and in the store) and refit."""
        self.samples.append(sample)
        self.samples = self.samples[-MAX_SAMPLES:]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    handle.write(json.dumps(sample.to_json()) + "\n")
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        except OSError as exc:
            logger.warning("device latency model %s not updated (%s)", self.path, exc)
        self.fit()

    # -- model ---------------------------------------------------------------------------------------
    def fit(self) -> None:
        """Choose the tile (:func:`choose_tile`), then NNLS on the absolute and ratio rows of every sample known at
        it, towards the three-feature model (see the module docstring)."""
        self.tile = choose_tile(self.samples)
        usable = [s for s in self.samples if _known(s, self.tile)]
        self.theta = fit_theta(usable, self.tile) if len(usable) >= MIN_SAMPLES else None

    def judged_error(self, index: int) -> float:
        """|error| / measured of sample ``index`` as predicted without it: what the store predicted before it
        was measured, or, for a sample measured before the store had a model (the search that filled it), the
        prediction of the model fitted on every other such sample (leave one out; samples that were predicted
        stay out, so a later outlier does not change how the earlier ones are judged), as a search predicts:
        its ratio to its (run, model)'s dense reference times the reference's figure (the reference itself:
        its own figure)."""
        sample = self.samples[index]
        if sample.predicted_ms is not None:
            return abs(sample.predicted_ms - sample.ms) / sample.ms
        key = (sample.created, sample.ms, sample.features, self.tile)
        if key not in self._judged:
            if not _known(sample, self.tile):
                return math.inf
            others = [s for j, s in enumerate(self.samples)
                      if j != index and s.predicted_ms is None and _known(s, self.tile)]
            if len(others) < len(BASE):
                return math.inf
            ref = _references(self.samples)[index]
            reference = self.samples[ref] if ref is not None and _known(self.samples[ref], self.tile) else None
            predicted = _predicted_ms(fit_theta(others, self.tile), self.tile, sample, reference)
            self._judged[key] = abs(predicted - sample.ms) / sample.ms
        return self._judged[key]

    @property
    def ready(self) -> bool:
        return self.theta is not None

    def predict_ms(self, features: Sequence[float]) -> float | None:
        """Predicted latency (ms) of an artifact with ``features``; None without a model, or when ``features``
        were counted before the chosen tile's columns existed."""
        if self.theta is None:
            return None
        row = padded(features)[list(VIEWS[self.tile])]
        if np.isnan(row).any():
            return None
        return max(1e-6, float(row @ self.theta))

    def predict_ratio(self, features: Sequence[float], dense: Sequence[float]) -> float | None:
        """Predicted latency of ``features`` relative to its dense model's ``dense`` features."""
        num, den = self.predict_ms(features), self.predict_ms(dense)
        return None if num is None or den is None or den <= 0 else num / den

    def models(self) -> set[str]:
        return {s.model for s in self.samples}

    def distrust(self, features: Sequence[float] | None) -> str:
        """Why this model may not stand in for the device on a model with operator ``features`` (its dense
        model's), or "" when it may (see :data:`TRUST_WINDOW`)."""
        if len(self.samples) < MIN_SAMPLES + 2:
            return f"{len(self.samples)} measurement(s) on this device, trust needs {MIN_SAMPLES + 2}"
        recent = range(max(0, len(self.samples) - TRUST_WINDOW), len(self.samples))
        within = sum(self.judged_error(i) <= TRUST_ERROR for i in recent)
        if within < TRUST_SHARE * len(recent):
            return (f"{within} of its last {len(recent)} predictions were within +-{TRUST_ERROR:.0%} of the measured "
                    f"latency; trust needs {math.ceil(TRUST_SHARE * len(recent))}")
        if features is not None:
            unseen = [FEATURES[k] for k in range(1, 5) if features[k] > 0
                      and not any(sample.features[k] > 0 for sample in self.samples)]
            if unseen:
                return f"it has never measured {', '.join(unseen)} work on this device"
        return ""

    @staticmethod
    def report(samples: Iterable[Sample]) -> dict[str, float | int] | None:
        """How well the store predicted ``samples`` before they were measured: their count, the share within
        +-10% and the median absolute relative error; None when none had a prediction."""
        errors = [abs(s.predicted_ms - s.ms) / s.ms for s in samples if s.predicted_ms is not None]
        if not errors:
            return None
        return {"predicted": len(errors), "within_10pct": float(np.mean([e <= 0.10 for e in errors])),
                "median_error": float(np.median(errors))}


def summary_line(stats: dict | None) -> str:
    if not stats:
        return "no candidate was predicted (the store had no model for this device yet)"
    return (f"{stats['predicted']} measured candidates predicted before measurement: "
            f"{100 * stats['within_10pct']:.0f}% within +-10%, median error {100 * stats['median_error']:.1f}%")


class LatencyLearner:
    """A search's side of the device latency models: one :class:`DeviceLatencyModel` per measured device
    (latency objective only), the dense model's features, and this run's predictions.

    :meth:`learn` is given every measured candidate; before its sample joins the store, the store's model
    predicts it (``dense figure x model(candidate) / model(dense)``, the dense figure being the one known
    before the candidate was measured), and the pair is kept for :meth:`report`."""

    def __init__(self, devices: Iterable[tuple[str, str]], precision: str, model_key: str,
                 dense_features: tuple[float, ...] | None, run: str = "") -> None:
        self.models = {name: DeviceLatencyModel(fingerprint, precision) for name, fingerprint in devices}
        self.model_key = model_key
        self.dense_features = dense_features
        self.run = run
        self.predicted: list[Sample] = []  # this run's search candidates, predicted before they were measured

    @property
    def ready(self) -> bool:
        """Every device has a fitted model (a warm start needs them all: the reward takes the worst device)."""
        return bool(self.models) and all(m.ready for m in self.models.values())

    def distrust(self) -> str:
        """Why the models may not stand in for the devices on this run's model, or "" when they may (every
        device's model, :meth:`DeviceLatencyModel.distrust`). Asked anew each time: every measured candidate
        is predicted before it joins the store, so a model that goes wrong on this model loses the trust."""
        if not self.models or self.dense_features is None:
            return "no latency model for these devices"
        for name, model in self.models.items():
            why = model.distrust(self.dense_features)
            if why:
                return f"{name}: {why}"
        return ""

    def predict_ratios(self, features: Sequence[float] | None) -> dict[str, float] | None:
        """Per-device predicted cost of ``features`` relative to dense; None without a model for every device."""
        if features is None or self.dense_features is None or not self.ready:
            return None
        ratios = {name: m.predict_ratio(features, self.dense_features) for name, m in self.models.items()}
        return None if any(r is None for r in ratios.values()) else ratios  # type: ignore[return-value]

    def predict_ratio(self, features: Sequence[float] | None) -> float | None:
        """Worst-device predicted cost of ``features`` relative to dense; None without a model."""
        if features is None or self.dense_features is None or not self.ready:
            return None
        ratios = [m.predict_ratio(features, self.dense_features) for m in self.models.values()]
        return None if any(r is None for r in ratios) else max(ratios)  # type: ignore[type-var]

    def learn(self, features: Sequence[float] | None, figures: dict[str, float],
              dense_figures: dict[str, float] | None, search: bool) -> None:
        """Add one measured artifact (``figures``: ms per device; ``dense_figures``: the dense reference known
        before it was measured, None for the dense model itself); ``search``: keep its prediction for
        :meth:`report`."""
        if features is None:
            return
        for name, model in self.models.items():
            ms = figures.get(name)
            if ms is None or not ms > 0:
                continue
            predicted = None
            if dense_figures and self.dense_features is not None and name in dense_figures:
                ratio = model.predict_ratio(features, self.dense_features)
                predicted = None if ratio is None else ratio * dense_figures[name]
            sample = Sample(tuple(features), float(ms), self.model_key, predicted, self.run, time.time())
            model.add(sample)
            if search and predicted is not None:
                self.predicted.append(sample)

    def report(self) -> dict | None:
        """:meth:`DeviceLatencyModel.report` of this run's search candidates, with the store's size."""
        stats = DeviceLatencyModel.report(self.predicted)
        if stats is None:
            return None
        samples = sum(len(m.samples) for m in self.models.values())
        models = sorted(set().union(*(m.models() for m in self.models.values())))
        return {**stats, "store_samples": samples, "store_models": models}
