"""Bad input never takes the agent down: malformed artifacts, crashes and hangs of the runtime worker."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import grpc
import numpy as np
import pytest

from device_agent.config import AgentConfig
from device_agent.server import create_server, stop_server
from host.devices.client import AgentClient
from host.devices.results import BenchPolicy, BenchSpec
from host.errors import BenchmarkError
from protos.agent.v1 import agent_pb2 as pb
from protos.agent.v1 import agent_pb2_grpc
from tests.fixtures.agent import running_server
from tests.fixtures.tflite_builder import conv_net

pytestmark = pytest.mark.integration
ONE_RUN = BenchPolicy(warmup_runs=0, warmup_seconds=0, min_runs=1, min_seconds=0, max_runs=1, max_seconds=0)
# Codes a malformed artifact may legitimately produce; UNKNOWN / UNAVAILABLE would mean the daemon broke.
BAD_INPUT_CODES = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "INTERNAL"}


@pytest.fixture()
def small_agent(tmp_path):
    """A private agent with an 8 MiB upload cap and a one-slot queue."""
    config = AgentConfig(port=0, store_dir=tmp_path / "store", max_artifact_bytes=8 * 2**20,
                         store_capacity_bytes=64 * 2**20, queue_capacity=1, default_timeout_s=60.0)
    with running_server(config, grace=0.5) as (server, address):
        yield server, address


def _raw_upload(stub, data: bytes, sha: str | None = None, size: int | None = None):
    header = pb.ArtifactHeader(sha256=sha or hashlib.sha256(data).hexdigest(),
                               size_bytes=len(data) if size is None else size)
    chunks = [pb.ArtifactChunk(header=header)] + [pb.ArtifactChunk(data=data[i:i + 65536])
                                                  for i in range(0, len(data), 65536)]
    return stub.UploadArtifact(iter(chunks), timeout=30)


def _code(fn) -> str:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code().name
    except BenchmarkError as exc:
        return exc.code
    return "OK"


@pytest.mark.litert
@pytest.mark.slow
def test_200_malformed_artifacts_then_a_valid_benchmark(small_agent, tiny_tflite):
    server, target = small_agent
    good = tiny_tflite.read_bytes()
    rng = np.random.default_rng(0)
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 * 2**20)])
    stub = agent_pb2_grpc.AgentStub(channel)
    client = AgentClient.from_channel(channel, timeout=60)
    codes: dict[str, list[str]] = {}

    def record(label, fn):
        codes.setdefault(label, []).append(_code(fn))

    for _ in range(60):  # random bytes of random sizes
        blob = rng.bytes(int(rng.integers(0, 4096)))
        record("random", lambda b=blob: _raw_upload(stub, b))
    for _ in range(20):  # random bytes behind a valid file identifier
        blob = b"\x10\x00\x00\x00TFL3" + rng.bytes(int(rng.integers(8, 2048)))
        record("random-with-ident", lambda b=blob: client.benchmark(_raw_upload(stub, b).sha256,
                                                                   BenchSpec(policy=ONE_RUN)))
    for _ in range(30):  # truncated copies
        blob = good[: int(rng.integers(0, len(good) - 1))]
        record("truncated", lambda b=blob: client.benchmark(_raw_upload(stub, b).sha256, BenchSpec(policy=ONE_RUN)))
    for _ in range(20):  # hash mismatch
        record("hash-mismatch", lambda: _raw_upload(stub, good[:4096], sha=hashlib.sha256(rng.bytes(8)).hexdigest()))
    for size in (len(good) + 1, len(good) - 1, 0, 9 * 2**20, 2**40):  # wrong or oversize declared size
        record("declared-size", lambda s=size: _raw_upload(stub, good, size=s))
    record("oversize", lambda: _raw_upload(stub, good + rng.bytes(5 * 2**20)))
    for bad_sha in ("", "xyz", "A" * 64, "0" * 63, "0" * 64 + "\n", "0" * 2**20):
        record("bad-sha", lambda s=bad_sha: stub.HasArtifact(pb.HasArtifactRequest(sha256=s), timeout=10))
    record("no-header", lambda: stub.UploadArtifact(iter([pb.ArtifactChunk(data=b"abc")]), timeout=10))
    record("two-headers", lambda: stub.UploadArtifact(iter([pb.ArtifactChunk(header=pb.ArtifactHeader()),
                                                            pb.ArtifactChunk(header=pb.ArtifactHeader())]), timeout=10))
    sha_good = _raw_upload(stub, good).sha256
    for kw in ({"job_id": "j" * 2**20}, {"runtime": "r" * 2**20},
               {"inputs": [pb.Tensor(shape=[2**62, 4], dtype=pb.DTYPE_FLOAT32)]}):
        record("hostile-request", lambda k=kw: stub.Benchmark(pb.BenchmarkRequest(
            artifact_sha256=sha_good, policy=ONE_RUN.to_proto(), **k), timeout=30))
    small = conv_net(size=8, channels=(3, 4))[0]  # mostly structure, few weights: flips hit the flatbuffer
    for _ in range(60):  # bit flips past the header: these reach the runtime, which may fail or crash
        flipped = bytearray(small)
        for pos in rng.integers(8, len(small), size=int(rng.integers(1, 8))):
            flipped[pos] ^= 1 << int(rng.integers(0, 8))
        record("bit-flipped", lambda b=bytes(flipped): client.benchmark(_raw_upload(stub, b).sha256,
                                                                        BenchSpec(policy=ONE_RUN)))
    total = sum(len(v) for v in codes.values())
    assert total >= 200
    assert set(codes["hostile-request"]) == {"INVALID_ARGUMENT"}
    for label in ("random", "hash-mismatch", "declared-size", "bad-sha", "no-header", "two-headers"):
        assert set(codes[label]) <= {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}, (label, codes[label])
    assert codes["oversize"] == ["RESOURCE_EXHAUSTED"]
    assert "RESOURCE_EXHAUSTED" in codes["declared-size"]
    for label, got in codes.items():
        assert set(got) <= BAD_INPUT_CODES | {"OK"}, (label, got)
    # Some flips must have reached the runtime and been refused by it, not by the header check.
    assert "INVALID_ARGUMENT" in codes["bit-flipped"] and "OK" in codes["bit-flipped"]
    # The daemon is still up and a valid benchmark still works.
    m = client.ensure_and_benchmark(good, BenchSpec(policy=ONE_RUN))
    assert m.stats.count == 1 and client.health()
    client.close()


@pytest.mark.litert
def test_hanging_benchmark_hits_the_deadline_and_the_worker_restarts(small_agent, tiny_tflite):
    server, target = small_agent
    with AgentClient(target, timeout=30) as client:
        sha = client.upload(tiny_tflite).sha256
        client.benchmark(sha, BenchSpec(policy=ONE_RUN))
        first_pid = server.agent.workers.get("litert").pid
        # Many runs, no time cap: the policy itself cannot tell the agent it will take ~an hour.
        endless = BenchPolicy(warmup_runs=0, warmup_seconds=0, min_runs=10**7, min_seconds=0, max_runs=10**7,
                              max_seconds=0)
        with pytest.raises(BenchmarkError) as err:
            client.benchmark(sha, BenchSpec(policy=endless, timeout_s=1.0))
        assert err.value.code == "DEADLINE_EXCEEDED"
        assert "timeout" in err.value.message and "default_timeout_s" in err.value.message
        m = client.benchmark(sha, BenchSpec(policy=ONE_RUN))
        assert m.stats.count == 1
        assert server.agent.workers.get("litert").pid not in (None, first_pid)


@pytest.mark.litert
def test_worker_killed_mid_benchmark_is_reported_and_replaced(small_agent, tiny_tflite):
    server, target = small_agent
    with AgentClient(target, timeout=30) as client:
        sha = client.upload(tiny_tflite).sha256
        client.benchmark(sha, BenchSpec(policy=ONE_RUN))
        pid = server.agent.workers.get("litert").pid
        long = BenchPolicy(warmup_runs=0, warmup_seconds=0, min_runs=1, min_seconds=30, max_runs=10**7)
        errors: list[BenchmarkError] = []

        def run():
            try:
                client.benchmark(sha, BenchSpec(policy=long, timeout_s=60))
            except BenchmarkError as exc:
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        thread.join(30)
        # An external kill is no crash of the runtime and says nothing about the artifact.
        assert errors and errors[0].code == "INTERNAL", errors
        assert "killed by signal 9 (SIGKILL)" in errors[0].message and "corrupt" not in errors[0].message
        assert client.benchmark(sha, BenchSpec(policy=ONE_RUN)).stats.count == 1
        assert server.agent.workers.get("litert").restarts >= 1


@pytest.mark.litert
def test_full_queue_answers_resource_exhausted(small_agent, tiny_tflite):
    server, target = small_agent
    with AgentClient(target, timeout=30) as client:
        sha = client.upload(tiny_tflite).sha256
        client.benchmark(sha, BenchSpec(policy=ONE_RUN))  # worker started
        busy = BenchPolicy(warmup_runs=0, warmup_seconds=0, min_runs=1, min_seconds=1.5, max_runs=10**7)
        thread = threading.Thread(target=lambda: client.benchmark(sha, BenchSpec(policy=busy)))
        thread.start()
        deadline = time.monotonic() + 10
        while client.get_info().queue_depth < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(BenchmarkError) as err:
            client.benchmark(sha, BenchSpec(policy=ONE_RUN))
        thread.join()
        assert err.value.code == "RESOURCE_EXHAUSTED" and "queue" in err.value.message
        assert client.benchmark(sha, BenchSpec(policy=ONE_RUN)).stats.count == 1


@pytest.mark.executorch
def test_bit_flipped_programs_are_refused_by_executorch(agent_server, tiny_pte):
    good = tiny_pte.read_bytes()
    rng = np.random.default_rng(1)
    codes = []
    with AgentClient(agent_server, timeout=60) as client:
        for _ in range(10):
            flipped = bytearray(good)
            for pos in rng.integers(8, 4096, size=int(rng.integers(1, 8))):  # the program's flatbuffer
                flipped[pos] ^= 1 << int(rng.integers(0, 8))
            codes.append(_code(lambda b=bytes(flipped): client.ensure_and_benchmark(b, BenchSpec(policy=ONE_RUN))))
        assert set(codes) <= BAD_INPUT_CODES | {"OK"}
        assert codes.count("INVALID_ARGUMENT") >= 3
        assert client.ensure_and_benchmark(good, BenchSpec(policy=ONE_RUN)).stats.count == 1


MIB = 2**20
FLOOD_JOBS = 40
FLOOD_RSS_BOUND = 48 * MIB  # 40 x 4 MiB job ids kept by the daemon would be 160 MiB at the very least


def _hostile_requests(sha: str) -> dict[str, list]:
    """Label -> requests for Benchmark/HasArtifact/UploadArtifact that a hostile or broken client may send."""
    policy = ONE_RUN.to_proto()
    spec = pb.Tensor(shape=[1, 40, 40, 3], dtype=pb.DTYPE_FLOAT32)
    return {
        "long-runtime": [pb.BenchmarkRequest(artifact_sha256=sha, policy=policy, runtime="r" * 4 * MIB)],
        "long-hash": [pb.BenchmarkRequest(artifact_sha256="a" * 10 * MIB, policy=policy),
                      pb.HasArtifactRequest(sha256="a" * 10 * MIB)],
        "newline-hash": [pb.BenchmarkRequest(artifact_sha256=sha + "\n", policy=policy),
                         pb.HasArtifactRequest(sha256=sha + "\n")],
        "overflow-shape": [pb.BenchmarkRequest(artifact_sha256=sha, policy=policy,
                                               inputs=[pb.Tensor(shape=[2**62, 4], dtype=pb.DTYPE_FLOAT32)]),
                           pb.BenchmarkRequest(artifact_sha256=sha, policy=policy,
                                               inputs=[pb.Tensor(shape=[2**31, 2**31, 4], dtype=pb.DTYPE_INT8)]),
                           pb.BenchmarkRequest(artifact_sha256=sha, policy=policy, inputs=[spec] * 65)],
        "short-data": [pb.BenchmarkRequest(artifact_sha256=sha, policy=policy, inputs=[
            pb.Tensor(shape=[1, 40, 40, 3], dtype=pb.DTYPE_FLOAT32, data=b"\0" * 12)])],
        "long-upload-name": [[pb.ArtifactChunk(header=pb.ArtifactHeader(sha256=sha, size_bytes=100,
                                                                         name="n" * 4 * MIB))]],
    }


@pytest.mark.litert
def test_hostile_strings_shapes_and_hashes_are_refused_and_the_daemon_stays_small(tiny_tflite):
    """Long strings, a wrapping shape and a hash with a newline: INVALID_ARGUMENT with a short message, short
    log lines, and 40 benchmarks with 4 MiB job ids do not grow the daemon (a real ``sculpt-agent serve``)."""
    import psutil

    from host.devices.local import LocalAgent

    with LocalAgent() as agent:
        daemon = psutil.Process(agent.pid)
        channel = grpc.insecure_channel(agent.target, options=[("grpc.max_send_message_length", 64 * MIB)])
        stub = agent_pb2_grpc.AgentStub(channel)
        client = AgentClient.from_channel(channel, timeout=30)
        sha = client.upload(tiny_tflite).sha256
        client.benchmark(sha, BenchSpec(policy=ONE_RUN))  # the worker runs; what follows must not reach it
        calls = {pb.BenchmarkRequest: stub.Benchmark, pb.HasArtifactRequest: stub.HasArtifact}
        details: dict[str, list[tuple[str, str]]] = {}
        for label, requests in _hostile_requests(sha).items():
            for request in requests:
                try:
                    if isinstance(request, list):
                        stub.UploadArtifact(iter(request), timeout=30)
                    else:
                        calls[type(request)](request, timeout=30)
                    details.setdefault(label, []).append(("OK", ""))
                except grpc.RpcError as exc:
                    details.setdefault(label, []).append((exc.code().name, exc.details() or ""))
        for label, got in details.items():
            assert {code for code, _ in got} == {"INVALID_ARGUMENT"}, (label, got)
            assert all(len(text) < 500 for _, text in got), (label, [len(t) for _, t in got])

        def flood(n: int, tag: str) -> list[str]:
            return [_code(lambda i=i: stub.Benchmark(pb.BenchmarkRequest(
                artifact_sha256=sha, policy=ONE_RUN.to_proto(), job_id=f"{tag}{i}-" + "j" * 4 * MIB), timeout=30))
                for i in range(n)]

        flood(5, "warm")  # gRPC's buffers and the allocator reach their steady size first
        before = daemon.memory_info().rss
        codes = flood(FLOOD_JOBS, "flood")
        grown = daemon.memory_info().rss - before
        assert set(codes) == {"INVALID_ARGUMENT"}
        assert grown < FLOOD_RSS_BOUND, f"the daemon grew by {grown / MIB:.0f} MiB"
        assert client.benchmark(sha, BenchSpec(policy=ONE_RUN)).stats.count == 1  # still serving
        client.close()
        lines = agent.log_tail().splitlines()
    assert lines and max(len(line) for line in lines) < 4096  # the echoes in the log are cut too


def test_stalled_uploads_count_against_the_store_cap(tmp_path, tiny_tflite):
    """Uploads that send a header and stop hold their temporary files: they count, so they cannot fill the disk."""
    config = AgentConfig(port=0, store_dir=tmp_path / "store", max_artifact_bytes=8 * MIB,
                         store_capacity_bytes=16 * MIB)
    release = threading.Event()
    server, port = create_server(config)
    server.start()
    try:
        stub = agent_pb2_grpc.AgentStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

        def stalled():
            yield pb.ArtifactChunk(header=pb.ArtifactHeader(sha256="ab" * 32, size_bytes=8 * MIB))
            yield pb.ArtifactChunk(data=b"\x10\x00\x00\x00TFL3" + b"\0" * 100)
            release.wait(20)

        calls = [stub.UploadArtifact.future(stalled(), timeout=30) for _ in range(2)]
        tmp = tmp_path / "store" / "tmp"
        deadline = time.monotonic() + 10
        while len(list(tmp.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _code(lambda: _raw_upload(stub, tiny_tflite.read_bytes())) == "RESOURCE_EXHAUSTED"
        release.set()
        assert [c.exception().code().name for c in calls] == ["INVALID_ARGUMENT"] * 2  # ended short
        assert not any(tmp.iterdir())
        assert _raw_upload(stub, tiny_tflite.read_bytes()).size_bytes == tiny_tflite.stat().st_size
    finally:
        release.set()
        stop_server(server, grace=0.5)
