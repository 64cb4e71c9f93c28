"""Batch handlers (`start(handle_batch=...)`): what their answer means. Pure: no Redis, no threads.

A batch handler gets a list of messages of one stream and says which failed: it returns None
(all succeeded), or the failed ones as ``(message, exception)`` pairs or as a mapping from
message id to exception, or raises `BatchFailed` with the same. Any other exception fails the
whole batch. Each failed message then takes the path of a failed single message (handle_failure,
retries, dead letters: `rstream.outcomes`), so a batch settles exactly as its messages would.
An answer that cannot be read (a message not in the batch, an error that is no exception) fails
the whole batch with a TypeError saying why: guessing would ack what may not have been done.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Sized, Tuple, Union

from .errors import RStreamError
from .handlers import reject_awaitable
from .message import Message

Failure = Tuple[Message, BaseException]
# The failed messages of a batch, as a batch handler may give them.
BatchFailures = Union[Mapping[str, BaseException], Iterable[Tuple[Message, BaseException]]]
BatchHandler = Callable[[List[Message]], Optional[BatchFailures]]


class BatchFailed(RStreamError):
    """Raised by a batch handler: the messages in `failures` failed, the others succeeded.
    Naming none fails the whole batch (a raise never acknowledges everything)."""

    def __init__(self, failures: BatchFailures) -> None:
        self.failures = failures
        count = len(failures) if isinstance(failures, Sized) else "some"
        super().__init__(f"{count} messages of the batch failed")


def run_batch(handle_batch: BatchHandler, batch: List[Message]) -> Tuple[List[str], List[Failure]]:
    """Call the batch handler; the ids that succeeded and the failures, in batch order."""
    try:
        answer = handle_batch(list(batch))  # its own list: the handler may change it
        if answer is not None:
            reject_awaitable(answer)
        failed = failures_of(batch, answer)
    except BatchFailed as exc:
        try:
            failed = failures_of(batch, exc.failures) or {m.id: exc for m in batch}
        except TypeError as bad:
            failed = {m.id: bad for m in batch}
    except BaseException as exc:  # noqa: BLE001 - a handler's exception is an outcome
        failed = {m.id: exc for m in batch}
    if not failed:
        return [m.id for m in batch], []
    return ([m.id for m in batch if m.id not in failed],
            [(m, failed[m.id]) for m in batch if m.id in failed])


def failures_of(batch: Sequence[Message], answer: object) -> Dict[str, BaseException]:
    """The failures a batch handler named, by id (the first error given for a message
    counts). TypeError if the answer is not one a batch handler may give."""
    if answer is None:
        return {}
    ids = {m.id for m in batch}
    failed: Dict[str, BaseException] = {}
    if isinstance(answer, Mapping):
        pairs: Iterable[object] = answer.items()
    elif isinstance(answer, Iterable) and not isinstance(answer, (str, bytes)):
        pairs = answer
    else:
        raise TypeError(_wrong(f"{type(answer).__name__} {answer!r:.100}"))
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise TypeError(_wrong(f"an item {pair!r:.100}"))
        who, error = pair
        entry_id = who.id if isinstance(who, Message) else who
        if not isinstance(entry_id, str) or entry_id not in ids:
            raise TypeError(_wrong(f"{who!r:.100}, which is not a message of this batch"))
        if not isinstance(error, BaseException):
            raise TypeError(_wrong(f"{error!r:.100} as the error of {entry_id}, not an exception"))
        failed.setdefault(entry_id, error)
    return failed


def _wrong(what: str) -> str:
    return (f"handle_batch gave {what}: return None when every message succeeded, else the "
            "failed ones as (message, exception) pairs or {message.id: exception}")
