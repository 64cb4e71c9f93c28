"""What the parity tests share: how a result of the compiled or the pure-Python hot path is
compared (`shape`, `outcome`), the hypothesis settings, and `same`, which runs one function of
both twins on the same arguments and asserts they agree."""
from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Tuple

from hypothesis import HealthCheck, settings

from rstream.message import Message

MAX = 2**64 - 1
SLOTS = ("id", "stream", "fields", "_attempt", "_metadata", "_retry")
PARITY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DECODING = settings(PARITY, max_examples=300)


def shape(value: Any) -> Any:
    """A comparable image of a result that also pins the types (str vs bytes, list vs tuple)."""
    if isinstance(value, Message):
        return ("Message", type(value), tuple((slot, shape(getattr(value, slot))) for slot in SLOTS))
    if isinstance(value, (list, tuple)):
        return (type(value), [shape(item) for item in value])
    if isinstance(value, dict):
        return (dict, [(shape(k), shape(v)) for k, v in value.items()])
    return (type(value), value)


def outcome(function: Callable[..., Any], *args: Any) -> Tuple[Any, ...]:
    try:
        return ("returned", shape(function(*args)))
    except Exception as error:  # noqa: BLE001 - the exception is the result under test
        return ("raised", type(error), str(error))


def same(compiled: ModuleType, pure: ModuleType, name: str, *args: Any) -> Tuple[Any, ...]:
    """`name` of both twins on `args`: the same result, or the same exception type and text."""
    expected = outcome(getattr(pure, name), *args)
    assert outcome(getattr(compiled, name), *args) == expected
    return expected
