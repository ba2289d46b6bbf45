"""Fixtures for the cluster tests: a real two-node Ray cluster on this machine (see ray_nodes.py)."""

import pytest
from ray_nodes import TwoNodeCluster, two_node_cluster


@pytest.fixture
def two_node_ray_cluster() -> TwoNodeCluster:
    """A head plus a second node (custom resource `node2: 1`) on free ports; stopped, and checked to leave
    no process behind, when the test ends. Connect drivers from a subprocess with `cluster.driver_env()`."""
    with two_node_cluster() as cluster:
        yield cluster
