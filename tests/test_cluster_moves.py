"""Redis Cluster whose stream moves: a consumer follows its stream's slot to another master,
when the slot is resharded and when its master is killed and a replica takes over, on a local
cluster of 3 masters and 3 replicas. Each run prints what it measured (entries lost by
asynchronous replication, entries handled twice, time to the first entry handled after the
fault): `python -m pytest tests/test_cluster_moves.py -m cluster -s`.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional

import pytest
from redis.cluster import RedisCluster

import rstream
from clusterkit import ReplicatedCluster, replicated_cluster
from helpers import unique_name, wait_until
from movekit import Tally, Writer, measure
from rstream.embedded import EmbeddedServer

pytestmark = pytest.mark.cluster

FAST: Dict[str, Any] = dict(receive_interval=100, heartbeat_interval=100, group_start_id="0",
                            make_stream=True)
BEFORE = 200  # entries handled before the fault
AFTER = 300   # entries written after it


def _start(client: RedisCluster, stream: str, tally: Tally) -> rstream.Consumer:
    consumer = rstream.Consumer(client, stream, "g", "c1", **FAST)
    return consumer.start(tally)


def _owner_once_agreed(cluster: ReplicatedCluster, slot: int) -> Optional[EmbeddedServer]:
    try:
        return cluster.owner(slot)
    except Exception:  # noqa: BLE001 - the nodes still disagree, or one is going down
        return None


def test_a_resharded_slot_is_followed_to_its_new_master() -> None:
    """The stream's slot moves to another master while entries are written and consumed: every
    entry written is handled and acked, and consumption goes on on the new master."""
    with replicated_cluster() as cluster:
        client = cluster.client
        stream = "{%s}orders" % unique_name("reshard")
        slot = client.keyslot(stream)
        tally = Tally()
        consumer = _start(client, stream, tally)
        writer = Writer(lambda fields: client.xadd(stream, fields)).start()
        try:
            wait_until(lambda: tally.count() >= BEFORE, 20, message="not consuming before the move")
            source = cluster.owner(slot)
            target = next(m for m in cluster.masters() if m is not source)
            moved_at = time.monotonic()
            cluster.move_slot(slot, target)
            after = len(writer.ids)
            wait_until(lambda: len(writer.ids) >= after + AFTER, 30, message="writes stopped")
            written = writer.stop()
            wait_until(lambda: tally.ids() >= set(written), 30,
                       message="entries written around the move were not all handled")
            with cluster.direct(target) as direct:
                wait_until(lambda: direct.xpending(stream, "g")["pending"] == 0, 10,
                           message="not everything acked on the new master")
                survived = {entry_id.decode() for entry_id, _ in direct.xrange(stream)}
        finally:
            writer.stop()
            consumer.stop(5)
        outcome = measure("reshard", written, survived, tally, moved_at)
    assert consumer.error is None
    assert outcome.lost == 0 and set(written) <= survived


def test_b_a_killed_master_is_followed_to_the_replica_that_takes_over() -> None:
    """SIGKILL the master of the stream's slot while consuming: once its replica takes over,
    every entry the new master has is handled and acked there."""
    with replicated_cluster() as cluster:
        client = cluster.client
        stream = "{%s}orders" % unique_name("takeover")
        slot = client.keyslot(stream)
        tally = Tally()
        consumer = _start(client, stream, tally)
        writer = Writer(lambda fields: client.xadd(stream, fields)).start()
        try:
            wait_until(lambda: tally.count() >= BEFORE, 20, message="not consuming before the kill")
            owner = cluster.owner(slot)
            killed_at = time.monotonic()
            owner.kill()
            promoted = wait_until(lambda: (new := _owner_once_agreed(cluster, slot)) is not None
                                  and new is not owner and new, 30,
                                  message="no replica took the slot over")
            print(f"[master killed] a replica owned the slot after {time.monotonic() - killed_at:.2f} s")
            after = len(writer.ids)
            wait_until(lambda: len(writer.ids) >= after + AFTER, 30, message="writes did not resume")
            written = writer.stop()
            with cluster.direct(promoted) as direct:
                survived = {entry_id.decode() for entry_id, _ in direct.xrange(stream)}
                wait_until(lambda: tally.ids() >= survived, 30,
                           message="entries on the promoted replica were not all handled")
                wait_until(lambda: direct.xpending(stream, "g")["pending"] == 0, 10,
                           message="not everything acked on the promoted replica")
        finally:
            writer.stop()
            consumer.stop(5)
        outcome = measure("master killed", written, survived, tally, killed_at)
    assert consumer.error is None
    assert outcome.resumed_after_s is not None
    # Written after the takeover, so on the new master: all handled.
    assert set(written[after:]) <= survived
