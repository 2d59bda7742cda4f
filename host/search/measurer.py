"""Measuring a search's artifacts: on every device of the run, through the journal's measurement cache, each
candidate paired with the dense model measured right after it on the same device.

The :class:`Measurer` knows artifacts, devices and the objective's figure (ms or mJ); it knows nothing of
plans, accuracy or rewards, which stay with :class:`host.search.candidate.CandidateEvaluator`. It is the
part of candidate evaluation that runs where the devices are.

Why pairs: a search runs for minutes to hours on a board whose speed drifts (thermal throttling, other load),
and one dense figure taken at the start made every later ratio carry its error (RepVGG's dense first measured
at 2.51 ms on a busy host, 1.5 ms side by side, so a 0.76x plan was credited 0.43x). A measured candidate is
compared with the dense figure taken right after it (:meth:`Measurer.reference`); :meth:`Measurer.dense_figures`,
the median of every dense figure taken, is the reference of what was not paired.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from host.devices.retry import classify
from host.kinds import ObjectiveName
from host.search.devices import SearchDevice, measure
from host.search.measurement import Measurements, MeasurementSummary

if TYPE_CHECKING:
    from host.devices.results import BenchSpec
    from host.export import Artifact
    from host.search.journal import Journal


logger = logging.getLogger(__name__)
T = TypeVar("T")
BENCHMARKS_KEY = "device_benchmarks"  # journal value: benchmarks run on the devices (Measurer.measurements_taken)


class Measurer:
    """Measures artifacts on ``devices`` with ``bench`` (cache: ``journal``); ``dense_artifact()`` exports the
    dense model once, on the first pairing (an object with ``path`` and ``sha256``)."""

    def __init__(self, devices: Sequence[SearchDevice], bench: BenchSpec, journal: Journal,
                 objective: ObjectiveName, dense_artifact: Callable[[], Artifact]) -> None:
        self.devices = list(devices)
        self.bench = bench
        self.journal = journal
        self.objective = ObjectiveName(objective)
        # benchmarks run on a device by this run, every process of it (cache hits not counted; dense pairs and
        # side-by-side rounds counted), kept in the journal by persist_count()
        self.measurements_taken = int(journal.get_value(BENCHMARKS_KEY, 0) or 0) if journal is not None else 0
        self._make_dense_artifact = dense_artifact
        self._dense_artifact: Artifact | None = None
        self._dense_samples: dict[str, list[float]] = {}  # every dense figure taken, per device
        self._count_lock = threading.Lock()  # measure_with_dense runs in several threads on a pool

    # -- measuring -----------------------------------------------------------------------------------
    def measure(self, path: Path, sha256: str, bench: BenchSpec | None = None,
                use_cache: bool = True) -> dict[str, MeasurementSummary]:
        """{device name: summary} for an exported artifact, from the cache where possible (``use_cache``
        False: measured afresh, and not stored)."""
        bench = self.bench if bench is None else bench
        result: dict[str, MeasurementSummary] = {}
        for device in self.devices:
            cached = self.journal.cached_measurement(sha256, device.fingerprint) if use_cache else None
            if cached is None:
                cached = measure(device, path, bench)
                with self._count_lock:
                    self.measurements_taken += 1
                self.persist_count()
                if use_cache:
                    self.journal.store_measurement(sha256, device.fingerprint, cached)
            result[device.name] = cached
        return result

    def persist_count(self) -> None:
        """Keep :attr:`measurements_taken` in the journal (this thread must own it: not from a pool's threads)."""
        if self.journal is not None:
            self.journal.set_value(BENCHMARKS_KEY, self.measurements_taken)

    def pair_with_dense(self, measurement: Measurements) -> dict[str, MeasurementSummary]:
        """``measurement`` with the dense model measured right after it on every device (cache bypassed)."""
        artifact = self.dense_artifact()
        dense = self.figures(self.measure(artifact.path, artifact.sha256, use_cache=False))
        return self.paired_with(measurement, dense)

    def paired_with(self, measurement: Measurements, dense: dict[str, float]) -> dict[str, MeasurementSummary]:
        """``measurement`` paired with the dense ``figures`` taken right after it (they join the dense samples)."""
        self.add_dense_samples(dense)
        return {dev: summary.paired(self.objective, dense[dev]) if dev in dense else summary
                for dev, summary in measurement.items()}

    @contextlib.contextmanager
    def same_boards(self) -> Iterator[None]:
        """A block whose benchmarks run on one board per device (for a pool: the boards this thread holds), so
        that a candidate and its dense pair are measured on the same board."""
        with contextlib.ExitStack() as stack:
            for device in self.devices:
                stack.enter_context(device.one_board())
            yield

    @property
    def dense_artifact_name(self) -> str | None:
        """File name of the dense artifact of the pairs, None before the first pairing."""
        return None if self._dense_artifact is None else Path(self._dense_artifact.path).name

    def dense_artifact(self) -> Artifact:
        """The dense model's artifact for the pairs, exported on first use."""
        if self._dense_artifact is None:
            self._dense_artifact = self._make_dense_artifact()
        return self._dense_artifact

    def cached(self, sha256: str) -> Measurements | None:
        """The artifact's measurement on every device from the cache, or None when a device lacks one."""
        found = {}
        for device in self.devices:
            cached = self.journal.cached_measurement(sha256, device.fingerprint)
            if cached is None:
                return None
            found[device.name] = cached
        return found

    def measure_with_dense(self, path: Path) -> tuple[Measurements, dict[str, float]]:
        """The artifact measured afresh on every device and the dense model right after it on the same board
        (a pool's board is held for both): (measurement, dense figures). Device calls only, no journal, so
        several run at once on the boards of a pool; :meth:`store` and :meth:`paired_with` finish it."""
        dense_artifact = self.dense_artifact()

        def both() -> tuple[Measurements, dict[str, float]]:
            result: dict[str, MeasurementSummary] = {}
            dense: dict[str, float] = {}
            for device in self.devices:
                result[device.name] = measure(device, path, self.bench)
                dense.update(self.figures({device.name: measure(device, dense_artifact.path, self.bench)}))
            return result, dense

        taken = self.on_same_boards(both)
        with self._count_lock:
            self.measurements_taken += 2 * len(self.devices)
        return taken

    def on_same_boards(self, fn: Callable[[], T]) -> T:
        """``fn()`` inside :meth:`same_boards`; when a pool's board fails at transport level (an agent gone), run
        again on another board (the pool takes a board out after its second such failure), while boards remain."""
        attempts = 1 + sum(max(0, d.boards - 1) * 2 for d in self.devices)
        for attempt in range(1, attempts + 1):
            try:
                with self.same_boards():
                    return fn()
            except Exception as exc:
                if attempt == attempts or classify(exc) != "transient":
                    raise
                logger.warning("a measurement failed on a board of the pool (%s); measuring again", exc)
        raise AssertionError("unreachable")

    def store(self, sha256: str, measurement: Measurements) -> None:
        """Keep ``measurement`` of an artifact in the journal's cache (one entry per device)."""
        by_name = {d.name: d for d in self.devices}
        for name, summary in measurement.items():
            self.journal.store_measurement(sha256, by_name[name].fingerprint, summary)

    def rounds(self, artifacts: Sequence[tuple[Path, str]], rounds: int,
               bench: BenchSpec | None = None) -> list[list[dict[str, MeasurementSummary]]]:
        """Every (path, sha256) measured now, alternating between them ``rounds`` times, cache bypassed: per
        artifact, its ``rounds`` measurements. Figures taken minutes apart on a busy board can be tens of
        percent off; figures taken side by side are comparable."""
        taken: list[list[dict[str, MeasurementSummary]]] = [[] for _ in artifacts]
        for _ in range(rounds):
            for i, (path, sha256) in enumerate(artifacts):
                taken[i].append(self.measure(path, sha256, bench, use_cache=False))
        return taken

    def side_by_side(self, artifacts: Sequence[Artifact], rounds: int) -> list[dict[str, float]]:
        """The objective's figures of ``artifacts`` (with ``path`` and ``sha256``) in :meth:`rounds`: the
        median per device of each."""
        taken = self.rounds([(a.path, a.sha256) for a in artifacts], rounds)
        return [{dev: statistics.median(self.figures(m)[dev] for m in rows) for dev in self.figures(rows[0])}
                for rows in taken]

    # -- figures and references ----------------------------------------------------------------------
    def figures(self, measurement: Measurements | None) -> dict[str, float]:
        """Per-device figure of the objective (ms or mJ) in ``measurement``; {} when nothing was measured."""
        figures = {dev: m.figure(self.objective) for dev, m in (measurement or {}).items()}
        return {dev: float(value) for dev, value in figures.items() if value is not None}

    def paired(self, measurement: Measurements | None) -> dict[str, float]:
        """Per-device dense figure measured right after ``measurement`` (only the devices where it was)."""
        pairs = {dev: m.dense_figure(self.objective) for dev, m in (measurement or {}).items()}
        return {dev: float(value) for dev, value in pairs.items() if value is not None}

    def start_dense(self, dense: Measurements | None, paired: Iterable[Measurements | None] = ()) -> None:
        """Start the dense samples from the dense model's own measurement and the pairs of measurements taken
        before (a resumed run)."""
        self._dense_samples = {dev: [value] for dev, value in self.figures(dense).items()}
        for measurement in paired:
            self.add_dense_samples(self.paired(measurement))

    def add_dense_samples(self, figures: dict[str, float]) -> None:
        for dev, value in figures.items():
            self._dense_samples.setdefault(dev, []).append(value)

    def dense_figures(self) -> dict[str, float]:
        """Per-device figure of the dense model: the median of every time it was measured (at the start, and
        paired with each measured candidate); {} before any."""
        return {dev: statistics.median(values) for dev, values in self._dense_samples.items()}

    def reference(self, measurement: Measurements | None) -> dict[str, float]:
        """Per-device dense figure a measurement is compared with: the one taken right after it, where it was
        paired, else :meth:`dense_figures`."""
        return {**self.dense_figures(), **self.paired(measurement)}

    def ratio(self, measurement: Measurements | None) -> float | None:
        """Worst-device ratio of a measurement to its dense reference; None when nothing was measured."""
        return worst_ratio(self.figures(measurement), self.reference(measurement))


def worst_ratio(figures: dict[str, float], dense: dict[str, float]) -> float | None:
    """Worst-device ratio of per-device ``figures`` to the ``dense`` figures they are compared with; None when no
    device has both."""
    ratios = [figures[d] / dense[d] for d in figures if d in dense and dense[d] > 0]
    return max(ratios) if ratios else None
