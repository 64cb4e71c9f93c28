"""What start() tells a user: one INFO line saying what it consumes and where, and errors that
name the key at fault."""
from __future__ import annotations

import logging
from typing import Any, List

import pytest
import redis

from faultkit import Recorder, new_consumer, publish
from helpers import wait_until
from rstream import Consumer, FatalRedisError
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
