"""The search's Measurer on a real local agent and real .pte artifacts: the journal's cache answers a second
measurement of the same artifact, a confirmation bypasses it without overwriting it, the dense model is
exported once for all its pairs, and a side-by-side round trip gives one figure per device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from host.devices.policy import BenchPolicy
from host.devices.results import BenchSpec
from host.kinds import ObjectiveName
from host.search.journal import Journal

pytestmark = [pytest.mark.integration, pytest.mark.executorch, pytest.mark.slow, pytest.mark.timeout(300)]


def _artifact(path, width: int):
    from host.export import export_pte

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(width, 4)).eval()
    return export_pte(model, (torch.randn(1, 3, 16, 16),), path)


def test_cache_pairs_and_side_by_side_on_a_real_agent(tmp_path):
    from host.search.devices import open_devices
    from host.search.measurer import Measurer

    small, large = _artifact(tmp_path / "small.pte", 4), _artifact(tmp_path / "large.pte", 32)
    exported = []

    def dense_artifact():
        exported.append(1)
        return large

    bench = BenchSpec(threads=1, policy=BenchPolicy.search(runs=5, seconds=0.05))
    with Journal.create(tmp_path / "run", {}) as journal, open_devices(["local"]) as devices:
        measurer = Measurer(devices, bench, journal, ObjectiveName.LATENCY, dense_artifact)
        first = measurer.measure(small.path, small.sha256)
        (device,) = first
        assert first[device].p50_ms > 0 and first[device].count >= 5 and measurer.measurements_taken == 1
        assert measurer.measure(small.path, small.sha256) == first  # from the cache: nothing run
        assert measurer.measurements_taken == 1 and journal.measurement_count() == 1
        again = measurer.measure(small.path, small.sha256, use_cache=False)
        assert measurer.measurements_taken == 2
        assert journal.cached_measurement(small.sha256, devices[0].fingerprint) == first[device]  # kept
        assert again[device].dense_p50_ms is None
        # pairs: dense is measured right after each, exported only for the first
        paired = [measurer.pair_with_dense(first), measurer.pair_with_dense(again)]
        assert len(exported) == 1 and measurer.measurements_taken == 4
        assert all(p[device].dense_p50_ms > 0 for p in paired)
        assert measurer.paired(paired[0]) == {device: paired[0][device].dense_p50_ms}
        assert measurer.reference(first) == measurer.dense_figures()  # unpaired: the median of the dense figures
        assert measurer.ratio(paired[0]) == pytest.approx(paired[0][device].p50_ms / paired[0][device].dense_p50_ms)
        figures = measurer.side_by_side([small, large], rounds=2)
        assert [set(f) for f in figures] == [{device}, {device}] and measurer.measurements_taken == 8
        # the count is the run's, not the process's: a resumed run's measurer goes on from it
        resumed = Measurer(devices, bench, journal, ObjectiveName.LATENCY, dense_artifact)
        assert resumed.measurements_taken == 8
        resumed.measure(small.path, small.sha256, use_cache=False)
        assert Measurer(devices, bench, journal, ObjectiveName.LATENCY, dense_artifact).measurements_taken == 9
