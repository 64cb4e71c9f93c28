"""Faults that are not outages: TLS misconfiguration is a ConfigError raised from start() (or
stopping a running consumer), an OOM refusal is transient, and `Link.bounded` keeps every wait
of a link within a deadline and gives the link its own timeouts back afterwards.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
import redis
import redis.exceptions as rex

import rstream
from faultkit import FAULT_DEFAULTS, Recorder, publish, rstream_threads
from helpers import unique_name, wait_until
from proxy import Proxy
from rstream.connection import CONNECT_TIMEOUT_S, ConnectionFactory, Link, translate
from rstream.embedded import EmbeddedServer
from rstream.errors import (ConfigError, FatalRedisError, RedisOutOfMemory, RedisUnavailable,
                            TLSConfigError)
from rstream.stats import Counters
from rstream.supervise import Health, Loop
from tlskit import Certs, TlsServer

PASSWORD = "s3cret-tls-pw"
START_BOUND_S = 5.0  # a correctness bound on a failing start(), not a benchmark


def _consumer(redis_option: Any, **options: Any) -> rstream.Consumer:
    return rstream.Consumer(redis_option, unique_name("tls"), "g", "c1", **{**FAULT_DEFAULTS, **options})


# -- TLS misconfiguration: a ConfigError from start() -------------------------------------------
def test_rediss_to_a_plain_port_fails_start_with_config_error_at_once(
        redis_server: EmbeddedServer) -> None:
    """rediss:// to a server without TLS: start() raises a ConfigError naming TLS and the
    address (not the password) within seconds, and leaves no thread running."""
    before = set(threading.enumerate())
    consumer = _consumer(f"rediss://:{PASSWORD}@127.0.0.1:{redis_server.port}/0")
    started = time.monotonic()
    with pytest.raises(ConfigError) as raised:
        consumer.start(Recorder())
    elapsed = time.monotonic() - started
    print(f"rediss:// to a plain port failed start() after {elapsed:.3f} s: {raised.value}")
    assert elapsed < START_BOUND_S
    message = str(raised.value)
    assert "TLS" in message and f"127.0.0.1:{redis_server.port}" in message
    assert PASSWORD not in message
    # Both a ConfigError and a FatalRedisError: what a running consumer stops with too.
    assert isinstance(raised.value, TLSConfigError) and isinstance(raised.value, FatalRedisError)
    assert not rstream_threads(before)


@pytest.mark.parametrize("missing", ["ssl_ca_certs", "ssl_certfile", "ssl_keyfile"])
def test_missing_tls_file_fails_start_naming_it(
        redis_server: EmbeddedServer, certs: Certs, tmp_path: Path, missing: str) -> None:
    """A CA, certificate or key file that does not exist: start() raises a ConfigError naming
    the file, rather than retrying it as an outage. (The files are read before any handshake,
    so any server will do.)"""
    files = dict(ssl_ca_certs=str(certs.ca), ssl_certfile=str(certs.cert), ssl_keyfile=str(certs.key))
    files[missing] = str(tmp_path / "nowhere" / f"{missing}.pem")
    consumer = _consumer(dict(host="127.0.0.1", port=redis_server.port, ssl=True, **files))
    with pytest.raises(ConfigError, match="not found") as raised:
        consumer.start(Recorder())
    assert files[missing] in str(raised.value)


def test_unreadable_ca_file_fails_start_naming_it(redis_server: EmbeddedServer, tmp_path: Path) -> None:
    """A CA "file" that cannot be read (here a directory: root reads any file) is a ConfigError
    naming it and why."""
    consumer = _consumer(f"rediss://127.0.0.1:{redis_server.port}/0?ssl_ca_certs={tmp_path}")
    with pytest.raises(ConfigError, match="cannot be read") as raised:
        consumer.start(Recorder())
    assert str(tmp_path) in str(raised.value)


def test_ca_file_removed_under_a_running_consumer_stops_it(
        tls_server: TlsServer, certs: Certs, tmp_path: Path) -> None:
    """The CA file disappears while a TLS consumer runs: its next reconnect fails, and the
    consumer stops with a ConfigError naming the file instead of retrying for ever."""
    before = set(threading.enumerate())
    ca = tmp_path / "ca.pem"
    shutil.copy(certs.ca, ca)
    consumer = _consumer(tls_server.url(ca))
    rec = Recorder()
    r = tls_server.server.client()  # the plain port, behind rstream's back
    try:
        consumer.start(rec)
        ids = publish(r, consumer.options.stream, 5)
        wait_until(lambda: rec.has_all(ids), 20, message="not consumed over TLS")
        ca.unlink()
        r.client_kill_filter(_type="normal", skipme=True)
        wait_until(lambda: consumer.error is not None, 20, message="the consumer kept retrying")
    finally:
        consumer.stop(5)
        r.close()
    assert isinstance(consumer.error, ConfigError) and str(ca) in str(consumer.error)
    wait_until(lambda: not rstream_threads(before), 5, message="rstream threads left running")


def test_a_config_error_from_a_step_stops_its_loop() -> None:
    """A ConfigError raised by a thread's step is fatal: the owner is told (as a
    FatalRedisError) and the thread ends, with no retry loop."""
    stop, fatal, calls = threading.Event(), [], []

    def step() -> None:
        calls.append(1)
        raise ConfigError("the option cannot work")

    loop = Loop("rstream-test", step, stop, Health(Counters(), "nowhere"), lambda: None, fatal.append)
    loop.start()
    try:
        wait_until(lambda: fatal, 5, message="the ConfigError was not reported as fatal")
        loop.thread.join(5)
        assert not loop.thread.is_alive()
    finally:
        stop.set()
    assert len(calls) == 1
    assert isinstance(fatal[0], FatalRedisError) and "cannot work" in str(fatal[0])
    assert isinstance(fatal[0].__cause__, ConfigError)


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


# -- Link.bounded --------------------------------------------------------------------------------
def _timeouts(link: Link) -> Dict[str, Any]:
    conn: Any = link._conn  # the link's own redis-py connection, looked at from outside
    sock = conn._sock
    return dict(read=conn.socket_timeout, connect=conn.socket_connect_timeout,
                live=sock.gettimeout() if sock is not None else None)


@pytest.fixture
def link(redis_server: EmbeddedServer) -> Iterator[Link]:
    made = ConnectionFactory(redis_server.client(), "s").make("test", read_timeout_s=10.0)
    try:
        yield made
    finally:
        made.close()


def test_bounded_cuts_a_blocking_read_and_restores_timeouts(link: Link) -> None:
    """Inside bounded(), a 5 s blocking read gives up at the deadline; afterwards the link has
    its own timeouts again, on the live socket too, and works as before."""
    link.call("PING")
    normal = dict(read=10.0, connect=CONNECT_TIMEOUT_S, live=10.0)
    assert _timeouts(link) == normal
    started = time.monotonic()
    with link.bounded(started + 0.3):
        assert _timeouts(link)["live"] <= 0.3
        with pytest.raises(RedisUnavailable):
            link.call("BLPOP", "nothing-here", 5)
    assert time.monotonic() - started < 2.0
    assert _timeouts(link) == dict(normal, live=None)  # the timed-out connection was dropped
    with link.bounded(time.monotonic() + 5):
        assert link.call("PING") in (b"PONG", "PONG", True)  # connects within the block
    assert _timeouts(link) == normal
    assert link.call("BLPOP", "nothing-here", 1) is None  # the full timeout is back


def test_bounded_holds_one_deadline_across_several_waits(link: Link) -> None:
    """The deadline is for the whole block: a wait that starts late gets only the time left,
    not the time the block started with."""
    link.call("PING")
    started = time.monotonic()
    with link.bounded(started + 2.0):
        assert link.call("BLPOP", "nothing-here", 1.5) is None  # 1.5 s of the 2 spent
        with pytest.raises(RedisUnavailable):
            link.call("BLPOP", "nothing-here", 5)
    elapsed = time.monotonic() - started
    assert elapsed < 2.9, elapsed  # 3.5 s if the second wait got the block's first 2 s


def test_bounded_cuts_a_connect_over_a_black_holed_network(redis_server: EmbeddedServer) -> None:
    """Inside bounded(), connecting through a network that drops every byte (the TCP connect
    succeeds, no reply ever comes) fails at the deadline, not after the 10 s timeouts."""
    with Proxy(redis_server.port) as proxy:
        proxy.blackhole()
        link = ConnectionFactory(redis.Redis.from_url(proxy.url), "s").make("test", read_timeout_s=10.0)
        started = time.monotonic()
        try:
            with link.bounded(started + 0.5):
                with pytest.raises(RedisUnavailable):
                    link.call("PING")
        finally:
            link.close()
        elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed
    assert _timeouts(link) == dict(read=10.0, connect=CONNECT_TIMEOUT_S, live=None)

