"""Faults that are not outages: an OOM refusal is transient (and logged as what it is), and
error replies whose code redis-py cuts off are told apart by class.
"""
from __future__ import annotations

import logging

import pytest
import redis
import redis.exceptions as rex

from rstream.connection import ConnectionFactory, translate
from rstream.embedded import EmbeddedServer
from rstream.errors import FatalRedisError, RedisOutOfMemory, RedisUnavailable
from rstream.stats import Counters
from rstream.supervise import Health


# -- OOM: transient ------------------------------------------------------------------------------
def test_oom_refusal_is_transient(redis_server: EmbeddedServer, r: redis.Redis) -> None:
    """A write refused for maxmemory (noeviction) comes out of a link as RedisOutOfMemory, a
    RedisUnavailable (retried), never a FatalRedisError; its text keeps the OOM code."""
    link = ConnectionFactory(redis_server.client(), "s").make("test")
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    try:
        with pytest.raises(RedisOutOfMemory) as raised:
            link.call("XADD", "s", "*", "n", "1")
    finally:
        r.config_set("maxmemory", 0)
        link.close()
    assert isinstance(raised.value, RedisUnavailable) and not isinstance(raised.value, FatalRedisError)
    assert str(raised.value).startswith("OOM ")
    # redis-py cuts the code off the text; the class is what says OOM.
    error = translate(rex.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."))
    assert isinstance(error, RedisOutOfMemory) and "OOM command not allowed" in str(error)


@pytest.mark.parametrize("error, kind, code", [
    (rex.ReadOnlyError("You can't write against a read only replica."), RedisUnavailable, "READONLY"),
    (rex.MasterDownError("Link with MASTER is down"), RedisUnavailable, "MASTERDOWN"),
    (rex.ClusterDownError("The cluster is down"), RedisUnavailable, "CLUSTERDOWN"),
    (rex.TryAgainError("Multiple keys request during rehashing of slot"), RedisUnavailable, "TRYAGAIN"),
    (rex.NoScriptError("No matching script."), FatalRedisError, "NOSCRIPT"),
], ids=["readonly", "masterdown", "clusterdown", "tryagain", "noscript"])
def test_replies_redis_py_strips_the_code_of_are_told_apart_by_class(
        error: Exception, kind: type, code: str) -> None:
    """Error replies whose code redis-py cuts off get the kind their code calls for, with the
    code back in the text."""
    translated = translate(error)
    assert type(translated) is kind and str(translated).startswith(code + " ")


def test_oom_outage_is_logged_as_out_of_memory_not_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    """The outage log names an OOM refusal for what it is, and its end as writes accepted."""
    caplog.set_level(logging.INFO, logger="rstream")
    health = Health(Counters(), "127.0.0.1:1")
    health.down(RedisOutOfMemory("OOM command not allowed when used memory > 'maxmemory'."))
    health.up()
    lines = [rec.getMessage() for rec in caplog.records]
    assert any("refuses writes: out of memory" in line for line in lines), lines
    assert any("accepts writes again" in line for line in lines), lines
    assert not any("unreachable" in line for line in lines), lines
