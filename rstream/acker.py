"""Settling handled entries: acks, dead letters, drops and retries.

Worker threads report each finished chunk here (`completed`); failure handling (`handle_failure`
and the verdict) runs on the worker thread that saw the failure. Acks then leave by one of two
roads: the reader takes them to ride with its next read (no extra round trip while entries flow),
and the acker thread sends whatever has waited longer than `ACK_DELAY_S` (the reader is blocked
on an empty stream) on its own connection. Dead letters go only by the acker thread, one per round
trip, so that one the server refuses is put off alone (see `_send_dead_letters`). The acker thread
also re-delivers due retries (XCLAIM), ahead of new reads for the free in-flight slots.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import List, Optional, Tuple

from .dispatch import Failure, Ledger
from .errors import FatalRedisError, GroupMissing, RedisUnavailable
from .intake import Intake
from .message import Message
from .options import Options
from .redisio import SettleResult, StreamOps
from .settle import (RetryItem, RetrySchedule, SettleBatch, Verdict, backoff_due_ms, failure_text,
                     judge_failure)
from .stats import Counters

log = logging.getLogger("rstream")

# How long an ack may wait for a read to carry it before the acker sends it itself.
ACK_DELAY_S = 0.002
# While the reader is busy with a flowing stream its reads carry the acks; the acker thread
# only steps in for acks older than this (a stalled reader).
FLOWING_ACK_DELAY_S = 0.01
# Longest sleep of the acker thread, so it notices `stop` promptly.
IDLE_WAIT_S = 0.1
# Due retries found no free in-flight slot: look again after this long (or when a chunk
# completes), rather than spinning on the due retry until a handler finishes.
RETRY_RECHECK_S = 0.02


def _refused(exc: Exception) -> bool:
    """An error about one dead letter itself (a script error, an unencodable value), as opposed
    to an outage, a lost group or a fatal fault, which every command meets and the thread's
    supervising loop handles."""
    return not isinstance(exc, (RedisUnavailable, GroupMissing, FatalRedisError))


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
        self._no_slots_until = 0.0  # monotonic; before it, due retries do not wake the thread
        # Set by the reader while entries flow: its next read comes soon and carries the acks,
        # so the acker thread leaves them to it for up to FLOWING_ACK_DELAY_S.
        self.reader_flowing = False
        self._wanting_room = False  # asked the ledger to keep slots free for due retries

    @property
    def waiting_retries(self) -> int:
        return len(self._retries)

    # -- called on worker threads -------------------------------------------------------------
    def completed(self, ok: List[str], failures: List[Failure]) -> None:
        dead: List[Tuple[Message, str]] = []
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
                    dead.append((message, failure_text(error)))
                else:
                    acks.append(message.id)
                    dropped += verdict is Verdict.DROP
        with self._cond:
            self._batch.acks.extend(acks)
            self._batch.dead_letters.extend(dead)
            self._batch.dropped += dropped
            for item in retries:
                self._retries.add(item)
            # Wake the acker thread only when it has something new to do: the first acks of a
            # batch (unless the reader will carry them), a retry, a dead letter, or freed slots
            # for a due retry. A wake per completed chunk costs a thread switch each.
            wake = bool(retries or dead or self._no_slots_until)
            if self._oldest is None:
                self._oldest = time.monotonic()
                wake = wake or not self.reader_flowing
            self._no_slots_until = 0.0  # slots are about to be freed: due retries may go
            if wake:
                self._cond.notify()
        if failures:
            self._counters.add(failed=len(failures), dropped=dropped)
        self._ledger.finish(len(ok) + len(failures))

    def _judge(self, message: Message, error: BaseException) -> Tuple[Verdict, int]:
        broken: Optional[BaseException] = None
        if self._o.handle_failure is not None:
            try:
                self._o.handle_failure(message, error)
            except BaseException as exc:  # noqa: B036 - must not kill the worker or leak its slots
                broken = exc
        else:
            # With the traceback: the handler's own frames are where the user has to look.
            log.warning("rstream: handler failed for entry %s (attempt %d): %r",
                        message.id, message.attempt, error, exc_info=error)
        now_ms = _now_ms()
        verdict, due_ms = judge_failure(
            message, failure_handler_failed=broken is not None, max_attempts=self._o.max_attempts,
            dead_letter=self._o.dead_letter_stream is not None, now_ms=now_ms)
        if broken is not None:
            then = ("it goes to the dead-letter stream" if verdict is Verdict.DEAD_LETTER else
                    f"it stays pending and will be retried in {due_ms - now_ms} ms")
            log.error("rstream: handle_failure raised for entry %s (attempt %d): %r; %s",
                      message.id, message.attempt, broken, then)
        if verdict is Verdict.DROP:
            log.warning("rstream: entry %s failed on its last attempt (%d of %s) and there is no "
                        "dead_letter_stream: acknowledged and dropped (%s)", message.id,
                        message.attempt, self._o.max_attempts, failure_text(error))
        return verdict, due_ms

    def ack_deleted(self, ids: List[str]) -> None:
        with self._cond:
            self._batch.acks.extend(ids)
            if self._oldest is None:
                self._oldest = time.monotonic()
            self._cond.notify()

    # -- the reader's road --------------------------------------------------------------------
    def set_reader_flowing(self, flowing: bool) -> None:
        """The reader's last read came back full (True) or short (False: its next read may
        block, so acks waiting now are the acker thread's to send)."""
        if flowing == self.reader_flowing:
            return
        with self._cond:
            self.reader_flowing = flowing
            if not flowing and self._oldest is not None:
                self._cond.notify()

    def take_for_send(self) -> SettleBatch:
        """The acks waiting, for the reader to carry. Dead letters stay for the acker thread,
        which can tell one the server refuses from the rest (see `_send_dead_letters`)."""
        with self._cond:
            batch = SettleBatch(acks=self._batch.acks, dropped=self._batch.dropped)
            self._batch.acks, self._batch.dropped = [], 0
            if not self._batch.dead_letters:
                self._oldest = None
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
        acks = SettleBatch(acks=batch.acks, dropped=batch.dropped)
        if acks:
            try:
                result = self.ops.settle(acks)
            except BaseException:
                self.restore(batch)
                raise
            self.sent(acks, result)
        self._send_dead_letters(batch.dead_letters)

    def flush_all(self) -> None:
        """Send everything left (used once the workers have stopped)."""
        with self._cond:
            batch, self._batch, self._oldest = self._batch, SettleBatch(), None
        if batch:
            self.flush(batch)

    def _send_dead_letters(self, dead: List[Tuple[Message, str]]) -> None:
        """Send dead letters one per round trip (they are rare), so that one the server refuses
        is put off on its own instead of holding back every settlement queued behind it."""
        for n, item in enumerate(dead):
            batch = SettleBatch(dead_letters=[item])
            try:
                result = self.ops.settle(batch)
            except Exception as exc:  # noqa: BLE001 - sorted by _refused; the rest re-raised
                if not _refused(exc):
                    self.restore(SettleBatch(dead_letters=dead[n:]))
                    raise
                self._put_off(item[0], exc)
            else:
                self.sent(batch, result)
                self._log_dead_letter(item, written=bool(result.dead_lettered))

    def _log_dead_letter(self, item: Tuple[Message, str], written: bool) -> None:
        message, error = item
        if written:
            log.warning("rstream: entry %s (attempt %d) moved to dead-letter stream %r: %s",
                        message.id, message.attempt, self._o.dead_letter_stream, error)
        else:
            # The script found it no longer pending here (settled, or taken over elsewhere).
            log.debug("rstream: entry %s was no longer pending here; not dead-lettered",
                      message.id)

    def _put_off(self, message: Message, exc: BaseException) -> None:
        """The server refused this dead letter (e.g. more fields than a script call takes): the
        entry stays pending and is handled again after a backoff; nothing is lost or blocked."""
        due_ms = backoff_due_ms(message.attempt, _now_ms())
        log.error("rstream: could not dead-letter entry %s (%s); it stays pending and will be "
                  "retried in %d ms", message.id, exc, due_ms - _now_ms())
        with self._cond:
            self._retries.add(RetryItem(due_ms, message.id, message.attempt, _mono_ms()))
            self._cond.notify()

    def _wait_for_work(self) -> SettleBatch:
        with self._cond:
            while not self._stop.is_set():
                now = time.monotonic()
                waits = [IDLE_WAIT_S]
                if self._oldest is not None:
                    delay = FLOWING_ACK_DELAY_S if self.reader_flowing else ACK_DELAY_S
                    ready_at = self._oldest + delay
                    if ready_at <= now:
                        batch, self._batch, self._oldest = self._batch, SettleBatch(), None
                        return batch
                    waits.append(ready_at - now)
                due = self._retries.next_due_ms()
                if due is not None:
                    until_due = max((due - _now_ms()) / 1000, self._no_slots_until - now)
                    if until_due <= 0:
                        return SettleBatch()
                    waits.append(until_due)
                self._cond.wait(min(waits))
        return SettleBatch()

    def _any_due(self) -> bool:
        with self._cond:
            due = self._retries.next_due_ms()
        return due is not None and due <= _now_ms()

    def _want_room(self, wanted: bool) -> None:
        if wanted != self._wanting_room:
            self._wanting_room = wanted
            self._ledger.want_room(wanted)

    def _redeliver_due(self) -> None:
        if self.intake is None or not self._any_due():
            self._want_room(False)
            return
        reserved = self._ledger.reserve(self._o.batch_size, self._stop, wait_s=0, first=True)
        if not reserved:
            self._want_room(True)  # reads leave room, or an idle reader's next read takes it all
            with self._cond:
                self._no_slots_until = time.monotonic() + RETRY_RECHECK_S
            return
        with self._cond:
            due = self._retries.pop_due(_now_ms(), reserved)
        self._want_room(self._any_due())
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
