"""One consumer over several streams (`streams=[...]`) on a Redis Cluster: six streams spread
over the three masters of a local cluster with a replica each, given a `RedisCluster` client.
Each stream is a lane (rstream.lane) with its own connections to the master that owns its slot,
followed when that master dies. These tests count every delivery by (stream, id): what was
lost, what was handled twice, and which stream a message said it came from. Each run prints
what it measured: `python -m pytest tests/test_cluster_streams.py -m cluster -s`.
"""
from __future__ import annotations

import collections
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import pytest
from redis.cluster import RedisCluster

import rstream
from clusterkit import ReplicatedCluster, replicated_cluster
from helpers import SpawnedProcess, add_entries, unique_name, wait_until
from movekit import Outcome, Tally, Writer, measure
from rstream.embedded import EmbeddedServer

pytestmark = pytest.mark.cluster

PER_MASTER = 2  # streams on each of the 3 masters: 6 in all
DEADLINE_S = 30.0
FAST: Dict[str, Any] = dict(heartbeat_interval=100, allowed_missed_heartbeats=2, receive_interval=100)

# A consumer process over several streams of a cluster whose handler never returns: it holds
# every entry it reads until it is killed.
CLUSTER_HOLDER = """
import sys, threading
import rstream
from redis.cluster import RedisCluster

port, group, name, *streams = sys.argv[1:]

def hold(message):
    print("holding", message.stream, message.id, flush=True)
    threading.Event().wait()

client = RedisCluster(host="127.0.0.1", port=int(port))
rstream.Consumer(client, streams=streams, group=group, consumer_name=name, heartbeat_interval=100,
                 allowed_missed_heartbeats=2, receive_interval=100, concurrency=64).run(hold)
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[ReplicatedCluster]:
    """Three masters with a replica each; no test of this fixture kills or moves a node."""
    with replicated_cluster() as made:
        yield made


def spread_streams(cluster: ReplicatedCluster, per_master: int = PER_MASTER) -> List[str]:
    """Stream names without hash tags, each in a slot of its own, `per_master` on each master.
    The client's slot (keyslot) is the server's (CLUSTER KEYSLOT), and the master the client's
    slot map names for it is the one every live node names (CLUSTER SLOTS)."""
    client = cluster.client
    masters = {m.port for m in cluster.masters()}
    base = unique_name("cs")
    by_master: Dict[int, List[str]] = {port: [] for port in masters}
    slots: Set[int] = set()
    for n in range(10_000):
        name = f"{base}-{n}"
        slot = client.keyslot(name)
        port = int(client.get_node_from_key(name).port)
        if slot not in slots and len(by_master[port]) < per_master:
            by_master[port].append(name)
            slots.add(slot)
        if all(len(names) == per_master for names in by_master.values()):
            break
    else:
        raise AssertionError(f"no names found covering every master: {by_master}")
    streams = [name for names in zip(*by_master.values()) for name in names]
    with cluster.direct(cluster.servers[0]) as direct:
        for name in streams:
            slot = client.keyslot(name)
            assert int(direct.execute_command("CLUSTER", "KEYSLOT", name)) == slot
            assert cluster.owner(slot).port == int(client.get_node_from_key(name).port)
    assert len({client.keyslot(s) for s in streams}) == len(streams) == per_master * len(masters)
    return streams


class Deliveries:
    """The handler: every (stream, id, attempt) handed to it, a `movekit.Tally` per stream (when
    each entry was handled), and the messages whose `stream` is not the stream their entry was
    written to (its field ``s``)."""

    def __init__(self, streams: List[str]) -> None:
        self.lock = threading.Lock()
        self.tallies = {s: Tally() for s in streams}
        self.seen: List[Tuple[str, str, int]] = []
        self.wrong_stream: List[Tuple[str, str]] = []

    def __call__(self, message: rstream.Message) -> None:
        tally = self.tallies.get(message.stream)
        with self.lock:
            self.seen.append((message.stream, message.id, message.attempt))
            if tally is None or message.fields.get(b"s") != message.stream.encode():
                self.wrong_stream.append((message.stream, message.id))
        if tally is not None:
            tally(message)

    def count(self) -> int:
        with self.lock:
            return len(self.seen)

    def handled(self) -> collections.Counter[Tuple[str, str]]:
        with self.lock:
            return collections.Counter((s, i) for s, i, _ in self.seen)

    def attempts(self) -> collections.Counter[int]:
        with self.lock:
            return collections.Counter(a for _, _, a in self.seen)

    def has_all(self, written: Dict[str, List[str]]) -> bool:
        handled = self.handled()
        return all((s, i) in handled for s, ids in written.items() for i in ids)

    def assert_once_each(self, written: Dict[str, List[str]]) -> None:
        """Every written (stream, id) handled exactly once, nothing else handled, and every
        message named its own stream; the counts of each way it can fail in the message."""
        handled = self.handled()
        expected = {(s, i) for s, ids in written.items() for i in ids}
        lost = sorted(expected - set(handled))
        twice = sorted(k for k, n in handled.items() if n > 1)
        unknown = sorted(set(handled) - expected)
        with self.lock:
            wrong = list(self.wrong_stream)
        assert not (lost or twice or unknown or wrong), (
            f"of {len(expected)} entries: lost {len(lost)}, handled twice or more {len(twice)} "
            f"({sum(handled[k] - 1 for k in twice)} extra deliveries), handled but never written "
            f"{len(unknown)}, wrong Message.stream {len(wrong)}; first lost {lost[:3]}, "
            f"first twice {twice[:3]}")


def write(client: RedisCluster, streams: List[str], count: int) -> Dict[str, List[str]]:
    """`count` entries on each stream, each saying which stream it was written to."""
    return {s: add_entries(client, s, count, {b"s": s.encode()}) for s in streams}


def pending(client: Any, stream: str, group: str) -> int:
    return int(client.xpending(stream, group)["pending"])


def settled(predicate: Callable[[], object], timeout: float) -> bool:
    """`wait_until`, returning False at the deadline, so that the assertion after it can say
    what was lost or duplicated rather than only that time ran out."""
    try:
        wait_until(predicate, timeout, interval=0.02)
        return True
    except AssertionError:
        return False


def test_six_streams_on_three_masters_are_each_handled_once(cluster: ReplicatedCluster) -> None:
    """One consumer over 6 streams, 2 on each master: 5,000 entries on each (3,000 written
    before start, 2,000 while consuming), 30,000 in all, each handled exactly once, each
    message naming the stream its entry was written to, nothing pending on any stream."""
    client = cluster.client
    streams = spread_streams(cluster)
    group = unique_name("g")
    written = write(client, streams, 3000)
    deliveries = Deliveries(streams)
    total = 5000 * len(streams)
    consumer = rstream.Consumer(client, streams=streams, group=group, consumer_name="one",
                                group_start_id="0", **FAST)
    with consumer:
        started = time.monotonic()
        consumer.start(deliveries)
        wait_until(lambda: deliveries.count() > 0, DEADLINE_S, message="nothing handled")
        for _ in range(4):  # while consuming: 500 more on each stream, 4 times
            for stream, more in write(client, streams, 500).items():
                written[stream] += more
        handled_when_written = deliveries.count()
        done = settled(lambda: deliveries.has_all(written) and consumer.stats().acked >= total
                       and all(pending(client, s, group) == 0 for s in streams), DEADLINE_S)
        elapsed = time.monotonic() - started
    print(f"[6 streams, 3 masters] {total} entries handled in {elapsed:.2f} s "
          f"({total / elapsed:.0f}/s); {handled_when_written} handled when the last was written")
    deliveries.assert_once_each(written)
    assert done, f"not all acked: {consumer.stats()}"
    assert sum(len(ids) for ids in written.values()) == total
    assert consumer.error is None
    assert consumer.stats().acked == total
    assert {s: pending(client, s, group) for s in streams} == dict.fromkeys(streams, 0)


def test_a_consumer_killed_holding_entries_on_six_streams_is_claimed_on_every_master(
        cluster: ReplicatedCluster, spawn: Callable[..., SpawnedProcess]) -> None:
    """A process holding 50 entries on each of 6 streams (2 per master) is SIGKILLed; a live
    consumer of the same streams claims all 300 on every master, each handled once, with
    attempt 2, and removes the dead consumer from every stream's group; nothing stays pending."""
    client = cluster.client
    streams = spread_streams(cluster)
    group = unique_name("g")
    for stream in streams:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    written = write(client, streams, 50)
    holder = spawn(CLUSTER_HOLDER, str(cluster.servers[0].port), group, "doomed", *streams)
    wait_until(lambda: all(pending(client, s, group) == 50 for s in streams) or holder.poll() is not None,
               DEADLINE_S, message="the holder never held every entry")
    assert holder.poll() is None, holder.output()
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    killed_at = time.monotonic()
    deliveries = Deliveries(streams)
    with rstream.Consumer(client, streams=streams, group=group, consumer_name="survivor",
                          **FAST) as survivor:
        survivor.start(deliveries)
        done = settled(lambda: survivor.stats().acked >= 300
                       and all(pending(client, s, group) == 0 for s in streams), DEADLINE_S)
        recovered_after = time.monotonic() - killed_at
        wait_until(lambda: all("doomed" not in {c["name"].decode() for c in client.xinfo_consumers(s, group)}
                               for s in streams), 10, message="the dead consumer was not removed")
        stats = survivor.stats()
    print(f"[failover, 6 streams] 300 held entries claimed and acked {recovered_after:.2f} s after "
          "the SIGKILL (dead after 2 missed 100 ms heartbeats)")
    deliveries.assert_once_each(written)
    assert done, f"not all claimed: {stats}"
    assert stats.claimed == 300 and stats.acked == 300
    assert deliveries.attempts() == {2: 300}
    assert survivor.error is None
    assert {s: pending(client, s, group) for s in streams} == dict.fromkeys(streams, 0)


def _owner_once_agreed(cluster: ReplicatedCluster, slot: int) -> Optional[EmbeddedServer]:
    try:
        return cluster.owner(slot)
    except Exception:  # noqa: BLE001 - the nodes still disagree, or one is going down
        return None


def _taken_over(cluster: ReplicatedCluster, slots: List[int], dead: EmbeddedServer) -> Optional[EmbeddedServer]:
    """The one master other than `dead` that every live node says owns all of `slots`, else None."""
    owners = {_owner_once_agreed(cluster, slot) for slot in slots}
    if len(owners) != 1:
        return None
    [owner] = owners
    return owner if owner is not None and owner is not dead else None


BEFORE = 200  # entries handled on each stream before the kill
AFTER = 300   # entries written on each stream after the takeover


def test_a_killed_master_is_followed_on_its_streams_while_the_others_go_on() -> None:
    """SIGKILL one master while one consumer consumes 6 streams (2 on each master) and a writer
    per stream keeps adding entries: the streams on the other masters are handled meanwhile,
    with nothing lost or handled twice; once the replica takes over, every entry every master
    has is handled and acked there. Asynchronous replication may lose entries the dead master
    acked to the writer (counted) and acks it had not passed on (handled twice, counted)."""
    with replicated_cluster() as cluster:
        client = cluster.client
        streams = spread_streams(cluster)
        slots = {s: client.keyslot(s) for s in streams}
        victim = cluster.owner(slots[streams[0]])
        hit = [s for s in streams if cluster.owner(slots[s]) is victim]
        spared = [s for s in streams if s not in hit]
        assert len(hit) == PER_MASTER
        deliveries = Deliveries(streams)
        tallies = deliveries.tallies
        consumer = rstream.Consumer(client, streams=streams, group="g", consumer_name="c1",
                                    group_start_id="0", make_stream=True, receive_interval=100,
                                    heartbeat_interval=100)
        consumer.start(deliveries)
        # A client per writer: a writer waiting out the dead master holds nobody else's slot map.
        live_master = next(m for m in cluster.masters() if m is not victim)
        clients = [RedisCluster(host="127.0.0.1", port=live_master.port) for _ in streams]
        writers = {s: Writer(lambda fields, s=s, c=c: c.xadd(s, {**fields, "s": s})).start()
                   for s, c in zip(streams, clients)}
        try:
            wait_until(lambda: all(t.count() >= BEFORE for t in tallies.values()), DEADLINE_S,
                       message="not consuming every stream before the kill")
            killed_at = time.monotonic()
            victim.kill()
            promoted = wait_until(lambda: _taken_over(cluster, [slots[s] for s in hit], victim),
                                  DEADLINE_S, message="no replica took the slots over")
            taken_over_at = time.monotonic()
            after = {s: len(w.ids) for s, w in writers.items()}
            wait_until(lambda: all(len(writers[s].ids) >= after[s] + AFTER for s in streams), DEADLINE_S,
                       message="writes did not resume on every stream")
            written = {s: w.stop() for s, w in writers.items()}
            survived: Dict[str, Set[str]] = {}
            for stream in streams:
                with cluster.direct(cluster.owner(slots[stream])) as direct:
                    survived[stream] = {entry_id.decode() for entry_id, _ in direct.xrange(stream)}
                    wait_until(lambda s=stream: tallies[s].ids() >= survived[s], DEADLINE_S,
                               message=f"entries of {stream} on its master were not all handled")
                    wait_until(lambda s=stream, d=direct: pending(d, s, "g") == 0, 10,
                               message=f"not everything acked on {stream}'s master")
            all_done_at = time.monotonic()
        finally:
            for writer in writers.values():
                writer.stop()
            consumer.stop(5)
            for extra in clients:
                extra.close()
        outcomes: Dict[str, Outcome] = {s: measure(f"master killed, {'hit' if s in hit else 'spared'} {s}",
                                                   written[s], survived[s], tallies[s], killed_at)
                                        for s in streams}
    # Handled on the spared streams between the kill and the takeover (not reads in flight).
    during = {s: sum(1 for at, _ in tallies[s].calls if killed_at + 0.1 < at < taken_over_at) for s in spared}
    lost = sum(o.lost for o in outcomes.values())
    twice = sum(o.duplicates for o in outcomes.values())
    resumed = [o.resumed_after_s for s, o in outcomes.items() if s in hit]
    print(f"[master killed, 6 streams] replica took over after {taken_over_at - killed_at:.2f} s; "
          f"hit streams resumed after {resumed} s; all handled and acked "
          f"{all_done_at - killed_at:.2f} s after the kill; written={sum(map(len, written.values()))} "
          f"lost-by-replication={lost} handled-twice={twice}; handled on spared streams during "
          f"the outage: {during}")
    assert consumer.error is None
    assert promoted is not victim
    for stream in streams:
        # Written after the takeover, so on the new master: all there, all handled.
        assert set(written[stream][after[stream]:]) <= survived[stream], stream
        assert tallies[stream].ids() >= survived[stream], stream
    assert all(r is not None for r in resumed)
    for stream in spared:  # a lane's master that never failed: nothing lost, nothing twice
        assert outcomes[stream].lost == 0 and set(written[stream]) <= survived[stream], stream
        assert outcomes[stream].duplicates == 0, stream
        assert during[stream] > 0, f"{stream} was not consumed while another master was down"
    assert not deliveries.wrong_stream
