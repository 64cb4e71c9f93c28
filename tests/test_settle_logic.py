"""The pure failure logic of rstream.settle: verdicts, retry times, the retry schedule.

No server, no threads: these pin the failure decision table (README, Failure handling) one row at a time; the
integration tier (test_retries.py) proves the consumer carries the decisions out.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rstream.message import Message
from rstream.settle import (BROKEN_HANDLER_RETRY_CAP_MS, BROKEN_HANDLER_RETRY_MS, FAILURE_TEXT_LIMIT,
                            RetryItem, RetrySchedule, SettleBatch, Verdict, failure_text,
                            judge_failure, retry_due_ms)

NOW = 1_700_000_000_000


def _message(attempt: int = 1, retry: Optional[bool] = None, retry_after: Any = None) -> Message:
    message = Message("1-0", "orders", {b"k": b"v"}, attempt)
    if retry is not None:
        message.configure_ack(retry=retry)
    if retry_after is not None:
        message.metadata["retry_after"] = retry_after
    return message


def _judge(message: Message, *, handler_failed: bool = False, max_attempts: Optional[int] = None,
           dead_letter: bool = False) -> Any:
    return judge_failure(message, failure_handler_failed=handler_failed, max_attempts=max_attempts,
                         dead_letter=dead_letter, now_ms=NOW)


# -- verdicts -------------------------------------------------------------------------------------
def test_a_failure_nobody_retries_is_acknowledged() -> None:
    """The seed's default: a failed message with no retry requested is acked."""
    assert _judge(_message()) == (Verdict.ACK, 0)


def test_a_requested_retry_is_due_now() -> None:
    """configure_ack(retry=True) without retry_after: retry at once."""
    assert _judge(_message(retry=True)) == (Verdict.RETRY, NOW)


def test_a_future_retry_after_sets_the_due_time() -> None:
    """retry_after in the future (unix ms) is when the retry is due."""
    assert _judge(_message(retry=True, retry_after=NOW + 500)) == (Verdict.RETRY, NOW + 500)


def test_a_float_retry_after_is_truncated_to_ms() -> None:
    """A float retry_after (time.time() * 1000 + delay) is accepted."""
    assert _judge(_message(retry=True, retry_after=NOW + 250.7)) == (Verdict.RETRY, NOW + 250)


@pytest.mark.parametrize("after", [NOW - 1, NOW, 0, -5])
def test_a_past_retry_after_means_now(after: int) -> None:
    """retry_after at or before now does not delay the retry."""
    assert _judge(_message(retry=True, retry_after=after)) == (Verdict.RETRY, NOW)


@pytest.mark.parametrize("after", ["soon", True, b"1", [NOW + 10]])
def test_a_retry_after_that_is_not_a_number_is_ignored(after: Any) -> None:
    """Only int/float retry_after values count (a bool is not a time)."""
    assert _judge(_message(retry=True, retry_after=after)) == (Verdict.RETRY, NOW)


@pytest.mark.parametrize("after", [math.inf, -math.inf, math.nan])
def test_a_non_finite_retry_after_does_not_crash(after: float) -> None:
    """inf/nan must not raise in int() on the worker thread (it would leak the in-flight slot)."""
    assert _judge(_message(retry=True, retry_after=after)) == (Verdict.RETRY, NOW)


def test_retry_after_without_a_retry_request_acks() -> None:
    """retry_after alone does not ask for a retry; configure_ack(retry=True) does."""
    assert _judge(_message(retry_after=NOW + 500)) == (Verdict.ACK, 0)


@pytest.mark.parametrize("attempt", [3, 4, 9])
def test_the_last_attempt_goes_to_the_dead_letter_stream_even_if_retried(attempt: int) -> None:
    """At or past max_attempts, with a dead-letter stream, a retry request does not keep it alive."""
    message = _message(attempt=attempt, retry=True)
    assert _judge(message, max_attempts=3, dead_letter=True) == (Verdict.DEAD_LETTER, 0)


def test_the_last_attempt_is_dead_lettered_when_no_retry_was_asked() -> None:
    """A plain failure on the last attempt is dead-lettered, not acked away."""
    assert _judge(_message(attempt=3), max_attempts=3, dead_letter=True) == (Verdict.DEAD_LETTER, 0)


@pytest.mark.parametrize("retry", [False, True])
def test_the_last_attempt_without_a_dead_letter_stream_is_dropped(retry: bool) -> None:
    """max_attempts alone makes the last failure final, whatever handle_failure asked."""
    assert _judge(_message(attempt=2, retry=retry), max_attempts=2) == (Verdict.DROP, 0)


def test_below_max_attempts_a_failure_is_retried_unless_the_handler_said_no() -> None:
    """max_attempts means "try up to N times": below it a failure is retried by default, and
    configure_ack(retry=False) still settles it at once."""
    assert _judge(_message(attempt=2, retry=True), max_attempts=3, dead_letter=True) == (Verdict.RETRY, NOW)
    assert _judge(_message(attempt=2), max_attempts=3, dead_letter=True) == (Verdict.RETRY, NOW)
    assert _judge(_message(attempt=2), max_attempts=3) == (Verdict.RETRY, NOW)
    assert _judge(_message(attempt=2, retry=False), max_attempts=3, dead_letter=True) == (Verdict.ACK, 0)


def test_an_automatic_retry_honours_retry_after() -> None:
    """The default retry under max_attempts waits for metadata["retry_after"] like a requested one."""
    assert _judge(_message(attempt=1, retry_after=NOW + 500), max_attempts=3) == (Verdict.RETRY, NOW + 500)


def test_without_max_attempts_a_high_attempt_is_still_retried() -> None:
    """No max_attempts: no cap; the user's attempt check is the only limit."""
    assert _judge(_message(attempt=10_000, retry=True)) == (Verdict.RETRY, NOW)


@pytest.mark.parametrize("attempt, delay", [(1, BROKEN_HANDLER_RETRY_MS), (2, 2 * BROKEN_HANDLER_RETRY_MS),
                                            (3, 4 * BROKEN_HANDLER_RETRY_MS),
                                            (40, BROKEN_HANDLER_RETRY_CAP_MS)])
def test_a_broken_failure_handler_retries_with_capped_backoff(attempt: int, delay: int) -> None:
    """handle_failure raised: the entry stays pending, retried after a doubling, capped delay."""
    assert _judge(_message(attempt=attempt), handler_failed=True) == (Verdict.RETRY, NOW + delay)


def test_a_broken_failure_handler_never_drops_data() -> None:
    """On the last attempt with no dead-letter stream, a broken handle_failure keeps the entry."""
    verdict, _ = _judge(_message(attempt=5), handler_failed=True, max_attempts=5)
    assert verdict is Verdict.RETRY


def test_a_broken_failure_handler_on_the_last_attempt_dead_letters() -> None:
    """With a dead-letter stream the entry is kept there, so it need not loop."""
    verdict, _ = _judge(_message(attempt=5), handler_failed=True, max_attempts=5, dead_letter=True)
    assert verdict is Verdict.DEAD_LETTER


@given(attempt=st.integers(1, 50), max_attempts=st.one_of(st.none(), st.integers(1, 50)),
       dead_letter=st.booleans(), retry=st.booleans(), handler_failed=st.booleans(),
       after=st.one_of(st.none(), st.integers(NOW - 10_000, NOW + 10_000)))
def test_no_verdict_loses_an_entry_or_loops_past_the_cap(attempt: int, max_attempts: Optional[int],
                                                        dead_letter: bool, retry: bool,
                                                        handler_failed: bool, after: Optional[int]) -> None:
    """Over every combination: never RETRY past the cap unless handle_failure broke, never DROP with a
    dead-letter stream, and a RETRY is never due in the past."""
    message = _message(attempt=attempt, retry=retry, retry_after=after)
    verdict, due = _judge(message, handler_failed=handler_failed, max_attempts=max_attempts,
                          dead_letter=dead_letter and max_attempts is not None)
    last = max_attempts is not None and attempt >= max_attempts
    if last and verdict is Verdict.RETRY:
        assert handler_failed and not dead_letter
    if verdict is Verdict.DROP:
        assert last and not (dead_letter and max_attempts is not None)
    if verdict is Verdict.RETRY:
        assert due >= NOW
    else:
        assert due == 0


# -- retry times and error text -------------------------------------------------------------------
def test_retry_due_ms_keeps_a_far_future_time() -> None:
    """A retry_after hours ahead is kept exactly."""
    assert retry_due_ms(NOW + 3_600_000, NOW) == NOW + 3_600_000
    assert retry_due_ms(None, NOW) == NOW


def test_failure_text_names_the_type_and_message() -> None:
    """The dead-letter error text is 'Type: message'."""
    assert failure_text(ValueError("bad total")) == "ValueError: bad total"
    assert failure_text(KeyError()) == "KeyError"


def test_failure_text_survives_a_broken_str() -> None:
    """An exception whose __str__ raises still gives a text (the dead letter must go out)."""
    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert failure_text(Weird()) == "Weird: <unprintable Weird>"


def test_failure_text_is_always_utf8_encodable() -> None:
    """Lone surrogates (from surrogateescape-decoded bytes) are escaped, not sent raw."""
    text = failure_text(ValueError("bad byte \udcff here"))
    text.encode("utf-8")
    assert "\\udcff" in text


def test_failure_text_is_capped() -> None:
    """A multi-megabyte error message does not land whole in the dead-letter stream."""
    text = failure_text(ValueError("x" * 5_000_000))
    assert len(text) == FAILURE_TEXT_LIMIT and text.endswith("...")


# -- the retry schedule ---------------------------------------------------------------------------
def _item(due: int, entry_id: str = "1-0", attempt: int = 1) -> RetryItem:
    return RetryItem(due, entry_id, attempt, 0)


def test_an_empty_schedule_has_nothing_due() -> None:
    """No items: no next due time, nothing to pop."""
    schedule = RetrySchedule()
    assert len(schedule) == 0 and schedule.next_due_ms() is None
    assert schedule.pop_due(NOW, 10) == []


def test_pop_due_returns_only_due_items_earliest_first() -> None:
    """Items come out by due time; future items stay."""
    schedule = RetrySchedule()
    for due, entry_id in [(NOW + 5, "5-0"), (NOW - 5, "1-0"), (NOW, "3-0"), (NOW + 1, "4-0")]:
        schedule.add(_item(due, entry_id))
    assert [i.id for i in schedule.pop_due(NOW, 10)] == ["1-0", "3-0"]
    assert schedule.next_due_ms() == NOW + 1
    assert len(schedule) == 2
    assert [i.id for i in schedule.pop_due(NOW + 5, 10)] == ["4-0", "5-0"]


def test_pop_due_respects_the_limit() -> None:
    """At most `limit` items (the free in-flight slots) are popped; the rest wait."""
    schedule = RetrySchedule()
    for n in range(10):
        schedule.add(_item(NOW - n, f"{n}-0"))
    assert len(schedule.pop_due(NOW, 3)) == 3
    assert len(schedule) == 7


@given(st.lists(st.tuples(st.integers(NOW - 1000, NOW + 1000), st.integers(0, 10**6)), max_size=60),
       st.integers(1, 80))
def test_pop_due_matches_a_sorted_reference(items: List[Any], limit: int) -> None:
    """pop_due == the `limit` smallest due times at or before now, in order; the rest stay."""
    schedule = RetrySchedule()
    for due, n in items:
        schedule.add(_item(due, f"{n}-0"))
    popped = schedule.pop_due(NOW, limit)
    reference = sorted(due for due, _ in items if due <= NOW)[:limit]
    assert [i.due_ms for i in popped] == reference
    assert len(schedule) == len(items) - len(popped)


# -- settle batches -------------------------------------------------------------------------------
def test_settle_batch_merge_puts_the_failed_batch_first() -> None:
    """A batch whose send failed goes back in front, dead letters and drop counts included."""
    message = _message()
    failed = SettleBatch(acks=["1-0"], dead_letters=[(message, "E")], dropped=1)
    current = SettleBatch(acks=["2-0"])
    current.merge(failed)
    assert current.acks == ["1-0", "2-0"]
    assert current.dead_letters == [(message, "E")] and current.dropped == 1
    assert len(current) == 3 and bool(current)
    assert not SettleBatch() and len(SettleBatch()) == 0


def test_messages_start_with_no_retry_and_no_retry_after() -> None:
    """A fresh Message (each delivery) asks for no retry: retry_after is cleared per attempt."""
    message = Message("1-0", "s", {}, 3)
    metadata: Dict[str, Any] = message.metadata
    assert not message.retry_requested and message.retry_after is None
    assert metadata == {"id": "1-0", "stream": "s", "attempt": 3}
