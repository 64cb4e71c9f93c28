"""The pool for `partition_by`: one message of a key at a time, in stream-id order.

`submit` asks `partition_by` for each message's key (on the thread that read it: keep it
cheap) and queues the message under ``(stream, key)`` in `partition.KeyQueues`, where a
claimed, replayed or retried entry takes its place in id order. An idle worker takes a ready
key with up to `RUN` of its first messages, runs them one after another, and releases the key;
different keys run on different workers at once.

A failed message is judged at once (`Outcomes`), before the next message of its key runs. When
the verdict is a retry, the retry stays here: the message goes back to the head of its key's
queue, attempt + 1, and the key waits until the retry is due, holding back everything after it.
It keeps its in-flight slot meanwhile, as do the messages queued behind it. Why not a retry
through the server, as without `partition_by` (the reaper claims it back when due)? That claim
needs a free slot, and the messages a waiting key holds back can fill every slot: nothing would
run, nothing would free one, the retry would never come back. Here, when every slot is held by
waiting keys, reading pauses until a retry is due, and then goes on. The entry's server-side
delivery count moves on only when it is delivered again (a restart, a claim), so `attempt`
counts this process's retries on top of the deliveries.

At stop the keys waiting for a retry are given up at once (they and what waits behind them stay
pending on the server, and come back in id order), the other queued messages are drained.

A message whose key cannot be had (`partition_by` raised, or gave something unhashable) waits
under a key of its own; the worker that takes it asks for its key once more and, if that fails
again, fails the message with that error, like a handler failure (a retry asks again).
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Hashable, List, Optional, Tuple, Union

from . import _hotpath as hot
from .dispatch import ChunkDone, WorkerPool
from .handlers import reject_awaitable
from .message import Message
from .partition import Entry, KeyQueues, Order, PartitionBy
from .settlements import now_ms

# Most messages of one key a worker takes at once: fewer lock round trips for a key with many
# queued, while other keys still get their turn (the key goes to the back of the line).
RUN = 32
# A worker reports what it handled at least this often, so a run of slow handlers frees its
# slots and gets its acks out as it goes, not only at its end.
REPORT_AFTER_S = 0.05
Item = Tuple[Message, ChunkDone]
Key = Tuple[str, Hashable]  # (stream, what partition_by gave)


class _NoKey:
    """The key of a message `partition_by` could not key: its own, so it blocks nothing."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _GiveUp:
    """Work for a worker at stop: messages to hand back unhandled."""

    __slots__ = ("items",)

    def __init__(self, items: List[Item]) -> None:
        self.items = items


class KeyedPool(WorkerPool):
    """Workers running `handler` on each key's messages one at a time, in id order."""

    def __init__(self, handler: Callable[[Message], object], concurrency: int,
                 partition_by: PartitionBy) -> None:
        super().__init__(concurrency)
        self._handler = handler
        self._partition_by = partition_by
        self._keys: KeyQueues[Key, Item] = KeyQueues()
        self._running = 0       # keys a worker holds
        self._abandoned = False

    def submit(self, messages: List[Message], done: ChunkDone) -> None:
        if not messages:
            return
        keyed = [(self._key_of(m), hot.parse_id(m.id), (m, done)) for m in messages]
        with self._cond:
            fresh = sum(self._keys.add(*each) for each in keyed)
            self._cond.notify(min(max(fresh, 1), self._concurrency))

    def abandon(self) -> List[Message]:
        with self._cond:
            self._abandoned = self._closing = True
            self._cond.notify_all()
            return [m for m, _ in self._keys.drain()]

    def waiting_retries(self, stream: Optional[str] = None) -> int:
        with self._cond:
            return sum(1 for key in self._keys.waiting_keys() if stream in (None, key[0]))

    def _key_of(self, message: Message) -> Key:
        try:
            key = self._partition_by(message)
            hash(key)
        except BaseException as exc:  # noqa: BLE001 - the user's function: the message fails
            return message.stream, _NoKey(exc)
        return message.stream, key

    def _work(self) -> None:
        while True:
            work = self._take()
            if work is None:
                return
            if isinstance(work, _GiveUp):
                _hand_back(work.items)
                continue
            key, entries = work
            back, not_before = self._run(key, entries)
            with self._cond:
                if not self._abandoned:
                    self._keys.release(key, back, not_before)
                self._running -= 1
                if self._closing:
                    self._cond.notify_all()  # the last one out lets the others exit
                elif not_before is not None:
                    self._cond.notify()  # a sleeping worker may have to wake up sooner now

    def _take(self) -> Union[None, _GiveUp, Tuple[Key, List[Entry[Item]]]]:
        """The next work for a worker, waiting for it; None: the worker exits."""
        with self._cond:
            while True:
                if self._abandoned:
                    return None
                now = time.monotonic()
                taken = self._keys.take(now, RUN)
                if taken is not None:
                    self._running += 1
                    return taken
                if self._closing:
                    left = self._keys.give_up_waiting()
                    if left:
                        return _GiveUp(left)
                    if not self._running and not len(self._keys):
                        return None
                due = self._keys.next_due()
                self._cond.wait(None if due is None else due - now)

    def _run(self, key: Key, entries: List[Entry[Item]]) -> Tuple[List[Entry[Item]],
                                                                  Optional[float]]:
        """Run a key's messages in order until one is to be retried; what to put back (the
        retry, attempt + 1, and the messages after it) and until when the key waits. A failure
        is reported at once: its verdict decides whether the key goes on."""
        handler = self._handler
        done = entries[0][1][1]  # one key, one stream
        if isinstance(key[1], _NoKey):  # its own key: one message
            (order, (message, _)), = entries
            return self._rekey(order, message, done)
        ok: List[str] = []
        clock = time.monotonic
        reported_at = clock()
        for n, (order, (message, _)) in enumerate(entries):
            if self._abandoned:  # the stop deadline passed: the rest stays pending
                break
            try:
                result = handler(message)
                if result is not None:
                    reject_awaitable(result)
            except BaseException as exc:  # noqa: BLE001 - a handler's exception is an outcome
                held = done(ok, [(message, exc)])
                ok = []
                if held:
                    return _retry(order, held[0], done, entries[n + 1:])
            else:
                ok.append(message.id)
                if clock() - reported_at >= REPORT_AFTER_S:
                    done(ok, [])
                    ok, reported_at = [], clock()
        if ok:
            done(ok, [])
        return [], None

    def _rekey(self, order: Order, message: Message,
               done: ChunkDone) -> Tuple[List[Entry[Item]], Optional[float]]:
        """A message that had no key: ask for it again; with one now, it joins that key's
        queue; else it fails with what `partition_by` raised (and if retried, comes back here)."""
        key = self._key_of(message)
        if not isinstance(key[1], _NoKey):
            with self._cond:
                self._keys.add(key, order, (message, done))
                self._cond.notify()
            return [], None
        held = done([], [(message, key[1].error)])
        return _retry(order, held[0], done, []) if held else ([], None)


def _retry(order: Order, held: Tuple[Message, int], done: ChunkDone,
           rest: List[Entry[Item]]) -> Tuple[List[Entry[Item]], float]:
    """The retried message, delivered again here (its fields as the failed attempt left them),
    first in line again for its key, which waits until the retry is due."""
    message, due_ms = held
    again = Message(message.id, message.stream, message.fields, message.attempt + 1)
    not_before = time.monotonic() + max(0, due_ms - now_ms()) / 1000
    return [(order, (again, done)), *rest], not_before


def _hand_back(items: List[Item]) -> None:
    """Messages given up unhandled at stop: their slots come back, per stream."""
    counts: Dict[ChunkDone, int] = {}
    for _, done in items:
        counts[done] = counts.get(done, 0) + 1
    for done, count in counts.items():
        done([], [], unhandled=count)
