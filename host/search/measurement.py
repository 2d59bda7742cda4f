"""What the search keeps of one artifact's measurement on one device: a frozen summary, typed from the agent's
reply (:func:`host.search.devices.summarize`) to the reward, the journal and the report.

A candidate's measurement is ``{device name: MeasurementSummary}`` (:data:`Measurements`). The journal and
the measurement cache store it as JSON through :func:`measurements_to_json` / :func:`measurements_from_json`,
the only places its field names are spelled as strings; journals written before this type read back as the
same values (the JSON keys did not change).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from host.kinds import ObjectiveName


@dataclass(frozen=True)
class MeasurementSummary:
    """One artifact measured on one device.

    ``energy_mj`` is the idle-subtracted energy per inference (what the model adds to the board's idle draw),
    never the total; the total and the idle power are kept for the report, ``energy_error`` says why a metered
    measurement has no energy figure. ``dense_p50_ms`` / ``dense_energy_mj`` are the dense model's figures
    measured right after this artifact on the same device (the pair a candidate's ratio is taken against),
    None where it was not paired.
    """

    p50_ms: float
    p90_ms: float | None = None
    mean_ms: float | None = None
    cv: float | None = None
    count: int | None = None
    energy_mj: float | None = None
    energy_total_mj: float | None = None
    idle_power_w: float | None = None
    meter: str | None = None
    energy_error: str | None = None
    dense_p50_ms: float | None = None
    dense_energy_mj: float | None = None
    rounds: int | None = None  # a summary of interleaved rounds (:meth:`median`): how many

    @classmethod
    def median(cls, rounds: Sequence[MeasurementSummary]) -> MeasurementSummary:
        """One summary of several measurements of the same artifact: every float field the median over
        ``rounds`` (where each round has it), the other fields from the first, ``rounds`` their number."""
        if not rounds:
            raise ValueError("no measurement to take the median of")
        first = rounds[0]
        medians = {}
        for f in dataclasses.fields(cls):
            values = [getattr(r, f.name) for r in rounds]
            if isinstance(values[0], float) and all(isinstance(v, int | float) for v in values):
                medians[f.name] = statistics.median(values)
        return dataclasses.replace(first, rounds=len(rounds), **medians)

    def __post_init__(self) -> None:
        if not (isinstance(self.p50_ms, (int, float)) and math.isfinite(self.p50_ms) and self.p50_ms >= 0):
            raise ValueError(f"a measurement's p50_ms must be a finite number >= 0, got {self.p50_ms!r}")

    def figure(self, objective: ObjectiveName) -> float | None:
        """The figure the objective compares: energy (mJ) for the energy objective, else p50 latency (ms)."""
        return self.energy_mj if objective == ObjectiveName.ENERGY else self.p50_ms

    def dense_figure(self, objective: ObjectiveName) -> float | None:
        """The paired dense model's figure for the objective, None when this measurement was not paired."""
        return self.dense_energy_mj if objective == ObjectiveName.ENERGY else self.dense_p50_ms

    def paired(self, objective: ObjectiveName, dense: float) -> MeasurementSummary:
        """This measurement with the dense figure measured right after it."""
        key = "dense_energy_mj" if objective == ObjectiveName.ENERGY else "dense_p50_ms"
        return dataclasses.replace(self, **{key: float(dense)})

    def to_json(self) -> dict[str, Any]:
        """The JSON form the journal stores: the always-present fields, and the optional ones that are set."""
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None or f.name in _ALWAYS_WRITTEN:
                data[f.name] = value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MeasurementSummary:
        """Read :meth:`to_json`'s form back; a key this version does not know, or a missing p50, is an error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a stored measurement must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise ValueError(f"a stored measurement has unknown field(s) {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(_FIELDS))})")
        if "p50_ms" not in data:
            raise ValueError("a stored measurement has no p50_ms")
        return cls(**dict(data))


_FIELDS = frozenset(f.name for f in dataclasses.fields(MeasurementSummary))
# written even when None, as the untyped summaries always were: an unmetered measurement says so
_ALWAYS_WRITTEN = frozenset({"p50_ms", "p90_ms", "mean_ms", "cv", "count", "energy_mj", "meter"})


def median_measurements(rounds: Sequence[Measurements]) -> dict[str, MeasurementSummary]:
    """{device: :meth:`MeasurementSummary.median`} over ``rounds`` of the same artifact (devices of the first)."""
    return {device: MeasurementSummary.median([r[device] for r in rounds]) for device in rounds[0]}

Measurements = Mapping[str, MeasurementSummary]  # {device name: summary}


def measurements_to_json(measurement: Measurements | None) -> dict[str, Any] | None:
    """``{device: summary}`` as JSON-able data (None stays None)."""
    if measurement is None:
        return None
    return {device: summary.to_json() for device, summary in measurement.items()}


def measurements_from_json(data: Any) -> dict[str, MeasurementSummary] | None:
    """The inverse of :func:`measurements_to_json`; ValueError naming the device on a malformed entry."""
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise ValueError(f"a stored measurement must map device names to summaries, got {type(data).__name__}")
    result = {}
    for device, summary in data.items():
        try:
            result[str(device)] = MeasurementSummary.from_json(summary)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"device {device!r}: {exc}") from exc
    return result
