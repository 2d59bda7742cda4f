"""A real multi-node Ray cluster on this machine (Ray's own test utility: a head and worker nodes, each its own
raylet and object store, on loopback), shared by the tests of this folder."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package")
def ray_cluster():
    """(cluster, address): a head node and one worker node with one CPU each; the test process is its driver."""
    ray = pytest.importorskip("ray", reason="the [cluster] extra (ray[default]) is part of make setup")
    from ray.cluster_utils import Cluster

    # a worker node killed without grace is declared dead after health_check_failure_threshold missed checks,
    # health_check_period_ms apart (Ray's defaults: 5 x 3 s); the tests kill nodes, so they are checked faster
    health = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "_system_config": health})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster, cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()
