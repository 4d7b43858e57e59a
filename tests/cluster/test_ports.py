"""The ports the test servers start on: below the kernel's ephemeral range (with a cluster node's
bus port, +10000, too), and a first start that finds its port taken moves to another one
instead of failing ("redis-server did not start on port N")."""

from __future__ import annotations

import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.support.cluster import ClusterNode
from tests.support.proxy import CuttableProxy
from tests.support.servers import BUS_OFFSET, RedisServer, _ephemeral_low, free_port


@contextmanager
def taken(port: int, *, listening: bool = True):
    """`port` taken by another server, or by a client socket (bound, not listening), as if
    they got there after free_port found it free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        if listening:
            sock.listen(1)
        yield


def test_picked_ports_and_bus_ports_are_below_the_ephemeral_range():
    for _ in range(200):
        assert 10000 <= free_port() and free_port((0, BUS_OFFSET)) + BUS_OFFSET < _ephemeral_low()


def test_a_redis_server_whose_port_was_taken_starts_on_another_and_restarts_on_its_own():
    server = RedisServer()
    first = server.port
    with taken(first):
        server.start()
    try:
        assert server.port != first and server.port < _ephemeral_low()
        assert redis.Redis(port=server.port).ping()
        moved = server.port
        server.restart()  # a restart keeps its port: its clients know it
        assert server.port == moved and redis.Redis(port=moved).ping()
    finally:
        server.stop()


def test_a_cluster_node_whose_bus_port_was_taken_starts_on_another_pair():
    base = Path(tempfile.mkdtemp(prefix="oe-ports-"))
    node = ClusterNode(base)
    first = node.port
    with taken(first + BUS_OFFSET, listening=False):
        node.start()
    try:
        assert node.port != first and node.port + BUS_OFFSET < _ephemeral_low()
        assert node.data_dir == str(base / str(node.port))
        assert node.client().cluster("info")["cluster_state"] == "fail"  # cluster mode, not joined yet
    finally:
        node.stop()


def test_a_port_given_by_the_caller_is_never_moved():
    port = free_port()
    server = RedisServer(port)
    with taken(port):
        try:
            server.start(timeout=5)
        except RuntimeError as error:
            assert "Address already in use" in str(error)
        else:
            server.stop()
            raise AssertionError("started elsewhere than the port it was given")
    assert server.port == port


def test_a_proxy_whose_port_was_taken_listens_on_another():
    proxy = CuttableProxy("127.0.0.1", 9)
    first = proxy.port
    with taken(first):
        proxy.start()
    try:
        assert proxy.port != first
        proxy.cut()
        proxy.restore()  # on the same port again
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()
    finally:
        proxy.stop()


def test_a_port_taken_after_the_check_is_found_out_by_the_start():
    server = RedisServer()
    server._ports_free = lambda: True  # the check said free; the port was taken right after it
    first = server.port
    with taken(first, listening=False):
        server.start()
    try:
        assert server.port != first
        assert redis.Redis(port=server.port).info("server")["process_id"] == server.process.pid
    finally:
        server.stop()


def test_no_port_is_given_twice_though_none_was_bound_yet():
    # A Stack picks gunicorn's port and its redis-server's before starting either.
    given = [free_port() for _ in range(300)]
    assert len(set(given)) == len(given)


def test_a_stack_whose_web_port_was_taken_serves_on_another():
    from tests.support.servers import require_postgres
    from tests.support.stack import Stack

    require_postgres()
    stack = Stack(web_concurrency=1)
    first = stack.port
    with taken(first):  # gunicorn refuses the port at start (config/gunicorn.py)
        stack.start(workers=0)
    try:
        assert stack.port != first
        assert stack.session().get(f"{stack.url}/readyz").status_code == 200
    finally:
        stack.stop()
