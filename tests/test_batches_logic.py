"""What a batch handler's answer means (`rstream.batches.run_batch`), without threads or Redis:
which messages succeeded and which failed with what, and that an answer it cannot read fails
the whole batch instead of acknowledging messages that may not have been handled."""
from __future__ import annotations

from typing import Any, List, Optional

import pytest

from rstream import Message
from rstream.batches import BatchFailed, run_batch

BATCH = [Message(f"{n}-0", "orders", {b"n": str(n).encode()}) for n in range(1, 6)]
BOOM = ValueError("boom")


def _outcome(answer: Any = None, raises: Optional[BaseException] = None) -> Any:
    def handle_batch(batch: List[Message]) -> Any:
        assert batch == BATCH and batch is not BATCH  # its own copy of the list
        if raises is not None:
            raise raises
        return answer
    ok, failures = run_batch(handle_batch, BATCH)
    return ok, [(m.id, error) for m, error in failures]


def test_none_means_every_message_succeeded() -> None:
    assert _outcome(None) == ([m.id for m in BATCH], [])


@pytest.mark.parametrize("answer", [
    [(BATCH[1], BOOM), (BATCH[3], BOOM)],
    ((BATCH[3], BOOM), (BATCH[1], BOOM)),
    iter([(BATCH[1], BOOM), (BATCH[3], BOOM)]),
    {"2-0": BOOM, "4-0": BOOM},
    [(BATCH[1], BOOM), (BATCH[3], BOOM), (BATCH[1], KeyError("later"))],  # the first error counts
], ids=["pairs", "pairs-in-any-order", "iterator", "mapping-by-id", "named-twice"])
def test_the_failed_messages_named_fail_and_the_others_succeed(answer: Any) -> None:
    """Pairs or a mapping by id: the named ones fail with their error, in batch order."""
    assert _outcome(answer) == (["1-0", "3-0", "5-0"], [("2-0", BOOM), ("4-0", BOOM)])


def test_batch_failed_names_the_failed_ones() -> None:
    assert _outcome(raises=BatchFailed({"5-0": BOOM})) == (["1-0", "2-0", "3-0", "4-0"],
                                                           [("5-0", BOOM)])


def test_batch_failed_naming_none_and_any_other_exception_fail_the_whole_batch() -> None:
    """A raise never acknowledges everything: BatchFailed([]) fails each message with itself."""
    empty = BatchFailed([])
    for raised in (empty, BOOM, KeyboardInterrupt()):
        ok, failures = _outcome(raises=raised)
        assert ok == [] and failures == [(m.id, raised) for m in BATCH]


@pytest.mark.parametrize("answer, problem", [
    (3, "handle_batch gave int 3"),
    ("1-0", "handle_batch gave str"),
    ([BATCH[0]], "an item"),
    ([(Message("9-0", "orders", {}), BOOM)], "not a message of this batch"),
    ({"9-0": BOOM}, "not a message of this batch"),
    ([(BATCH[0], "it failed")], "not an exception"),
])
def test_an_answer_that_cannot_be_read_fails_the_whole_batch_with_a_type_error(
        answer: Any, problem: str) -> None:
    ok, failures = _outcome(answer)
    assert ok == [] and len(failures) == len(BATCH)
    errors = {type(error) for _, error in failures}
    assert errors == {TypeError} and problem in str(failures[0][1])


def test_the_same_holds_for_what_batch_failed_carries() -> None:
    ok, failures = _outcome(raises=BatchFailed([(BATCH[0], "no exception")]))
    assert ok == [] and all(isinstance(e, TypeError) for _, e in failures)


def test_a_batch_handler_that_returns_an_awaitable_fails_the_batch_and_the_coroutine_is_closed() -> None:
    async def work() -> None:
        raise AssertionError("never runs")
    coroutine = work()
    ok, failures = _outcome(coroutine)
    assert ok == [] and all(isinstance(e, TypeError) and "awaitable" in str(e) for _, e in failures)
    assert coroutine.cr_frame is None  # closed: it never runs and Python does not warn
