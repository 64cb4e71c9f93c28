"""`rstream.partition.KeyQueues`, the ordering logic behind `partition_by`, without threads or
Redis: a key's entries leave in id order (late ones take their place), one worker holds a key at
a time, a retry holds its key back until it is due, and stop gives up what waits."""
from __future__ import annotations

from typing import Dict, List, Set, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from rstream.partition import KeyQueues, Order

Queues = KeyQueues[str, str]


def _id(n: int) -> Order:
    return (n, 0)


def _ids(entries: List[Tuple[Order, str]]) -> List[str]:
    return [item for _, item in entries]


def test_a_keys_entries_leave_in_id_order_whatever_order_they_came_in() -> None:
    """An entry that arrives after later ones (claimed, replayed) is handed out before them."""
    queues: Queues = KeyQueues()
    for n in (5, 1, 3, 9, 2):
        queues.add("a", _id(n), f"a{n}")
    taken = queues.take(now=0.0, most=10)
    assert taken is not None
    assert taken[0] == "a" and _ids(taken[1]) == ["a1", "a2", "a3", "a5", "a9"]


def test_a_busy_key_is_not_handed_out_again_until_released_but_other_keys_are() -> None:
    """While one worker holds a key, its new entries wait; another key goes to another worker."""
    queues: Queues = KeyQueues()
    queues.add("a", _id(1), "a1")
    queues.add("b", _id(2), "b2")
    first = queues.take(0.0, 10)
    queues.add("a", _id(3), "a3")
    second = queues.take(0.0, 10)
    assert first is not None and second is not None
    assert (first[0], second[0]) == ("a", "b")
    assert queues.take(0.0, 10) is None  # a is busy, b is busy
    queues.release("a")
    again = queues.take(0.0, 10)
    assert again is not None and again[0] == "a" and _ids(again[1]) == ["a3"]


def test_a_retry_holds_its_key_until_due_and_comes_first_then_the_rest_in_id_order() -> None:
    """Released with a retry put back and a due time: nothing of that key leaves before it; then
    the retry first, except for an entry with a smaller id that came meanwhile (a claim)."""
    queues: Queues = KeyQueues()
    for n in (10, 11, 12):
        queues.add("a", _id(n), f"a{n}")
    taken = queues.take(0.0, 2)
    assert taken is not None and _ids(taken[1]) == ["a10", "a11"]
    # a10 failed and is to be retried at t=5; a11, taken with it, did not run.
    queues.release("a", back=[(_id(10), "a10 again"), (_id(11), "a11")], not_before=5.0)
    queues.add("a", _id(7), "a7")  # claimed from a dead consumer meanwhile
    queues.add("b", _id(13), "b13")
    assert queues.next_due() == 5.0
    other = queues.take(4.9, 10)
    assert other is not None and other[0] == "b"  # other keys go on
    assert queues.take(4.9, 10) is None            # a waits
    due = queues.take(5.0, 10)
    assert due is not None and _ids(due[1]) == ["a7", "a10 again", "a11", "a12"]
    assert list(queues.waiting_keys()) == []


def test_keys_take_turns_a_long_queue_goes_to_the_back_of_the_line() -> None:
    """A key with many entries is handed out `most` at a time, and others get their turn between."""
    queues: Queues = KeyQueues()
    for n in range(6):
        queues.add("a", _id(n), f"a{n}")
    queues.add("b", _id(10), "b10")
    order = []
    while True:
        taken = queues.take(0.0, 2)
        if taken is None:
            break
        order.append((taken[0], _ids(taken[1])))
        queues.release(taken[0])
    assert order == [("a", ["a0", "a1"]), ("b", ["b10"]), ("a", ["a2", "a3"]), ("a", ["a4", "a5"])]
    assert len(queues) == 0


def test_at_stop_waiting_keys_are_given_up_and_drain_empties_everything() -> None:
    """give_up_waiting returns a waiting key's entries and keeps ready keys; drain returns the rest."""
    queues: Queues = KeyQueues()
    queues.add("a", _id(1), "a1")
    queues.add("a", _id(2), "a2")
    queues.add("b", _id(3), "b3")
    taken = queues.take(0.0, 1)
    assert taken is not None
    queues.release("a", back=taken[1], not_before=100.0)
    assert sorted(queues.waiting_keys()) == ["a"]
    assert sorted(queues.give_up_waiting()) == ["a1", "a2"]
    assert queues.next_due() is None and len(queues) == 1
    queues.add("c", _id(4), "c4")
    assert sorted(queues.drain()) == ["b3", "c4"] and len(queues) == 0
    assert queues.take(1000.0, 10) is None


# A random schedule of (operation, key, number): ids are unique per key, time moves on by ticks.
_OPS = st.lists(st.tuples(st.sampled_from(["add", "take", "done", "retry", "tick"]),
                          st.sampled_from("abc"), st.integers(0, 40)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(_OPS)
def test_whatever_the_schedule_a_key_has_one_holder_and_hands_out_its_smallest_ids(
        ops: List[Tuple[str, str, int]]) -> None:
    """Random adds, takes, completions and retries: a key is never held twice, every take hands
    out the smallest ids its key has queued at that moment, in order, a waiting key gives nothing
    before its time, and in the end every entry was completed exactly once."""
    queues: Queues = KeyQueues()
    now = 0.0
    queued: Dict[str, Set[int]] = {k: set() for k in "abc"}
    held: Dict[str, List[Tuple[Order, str]]] = {}
    not_before: Dict[str, float] = {}
    added: Dict[str, Set[int]] = {k: set() for k in "abc"}
    completed: Dict[str, List[int]] = {k: [] for k in "abc"}

    def take(at: float, most: int) -> bool:
        taken = queues.take(at, most)
        if taken is None:
            return False
        key, entries = taken
        assert key not in held, "a key handed out twice"
        assert not_before.get(key, 0.0) <= at, "a waiting key gave an entry before its time"
        ids = [order[0] for order, _ in entries]
        assert ids == sorted(queued[key])[:len(ids)], "not its smallest ids, in order"
        queued[key] -= set(ids)
        held[key] = entries
        return True

    for op, key, n in ops:
        if op == "add" and n not in added[key]:
            added[key].add(n)
            queues.add(key, _id(n), f"{key}{n}")
            queued[key].add(n)
        elif op == "take":
            take(now, 1 + n % 3)
        elif op == "done" and key in held:  # every entry taken ran and succeeded
            completed[key] += [order[0] for order, _ in held.pop(key)]
            queues.release(key)
        elif op == "retry" and key in held:  # the first failed: it and the rest go back
            entries = held.pop(key)
            not_before[key] = now + n
            queues.release(key, back=entries, not_before=not_before[key])
            queued[key] |= {order[0] for order, _ in entries}
        elif op == "tick":
            now += n / 10
    for key in list(held):
        completed[key] += [order[0] for order, _ in held.pop(key)]
        queues.release(key)
    while take(float("inf"), 3):
        for key in list(held):
            completed[key] += [order[0] for order, _ in held.pop(key)]
            queues.release(key)
    assert len(queues) == 0
    assert {k: sorted(v) for k, v in completed.items()} == {k: sorted(v) for k, v in added.items()}
