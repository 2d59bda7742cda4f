"""Searches whose candidates are scored as Ray tasks on a real two-node cluster (the driver keeps the journal):
one with a worker node killed mid-search completes with every candidate journaled exactly once, and a run
started without a cluster resumes on one. The search that also exports on the cluster and measures on real
agents is in test_board_pool.py."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from host.kinds import Phase, Stage
from tests.integration.search.conftest import tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _journal_rows(run_dir):
    from host.search.journal import Journal, plan_hash

    journal = Journal.open(run_dir)
    try:
        rows = [r for r in journal.candidates(Phase.SEARCH) if not r.reused]
        return rows, [plan_hash(r.plan) for r in rows]
    finally:
        journal.close()


def test_a_worker_node_killed_mid_search_loses_nothing(ray_cluster, tmp_path, trained_resnet20_mnist):
    from host.search.runner import SearchRunner

    cluster, address = ray_cluster
    doomed = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    killed = threading.Event()

    def progress(p):
        # on the first search result, while the rest of its batch is still being scored on the three nodes
        if p.stage == Stage.SEARCH and p.done >= 1 and not killed.is_set():
            killed.set()
            cluster.remove_node(doomed, allow_graceful=False)

    # the MAC objective: every candidate is only scored (on the cluster), so the test is about the tasks
    config = tiny_config(tmp_path / "run", trained_resnet20_mnist, budget=6, objective="flops", target=None,
                         devices=(), final_top=0)
    result = SearchRunner.start(config, progress=progress, ray=address).run()
    assert killed.is_set()
    rows, hashes = _journal_rows(config.out)
    assert len(rows) == 6 and len(set(hashes)) == 6  # nothing lost, nothing journaled twice
    # the tasks on the dead node ran again elsewhere (Ray's retries): no candidate was given up
    assert all(r.valid for r in rows), [r.reason for r in rows if not r.valid]
    assert result.candidates_evaluated == 6


def test_a_run_started_without_a_cluster_resumes_on_one(ray_cluster, tmp_path, trained_resnet20_mnist):
    """The driver is what a kill takes down; --resume carries on, here on the cluster (PPO's saved learner had
    one env, now it gets one per CPU)."""
    from host.search.runner import SearchRunner

    _cluster, address = ray_cluster
    config = tiny_config(tmp_path / "run", trained_resnet20_mnist, budget=3, objective="flops", target=None,
                         devices=(), final_top=0, ppo=replace(tiny_config(tmp_path, "x").ppo, n_steps=2,
                                                              batch_size=2, family_seeds=False))
    SearchRunner.start(config).run()
    assert (config.out / "ppo.zip").is_file()
    result = SearchRunner.resume(config.out, budget=6, ray=address).run()
    rows, hashes = _journal_rows(config.out)
    assert result.candidates_evaluated == 6 and len(rows) == 6 and len(set(hashes)) == 6
