"""The acker thread: sends the settlements the reader does not carry. It only flushes.

It takes from `Settlements` the acks that waited longer than a read would take to carry them
(the reader is blocked on an empty stream, or stalled) and every dead letter, and sends them on
its own connection. Dead letters go one per round trip (they are rare), so that one the server
refuses is put off on its own, as a retry after a backoff, instead of holding back every
settlement queued behind it.
"""
from __future__ import annotations

import logging
import threading
from typing import List, Optional

from .errors import FatalRedisError, TransientError
from .events import Events
from .options import Options
from .redisio import StreamOps
from .settle import RetryItem, SettleBatch, backoff_due_ms
from .settlements import DeadLetter, Settlements, mono_ms, now_ms

log = logging.getLogger("rstream")


def _refused(exc: Exception) -> bool:
    """An error about one dead letter itself (a script error, an unencodable value), as opposed
    to an outage, a lost group or a fatal fault, which every command meets and the thread's
    supervising loop handles."""
    return not isinstance(exc, (TransientError, FatalRedisError))


class Acker:
    def __init__(self, ops: StreamOps, options: Options, settlements: Settlements,
                 stop: threading.Event, events: Events) -> None:
        self.ops = ops
        self._o = options
        self._settlements = settlements
        self._stop = stop
        self._events = events

    def step(self) -> Optional[float]:
        batch = self._settlements.wait_for_flush(self._stop)
        if batch:
            self.flush(batch)
        return None

    def flush(self, batch: SettleBatch) -> None:
        acks = SettleBatch(acks=batch.acks, dropped=batch.dropped)
        if acks:
            try:
                result = self.ops.settle(acks)
            except BaseException:
                self._settlements.restore(batch)
                raise
            self._settlements.settled(acks, result)
        self._send_dead_letters(batch.dead_letters)

    def flush_all(self) -> None:
        """Send everything left (once the workers have stopped)."""
        batch = self._settlements.take_all()
        if batch:
            self.flush(batch)

    def _send_dead_letters(self, dead: List[DeadLetter]) -> None:
        for n, item in enumerate(dead):
            batch = SettleBatch(dead_letters=[item])
            try:
                result = self.ops.settle(batch)
            except Exception as exc:  # sorted by _refused; the rest is re-raised
                if not _refused(exc):
                    self._settlements.restore(SettleBatch(dead_letters=dead[n:]))
                    raise
                self._put_off(item, exc)
            else:
                self._settlements.settled(batch, result)
                self._log_dead_letter(item, written=bool(result.dead_lettered))

    def _log_dead_letter(self, item: DeadLetter, written: bool) -> None:
        message, error = item
        if written:
            log.warning("rstream: entry %s (attempt %d) moved to dead-letter stream %r: %s",
                        message.id, message.attempt, self._o.dead_letter_stream, error)
            self._events.emit("dead_lettered", self._o.stream, id=message.id,
                              attempt=message.attempt, error=error,
                              dead_letter_stream=self._o.dead_letter_stream)
        else:
            # The script found it no longer pending here (settled, or taken over elsewhere).
            log.debug("rstream: entry %s was no longer pending here; not dead-lettered",
                      message.id)

    def _put_off(self, item: DeadLetter, exc: BaseException) -> None:
        """The server refused this dead letter (e.g. more fields than a script call takes): the
        entry stays pending and is handled again after a backoff; nothing is lost or blocked."""
        message = item[0]
        due_ms = backoff_due_ms(message.attempt, now_ms())
        log.error("rstream: could not dead-letter entry %s (%s); it stays pending and will be "
                  "retried in %d ms", message.id, exc, due_ms - now_ms())
        self._settlements.retry_later(RetryItem(due_ms, message.id, message.attempt, mono_ms()))
