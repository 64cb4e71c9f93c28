"""What becomes of a handled message, decided as data. Pure: no Redis, no threads.

A message is settled one of four ways: acknowledged (success, or a failure the user let go),
retried later (kept pending), dead-lettered (appended to the dead-letter stream and acked in one
atomic step) or dropped (the last allowed attempt failed and there is no dead-letter stream: acked
and logged). The worker threads call `judge` (the user's handle_failure, then `judge_failure`);
the acker sends what accumulates here, dead letters with `dead_letter_fields`. `rstream.testing`
calls the same functions, so what it tells a user's test is what the consumer does.
"""
from __future__ import annotations

import dataclasses
import enum
import heapq
import math
from typing import Any, Callable, List, Optional, Tuple

from .handlers import FailureHandler
from .message import Message

# A failure handler that raises (or a dead letter the server refuses) leaves its entry pending;
# it is retried after this backoff (doubling per attempt) so nothing spins on one entry.
BROKEN_HANDLER_RETRY_MS = 1000
BROKEN_HANDLER_RETRY_CAP_MS = 60_000
# The error text stored with a dead letter: enough to diagnose, never a multi-megabyte field.
FAILURE_TEXT_LIMIT = 4096


class Verdict(enum.Enum):
    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    DROP = "drop"


@dataclasses.dataclass(frozen=True)
class Judgement:
    """What `judge` decided for one failed message: the verdict, when it is due again (RETRY
    only, unix ms), what handle_failure raised (None if it returned, or there is none) and the
    time it was judged at (unix ms)."""

    verdict: Verdict
    due_ms: int
    failure_handler_error: Optional[BaseException]
    now_ms: int


def judge(message: Message, error: BaseException, *, handle_failure: Optional[FailureHandler],
          max_attempts: Optional[int], dead_letter: bool, clock: Callable[[], int]) -> Judgement:
    """Run `handle_failure` on a message whose handler raised `error`, then give its verdict.
    Whatever handle_failure raises is an outcome, not an escape: it must not kill the worker
    or leak its slots. The clock (unix ms) is read after handle_failure, whose `retry_after` it
    is compared with."""
    broken: Optional[BaseException] = None
    if handle_failure is not None:
        try:
            handle_failure(message, error)
        except BaseException as exc:  # noqa: BLE001 - must not kill the worker or leak its slots
            broken = exc
    now = clock()
    verdict, due_ms = judge_failure(message, failure_handler_failed=broken is not None,
                                    max_attempts=max_attempts, dead_letter=dead_letter, now_ms=now)
    return Judgement(verdict, due_ms, broken, now)


def judge_failure(message: Message, *, failure_handler_failed: bool, max_attempts: Optional[int],
                  dead_letter: bool, now_ms: int) -> Tuple[Verdict, int]:
    """Verdict for a message whose handler raised, and (for RETRY) when to deliver it again."""
    last = max_attempts is not None and message.attempt >= max_attempts
    if last and dead_letter:
        return Verdict.DEAD_LETTER, 0
    if failure_handler_failed:
        return Verdict.RETRY, backoff_due_ms(message.attempt, now_ms)
    if last:
        return Verdict.DROP, 0
    # max_attempts means "try up to this many times": below it a failure is retried unless the
    # handler said configure_ack(retry=False); without it, only an explicit retry=True retries.
    choice = message.retry_choice
    if choice or (choice is None and max_attempts is not None):
        return Verdict.RETRY, retry_due_ms(message.retry_after, now_ms)
    return Verdict.ACK, 0


def backoff_due_ms(attempt: int, now_ms: int) -> int:
    """When to try again an entry whose settling broke (handle_failure raised, or the server
    refused its dead letter): a delay doubling per attempt, capped, so it cannot spin."""
    backoff = BROKEN_HANDLER_RETRY_MS << min(max(attempt, 1) - 1, 16)
    return now_ms + min(backoff, BROKEN_HANDLER_RETRY_CAP_MS)


def retry_due_ms(retry_after: Optional[float], now_ms: int) -> int:
    """When a requested retry is due: `retry_after` (unix ms) if it is in the future, else now.
    A non-finite value (inf, nan) is not a time: it must not crash the worker in `int()`."""
    if retry_after is None or not math.isfinite(retry_after) or retry_after <= now_ms:
        return now_ms
    return int(retry_after)


def failure_text(error: BaseException) -> str:
    """``"TypeName: message"`` for the dead-letter entry, safe to send: an exception whose
    `__str__` raises, or whose text holds lone surrogates (not UTF-8 encodable), must not make
    the dead letter unsendable, which would hold every ack queued behind it."""
    try:
        detail = str(error)
    except Exception:  # noqa: BLE001 - a broken __str__ is the user's; the type still says much
        detail = f"<unprintable {type(error).__name__}>"
    text = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    if len(text) > FAILURE_TEXT_LIMIT:
        text = text[:FAILURE_TEXT_LIMIT - 3] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def dead_letter_fields(message: Message, error: str, *, stream: str, group: str,
                       consumer: str) -> List[Any]:
    """The dead-letter entry's field and value items, flat, in order, before encoding: the
    message's fields as the handler left them, then where it came from and why it failed
    (`error`: `failure_text` of the handler's exception)."""
    flat: List[Any] = [x for pair in message.fields.items() for x in pair]
    flat += ["rstream-stream", stream, "rstream-id", message.id, "rstream-group", group,
             "rstream-consumer", consumer, "rstream-attempt", message.attempt,
             "rstream-error", error]
    return flat


@dataclasses.dataclass
class SettleBatch:
    """Settlements taken together to be sent in one round trip."""

    acks: List[str] = dataclasses.field(default_factory=list)
    dead_letters: List[Tuple[Message, str]] = dataclasses.field(default_factory=list)
    dropped: int = 0  # of `acks`, how many are final failures (for the counters)

    def __bool__(self) -> bool:
        return bool(self.acks or self.dead_letters)

    def __len__(self) -> int:
        return len(self.acks) + len(self.dead_letters)

    def merge(self, other: "SettleBatch") -> None:
        """Put `other` (a batch whose send failed) back in front of this one."""
        self.acks[:0] = other.acks
        self.dead_letters[:0] = other.dead_letters
        self.dropped += other.dropped


@dataclasses.dataclass
class SettleResult:
    """What the server settled of a batch: entries acked, and dead letters written."""

    acked: int = 0
    dead_lettered: int = 0


@dataclasses.dataclass(frozen=True, order=True)
class RetryItem:
    """A failed entry waiting to be delivered again. `handled_at_ms` (monotonic) bounds from
    below how long the entry has been idle on the server, which guards the re-claim."""

    due_ms: int
    id: str
    attempt: int
    handled_at_ms: int


class RetrySchedule:
    """Entries waiting for their retry, earliest first. Holds ids only, never payloads."""

    def __init__(self) -> None:
        self._heap: List[RetryItem] = []

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, item: RetryItem) -> None:
        heapq.heappush(self._heap, item)

    def next_due_ms(self) -> Optional[int]:
        return self._heap[0].due_ms if self._heap else None

    def pop_due(self, now_ms: int, limit: int) -> List[RetryItem]:
        due: List[RetryItem] = []
        while self._heap and len(due) < limit and self._heap[0].due_ms <= now_ms:
            due.append(heapq.heappop(self._heap))
        return due
