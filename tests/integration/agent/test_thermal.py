"""Temperature gate, cool-down and throttling detection, on a thermal sysfs tree the test writes and changes."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import grpc
import pytest

from device_agent.config import AgentConfig, EnergyConfig
from device_agent.server import create_server, stop_server
from host.devices.client import AgentClient
from host.devices.results import BenchPolicy, BenchSpec
from host.errors import BenchmarkError
from protos.agent.v1 import agent_pb2 as pb
from protos.agent.v1 import agent_pb2_grpc
from tests.fixtures.agent import agent_process

pytestmark = [pytest.mark.integration, pytest.mark.litert]


@pytest.fixture()
def board(tmp_path):
    """An agent whose sysfs (thermal zone, throttle counter) is a tree under tmp_path."""
    root = tmp_path / "sys-root"
    zone = root / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("50000\n")
    counter = root / "sys/devices/system/cpu/cpu0/thermal_throttle/core_throttle_count"
    counter.parent.mkdir(parents=True)
    counter.write_text("0\n")
    config = AgentConfig(port=0, store_dir=tmp_path / "store", sysfs_root=root,
                         energy=EnergyConfig(meter="none"))
    server, port = create_server(config)
    server.start()
    try:
        yield zone / "temp", counter, f"127.0.0.1:{port}"
    finally:
        stop_server(server, grace=0.2)


def _policy(**kw):
    return BenchPolicy(warmup_runs=1, warmup_seconds=0, min_runs=5, min_seconds=0, **kw)


def test_temperatures_are_reported_before_and_after(board, tiny_tflite):
    temp, _, target = board
    with AgentClient(target) as client:
        assert client.get_info().temperatures == {"cpu-thermal": 50.0}
        m = client.ensure_and_benchmark(tiny_tflite, BenchSpec(policy=_policy()))
    assert m.temperatures_before == {"cpu-thermal": 50.0} == m.temperatures_after
    assert not m.throttled and m.throttle_reason == ""


def test_gate_waits_for_the_board_to_cool(board, tiny_tflite):
    temp, _, target = board
    temp.write_text("85000\n")
    threading.Timer(0.8, lambda: temp.write_text("60000\n")).start()
    with AgentClient(target) as client:
        t = time.monotonic()
        m = client.ensure_and_benchmark(tiny_tflite, BenchSpec(policy=_policy(max_temperature_c=70,
                                                                              cooldown_timeout_seconds=20)))
        waited = time.monotonic() - t
    assert waited >= 0.8 and m.temperatures_before == {"cpu-thermal": 60.0} and not m.throttled


def test_hot_board_and_throttle_counter_are_flagged(board, tiny_tflite):
    temp, counter, target = board
    temp.write_text("90000\n")
    with AgentClient(target) as client:
        m = client.ensure_and_benchmark(tiny_tflite, BenchSpec(policy=_policy(max_temperature_c=70,
                                                                              cooldown_timeout_seconds=0.3)))
        assert m.throttled and "did not cool below 70.0 C" in m.throttle_reason
        temp.write_text("50000\n")
        threading.Timer(0.2, lambda: counter.write_text("3\n")).start()
        m = client.ensure_and_benchmark(tiny_tflite, BenchSpec(policy=BenchPolicy(
            warmup_runs=0, warmup_seconds=0, min_runs=1, min_seconds=0.6)))
    assert m.throttled and "throttle counters rose by 3" in m.throttle_reason


def test_raspberry_pi_firmware_throttling_is_flagged(tmp_path, tiny_tflite):
    flags = tmp_path / "flags"
    flags.write_text("0x0")
    script = tmp_path / "vcgencmd"
    script.write_text(f'#!/bin/sh\n[ "$1" = get_throttled ] || exit 1\necho "throttled=$(cat {flags})"\n')
    script.chmod(0o755)
    config = AgentConfig(port=0, store_dir=tmp_path / "store", sysfs_root=tmp_path / "empty",
                         energy=EnergyConfig(meter="none", vcgencmd=str(script)))
    server, port = create_server(config)
    server.start()
    try:
        with AgentClient(f"127.0.0.1:{port}") as client:
            calm = client.ensure_and_benchmark(tiny_tflite, BenchSpec(policy=_policy()))
            threading.Timer(0.2, lambda: flags.write_text("0x20002")).start()  # capped now + since boot
            hot = client.ensure_and_benchmark(tiny_tflite, BenchSpec(policy=BenchPolicy(
                warmup_runs=0, warmup_seconds=0, min_runs=1, min_seconds=0.6)))
    finally:
        stop_server(server, grace=0.2)
    assert not calm.throttled
    assert hot.throttled and "ARM frequency capped" in hot.throttle_reason


def _gated_request(sha: str, cooldown: float, timeout: float) -> pb.BenchmarkRequest:
    return pb.BenchmarkRequest(artifact_sha256=sha, timeout_seconds=timeout, policy=pb.BenchPolicy(
        warmup_runs=0, min_runs=1, max_runs=1, max_temperature_c=70, cooldown_timeout_seconds=cooldown))


def _wait_depth(client: AgentClient, depth: int, bound: float) -> bool:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if client.get_info().queue_depth == depth:
            return True
        time.sleep(0.05)
    return False


def test_a_cooldown_longer_than_the_agent_allows_is_refused(board, tiny_tflite):
    temp, _, target = board
    temp.write_text("90000\n")
    with AgentClient(target) as client:
        sha = client.upload(tiny_tflite).sha256
        stub = agent_pb2_grpc.AgentStub(client._channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Benchmark(_gated_request(sha, cooldown=1e6, timeout=30), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_cooldown_s" in err.value.details() and "cooldown_timeout_seconds" in err.value.details()


def test_the_cooldown_counts_against_the_job_deadline(board, tiny_tflite):
    temp, _, target = board
    temp.write_text("90000\n")  # stays hot
    with AgentClient(target) as client:
        with pytest.raises(BenchmarkError) as err:
            client.ensure_and_benchmark(tiny_tflite, BenchSpec(timeout_s=1.0, policy=_policy(
                max_temperature_c=70, cooldown_timeout_seconds=8)))
        assert client.get_info().queue_depth == 0  # and the board is free for the next job
    assert err.value.code == "DEADLINE_EXCEEDED" and "cool-down counts against it" in err.value.message


def test_a_caller_that_leaves_during_the_cooldown_frees_the_board(board, tiny_tflite):
    temp, _, target = board
    temp.write_text("90000\n")
    with AgentClient(target) as client:
        sha = client.upload(tiny_tflite).sha256
        stub = agent_pb2_grpc.AgentStub(client._channel)
        call = stub.Benchmark.future(_gated_request(sha, cooldown=60, timeout=120), timeout=150)
        assert _wait_depth(client, 1, 5)
        call.cancel()
        # Before the fix the wait went on for the whole 60 s, blocking every later job.
        assert _wait_depth(client, 0, 3), "the cool-down wait outlived its caller"
        temp.write_text("50000\n")
        assert client.benchmark(sha, BenchSpec(policy=_policy())).stats.count >= 5


def test_sigterm_ends_a_daemon_that_waits_for_the_board_to_cool(tmp_path, tiny_tflite):
    root = tmp_path / "sys-root"
    zone = root / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("90000\n")
    config = tmp_path / "agent.toml"
    config.write_text(f'sysfs_root = "{root}"\n[energy]\nmeter = "none"\n')
    with agent_process("--store", str(tmp_path / "store"), "--config", str(config)) as (proc, target), \
            AgentClient(target) as client:
        sha = client.upload(tiny_tflite).sha256
        stub = agent_pb2_grpc.AgentStub(client._channel)
        call = stub.Benchmark.future(_gated_request(sha, cooldown=60, timeout=120), timeout=150)
        assert _wait_depth(client, 1, 5)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM did not end the agent while it waited for the board to cool")
        assert code == 0
        assert call.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
