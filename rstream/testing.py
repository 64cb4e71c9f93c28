"""Test your handlers without Redis: build a message offline, run your handler on it with the
consumer's failure options, and get the verdict rstream would reach::

    from rstream.testing import make_message, run_handler

    outcome = run_handler(handle, make_message({"order_id": "42"}), max_attempts=3)
    assert outcome.retried

The verdict comes from the code the consumer runs, not from a copy of it: the handler is called
as a worker calls it (an awaitable it returns is a failure, `handlers.reject_awaitable`), a
failure is judged by `settle.judge` (handle_failure, then `settle.judge_failure`), the options
are checked by `Options.build`, and a dead letter's fields are built by
`settle.dead_letter_fields` and encoded by redis-py's encoder, as `redisio` sends them.
`tests/test_testing.py` runs the same cases through a real `Consumer` and a server to hold the
two to that. Sends no Redis command.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, List, Mapping, Optional, Tuple, Union

from redis.connection import Encoder  # type: ignore[attr-defined]

from . import _hotpath as hot
from .errors import ConfigError
from .handlers import FailureHandler, is_async_callable, reject_awaitable
from .message import Message
from .options import Options
from .settle import Verdict, dead_letter_fields, failure_text, judge
from .settlements import now_ms as clock_ms

FieldValue = Union[str, bytes, int, float]
HandlerUnderTest = Callable[[Message], object]
# rstream's connections encode as redis-py does, with surrogateescape (see ConnectionFactory):
# a str holding an undecodable payload goes back to its original bytes.
_ENCODER = Encoder(encoding="utf-8", encoding_errors="surrogateescape", decode_responses=False)  # type: ignore[no-untyped-call]
DEFAULT_LIMIT = 100


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What rstream does with one delivery of a message.

    `verdict` is one of `Verdict.ACK` (acknowledged: the handler returned, or its failure is
    final), `RETRY` (stays pending, delivered again with attempt + 1 at `retry_at_ms`, unix ms),
    `DEAD_LETTER` (`dead_letter` holds the entry written to the dead-letter stream, bytes to
    bytes, as a client without decode_responses reads it back) or `DROP` (failed on the last
    attempt with no dead-letter stream: acknowledged). `error` is what the handler raised (a
    TypeError if it returned an awaitable), `failure_handler_error` what handle_failure raised.
    """

    verdict: Verdict
    attempt: int
    error: Optional[BaseException] = None
    failure_handler_error: Optional[BaseException] = None
    retry_at_ms: Optional[int] = None
    dead_letter: Optional[Mapping[bytes, bytes]] = dataclasses.field(default=None, hash=False)

    @property
    def acked(self) -> bool:
        return self.verdict is Verdict.ACK

    @property
    def retried(self) -> bool:
        return self.verdict is Verdict.RETRY

    @property
    def dead_lettered(self) -> bool:
        return self.verdict is Verdict.DEAD_LETTER

    @property
    def dropped(self) -> bool:
        return self.verdict is Verdict.DROP


def make_message(fields: Mapping[FieldValue, FieldValue], *, id: str = "1-0", stream: str = "stream",
                 attempt: int = 1, decode: bool = False) -> Message:
    """The message a handler gets for a stream entry with `fields`.

    Keys and values may be str, bytes, int or float; each is stored as Redis stores what a
    producer XADDs (UTF-8 bytes, numbers as their repr). The handler sees bytes keys and values,
    as rstream delivers them by default, or, with `decode=True`, str (a client with
    ``decode_responses=True``; undecodable bytes arrive with surrogate escapes, as rstream's
    connections decode them). `attempt` is the server's delivery count (1: first delivery).
    """
    if not fields:
        raise ValueError("a stream entry has at least one field, got none")
    hot.parse_id(id)
    if not isinstance(stream, str) or not stream:
        raise ValueError(f"stream must be a non-empty str, got {stream!r}")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt must be a positive int (1 is the first delivery), got {attempt!r}")
    stored = {_stored(key): _stored(value) for key, value in fields.items()}
    if decode:
        return Message(id, stream, {_text(k): _text(v) for k, v in stored.items()}, attempt)
    return Message(id, stream, stored, attempt)


def run_handler(handler: HandlerUnderTest, message: Message, *,
                handle_failure: Optional[FailureHandler] = None, max_attempts: Optional[int] = None,
                dead_letter_stream: Optional[str] = None, group: str = "group",
                consumer_name: str = "consumer", now_ms: Optional[int] = None) -> Outcome:
    """Run `handler` on `message` as a consumer with these options would, and say what it does.

    The options are checked as `Consumer(...)` checks them (ConfigError). `group` and
    `consumer_name` only name the origin in a dead letter. `now_ms` (unix ms) is the time the
    failure is judged at, for an exact `retry_at_ms`; by default the clock's.
    """
    options = _options(handler, message, handle_failure, max_attempts, dead_letter_stream, group,
                       consumer_name)
    try:
        result = handler(message)
        if result is not None:
            reject_awaitable(result)
    except BaseException as exc:  # noqa: BLE001 - a handler's exception is an outcome, as in a worker
        error = exc
    else:
        return Outcome(Verdict.ACK, message.attempt)
    judged = judge(message, error, handle_failure=options.handle_failure,
                   max_attempts=options.max_attempts,
                   dead_letter=options.dead_letter_stream is not None,
                   clock=clock_ms if now_ms is None else lambda: now_ms)
    dead: Optional[Mapping[bytes, bytes]] = None
    if judged.verdict is Verdict.DEAD_LETTER:
        dead = _dead_letter(message, error, options)
    return Outcome(judged.verdict, message.attempt, error, judged.failure_handler_error,
                   judged.due_ms if judged.verdict is Verdict.RETRY else None, dead)


def run_attempts(handler: HandlerUnderTest, message: Message, *, limit: int = DEFAULT_LIMIT,
                 handle_failure: Optional[FailureHandler] = None, max_attempts: Optional[int] = None,
                 dead_letter_stream: Optional[str] = None, group: str = "group",
                 consumer_name: str = "consumer", now_ms: Optional[int] = None) -> Tuple[Outcome, ...]:
    """The outcome of each delivery of `message`, from its attempt on, as long as rstream
    retries it: the last one settles the entry, unless `limit` deliveries were made first (a
    handle_failure that always retries, or always raises, keeps an entry pending for ever).

    Each delivery is a new Message with `message`'s id, stream and fields, as the server sends
    it again: fresh metadata, no configure_ack choice, attempt one higher. Retries are run at
    once, not at their `retry_at_ms`; the options are `run_handler`'s.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    fields = dict(message.fields)
    outcomes: List[Outcome] = []
    for attempt in range(message.attempt, message.attempt + limit):
        delivery = Message(message.id, message.stream, dict(fields), attempt)
        outcome = run_handler(handler, delivery, handle_failure=handle_failure,
                              max_attempts=max_attempts, dead_letter_stream=dead_letter_stream,
                              group=group, consumer_name=consumer_name, now_ms=now_ms)
        outcomes.append(outcome)
        if not outcome.retried:
            break
    return tuple(outcomes)


def _options(handler: HandlerUnderTest, message: Message, handle_failure: Optional[FailureHandler],
             max_attempts: Optional[int], dead_letter_stream: Optional[str], group: str,
             consumer_name: str) -> Options:
    """The consumer's own checks: an async handler is refused at start, not run."""
    if not callable(handler):
        raise ConfigError(f"handler must be callable, got {handler!r}")
    if is_async_callable(handler):
        raise ConfigError(f"handler must be a plain (synchronous) function, got the async {handler!r}: "
                          "Consumer.start() refuses it")
    return Options.build(stream=message.stream, group=group, consumer_name=consumer_name,
                         handle_failure=handle_failure, max_attempts=max_attempts,
                         dead_letter_stream=dead_letter_stream)


def _dead_letter(message: Message, error: BaseException, options: Options) -> Mapping[bytes, bytes]:
    flat = dead_letter_fields(message, failure_text(error), stream=options.stream,
                              group=options.group, consumer=options.consumer_name)
    stored = [_encode(item) for item in flat]
    return types.MappingProxyType(dict(zip(stored[::2], stored[1::2])))


def _stored(value: Any) -> bytes:
    if isinstance(value, bool) or not isinstance(value, (str, bytes, int, float)):
        raise TypeError(f"a field name or value must be str, bytes, int or float, got "
                        f"{type(value).__name__} {value!r}")
    return _encode(value)


def _encode(value: Any) -> bytes:
    """`value` as rstream's connection sends it (`connection.Link.encode`)."""
    return bytes(_ENCODER.encode(value))  # type: ignore[no-untyped-call]


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


__all__ = ["Outcome", "Verdict", "make_message", "run_handler", "run_attempts"]
