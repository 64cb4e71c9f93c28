"""`partition_by` against a real server: each key's entries handled one at a time in id order by
8 workers while different keys run in parallel, the order kept across retries (a retry holds its
key back, not the others) and across a failover to another consumer (a SIGKILLed process's
entries, claimed), a key function that raises, and `rstream consume --partition-by`.

Handlers write down what they do; the tests compare that with the stream's ids. Parallelism is
observed (how many keys were inside handlers at the same moment), never timed."""
from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
import redis

import rstream
from helpers import REPO_ROOT, SpawnedProcess, add_entries, unique_name, wait_until
from rstream.settlements import now_ms

DEADLINE_S = 30.0
Factory = Callable[..., rstream.Consumer]


@pytest.fixture
def consumer_defaults() -> Dict[str, Any]:
    """The entries are added before start(): the group starts at "0"."""
    return dict(receive_interval=100, heartbeat_interval=100, group_start_id="0", make_stream=True)


def add_keyed(r: redis.Redis, stream: str, keys: int, per_key: int) -> Dict[str, List[str]]:
    """`keys * per_key` entries, keys taking turns (k0, k1, ..., k0, ...): each key's ids in order."""
    pipe = r.pipeline(transaction=False)
    for n in range(keys * per_key):
        pipe.xadd(stream, {b"k": f"k{n % keys}".encode(), b"n": str(n).encode()})
    by_key: Dict[str, List[str]] = collections.defaultdict(list)
    for n, entry_id in enumerate(pipe.execute()):
        by_key[f"k{n % keys}"].append(entry_id.decode())
    return dict(by_key)


def key_of(message: rstream.Message) -> bytes:
    return bytes(message.fields[b"k"])


class Watch:
    """What handlers did, per key, in the order they finished; how many handlers of one key ran
    at once (must stay 1) and the most distinct keys inside handlers at one moment."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.done: Dict[str, List[str]] = collections.defaultdict(list)
        self.events: List[Tuple[str, str, int, str]] = []   # (key, id, attempt, "ok"/"failed")
        self._inside: Dict[str, int] = collections.Counter()
        self.overlaps = 0
        self.most_keys_at_once = 0

    def enter(self, message: rstream.Message) -> str:
        key = key_of(message).decode()
        with self._lock:
            self._inside[key] += 1
            self.overlaps += self._inside[key] > 1
            self.most_keys_at_once = max(self.most_keys_at_once,
                                         sum(1 for n in self._inside.values() if n))
        return key

    def leave(self, key: str, message: rstream.Message, ok: bool) -> None:
        with self._lock:
            self._inside[key] -= 1
            if ok:
                self.done[key].append(message.id)
            self.events.append((key, message.id, message.attempt, "ok" if ok else "failed"))

    def handled(self) -> int:
        with self._lock:
            return sum(map(len, self.done.values()))

    def by_key(self) -> Dict[str, List[str]]:
        with self._lock:
            return {key: list(ids) for key, ids in self.done.items()}


def test_50_keys_on_8_workers_each_key_in_id_order_one_at_a_time_and_keys_in_parallel(
        make_consumer: Factory, r: redis.Redis, stream_names: Any) -> None:
    """1,000 entries of 50 keys, random handler delays, concurrency 8: every key's entries are
    handled in id order, never two of one key at once, and at some moment at least 4 keys were
    inside handlers together."""
    by_key = add_keyed(r, stream_names.stream, keys=50, per_key=20)
    watch = Watch()
    chance = random.Random(7)

    def handle(message: rstream.Message) -> None:
        key = watch.enter(message)
        threading.Event().wait(chance.uniform(0, 0.003))  # the handler's work
        watch.leave(key, message, ok=True)

    consumer = make_consumer(concurrency=8, partition_by=key_of, batch_size=100)
    consumer.start(handle)
    wait_until(lambda: watch.handled() == 1000, DEADLINE_S)
    consumer.stop()
    assert watch.by_key() == by_key
    assert watch.overlaps == 0
    assert watch.most_keys_at_once >= 4, watch.most_keys_at_once


def test_a_retry_holds_back_the_rest_of_its_key_and_only_its_key(
        make_consumer: Factory, r: redis.Redis, stream_names: Any) -> None:
    """Every 7th entry fails its first attempt (max_attempts=3) and is retried; one of them asks
    for its retry 300 ms later. Each key's successes are still in id order, no entry of the
    waiting key is handled before its retry, and other keys' entries are handled meanwhile."""
    by_key = add_keyed(r, stream_names.stream, keys=20, per_key=25)
    slow = by_key["k3"][4]
    watch = Watch()

    def handle(message: rstream.Message) -> None:
        key = watch.enter(message)
        ok = not (int(message.fields[b"n"]) % 7 == 0 and message.attempt == 1)
        if message.id == slow and message.attempt == 1:
            message.metadata["retry_after"] = now_ms() + 300
            ok = False
        watch.leave(key, message, ok)
        if not ok:
            raise RuntimeError(f"{message.id} fails its first attempt")

    consumer = make_consumer(concurrency=8, partition_by=key_of, max_attempts=3, batch_size=100)
    consumer.start(handle)
    wait_until(lambda: watch.handled() == 500, DEADLINE_S)
    stats = consumer.stats()
    consumer.stop()
    assert watch.by_key() == by_key
    failed_first = {ids[p] for k, ids in by_key.items() for p in range(25)
                    if (p * 20 + int(k[1:])) % 7 == 0} | {slow}  # entry n is k{n % 20}'s n // 20th
    assert {e[1] for e in watch.events if e[3] == "failed"} == failed_first
    assert stats.retried == len(failed_first) and stats.waiting_retries == 0
    events = watch.events
    failed_at = events.index(("k3", slow, 1, "failed"))
    retried_at = events.index(("k3", slow, 2, "ok"))
    between = events[failed_at + 1:retried_at]
    assert [e for e in between if e[0] == "k3"] == []
    assert len({e[0] for e in between}) >= 5, "other keys did not go on while k3 waited"


CHILD = """
import os, sys, threading, rstream

url, stream, group, log = sys.argv[1:5]
out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

def key(message):
    return message.fields[b"k"]

def handle(message):
    threading.Event().wait(0.01)
    os.write(out, f"{message.fields[b'k'].decode()} {message.id}\\n".encode())

rstream.Consumer(url, stream, group, "a", group_start_id="0", heartbeat_interval=100,
                 receive_interval=100, batch_size=100, max_in_flight=400,
                 partition_by=key).run(handle)
"""


def test_order_by_key_is_kept_across_a_failover_to_another_consumer(
        r: redis.Redis, redis_url: str, stream_names: Any, make_consumer: Factory,
        spawn: Callable[..., SpawnedProcess], tmp_path: Path) -> None:
    """Consumer A (a process) has read all 300 entries of 10 keys and handled some when it is
    SIGKILLed; consumer B claims its entries. Per key, what A handled is the first part of the
    key's ids, in order, and B handles the rest in order, from where A's acks stopped (the last
    few A handled without an ack yet are handled again): nothing is handled out of order."""
    by_key = add_keyed(r, stream_names.stream, keys=10, per_key=30)
    last_id = max((ids[-1] for ids in by_key.values()), key=lambda i: tuple(map(int, i.split("-"))))
    log = tmp_path / "a.log"
    child = spawn(CHILD, redis_url, stream_names.stream, stream_names.group, str(log))

    def handled_by_a() -> Dict[str, List[str]]:
        lines = log.read_text().splitlines() if log.exists() else []
        done: Dict[str, List[str]] = collections.defaultdict(list)
        for key, entry_id in (line.split() for line in lines if len(line.split()) == 2):
            done[key].append(entry_id)
        return done

    def all_read() -> bool:
        groups = r.xinfo_groups(stream_names.stream)
        return bool(groups) and groups[0]["last-delivered-id"].decode() == last_id

    wait_until(lambda: all_read() and sum(map(len, handled_by_a().values())) >= 60, DEADLINE_S,
               message=child.output())
    child.send_signal(signal.SIGKILL)
    child.wait(DEADLINE_S)
    by_a = handled_by_a()
    assert 0 < sum(map(len, by_a.values())) < 300

    watch = Watch()

    def handle(message: rstream.Message) -> None:
        key = watch.enter(message)
        watch.leave(key, message, ok=True)

    consumer = make_consumer(consumer_name="b", partition_by=key_of, allowed_missed_heartbeats=3)
    consumer.start(handle)
    wait_until(lambda: all(set(by_a.get(k, [])) | set(watch.by_key().get(k, [])) == set(ids)
                           for k, ids in by_key.items()), DEADLINE_S)
    wait_until(lambda: int(r.xpending(stream_names.stream, stream_names.group)["pending"]) == 0,
               DEADLINE_S)
    consumer.stop()
    assert consumer.stats().claimed > 0
    by_b = watch.by_key()
    for key, ids in by_key.items():
        a, b = by_a.get(key, []), by_b.get(key, [])
        assert a == ids[:len(a)], f"{key}: A handled out of order"
        assert b == ids[len(ids) - len(b):], f"{key}: B handled out of order"
        assert len(ids) - len(b) <= len(a), f"{key}: B skipped entries A had not handled"


def test_an_entry_whose_key_cannot_be_had_fails_like_a_handler_failure(
        make_consumer: Factory, r: redis.Redis, stream_names: Any) -> None:
    """partition_by raises for an entry without the field: that entry fails with the KeyError
    (handle_failure sees it, it is dead-lettered after max_attempts) and the others are handled."""
    ids = add_entries(r, stream_names.stream, 20)
    no_key = r.xadd(stream_names.stream, {b"other": b"x"}).decode()
    seen: List[str] = []
    failures: List[Tuple[str, BaseException]] = []

    def handle_failure(message: rstream.Message, error: BaseException) -> None:
        failures.append((message.id, error))

    consumer = make_consumer(partition_by=lambda m: m.fields[b"n"], max_attempts=2,
                             dead_letter_stream=stream_names.dead_letter,
                             handle_failure=handle_failure)
    consumer.start(lambda m: seen.append(m.id))
    wait_until(lambda: consumer.stats().dead_lettered == 1 and len(seen) == 20, DEADLINE_S)
    consumer.stop()
    assert sorted(seen) == sorted(ids)
    assert [i for i, _ in failures] == [no_key, no_key]
    assert all(isinstance(e, KeyError) for _, e in failures)
    [(_, dead)] = r.xrange(stream_names.dead_letter)
    assert dead[b"rstream-id"].decode() == no_key and dead[b"rstream-error"].startswith(b"KeyError")


ORDERED_HANDLER = '''
import os

def handle(message):
    with open(os.path.join(os.environ["OUT"], "handled"), "a") as out:
        out.write(f"{message.fields[b'k'].decode()} {message.id}\\n")

def key(message):
    return message.fields[b"k"]
'''


def test_rstream_consume_partition_by_orders_by_the_key_function(
        r: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    """`rstream consume MODULE:FUNCTION --partition-by MODULE:KEY`: every key's entries handled in
    id order by 8 workers; SIGTERM drains and exits 0."""
    (tmp_path / "ordered.py").write_text(ORDERED_HANDLER)
    stream, group = unique_name("cli"), unique_name("g")
    by_key = add_keyed(r, stream, keys=10, per_key=30)
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    log = tmp_path / "log.txt"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rstream", "consume", "ordered:handle", "--partition-by",
             "ordered:key", "--redis", redis_url, "--stream", stream, "--group", group,
             "--consumer", "c", "--group-start-id", "0", "--concurrency", "8"],
            cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
    handled = tmp_path / "handled"
    try:
        wait_until(lambda: handled.exists() and len(handled.read_text().splitlines()) >= 300,
                   DEADLINE_S, message=log.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE_S) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    done: Dict[str, List[str]] = collections.defaultdict(list)
    for key, entry_id in (line.split() for line in handled.read_text().splitlines()):
        done[key].append(entry_id)
    assert dict(done) == by_key


def test_partition_by_must_be_a_synchronous_callable() -> None:
    async def key(message: rstream.Message) -> str:
        return "k"
    for bad, problem in [("account", "partition_by must be callable"),
                         (key, "partition_by must be a plain")]:
        with pytest.raises(rstream.ConfigError, match=problem):
            rstream.Consumer("redis://127.0.0.1:1/0", "s", "g", "c", partition_by=bad)



def test_the_per_account_example_applies_every_movement(
        r: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    """examples/ordered_by_account.py: every movement applied once; the balances it prints are
    the sums of the stream's movements per account; SIGTERM ends it with exit 0."""
    from test_batches import run_example

    def drained() -> bool:
        try:
            groups = r.xinfo_groups("movements")
        except redis.ResponseError:  # no stream yet
            return False
        last = r.xinfo_stream("movements")["last-generated-id"]  # Redis 6.2 has no entries-read
        return bool(groups and groups[0]["last-delivered-id"] == last and groups[0]["pending"] == 0)
    output = run_example("ordered_by_account.py", redis_url, tmp_path, drained)
    sums: Dict[str, int] = collections.Counter()
    for _, fields in r.xrange("movements"):
        sums[fields[b"account"].decode()] += int(fields[b"amount"])
    assert output.strip().splitlines()[-1] == str({a: sums[a] for a in sorted(sums)})


def test_with_several_streams_each_streams_keys_are_ordered_apart(
        r: redis.Redis, redis_url: str) -> None:
    """streams=[a, b] with the same keys: ordering is per stream (ids of two streams do not
    compare), so each (stream, key) is handled in its own id order, one at a time."""
    streams = [unique_name("a"), unique_name("b")]
    expected = {(s, k): ids for s in streams for k, ids in add_keyed(r, s, 5, 40).items()}
    lock = threading.Lock()
    done: Dict[Tuple[str, str], List[str]] = collections.defaultdict(list)
    inside: Dict[Tuple[str, str], int] = collections.Counter()
    overlaps = []

    def handle(message: rstream.Message) -> None:
        where = (message.stream, key_of(message).decode())
        with lock:
            inside[where] += 1
            overlaps.append(inside[where] > 1)
        threading.Event().wait(0.0005)
        with lock:
            inside[where] -= 1
            done[where].append(message.id)

    consumer = rstream.Consumer(redis_url, streams=streams, group="g", consumer_name="c",
                                group_start_id="0", partition_by=key_of, batch_size=50,
                                receive_interval=100, heartbeat_interval=100)
    consumer.start(handle)
    try:
        wait_until(lambda: sum(map(len, done.values())) == 400, DEADLINE_S)
    finally:
        consumer.stop()
    assert dict(done) == expected and not any(overlaps)
