"""Checks that keep handlers synchronous. Pure: no Redis, no threads.

rstream calls handlers on plain threads. An ``async def`` handler called there only builds a
coroutine that nobody runs: without these checks the message would count as handled and be acked
although its code never ran.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from .message import Message

Handler = Callable[[Message], None]
FailureHandler = Callable[[Message, BaseException], None]


def is_async_callable(obj: Any) -> bool:
    """True for an ``async def`` function (or async generator function), a bound method or
    `functools.partial` of one, or an object whose ``__call__`` is one."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    if _is_async_function(obj):
        return True
    if inspect.isfunction(obj) or inspect.ismethod(obj) or isinstance(obj, type):
        # Calling a class builds an instance: its async __call__ is not what runs.
        return False
    # The class's __call__, not callable(): what matters is whether calling it is async.
    return _is_async_function(getattr(type(obj), "__call__", None))  # noqa: B004


def _is_async_function(obj: Any) -> bool:
    return inspect.iscoroutinefunction(obj) or inspect.isasyncgenfunction(obj)


def reject_awaitable(result: object) -> None:
    """Raise TypeError if a handler returned an awaitable, closing it first: a coroutine that is
    closed never runs and Python does not warn that it was "never awaited"."""
    if not inspect.isawaitable(result):
        return
    close = getattr(result, "close", None)
    if callable(close):
        close()
    raise TypeError(f"the handler returned an awaitable ({type(result).__name__}) instead of "
                    "running its work: rstream handlers are synchronous (write a plain def "
                    "handler; to call async code from it, use asyncio.run())")
