"""Settling handled entries: acks, dead letters, drops and retries.

Worker threads report each finished chunk here (`completed`); failure handling (`handle_failure`
and the verdict) runs on the worker thread that saw the failure. Acks then leave by one of two
roads: the reader takes them to ride with its next read (no extra round trip while entries flow),
and the acker thread sends whatever has waited longer than `ACK_DELAY_S` (the reader is blocked
on an empty stream) on its own connection. The acker thread also re-delivers due retries.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import List, Optional

from .dispatch import Failure, Ledger
from .intake import Intake
from .message import Message
from .options import Options
from .redisio import SettleResult, StreamOps
from .settle import RetryItem, RetrySchedule, SettleBatch, Verdict, judge_failure
from .stats import Counters

log = logging.getLogger("rstream")

# How long an ack may wait for a read to carry it before the acker sends it itself.
ACK_DELAY_S = 0.002
# Longest sleep of the acker thread, so it notices `stop` promptly.
IDLE_WAIT_S = 0.1


def _now_ms() -> int:
    return int(time.time() * 1000)


def _mono_ms() -> int:
    return int(time.monotonic() * 1000)


class Acker:
    def __init__(self, ops: StreamOps, options: Options, ledger: Ledger, counters: Counters,
                 stop: threading.Event) -> None:
        self.ops = ops
        self.intake: Optional[Intake] = None
        self._o = options
        self._ledger = ledger
        self._counters = counters
        self._stop = stop
        self._cond = threading.Condition()
        self._batch = SettleBatch()
        self._oldest: Optional[float] = None
        self._retries = RetrySchedule()

    @property
    def waiting_retries(self) -> int:
        return len(self._retries)

    # -- called on worker threads -------------------------------------------------------------
    def completed(self, ok: List[str], failures: List[Failure]) -> None:
        dead: List[tuple] = []
        retries: List[RetryItem] = []
        acks = ok
        dropped = 0
        if failures:
            acks = list(ok)
            for message, error in failures:
                verdict, due_ms = self._judge(message, error)
                if verdict is Verdict.RETRY:
                    retries.append(RetryItem(due_ms, message.id, message.attempt, _mono_ms()))
                elif verdict is Verdict.DEAD_LETTER:
                    dead.append((message, f"{type(error).__name__}: {error}"))
                else:
                    acks.append(message.id)
                    dropped += verdict is Verdict.DROP
        with self._cond:
            self._batch.acks.extend(acks)
            self._batch.dead_letters.extend(dead)
            self._batch.dropped += dropped
            for item in retries:
                self._retries.add(item)
            if self._oldest is None:
                self._oldest = time.monotonic()
            self._cond.notify()
        if failures:
            self._counters.add(failed=len(failures), dropped=dropped)
        self._ledger.finish(len(ok) + len(failures))

    def _judge(self, message: Message, error: BaseException) -> tuple:
        handler_failed = False
        if self._o.handle_failure is not None:
            try:
                self._o.handle_failure(message, error)
            except Exception as exc:
                handler_failed = True
                log.error("rstream: handle_failure raised for entry %s (%r); it stays pending "
                          "and will be retried", message.id, exc)
        else:
            log.warning("rstream: handler failed for entry %s (attempt %d): %r",
                        message.id, message.attempt, error)
        verdict, due_ms = judge_failure(
            message, failure_handler_failed=handler_failed, max_attempts=self._o.max_attempts,
            dead_letter=self._o.dead_letter_stream is not None, now_ms=_now_ms())
        if verdict is Verdict.DROP:
            log.warning("rstream: entry %s failed on its last attempt (%d of %s) and there is no "
                        "dead_letter_stream: acknowledged and dropped", message.id,
                        message.attempt, self._o.max_attempts)
        return verdict, due_ms

    def ack_deleted(self, ids: List[str]) -> None:
        with self._cond:
            self._batch.acks.extend(ids)
            if self._oldest is None:
                self._oldest = time.monotonic()
            self._cond.notify()

    # -- the reader's road --------------------------------------------------------------------
    def take_for_send(self) -> SettleBatch:
        with self._cond:
            batch, self._batch, self._oldest = self._batch, SettleBatch(), None
            return batch

    def restore(self, batch: SettleBatch) -> None:
        """Put back a batch whose send failed; acks are idempotent, dead letters are guarded."""
        if not batch:
            return
        with self._cond:
            self._batch.merge(batch)
            if self._oldest is None:
                self._oldest = time.monotonic()

    def sent(self, batch: SettleBatch, result: SettleResult) -> None:
        if not batch:
            return
        self._ledger.forget(batch.acks)
        self._ledger.forget(m.id for m, _ in batch.dead_letters)
        self._counters.add(acked=result.acked + result.dead_lettered,
                           dead_lettered=result.dead_lettered)

    # -- the acker thread ---------------------------------------------------------------------
    def step(self) -> Optional[float]:
        batch = self._wait_for_work()
        if batch:
            self.flush(batch)
        self._redeliver_due()
        return None

    def flush(self, batch: SettleBatch) -> None:
        try:
            result = self.ops.settle(batch)
        except BaseException:
            self.restore(batch)
            raise
        self.sent(batch, result)

    def flush_all(self) -> None:
        """Send everything left (used once the workers have stopped)."""
        batch = self.take_for_send()
        if batch:
            self.flush(batch)

    def _wait_for_work(self) -> SettleBatch:
        with self._cond:
            while not self._stop.is_set():
                now = time.monotonic()
                waits = [IDLE_WAIT_S]
                if self._oldest is not None:
                    ready_at = self._oldest + ACK_DELAY_S
                    if ready_at <= now:
                        batch, self._batch, self._oldest = self._batch, SettleBatch(), None
                        return batch
                    waits.append(ready_at - now)
                due = self._retries.next_due_ms()
                if due is not None:
                    until_due = (due - _now_ms()) / 1000
                    if until_due <= 0:
                        return SettleBatch()
                    waits.append(until_due)
                self._cond.wait(min(waits))
        return SettleBatch()

    def _redeliver_due(self) -> None:
        if self.intake is None or self._retries.next_due_ms() is None:
            return
        if self._retries.next_due_ms() > _now_ms():  # type: ignore[operator]
            return
        reserved = self._ledger.reserve(self._o.batch_size, self._stop, wait_s=0)
        if not reserved:
            return
        with self._cond:
            due = self._retries.pop_due(_now_ms(), reserved)
        if not due:
            self._ledger.admit(reserved, (), 0)
            return
        mono = _mono_ms()
        # The server's idle time of each entry is at least the time since we handled it; a
        # smaller idle means another consumer claimed it meanwhile, and XCLAIM leaves it there.
        min_idle = max(0, min(mono - item.handled_at_ms for item in due) - 50)
        attempts = {item.id: item.attempt + 1 for item in due}
        try:
            self.intake.claim(self.ops, reserved, [i.id for i in due], min_idle, attempts,
                              counter="retried", count_vanished=False)
        except BaseException:
            with self._cond:
                for item in due:
                    self._retries.add(item)
            raise
