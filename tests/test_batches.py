"""Batch handlers (`start(handle_batch=...)`, `rstream consume --batch`) against a real server:
a bulk insert into SQLite whose failed rows are retried and dead-lettered one by one, a raise that
fails the whole batch, and the checks that refuse a wrong handler before anything starts.
Each test counts what reached SQLite: nothing lost, nothing inserted twice."""
from __future__ import annotations

import collections
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
import redis

import rstream
from helpers import REPO_ROOT, add_entries, unique_name, wait_until
from rstream import ConfigError

DEADLINE_S = 30.0
UNUSED_URL = "redis://127.0.0.1:1/0"
Factory = Callable[..., rstream.Consumer]


@pytest.fixture
def consumer_defaults() -> Dict[str, Any]:
    """The entries are added before start(): the group starts at "0"."""
    return dict(receive_interval=100, heartbeat_interval=100, group_start_id="0", make_stream=True)


class Orders:
    """A SQLite table written by a batch handler, one bulk INSERT per batch (one writer at a time:
    SQLite has one), with the sizes of the batches it was given."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, n INTEGER)")
        self._lock = threading.Lock()
        self.sizes: List[int] = []

    def insert(self, batch: List[rstream.Message]) -> None:
        rows = [(m.id, int(m.fields[b"n"])) for m in batch]
        with self._lock, self._db:  # one transaction; a duplicate id would raise (PRIMARY KEY)
            self._db.executemany("INSERT INTO orders VALUES (?, ?)", rows)

    def rows(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT id, n FROM orders"))


def pending(r: redis.Redis, stream: str, group: str) -> int:
    return int(r.xpending(stream, group)["pending"])


def test_a_batch_handler_bulk_inserts_10000_entries_and_its_failed_rows_are_retried_or_dead_lettered(
        r: redis.Redis, make_consumer: Factory, stream_names: Any, tmp_path: Path) -> None:
    """10,000 entries, batches of up to 500 inserted in one transaction each. Rows the handler
    refuses are returned as failures: those that fail once (n % 97 == 0) come back as retries
    and are inserted; those that always fail (n % 1000 == 7) are dead-lettered on their second
    attempt. In the end SQLite holds every other row exactly once, the dead-letter stream holds
    exactly the ten bad ones, and nothing is pending."""
    orders = Orders(tmp_path / "orders.db")
    ids = add_entries(r, stream_names.stream, 10_000)

    def handle_batch(batch: List[rstream.Message]) -> List[Tuple[rstream.Message, Exception]]:
        failed: List[Tuple[rstream.Message, Exception]] = []
        good = []
        for message in batch:
            n = int(message.fields[b"n"])
            if n % 1000 == 7:
                failed.append((message, ValueError(f"order {n} has a bad amount")))
            elif n % 97 == 0 and message.attempt == 1:
                failed.append((message, TimeoutError(f"order {n}: lock timeout")))
            else:
                good.append(message)
        orders.insert(good)
        orders.sizes.append(len(batch))
        return failed

    consumer = make_consumer(max_attempts=2, dead_letter_stream=stream_names.dead_letter,
                             batch_size=500, batch_timeout=50)
    consumer.start(handle_batch=handle_batch)
    bad = {ids[n] for n in range(10_000) if n % 1000 == 7}
    flaky = {ids[n] for n in range(10_000) if n % 97 == 0} - bad
    wait_until(lambda: len(orders.rows()) == 10_000 - len(bad)
               and consumer.stats().dead_lettered == len(bad), DEADLINE_S)
    wait_until(lambda: pending(r, stream_names.stream, stream_names.group) == 0, DEADLINE_S)
    consumer.stop()

    assert orders.rows() == {ids[n]: n for n in range(10_000) if ids[n] not in bad}
    dead = r.xrange(stream_names.dead_letter)
    assert sorted(f[b"rstream-id"].decode() for _, f in dead) == sorted(bad)
    assert all(f[b"rstream-attempt"] == b"2" and b"bad amount" in f[b"rstream-error"]
               for _, f in dead)
    stats = consumer.stats()
    assert (stats.retried, stats.failed) == (len(flaky) + len(bad), len(flaky) + 2 * len(bad))
    assert (stats.delivered, stats.acked) == (10_000 + len(flaky) + len(bad), 10_000)
    assert max(orders.sizes) == 500 and sum(orders.sizes) == stats.delivered


def test_a_batch_handler_that_raises_fails_its_whole_batch_and_each_message_is_retried(
        r: redis.Redis, make_consumer: Factory, stream_names: Any, tmp_path: Path) -> None:
    """The first batch raises (the database is down): every message of it fails with that error
    (handle_failure runs once for each), is retried and inserted once; the other batches are not
    touched by it."""
    orders = Orders(tmp_path / "orders.db")
    ids = add_entries(r, stream_names.stream, 250)
    outage = ConnectionError("database is down")
    calls: List[List[str]] = []
    failures: List[Tuple[str, BaseException]] = []

    def handle_batch(batch: List[rstream.Message]) -> None:
        calls.append([m.id for m in batch])
        if len(calls) == 1:
            raise outage
        orders.insert(batch)

    def handle_failure(message: rstream.Message, error: BaseException) -> None:
        failures.append((message.id, error))

    consumer = make_consumer(max_attempts=3, batch_size=100, batch_timeout=50,
                             handle_failure=handle_failure)
    consumer.start(handle_batch=handle_batch)
    wait_until(lambda: len(orders.rows()) == 250, DEADLINE_S)
    wait_until(lambda: pending(r, stream_names.stream, stream_names.group) == 0, DEADLINE_S)
    consumer.stop()
    assert orders.rows() == {i: n for n, i in enumerate(ids)}
    assert [i for i, _ in failures] == calls[0] and all(e is outage for _, e in failures)
    assert consumer.stats().retried == len(calls[0])


def test_handler_and_handle_batch_are_checked_before_anything_starts() -> None:
    """Exactly one of the two, callable and synchronous; and handle_batch refuses partition_by."""
    async def async_batch(batch: List[rstream.Message]) -> None:
        pass

    def batch(batch: List[rstream.Message]) -> None:
        pass

    consumer = rstream.Consumer(UNUSED_URL, "orders", "billing", "billing-1")
    for kwargs, problem in [
            (dict(), "need a handler"),
            (dict(handler=print, handle_batch=batch), "not both"),
            (dict(handle_batch=5), "handle_batch must be callable"),
            (dict(handle_batch=async_batch), "handle_batch must be a plain .synchronous. function")]:
        with pytest.raises(ConfigError, match=problem):
            consumer.start(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="handle_batch"):
        consumer.run(handle_batch=async_batch)  # type: ignore[arg-type]
    ordered = rstream.Consumer(UNUSED_URL, "orders", "billing", "billing-1", partition_by=repr)
    with pytest.raises(ConfigError, match="handle_batch cannot be used with partition_by"):
        ordered.start(handle_batch=batch)
    assert consumer.state == ordered.state == "new"


BATCH_HANDLER = '''
import os

def insert(batch):
    with open(os.path.join(os.environ["OUT"], f"batches-{os.getpid()}"), "a") as out:
        out.write(" ".join(m.id for m in batch) + "\\n")

def key(message):
    return message.fields[b"n"]
'''


def test_rstream_consume_batch_calls_a_batch_handler(r: redis.Redis, redis_url: str,
                                                     tmp_path: Path) -> None:
    """`rstream consume MODULE:FUNCTION --batch` hands batches of up to --batch-size to the
    function; every entry is in exactly one batch; SIGTERM drains and exits 0. With
    --partition-by too it is a usage error (exit 2, one line)."""
    (tmp_path / "bulk.py").write_text(BATCH_HANDLER)
    stream, group = unique_name("cli"), unique_name("g")
    ids = add_entries(r, stream, 300)
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "rstream", "consume", "bulk:insert", "--batch", "--redis",
               redis_url, "--stream", stream, "--group", group, "--consumer", "c",
               "--group-start-id", "0", "--batch-size", "100", "--batch-timeout", "50"]
    both = subprocess.run([*command, "--partition-by", "bulk:key"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=DEADLINE_S)
    assert both.returncode == 2 and len(both.stderr.strip().splitlines()) == 1, both.stderr
    assert "handle_batch cannot be used with partition_by" in both.stderr
    log = tmp_path / "log.txt"
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=sink,
                                stderr=subprocess.STDOUT)
    try:
        def batches() -> List[List[str]]:
            return [line.split() for path in tmp_path.glob("batches-*")
                    for line in path.read_text().splitlines()]
        wait_until(lambda: sum(map(len, batches())) >= 300, DEADLINE_S, message=log.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE_S) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    seen = collections.Counter(i for batch in batches() for i in batch)
    assert set(seen) == set(ids) and max(seen.values()) == 1
    assert max(map(len, batches())) == 100
    assert pending(r, stream, group) == 0


def run_example(name: str, redis_url: str, cwd: Path, done: Callable[[], bool]) -> str:
    """Run examples/<name> as a user would, wait until `done`, SIGTERM it; exit 0, its output."""
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(REPO_ROOT)}
    log = cwd / f"{name}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "examples" / name)], cwd=cwd,
                                env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: done() or proc.poll() is not None, DEADLINE_S, message=log.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE_S) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert "Traceback" not in output, output
    return output


def test_the_sqlite_example_inserts_every_order_and_dead_letters_the_broken_one(
        r: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    """examples/bulk_insert_sqlite.py: 1,000 orders in orders.db, the broken one failed three
    times and in orders:dead, nothing pending; SIGTERM ends it with exit 0."""
    def drained() -> bool:
        return (r.exists("orders:dead") == 1 and r.xlen("orders:dead") == 1
                and pending(r, "orders", "sqlite-writer") == 0)
    output = run_example("bulk_insert_sqlite.py", redis_url, tmp_path, drained)
    assert "(1000, 499500) orders in orders.db" in output
    assert output.count("failed on attempt") == 3 and "ValueError" in output


def test_with_several_streams_each_batch_holds_entries_of_one_stream(
        r: redis.Redis, redis_url: str) -> None:
    """streams=[a, b]: a batch never mixes streams (each stream settles on its own), and every
    entry of both is in exactly one batch."""
    streams = [unique_name("a"), unique_name("b")]
    expected = {(s, i) for s in streams for i in add_entries(r, s, 300)}
    batches: List[List[Tuple[str, str]]] = []
    consumer = rstream.Consumer(redis_url, streams=streams, group="g", consumer_name="c",
                                group_start_id="0", batch_size=100, batch_timeout=50,
                                receive_interval=100, heartbeat_interval=100)
    consumer.start(handle_batch=lambda batch: batches.append([(m.stream, m.id) for m in batch]))
    try:
        wait_until(lambda: sum(map(len, batches)) == 600 and consumer.stats().acked == 600,
                   DEADLINE_S)
    finally:
        consumer.stop()
    assert all(len({s for s, _ in batch}) == 1 for batch in batches)
    seen = collections.Counter(e for batch in batches for e in batch)
    assert set(seen) == expected and max(seen.values()) == 1
