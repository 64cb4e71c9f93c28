"""Redis Cluster: consumers on streams in different slots of a local 3-node
cluster, given a `redis.cluster.RedisCluster` client. Each stream's commands go to the node that
owns its slot; the dead-letter stream must share that slot (a hash tag)."""
from __future__ import annotations

import threading
from typing import Any, Dict, Iterator, List

import pytest
from redis.cluster import RedisCluster

import rstream
from clusterkit import local_cluster
from helpers import unique_name, wait_until

NODES = 3
FAST: Dict[str, Any] = dict(receive_interval=100, heartbeat_interval=100, allowed_missed_heartbeats=2,
                            group_start_id="0", make_stream=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """Three masters splitting the 16384 slots evenly, joined with CLUSTER MEET."""
    with local_cluster(NODES) as client:
        yield client


def _streams_on_every_node(cluster: RedisCluster) -> List[str]:
    """One stream name per node (hash tags chosen so their slots land on different nodes)."""
    by_node: Dict[str, str] = {}
    for n in range(1000):
        name = "{%s}orders" % unique_name(f"t{n}")
        node = cluster.get_node_from_key(name).name
        by_node.setdefault(node, name)
        if len(by_node) == NODES:
            return list(by_node.values())
    raise AssertionError("no hash tags found that cover every node")


def test_streams_in_different_slots_are_consumed_and_dead_lettered(cluster: RedisCluster) -> None:
    """A consumer per stream, one stream on each node: every entry handled once and acked, and
    the poison entry of each lands once in its hash-tagged dead-letter stream."""
    streams = _streams_on_every_node(cluster)
    ids = {s: [cluster.xadd(s, {"n": n}).decode() for n in range(200)] for s in streams}
    handled: Dict[str, List[str]] = {s: [] for s in streams}
    lock = threading.Lock()
    consumers = []
    try:
        for stream in streams:
            def handle(message: rstream.Message, stream: str = stream) -> None:
                with lock:
                    handled[stream].append(message.id)
                if message.fields[b"n"] == b"7":
                    raise ValueError("poison")

            consumer = rstream.Consumer(redis=cluster, stream=stream, group="g", consumer_name="c1",
                                        max_attempts=2, dead_letter_stream=stream + ":dlq", **FAST)
            consumer.start(handle)
            consumers.append(consumer)
        for stream in streams:
            wait_until(lambda s=stream: cluster.xpending(s, "g")["pending"] == 0
                       and cluster.xlen(s + ":dlq") == 1, 20, message=f"{stream} not settled")
    finally:
        for consumer in consumers:
            consumer.stop(5)
    for stream in streams:
        poison = ids[stream][7]
        assert sorted(set(handled[stream])) == sorted(ids[stream])
        assert handled[stream].count(poison) == 2 and len(handled[stream]) == 201
        [(_, fields)] = cluster.xrange(stream + ":dlq")
        assert fields[b"rstream-id"] == poison.encode()


def test_dead_consumers_entries_are_claimed_on_a_cluster_node(cluster: RedisCluster) -> None:
    """Failover works through the node's connections: a consumer that read 20 entries and went
    silent is found dead, its entries are handled by a live consumer and it is removed."""
    [stream] = _streams_on_every_node(cluster)[:1]
    ids = [cluster.xadd(stream, {"n": n}).decode() for n in range(20)]
    cluster.xgroup_create(stream, "g", "0")
    cluster.xreadgroup("g", "gone", {stream: ">"}, count=20)
    handled: List[str] = []
    consumer = rstream.Consumer(redis=cluster, stream=stream, group="g", consumer_name="alive", **FAST)
    try:
        consumer.start(lambda m: handled.append(m.id))
        wait_until(lambda: sorted(handled) == sorted(ids), 20, message="dead consumer's entries not claimed")
        wait_until(lambda: "gone" not in {c["name"].decode() for c in cluster.xinfo_consumers(stream, "g")},
                   10, message="the dead consumer was not removed")
    finally:
        consumer.stop(5)
    assert consumer.stats().claimed == 20


def test_dead_letter_stream_in_another_slot_is_a_config_error(cluster: RedisCluster) -> None:
    """The dead-letter script needs one slot: a dead-letter stream elsewhere fails at build time."""
    with pytest.raises(rstream.ConfigError, match="same Redis Cluster slot"):
        rstream.Consumer(redis=cluster, stream="{a}orders", group="g", consumer_name="c",
                         max_attempts=2, dead_letter_stream="{b}orders:dlq")
