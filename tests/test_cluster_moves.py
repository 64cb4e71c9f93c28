"""Redis Cluster whose stream moves: a consumer follows its stream's slot to another master,
when the slot is resharded, while the slot is left half-migrated (ASK), and when its master is
killed and a replica takes over, on a local cluster of 3 masters and 3 replicas. Each run prints
what it measured (entries lost by asynchronous replication, entries handled twice, time to the
first entry handled after the fault): `python -m pytest tests/test_cluster_moves.py -m cluster -s`.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional, Tuple

import hiredis
import pytest
from redis.cluster import RedisCluster

import rstream
from clusterkit import ReplicatedCluster, replicated_cluster
from helpers import unique_name, wait_until
from movekit import SlotMigration, Tally, Writer, measure
from rstream.connection import ConnectionFactory
from rstream.embedded import EmbeddedServer

pytestmark = pytest.mark.cluster

FAST: Dict[str, Any] = dict(receive_interval=100, heartbeat_interval=100, group_start_id="0",
                            make_stream=True)
BEFORE = 200  # entries handled before the fault
AFTER = 300   # entries written after it
WINDOW_S = 3.0  # how long a slot is left half-migrated


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


def test_a_link_sends_the_commands_refused_with_ask_to_the_importing_master() -> None:
    """One link, while its stream's slot migrates with the stream moved already: the first ASK
    fails the command (the step is tried again); then every command the old master refuses is
    answered by the importing one, in step with the caller's reads: a pipeline, and a packed
    write with a transaction (sent again whole) read in pieces that cut the transaction. A key
    not moved yet is still written on the old master, not created on the new one (which would
    fail its move); once the slot is finalized, MOVED takes the link to the new master."""
    with replicated_cluster() as cluster:
        client = cluster.client
        tag = unique_name("asklink")
        stream, other = "{%s}s" % tag, "{%s}other" % tag
        first, second, third = (client.xadd(stream, {"n": n}).decode() for n in range(3))
        client.xgroup_create(stream, "g", "0")
        client.set(other, "here")
        slot = client.keyslot(stream)
        source = cluster.owner(slot)
        migration = SlotMigration(cluster, slot, next(m for m in cluster.masters() if m is not source))
        link = ConnectionFactory(client, stream).make("test")
        try:
            assert link.call("XLEN", stream) == 3
            migration.begin()
            migration.migrate(stream)
            with pytest.raises(rstream.RedisUnavailable, match="ASK"):
                link.call("XLEN", stream)
            assert link.pipeline([("XLEN", stream), ("SET", other, "there"), ("XLEN", stream)]) == [3, b"OK", 3]

            def packed(*commands: Tuple[Any, ...]) -> bytes:
                return b"".join(hiredis.pack_command(command) for command in commands)

            def read(count: int) -> Tuple[Any, ...]:
                return ("XREADGROUP", "GROUP", "g", "c", "COUNT", count, "STREAMS", stream, ">")

            link.send(packed(read(2)))
            [[[_, delivered]]] = link.read(1)
            assert [entry_id.decode() for entry_id, _ in delivered] == [first, second]
            link.send(packed(("MULTI",), ("XACK", stream, "g", first, second), ("XDEL", stream, first, second),
                             ("EXEC",), read(10)))
            assert link.read(2) == [b"OK", b"QUEUED"]
            assert link.read(2) == [b"QUEUED", [2, 2]]
            [[[_, delivered]]] = link.read(1)
            assert [entry_id.decode() for entry_id, _ in delivered] == [third]
            with cluster.direct(migration.target) as target:
                assert target.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10) == [stream.encode()]
                asking = target.pipeline(transaction=False)  # one connection: ASKING lets XPENDING in
                _, pending = asking.execute_command("ASKING").xpending(stream, "g").execute()
                assert pending["pending"] == 1
            with cluster.direct(source) as direct:
                assert direct.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10) == [other.encode()]
            migration.finish()
            with pytest.raises(rstream.RedisUnavailable, match="MOVED"):
                link.call("XLEN", stream)
            assert link.pipeline([("XLEN", stream), ("GET", other)]) == [1, b"there"]
        finally:
            link.close()


def test_a_slot_left_migrating_is_followed_by_asking_the_importing_master() -> None:
    """The stream's slot is MIGRATING on its master and IMPORTING on another, the stream already
    moved there (MIGRATE) and the slot left so for seconds: the old master answers ASK for every
    command on the stream. Entries written in that window (the user's client follows ASK) are
    handled in it, not after the slot is finalized; afterwards every entry written was handled
    once and acked on the new master. The name fence key stays on the old master during the
    window: `finish` moves it without REPLACE, so a fence written to the new master before its
    key was moved would fail the move."""
    with replicated_cluster() as cluster:
        client = cluster.client
        stream = "{%s}orders" % unique_name("ask")
        slot = client.keyslot(stream)
        tally = Tally()
        consumer = _start(client, stream, tally)
        writer = Writer(lambda fields: client.xadd(stream, fields)).start()
        try:
            wait_until(lambda: tally.count() >= BEFORE, 20, message="not consuming before the migration")
            source = cluster.owner(slot)
            migration = SlotMigration(cluster, slot, next(m for m in cluster.masters() if m is not source))
            migration.begin()
            migration.migrate(stream)
            opened_at = time.monotonic()
            after = len(writer.ids)
            wait_until(lambda: len(writer.ids) >= after + AFTER and time.monotonic() - opened_at >= WINDOW_S,
                       30, message="writes stopped while the slot was migrating")
            during = set(writer.ids[after:])
            wait_until(lambda: tally.ids() >= during, 10,
                       message="entries written while the slot was migrating were not handled "
                               "before it was finalized: consumption stalled")
            assert cluster.owner(slot) is source  # the window was still open
            print(f"[ask window] {len(during)} entries written and handled in "
                  f"{time.monotonic() - opened_at:.2f} s of migration")
            migration.finish()
            after = len(writer.ids)
            wait_until(lambda: len(writer.ids) >= after + AFTER, 30, message="writes stopped")
            written = writer.stop()
            wait_until(lambda: tally.ids() >= set(written), 30,
                       message="entries written around the migration were not all handled")
            with cluster.direct(migration.target) as direct:
                wait_until(lambda: direct.xpending(stream, "g")["pending"] == 0, 10,
                           message="not everything acked on the new master")
                survived = {entry_id.decode() for entry_id, _ in direct.xrange(stream)}
        finally:
            writer.stop()
            consumer.stop(5)
        outcome = measure("ask window", written, survived, tally, opened_at)
    assert consumer.error is None
    assert outcome.lost == 0 and set(written) <= survived
    assert outcome.duplicates == 0


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
