"""Handlers are synchronous: async ones are refused up front, and a handler that returns an
awaitable fails its message (the awaitable is closed, never silently acked)."""
from __future__ import annotations

import functools
import inspect
import threading
from typing import Any, Callable, Coroutine, Dict, List, Tuple

import pytest
import redis

import rstream
from helpers import add_entries, wait_until
from rstream import ConfigError
from rstream.handlers import is_async_callable, reject_awaitable

UNUSED_URL = "redis://127.0.0.1:1/0"
Factory = Callable[..., rstream.Consumer]


async def async_handler(message: rstream.Message) -> None:
    pass


async def async_gen_handler(message: rstream.Message) -> Any:
    yield message


def sync_handler(message: rstream.Message) -> None:
    pass


class AsyncCallable:
    async def __call__(self, message: rstream.Message) -> None:
        pass


class SyncCallable:
    def __call__(self, message: rstream.Message) -> None:
        pass


class Handlers:
    async def handle(self, message: rstream.Message) -> None:
        pass


ASYNC = [async_handler, async_gen_handler, AsyncCallable(), Handlers().handle,
         functools.partial(async_handler), functools.partial(functools.partial(AsyncCallable()))]
ASYNC_IDS = ["async-def", "async-generator", "async-__call__", "async-method", "partial",
             "partial-of-partial-of-async-__call__"]
SYNC = [sync_handler, SyncCallable(), functools.partial(sync_handler), lambda m: None, print,
        AsyncCallable]  # calling the class builds an instance: that call is synchronous
SYNC_IDS = ["def", "__call__", "partial", "lambda", "builtin", "class-with-async-__call__"]


@pytest.mark.parametrize("handler", ASYNC, ids=ASYNC_IDS)
def test_async_callables_are_recognised(handler: Any) -> None:
    """async def functions, async generator functions, async __call__, bound async methods and
    partials of them all count as async."""
    assert is_async_callable(handler)


@pytest.mark.parametrize("handler", SYNC, ids=SYNC_IDS)
def test_sync_callables_are_not_async(handler: Any) -> None:
    """Plain functions, sync __call__, builtins, lambdas and classes are synchronous."""
    assert not is_async_callable(handler)


@pytest.mark.parametrize("how", ["start", "run"])
@pytest.mark.parametrize("handler", ASYNC, ids=ASYNC_IDS)
def test_start_and_run_refuse_an_async_handler(how: str, handler: Any) -> None:
    """start() and run() raise ConfigError for an async handler, before touching the server."""
    consumer = rstream.Consumer(UNUSED_URL, "orders", "billing", "billing-1")
    with pytest.raises(ConfigError, match="synchronous"):
        getattr(consumer, how)(handler)
    assert consumer.stats().delivered == 0


@pytest.mark.parametrize("handle_failure", ASYNC, ids=ASYNC_IDS)
def test_an_async_handle_failure_is_refused_at_construction(handle_failure: Any) -> None:
    """An async handle_failure raises ConfigError naming the option when the Consumer is built."""
    with pytest.raises(ConfigError, match="handle_failure"):
        rstream.Consumer(UNUSED_URL, "orders", "billing", "billing-1", handle_failure=handle_failure)


def test_reject_awaitable_closes_a_coroutine_and_passes_other_values() -> None:
    """A coroutine result is closed (so it never warns) and raises TypeError; other values pass."""
    coroutine = async_handler(rstream.Message("1-0", "s", {}))
    with pytest.raises(TypeError, match="returned an awaitable"):
        reject_awaitable(coroutine)
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
    for value in (None, 1, "x", [1], object()):
        reject_awaitable(value)


def test_a_handler_returning_a_coroutine_fails_its_message_and_closes_it(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """A sync handler that returns a coroutine gets its message failed with a TypeError (not
    acked as handled); the coroutine never ran and is closed; the failure follows max_attempts
    and the dead-letter stream like any other."""
    ran: List[str] = []
    made: List[Coroutine[Any, Any, None]] = []
    errors: List[Tuple[str, int, BaseException]] = []
    lock = threading.Lock()

    async def work(message: rstream.Message) -> None:
        ran.append(message.id)

    def handle(message: rstream.Message) -> Coroutine[Any, Any, None]:
        coroutine = work(message)
        with lock:
            made.append(coroutine)
        return coroutine

    def handle_failure(message: rstream.Message, error: BaseException) -> None:
        with lock:
            errors.append((message.id, message.attempt, error))

    consumer = make_consumer(max_attempts=2, dead_letter_stream=stream_names.dead_letter,
                             handle_failure=handle_failure)
    consumer.start(handle)  # type: ignore[arg-type]  # the mistake under test
    [entry_id] = add_entries(r, stream_names.stream, 1)
    wait_until(lambda: consumer.stats().dead_lettered == 1, 20, message="not dead-lettered")
    assert ran == []
    # Closed before it started: Python warns "never awaited" only for one left unclosed.
    assert len(made) == 2 and all(inspect.getcoroutinestate(c) == inspect.CORO_CLOSED for c in made)
    assert [(i, a) for i, a, _ in errors] == [(entry_id, 1), (entry_id, 2)]
    assert all(isinstance(e, TypeError) and "returned an awaitable" in str(e) for _, _, e in errors)
    stats = consumer.stats()
    assert (stats.failed, stats.retried, stats.dead_lettered) == (2, 1, 1)
    [(_, fields)] = r.xrange(stream_names.dead_letter)
    assert fields[b"rstream-error"].startswith(b"TypeError: the handler returned an awaitable")


def test_a_handler_returning_a_plain_value_succeeds(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """A sync handler may return any value that is not awaitable: its message is acked."""
    seen: Dict[str, int] = {}
    consumer = make_consumer()
    consumer.start(lambda m: seen.setdefault(m.id, 1))
    add_entries(r, stream_names.stream, 3)
    wait_until(lambda: consumer.stats().acked == 3, 20, message="not acked")
    assert consumer.stats().failed == 0
