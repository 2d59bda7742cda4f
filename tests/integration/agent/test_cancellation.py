"""A benchmark nobody waits for any more gives the device back at once; time limits are capped by the agent."""

from __future__ import annotations

import os
import signal
import time

import grpc
import psutil
import pytest

from device_agent.config import AgentConfig
from host.devices.client import AgentClient
from host.devices.results import BenchPolicy, BenchSpec
from host.errors import BenchmarkError
from protos.agent.v1 import agent_pb2 as pb
from protos.agent.v1 import agent_pb2_grpc
from tests.fixtures.agent import running_agent, running_server

pytestmark = [pytest.mark.integration, pytest.mark.litert]
STOP_BOUND_S = 5.0  # the worker's cancel grace (2 s) plus slack for a loaded machine
ONE_RUN = BenchPolicy(warmup_runs=0, warmup_seconds=0, min_runs=1, min_seconds=0, max_runs=1, max_seconds=0)


@pytest.fixture()
def agent(tmp_path):
    """(server, target) of an in-process agent on loopback."""
    config = AgentConfig(port=0, store_dir=tmp_path / "store", default_timeout_s=60.0)
    with running_server(config, grace=0.5) as (server, address):
        yield server, address


def _long_request(sha: str, seconds: float = 30.0) -> pb.BenchmarkRequest:
    return pb.BenchmarkRequest(artifact_sha256=sha, timeout_seconds=seconds + 30, policy=pb.BenchPolicy(
        warmup_runs=0, min_runs=1, min_seconds=seconds, max_runs=10_000_000, max_seconds=0))


def _wait(predicate, bound: float) -> bool:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _start_long_job(client: AgentClient, sha: str, server):
    stub = agent_pb2_grpc.AgentStub(client._channel)
    call = stub.Benchmark.future(_long_request(sha), timeout=90)
    assert _wait(lambda: client.get_info().queue_depth == 1, 5)
    time.sleep(0.5)  # into the timed loop
    return call


def test_cancelling_a_running_benchmark_frees_the_device_and_keeps_the_worker(agent, tiny_tflite):
    server, target = agent
    with AgentClient(target) as client:
        sha = client.upload(tiny_tflite).sha256
        client.benchmark(sha, BenchSpec(policy=ONE_RUN))
        worker = server.agent.workers.get("litert")
        pid = worker.pid
        call = _start_long_job(client, sha, server)
        call.cancel()
        # Before the fix the 30 s job held the device to its end (or its timeout).
        assert _wait(lambda: client.get_info().queue_depth == 0, 3), "the cancelled job kept the device"
        assert call.code() == grpc.StatusCode.CANCELLED
        # The worker stopped between two inferences and stays warm: no restart, the program still loaded.
        m = client.benchmark(sha, BenchSpec(policy=ONE_RUN))
        assert worker.pid == pid and worker.restarts == 0 and m.load_cached


def test_a_worker_that_does_not_answer_the_cancel_is_killed(agent, tiny_tflite):
    server, target = agent
    with AgentClient(target) as client:
        sha = client.upload(tiny_tflite).sha256
        client.benchmark(sha, BenchSpec(policy=ONE_RUN))
        pid = server.agent.workers.get("litert").pid
        call = _start_long_job(client, sha, server)
        os.kill(pid, signal.SIGSTOP)  # as if stuck inside one inference
        try:
            call.cancel()
            assert _wait(lambda: client.get_info().queue_depth == 0, STOP_BOUND_S)
            assert _wait(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                         5)
        finally:
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGCONT)
        assert client.benchmark(sha, BenchSpec(policy=ONE_RUN)).stats.count == 1
        assert server.agent.workers.get("litert").pid != pid


def test_time_limits_are_capped_by_the_agent_config(tmp_path, tiny_tflite):
    config = AgentConfig(port=0, store_dir=tmp_path / "store", default_timeout_s=20.0, max_timeout_s=30.0)
    with running_agent(config) as target, AgentClient(target) as client:
        sha = client.upload(tiny_tflite).sha256
        stub = agent_pb2_grpc.AgentStub(client._channel)
        for request, words in (
            (pb.BenchmarkRequest(artifact_sha256=sha, timeout_seconds=1e6), "max_timeout_s"),
            (pb.BenchmarkRequest(artifact_sha256=sha, policy=pb.BenchPolicy(min_runs=1, min_seconds=1e6)),
             "min_seconds"),
            (pb.BenchmarkRequest(artifact_sha256=sha, policy=pb.BenchPolicy(
                min_runs=1, warmup_seconds=25, min_seconds=0)), "timeout"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                stub.Benchmark(request, timeout=5)  # refused at once: a 5 s deadline is plenty
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
            assert words in err.value.details()
        with pytest.raises(BenchmarkError):  # the host's client says the same
            client.benchmark(sha, BenchSpec(timeout_s=1e6))
        assert client.get_info().queue_depth == 0
