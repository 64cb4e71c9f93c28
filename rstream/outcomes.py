"""What becomes of a chunk of handled messages, decided on the worker thread that ran them.

A worker reports each chunk here (`Outcomes.completed`): successes become acks; each failure
runs `handle_failure` (on this worker thread, as the user expects) and gets its verdict from
`settle.judge` (the code `rstream.testing` runs too). The outcomes go to `Settlements` as data,
and the chunk's in-flight slots are freed. Nothing here talks to Redis. Every kind of pool
reports here the same way: a batch handler's failed messages are judged one by one, like
single ones.

With `partition_by` a retry is not scheduled with the reaper: it is handed back to the worker,
which runs it again itself as the next message of its key (see `rstream.keyedpool` for why),
and its slot stays taken until then.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Sequence, Tuple

from .batches import Failure
from .dispatch import HeldRetry
from .events import Events
from .ledger import Ledger
from .message import Message
from .options import Options
from .settle import RetryItem, Verdict, failure_text, judge
from .settlements import DeadLetter, Settlements, mono_ms, now_ms
from .stats import Counters

log = logging.getLogger("rstream")

NO_RETRIES: Sequence[HeldRetry] = ()


class Outcomes:
    def __init__(self, options: Options, settlements: Settlements, ledger: Ledger,
                 counters: Counters, events: Events) -> None:
        self._o = options
        self._events = events
        self._settlements = settlements
        self._ledger = ledger
        self._counters = counters
        self._hold_retries = options.partition_by is not None

    def completed(self, ok: List[str], failures: List[Failure],
                  unhandled: int = 0) -> Sequence[HeldRetry]:
        """A worker handled these: `ok` returned, `failures` raised (or returned an awaitable);
        `unhandled` were given up without running (their slots come back, they stay pending).
        Returns the failures the worker is to run again itself (with `partition_by` only)."""
        if not failures:
            self._settlements.put(ok)
            self._ledger.finish(len(ok) + unhandled)
            return NO_RETRIES
        if self._o.handle_failure is None:
            _log_failures(failures)
        acks = list(ok)
        dead: List[DeadLetter] = []
        retries: List[RetryItem] = []
        held: List[HeldRetry] = []
        dropped = 0
        for message, error in failures:
            verdict, due_ms = self._judge(message, error)
            if verdict is Verdict.RETRY and self._hold_retries:
                held.append((message, due_ms))  # it keeps its slot: the worker runs it again
            elif verdict is Verdict.RETRY:
                retries.append(RetryItem(due_ms, message.id, message.attempt, mono_ms()))
            elif verdict is Verdict.DEAD_LETTER:
                dead.append((message, failure_text(error)))
            else:
                acks.append(message.id)
                dropped += verdict is Verdict.DROP
        self._settlements.put(acks, dead, retries, dropped)
        # A held retry counts as delivered again now: the worker runs it next, unless a stop
        # comes first.
        self._counters.add(failed=len(failures), dropped=dropped, retried=len(held),
                           delivered=len(held))
        self._ledger.finish(len(ok) + len(failures) - len(held) + unhandled)
        return held

    def _judge(self, message: Message, error: BaseException) -> Tuple[Verdict, int]:
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


def _log_failures(failures: List[Failure]) -> None:
    """One warning per error, with its traceback (the handler's own frames are where the user
    has to look): a batch that failed as a whole shares one error, and 500 copies of one
    traceback would bury it."""
    by_error: Dict[int, List[Message]] = {}
    errors: Dict[int, BaseException] = {}
    for message, error in failures:
        by_error.setdefault(id(error), []).append(message)
        errors[id(error)] = error
    for key, messages in by_error.items():
        error, first = errors[key], messages[0]
        if len(messages) == 1:
            log.warning("rstream: handler failed for entry %s (attempt %d): %r",
                        first.id, first.attempt, error, exc_info=error)
        else:
            log.warning("rstream: handler failed for %d entries (%s to %s): %r", len(messages),
                        first.id, messages[-1].id, error, exc_info=error)
