"""The typed result of a search run, as written to ``result.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from host.kinds import Precision

# 2: warnings, preprocessing, target_met, final-N pt2/state_dict/sidecar artifacts, side-by-side final figures
# 3: precision (of the run and of each model's figures), fp32_twins of an int8 search
SCHEMA_VERSION = 3


@dataclass(frozen=True)
class ModelFigures:
    """Accuracy, cost and measured figures of one model (dense, a candidate, or a final model)."""

    name: str
    val_accuracy: float
    macs: int
    params: int
    latency_ms: dict[str, float] = field(default_factory=dict)  # device name -> p50 ms
    energy_mj: dict[str, float] = field(default_factory=dict)  # device name -> mJ / inference (if metered)
    test_accuracy: float | None = None  # final report only; never used to choose anything
    choices: dict[str, str] = field(default_factory=dict)  # layer -> pattern choice
    artifacts: dict[str, str] = field(default_factory=dict)  # kind -> path
    reward: float | None = None
    target_met: bool | None = None  # final models: the objective's target met on every device (None: not judged)
    precision: str = Precision.FP32  # of the artifact these figures are of


@dataclass(frozen=True)
class InvalidCandidate:
    """A plan the run could not build (masking, realization or export failed), and why."""

    id: int
    phase: str  # "floor", "search" or "final"
    reason: str
    failed_layer: str | None = None  # the layer whose choice is responsible, when it could be told
    choice: str | None = None  # that layer's choice, e.g. "channel:prune50"


@dataclass(frozen=True)
class RunSummary:
    """Everything ``result.json`` and ``report.md`` say about a run."""

    model: str
    dataset: str
    objective: str
    target: str
    devices: dict[str, str]  # device name -> fingerprint
    budget: int
    candidates_evaluated: int
    measurements_taken: int  # benchmarks run on the devices by every process of the run (Measurer)
    seconds: float  # working time summed over every process of the run (original + resumes)
    dense: ModelFigures
    finals: tuple[ModelFigures, ...] = ()
    best_search: ModelFigures | None = None
    vocab: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    invalid: tuple[InvalidCandidate, ...] = ()  # every plan that could not be built, in journal order
    warnings: tuple[str, ...] = ()  # missed targets, final models slower than dense, ...
    preprocessing: dict[str, Any] | None = None  # host.data.preprocess.Preprocessing.to_dict() of the run's data
    precision: str = Precision.FP32  # of the search: int8 means dense, best_search and finals are int8 figures
    # int8 searches: the fp32 models the int8 ones came from (dense first, then each final), measured in the
    # same interleaved rounds; their speed-ups are against the fp32 dense
    fp32_twins: tuple[ModelFigures, ...] = ()
    # --device-pool: per pool, per board the benchmarks it ran and dense's median p50 there (the boards' spread),
    # and the boards that left the pool
    pools: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def speedup(self, figures: ModelFigures) -> dict[str, float]:
        """Dense p50 / model p50 per device (only devices measured for both)."""
        return {
            dev: self.dense.latency_ms[dev] / ms
            for dev, ms in figures.latency_ms.items()
            if dev in self.dense.latency_ms and ms > 0
        }
