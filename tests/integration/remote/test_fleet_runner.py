"""Fleet runner, device pool and protocol checks against real agents on loopback ports."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from host.devices.address import parse_device
from host.devices.connect import ConnectOptions, connect
from host.devices.pool import DevicePool
from host.devices.results import BenchPolicy, BenchSpec
from host.devices.retry import RetryPolicy
from host.errors import DeviceUnreachableError, ProtocolMismatchError
from host.fleet.runner import BenchArtifact, FleetRunConfig, FleetRunner, FleetTarget, ResultLog
from protos.agent.v1 import agent_pb2, agent_pb2_grpc
from tests.helpers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.litert]

FAST_RETRY = ConnectOptions(retry=RetryPolicy(attempts=2, base_delay=0.05), timeout=10)
POLICY = BenchPolicy(warmup_runs=1, warmup_seconds=0.0, min_runs=5, min_seconds=0.01)


@pytest.fixture(scope="module")
def two_agents(tmp_path_factory):
    """Two in-process agents on loopback ports (two 'identical boards')."""
    from device_agent.config import AgentConfig
    from device_agent.server import create_server, stop_server

    servers, targets = [], []
    for i in range(2):
        config = AgentConfig(host="127.0.0.1", port=0, store_dir=tmp_path_factory.mktemp(f"store{i}"))
        server, port = create_server(config)
        server.start()
        servers.append(server)
        targets.append(f"grpc://127.0.0.1:{port}")
    yield targets
    for server in servers:
        stop_server(server, grace=0.5)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tests.fixtures.tflite_builder import conv_net

    d = tmp_path_factory.mktemp("models")
    paths = []
    for i, ch in enumerate([(3, 8, 8), (3, 8, 16)]):
        p = d / f"m{i}.tflite"
        p.write_bytes(conv_net(size=16, channels=ch)[0])
        paths.append(BenchArtifact.from_path(p))
    return paths


def _spec(target, artifact, job_id):
    return BenchSpec(policy=POLICY, job_id=job_id, threads=target.threads or 0)


def test_runner_records_results_offline_devices_and_resumes(two_agents, models, tmp_path):
    dead = f"grpc://127.0.0.1:{free_port()}"
    targets = [FleetTarget("a", parse_device(two_agents[0]), FAST_RETRY),
               FleetTarget("b", parse_device(two_agents[1]), FAST_RETRY, threads=1),
               FleetTarget("dead", parse_device(dead), FAST_RETRY),
               FleetTarget("pte-only", parse_device(two_agents[0]), FAST_RETRY, runtime="executorch")]
    events = []
    runner = FleetRunner(targets, models, _spec, tmp_path, FleetRunConfig(offline_after=1),
                         on_event=lambda d, what, p: events.append((d, what)))
    records = runner.run()
    by = {(r.device, r.artifact): r for r in records}
    assert len(records) == 8
    for dev in ("a", "b"):
        for m in models:
            r = by[(dev, m.name)]
            assert r.status == "ok" and r.p50_ms > 0 and r.runs >= 5 and r.fingerprint
    assert by[("b", models[0].name)].threads == 1
    assert by[("dead", models[0].name)].error_kind == "transient"
    assert by[("dead", models[0].name)].error_type == "DeviceUnreachableError"
    assert by[("dead", models[1].name)].error_kind == "offline"
    assert {by[("pte-only", m.name)].status for m in models} == {"skipped"}
    assert runner.offline == {"dead"}
    assert ("dead", "offline") in events

    # A crash mid-write leaves a torn line: it is ignored and nothing before it is lost.
    log = ResultLog(tmp_path / "results.jsonl")
    with log.path.open("a") as fh:
        fh.write('{"device": "a", "artif')
    assert len(log.read()) == 8

    # Resume: ok jobs are not run again; the rest are retried.
    events.clear()
    again = FleetRunner(targets[:3], models, _spec, tmp_path, FleetRunConfig(offline_after=1),
                        on_event=lambda d, what, p: events.append((d, what)))
    records2 = again.run()
    assert sum(1 for _, what in events if what == "skip-done") == 4
    assert sum(1 for _, what in events if what == "start") == 1  # only the dead device's first job
    assert {(r.device, r.artifact, r.p50_ms) for r in records2 if r.status == "ok"} == {
        (r.device, r.artifact, r.p50_ms) for r in records if r.status == "ok"}


def test_pool_spreads_work_and_routes_around_a_dead_device(two_agents, models):
    handles = [connect(parse_device(t), FAST_RETRY) for t in two_agents]
    try:
        pool = DevicePool(handles)
        assert len(set(pool.fingerprints().values())) == 1  # same machine: identical boards
        used = []

        def bench(handle, artifact):
            used.append(handle.label)
            return handle.benchmark_file(artifact.path, BenchSpec(policy=POLICY)).stats.p50_ms

        results = pool.map(bench, models * 3)
        assert all(isinstance(r, float) and r > 0 for r in results)
        assert set(used) == {h.label for h in handles}  # both boards took work

        dead = connect(parse_device(f"grpc://127.0.0.1:{free_port()}"), FAST_RETRY, eager=False)
        mixed = DevicePool([dead, handles[0]], offline_after=1)
        results = mixed.map(bench, models * 2)
        assert all(isinstance(r, float) for r in results), results
        assert mixed.offline == {dead.label}
        lonely = DevicePool([connect(parse_device(f"grpc://127.0.0.1:{free_port()}"), FAST_RETRY, eager=False)],
                            offline_after=1)
        with pytest.raises(DeviceUnreachableError):
            lonely.run(lambda h: h.get_info())
    finally:
        for h in handles:
            h.close()


class _FutureAgent(agent_pb2_grpc.AgentServicer):
    """An agent from the future: speaks protocol v2."""

    def GetInfo(self, request, context):
        return agent_pb2.DeviceInfo(agent_version="9.0.0", protocol_version=2)


def test_protocol_mismatch_names_the_upgrade():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    agent_pb2_grpc.add_AgentServicer_to_server(_FutureAgent(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with pytest.raises(ProtocolMismatchError) as err:
            connect(parse_device(f"grpc://127.0.0.1:{port}"), FAST_RETRY)
        assert "v2" in err.value.message and "upgrade the agent" in err.value.hint
    finally:
        server.stop(0)


def test_pool_open_connects_all_or_reports(two_agents):
    dead = f"grpc://127.0.0.1:{free_port()}"
    pool = DevicePool.open(two_agents, FAST_RETRY)
    try:
        assert len(pool.online()) == 2 and all(h.info.protocol_version == 1 for h in pool.handles)
    finally:
        pool.close()
    with pytest.raises(DeviceUnreachableError):
        DevicePool.open([*two_agents, dead], FAST_RETRY)
    partial = DevicePool.open([two_agents[0], dead], FAST_RETRY, require_all=False)
    try:
        assert [h.label for h in partial.handles] == [two_agents[0]]
    finally:
        partial.close()


def test_offline_needs_n_failures_in_a_row_and_a_success_resets_the_count(tmp_path):
    """``offline_after=2``: a dead board is marked offline at its second failure in a row, so its third job is
    not tried; a board that goes down, comes back, and goes down again is never marked offline (the job that
    worked in between reset the count). The board is a real agent stopped and restarted on one port between
    jobs, from the runner's own "start" event."""
    from device_agent.config import AgentConfig
    from device_agent.server import create_server, stop_server
    from tests.fixtures.tflite_builder import conv_net

    artifacts = []
    for i in range(4):
        path = tmp_path / f"m{i}.tflite"
        path.write_bytes(conv_net(size=16, channels=(3, 8, 8 * (i + 1)))[0])
        artifacts.append(BenchArtifact.from_path(path))
    port = free_port()
    config = AgentConfig(host="127.0.0.1", port=port, store_dir=tmp_path / "store")
    board = {"server": None}

    def set_board(up: bool) -> None:
        if board["server"] is not None:
            stop_server(board["server"], grace=0.2)
            board["server"] = None
        if up:
            board["server"], _ = create_server(config)
            board["server"].start()

    flaky_plan = iter([False, True, False, True])  # down, up, down, up: one job each

    def on_event(device, what, _payload):
        if device == "flaky" and what == "start":
            set_board(next(flaky_plan))

    dead = f"grpc://127.0.0.1:{free_port()}"
    targets = [FleetTarget("flaky", parse_device(f"grpc://127.0.0.1:{port}"), FAST_RETRY),
               FleetTarget("dead", parse_device(dead), FAST_RETRY)]
    try:
        runner = FleetRunner(targets, artifacts, _spec, tmp_path / "run", FleetRunConfig(offline_after=2),
                             on_event=on_event)
        records = runner.run()
    finally:
        set_board(False)
    by = {(r.device, r.artifact): r for r in records}
    flaky = [by[("flaky", a.name)] for a in artifacts]
    assert [r.status for r in flaky] == ["error", "ok", "error", "ok"]
    assert [r.error_kind for r in flaky[::2]] == ["transient", "transient"]
    dead_kinds = [by[("dead", a.name)].error_kind for a in artifacts]
    assert dead_kinds == ["transient", "transient", "offline", "offline"]
    assert runner.offline == {"dead"}
