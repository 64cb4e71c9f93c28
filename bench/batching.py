"""Batch handlers and partition_by, measured: what each costs or gains on this machine.

1. Bulk insert into SQLite (a file, WAL, synchronous=NORMAL): `handle_batch` inserting each batch
   in one transaction (`executemany`, one commit) vs a per-message handler that commits each row
   (what acking after the write needs without batches). Both on `concurrency` threads sharing
   one connection under a lock (SQLite has one writer).
2. Ordered by key vs unordered, the same handler: `partition_by` with many keys, and with as
   many keys as workers, vs no partition_by; a handler that waits `--io-us` µs (I/O: the GIL is
   released) and a no-op one (the ordering's own cost).

Each variant drains `--count` fresh entries through a group of its own, in-process, from
`start()` until the server has acked them all; rounds are interleaved and medians reported.

    python -m bench.batching [--count 20000] [--rounds 3] [--io-us 500] [--keys 1000]
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import redis

import rstream
from rstream._hotpath import IMPLEMENTATION
from rstream.embedded import EmbeddedServer

from .common import BenchError, median, prefill

DEADLINE_S = 300.0
POLL_S = 0.005


class Table:
    """One SQLite table on a file, one writer at a time."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE entries (id TEXT PRIMARY KEY, n INTEGER, user TEXT)")
        self._lock = threading.Lock()

    def insert_batch(self, batch: List[rstream.Message]) -> None:
        rows = [(m.id, int(m.fields[b"n"]), m.fields[b"user"].decode()) for m in batch]
        with self._lock, self._db:  # one transaction, one commit
            self._db.executemany("INSERT INTO entries VALUES (?, ?, ?)", rows)

    def insert_one(self, message: rstream.Message) -> None:
        row = (message.id, int(message.fields[b"n"]), message.fields[b"user"].decode())
        with self._lock, self._db:  # a commit per row
            self._db.execute("INSERT INTO entries VALUES (?, ?, ?)", row)

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM entries").fetchone()[0])


def drain(url: str, client: redis.Redis, count: int, start: Callable[[rstream.Consumer], object],
          **options: Any) -> float:
    """Seconds for one consumer to handle and ack `count` fresh entries."""
    stream, group = f"bench-batch-{uuid.uuid4().hex[:8]}", "bench"
    prefill(client, stream, count)
    client.xgroup_create(stream, group, "0")
    consumer = rstream.Consumer(url, stream, group, "c", **options)
    began = time.perf_counter()
    start(consumer)
    try:
        while True:
            info = {g["name"]: g for g in client.xinfo_groups(stream)}[group.encode()]
            if info["entries-read"] == count and info["pending"] == 0:
                return time.perf_counter() - began
            if consumer.state != "running":
                raise BenchError(f"the consumer stopped: {consumer.error}")
            if time.perf_counter() - began > DEADLINE_S:
                raise BenchError("the drain did not finish in time")
            time.sleep(POLL_S)
    finally:
        consumer.stop()
        client.delete(stream)


def sqlite_case(url: str, client: redis.Redis, count: int, workdir: Path,
                batch: bool) -> float:
    table = Table(workdir / f"{uuid.uuid4().hex[:8]}.db")

    def start(consumer: rstream.Consumer) -> None:
        if batch:
            consumer.start(handle_batch=table.insert_batch)
        else:
            consumer.start(table.insert_one)
    seconds = drain(url, client, count, start, batch_timeout=50)
    if table.count() != count:
        raise BenchError(f"SQLite has {table.count()} rows, not {count}")
    return seconds


def ordering_case(url: str, client: redis.Redis, count: int, io_us: int,
                  keys: Optional[int]) -> float:
    pause = io_us / 1e6
    wait = threading.Event().wait

    def handle(message: rstream.Message) -> None:
        if pause:
            wait(pause)  # stands in for a network call: releases the GIL like real I/O

    options: Dict[str, Any] = {}
    if keys is not None:
        options["partition_by"] = lambda m: int(m.fields[b"n"]) % keys
    return drain(url, client, count, lambda c: c.start(handle), **options)


def main(argv: List[str] = sys.argv[1:]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batching",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--io-us", type=int, default=500)
    parser.add_argument("--keys", type=int, default=1000)
    args = parser.parse_args(argv)
    concurrency = rstream.Consumer("redis://127.0.0.1:1/0", "s", "g", "c").options.concurrency
    variants: Dict[str, Callable[[str, redis.Redis, Path], float]] = {
        "sqlite, handle_batch": lambda u, c, w: sqlite_case(u, c, args.count, w, batch=True),
        "sqlite, per message": lambda u, c, w: sqlite_case(u, c, args.count, w, batch=False),
    }
    def ordered(io_us: int, keys: Optional[int]) -> Callable[[str, redis.Redis, Path], float]:
        return lambda url, client, _: ordering_case(url, client, args.count, io_us, keys)

    for io_us in (args.io_us, 0):
        for keys, label in ((None, "unordered"), (args.keys, f"partition_by, {args.keys} keys"),
                            (concurrency, f"partition_by, {concurrency} keys")):
            variants[f"{io_us} µs handler, {label}"] = ordered(io_us, keys)
    rates: Dict[str, List[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedServer() as server:
        client = server.client()
        for n in range(args.rounds):
            for name, run in variants.items():  # interleaved: a noisy spell hits all of them
                rates[name].append(args.count / run(server.url, client, Path(tmp)))
                print(f"round {n + 1}: {name}: {rates[name][-1]:,.0f} entries/s", flush=True)
    print(f"\n{args.count:,} entries per run, concurrency {concurrency}, {os.cpu_count()} cores, "
          f"median of {args.rounds} interleaved rounds, hot path {IMPLEMENTATION}")
    print("| variant | entries/s |\n|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {median(values):,.0f} |")
    batch, single = median(rates["sqlite, handle_batch"]), median(rates["sqlite, per message"])
    print(f"\nSQLite: handle_batch / per message = {batch / single:.1f}x")
    for io_us in (args.io_us, 0):
        base = median(rates[f"{io_us} µs handler, unordered"])
        for label in (f"{args.keys} keys", f"{concurrency} keys"):
            rate = median(rates[f"{io_us} µs handler, partition_by, {label}"])
            print(f"{io_us} µs handler: partition_by with {label} / unordered = {rate / base:.2f}")


if __name__ == "__main__":
    main()
