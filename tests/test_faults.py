"""Faults: real servers, a real proxy, real process faults.

Each fault ends the same way: every entry published was handled, the group's pending list is
empty (nothing lost, nothing stuck), the consumer never hot-loops, and `stop()` returns in time.
Wrong passwords and missing ACL permissions (fault 5) are in test_security.py.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set

import pytest
import redis

from faultkit import Recorder, command_calls, new_consumer, pending, publish, records, rstream_threads
from helpers import unique_name, wait_until
from proxy import Proxy
from rstream import Consumer, FatalRedisError, Message, RStreamError, WrongType
from rstream.connection import ConnectionFactory
from rstream.embedded import EmbeddedServer, find_server_binary

BLACKHOLE_S = 5.0        # the outage length
STOP_TIMEOUT_S = 3.0
STOP_SLACK_S = 1.5       # scheduling on a loaded 2-core box; a blocked stop would take 10 s more
# Commands per second a consumer may send while it cannot work. With 100 ms intervals an idle
# consumer sends ~40/s (a read, a heartbeat and the reaper's XINFO + XPENDING per 100 ms);
# a loop without backoff sends thousands.
MAX_COMMANDS_PER_S = 150
UNREACHABLE = "unreachable"
REACHABLE = "reachable again"


class Boom(BaseException):
    """Not an Exception: what a careless `except Exception` lets through."""


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="rstream")
    return caplog


def _all_settled(r: redis.Redis, names: Any, rec: Recorder, ids: List[str],
                 timeout: float = 30.0) -> None:
    wait_until(lambda: rec.has_all(ids), timeout, message="not every entry was handled")
    wait_until(lambda: pending(r, names.stream, names.group) == 0, timeout,
               message="entries left pending")


def _outage_logged_once(log: pytest.LogCaptureFixture) -> None:
    assert len(records(log.records, logging.WARNING, UNREACHABLE)) == 1, log.text
    assert len(records(log.records, logging.INFO, REACHABLE)) == 1, log.text


# -- fault 1: Redis killed and restarted -------------------------------------------------------
def test_redis_killed_mid_stream_every_entry_handled_and_outage_logged_once(
        stream_names: Any, consumers: List[Consumer], log: pytest.LogCaptureFixture) -> None:
    """A SIGKILLed AOF server comes back: rstream reconnects alone, loses nothing, logs once."""
    rec = Recorder()

    def slow(message: Message) -> None:  # keeps entries in flight when the server dies
        time.sleep(0.001)
        rec(message)

    with EmbeddedServer(find_server_binary(), appendonly=True) as server:
        r = server.client()
        consumer = new_consumer(consumers, server.url, stream_names, batch_size=50, concurrency=2)
        consumer.start(slow)
        ids = publish(r, stream_names.stream, 2000)
        wait_until(lambda: len(rec.handled) >= 200, 20, message="consumption did not start")
        server.kill()
        wait_until(lambda: records(log.records, logging.WARNING, UNREACHABLE), 10,
                   message="the outage was not noticed")
        server.start()
        ids += publish(r, stream_names.stream, 500, start=2000)
        _all_settled(r, stream_names, rec, ids, timeout=60)
        consumer.stop(10)
        r.close()
    _outage_logged_once(log)
    assert consumer.stats().outages == 1


# -- fault 2: the network black-holed ----------------------------------------------------------
@pytest.mark.parametrize("heal", ["restore", "drop-then-restore"])
def test_network_blackholed_then_healed_loses_nothing(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer], heal: str) -> None:
    """5 s with no byte moving, then the network heals (connections kept or reset): all handled."""
    rec = Recorder()
    with Proxy(redis_server.port) as proxy:
        consumer = new_consumer(consumers, proxy.url, stream_names)
        consumer.start(rec)
        ids = publish(r, stream_names.stream, 300)
        _all_settled(r, stream_names, rec, ids)
        proxy.blackhole()
        during = publish(r, stream_names.stream, 300, start=300)
        threading.Event().wait(BLACKHOLE_S)  # the fault itself lasts this long
        assert not rec.seen() & set(during), "entries went through the black hole"
        if heal == "drop-then-restore":
            assert proxy.drop() > 0
        proxy.restore()
        _all_settled(r, stream_names, rec, ids + during, timeout=40)
        consumer.stop(10)


def test_stop_during_blackhole_returns_within_timeout_and_loses_nothing(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer]) -> None:
    """stop() while no byte moves, with handlers finishing and acks to send, returns within its
    timeout; what stayed pending is handled by the consumer's next run."""
    rec = Recorder()
    first_wave, second_wave = threading.Event(), threading.Event()

    def handler(message: Message) -> None:
        # In flight when the network goes. The first wave's acks block the acker on the black
        # hole; the second wave's wait behind them for stop() to flush.
        if _number(message) >= 200:
            (first_wave if _number(message) < 250 else second_wave).wait(10)
        rec(message)

    with Proxy(redis_server.port) as proxy:
        consumer = new_consumer(consumers, proxy.url, stream_names)
        consumer.start(handler)
        ids = publish(r, stream_names.stream, 200)
        _all_settled(r, stream_names, rec, ids)
        ids += publish(r, stream_names.stream, 100, start=200)
        wait_until(lambda: consumer.stats().in_flight == 100, 10, message="entries not in flight")
        proxy.blackhole()
        ids += publish(r, stream_names.stream, 100, start=300)
        first_wave.set()
        wait_until(lambda: len(rec.handled) >= 250, 10, message="first wave not handled")
        threading.Event().wait(0.2)  # the acker is now blocked sending the first wave's acks
        second_wave.set()
        wait_until(lambda: len(rec.handled) >= 300, 10, message="in-flight handlers did not finish")
        threading.Event().wait(0.5)  # let every thread block on the black hole
        started = time.monotonic()
        consumer.stop(STOP_TIMEOUT_S)
        elapsed = time.monotonic() - started
        assert elapsed < STOP_TIMEOUT_S + STOP_SLACK_S, f"stop took {elapsed:.1f} s"
        proxy.restore()
    # The same consumer name, straight to the server: its pending entries come back to it.
    again = new_consumer(consumers, redis_server.url, stream_names)
    again.start(rec)
    _all_settled(r, stream_names, rec, ids)


# -- fault 3: Redis down at start --------------------------------------------------------------
def test_redis_down_at_start_consumes_once_it_is_up(
        stream_names: Any, consumers: List[Consumer], log: pytest.LogCaptureFixture) -> None:
    """start() with no server returns; the server comes up 5 s later and consumption begins."""
    server = EmbeddedServer(find_server_binary())
    server.start()
    server.stop()  # keep its port: the consumer is given a URL that refuses connections
    try:
        rec = Recorder()
        consumer = new_consumer(consumers, server.url, stream_names)
        started = time.monotonic()
        consumer.start(rec)
        assert time.monotonic() - started < BLACKHOLE_S, "start() waited for the server"
        threading.Event().wait(BLACKHOLE_S)  # the server stays down this long
        assert consumer.error is None
        server.start()
        r = server.client()
        ids = publish(r, stream_names.stream, 200)
        _all_settled(r, stream_names, rec, ids)
        consumer.stop(10)
        r.close()
    finally:
        server.close()
    _outage_logged_once(log)


# -- fault 4: the group or stream vanishes at runtime ------------------------------------------
def _destroy_group(r: redis.Redis, names: Any) -> None:
    r.xgroup_destroy(names.stream, names.group)


def _delete_stream(r: redis.Redis, names: Any) -> None:
    r.delete(names.stream)


def _flushall(r: redis.Redis, names: Any) -> None:
    r.flushall()


VANISHINGS = [("XGROUP DESTROY", _destroy_group), ("DEL", _delete_stream), ("FLUSHALL", _flushall)]


def _commands_per_second(r: redis.Redis, window_s: float) -> float:
    """The server's command rate over a window in which the test itself sends nothing."""
    before = command_calls(r)
    threading.Event().wait(window_s)
    return (command_calls(r) - before - 1) / window_s  # -1: the INFO that measured it


def _group_exists(r: redis.Redis, names: Any) -> bool:
    try:
        return any(g["name"] == names.group.encode() for g in r.xinfo_groups(names.stream))
    except redis.ResponseError:
        return False


@pytest.mark.parametrize("make_stream", [True, False])
def test_group_destroyed_stream_deleted_flushall_each_recovered_without_hot_loop(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer], make_stream: bool, log: pytest.LogCaptureFixture) -> None:
    """XGROUP DESTROY, DEL and FLUSHALL in turn: the group comes back, consumption goes on,
    and meanwhile the consumer sends a bounded number of commands per second."""
    rec = Recorder()
    r.xgroup_create(stream_names.stream, stream_names.group, "0", mkstream=True)
    consumer = new_consumer(consumers, redis_server.url, stream_names, make_stream=make_stream)
    consumer.start(rec)
    ids = publish(r, stream_names.stream, 100)
    _all_settled(r, stream_names, rec, ids)
    rates: Dict[str, float] = {}
    for label, vanish in VANISHINGS:
        vanish(r, stream_names)
        rates[label] = _commands_per_second(r, 2.0)
        if not make_stream and label != "XGROUP DESTROY":
            assert not _group_exists(r, stream_names)  # nothing may create the stream behind us
        batch = publish(r, stream_names.stream, 50, start=len(ids))  # XADD recreates a stream
        ids += batch
        wait_until(lambda: _group_exists(r, stream_names), 15, message=f"group not back after {label}")
        wait_until(lambda ids=batch: rec.has_all(ids), 15, message=f"consumption stopped after {label}")
    print(f"commands/s in the 2 s after each fault (make_stream={make_stream}): {rates}")
    assert all(rate < MAX_COMMANDS_PER_S for rate in rates.values()), rates
    assert consumer.stats().group_recreated >= len(VANISHINGS)
    assert consumer.error is None
    _all_settled(r, stream_names, rec, ids)
    assert not [x for x in log.records if x.levelno >= logging.ERROR], log.text
    waits = records(log.records, logging.WARNING, "waiting for it to be created")
    assert len(waits) == (0 if make_stream else 2), log.text  # once per outage: DEL, FLUSHALL


# -- fault 5: wrong key type (auth and ACL: test_security.py) ----------------------------------
def _no_retry_loop(r: redis.Redis, before: Set[threading.Thread]) -> None:
    """After a fatal error nothing of the consumer is left sending commands."""
    wait_until(lambda: not rstream_threads(before), 5, message="rstream threads left running")
    assert _commands_per_second(r, 1.0) < 3


def test_wrongtype_stream_key_fails_start_with_clear_error(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer]) -> None:
    """A string where the stream should be: start() raises WRONGTYPE at once, no retry loop."""
    before = set(threading.enumerate())  # other tests' threads are not ours
    r.set(stream_names.stream, b"not a stream")
    consumer = new_consumer(consumers, redis_server.url, stream_names)
    with pytest.raises(FatalRedisError, match="WRONGTYPE"):
        consumer.start(Recorder())
    _no_retry_loop(r, before)


def test_wrongtype_stream_key_fails_run_with_clear_error(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer]) -> None:
    """run() raises the same error rather than blocking."""
    before = set(threading.enumerate())  # other tests' threads are not ours
    r.set(stream_names.stream, b"not a stream")
    consumer = new_consumer(consumers, redis_server.url, stream_names, make_stream=False)
    with pytest.raises(RStreamError, match="WRONGTYPE"):
        consumer.run(Recorder(), stop_timeout=5)
    _no_retry_loop(r, before)


def test_stream_replaced_by_string_at_runtime_stops_run_with_clear_error(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer]) -> None:
    """The key turns into a string while run() consumes: run() returns raising WRONGTYPE."""
    before = set(threading.enumerate())  # other tests' threads are not ours
    rec = Recorder()
    consumer = new_consumer(consumers, redis_server.url, stream_names, make_stream=False)
    r.xgroup_create(stream_names.stream, stream_names.group, "0", mkstream=True)
    raised: List[BaseException] = []

    def run() -> None:
        try:
            consumer.run(rec, stop_timeout=5)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            raised.append(exc)

    runner = threading.Thread(target=run, name="test-run")
    runner.start()
    ids = publish(r, stream_names.stream, 50)
    _all_settled(r, stream_names, rec, ids)
    with r.pipeline(transaction=True) as pipe:
        pipe.delete(stream_names.stream).set(stream_names.stream, b"a string").execute()
    runner.join(15)
    assert not runner.is_alive(), "run() kept going on a key of the wrong type"
    assert raised and isinstance(raised[0], FatalRedisError) and "WRONGTYPE" in str(raised[0]), raised
    _no_retry_loop(r, before)


# -- fault 6: handlers that misbehave ----------------------------------------------------------
def _number(message: Message) -> int:
    return int(message.fields[b"n"])


def test_handlers_raising_base_exceptions_are_failures_not_crashes(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer]) -> None:
    """BaseException subclasses (not KeyboardInterrupt/SystemExit) from a handler are failures:
    handle_failure sees them, the entries are settled, and the consumer keeps consuming."""
    def fail(message: Message) -> Optional[BaseException]:
        kind = _number(message) % 3
        return Boom("boom") if kind == 0 else GeneratorExit() if kind == 1 else None

    seen_errors: List[str] = []
    rec = Recorder(fail)
    consumer = new_consumer(consumers, redis_server.url, stream_names, concurrency=4,
                         handle_failure=lambda m, e: seen_errors.append(type(e).__name__))
    consumer.start(rec)
    ids = publish(r, stream_names.stream, 300)
    wait_until(lambda: len(rec.seen()) == 300 and pending(r, stream_names.stream, stream_names.group) == 0,
               20, message="not every entry was settled")
    assert sorted(set(seen_errors)) == ["Boom", "GeneratorExit"] and len(seen_errors) == 200
    assert consumer.stats().failed == 200 and consumer.error is None
    started = time.monotonic()
    consumer.stop(STOP_TIMEOUT_S)
    assert time.monotonic() - started < STOP_TIMEOUT_S + STOP_SLACK_S
    assert set(ids) <= rec.seen()


def _hanging_handler(rec: Recorder, entered: threading.Event,
                     release: threading.Event) -> Callable[[Message], None]:
    def handler(message: Message) -> None:
        if _number(message) == 0:
            entered.set()
            release.wait(60)  # "never" returns, as far as the test is concerned
            return
        rec(message)
    return handler


def test_handler_that_never_returns_blocks_neither_others_nor_stop(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer]) -> None:
    """One handler hangs: the others go on, stop() returns within its timeout, and the hung
    entry stays pending, to be handled when the consumer comes back."""
    entered, release = threading.Event(), threading.Event()
    rec = Recorder()
    try:
        consumer = new_consumer(consumers, redis_server.url, stream_names, concurrency=4)
        consumer.start(_hanging_handler(rec, entered, release))
        ids = publish(r, stream_names.stream, 1)
        assert entered.wait(10), "the first entry never reached the handler"
        ids += publish(r, stream_names.stream, 199, start=1)
        wait_until(lambda: rec.has_all(ids[1:]), 20, message="the other entries were not handled")
        wait_until(lambda: pending(r, stream_names.stream, stream_names.group) == 1, 10,
                   message="only the hung entry should be pending")
        started = time.monotonic()
        consumer.stop(STOP_TIMEOUT_S)
        assert time.monotonic() - started < STOP_TIMEOUT_S + STOP_SLACK_S
        assert pending(r, stream_names.stream, stream_names.group) == 1
    finally:
        release.set()
    again = new_consumer(consumers, redis_server.url, stream_names)
    again.start(rec)
    _all_settled(r, stream_names, rec, ids)


def test_entries_chunked_with_a_hung_handler_are_handled_by_other_workers(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer]) -> None:
    """Entries read in one batch with an entry whose handler hangs are still handled while
    the consumer runs (the batch of 200 is split into chunks over 4 workers)."""
    entered, release = threading.Event(), threading.Event()
    rec = Recorder()
    ids = publish(r, stream_names.stream, 200)
    try:
        consumer = new_consumer(consumers, redis_server.url, stream_names, concurrency=4)
        consumer.start(_hanging_handler(rec, entered, release))
        wait_until(lambda: rec.has_all(ids[1:]), 5, message="entries stranded behind a hung handler")
    finally:
        release.set()


@pytest.mark.parametrize("raises", [RuntimeError("broken handle_failure"), Boom("broken handle_failure")],
                         ids=["Exception", "BaseException"])
def test_handle_failure_that_raises_keeps_entry_until_a_retry_succeeds(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer], raises: BaseException) -> None:
    """A handle_failure that raises loses nothing: the entry stays pending and comes back."""
    def fail(message: Message) -> Optional[BaseException]:
        return ValueError("first attempt fails") if message.attempt == 1 else None

    def broken(message: Message, error: BaseException) -> None:
        raise raises

    rec = Recorder(fail)
    consumer = new_consumer(consumers, redis_server.url, stream_names, concurrency=2,
                         handle_failure=broken)
    consumer.start(rec)
    ids = publish(r, stream_names.stream, 20)
    _all_settled(r, stream_names, rec, ids, timeout=30)
    assert set(rec.failed) == set(ids)
    assert consumer.stats().retried >= len(ids)
    started = time.monotonic()
    consumer.stop(STOP_TIMEOUT_S)
    assert time.monotonic() - started < STOP_TIMEOUT_S + STOP_SLACK_S


def test_a_wrong_type_inside_a_script_is_wrong_type_on_every_server(
        redis_server: EmbeddedServer, r: redis.Redis) -> None:
    """A command a script runs on a key of another type is a WrongType (fatal, naming the
    cause), whether the server says WRONGTYPE (Redis 7+, Valkey) or wraps it (Redis 6.2)."""
    key = unique_name("wt")
    r.set(key, "not a stream")
    link = ConnectionFactory(redis_server.client(), key).make("test")
    try:
        with pytest.raises(WrongType, match="WRONGTYPE"):
            link.call("EVAL", "return redis.call('XADD', KEYS[1], '*', 'a', 1)", 1, key)
    finally:
        link.close()
