"""Small helpers shared by the fault, security and soak tests."""
from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable, Collection, Counter, Dict, Iterable, List, Optional

import redis

from rstream import Consumer, Message

FailRule = Callable[[Message], Optional[BaseException]]


class Recorder:
    """A handler that counts every id it handles (thread-safe); `fail` may name an exception
    to raise for a message, after which the message still counts as handled-and-failed."""

    def __init__(self, fail: Optional[FailRule] = None) -> None:
        self.handled: Counter[str] = collections.Counter()
        self.failed: Counter[str] = collections.Counter()
        self._fail = fail
        self._lock = threading.Lock()

    def __call__(self, message: Message) -> None:
        error = self._fail(message) if self._fail else None
        with self._lock:
            (self.failed if error is not None else self.handled)[message.id] += 1
        if error is not None:
            raise error

    def seen(self) -> set[str]:
        with self._lock:
            return set(self.handled) | set(self.failed)

    def has_all(self, ids: Iterable[str]) -> bool:
        with self._lock:
            return all(i in self.handled for i in ids)


def publish(r: redis.Redis, stream: str, count: int, start: int = 0) -> List[str]:
    """XADD `count` entries (field n = start..start+count-1) and return their ids."""
    pipe = r.pipeline(transaction=False)
    for n in range(start, start + count):
        pipe.xadd(stream, {b"n": str(n).encode()})
    return [i.decode() for i in pipe.execute()]


def pending(r: redis.Redis, stream: str, group: str) -> int:
    """Entries of `group` read but not acknowledged."""
    return int(r.xpending(stream, group)["pending"])


def command_calls(r: redis.Redis) -> int:
    """Commands the server has run (and rejected) since start, from INFO commandstats."""
    stats = r.info("commandstats")
    return sum(int(v.get("calls", 0)) + int(v.get("rejected_calls", 0)) for v in stats.values())


def rstream_threads(before: Collection[threading.Thread] = ()) -> List[str]:
    """Live rstream threads, leaving out those in `before` (another test's leftovers)."""
    return [t.name for t in threading.enumerate()
            if t.name.startswith("rstream-") and t.is_alive() and t not in before]


def records(caplog_records: Iterable[logging.LogRecord], level: int, text: str) -> List[str]:
    """Messages of the captured records at `level` that contain `text`."""
    return [r.getMessage() for r in caplog_records if r.levelno == level and text in r.getMessage()]


# Short intervals; streams made on demand and read from the start, so entries added before
# start() are delivered.
FAULT_DEFAULTS: Dict[str, Any] = dict(receive_interval=100, heartbeat_interval=100,
                                      make_stream=True, group_start_id="0")


def new_consumer(made: List[Consumer], url: str, names: Any, **options: Any) -> Consumer:
    """A consumer for this test's names on `url` (a server or a proxy in front of one), added to
    `made` so the `consumers` fixture stops it at teardown."""
    consumer = Consumer(url, names.stream, names.group, names.consumer, **{**FAULT_DEFAULTS, **options})
    made.append(consumer)
    return consumer
