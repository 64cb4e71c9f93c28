"""No entry added after start() returned is ever skipped: a group created when a missing stream
appears starts at 0, and one lost at runtime resumes where nothing new can be missed. Also: a
clean stop leaves the group, and a server at maxmemory is no reason to fail start().
"""
from __future__ import annotations

import logging
import threading
from typing import Any, List

import pytest
import redis

from faultkit import Recorder, new_consumer, pending, publish
from helpers import wait_until
from rstream import Consumer
from rstream.embedded import EmbeddedServer


def _consumer_names(r: redis.Redis, stream: str, group: str) -> List[str]:
    return [c["name"].decode() for c in r.xinfo_consumers(stream, group)]


def test_a_stream_that_appears_after_start_is_read_from_its_first_entry(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer], caplog: pytest.LogCaptureFixture) -> None:
    """make_stream=False, no stream yet, group_start_id "$": entries 1, 2 and 3 added while the
    consumer waits are all handled (the group is created at 0 when the stream appears)."""
    caplog.set_level(logging.INFO, logger="rstream")
    rec = Recorder()
    consumer = new_consumer(consumers, redis_server.url, stream_names, make_stream=False,
                            group_start_id="$")
    consumer.start(rec)
    ids = [r.xadd(stream_names.stream, {b"n": str(n).encode()}).decode() for n in (1, 2, 3)]
    wait_until(lambda: rec.has_all(ids), 15, message="the first entries of a new stream were skipped")
    assert any("appeared" in m.getMessage() and "created at 0" in m.getMessage() for m in caplog.records)


def test_group_start_id_still_applies_to_a_stream_that_exists_at_start(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer]) -> None:
    """group_start_id "$" on a stream that exists at start: the old entries are not delivered,
    every entry added after start() is."""
    old = publish(r, stream_names.stream, 5)
    rec = Recorder()
    consumer = new_consumer(consumers, redis_server.url, stream_names, group_start_id="$")
    consumer.start(rec)
    new = publish(r, stream_names.stream, 5, start=5)
    wait_until(lambda: rec.has_all(new), 10, message="new entries not handled")
    wait_until(lambda: pending(r, stream_names.stream, stream_names.group) == 0, 10)
    assert not rec.seen() & set(old)


class Producer(threading.Thread):
    """XADDs an entry every few ms until stopped, through outages; `ids` are the entries the
    server accepted. `paused` holds it back between two writes."""

    def __init__(self, url: str, stream: str) -> None:
        super().__init__(name="test-producer", daemon=True)
        self._r = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self._stream = stream
        self.ids: List[str] = []
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.idle = threading.Event()  # set while paused, between two writes

    def run(self) -> None:
        n = 0
        while not self.stop.wait(0.003):
            if self.paused.is_set():
                self.idle.set()
                continue
            self.idle.clear()
            try:
                self.ids.append(self._r.xadd(self._stream, {b"n": str(n).encode()}).decode())
                n += 1
            except redis.RedisError:
                pass  # the server is down: try again


@pytest.mark.parametrize("make_stream", [True, False])
def test_restarts_without_persistence_skip_nothing_a_producer_wrote(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer], make_stream: bool, caplog: pytest.LogCaptureFixture) -> None:
    """A producer writes throughout three restarts of a server without persistence: every entry
    the new server accepted is handled, though the producer writes before the consumer has
    reconnected and re-created its group (it used to be re-created at "$", skipping them)."""
    caplog.set_level(logging.WARNING, logger="rstream")
    rec = Recorder()
    consumer = new_consumer(consumers, redis_server.url, stream_names, make_stream=make_stream,
                            group_start_id="$")
    producer = Producer(redis_server.url, stream_names.stream)
    r.xgroup_create(stream_names.stream, stream_names.group, "$", mkstream=True)
    consumer.start(rec)
    producer.start()
    try:
        for restart in range(3):
            wait_until(lambda n=50 * (restart + 1): len(producer.ids) > n, 10, message="producer stuck")
            # What the old server held dies with it (no persistence): the test settles it first.
            producer.paused.set()
            producer.idle.wait(5)
            settled = list(producer.ids)
            wait_until(lambda ids=settled: rec.has_all(ids), 20,
                       message=f"not consumed before restart {restart}")
            redis_server.kill()
            redis_server.start()
            producer.paused.clear()  # writes at once, before the consumer has noticed
        wait_until(lambda: len(producer.ids) > 250, 10, message="producer stuck")
    finally:
        producer.stop.set()
        producer.join(5)
    wait_until(lambda: rec.has_all(producer.ids), 30,
               message=f"{len(set(producer.ids) - rec.seen())} entries skipped")
    assert consumer.stats().group_recreated >= 3
    assert any("at 0: the stream is new" in m.getMessage() for m in caplog.records), caplog.text


def test_a_destroyed_group_resumes_after_the_last_entry_seen(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer], caplog: pytest.LogCaptureFixture) -> None:
    """XGROUP DESTROY while the stream survives: entries added before the group is back are
    handled, and the ones already handled are not delivered again."""
    caplog.set_level(logging.WARNING, logger="rstream")
    rec = Recorder()
    consumer = new_consumer(consumers, redis_server.url, stream_names)
    consumer.start(rec)
    first = publish(r, stream_names.stream, 100)
    wait_until(lambda: rec.has_all(first) and
               pending(r, stream_names.stream, stream_names.group) == 0, 10)
    with r.pipeline(transaction=True) as pipe:  # the group goes, and entries arrive, at once
        pipe.xgroup_destroy(stream_names.stream, stream_names.group)
        for n in range(100, 150):
            pipe.xadd(stream_names.stream, {b"n": str(n).encode()})
        later = [i.decode() for i in pipe.execute()[1:]]
    wait_until(lambda: rec.has_all(later), 15, message="entries added while the group was gone were skipped")
    assert all(rec.handled[i] == 1 for i in first), "entries handled before were delivered again"
    assert any("as the stream survived" in m.getMessage() for m in caplog.records), caplog.text


def test_a_clean_stop_leaves_the_group_and_a_timed_out_one_does_not(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer]) -> None:
    """After stop() with nothing pending the consumer is no longer in the group (no ghost for
    the others to find dead); after a stop that left entries pending it stays, so they can be
    replayed or claimed."""
    rec = Recorder()
    clean = new_consumer(consumers, redis_server.url, stream_names)
    clean.start(rec)
    ids = publish(r, stream_names.stream, 20)
    wait_until(lambda: rec.has_all(ids), 10)
    assert stream_names.consumer in _consumer_names(r, stream_names.stream, stream_names.group)
    clean.stop(5)
    assert stream_names.consumer not in _consumer_names(r, stream_names.stream, stream_names.group)

    release = threading.Event()
    stuck = Consumer(redis_server.url, stream_names.stream, stream_names.group, "stuck",
                     receive_interval=100, heartbeat_interval=100)
    consumers.append(stuck)
    stuck.start(lambda message: release.wait())
    publish(r, stream_names.stream, 1, start=20)
    wait_until(lambda: stuck.stats().in_flight == 1, 10)
    stuck.stop(0.2)
    release.set()
    assert "stuck" in _consumer_names(r, stream_names.stream, stream_names.group)
    assert pending(r, stream_names.stream, stream_names.group) == 1


@pytest.mark.parametrize("group_exists", [True, False])
def test_a_server_at_maxmemory_does_not_fail_start(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer], group_exists: bool) -> None:
    """A server at maxmemory (noeviction) refuses writes, not reads and acks: start() does not
    raise; with the group there, entries are consumed at once; without it, once memory frees."""
    ids = publish(r, stream_names.stream, 20)
    if group_exists:
        r.xgroup_create(stream_names.stream, stream_names.group, "0")
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    rec = Recorder()
    consumer = new_consumer(consumers, redis_server.url, stream_names)
    try:
        consumer.start(rec)
        if group_exists:
            wait_until(lambda: rec.has_all(ids), 10, message="nothing consumed at maxmemory")
            wait_until(lambda: pending(r, stream_names.stream, stream_names.group) == 0, 10,
                       message="acks refused at maxmemory")
    finally:
        r.config_set("maxmemory", 0)
    wait_until(lambda: rec.has_all(ids), 15, message="nothing consumed once memory was free")
    assert consumer.error is None
