"""A local Redis Cluster for tests: masters on free ports splitting the 16384 slots evenly.

`local_cluster()` starts the nodes, joins them with CLUSTER MEET, waits until every node says
the cluster is ok, and yields a `RedisCluster` client; the nodes are closed on exit.
"""
from __future__ import annotations

import contextlib
import random
import socket
from typing import Iterator, List

import redis
from redis.cluster import RedisCluster

import rstream
from helpers import wait_until
from rstream.embedded import EmbeddedServer, find_server_binary

SLOTS = 16384
NODES = 3


def _cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too, below the 55535 cap."""
    for _ in range(200):
        port = random.randrange(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise AssertionError("no free port pair for a cluster node")


def start_node() -> EmbeddedServer:
    """One cluster-enabled server on a free port pair, not yet part of any cluster."""
    for _ in range(5):
        node = EmbeddedServer(find_server_binary(), port=_cluster_port(),
                              args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"))
        try:
            node.start()
            return node
        except rstream.RStreamError:  # the port was taken in between: try another
            node.close()
    raise AssertionError("could not start a cluster node")


def cluster_info(client: redis.Redis) -> bytes:
    return bytes(client.execute_command("CLUSTER", "INFO"))


@contextlib.contextmanager
def local_cluster(nodes: int = NODES) -> Iterator[RedisCluster]:
    """`nodes` masters splitting the slots evenly, joined with CLUSTER MEET; a client to them."""
    servers: List[EmbeddedServer] = []
    try:
        for _ in range(nodes):
            servers.append(start_node())
        clients = [server.client() for server in servers]
        step = SLOTS // nodes
        for n, client in enumerate(clients):
            last = SLOTS - 1 if n == nodes - 1 else (n + 1) * step - 1
            client.execute_command("CLUSTER", "ADDSLOTS", *range(n * step, last + 1))
        for client in clients[1:]:
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", servers[0].port)
        wait_until(lambda: all(b"cluster_state:ok" in cluster_info(c) for c in clients), 30,
                   message="the local cluster did not come up")
        # Every node must know every other before a client maps the slots.
        known = f"cluster_known_nodes:{nodes}".encode()
        wait_until(lambda: all(known in cluster_info(c) for c in clients), 30,
                   message="the nodes do not all know each other")
        for client in clients:
            client.close()
        cluster = RedisCluster(host="127.0.0.1", port=servers[0].port)
        try:
            yield cluster
        finally:
            cluster.close()
    finally:
        for server in servers:
            server.close()
