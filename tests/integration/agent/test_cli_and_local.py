"""`sculpt-agent serve|info|bench` as real processes, and LocalAgent (what `--device local` uses)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import psutil
import pytest

from host.devices.local import LocalAgent
from host.devices.results import BenchPolicy, BenchSpec
from host.errors import DeviceUnreachableError

pytestmark = pytest.mark.integration


@pytest.mark.litert
def test_local_agent_serves_benchmarks_and_stops(local_agent, tiny_tflite):
    pid = local_agent.pid
    assert pid and local_agent.target.startswith("127.0.0.1:")
    with local_agent.client() as client:
        assert client.health()
        m = client.ensure_and_benchmark(tiny_tflite, BenchSpec(policy=BenchPolicy(min_runs=5, min_seconds=0)))
        assert m.stats.count >= 5 and m.runtime == "litert"
        worker_pids = [c.pid for c in psutil.Process(pid).children(recursive=True)]
        assert worker_pids, "the benchmark ran in a worker process of the agent"


def test_local_agent_stop_ends_the_process_and_its_workers(tiny_tflite):
    agent = LocalAgent().start()
    pid = agent.pid
    with agent.client() as client:
        client.ensure_and_benchmark(tiny_tflite, BenchSpec(policy=BenchPolicy(min_runs=1, min_seconds=0)))
    children = psutil.Process(pid).children(recursive=True)
    agent.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, "worker processes outlived the agent"
    assert agent.pid is None and agent.target == ""


def test_local_agent_reports_why_it_failed_to_start(tmp_path):
    bad = tmp_path / "agent.toml"
    bad.write_text("no_such_key = 1\n")
    with pytest.raises(DeviceUnreachableError) as err, LocalAgent(config=bad, startup_timeout=30):
        pass
    assert "unknown keys" in str(err.value) and "no_such_key" in str(err.value)


def test_info_json_describes_the_device(venv_bin, tmp_path):
    proc = subprocess.run([venv_bin / "sculpt-agent", "info", "--json", "--store", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=60, check=True)
    info = json.loads(proc.stdout)
    assert info["protocol_version"] == 1 and info["cpu_count"] == os.cpu_count()
    assert {r["name"] for r in info["runtimes"]} == {"executorch", "litert"}
    human = subprocess.run([venv_bin / "sculpt-agent", "info", "--store", str(tmp_path / "s")],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert "fingerprint " + info["fingerprint"] in human and "energy" in human


@pytest.mark.litert
def test_bench_runs_one_benchmark_without_network(venv_bin, tiny_tflite):
    proc = subprocess.run([venv_bin / "sculpt-agent", "bench", str(tiny_tflite), "--json", "--runs", "10",
                           "--seconds", "0", "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["runtime"] == "litert" and result["threads"] == 1
    assert len(result["latencies_ms"]) >= 10 and result["stats"]["p50_ms"] > 0
    assert result["energy"]["available"] is False and result["energy"]["unavailable_reason"]
    human = subprocess.run([venv_bin / "sculpt-agent", "bench", str(tiny_tflite), "--runs", "3", "--seconds", "0"],
                           capture_output=True, text=True, timeout=120)
    assert human.returncode == 0 and "p50" in human.stdout and "CV" in human.stdout


def test_bench_rejects_a_file_that_is_not_a_model(venv_bin, tmp_path):
    junk = tmp_path / "model.tflite"
    junk.write_bytes(b"definitely not a flatbuffer" * 10)
    proc = subprocess.run([venv_bin / "sculpt-agent", "bench", str(junk)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 3
    assert "INVALID_ARGUMENT" in proc.stderr and "file identifier" in proc.stderr


def test_preloaded_worker_starts_without_a_benchmark():
    with LocalAgent(preload=("litert",)) as agent:
        daemon = psutil.Process(agent.pid)
        deadline = time.monotonic() + 60
        while not daemon.children() and time.monotonic() < deadline:
            time.sleep(0.1)
        (worker,) = daemon.children()
        assert "device_agent.worker_launch" in " ".join(worker.cmdline()) and "litert" in worker.cmdline()


def test_serve_on_a_busy_port_fails_clearly(venv_bin, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = subprocess.run([venv_bin / "sculpt-agent", "serve", "--port", str(busy.getsockname()[1]),
                               "--store", str(tmp_path / "s")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cannot bind" in proc.stderr and "--port" in proc.stderr


def test_serve_rejects_unknown_preload(venv_bin, tmp_path):
    proc = subprocess.run([venv_bin / "sculpt-agent", "serve", "--port", "0", "--preload", "tvm",
                           "--store", str(tmp_path / "s")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown runtime(s) to preload: tvm" in proc.stderr


def test_workers_are_pinned_to_the_configured_cpus(tmp_path, tiny_tflite):
    from device_agent.config import AgentConfig
    from device_agent.server import create_server, stop_server
    from host.devices.client import AgentClient

    server, port = create_server(AgentConfig(port=0, store_dir=tmp_path / "s", worker_cpus=(0,)))
    server.start()
    try:
        with AgentClient(f"127.0.0.1:{port}") as client:
            client.ensure_and_benchmark(tiny_tflite, BenchSpec(policy=BenchPolicy(min_runs=1, min_seconds=0)))
        worker = psutil.Process(server.agent.workers.get("litert").pid)
        assert worker.cpu_affinity() == [0]
        # Every thread of the runtime's pool inherited the mask (Linux accepts thread ids here).
        assert all(os.sched_getaffinity(t.id) == {0} for t in worker.threads())
    finally:
        stop_server(server, grace=0.2)
