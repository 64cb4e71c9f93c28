"""What start() tells a user: one INFO line saying what it consumes and where, and errors that
name the key at fault."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, List

import pytest
import redis

from faultkit import Recorder, new_consumer, publish
from helpers import wait_until
from proxy import Proxy
from rstream import Consumer, FatalRedisError, RedisUnavailable
from rstream.consumer import PREPARE_BUDGET_S
from rstream._hotpath import IMPLEMENTATION
from rstream.embedded import EmbeddedServer


def test_start_logs_one_info_line_with_stream_group_consumer_server_and_hot_path(
        redis_server: EmbeddedServer, stream_names: Any, consumers: List[Consumer],
        caplog: pytest.LogCaptureFixture) -> None:
    """The INFO line at start names the stream, group, consumer, server version and address,
    and the hot path in use."""
    caplog.set_level(logging.INFO, logger="rstream")
    new_consumer(consumers, redis_server.url, stream_names).start(Recorder())
    lines = [r.getMessage() for r in caplog.records
             if r.levelno == logging.INFO and "starting" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    version = ".".join(map(str, redis_server.version))
    for part in (stream_names.stream, stream_names.group, stream_names.consumer, version,
                 f"{redis_server.host}:{redis_server.port}", IMPLEMENTATION):
        assert part in lines[0], (part, lines[0])


@pytest.mark.parametrize("which", ["stream", "dead_letter_stream"])
def test_a_key_of_the_wrong_type_is_named_in_the_error(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer], which: str) -> None:
    """A string where the stream (or the dead-letter stream) should be: start() raises
    WRONGTYPE naming that key and its role."""
    key = stream_names.stream if which == "stream" else stream_names.dead_letter
    r.set(key, b"not a stream")
    consumer = new_consumer(consumers, redis_server.url, stream_names, max_attempts=2,
                            dead_letter_stream=stream_names.dead_letter)
    with pytest.raises(FatalRedisError, match="WRONGTYPE") as raised:
        consumer.start(Recorder())
    assert repr(key) in str(raised.value) and which in str(raised.value).replace("the stream", "stream")


def test_a_stream_replaced_at_runtime_is_named_in_the_error(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer]) -> None:
    """The stream key turns into a string while consuming: the fatal error names the key."""
    rec = Recorder()
    consumer = new_consumer(consumers, redis_server.url, stream_names)
    consumer.start(rec)
    ids = publish(r, stream_names.stream, 5)
    wait_until(lambda: rec.has_all(ids), 10)
    with r.pipeline(transaction=True) as pipe:
        pipe.delete(stream_names.stream).set(stream_names.stream, b"a string").execute()
    wait_until(lambda: consumer.error is not None, 10, message="no fatal error")
    assert "WRONGTYPE" in str(consumer.error) and repr(stream_names.stream) in str(consumer.error)


def test_start_returns_promptly_through_a_black_holed_network_and_consumes_once_it_heals(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer]) -> None:
    """The network swallows every byte: start() returns within its try budget (not after the
    10 s I/O timeout), and the consumer consumes once the network heals."""
    with Proxy(redis_server.port) as proxy:
        proxy.blackhole()
        consumer = new_consumer(consumers, proxy.url, stream_names)
        rec = Recorder()
        started = time.monotonic()
        consumer.start(rec)
        took = time.monotonic() - started
        assert took < PREPARE_BUDGET_S + 1.5, f"start() took {took:.2f} s"
        proxy.restore()
        ids = publish(r, stream_names.stream, 10)
        wait_until(lambda: rec.has_all(ids), 30, message="nothing consumed after the network healed")


def test_start_timeout_makes_start_fail_when_the_server_cannot_be_reached(
        redis_server: EmbeddedServer, stream_names: Any, consumers: List[Consumer]) -> None:
    """With start_timeout=500 and the server down, start() raises RedisUnavailable naming the
    option after about half a second; without it start() returns and the threads retry."""
    url = redis_server.url
    redis_server.kill()
    strict = new_consumer(consumers, url, stream_names, start_timeout=500)
    started = time.monotonic()
    with pytest.raises(RedisUnavailable, match="start_timeout=500") as raised:
        strict.start(Recorder())
    took = time.monotonic() - started
    assert 0.4 < took < 3.0, took
    assert strict.error is None and "Redis at" in str(raised.value)
    lenient = new_consumer(consumers, url, stream_names)
    lenient.start(Recorder())  # retries forever, as the Elixir library does
    assert lenient.stats().outages == 1


def test_start_timeout_waits_for_a_server_that_comes_up_in_time(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer]) -> None:
    """A server that comes up within start_timeout: start() returns and consumes."""
    redis_server.kill()
    timer = threading.Timer(0.5, redis_server.start)
    timer.start()
    try:
        consumer = new_consumer(consumers, redis_server.url, stream_names, start_timeout=10_000)
        rec = Recorder()
        consumer.start(rec)
    finally:
        timer.join()
    ids = publish(redis_server.client(), stream_names.stream, 5)
    wait_until(lambda: rec.has_all(ids), 10)
