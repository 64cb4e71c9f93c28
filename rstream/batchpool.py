"""The pool for a batch handler (`start(handle_batch=...)`): batches assembled from the queue.

Reads and claims queue messages as they come; an idle worker takes a batch of one stream's
queued messages (never two streams in one batch: each stream settles on its own) once there
are `batch_size` of them, or once the oldest has waited `batch_timeout`, or at once when the
consumer stops (a stop flushes what waits). Messages waiting for their batch hold their
in-flight slots, like any message read and not yet handled, so `max_in_flight` bounds them too.
The worker calls the batch handler once and reports every outcome at once (`batches.run_batch`
reads the handler's answer); a hung batch handler holds its own batch only.
"""
from __future__ import annotations

import collections
import time
from typing import Deque, Dict, List, Optional, Tuple

from .batches import BatchHandler, run_batch
from .dispatch import ChunkDone, WorkerPool
from .message import Message


class _Queued:
    __slots__ = ("messages", "done", "arrived")

    def __init__(self, messages: List[Message], done: ChunkDone, arrived: float) -> None:
        self.messages = messages
        self.done = done
        self.arrived = arrived  # monotonic: when the first of these was queued


class BatchPool(WorkerPool):
    """Workers calling `handle_batch` with up to `batch_size` messages of one stream."""

    def __init__(self, handle_batch: BatchHandler, concurrency: int, batch_size: int,
                 timeout_s: float) -> None:
        super().__init__(concurrency)
        self._handle_batch = handle_batch
        self._size = batch_size
        self._timeout_s = timeout_s
        self._queue: Deque[_Queued] = collections.deque()  # oldest first
        self._counts: Dict[ChunkDone, int] = {}  # messages queued, per stream

    def submit(self, messages: List[Message], done: ChunkDone) -> None:
        if not messages:
            return
        with self._cond:
            self._queue.append(_Queued(messages, done, time.monotonic()))
            count = self._counts[done] = self._counts.get(done, 0) + len(messages)
            # A full batch for each of that many workers; else one, to keep the oldest's time.
            self._cond.notify(max(1, min(count // self._size, self._concurrency)))

    def abandon(self) -> List[Message]:
        with self._cond:
            left = [m for queued in self._queue for m in queued.messages]
            self._queue.clear()
            self._counts.clear()
            self._closing = True
            self._cond.notify_all()
            return left

    def _work(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            batch, done = taken
            done(*run_batch(self._handle_batch, batch))

    def _take(self) -> Optional[Tuple[List[Message], ChunkDone]]:
        with self._cond:
            while True:
                if not self._queue:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                now = time.monotonic()
                done = self._due(now)
                if done is not None:
                    return self._cut(done), done
                self._cond.wait(self._queue[0].arrived + self._timeout_s - now)

    def _due(self, now: float) -> Optional[ChunkDone]:
        """The stream whose batch should go now: a full one, else the oldest message's once
        it has waited long enough (or the consumer stops). The queue is in arrival order, so
        if its head has not waited long enough, nothing has."""
        for done, count in self._counts.items():
            if count >= self._size:
                return done
        head = self._queue[0]
        if self._closing or now - head.arrived >= self._timeout_s:
            return head.done
        return None

    def _cut(self, done: ChunkDone) -> List[Message]:
        """Up to `batch_size` of `done`'s queued messages, in the order they came."""
        batch: List[Message] = []
        kept: Deque[_Queued] = collections.deque()
        for queued in self._queue:
            room = self._size - len(batch)
            if room <= 0 or queued.done != done:
                kept.append(queued)
            elif len(queued.messages) <= room:
                batch.extend(queued.messages)
            else:
                batch.extend(queued.messages[:room])
                kept.append(_Queued(queued.messages[room:], done, queued.arrived))
        self._queue = kept
        left = self._counts.pop(done) - len(batch)
        if left:
            self._counts[done] = left
        if self._queue:
            self._cond.notify()  # another batch may be due for another worker
        return batch
