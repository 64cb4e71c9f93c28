"""The buffer between the threads that settle entries: data in, data out, one lock.

Workers `put` what their handlers decided (acks, dead letters, retries); intake puts the acks
of deleted entries. Three threads take:
- the reader takes the waiting acks to ride with its next read (`take_for_read`): no extra
  round trip while entries flow;
- the acker thread takes whatever has waited longer than `ACK_DELAY_S` (the reader is blocked
  on an empty stream), and every dead letter (`wait_for_flush`);
- the reaper thread takes the retries that are due (`take_due_retries`) and re-delivers them
  through its claim path.
A batch whose send failed comes back with `restore`; `settled` records what the server took.
"""
from __future__ import annotations

import threading
import time
from typing import List, Optional, Sequence, Tuple

from .ledger import Ledger
from .message import Message
from .settle import RetryItem, RetrySchedule, SettleBatch, SettleResult
from .stats import Counters

# How long an ack may wait for a read to carry it before the acker thread sends it itself.
ACK_DELAY_S = 0.002
# While the reader is busy with a flowing stream its reads carry the acks; the acker thread
# only steps in for acks older than this (a stalled reader).
FLOWING_ACK_DELAY_S = 0.01
# Longest sleep of a waiting thread, so it notices its stop event promptly.
IDLE_WAIT_S = 0.1

DeadLetter = Tuple[Message, str]


def now_ms() -> int:
    return int(time.time() * 1000)


def mono_ms() -> int:
    return int(time.monotonic() * 1000)


class Settlements:
    def __init__(self, ledger: Ledger, counters: Counters) -> None:
        self._ledger = ledger
        self._counters = counters
        lock = threading.Lock()
        self._flush_ready = threading.Condition(lock)   # the acker thread waits here
        self._retry_ready = threading.Condition(lock)   # the reaper thread waits here
        self._batch = SettleBatch()
        self._oldest: Optional[float] = None  # monotonic: when the oldest waiting ack came
        self._retries = RetrySchedule()
        # Set by the reader while entries flow: its next read comes soon and carries the acks,
        # so the acker thread leaves them to it for up to FLOWING_ACK_DELAY_S.
        self._reader_flowing = False

    @property
    def waiting_retries(self) -> int:
        return len(self._retries)

    # -- put ----------------------------------------------------------------------------------
    def put(self, acks: List[str], dead: Sequence[DeadLetter] = (),
            retries: Sequence[RetryItem] = (), dropped: int = 0) -> None:
        """Outcomes of handled entries. The acker thread is woken only when it has something
        new to do (the first acks of a batch, unless the reader will carry them; a dead
        letter): a wake per completed chunk would cost a thread switch each."""
        with self._flush_ready:
            self._batch.acks.extend(acks)
            self._batch.dead_letters.extend(dead)
            self._batch.dropped += dropped
            wake = bool(dead)
            if self._oldest is None and (acks or dead):
                self._oldest = time.monotonic()
                wake = wake or not self._reader_flowing
            if wake:
                self._flush_ready.notify()
            for item in retries:
                self._retries.add(item)
            if retries:
                self._retry_ready.notify()

    def put_acks(self, ids: List[str]) -> None:
        """Acks to send soon (deleted entries: nothing to handle)."""
        with self._flush_ready:
            self._batch.acks.extend(ids)
            if self._oldest is None:
                self._oldest = time.monotonic()
            self._flush_ready.notify()

    def retry_later(self, item: RetryItem) -> None:
        with self._retry_ready:
            self._retries.add(item)
            self._retry_ready.notify()

    def restore(self, batch: SettleBatch) -> None:
        """Put back a batch whose send failed; acks are idempotent, dead letters are guarded."""
        if not batch:
            return
        with self._flush_ready:
            self._batch.merge(batch)
            if self._oldest is None:
                self._oldest = time.monotonic()

    # -- take ---------------------------------------------------------------------------------
    def set_reader_flowing(self, flowing: bool) -> None:
        """The reader's last read came back full (True) or short (False: its next read may
        block, so acks waiting now are the acker thread's to send)."""
        if flowing == self._reader_flowing:
            return
        with self._flush_ready:
            self._reader_flowing = flowing
            if not flowing and self._oldest is not None:
                self._flush_ready.notify()

    def take_for_read(self) -> SettleBatch:
        """The acks waiting, for the reader to carry. Dead letters stay for the acker thread,
        which sends them one per round trip (see `rstream.acker`)."""
        with self._flush_ready:
            batch = SettleBatch(acks=self._batch.acks, dropped=self._batch.dropped)
            self._batch.acks, self._batch.dropped = [], 0
            if not self._batch.dead_letters:
                self._oldest = None
            return batch

    def take_all(self) -> SettleBatch:
        with self._flush_ready:
            batch, self._batch, self._oldest = self._batch, SettleBatch(), None
            return batch

    def wait_for_flush(self, stop: threading.Event) -> SettleBatch:
        """Block until acks have waited long enough or a dead letter came (or `stop`)."""
        with self._flush_ready:
            while not stop.is_set():
                wait = IDLE_WAIT_S
                if self._oldest is not None:
                    delay = FLOWING_ACK_DELAY_S if self._reader_flowing else ACK_DELAY_S
                    left = self._oldest + delay - time.monotonic()
                    if left <= 0 or self._batch.dead_letters:
                        batch, self._batch, self._oldest = self._batch, SettleBatch(), None
                        return batch
                    wait = min(wait, left)
                self._flush_ready.wait(wait)
        return SettleBatch()

    def take_due_retries(self, limit: int) -> List[RetryItem]:
        with self._retry_ready:
            return self._retries.pop_due(now_ms(), limit)

    def retry_due_in_s(self) -> Optional[float]:
        """Seconds until the next retry is due (0 if one is), None if none waits."""
        with self._retry_ready:
            due = self._retries.next_due_ms()
        return None if due is None else max(0.0, (due - now_ms()) / 1000)

    def wait_for_retry(self, timeout_s: float) -> None:
        """Sleep up to `timeout_s`, less if a retry is or becomes due, or `wake` is called."""
        with self._retry_ready:
            due = self._retries.next_due_ms()
            if due is not None:
                timeout_s = min(timeout_s, (due - now_ms()) / 1000)
            if timeout_s > 0:
                self._retry_ready.wait(min(timeout_s, IDLE_WAIT_S))

    def wake(self) -> None:
        """Wake every waiting thread (at stop, after their stop events are set)."""
        with self._flush_ready:
            self._flush_ready.notify_all()
            self._retry_ready.notify_all()

    # -- done ---------------------------------------------------------------------------------
    def settled(self, batch: SettleBatch, result: SettleResult) -> None:
        """The server took `batch`: its entries are no longer this consumer's to hold."""
        if not batch:
            return
        self._ledger.forget(batch.acks)
        self._ledger.forget(m.id for m, _ in batch.dead_letters)
        self._counters.add(acked=result.acked + result.dead_lettered,
                           dead_lettered=result.dead_lettered)
