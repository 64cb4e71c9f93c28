"""A local Redis Cluster for the benchmarks: masters on free ports splitting the 16384 slots evenly.

The same recipe as the test suite's `tests/clusterkit.py` (`local_cluster`), which the bench does
not import (it needs pytest and the tests' helpers): each node is an `rstream.embedded.EmbeddedServer`
started with `--cluster-enabled yes` on a port whose cluster-bus port (+10000) is free too; the
nodes take their share of the slots with CLUSTER ADDSLOTS, meet the first node with CLUSTER MEET,
and the cluster is ready once every node says `cluster_state:ok` and knows every other node.
"""
from __future__ import annotations

import contextlib
import random
import socket
import time
from typing import Callable, Dict, Iterator, List

import redis
from redis.cluster import RedisCluster

from bench.common import BenchError
from rstream.embedded import EmbeddedServer
from rstream.errors import RStreamError

SLOTS = 16384
READY_TIMEOUT_S = 30.0


def cluster_port() -> int:
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
    raise BenchError("no free port pair for a cluster node")


def start_node(binary: str) -> EmbeddedServer:
    """One cluster-enabled server on a free port pair, not yet part of any cluster."""
    for _ in range(5):
        node = EmbeddedServer(binary, port=cluster_port(),
                              args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"))
        try:
            return node.start()
        except RStreamError:  # the port was taken in between: try another
            node.close()
    raise BenchError("could not start a cluster node")


def slot_ranges(nodes: int) -> List[range]:
    """The slots of each master: an even split, the last one taking the remainder."""
    step = SLOTS // nodes
    return [range(n * step, SLOTS if n == nodes - 1 else (n + 1) * step) for n in range(nodes)]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"local cluster: {what} within {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


def cluster_info(client: redis.Redis) -> bytes:
    return bytes(client.execute_command("CLUSTER", "INFO"))


@contextlib.contextmanager
def local_cluster(binary: str, nodes: int = 3) -> Iterator[RedisCluster]:
    """`nodes` masters (no replicas) of `binary`, joined; a `RedisCluster` client to them. The
    nodes are closed on exit."""
    servers: List[EmbeddedServer] = []
    try:
        for _ in range(nodes):
            servers.append(start_node(binary))
        clients = [server.client() for server in servers]
        for client, slots in zip(clients, slot_ranges(nodes)):
            client.execute_command("CLUSTER", "ADDSLOTS", *slots)
        for client in clients[1:]:
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", servers[0].port)
        known = f"cluster_known_nodes:{nodes}".encode()
        wait_for(lambda: all(b"cluster_state:ok" in cluster_info(c) and known in cluster_info(c)
                             for c in clients), "the nodes did not all agree the cluster is ok")
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


def streams_on_every_master(cluster: RedisCluster, prefix: str, per_master: int) -> List[str]:
    """`per_master` stream names on each master, in round-robin order of the masters (hash tags
    chosen so that their slots land there): `prefix{tag}`."""
    masters = len(cluster.get_primaries())
    by_node: Dict[str, List[str]] = {}
    for n in range(10_000):
        name = f"{prefix}{{t{n}}}"
        names = by_node.setdefault(cluster.get_node_from_key(name).name, [])
        if len(names) < per_master:
            names.append(name)
        if len(by_node) == masters and all(len(v) == per_master for v in by_node.values()):
            return [group[i] for i in range(per_master) for group in by_node.values()]
    raise BenchError("no hash tags found that cover every master")
