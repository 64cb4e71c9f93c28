"""rstream.testing: its API without a server, then "same inputs, same verdicts": each case of a
table run through rstream.testing and through a real Consumer against a real server, compared
delivery by delivery (attempts, retry times, the acked, dead-lettered and dropped ends)."""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import pytest
import redis

import rstream
from helpers import wait_until
from rstream import settle
from rstream.embedded import EmbeddedServer
from rstream.settle import BROKEN_HANDLER_RETRY_MS, FAILURE_TEXT_LIMIT
from rstream.testing import Outcome, Verdict, make_message, run_attempts, run_handler

NOW = 1_700_000_000_000
Handler = Callable[[rstream.Message], object]
FailureHandler = Callable[[rstream.Message, BaseException], None]


class Poison(Exception):
    """What the handlers under test raise."""


def ok(message: rstream.Message) -> None:
    return None


def fail(message: rstream.Message) -> None:
    raise Poison(f"poison {message.id}")


def fail_on_first(message: rstream.Message) -> None:
    if message.attempt == 1:
        raise Poison("first time")


def broken_failure_handler(message: rstream.Message, error: BaseException) -> None:
    raise RuntimeError("handle_failure is broken")


async def _work(message: rstream.Message) -> None:
    return None


def returns_coroutine(message: rstream.Message) -> object:
    """A plain def that calls async code without running it: start() cannot tell, rstream fails
    the message."""
    return _work(message)


# -- make_message ------------------------------------------------------------------------------------
def test_make_message_gives_bytes_by_default_as_a_plain_client_delivers() -> None:
    """Keys and values are stored as a producer's XADD stores them: UTF-8 bytes, numbers as repr."""
    message = make_message({"order": "42", b"raw": b"\x00\xff", "n": 7, "x": 1.5}, id="5-1",
                           stream="orders", attempt=3)
    assert message.fields == {b"order": b"42", b"raw": b"\x00\xff", b"n": b"7", b"x": b"1.5"}
    assert (message.id, message.stream, message.attempt) == ("5-1", "orders", 3)
    assert message.metadata == {"id": "5-1", "stream": "orders", "attempt": 3}


def test_make_message_decode_gives_str_with_surrogates_for_undecodable_bytes() -> None:
    """decode=True: str keys and values (decode_responses=True); a non-UTF-8 byte arrives as a
    surrogate that encodes back to the same byte, as rstream's connections decode it."""
    message = make_message({b"name": "caf\u00e9".encode(), "raw": b"\xff"}, decode=True)
    assert message.fields == {"name": "caf\u00e9", "raw": "\udcff"}
    assert message.fields["raw"].encode("utf-8", "surrogateescape") == b"\xff"


@pytest.mark.parametrize("call, error", [
    (lambda: make_message({}), ValueError),
    (lambda: make_message({"a": "1"}, id="not-an-id"), ValueError),
    (lambda: make_message({"a": "1"}, attempt=0), ValueError),
    (lambda: make_message({"a": "1"}, attempt=True), ValueError),
    (lambda: make_message({"a": "1"}, stream=""), ValueError),
    (lambda: make_message({"a": True}), TypeError),
    (lambda: make_message({"a": None}), TypeError),  # type: ignore[dict-item]
])
def test_make_message_refuses_what_no_stream_entry_can_be(call: Callable[[], Any], error: type) -> None:
    """No fields, a malformed id, an attempt below 1, an empty stream name or a value Redis
    cannot store (bool, None) raise instead of building a message rstream never delivers."""
    with pytest.raises(error):
        call()


# -- run_handler: one delivery -------------------------------------------------------------------------
def test_a_handler_that_returns_is_acked() -> None:
    """Success: ACK, no error, nothing else set."""
    assert run_handler(ok, make_message({"a": "1"})) == Outcome(Verdict.ACK, 1)


def test_a_failure_without_options_is_acked_with_its_error() -> None:
    """No max_attempts, no retry asked: a failure is final (acked), and the error is kept."""
    outcome = run_handler(fail, make_message({"a": "1"}))
    assert (outcome.verdict, outcome.acked, outcome.retried) == (Verdict.ACK, True, False)
    assert isinstance(outcome.error, Poison) and outcome.failure_handler_error is None


def test_a_failure_below_max_attempts_is_retried_now() -> None:
    """max_attempts=3, attempt 2: retried, due at once (the judging time)."""
    outcome = run_handler(fail, make_message({"a": "1"}, attempt=2), max_attempts=3, now_ms=NOW)
    assert (outcome.verdict, outcome.retry_at_ms, outcome.attempt) == (Verdict.RETRY, NOW, 2)


@pytest.mark.parametrize("retry_after, due", [(NOW + 5000, NOW + 5000), (NOW - 5000, NOW),
                                              (float("inf"), NOW), ("soon", NOW)])
def test_retry_after_sets_the_due_time_when_it_is_a_future_unix_ms(retry_after: Any, due: int) -> None:
    """retry_after in the future is the due time; in the past, not finite or not a number: now."""
    def later(message: rstream.Message, error: BaseException) -> None:
        message.metadata["retry_after"] = retry_after
        message.configure_ack(retry=True)

    outcome = run_handler(fail, make_message({"a": "1"}), handle_failure=later, now_ms=NOW)
    assert (outcome.verdict, outcome.retry_at_ms) == (Verdict.RETRY, due)


def test_the_last_attempt_with_a_dead_letter_stream_gives_the_dead_letter_entry() -> None:
    """Fields as written: the originals in order, then origin, group, consumer, attempt, error."""
    message = make_message({"order": "42", b"raw": b"\xff"}, id="7-0", stream="orders", attempt=3)
    outcome = run_handler(fail, message, max_attempts=3, dead_letter_stream="orders:dead",
                          group="billing", consumer_name="billing-1")
    assert outcome.dead_lettered and outcome.retry_at_ms is None
    assert list((outcome.dead_letter or {}).items()) == [
        (b"order", b"42"), (b"raw", b"\xff"), (b"rstream-stream", b"orders"), (b"rstream-id", b"7-0"),
        (b"rstream-group", b"billing"), (b"rstream-consumer", b"billing-1"),
        (b"rstream-attempt", b"3"), (b"rstream-error", b"Poison: poison 7-0")]


def test_a_dead_letter_error_is_cut_to_the_limit_as_rstream_writes_it() -> None:
    """A huge error text is cut to FAILURE_TEXT_LIMIT characters, ending in "..."."""
    def huge(message: rstream.Message) -> None:
        raise Poison("x" * 10 * FAILURE_TEXT_LIMIT)

    outcome = run_handler(huge, make_message({"a": "1"}), max_attempts=1, dead_letter_stream="dead")
    text = (outcome.dead_letter or {})[b"rstream-error"]
    assert len(text) == FAILURE_TEXT_LIMIT and text.startswith(b"Poison: xxx") and text.endswith(b"...")


def test_the_last_attempt_without_a_dead_letter_stream_is_dropped() -> None:
    outcome = run_handler(fail, make_message({"a": "1"}, attempt=2), max_attempts=2)
    assert (outcome.verdict, outcome.dropped, outcome.dead_letter) == (Verdict.DROP, True, None)


def test_retry_false_settles_at_once_even_below_max_attempts() -> None:
    def give_up(message: rstream.Message, error: BaseException) -> None:
        message.configure_ack(retry=False)

    outcome = run_handler(fail, make_message({"a": "1"}), handle_failure=give_up, max_attempts=3,
                          dead_letter_stream="dead")
    assert outcome.acked and isinstance(outcome.error, Poison)


def test_a_raising_handle_failure_is_retried_with_the_doubling_backoff() -> None:
    """handle_failure raises: recorded, and the entry is retried after 1 s, then 2 s, ..."""
    for attempt, delay in [(1, BROKEN_HANDLER_RETRY_MS), (2, 2 * BROKEN_HANDLER_RETRY_MS)]:
        outcome = run_handler(fail, make_message({"a": "1"}, attempt=attempt),
                              handle_failure=broken_failure_handler, now_ms=NOW)
        assert (outcome.verdict, outcome.retry_at_ms) == (Verdict.RETRY, NOW + delay)
        assert isinstance(outcome.failure_handler_error, RuntimeError)
        assert isinstance(outcome.error, Poison)


def test_a_raising_handle_failure_on_the_last_attempt_still_dead_letters() -> None:
    outcome = run_handler(fail, make_message({"a": "1"}, attempt=2), max_attempts=2,
                          dead_letter_stream="dead", handle_failure=broken_failure_handler)
    assert outcome.dead_lettered and isinstance(outcome.failure_handler_error, RuntimeError)
    assert (outcome.dead_letter or {})[b"rstream-error"] == b"Poison: poison 1-0"


def test_a_returned_coroutine_is_a_type_error_and_is_closed() -> None:
    """An awaitable returned fails the message with TypeError, and it is closed, never run."""
    made: List[Any] = []

    def handler(message: rstream.Message) -> object:
        made.append(_work(message))
        return made[-1]

    outcome = run_handler(handler, make_message({"a": "1"}), max_attempts=1, dead_letter_stream="dead")
    assert isinstance(outcome.error, TypeError) and "awaitable" in str(outcome.error)
    assert inspect.getcoroutinestate(made[0]) == inspect.CORO_CLOSED
    assert (outcome.dead_letter or {})[b"rstream-error"].startswith(b"TypeError: the handler returned")


def test_any_base_exception_is_an_outcome_as_in_a_worker() -> None:
    """SystemExit from the handler or from handle_failure does not escape."""
    def leave(message: rstream.Message) -> None:
        raise SystemExit(3)

    def leave_too(message: rstream.Message, error: BaseException) -> None:
        raise KeyboardInterrupt

    outcome = run_handler(leave, make_message({"a": "1"}), handle_failure=leave_too, now_ms=NOW)
    assert isinstance(outcome.error, SystemExit)
    assert isinstance(outcome.failure_handler_error, KeyboardInterrupt) and outcome.retried


def test_the_consumers_option_checks_apply() -> None:
    """What Consumer() or start() refuse, run_handler refuses: an async handler or handle_failure,
    a dead-letter stream without max_attempts, max_attempts=0."""
    async def handler(message: rstream.Message) -> None:
        return None

    async def handle_failure(message: rstream.Message, error: BaseException) -> None:
        return None

    message = make_message({"a": "1"})
    for kwargs in [dict(handle_failure=handle_failure), dict(dead_letter_stream="dead"),
                   dict(max_attempts=0)]:
        with pytest.raises(rstream.ConfigError):
            run_handler(ok, message, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(rstream.ConfigError, match="synchronous"):
        run_handler(handler, message)


def test_an_outcome_is_a_frozen_value() -> None:
    """No field can be set, the dead letter cannot be changed, and outcomes hash and compare."""
    outcome = run_handler(fail, make_message({"a": "1"}), max_attempts=1, dead_letter_stream="dead")
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.verdict = Verdict.ACK  # type: ignore[misc]
    with pytest.raises(TypeError):
        outcome.dead_letter[b"a"] = b"2"  # type: ignore[index]
    assert hash(outcome) == hash(dataclasses.replace(outcome))
    assert outcome == dataclasses.replace(outcome) != dataclasses.replace(outcome, attempt=2)


def test_the_verdict_comes_from_settle_judge_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """No copy of the rules: change settle.judge_failure and run_handler's verdict follows it."""
    monkeypatch.setattr(settle, "judge_failure", lambda message, **kwargs: (Verdict.DROP, 0))
    assert run_handler(fail, make_message({"a": "1"})).verdict is Verdict.DROP


# -- run_attempts: the deliveries of one entry --------------------------------------------------------
def test_fails_twice_then_succeeds_is_retried_twice_then_acked() -> None:
    def flaky(message: rstream.Message) -> None:
        if message.attempt < 3:
            raise Poison(f"attempt {message.attempt}")

    outcomes = run_attempts(flaky, make_message({"a": "1"}), max_attempts=5, now_ms=NOW)
    assert [(o.attempt, o.verdict) for o in outcomes] == [
        (1, Verdict.RETRY), (2, Verdict.RETRY), (3, Verdict.ACK)]
    assert [o.retry_at_ms for o in outcomes] == [NOW, NOW, None]


def test_always_failing_ends_in_the_dead_letter_stream_on_the_last_attempt() -> None:
    outcomes = run_attempts(fail, make_message({"a": "1"}), max_attempts=3, dead_letter_stream="dead")
    assert [o.verdict for o in outcomes] == [Verdict.RETRY, Verdict.RETRY, Verdict.DEAD_LETTER]
    assert (outcomes[-1].dead_letter or {})[b"rstream-attempt"] == b"3"


def test_each_delivery_is_fresh_as_the_server_sends_it_again() -> None:
    """Starting at the message's attempt, each delivery has the original fields (a handler's
    change to them is not carried over), fresh metadata and no configure_ack choice."""
    seen: List[Tuple[int, Dict[Any, Any], Dict[str, Any]]] = []

    def handler(message: rstream.Message) -> None:
        seen.append((message.attempt, dict(message.fields), dict(message.metadata)))
        message.fields[b"changed"] = b"yes"
        message.metadata["retry_after"] = NOW + 1
        message.configure_ack(retry=True)
        raise Poison("again")

    outcomes = run_attempts(handler, make_message({"a": "1"}, attempt=2), max_attempts=4, now_ms=NOW)
    assert [o.attempt for o in outcomes] == [2, 3, 4] and outcomes[-1].dropped
    assert [(a, f) for a, f, _ in seen] == [(2, {b"a": b"1"}), (3, {b"a": b"1"}), (4, {b"a": b"1"})]
    assert all("retry_after" not in metadata for _, _, metadata in seen)


def test_limit_bounds_an_entry_that_is_retried_for_ever() -> None:
    """A handle_failure that always raises keeps the entry pending for ever (no max_attempts):
    run_attempts stops after `limit` deliveries, the last still retried."""
    outcomes = run_attempts(fail, make_message({"a": "1"}), handle_failure=broken_failure_handler,
                            limit=4, now_ms=NOW)
    assert [o.attempt for o in outcomes] == [1, 2, 3, 4] and outcomes[-1].retried
    with pytest.raises(ValueError):
        run_attempts(ok, make_message({"a": "1"}), limit=0)


# -- same inputs, same verdicts: rstream.testing against a real Consumer ---------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    fields: Mapping[Any, Any]
    handler: Handler
    handle_failure: Optional[FailureHandler] = None
    max_attempts: Optional[int] = None
    dead_letter: bool = False
    decode: bool = False


def _retry_in_300_ms(message: rstream.Message, error: BaseException) -> None:
    message.metadata["retry_after"] = int(time.time() * 1000) + 300
    message.configure_ack(retry=True)


def _give_up(message: rstream.Message, error: BaseException) -> None:
    message.configure_ack(retry=False)


CASES = {
    "ok": Case({"a": "1"}, ok),
    "fails, no options: acked": Case({"a": "1"}, fail),
    "fails below max_attempts: retried": Case({"a": "1"}, fail_on_first, max_attempts=3),
    "fails to the last attempt: dead-lettered": Case({"a": "1", b"raw": b"\xff"}, fail, max_attempts=2,
                                                     dead_letter=True),
    "fails to the last attempt, no dead-letter stream: dropped": Case({"a": "1"}, fail, max_attempts=2),
    "configure_ack(retry=False): acked": Case({"a": "1"}, fail, _give_up, max_attempts=3,
                                              dead_letter=True),
    "retry_after 300 ms: retried then": Case({"a": "1"}, fail_on_first, _retry_in_300_ms),
    "handle_failure raises: retried after the backoff": Case({"a": "1"}, fail_on_first,
                                                             broken_failure_handler),
    "handle_failure raises on the last attempt: dead-lettered": Case(
        {"a": "1"}, fail, broken_failure_handler, max_attempts=1, dead_letter=True),
    "returns a coroutine: TypeError": Case({"a": "1"}, returns_coroutine, max_attempts=1,
                                           dead_letter=True),
    "decode_responses client: str fields, bytes dead letter": Case(
        {"name": "caf\u00e9", b"raw": b"\xff", "n": 7}, fail, max_attempts=1, dead_letter=True,
        decode=True),
}
# A retry's delay is measured from the handler's call to the next delivery, in both worlds; the
# real one may come later than due (a reaper round), never earlier than the ms rounding and the
# time it took rstream.testing to judge (a pause there makes its delay look longer).
RETRY_SLACK_MS = 50
RETRY_LATE_MS = 500


class Deliveries:
    """What a consumer (real, or rstream.testing's) handed the handler: (attempt, fields, wall
    ms at the call), thread-safe."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._lock = threading.Lock()
        self.seen: List[Tuple[int, Dict[Any, Any], float]] = []

    def __call__(self, message: rstream.Message) -> object:
        with self._lock:
            self.seen.append((message.attempt, dict(message.fields), time.time() * 1000))
        return self._handler(message)


@pytest.mark.parametrize("name", list(CASES))
def test_same_inputs_same_verdicts(name: str, redis_server: EmbeddedServer, r: redis.Redis,
                                   make_consumer: Callable[..., rstream.Consumer], stream_names: Any) -> None:
    """rstream.testing predicts, delivery by delivery, what a real Consumer does: the attempts
    it delivers, what the handler sees, when retries come, and the end (acked and not pending,
    the dead-letter entry as XRANGE reads it, or counted as dropped)."""
    case = CASES[name]
    entry_id = r.xadd(stream_names.stream, dict(case.fields)).decode()  # type: ignore[union-attr]
    dead_letter_stream = stream_names.dead_letter if case.dead_letter else None
    options: Dict[str, Any] = dict(handle_failure=case.handle_failure, max_attempts=case.max_attempts,
                                   dead_letter_stream=dead_letter_stream)
    message = make_message(case.fields, id=entry_id, stream=stream_names.stream, decode=case.decode)
    predicted = Deliveries(case.handler)
    expected = run_attempts(predicted, message, group=stream_names.group,
                            consumer_name=stream_names.consumer, **options)
    assert not expected[-1].retried, "every case must end settled"

    client = redis_server.client(decode_responses=True) if case.decode else None
    deliveries = Deliveries(case.handler)
    consumer = make_consumer(group_start_id="0", concurrency=1, **options,
                             **({"redis": client} if client is not None else {}))
    try:
        consumer.start(deliveries)  # type: ignore[arg-type] # one case returns a coroutine
        wait_until(lambda: _settled(consumer, r, stream_names), 10, message=f"{name}: never settled")
        stats = consumer.stats()
    finally:
        consumer.stop(timeout=5)
        if client is not None:
            client.close()

    assert [attempt for attempt, _, _ in deliveries.seen] == [o.attempt for o in expected]
    assert all(fields == message.fields for _, fields, _ in deliveries.seen)
    for outcome, (_, _, called), (_, _, at), (_, _, again) in zip(
            expected, predicted.seen, deliveries.seen, deliveries.seen[1:]):
        delay = (outcome.retry_at_ms or 0) - called  # ms from the handler's call to the retry
        assert delay - RETRY_SLACK_MS <= again - at <= delay + RETRY_LATE_MS, (outcome, again - at)
    dead = [fields for _, fields in r.xrange(stream_names.dead_letter) or []] if case.dead_letter else []
    assert dead == [dict(o.dead_letter or {}) for o in expected if o.dead_lettered]
    counts = {v: sum(o.verdict is v for o in expected) for v in Verdict}
    assert (stats.failed, stats.retried, stats.dead_lettered, stats.dropped, stats.acked) == (
        sum(o.error is not None for o in expected), counts[Verdict.RETRY],
        counts[Verdict.DEAD_LETTER], counts[Verdict.DROP], 1)


def _settled(consumer: rstream.Consumer, r: redis.Redis, names: Any) -> bool:
    stats = consumer.stats()
    pending = int(r.xpending(names.stream, names.group)["pending"])
    return stats.acked >= 1 and pending == 0 and stats.in_flight == 0 and stats.waiting_retries == 0


def test_the_coroutine_case_really_returns_a_coroutine() -> None:
    """Guard for the table: returns_coroutine is a plain def start() accepts, not an async def."""
    result = returns_coroutine(make_message({"a": "1"}))
    assert asyncio.iscoroutine(result)
    result.close()
