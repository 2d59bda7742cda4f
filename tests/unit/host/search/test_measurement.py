"""The typed measurement summary: what the search keeps of an agent's reply, its pairing with dense, the median
of interleaved rounds, and its JSON form (the only place its field names are strings)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from host.devices.results import Energy, LatencyStats
from host.errors import BenchmarkError
from host.kinds import ObjectiveName
from host.search.devices import summarize
from host.search.measurement import (
    MeasurementSummary,
    measurements_from_json,
    measurements_to_json,
    median_measurements,
)


def _reply(p50: float, energy: Energy | None = None):
    stats = LatencyStats(count=40, mean_ms=p50 * 1.02, std_ms=0.01, cv=0.01, min_ms=p50 * 0.9, p50_ms=p50,
                         p90_ms=p50 * 1.1, p99_ms=p50 * 1.3, max_ms=p50 * 1.5)
    return SimpleNamespace(stats=stats, energy=energy or Energy(False, unavailable_reason="no meter on this board"))


def test_summarize_keeps_the_idle_subtracted_energy_and_says_why_there_is_none():
    metered = summarize(_reply(2.0, Energy(True, "rapl:package-0", "counter", "", 10, 6.0, 2.5, 0.012, 0.007)))
    assert (metered.p50_ms, metered.count, metered.meter) == (2.0, 40, "rapl:package-0")
    assert metered.energy_mj == pytest.approx(7.0) and metered.energy_total_mj == pytest.approx(12.0)
    assert metered.idle_power_w == 2.5 and metered.energy_error is None
    plain = summarize(_reply(2.0))
    assert plain.energy_mj is None and plain.energy_error == "no meter on this board"
    # a reply without timed runs is the device's failure, not a figure the reward could compare
    with pytest.raises(BenchmarkError, match="no usable latency"):
        summarize(SimpleNamespace(stats=replace(_reply(2.0).stats, count=0, p50_ms=float("nan")), energy=None))


def test_the_objective_picks_the_figure_and_its_paired_dense_figure():
    m = MeasurementSummary(p50_ms=1.0, energy_mj=0.3)
    assert m.figure(ObjectiveName.LATENCY) == 1.0 and m.figure(ObjectiveName.ENERGY) == 0.3
    assert m.dense_figure(ObjectiveName.LATENCY) is None  # not paired
    paired = m.paired(ObjectiveName.LATENCY, 1.4).paired(ObjectiveName.ENERGY, 0.5)
    assert (paired.dense_figure(ObjectiveName.LATENCY), paired.dense_figure(ObjectiveName.ENERGY)) == (1.4, 0.5)
    assert m.dense_p50_ms is None  # frozen: pairing makes a new summary


def test_median_of_rounds_takes_every_float_field_and_counts_the_rounds():
    rounds = [{"pi": MeasurementSummary(p50_ms=ms, p90_ms=ms + 1, count=n, meter="ina219", energy_mj=mj)}
              for ms, n, mj in ((1.0, 40, 0.5), (3.0, 30, 0.7), (1.2, 50, 0.6))]
    median = median_measurements(rounds)["pi"]
    assert (median.p50_ms, median.p90_ms, median.energy_mj) == (1.2, 2.2, 0.6)
    assert (median.count, median.meter, median.rounds) == (40, "ina219", 3)  # non-floats from the first round


def test_json_round_trip_and_refusals():
    measurement = {"pi": MeasurementSummary(p50_ms=1.5, cv=0.02, count=40, dense_p50_ms=2.0, rounds=3)}
    data = measurements_to_json(measurement)
    assert data["pi"]["energy_mj"] is None and "energy_total_mj" not in data["pi"]  # unmetered says so
    assert measurements_from_json(data) == measurement
    assert measurements_to_json(None) is None and measurements_from_json(None) is None
    with pytest.raises(ValueError, match="device 'pi'.*unknown field.*p50"):
        measurements_from_json({"pi": {"p50": 1.0}})
    with pytest.raises(ValueError, match="no p50_ms"):
        MeasurementSummary.from_json({"p90_ms": 1.0})
    with pytest.raises(ValueError, match="finite number"):
        MeasurementSummary(p50_ms=float("nan"))
