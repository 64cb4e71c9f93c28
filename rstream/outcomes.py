"""What becomes of a chunk of handled messages, decided on the worker thread that ran them.

A worker reports each chunk here (`Outcomes.completed`): successes become acks; each failure
runs `handle_failure` (on this worker thread, as the user expects) and gets its verdict from
`settle.judge` (the code `rstream.testing` runs too). The outcomes go to `Settlements` as data,
and the chunk's in-flight slots are freed. Nothing here talks to Redis.
"""
from __future__ import annotations

import logging
from typing import List, Tuple

from .dispatch import Failure
from .events import Events
from .ledger import Ledger
from .message import Message
from .options import Options
from .settle import RetryItem, Verdict, failure_text, judge
from .settlements import DeadLetter, Settlements, mono_ms, now_ms
from .stats import Counters

log = logging.getLogger("rstream")


class Outcomes:
    def __init__(self, options: Options, settlements: Settlements, ledger: Ledger,
                 counters: Counters, events: Events) -> None:
        self._o = options
        self._events = events
        self._settlements = settlements
        self._ledger = ledger
        self._counters = counters

    def completed(self, ok: List[str], failures: List[Failure]) -> None:
        """A worker handled these: `ok` returned, `failures` raised (or returned an awaitable)."""
        if not failures:
            self._settlements.put(ok)
            self._ledger.finish(len(ok))
            return
        acks = list(ok)
        dead: List[DeadLetter] = []
        retries: List[RetryItem] = []
        dropped = 0
        for message, error in failures:
            verdict, due_ms = self._judge(message, error)
            if verdict is Verdict.RETRY:
                retries.append(RetryItem(due_ms, message.id, message.attempt, mono_ms()))
            elif verdict is Verdict.DEAD_LETTER:
                dead.append((message, failure_text(error)))
            else:
                acks.append(message.id)
                dropped += verdict is Verdict.DROP
        self._settlements.put(acks, dead, retries, dropped)
        self._counters.add(failed=len(failures), dropped=dropped)
        self._ledger.finish(len(ok) + len(failures))

    def _judge(self, message: Message, error: BaseException) -> Tuple[Verdict, int]:
        if self._o.handle_failure is None:
            # With the traceback: the handler's own frames are where the user has to look.
            log.warning("rstream: handler failed for entry %s (attempt %d): %r",
                        message.id, message.attempt, error, exc_info=error)
        judged = judge(message, error, handle_failure=self._o.handle_failure,
                       max_attempts=self._o.max_attempts,
                       dead_letter=self._o.dead_letter_stream is not None, clock=now_ms)
        verdict, due_ms = judged.verdict, judged.due_ms
        if judged.failure_handler_error is not None:
            then = ("it goes to the dead-letter stream" if verdict is Verdict.DEAD_LETTER else
                    f"it stays pending and will be retried in {due_ms - judged.now_ms} ms")
            log.error("rstream: handle_failure raised for entry %s (attempt %d): %r; %s",
                      message.id, message.attempt, judged.failure_handler_error, then)
        if verdict is Verdict.DROP:
            log.warning("rstream: entry %s failed on its last attempt (%d of %s) and there is no "
                        "dead_letter_stream: acknowledged and dropped (%s)", message.id,
                        message.attempt, self._o.max_attempts, failure_text(error))
            self._events.emit("dropped", self._o.stream, id=message.id, attempt=message.attempt,
                              error=failure_text(error))
        return verdict, due_ms
