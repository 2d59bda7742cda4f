"""The real agent over gRPC on loopback with the real ExecuTorch and LiteRT runtimes."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from host.devices.client import AgentClient
from host.devices.results import BenchPolicy, BenchSpec, InputSpec
from host.errors import BenchmarkError
from tests.fixtures.agent import tiny_pte_expected
from tests.fixtures.tflite_builder import reference_output

pytestmark = pytest.mark.integration
QUICK = BenchPolicy(warmup_runs=2, warmup_seconds=0.0, min_runs=20, min_seconds=0.0, max_runs=20, max_seconds=0.0)


@pytest.fixture()
def client(agent_server):
    with AgentClient(agent_server, timeout=60) as c:
        yield c


def test_get_info_describes_this_machine(client):
    info = client.get_info()
    assert info.protocol_version == 1
    assert info.cpu_count >= 1 and info.memory_total_bytes > 0
    assert len(info.fingerprint) == 16
    assert {r.name for r in info.runtimes} == {"executorch", "litert"}
    assert all(r.available for r in info.runtimes)
    # No meter on this VM: reported with a reason, never as zero watts.
    assert info.energy_meters == () and "no energy meter" in info.energy_unavailable_reason
    assert client.health()


def test_upload_is_skipped_when_already_stored(client, tiny_tflite):
    first = client.upload(tiny_tflite)
    again = client.upload(tiny_tflite)
    assert first.bytes_sent in (0, tiny_tflite.stat().st_size)  # 0 if an earlier test uploaded it
    assert again.bytes_sent == 0 and again.already_present
    assert client.has_artifact(first.sha256)
    assert not client.has_artifact("0" * 64)


@pytest.mark.executorch
def test_pte_benchmark_returns_samples_stats_and_correct_outputs(client, tiny_pte):
    x, expected = tiny_pte_expected(tiny_pte)
    spec = BenchSpec(inputs=(x,), policy=QUICK, return_outputs=True, threads=1)
    m = client.ensure_and_benchmark(tiny_pte, spec)
    assert m.runtime == "executorch" and m.runtime_version.startswith("1.")
    assert m.threads == 1
    assert len(m.latencies_ms) == 20 and m.stats.count == 20
    assert m.stats.min_ms <= m.stats.p50_ms <= m.stats.p90_ms <= m.stats.max_ms
    assert m.stats.p50_ms == pytest.approx(float(np.median(m.latencies_ms)))
    assert m.timed_window_s >= sum(m.latencies_ms) / 1000 * 0.99
    assert m.load_ms > 0 and m.first_run_ms > 0 and m.peak_rss_bytes > 10 * 2**20
    np.testing.assert_allclose(m.outputs[0], expected, rtol=1e-4, atol=1e-5)
    assert len(m.output_sha256) == 1 and len(m.output_sha256[0]) == 64
    assert not m.energy.available and m.energy.joules_per_inference is None
    assert m.load_average_1m > 0  # this test itself keeps a core busy
    # Second run of the same program: served from the worker's program cache, same outputs.
    again = client.benchmark(m.artifact_sha256, spec)
    assert again.load_cached and again.output_sha256 == m.output_sha256


@pytest.mark.litert
def test_tflite_benchmark_matches_numpy_reference(client, tiny_tflite_model):
    path, weights = tiny_tflite_model
    x = np.random.default_rng(3).uniform(-1, 1, (1, 40, 40, 3)).astype(np.float32)
    m = client.ensure_and_benchmark(path, BenchSpec(inputs=(x,), policy=QUICK, return_outputs=True))
    assert m.runtime == "litert" and "ai-edge-litert" in m.runtime_version
    np.testing.assert_allclose(m.outputs[0], reference_output(x, weights), rtol=1e-4, atol=1e-4)


@pytest.mark.litert
def test_policy_min_time_and_cap_are_honoured(client, tiny_tflite):
    sha = client.upload(tiny_tflite).sha256
    timed = client.benchmark(sha, BenchSpec(policy=BenchPolicy(warmup_runs=1, warmup_seconds=0, min_runs=3,
                                                               min_seconds=0.3, max_runs=100000)))
    assert timed.timed_window_s >= 0.3 and timed.stats.count > 3
    capped = client.benchmark(sha, BenchSpec(policy=BenchPolicy(warmup_runs=0, warmup_seconds=0, min_runs=500,
                                                                min_seconds=5.0, max_runs=7, max_seconds=0)))
    assert capped.stats.count == 7


@pytest.mark.litert
def test_random_inputs_are_seeded(client, tiny_tflite):
    sha = client.upload(tiny_tflite).sha256
    a = client.benchmark(sha, BenchSpec(inputs=(InputSpec((1, 40, 40, 3)),), input_seed=5, policy=QUICK))
    b = client.benchmark(sha, BenchSpec(input_seed=5, policy=QUICK))
    c = client.benchmark(sha, BenchSpec(input_seed=6, policy=QUICK))
    assert a.output_sha256 == b.output_sha256 != c.output_sha256


@pytest.mark.litert
def test_job_id_is_idempotent(client, tiny_tflite):
    sha = client.upload(tiny_tflite).sha256
    spec = BenchSpec(policy=QUICK, job_id="job-idempotent-1")
    first = client.benchmark(sha, spec)
    second = client.benchmark(sha, spec)
    assert second.latencies_ms == first.latencies_ms and second.job_id == "job-idempotent-1"


@pytest.mark.litert
def test_concurrent_requests_run_one_at_a_time(client, tiny_tflite):
    sha = client.upload(tiny_tflite).sha256
    spec = BenchSpec(policy=BenchPolicy(warmup_runs=0, warmup_seconds=0, min_runs=1, min_seconds=0.3))
    results = []
    threads = [threading.Thread(target=lambda: results.append(client.benchmark(sha, spec))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    # Serialized: somebody waited at least for another one's whole timed window.
    assert max(r.queued_s for r in results) >= 0.25


def test_errors_keep_the_agent_message(client, tiny_tflite):
    sha = client.upload(tiny_tflite).sha256
    with pytest.raises(BenchmarkError) as shape:
        client.benchmark(sha, BenchSpec(inputs=(np.zeros((1, 8, 8, 3), np.float32),), policy=QUICK))
    assert shape.value.code == "INVALID_ARGUMENT" and "[1, 40, 40, 3]" in shape.value.message
    with pytest.raises(BenchmarkError) as runtime:
        client.benchmark(sha, BenchSpec(runtime="onnxruntime", policy=QUICK))
    assert runtime.value.code == "INVALID_ARGUMENT" and "unknown runtime" in runtime.value.message
    with pytest.raises(BenchmarkError) as kind:
        client.benchmark(sha, BenchSpec(runtime="executorch", policy=QUICK))
    assert kind.value.code == "INVALID_ARGUMENT"
    with pytest.raises(BenchmarkError) as missing:
        client.benchmark("ab" * 32, BenchSpec(policy=QUICK))
    assert missing.value.code == "FAILED_PRECONDITION" and "upload it first" in missing.value.message


def test_missing_runtime_is_failed_precondition(client, tiny_tflite, monkeypatch):
    sha = client.upload(tiny_tflite).sha256
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # as if ai-edge-litert were not installed
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    with pytest.raises(BenchmarkError) as err:
        client.benchmark(sha, BenchSpec(policy=QUICK))
    assert err.value.code == "FAILED_PRECONDITION" and "autosculpt[agent,litert]" in err.value.message
    assert "install the missing runtime" in err.value.hint
    info = client.get_info()
    assert not info.runtime("litert").available and "pip install" in info.runtime("litert").unavailable_reason
