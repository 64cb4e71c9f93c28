"""`on_event`: users' own telemetry at the moments rstream's log lines mark, against real
servers. Each test provokes one kind of event and checks what the callback received; the last
ones check that a slow or failing callback delays and breaks nothing."""
from __future__ import annotations

import threading
from typing import Any, Iterator, List

import pytest
import redis

import rstream
from helpers import add_entries, unique_name, wait_until
from rstream.embedded import EmbeddedServer
from rstream.events import Event

DEADLINE_S = 20.0
FAST = dict(heartbeat_interval=100, allowed_missed_heartbeats=2, receive_interval=100,
            make_stream=True, group_start_id="0")


class Seen:
    """Every event the callback received, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: List[Event] = []
        self.threads: set[str] = set()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)
            self.threads.add(threading.current_thread().name)

    def of(self, kind: str) -> List[Event]:
        with self.lock:
            return [e for e in self.events if e.kind == kind]


@pytest.fixture
def names() -> Iterator[tuple]:
    yield unique_name("ev"), unique_name("g")


def consumer_on(url: str, stream: str, group: str, seen: Any, name: str = "c1",
                **options: Any) -> rstream.Consumer:
    return rstream.Consumer(url, stream, group, name, on_event=seen, **{**FAST, **options})


def test_an_outage_and_its_end_are_events_on_the_events_thread() -> None:
    """The server killed and started again: an `outage` event naming the server, then a
    `recovered` one with the time it was down, both delivered on rstream-events."""
    seen = Seen()
    with EmbeddedServer() as server:
        with consumer_on(server.url, unique_name("ev"), "g", seen) as consumer:
            consumer.start(lambda m: None)
            wait_until(lambda: server.client().exists(consumer.options.stream), DEADLINE_S)
            server.kill()
            wait_until(lambda: seen.of("outage"), DEADLINE_S, message="no outage event")
            server.restart()
            wait_until(lambda: seen.of("recovered"), DEADLINE_S, message="no recovered event")
    [outage], [recovered] = seen.of("outage"), seen.of("recovered")
    assert outage.stream is None and outage.details["server"] == f"127.0.0.1:{server.port}"
    assert recovered.details["down_s"] > 0 and recovered.at >= outage.at
    assert seen.threads == {"rstream-events"}


def test_a_destroyed_group_is_a_group_recreated_event(r: redis.Redis, redis_url: str,
                                                       names: tuple) -> None:
    stream, group = names
    seen = Seen()
    with consumer_on(redis_url, stream, group, seen) as consumer:
        consumer.start(lambda m: None)
        wait_until(lambda: r.exists(stream), DEADLINE_S)
        r.xgroup_destroy(stream, group)
        wait_until(lambda: seen.of("group_recreated"), DEADLINE_S, message="no event")
    [event] = seen.of("group_recreated")
    assert (event.stream, event.group, event.consumer) == (stream, group, "c1")
    assert event.details["reason"] in ("resumed", "new")


def test_a_dead_consumer_claimed_is_an_event_with_the_count(r: redis.Redis, redis_url: str,
                                                             names: tuple) -> None:
    """A name that read 7 entries and went quiet: `consumer_dead` says who and how many."""
    stream, group = names
    r.xgroup_create(stream, group, id="0", mkstream=True)
    add_entries(r, stream, 7)
    r.xreadgroup(group, "ghost", {stream: ">"})
    seen = Seen()
    with consumer_on(redis_url, stream, group, seen) as consumer:
        consumer.start(lambda m: None)
        wait_until(lambda: seen.of("consumer_dead"), DEADLINE_S, message="no event")
    [event] = seen.of("consumer_dead")
    assert event.details["dead"] == "ghost" and event.details["claimed"] == 7
    assert event.details["idle_ms"] > 200


@pytest.mark.parametrize("dead_letter", [True, False])
def test_a_last_failure_is_a_dead_lettered_or_dropped_event(r: redis.Redis, redis_url: str,
                                                             names: tuple, dead_letter: bool) -> None:
    stream, group = names
    [entry] = add_entries(r, stream, 1)
    seen = Seen()
    extra = dict(dead_letter_stream=stream + ":dlq") if dead_letter else {}

    def fail(message: rstream.Message) -> None:
        raise ValueError("no good")

    with consumer_on(redis_url, stream, group, seen, max_attempts=1, **extra) as consumer:
        consumer.start(fail)
        kind = "dead_lettered" if dead_letter else "dropped"
        wait_until(lambda: seen.of(kind), DEADLINE_S, message=f"no {kind} event")
    [event] = seen.of("dead_lettered" if dead_letter else "dropped")
    assert event.details["id"] == entry and event.details["attempt"] == 1
    assert "no good" in event.details["error"]


def test_a_newer_process_under_the_same_name_fences_the_older(redis_url: str, names: tuple) -> None:
    stream, group = names
    seen = Seen()
    with consumer_on(redis_url, stream, group, seen, name="same") as older:
        older.start(lambda m: None)
        wait_until(lambda: older.state == "running", DEADLINE_S)
        with consumer_on(redis_url, stream, group, Seen(), name="same") as newer:
            newer.start(lambda m: None)
            wait_until(lambda: seen.of("fenced"), DEADLINE_S, message="no fenced event")
            wait_until(lambda: older.state == "failed", DEADLINE_S)
    [event] = seen.of("fenced")
    assert event.consumer == "same" and event.details["by"]


def test_a_slow_and_raising_callback_delays_nothing(r: redis.Redis, redis_url: str, names: tuple,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A callback that blocks, then raises: entries keep being handled meanwhile, the
    exception is logged, and the next event still arrives."""
    stream, group = names
    release = threading.Event()
    calls: List[str] = []

    def callback(event: Event) -> None:
        calls.append(event.kind)
        if len(calls) == 1:
            release.wait(DEADLINE_S)
            raise RuntimeError("telemetry is down")

    r.xgroup_create(stream, group, id="0", mkstream=True)
    for ghost in ("ghost-1", "ghost-2"):  # two dead consumers: two events
        add_entries(r, stream, 3)
        r.xreadgroup(group, ghost, {stream: ">"})
    handled: List[str] = []
    with consumer_on(redis_url, stream, group, callback) as consumer:
        consumer.start(lambda m: handled.append(m.id))
        wait_until(lambda: len(handled) == 6, DEADLINE_S, message="claims held up by the callback")
        ids = add_entries(r, stream, 50)
        wait_until(lambda: set(ids) <= set(handled), DEADLINE_S, message="reads held up")
        assert calls == ["consumer_dead"]  # the first still blocked, the second queued
        release.set()
        wait_until(lambda: len(calls) == 2, DEADLINE_S, message="the next event never came")
    assert any("on_event callback raised" in r.getMessage() for r in caplog.records)


def test_an_async_on_event_is_refused() -> None:
    async def callback(event: Event) -> None:
        pass

    with pytest.raises(rstream.ConfigError, match="on_event must be a plain"):
        rstream.Consumer("redis://127.0.0.1:1/0", "s", "g", "c", on_event=callback)
