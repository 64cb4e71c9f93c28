"""Lifecycle against a real server: restart under the same name after SIGKILL, drain on
stop() and SIGTERM, stop timeouts, start/stop/context-manager and stats basics."""
from __future__ import annotations

import dataclasses
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, List

import pytest
import redis

import rstream
from helpers import SpawnedProcess, add_entries, wait_until

Factory = Callable[..., rstream.Consumer]

# A consumer process. argv: url stream group name mode out [marker]
#   mode "block":  append "<id>" to `marker` on entry to the handler, then block forever;
#   mode "record": append "<id> <attempt>" to `out` when the handler returns (after `delay_ms`).
# It runs `Consumer.run` on the main thread, so SIGTERM drains; it prints its stats on exit.
CHILD = r'''
import os, sys, threading, time
import rstream

url, stream, group, name, mode, out, delay_ms = sys.argv[1:8]
delay_s = int(delay_ms) / 1000
lock = threading.Lock()
never = threading.Event()

def append(path, line):
    with lock, open(path, "a") as f:
        f.write(line + "\n")
        f.flush()

def handle(message):
    if mode == "block":
        append(out, message.id)
        never.wait()
    if delay_s:
        time.sleep(delay_s)
    append(out, f"{message.id} {message.attempt}")

consumer = rstream.Consumer(redis=url, stream=stream, group=group, consumer_name=name,
                            receive_interval=100, heartbeat_interval=100, make_stream=True,
                            group_start_id="0", batch_size=20, concurrency=4)
print("ready", flush=True)
consumer.run(handle, stop_timeout=20)
print("stats", consumer.stats(), flush=True)
'''


@pytest.fixture
def child_script(tmp_path: Path) -> Path:
    path = tmp_path / "consumer_child.py"
    path.write_text(CHILD)
    return path





def _pending_of(r: redis.Redis, stream: str, group: str, consumer: str = "") -> List[str]:
    kwargs = {"consumername": consumer} if consumer else {}
    try:
        entries = r.xpending_range(stream, group, "-", "+", 100_000, **kwargs)
    except redis.ResponseError:   # no group yet
        return []
    return [e["message_id"].decode() for e in entries]


def _lines(path: Path) -> List[str]:
    return path.read_text().split() if path.exists() else []


def _records(path: Path) -> List[List[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _exit_code(child: SpawnedProcess, timeout: float) -> int:
    code = child.wait(timeout)
    assert code is not None
    return int(code)


def test_restart_under_same_name_replays_own_pending(
        redis_url: str, r: redis.Redis, stream_names: Any, spawn: Callable[..., SpawnedProcess],
        child_script: Path, tmp_path: Path) -> None:
    """A SIGKILLed consumer's pending entries are handled by its successor of the same name."""
    s, g, name = stream_names.stream, stream_names.group, stream_names.consumer
    marker, out = tmp_path / "marker", tmp_path / "handled"
    first = spawn(child_script, redis_url, s, g, name, "block", str(marker), "0")
    wait_until(lambda: "ready" in first.output(), 20, message="first child did not start")
    ids = add_entries(r, s, 5)
    wait_until(lambda: len(_lines(marker)) == 4, 20, message="first child's handlers did not block")
    wait_until(lambda: sorted(_pending_of(r, s, g, name)) == sorted(ids), 10,
               message="the 5 entries are not pending for the first child")
    first.send_signal(signal.SIGKILL)
    assert _exit_code(first, 10) == -signal.SIGKILL

    second = spawn(child_script, redis_url, s, g, name, "record", str(out), "0")
    wait_until(lambda: len(_records(out)) >= 5, 30, message="successor did not handle the 5")
    wait_until(lambda: _pending_of(r, s, g) == [], 10, message="entries still pending")
    records = _records(out)
    assert sorted(entry_id for entry_id, _ in records) == sorted(ids)
    # Replayed from its own pending list: the second delivery of each entry.
    assert {attempt for _, attempt in records} == {"2"}
    consumers = [c["name"].decode() for c in r.xinfo_consumers(s, g)]
    assert consumers == [name]
    second.send_signal(signal.SIGTERM)
    assert _exit_code(second, 30) == 0
    assert "replayed=5" in second.output()


def test_sigterm_makes_run_drain_and_exit_zero(
        redis_url: str, r: redis.Redis, stream_names: Any, spawn: Callable[..., SpawnedProcess],
        child_script: Path, tmp_path: Path) -> None:
    """run() returns after SIGTERM with exit code 0, and every entry it handled is acked."""
    s, g, name = stream_names.stream, stream_names.group, stream_names.consumer
    out = tmp_path / "handled"
    child = spawn(child_script, redis_url, s, g, name, "record", str(out), "20")
    wait_until(lambda: "ready" in child.output(), 20, message="child did not start")
    add_entries(r, s, 400)
    # SIGTERM while handlers are busy and more entries wait in the stream.
    wait_until(lambda: len(_records(out)) >= 20, 30, message="child handled nothing")
    child.send_signal(signal.SIGTERM)
    assert _exit_code(child, 30) == 0, child.output()
    handled = {entry_id for entry_id, _ in _records(out)}
    assert len(handled) < 400, "the whole stream was handled before SIGTERM; nothing was tested"
    assert handled & set(_pending_of(r, s, g)) == set(), "handled but left unacked"
    assert "stats Stats(" in child.output(), "run() did not return"


def test_stop_lets_running_handlers_finish_and_acks_them(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """stop() waits for handlers already running and acks them before it returns."""
    started = threading.Semaphore(0)
    release = threading.Event()
    finished: List[str] = []

    def handle(message: rstream.Message) -> None:
        started.release()
        release.wait(30)
        finished.append(message.id)

    consumer = make_consumer(concurrency=4)
    consumer.start(handle)
    ids = add_entries(r, stream_names.stream, 3)
    for _ in ids:
        assert started.acquire(timeout=20), "handlers did not start"
    # Released only after stop() began: a stop() that does not wait returns with nothing finished.
    timer = threading.Timer(0.3, release.set)
    timer.start()
    try:
        consumer.stop(timeout=20)
    finally:
        release.set()
        timer.cancel()
    assert sorted(finished) == sorted(ids)
    assert _pending_of(r, stream_names.stream, stream_names.group) == []
    assert consumer.stats().acked == 3 and consumer.stats().in_flight == 0


def test_stop_timeout_returns_with_hung_handler_and_leaves_it_pending(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """stop(timeout) returns within the timeout although a handler hangs; that entry stays pending
    while the entries that finished are acked."""
    release = threading.Event()
    hung = threading.Event()
    ok = threading.Event()

    def handle(message: rstream.Message) -> None:
        if message.fields[b"kind"] == b"hang":
            hung.set()
            release.wait(60)
        else:
            ok.set()

    consumer = make_consumer(concurrency=2)
    consumer.start(handle)
    try:
        hang_id = r.xadd(stream_names.stream, {b"kind": b"hang"}).decode()
        r.xadd(stream_names.stream, {b"kind": b"ok"})
        assert hung.wait(20) and ok.wait(20)
        timeout = 1.0
        began = time.monotonic()
        consumer.stop(timeout=timeout)
        elapsed = time.monotonic() - began
    finally:
        release.set()
    # The issue asks for this bound; the slack covers a loaded machine, not a slow design.
    assert elapsed < timeout + 1.0
    assert _pending_of(r, stream_names.stream, stream_names.group) == [hang_id]
    assert consumer.stats().acked == 1


def test_stop_does_not_wait_out_a_blocking_read(r: redis.Redis, make_consumer: Factory) -> None:
    """stop() wakes a reader blocked for receive_interval (10 s) instead of waiting for it."""
    consumer = make_consumer(receive_interval=10_000)
    consumer.start(lambda m: None)
    wait_until(lambda: any("b" in c["flags"] for c in r.client_list()), 10,
               message="the reader never blocked")
    began = time.monotonic()
    consumer.stop(timeout=20)
    # Far below the 10 s block; the slack is for a loaded machine.
    assert time.monotonic() - began < 2.0


@pytest.mark.parametrize("how", ["start", "run"])
def test_stop_called_from_a_handler(how: str, r: redis.Redis, make_consumer: Factory,
                                    stream_names: Any) -> None:
    """A handler may call stop(): it returns at once (no wait on itself), the consumer drains
    and closes its connections, and the calling handler's own entry is acked."""
    # "0": with run() on a thread, entries may be added before the group is created.
    consumer = make_consumer(concurrency=2, group_start_id="0")
    returned = threading.Event()
    errors: List[BaseException] = []

    def handle(message: rstream.Message) -> None:
        if message.fields[b"n"] == b"1":
            try:
                consumer.stop(timeout=20)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)
            returned.set()

    my_id = int(r.client_id())
    runner = None
    if how == "start":
        consumer.start(handle)
    else:
        runner = threading.Thread(target=consumer.run, args=(handle,), name="test-run")
        runner.start()
        wait_until(lambda: len(r.client_list()) > 1, 10, message="consumer never connected")
    add_entries(r, stream_names.stream, 3)
    # Well below the 20 s a stop() waiting on its own handler would take.
    assert returned.wait(10), "stop() inside the handler did not return"
    assert errors == []
    if runner is not None:
        runner.join(20)
        assert not runner.is_alive(), "run() did not return after stop() from a handler"
    wait_until(lambda: [int(c["id"]) for c in r.client_list()] == [my_id], 20,
               message="consumer did not stop")
    assert _pending_of(r, stream_names.stream, stream_names.group) == []


def test_start_returns_at_once_with_named_threads(r: redis.Redis, make_consumer: Factory,
                                                  stream_names: Any) -> None:
    """start() returns while consuming goes on in rstream's named background threads."""
    got = threading.Event()
    consumer = make_consumer()
    assert consumer.start(lambda m: got.set()) is consumer
    names = {t.name for t in threading.enumerate()}
    assert {"rstream-reader", "rstream-acker", "rstream-heartbeat", "rstream-reaper"} <= names
    assert any(n.startswith("rstream-worker-") for n in names)
    add_entries(r, stream_names.stream, 1)
    assert got.wait(20)


def test_start_twice_is_refused(make_consumer: Factory) -> None:
    """A Consumer runs once; a second start() is an error, not a second set of threads."""
    consumer = make_consumer()
    consumer.start(lambda m: None)
    with pytest.raises(rstream.RStreamError):
        consumer.start(lambda m: None)


def test_stop_before_start_and_twice_is_harmless(make_consumer: Factory) -> None:
    """stop() on a consumer never started, or stopped already, returns quietly."""
    never_started = make_consumer()
    never_started.stop(timeout=1)
    consumer = make_consumer(consumer_name="second")
    consumer.start(lambda m: None)
    consumer.stop(timeout=5)
    consumer.stop(timeout=5)


def test_context_manager_stops_and_closes_connections(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """Leaving the `with` block stops the consumer: acks flushed, every connection it made closed."""
    got = threading.Event()
    my_id = int(r.client_id())
    with make_consumer() as consumer:
        consumer.start(lambda m: got.set())
        wait_until(lambda: len(r.client_list()) > 1, 10, message="consumer never connected")
        add_entries(r, stream_names.stream, 1)
        assert got.wait(20)
    assert _pending_of(r, stream_names.stream, stream_names.group) == []
    wait_until(lambda: [int(c["id"]) for c in r.client_list()] == [my_id], 10,
               message="connections left open after stop")


def test_stats_count_what_happened(r: redis.Redis, make_consumer: Factory,
                                   stream_names: Any) -> None:
    """stats() is a frozen snapshot whose counters follow deliveries, acks and failures."""
    def handle(message: rstream.Message) -> None:
        if message.fields[b"n"] == b"3":
            raise RuntimeError("boom")

    consumer = make_consumer()
    before = consumer.stats()
    assert (before.delivered, before.acked, before.in_flight) == (0, 0, 0)
    consumer.start(handle)
    add_entries(r, stream_names.stream, 10)
    wait_until(lambda: consumer.stats().acked == 10, 20, message="not all settled")
    stats = consumer.stats()
    assert (stats.delivered, stats.acked, stats.failed, stats.in_flight) == (10, 10, 1, 0)
    assert (stats.claimed, stats.dead_lettered, stats.retried) == (0, 0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.acked = 0  # type: ignore[misc]
    assert isinstance(stats, rstream.Stats)


def test_state_follows_the_lifecycle(make_consumer: Factory) -> None:
    """state is "new" before start(), "running" after it, "stopped" after stop(), and shows in repr."""
    consumer = make_consumer()
    assert consumer.state == "new"
    consumer.start(lambda m: None)
    assert consumer.state == "running" and "state='running'" in repr(consumer)
    consumer.stop(timeout=5)
    assert consumer.state == "stopped" and consumer.error is None


def test_state_is_failed_after_a_fatal_error(r: redis.Redis, make_consumer: Factory,
                                             stream_names: Any) -> None:
    """A fatal fault at start() or while running leaves the consumer "failed", with `error` set."""
    r.set(stream_names.stream, b"not a stream")
    at_start = make_consumer()
    with pytest.raises(rstream.FatalRedisError):
        at_start.start(lambda m: None)
    assert at_start.state == "failed" and at_start.error is not None

    r.delete(stream_names.stream)
    running = make_consumer(consumer_name="second")
    running.start(lambda m: None)
    r.delete(stream_names.stream)
    r.set(stream_names.stream, b"a string now")
    wait_until(lambda: running.state == "failed", 20, message="a fatal error did not fail it")
    assert "WRONGTYPE" in str(running.error)
