"""Energy through a real benchmark, with a RAPL counter tree that a test thread drives at a known power."""

from __future__ import annotations

import os
import threading
import time

import pytest

from device_agent.config import AgentConfig, EnergyConfig
from device_agent.server import create_server, stop_server
from host.devices.client import AgentClient
from host.devices.results import BenchPolicy, BenchSpec

pytestmark = [pytest.mark.integration, pytest.mark.litert]
WATTS = 40.0
MAX_RANGE_UJ = 20_000_000  # 20 J: at 40 W the counter wraps twice a second


def test_energy_is_sampled_over_the_timed_window_with_wrapping_counter(tmp_path, tiny_tflite):
    zone = tmp_path / "tree/sys/class/powercap/intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text(f"{MAX_RANGE_UJ}\n")
    (zone / "energy_uj").write_text("0\n")
    stop = threading.Event()

    def drive():
        start = time.monotonic()
        while not stop.wait(0.005):
            value = int((time.monotonic() - start) * WATTS * 1e6) % MAX_RANGE_UJ
            tmp = zone / "energy_uj.tmp"
            tmp.write_text(f"{value}\n")
            os.replace(tmp, zone / "energy_uj")  # readers never see a half-written number

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    energy = EnergyConfig(meter="rapl", root=tmp_path / "tree", sample_interval_s=0.02, idle_seconds=0.3)
    server, port = create_server(AgentConfig(port=0, store_dir=tmp_path / "store", energy=energy))
    server.start()
    try:
        with AgentClient(f"127.0.0.1:{port}") as client:
            assert client.get_info().energy_meters == ("rapl:package-0",)
            policy = BenchPolicy(warmup_runs=1, warmup_seconds=0, min_runs=5, min_seconds=0.5)
            m = client.ensure_and_benchmark(tiny_tflite, BenchSpec(policy=policy, measure_energy=True))
            off = client.ensure_and_benchmark(tiny_tflite, BenchSpec(policy=policy))
    finally:
        stop.set()
        stop_server(server, grace=0.2)
    e = m.energy
    assert e.available and e.meter == "rapl:package-0" and "RAPL" in e.method
    assert e.sample_count >= 10
    assert e.mean_power_w == pytest.approx(WATTS, rel=0.25)
    assert e.idle_power_w == pytest.approx(WATTS, rel=0.25)
    assert e.joules_per_inference == pytest.approx(e.mean_power_w * m.timed_window_s / m.stats.count)
    assert abs(e.joules_per_inference_idle_subtracted) < 0.5 * e.joules_per_inference
    assert not off.energy.available and "not requested" in off.energy.unavailable_reason


def test_a_failing_meter_makes_energy_unavailable_not_the_benchmark(tmp_path, tiny_tflite):
    zone = tmp_path / "tree/sys/class/powercap/intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text(f"{MAX_RANGE_UJ}\n")
    (zone / "energy_uj").write_text("0\n")
    energy = EnergyConfig(meter="rapl", root=tmp_path / "tree", sample_interval_s=0.02, idle_seconds=0.05)
    server, port = create_server(AgentConfig(port=0, store_dir=tmp_path / "store", energy=energy))
    server.start()
    try:
        (zone / "energy_uj").unlink()  # the meter disappears after detection
        with AgentClient(f"127.0.0.1:{port}") as client:
            m = client.ensure_and_benchmark(tiny_tflite, BenchSpec(
                policy=BenchPolicy(warmup_runs=0, warmup_seconds=0, min_runs=3, min_seconds=0), measure_energy=True))
    finally:
        stop_server(server, grace=0.2)
    assert m.stats.count == 3
    assert not m.energy.available and "reading rapl:package-0 failed" in m.energy.unavailable_reason
    assert m.energy.joules_per_inference is None
