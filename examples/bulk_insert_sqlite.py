"""A batch handler: orders bulk-inserted into SQLite, one transaction per batch.

Run it with a Redis server at REDIS_URL; it adds 1,000 orders (and one broken one), inserts them
in batches of up to 500 and, after Ctrl-C (or SIGTERM), prints what the table holds.
"""
import os
import sqlite3
import threading
from typing import List, Tuple

import rstream

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")

db = sqlite3.connect("orders.db", check_same_thread=False)  # rstream's threads share it...
db.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, account TEXT, cents INTEGER)")
lock = threading.Lock()                                     # ...one writer at a time


def insert(batch: List[rstream.Message]) -> List[Tuple[rstream.Message, Exception]]:
    """Called with up to batch_size messages. Rows that cannot be read are returned as failures:
    they alone are retried, then dead-lettered. The others are inserted in one transaction; if
    that raises, the whole batch fails and is retried (INSERT OR IGNORE makes a redelivered row
    harmless: delivery is at least once)."""
    rows: List[Tuple[str, str, int]] = []
    failed: List[Tuple[rstream.Message, Exception]] = []
    for message in batch:
        try:
            rows.append((message.id, message.fields[b"account"].decode(),
                         int(message.fields[b"cents"])))
        except (KeyError, ValueError) as exc:
            failed.append((message, exc))
    with lock, db:  # commit, or roll back and raise
        db.executemany("INSERT OR IGNORE INTO orders VALUES (?, ?, ?)", rows)
    return failed


def report(message: rstream.Message, error: BaseException) -> None:
    print(f"order {message.id} failed on attempt {message.attempt}: {error!r}")


producer = rstream.Producer(REDIS_URL, "orders")
producer.send_many({"account": f"acct-{n % 10}", "cents": str(n)} for n in range(1000))
producer.send({"account": "acct-3", "cents": "twelve"})  # fails 3 times, then goes to orders:dead

consumer = rstream.Consumer(
    redis=REDIS_URL, stream="orders", group="sqlite-writer", consumer_name="writer-1",
    make_stream=True, group_start_id="0",
    batch_size=500,       # up to 500 messages per call...
    batch_timeout=200,    # ...waiting at most 200 ms for a batch to fill up
    max_attempts=3, dead_letter_stream="orders:dead", handle_failure=report)
consumer.run(handle_batch=insert)  # until Ctrl-C or SIGTERM; then the batch waiting is flushed
print(db.execute("SELECT count(*), sum(cents) FROM orders").fetchone(), "orders in orders.db")
