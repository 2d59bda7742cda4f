"""AgentClient: typed conversions and the mapping of gRPC status codes to host.errors, on real channels."""

from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from host.devices.client import AgentClient
from host.devices.results import BenchPolicy, BenchSpec, Energy, InputSpec, Measurement, tensor_from_proto
from host.errors import BenchmarkError, DeviceAuthError, DeviceUnreachableError, ProtocolMismatchError
from protos.agent.v1 import agent_pb2 as pb
from protos.agent.v1 import agent_pb2_grpc
from tests.helpers import free_port


class ScriptedAgent(agent_pb2_grpc.AgentServicer):
    """A real gRPC servicer answering with fixed replies or status codes."""

    def __init__(self, protocol_version=1, benchmark_code=None, info_code=None):
        self.protocol_version = protocol_version
        self.benchmark_code = benchmark_code
        self.info_code = info_code
        self.requests = []

    def GetInfo(self, request, context):  # noqa: N802
        if self.info_code:
            context.abort(self.info_code, "scripted failure")
        return pb.DeviceInfo(agent_version="9.9.9", protocol_version=self.protocol_version, cpu_count=4,
                             temperatures=[pb.Temperature(zone="cpu", celsius=48.5)],
                             runtimes=[pb.RuntimeInfo(name="litert", version="2.3.0", available=True,
                                                      artifact_kind=pb.ARTIFACT_KIND_TFLITE)])

    def Benchmark(self, request, context):  # noqa: N802
        self.requests.append(request)
        if self.benchmark_code:
            context.abort(self.benchmark_code, "the agent's own words")
        out = np.arange(6, dtype=np.float32).reshape(2, 3)
        return pb.BenchmarkResult(
            job_id=request.job_id, artifact_sha256=request.artifact_sha256, runtime="litert", threads=2,
            latencies_ms=[1.0, 2.0, 3.0], stats=pb.LatencyStats(count=3, mean_ms=2.0, p50_ms=2.0),
            outputs=[pb.Tensor(shape=[2, 3], dtype=pb.DTYPE_FLOAT32, data=out.tobytes())],
            energy=pb.Energy(available=False, unavailable_reason="no meter"), load_cached=True)


@pytest.fixture()
def scripted():
    servers = []

    def start(servicer, with_agent=True):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        if with_agent:
            agent_pb2_grpc.add_AgentServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(0)


def test_unreachable_agent():
    with AgentClient(f"127.0.0.1:{free_port()}", timeout=2) as client:
        with pytest.raises(DeviceUnreachableError) as err:
            client.get_info()
        assert "sculpt-agent serve" in err.value.hint
        assert client.health() is False


def test_protocol_mismatch_names_the_upgrade(scripted):
    target = scripted(ScriptedAgent(protocol_version=2))
    with AgentClient(target) as client, pytest.raises(ProtocolMismatchError) as err:
        client.get_info()
    assert "v2" in err.value.message and "pip install -U" in err.value.hint


def test_missing_service_is_a_protocol_mismatch(scripted):
    target = scripted(None, with_agent=False)
    with AgentClient(target) as client:
        assert client.health()
        with pytest.raises(ProtocolMismatchError):
            client.get_info()


@pytest.mark.parametrize("code,error", [
    (grpc.StatusCode.UNAUTHENTICATED, DeviceAuthError), (grpc.StatusCode.PERMISSION_DENIED, DeviceAuthError),
    (grpc.StatusCode.UNAVAILABLE, DeviceUnreachableError),
])
def test_status_codes_to_errors(scripted, code, error):
    target = scripted(ScriptedAgent(info_code=code))
    with AgentClient(target) as client, pytest.raises(error):
        client.get_info()


@pytest.mark.parametrize("code", ["INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
                                  "FAILED_PRECONDITION", "INTERNAL"])
def test_benchmark_failures_keep_code_and_message(scripted, code):
    target = scripted(ScriptedAgent(benchmark_code=getattr(grpc.StatusCode, code)))
    with AgentClient(target) as client, pytest.raises(BenchmarkError) as err:
        client.benchmark("ab" * 32)
    assert err.value.code == code and "the agent's own words" in err.value.message


def test_benchmark_result_is_typed(scripted):
    servicer = ScriptedAgent()
    target = scripted(servicer)
    spec = BenchSpec(inputs=(np.ones((1, 3), np.float32), InputSpec((2, 2), "int8")), threads=2,
                     policy=BenchPolicy.final(), measure_energy=True)
    with AgentClient(target, token="t0k") as client:
        info = client.get_info()
        m = client.benchmark("ab" * 32, spec)
    assert info.temperatures == {"cpu": 48.5} and info.runtime("litert").artifact_kind == "tflite"
    assert isinstance(m, Measurement) and m.latencies_ms == (1.0, 2.0, 3.0) and m.p50_ms == 2.0
    assert m.load_cached and m.threads == 2
    np.testing.assert_array_equal(m.outputs[0], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert m.energy == Energy(False, unavailable_reason="no meter") and m.joules_per_inference is None
    req = servicer.requests[0]
    assert req.threads == 2 and req.measure_energy and req.policy.min_runs == 50 and req.policy.min_seconds == 1.0 and len(req.job_id) == 32
    assert list(req.inputs[1].shape) == [2, 2] and req.inputs[1].data == b"" and req.inputs[1].dtype == pb.DTYPE_INT8
    assert np.array_equal(tensor_from_proto(req.inputs[0]), np.ones((1, 3), np.float32))
    assert m.to_dict()["energy"]["joules_per_inference"] is None


def test_spec_defaults_are_the_agents_policy():
    spec = BenchSpec()
    assert spec.policy.min_runs == 50 and spec.policy.min_seconds == 1.0 and spec.timeout_s > 0
    assert spec.to_proto("a" * 64).job_id != spec.to_proto("a" * 64).job_id  # fresh idempotency key per call
    assert BenchSpec(job_id="fixed").to_proto("a" * 64).job_id == "fixed"
    with pytest.raises(ValueError, match="dtype"):
        BenchSpec(inputs=(np.ones(2, np.complex64),)).to_proto("a" * 64)


def test_rpc_deadline_covers_worker_timeout_gate_and_energy():
    plain = BenchSpec(timeout_s=100)
    assert plain.rpc_deadline_s(30) == 130
    gated = BenchSpec(timeout_s=100, measure_energy=True,
                      policy=BenchPolicy(max_temperature_c=70, cooldown_timeout_seconds=60))
    assert gated.rpc_deadline_s(30) == 100 + 60 + 5 + 30
