"""One consumer over several streams (`streams=[...]`), on one real server.

Each stream is a lane of its own (rstream.lane): group, replay, reads, heartbeat, name fence,
claims, acks and in-flight window. These tests count every delivery by (stream, id): what was
lost, what was handled twice, and which stream a message said it came from.
"""
from __future__ import annotations

import collections
import signal
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

import pytest
import redis

import rstream
from helpers import SpawnedProcess, add_entries, unique_name, wait_until
from rstream.redisio import fence_key

DEADLINE_S = 30.0
FAST: Dict[str, Any] = dict(heartbeat_interval=100, allowed_missed_heartbeats=2, receive_interval=100)

# A consumer process over several streams whose handler never returns: it holds every entry
# it reads until it is killed.
HOLDER = """
import sys, threading
import rstream

url, group, name, *streams = sys.argv[1:]

def hold(message):
    print("holding", message.stream, message.id, flush=True)
    threading.Event().wait()

rstream.Consumer(url, streams=streams, group=group, consumer_name=name, heartbeat_interval=100,
                 allowed_missed_heartbeats=2, receive_interval=100, concurrency=64).run(hold)
"""


class Deliveries:
    """Every (stream, id, attempt) handed to a handler, with the stream the entry was written
    to (its field ``s``) to check `Message.stream` against."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: List[Tuple[str, str, int]] = []
        self.wrong_stream: List[Tuple[str, Any]] = []

    def handle(self, message: rstream.Message) -> None:
        with self.lock:
            self.seen.append((message.stream, message.id, message.attempt))
            if message.fields.get(b"s", message.stream.encode()) != message.stream.encode():
                self.wrong_stream.append((message.stream, message.fields))

    def count(self) -> int:
        with self.lock:
            return len(self.seen)

    def by_stream(self) -> Dict[str, int]:
        with self.lock:
            return dict(collections.Counter(s for s, _, _ in self.seen))

    def assert_once_each(self, written: Dict[str, List[str]]) -> None:
        with self.lock:
            got = collections.Counter((s, i) for s, i, _ in self.seen)
        expected = {(s, i) for s, ids in written.items() for i in ids}
        lost = expected - set(got)
        twice = {k: n for k, n in got.items() if n > 1}
        assert not lost and not twice, f"lost {len(lost)}, handled twice {len(twice)}"
        assert set(got) == expected
        assert not self.wrong_stream


def write(r: redis.Redis, streams: List[str], count: int) -> Dict[str, List[str]]:
    """`count` entries on each stream, each saying which stream it was written to."""
    return {s: add_entries(r, s, count, {b"s": s.encode()}) for s in streams}


def pending(r: redis.Redis, stream: str, group: str) -> int:
    return int(r.xpending(stream, group)["pending"])


@pytest.fixture
def names() -> Tuple[List[str], str]:
    base = unique_name("multi")
    return [f"{base}-{n}" for n in "abc"], unique_name("g")


def test_entries_of_three_streams_reach_the_handler_with_their_stream(
        r: redis.Redis, redis_url: str, names: Tuple[List[str], str]) -> None:
    """300 entries on each of 3 streams are handled once each, each message names the stream
    its entry was written to, and every stream's group has nothing pending at the end."""
    streams, group = names
    written = write(r, streams, 300)
    deliveries = Deliveries()
    with rstream.Consumer(redis_url, streams=streams, group=group, consumer_name="one",
                          group_start_id="0", **FAST) as consumer:
        consumer.start(deliveries.handle)
        wait_until(lambda: consumer.stats().acked == 900, DEADLINE_S, message="not all acked")
        deliveries.assert_once_each(written)
        assert all(pending(r, s, group) == 0 for s in streams)
        assert deliveries.by_stream() == {s: 300 for s in streams}
        more = write(r, streams, 20)  # and new entries after start, on every stream
        wait_until(lambda: consumer.stats().acked == 960, DEADLINE_S, message="new entries not acked")
    deliveries.assert_once_each({s: written[s] + more[s] for s in streams})


def test_a_flood_on_one_stream_does_not_starve_a_quiet_one(
        r: redis.Redis, redis_url: str, names: Tuple[List[str], str]) -> None:
    """20,000 entries wait on a busy stream; 50 arrive on a quiet one once the flood is being
    handled. The quiet stream's entries wait behind at most one window of the busy stream's
    (max_in_flight, plus a read), not behind its whole backlog: each stream reads into its
    own window, so the busy one cannot take the slots the quiet one needs."""
    (busy, quiet, _), group = names
    flood = 20_000
    add_entries(r, busy, flood, {b"s": busy.encode()})
    handled = collections.Counter[str]()
    busy_seen_at_quiet: List[int] = []  # busy entries handled when each quiet one was
    lock = threading.Lock()

    def handle(message: rstream.Message) -> None:
        time.sleep(0.0005)  # a handler with some I/O: the flood takes seconds to drain
        with lock:
            handled[message.stream] += 1
            if message.stream == quiet:
                busy_seen_at_quiet.append(handled[busy])

    consumer = rstream.Consumer(redis_url, streams=[busy, quiet], group=group, consumer_name="fair",
                                group_start_id="0", make_stream=True, **FAST)
    with consumer:
        consumer.start(handle)
        wait_until(lambda: handled[busy] >= 1000, DEADLINE_S, message="the flood is not handled")
        with lock:
            busy_when_added = handled[busy]
        add_entries(r, quiet, 50, {b"s": quiet.encode()})
        wait_until(lambda: handled[quiet] == 50, DEADLINE_S, message="the quiet stream starved")
        wait_until(lambda: handled[busy] == flood, 4 * DEADLINE_S, message="the flood not drained")
    behind = max(busy_seen_at_quiet) - busy_when_added
    window = consumer.options.in_flight_limit + consumer.options.batch_size
    print(f"quiet stream's 50 entries handled after {behind} busy entries "
          f"(bound {window}; backlog was {flood - busy_when_added})")
    assert behind <= window, f"the quiet stream waited behind {behind} busy entries"


def test_a_missing_stream_does_not_hold_back_the_others(
        r: redis.Redis, redis_url: str, names: Tuple[List[str], str]) -> None:
    """With make_stream=False, one stream missing at start: the others are consumed meanwhile,
    and once it appears its first entries are handled too (its group is created at 0)."""
    (present, missing, _), group = names
    written = write(r, [present], 100)
    deliveries = Deliveries()
    with rstream.Consumer(redis_url, streams=[present, missing], group=group, consumer_name="one",
                          group_start_id="0", make_stream=False, **FAST) as consumer:
        consumer.start(deliveries.handle)
        wait_until(lambda: deliveries.count() == 100, DEADLINE_S, message="present stream held back")
        written.update(write(r, [missing], 3))
        wait_until(lambda: deliveries.count() == 103, DEADLINE_S, message="appeared stream not read")
        wait_until(lambda: consumer.stats().acked == 103, DEADLINE_S)
    deliveries.assert_once_each(written)


def test_every_stream_has_its_own_group_heartbeat_and_name_fence(
        r: redis.Redis, redis_url: str, names: Tuple[List[str], str]) -> None:
    """On each stream: the group exists, the consumer's heartbeat keeps its idle time under the
    dead threshold (no entries flow), and its fence key names this process."""
    streams, group = names
    with rstream.Consumer(redis_url, streams=streams, group=group, consumer_name="beating",
                          make_stream=True, heartbeat_interval=100, allowed_missed_heartbeats=3,
                          receive_interval=5000) as consumer:
        consumer.start(lambda m: None)
        for stream in streams:
            assert [g["name"] for g in r.xinfo_groups(stream)] == [group.encode()]
            key = fence_key(stream, group, "beating")
            wait_until(lambda: r.exists(key), DEADLINE_S)  # noqa: B023 - used before the next turn
        # Watched over 6 heartbeat intervals with nothing to read (the reads block for 5 s):
        # only the heartbeat keeps each stream's idle time low.
        worst = {s: 0 for s in streams}
        watch_until = time.monotonic() + 0.6
        while time.monotonic() < watch_until:
            for stream in streams:
                [me] = r.xinfo_consumers(stream, group)
                worst[stream] = max(worst[stream], me["idle"])
            time.sleep(0.05)
        assert all(idle < 300 for idle in worst.values()), worst


def test_a_consumer_killed_holding_entries_on_three_streams_is_claimed_on_every_stream(
        r: redis.Redis, redis_url: str, names: Tuple[List[str], str],
        spawn: Callable[..., SpawnedProcess]) -> None:
    """A process holding 20 entries on each of 3 streams is SIGKILLed; a live consumer of the
    same streams claims all 60, on every stream, each once, with attempt 2."""
    streams, group = names
    for stream in streams:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    written = write(r, streams, 20)
    holder = spawn(HOLDER, redis_url, group, "doomed", *streams)
    wait_until(lambda: all(pending(r, s, group) == 20 for s in streams) or holder.poll() is not None,
               DEADLINE_S, message="the holder never held every entry")
    assert holder.poll() is None, holder.output()
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    deliveries = Deliveries()
    with rstream.Consumer(redis_url, streams=streams, group=group, consumer_name="survivor",
                          **FAST) as survivor:
        survivor.start(deliveries.handle)
        wait_until(lambda: survivor.stats().acked == 60, DEADLINE_S, message="not all claimed")
        assert survivor.stats().claimed == 60
    deliveries.assert_once_each(written)
    assert {a for _, _, a in deliveries.seen} == {2}
    assert all(pending(r, s, group) == 0 for s in streams)


def test_a_restart_under_the_same_name_replays_its_own_entries_on_every_stream(
        r: redis.Redis, redis_url: str, names: Tuple[List[str], str],
        spawn: Callable[..., SpawnedProcess]) -> None:
    """A process holding entries on 3 streams is SIGKILLed and started again under its name:
    it replays its own pending entries of every stream (no wait for the dead threshold)."""
    streams, group = names
    for stream in streams:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    written = write(r, streams, 10)
    holder = spawn(HOLDER, redis_url, group, "same", *streams)
    wait_until(lambda: all(pending(r, s, group) == 10 for s in streams) or holder.poll() is not None,
               DEADLINE_S, message="the holder never held every entry")
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    deliveries = Deliveries()
    with rstream.Consumer(redis_url, streams=streams, group=group, consumer_name="same",
                          heartbeat_interval=10_000, receive_interval=100) as again:
        again.start(deliveries.handle)
        wait_until(lambda: again.stats().acked == 30, DEADLINE_S, message="own entries not replayed")
        assert again.stats().replayed == 30 and again.stats().claimed == 0
    deliveries.assert_once_each(written)


def test_dead_letters_of_each_stream_name_their_source_stream(
        r: redis.Redis, redis_url: str, names: Tuple[List[str], str]) -> None:
    """An entry failing on two streams goes to the one dead-letter stream after max_attempts,
    each dead letter naming the stream it came from."""
    (a, b, _), group = names
    dlq = unique_name("dlq")
    written = {s: add_entries(r, s, 1, {b"s": s.encode(), b"fail": b"1"}) for s in (a, b)}
    attempts: List[Tuple[str, int]] = []

    def fail(message: rstream.Message) -> None:
        attempts.append((message.stream, message.attempt))
        raise RuntimeError("boom")

    def retry_now(message: rstream.Message, error: BaseException) -> None:
        message.configure_ack(retry=True)
        message.metadata["retry_after"] = 0

    with rstream.Consumer(redis_url, streams=[a, b], group=group, consumer_name="one",
                          group_start_id="0", max_attempts=2, dead_letter_stream=dlq,
                          handle_failure=retry_now, **FAST) as consumer:
        consumer.start(fail)
        wait_until(lambda: consumer.stats().dead_lettered == 2, DEADLINE_S, message="not dead-lettered")
    letters = {e[1][b"rstream-stream"].decode(): e[1][b"rstream-id"].decode() for e in r.xrange(dlq)}
    assert letters == {a: written[a][0], b: written[b][0]}
    assert sorted(attempts) == sorted([(a, 1), (a, 2), (b, 1), (b, 2)])
    assert pending(r, a, group) == 0 and pending(r, b, group) == 0
