"""A latency search on a pool of three real agents on loopback (each candidate and its dense pair on whichever
board is free, several at once) with candidates scored and exported on a real two-node Ray cluster; one agent
and one Ray worker node killed mid-search: the search completes, every candidate is journaled once, the report
shows each board's share. And a pool given by a fleet file's tag."""

from __future__ import annotations

import contextlib
import threading

import pytest

from host.kinds import Phase, Stage
from tests.fixtures.agent import agent_process
from tests.integration.search.conftest import tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def three_agents(tmp_path):
    with contextlib.ExitStack() as stack:
        agents = []
        for i in range(3):
            store = tmp_path / f"store{i}"
            store.mkdir()
            agents.append(stack.enter_context(agent_process("--store", str(store), "--ephemeral-store")))
        yield agents


def test_pool_search_survives_a_dead_agent_and_a_dead_worker_node(ray_cluster, three_agents, tmp_path,
                                                                   trained_resnet20_mnist):
    from host.search.journal import Journal, plan_hash
    from host.search.runner import SearchRunner

    cluster, address = ray_cluster
    doomed = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    victim, victim_address = three_agents[0]
    pool = "boards=" + ",".join(f"grpc://{addr}" for _, addr in three_agents)
    killed = threading.Event()

    def progress(p):
        if p.stage == Stage.SEARCH and p.done >= 1 and not killed.is_set():
            killed.set()
            victim.kill()
            cluster.remove_node(doomed, allow_graceful=False)

    config = tiny_config(tmp_path / "run", trained_resnet20_mnist, budget=5, devices=(), device_pools=(pool,),
                         final_top=0)
    result = SearchRunner.start(config, progress=progress, ray=address).run()
    assert killed.is_set() and result.candidates_evaluated == 5
    assert not (config.out / ".work").exists()  # the artifacts the workers sent back were cleared
    assert set(result.pools) == {"boards"} and len(result.pools["boards"]["boards"]) == 3
    journal = Journal.open(config.out)
    try:
        rows = [r for r in journal.candidates(Phase.SEARCH) if not r.reused]
        spread = journal.get_value("pool_spread:boards")
    finally:
        journal.close()
    assert len(rows) == 5 and len({plan_hash(r.plan) for r in rows}) == 5  # nothing lost, nothing twice
    assert all(r.valid for r in rows), [r.reason for r in rows if not r.valid]
    measured = [r for r in rows if r.measurement]
    assert measured and all(set(r.measurement) == {"boards"} for r in measured)
    # the spread names every board; the killed one left the pool, the others kept measuring
    assert len(spread["boards"]) == 3
    live = [n for board, (n, _ms) in spread["boards"].items() if victim_address not in board]
    assert len(live) == 2 and sum(live) > 0


def test_a_pool_from_a_fleet_file_tag_opens_every_tagged_board(three_agents, tmp_path):
    from host.search.devices import PoolSpec, open_devices

    fleet = tmp_path / "fleet.toml"
    fleet.write_text("".join(f'[[device]]\nname = "board{i}"\naddress = "grpc://{addr}"\ntags = ["{tag}"]\n'
                             for i, ((_, addr), tag) in enumerate(zip(three_agents, ("lab", "home", "lab"),
                                                                     strict=True))))
    with open_devices((), fleet, [PoolSpec.parse("lab=tag:lab")]) as devices:
        (pool,) = devices
        assert pool.name == "lab" and pool.boards == 2
        assert sorted(h.label for h in pool.client.pool.handles) == ["board0", "board2"]
        assert pool.fingerprint.startswith("pool-")
