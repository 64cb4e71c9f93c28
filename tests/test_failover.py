"""Liveness and failover against real servers and real processes.

Every consumer here beats every 100 ms and is dead after 2 missed beats (idle > 200 ms). A "dead"
consumer is either a SIGKILLed child process that was holding entries, or a name that read from
a plain client once and was never used again (no process needed: only its idle time counts).
"""
from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
import redis

import rstream
from helpers import SpawnedProcess, wait_until
from rstream.connection import ConnectionFactory
from rstream.intake import Intake
from rstream.embedded import EmbeddedServer, known_server_binaries
from rstream.options import Options
from rstream.redisio import StreamOps

HEARTBEAT_MS = 100
MISSED = 2
DEAD_AFTER_MS = HEARTBEAT_MS * MISSED
FAST: Dict[str, Any] = dict(heartbeat_interval=HEARTBEAT_MS, allowed_missed_heartbeats=MISSED,
                            receive_interval=100)
# Generous: the machine's 2 cores are shared by several test runs at once.
DEADLINE_S = 20.0
KNOWN_SERVERS = known_server_binaries()

# A consumer process whose handler never returns: it holds every entry it reads until killed.
HOLDER = """
import sys, threading
import rstream

url, stream, group, name = sys.argv[1:5]

def hold(message):
    print("holding", message.id, message.attempt, flush=True)
    threading.Event().wait()

rstream.Consumer(url, stream, group, name, heartbeat_interval=100, allowed_missed_heartbeats=2,
                 receive_interval=100, concurrency=8).run(hold)
"""


# -- helpers ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Handled:
    consumer: str
    id: str
    attempt: int


class Recorder:
    """Every delivery to the handlers of in-process consumers, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handled: List[Handled] = []

    def handler(self, consumer: str, work_s: float = 0.0) -> Callable[[rstream.Message], None]:
        def handle(message: rstream.Message) -> None:
            with self._lock:
                self._handled.append(Handled(consumer, message.id, message.attempt))
            if work_s:
                time.sleep(work_s)  # the handler's own (slow) work, not a wait for a condition
        return handle

    @property
    def handled(self) -> List[Handled]:
        with self._lock:
            return list(self._handled)

    def ids(self) -> List[str]:
        return [h.id for h in self.handled]

    def count(self) -> int:
        with self._lock:
            return len(self._handled)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def consumers(r: redis.Redis, stream: str, group: str) -> Dict[str, Dict[str, Any]]:
    """XINFO CONSUMERS as name -> fields."""
    return {_text(c["name"]): c for c in r.xinfo_consumers(stream, group)}


def pending_ids(r: redis.Redis, stream: str, group: str, consumer: Optional[str] = None) -> List[str]:
    rows = r.xpending_range(stream, group, "-", "+", 100_000, consumername=consumer)
    return [_text(row["message_id"]) for row in rows]


def total_pending(r: redis.Redis, stream: str, group: str) -> int:
    return int(r.xpending(stream, group)["pending"])


def add_entries(r: redis.Redis, stream: str, count: int) -> List[str]:
    pipe = r.pipeline(transaction=False)
    for n in range(count):
        pipe.xadd(stream, {b"n": str(n).encode(), b"payload": b"\xff\x00x"})
    return [_text(i) for i in pipe.execute()]


def read_as(r: redis.Redis, stream: str, group: str, consumer: str, count: int) -> List[str]:
    """XREADGROUP `>` under another consumer's name from a plain client."""
    reply = r.xreadgroup(group, consumer, {stream: ">"}, count=count)
    return [_text(entry_id) for _key, entries in reply for entry_id, _fields in entries]


def add_and_read_as(r: redis.Redis, stream: str, group: str, consumer: str, count: int) -> List[str]:
    """XADD `count` entries and read them as `consumer` in one MULTI/EXEC, so that a live
    consumer blocked on `>` cannot get them first."""
    pipe = r.pipeline(transaction=True)
    for n in range(count):
        pipe.xadd(stream, {b"n": str(n).encode()})
    pipe.xreadgroup(group, consumer, {stream: ">"}, count=count)
    reply = pipe.execute()[-1]
    return [_text(entry_id) for _key, entries in reply for entry_id, _fields in entries]


def stream_ops(url: str, stream: str, group: str, me: str) -> StreamOps:
    """rstream's command layer on its own connection, to drive one command at a time."""
    options = Options.build(stream=stream, group=group, consumer_name=me, **FAST)
    return StreamOps(ConnectionFactory(redis.Redis.from_url(url), stream).make("test"), options)


def kill(child: SpawnedProcess) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(10)


def assert_once_each(handled: List[Handled], expected_ids: List[str]) -> None:
    ids = [h.id for h in handled]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"handled more than once: {duplicates[:10]}"
    assert sorted(ids) == sorted(expected_ids)


@pytest.fixture
def group(r: redis.Redis, stream_names: Any) -> Iterator[tuple]:
    """(stream, group) with the group created at 0 on an empty stream."""
    r.xgroup_create(stream_names.stream, stream_names.group, "0", mkstream=True)
    yield stream_names.stream, stream_names.group


@pytest.fixture
def start_consumer(redis_url: str, group: tuple) -> Iterator[Callable[..., rstream.Consumer]]:
    """Start an in-process Consumer on the test's stream and group; stopped at teardown."""
    started: List[rstream.Consumer] = []

    def start(name: str, handler: Callable[[rstream.Message], Any], **options: Any) -> rstream.Consumer:
        consumer = rstream.Consumer(redis_url, group[0], group[1], name, **{**FAST, **options})
        started.append(consumer)
        return consumer.start(handler)

    yield start
    for consumer in started:
        consumer.stop(timeout=5)


def hold_entries(spawn: Callable[..., SpawnedProcess], r: redis.Redis, redis_url: str,
                 stream: str, group: str, name: str, count: int) -> SpawnedProcess:
    """A HOLDER child that has read (and holds, pending) `count` entries."""
    child = spawn(HOLDER, redis_url, stream, group, name)
    wait_until(lambda: len(pending_ids(r, stream, group, name)) == count or child.poll() is not None,
               DEADLINE_S, message=f"{name} never held {count} entries")
    assert child.poll() is None, child.output()
    return child


# -- 1. a SIGKILLed consumer's entries --------------------------------------------------------------
def test_killed_consumers_entries_are_handled_by_a_live_one_with_attempt_2(
        r: redis.Redis, redis_url: str, group: tuple, spawn: Callable[..., SpawnedProcess],
        start_consumer: Callable[..., rstream.Consumer]) -> None:
    """A SIGKILLed consumer's 5 pending entries are handled by a live consumer with attempt 2,
    and the dead consumer is then removed from the group."""
    stream, grp = group
    ids = add_entries(r, stream, 5)
    holder = hold_entries(spawn, r, redis_url, stream, grp, "doomed", 5)
    recorder = Recorder()
    survivor = start_consumer("survivor", recorder.handler("survivor"))
    kill(holder)

    wait_until(lambda: recorder.count() >= 5, DEADLINE_S, message="claimed entries not handled")
    wait_until(lambda: total_pending(r, stream, grp) == 0, DEADLINE_S, message="entries still pending")
    wait_until(lambda: "doomed" not in consumers(r, stream, grp), DEADLINE_S,
               message="dead consumer not removed")
    assert_once_each(recorder.handled, ids)
    assert {h.attempt for h in recorder.handled} == {2}
    assert survivor.stats().claimed == 5
    assert "holding" in holder.output()  # the dead one really had them in its handler


# -- 2. a slow handler keeps its entry ----------------------------------------------------------
def test_slow_handler_keeps_its_entry_while_its_consumer_heartbeats(
        r: redis.Redis, group: tuple, start_consumer: Callable[..., rstream.Consumer]) -> None:
    """A handler running 10x the dead threshold keeps its entry: the other consumer never handles
    it, and it is acknowledged once."""
    stream, grp = group
    recorder = Recorder()
    work_s = 10 * DEAD_AFTER_MS / 1000
    # A long blocking read: only the heartbeat keeps this consumer's idle low while it works.
    slow = start_consumer("slow", recorder.handler("slow", work_s), receive_interval=5000)
    [entry] = add_entries(r, stream, 1)
    wait_until(lambda: recorder.count() == 1, DEADLINE_S, message="slow consumer never got the entry")
    other = start_consumer("other", recorder.handler("other"))

    wait_until(lambda: slow.stats().acked == 1, DEADLINE_S + work_s, message="entry never acked")
    assert total_pending(r, stream, grp) == 0
    assert recorder.handled == [Handled("slow", entry, 1)]
    assert other.stats().claimed == 0
    assert other.stats().delivered == 0
    assert slow.stats().acked == 1


# -- 3. three live consumers, one dead with 1,000 entries --------------------------------------------
def test_three_live_consumers_share_a_dead_ones_1000_entries_exactly_once(
        r: redis.Redis, group: tuple, start_consumer: Callable[..., rstream.Consumer],
        caplog: pytest.LogCaptureFixture) -> None:
    """1,000 entries pending for a dead consumer are handled exactly once across three live
    consumers racing to claim them, and nothing is logged at ERROR."""
    stream, grp = group
    ids = add_entries(r, stream, 1000)
    assert len(read_as(r, stream, grp, "gone", 1000)) == 1000
    recorder = Recorder()
    # Small pages and a small in-flight bound make the three reapers' claims overlap in time.
    live = [start_consumer(f"live-{n}", recorder.handler(f"live-{n}"), batch_size=50)
            for n in range(3)]

    wait_until(lambda: total_pending(r, stream, grp) == 0, DEADLINE_S, message="entries still pending")
    wait_until(lambda: "gone" not in consumers(r, stream, grp), DEADLINE_S,
               message="dead consumer not removed")
    for consumer in live:
        consumer.stop(timeout=5)
    assert_once_each(recorder.handled, ids)
    assert {h.attempt for h in recorder.handled} == {2}
    assert sum(c.stats().claimed for c in live) == 1000
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert not errors, [rec.getMessage() for rec in errors]


# -- 4. deleted entries ---------------------------------------------------------------------------
def test_entries_deleted_while_pending_for_a_dead_consumer_are_acked_and_counted(
        r: redis.Redis, group: tuple, start_consumer: Callable[..., rstream.Consumer]) -> None:
    """Entries XDELed while pending for a dead consumer are acknowledged and counted as deleted,
    never given to the handler; the others are claimed and handled."""
    stream, grp = group
    ids = add_entries(r, stream, 10)
    read_as(r, stream, grp, "gone", 10)
    deleted = ids[1:8:2]
    assert r.xdel(stream, *deleted) == len(deleted)
    recorder = Recorder()
    live = start_consumer("live", recorder.handler("live"))

    wait_until(lambda: total_pending(r, stream, grp) == 0, DEADLINE_S, message="entries still pending")
    wait_until(lambda: live.stats().deleted == len(deleted), DEADLINE_S,
               message="deleted entries not counted")
    assert_once_each(recorder.handled, [i for i in ids if i not in deleted])
    assert live.stats().claimed == len(ids) - len(deleted)


def test_entries_deleted_while_pending_are_acked_on_own_replay(
        r: redis.Redis, group: tuple, start_consumer: Callable[..., rstream.Consumer]) -> None:
    """A restart's `0` replay returns deleted entries without fields: they are acked and counted,
    not handed to the handler as garbage, and the replay does not loop on them."""
    stream, grp = group
    ids = add_entries(r, stream, 6)
    read_as(r, stream, grp, "returning", 6)
    deleted = [ids[0], ids[3]]
    r.xdel(stream, *deleted)
    recorder = Recorder()
    back = start_consumer("returning", recorder.handler("returning"))

    wait_until(lambda: total_pending(r, stream, grp) == 0, DEADLINE_S, message="entries still pending")
    wait_until(lambda: back.stats().deleted == 2, DEADLINE_S, message="deleted entries not counted")
    assert_once_each(recorder.handled, [i for i in ids if i not in deleted])
    assert {h.attempt for h in recorder.handled} == {2}
    assert back.stats().replayed == 4


# -- 5. the delete script refuses a consumer that came back ------------------------------------------
def test_delete_script_refuses_a_consumer_that_read_again(
        r: redis.Redis, redis_url: str, group: tuple) -> None:
    """delete_consumer_if_empty removes an idle consumer with nothing pending, and refuses one that
    read again after it was judged dead: its new pending entries survive."""
    stream, grp = group
    ops = stream_ops(redis_url, stream, grp, "reaper")
    try:
        r.xgroup_createconsumer(stream, grp, "sleeper")
        wait_until(lambda: consumers(r, stream, grp)["sleeper"]["idle"] >= 50, DEADLINE_S)
        judged = {c.name: c for c in ops.look()[0]}["sleeper"]
        assert judged.pending == 0 and judged.idle_ms >= 50  # what the reaper saw: removable

        taken = add_and_read_as(r, stream, grp, "sleeper", 2)  # it reads again in the gap
        # Pending entries alone make the script refuse, whatever the idle threshold.
        assert ops.delete_consumer_if_empty("sleeper", 0) is False
        assert pending_ids(r, stream, grp, "sleeper") == taken

        r.xack(stream, grp, *taken)
        read_as(r, stream, grp, "sleeper", 1)  # nothing new, but it is alive again
        assert ops.delete_consumer_if_empty("sleeper", 10_000) is False
        assert "sleeper" in consumers(r, stream, grp)

        # Control: once idle past the threshold with nothing pending, it is removed.
        wait_until(lambda: consumers(r, stream, grp)["sleeper"]["idle"] >= 50, DEADLINE_S)
        assert ops.delete_consumer_if_empty("sleeper", 50) is True
        assert "sleeper" not in consumers(r, stream, grp)
        assert ops.delete_consumer_if_empty("never-existed", 0) is False
    finally:
        ops.link.close()


def test_reaper_keeps_a_consumer_that_reads_between_claim_and_delete(
        r: redis.Redis, group: tuple, start_consumer: Callable[..., rstream.Consumer],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: when a 'dead' consumer reads again between the reaper's claim and its delete,
    the delete is refused, the new entries are not destroyed, and each entry is handled once."""
    stream, grp = group
    first = add_entries(r, stream, 3)
    read_as(r, stream, grp, "sleeper", 3)
    seen: Dict[str, Any] = {}
    original = StreamOps.delete_consumer_if_empty

    def delete_after_a_late_read(self: StreamOps, consumer: str, min_idle_ms: int) -> bool:
        if consumer == "sleeper" and "refused" not in seen:
            seen["late"] = add_and_read_as(r, stream, grp, "sleeper", 2)
            seen["refused"] = not original(self, consumer, min_idle_ms)
            seen["kept"] = pending_ids(r, stream, grp, "sleeper")
            return False
        return original(self, consumer, min_idle_ms)

    monkeypatch.setattr(StreamOps, "delete_consumer_if_empty", delete_after_a_late_read)
    recorder = Recorder()
    live = start_consumer("reaper", recorder.handler("reaper"))

    # "kept" is the last of the three the reaper's thread writes.
    wait_until(lambda: "kept" in seen, DEADLINE_S, message="the reaper never tried the delete")
    assert seen["refused"] is True
    assert seen["kept"] == seen["late"]
    # The late reader dies in turn: its entries are claimed, then it is removed.
    wait_until(lambda: recorder.count() >= 5 and total_pending(r, stream, grp) == 0, DEADLINE_S,
               message="entries not all handled")
    wait_until(lambda: "sleeper" not in consumers(r, stream, grp), DEADLINE_S,
               message="consumer not removed once empty and dead")
    assert_once_each(recorder.handled, first + seen["late"])
    assert live.stats().claimed == 5


# -- 6. own strays --------------------------------------------------------------------------------
def test_entries_put_in_own_pending_list_behind_its_back_are_delivered(
        r: redis.Redis, group: tuple, start_consumer: Callable[..., rstream.Consumer]) -> None:
    """Entries read under this consumer's name by another client (so it never saw them) are found
    by its own-pending check and delivered to its handler."""
    stream, grp = group
    recorder = Recorder()
    me = start_consumer("me", recorder.handler("me"))
    strays = add_and_read_as(r, stream, grp, "me", 3)
    assert pending_ids(r, stream, grp, "me") == strays

    wait_until(lambda: total_pending(r, stream, grp) == 0, DEADLINE_S, message="strays never delivered")
    assert_once_each(recorder.handled, strays)
    assert {h.attempt for h in recorder.handled} == {2}
    assert me.stats().replayed == 3
    assert me.stats().claimed == 0


def test_a_read_the_reader_is_slow_to_admit_is_not_taken_for_strays(
        r: redis.Redis, group: tuple, start_consumer: Callable[..., rstream.Consumer],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries the server has delivered to this consumer, in a reply its reader has not
    admitted yet (still on the wire, or the reader starved of CPU), are no strays however long
    that takes: the reaper leaves them to the reader, and each is handled once. The reader
    is held for three dead thresholds just before it admits its first read, while the reaper
    looks at the pending list every heartbeat."""
    stream, grp = group
    ids = add_entries(r, stream, 50)
    original = Intake.deliver
    stalled, resumed = threading.Event(), threading.Event()

    def deliver_late(self: Intake, grant: Any, messages: Any, deleted: Any, counter: str = "") -> None:
        reader = threading.current_thread().name.startswith("rstream-reader")
        if reader and messages and not stalled.is_set():
            stalled.set()
            time.sleep(3 * FAST["heartbeat_interval"] * FAST["allowed_missed_heartbeats"] / 1000)
            original(self, grant, messages, deleted, counter)
            resumed.set()
            return
        original(self, grant, messages, deleted, counter)

    monkeypatch.setattr(Intake, "deliver", deliver_late)
    recorder = Recorder()
    live = start_consumer("me", recorder.handler("me"))
    wait_until(resumed.is_set, DEADLINE_S, message="the reader never admitted its first read")
    wait_until(lambda: recorder.count() >= 50 and total_pending(r, stream, grp) == 0
               and live.stats().in_flight == 0, DEADLINE_S, message="entries not all handled")
    assert_once_each(recorder.handled, ids)
    assert live.stats().replayed == 0 and live.stats().claimed == 0


# -- 7. restart under the same name ---------------------------------------------------------------
def test_restart_under_the_same_name_after_the_dead_threshold_handles_each_entry_once(
        r: redis.Redis, redis_url: str, group: tuple, spawn: Callable[..., SpawnedProcess],
        start_consumer: Callable[..., rstream.Consumer]) -> None:
    """A consumer SIGKILLed and restarted under its name after it counts as dead replays its own
    entries and does not also claim them as a dead consumer's: each is handled once."""
    stream, grp = group
    ids = add_entries(r, stream, 5)
    kill(hold_entries(spawn, r, redis_url, stream, grp, "phoenix", 5))
    wait_until(lambda: consumers(r, stream, grp)["phoenix"]["idle"] > 2 * DEAD_AFTER_MS, DEADLINE_S)
    recorder = Recorder()
    # One entry per page and slow handling: the replay outlasts several reaper rounds, so an
    # own-pending check that ran before the replay finished would claim entries twice.
    back = start_consumer("phoenix", recorder.handler("phoenix", work_s=0.1), batch_size=1)

    wait_until(lambda: recorder.count() >= 5 and total_pending(r, stream, grp) == 0, DEADLINE_S,
               message="entries not all handled")
    back.stop(timeout=5)
    assert_once_each(recorder.handled, ids)
    assert {h.attempt for h in recorder.handled} == {2}
    assert back.stats().replayed == 5
    assert back.stats().claimed == 0


# -- 8. the heartbeat on every server -------------------------------------------------------------
@pytest.mark.parametrize("label", sorted(KNOWN_SERVERS))
def test_heartbeat_resets_idle(label: str, stream_names: Any) -> None:
    """On this server version the heartbeat read resets the consumer's idle without delivering
    anything, and a running Consumer stays under the dead threshold on heartbeats alone."""
    stream, grp = stream_names.stream, stream_names.group
    with EmbeddedServer(KNOWN_SERVERS[label]) as server:
        r = server.client()
        r.xgroup_create(stream, grp, "$", mkstream=True)
        ops = stream_ops(server.url, stream, grp, "beater")
        try:
            ops.heartbeat()
            add_entries(r, stream, 3)  # new entries the heartbeat must not deliver
            wait_until(lambda: consumers(r, stream, grp)["beater"]["idle"] >= 150, DEADLINE_S)
            sent = time.monotonic()
            ops.heartbeat()
            idle = consumers(r, stream, grp)["beater"]["idle"]
            since_sent_ms = (time.monotonic() - sent) * 1000
            assert idle <= since_sent_ms + 1, f"idle {idle} ms not reset by the heartbeat on {label}"
            assert pending_ids(r, stream, grp, "beater") == []
        finally:
            ops.link.close()

        # A reader blocked for 5 s does not touch idle; the heartbeat thread alone must.
        consumer = rstream.Consumer(server.url, stream, grp, "running", **{**FAST, "receive_interval": 5000})
        consumer.start(lambda message: None)
        try:
            wait_until(lambda: consumer.stats().delivered == 3, DEADLINE_S)
            samples = []
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                samples.append(consumers(r, stream, grp)["running"]["idle"])
                time.sleep(0.02)  # sampling period, not a wait for a condition
            assert max(samples) <= DEAD_AFTER_MS, f"{label}: idle samples {samples}"
        finally:
            consumer.stop(timeout=5)
            r.close()
