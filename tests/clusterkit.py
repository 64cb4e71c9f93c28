"""A local Redis Cluster for tests: masters on free ports splitting the 16384 slots evenly.

`local_cluster()` starts the nodes, joins them with CLUSTER MEET, waits until every node says
the cluster is ok, and yields a `RedisCluster` client; the nodes are closed on exit.
`replicated_cluster()` gives each master a replica (`redis-cli --cluster create`) and can move
a slot between masters (`ReplicatedCluster.move_slot`) for resharding and failover tests.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
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


def start_node(*args: str) -> EmbeddedServer:
    """One cluster-enabled server on a free port pair, not yet part of any cluster; `args` go to
    the server's command line."""
    for _ in range(5):
        node = EmbeddedServer(find_server_binary(), port=_cluster_port(),
                              args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                    *args))
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


# -- A cluster with replicas, for resharding and failover tests -----------------------------------
def find_cli(binary: str) -> Optional[str]:
    """The redis-cli (or valkey-cli) next to `binary`, else /usr/bin/redis-cli, else None."""
    here = Path(binary).resolve().parent
    for candidate in (here / "redis-cli", here / "valkey-cli", Path("/usr/bin/redis-cli")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("redis-cli") or shutil.which("valkey-cli")


class ReplicatedCluster:
    """Masters with one replica each, made by `redis-cli --cluster create`; `client` is a
    `RedisCluster` on them. `node_timeout_ms` is short, so a killed master's replica takes over
    in a second or two."""

    def __init__(self, cli: str, servers: List[EmbeddedServer]) -> None:
        self.cli = cli
        self.servers = servers
        self.client = RedisCluster(host="127.0.0.1", port=servers[0].port)

    def direct(self, server: EmbeddedServer) -> redis.Redis:
        return server.client(socket_timeout=5)

    def live(self) -> List[EmbeddedServer]:
        return [s for s in self.servers if s.running()]

    def node_id(self, server: EmbeddedServer) -> str:
        with self.direct(server) as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def owner(self, slot: int) -> EmbeddedServer:
        """The master that owns `slot`, as the live nodes agree."""
        views = set()
        for server in self.live():
            with self.direct(server) as client:
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end):
                        views.add(int(master[1]))
        if len(views) != 1:
            raise AssertionError(f"the nodes disagree on who owns slot {slot}: {views}")
        [port] = views
        return next(s for s in self.servers if s.port == port)

    def masters(self) -> List[EmbeddedServer]:
        return [s for s in self.live() if self._role(s) == "master"]

    def _role(self, server: EmbeddedServer) -> str:
        with self.direct(server) as client:
            return str(client.info("replication")["role"])

    def move_slot(self, slot: int, target: EmbeddedServer) -> None:
        """Reshard one slot to `target`, as redis-cli --cluster reshard does: IMPORTING on the
        target, MIGRATING on the source, MIGRATE every key, then NODE on every master."""
        source = self.owner(slot)
        source_id, target_id = self.node_id(source), self.node_id(target)
        with self.direct(source) as src, self.direct(target) as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while True:
                keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
                if not keys:
                    break
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for master in self.masters():
            if master not in (source, target):
                with self.direct(master) as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        wait_until(lambda: self.owner(slot) is target, 10, message=f"slot {slot} did not move")

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok."""
        def ok() -> bool:
            for server in self.live():
                with self.direct(server) as client:
                    if b"cluster_state:ok" not in cluster_info(client):
                        return False
            return True
        wait_until(ok, timeout, interval=0.05, message="the cluster is not ok")

    def close(self) -> None:
        self.client.close()
        for server in self.servers:
            server.close()


@contextlib.contextmanager
def replicated_cluster(masters: int = 3, node_timeout_ms: int = 1000) -> Iterator[ReplicatedCluster]:
    """`masters` masters and as many replicas (one each), joined by `redis-cli --cluster create`.
    Skips the test if no redis-cli can be found."""
    binary = find_server_binary()
    cli = find_cli(binary)
    if cli is None:
        pytest.skip(f"no redis-cli next to {binary} nor on PATH: cannot create a cluster")
    servers: List[EmbeddedServer] = []
    try:
        for _ in range(masters * 2):
            servers.append(start_node("--cluster-node-timeout", str(node_timeout_ms)))
        addresses = [f"127.0.0.1:{s.port}" for s in servers]
        subprocess.run([cli, "--cluster", "create", *addresses, "--cluster-replicas", "1",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        cluster = ReplicatedCluster(cli, servers)
        cluster.wait_ok()
        known = f"cluster_known_nodes:{len(servers)}".encode()
        wait_until(lambda: all(known in cluster_info(cluster.direct(s)) for s in servers), 30,
                   message="the nodes do not all know each other")
        # Every replica has its first full sync before a test may kill its master.
        wait_until(lambda: all(cluster.direct(s).info("replication").get("master_link_status")
                               in (None, "up") for s in servers), 30,
                   message="the replicas did not sync")
        cluster.client.nodes_manager.initialize()
    except BaseException:
        for server in servers:
            server.close()
        raise
    try:
        yield cluster
    finally:
        cluster.close()
