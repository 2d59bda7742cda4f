"""`sculpt-agent serve|info|bench` as real processes, and LocalAgent (what `--device local` uses)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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
    # 64-bit fields are numbers, not protobuf's JSON strings
    assert isinstance(info["memory_total_bytes"], int) and isinstance(info["max_artifact_bytes"], int)
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


def _user_folder(root):
    """What ``--store ~`` would find: 2-character folders, a tmp/, a nested folder, plain files."""
    files = {"ab/notes.txt": b"my notes", "tmp/draft.txt": b"draft", "cd/deep/thesis.tex": b"thesis",
             "photo.jpg": b"jpeg"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["info"], ["bench", "MODEL"]])
def test_a_folder_that_is_not_a_store_is_refused_and_left_untouched(venv_bin, tmp_path, tiny_tflite, command):
    home = tmp_path / "home"
    files = _user_folder(home)
    args = [str(tiny_tflite) if a == "MODEL" else a for a in command]
    proc = subprocess.run([venv_bin / "sculpt-agent", *args, "--store", str(home)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "is not empty and is not a sculpt-agent artifact store" in proc.stderr and str(home) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert {rel: (home / rel).read_bytes() for rel in files} == files
    assert sorted(p.name for p in home.iterdir()) == ["ab", "cd", "photo.jpg", "tmp"]  # no marker written


@pytest.mark.parametrize("which", ["--config", "--token-file"])
def test_a_file_that_is_not_utf8_is_named_in_a_clear_error(venv_bin, tmp_path, which):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("port = 50051 # caf\xe9\n".encode("latin-1"))
    proc = subprocess.run([venv_bin / "sculpt-agent", "serve", "--port", "0", "--store", str(tmp_path / "s"),
                           which, str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr and "not UTF-8" in proc.stderr


_HOST = r"""
import json, sys, time
import psutil
from host.devices.client import AgentClient
from host.devices.local import LocalAgent
from host.devices.results import BenchPolicy, BenchSpec
import threading

agent = LocalAgent().start()
client = agent.client()
sha = client.upload(sys.argv[1]).sha256
long = BenchSpec(policy=BenchPolicy(warmup_runs=0, min_runs=1, min_seconds=60, max_seconds=0, max_runs=10**7),
                 timeout_s=120)
threading.Thread(target=lambda: client.benchmark(sha, long), daemon=True).start()
deadline = time.monotonic() + 60
while client.get_info().queue_depth < 1 and time.monotonic() < deadline:
    time.sleep(0.05)
workers = [c.pid for c in psutil.Process(agent.pid).children(recursive=True)]
print(json.dumps({"agent": agent.pid, "workers": workers, "tmp": str(agent.temp_dir)}), flush=True)
time.sleep(300)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.litert
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_host_leaves_no_agent_worker_or_temp_folder(tmp_path, tiny_tflite, sig):
    """A host process (what `sculpt-host search` is) killed mid-benchmark takes its local agent along."""
    host = subprocess.Popen([sys.executable, "-c", _HOST, str(tiny_tflite)], stdout=subprocess.PIPE, text=True)
    facts = {}
    try:
        facts = json.loads(host.stdout.readline() or "{}")
        assert facts.get("workers"), "the benchmark runs in a worker of the agent"
        pids = [facts["agent"], *facts["workers"]]
        tmp = Path(facts["tmp"])
        assert tmp.is_dir()
        host.send_signal(sig)
        host.wait(timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (all(_gone(p) for p in pids) and not tmp.exists()):
            time.sleep(0.1)
        assert [p for p in pids if not _gone(p)] == [], "the agent or its worker outlived the host"
        assert not tmp.exists(), "the agent's temporary store was left behind"
    finally:  # never leave our own processes running, even when the test fails
        if host.poll() is None:
            host.kill()
            host.wait(timeout=10)
        for pid in [facts.get("agent"), *facts.get("workers", [])]:
            if pid and not _gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.litert
def test_workers_of_a_killed_agent_stop_even_mid_benchmark(tiny_tflite):
    with LocalAgent() as agent, agent.client() as client:
        sha = client.upload(tiny_tflite).sha256
        client.benchmark(sha, BenchSpec(policy=BenchPolicy(min_runs=1, min_seconds=0)))  # the worker is up
        long = BenchSpec(policy=BenchPolicy(warmup_runs=0, min_runs=1, min_seconds=60, max_seconds=0,
                                            max_runs=10**7), timeout_s=120)
        import threading

        threading.Thread(target=lambda: _swallow(client.benchmark, sha, long), daemon=True).start()
        deadline = time.monotonic() + 30
        while client.get_info().queue_depth < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # into the timed loop
        (worker,) = psutil.Process(agent.pid).children()
        os.kill(agent.pid, signal.SIGKILL)
        gone, alive = psutil.wait_procs([worker], timeout=10)
        if alive:
            worker.kill()
        assert not alive, "the worker went on benchmarking for a daemon that was gone"


def _swallow(fn, *args):
    with contextlib.suppress(Exception):  # the daemon is killed under it on purpose
        fn(*args)


def test_local_agent_store_and_log_leave_nothing_on_disk(tmp_path):
    with LocalAgent() as agent:
        tmp = agent.temp_dir
        assert tmp is not None and (tmp / "sculpt-agent-store.json").is_file()
        deadline = time.monotonic() + 10  # the log comes through a pipe, not a file in the temp folder
        while "agent serving on 127.0.0.1" not in agent.log_tail() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "agent serving on 127.0.0.1" in agent.log_tail()
        assert sorted(p.name for p in tmp.iterdir()) == ["sculpt-agent-store.json", "tmp"]
    assert not tmp.exists()
    kept = tmp_path / "kept-store"
    with LocalAgent(store_dir=kept) as agent:
        assert agent.temp_dir is None
    assert (kept / "sculpt-agent-store.json").is_file()  # a given store stays


def test_a_local_agent_started_from_a_thread_that_ends_keeps_running():
    """The parent-death signal also fires when only the starting thread exits; the agent must ignore that."""
    import threading

    box = []
    starter = threading.Thread(target=lambda: box.append(LocalAgent().start()))
    starter.start()
    starter.join(60)
    (agent,) = box
    try:
        time.sleep(0.5)  # time for a (spurious) signal to be delivered and handled
        with agent.client() as client:
            assert client.health() and agent.pid is not None
    finally:
        agent.stop()
