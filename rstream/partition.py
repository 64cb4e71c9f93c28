"""Per-key queues for `partition_by`: which message may run next. Pure: no Redis, no threads.

Each key has a FIFO queue kept in stream-id order: an entry that arrives late (claimed from a
dead consumer, replayed, or put back after a retry) is inserted where its id belongs, not at
the end. A key is in one of three states besides idle (no entries, forgotten):
- ready: it has entries and nobody is running one; `take` hands out keys in the order they
  became ready, so every key gets its turn;
- busy: a worker took some of its entries and runs them one after another; nobody else gets
  the key until that worker `release`s it;
- waiting: released with a time before which it must not run (a retry's due time, the retried
  entry back at the head of its queue); it becomes ready at that time.
So a key's entries run one at a time, in id order, and a retry holds back everything after it.
The caller (`rstream.keyedpool`) holds a lock around every call and gives the clock.
"""
from __future__ import annotations

import collections
import heapq
import itertools
from typing import (Callable, Deque, Dict, Generic, Hashable, Iterator, List, Optional, Sequence,
                    Tuple, TypeVar)

from .message import Message

# The `partition_by` option: a message's key. Messages with equal keys run one at a time.
PartitionBy = Callable[[Message], Hashable]
K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
Order = Tuple[int, int]        # a stream id, parsed: (ms, seq)
Entry = Tuple[Order, T]        # what a key's queue holds


class _Key(Generic[T]):
    """One key's queue. A known key that is neither in the ready line nor waiting is busy."""

    __slots__ = ("entries", "not_before")

    def __init__(self) -> None:
        self.entries: Deque[Entry[T]] = collections.deque()
        self.not_before: Optional[float] = None  # set while waiting


class KeyQueues(Generic[K, T]):
    """Entries per key, each key's in id order, one key's entries out to one worker at a time."""

    def __init__(self) -> None:
        self._keys: Dict[K, _Key[T]] = {}
        self._ready: Deque[K] = collections.deque()
        self._waiting: List[Tuple[float, int, K]] = []  # heap: (not_before, tie, key)
        self._tie = itertools.count()
        self._count = 0

    def __len__(self) -> int:
        """Entries queued (not the ones a worker holds)."""
        return self._count

    def add(self, key: K, order: Order, item: T) -> bool:
        """Queue `item` under `key` where `order` puts it; True if the key just became ready."""
        state = self._keys.get(key)
        fresh = state is None
        if state is None:
            state = self._keys[key] = _Key()
            self._ready.append(key)
        _insert(state.entries, (order, item))
        self._count += 1
        return fresh

    def take(self, now: float, most: int) -> Optional[Tuple[K, List[Entry[T]]]]:
        """The next ready key and up to `most` of its first entries; the key is busy until
        `release`. None when no key is ready (every key is busy, waiting, or there are none)."""
        self._wake(now)
        if not self._ready:
            return None
        key = self._ready.popleft()
        state = self._keys[key]
        taken = [state.entries.popleft() for _ in range(min(most, len(state.entries)))]
        self._count -= len(taken)
        return key, taken

    def release(self, key: K, back: Sequence[Entry[T]] = (),
                not_before: Optional[float] = None) -> None:
        """The worker that took `key` is done with it. `back`: entries it took and did not run
        (the retried one first), put back in id order; `not_before`: the key waits until then."""
        state = self._keys[key]
        for entry in back:
            _insert(state.entries, entry)
        self._count += len(back)
        if not_before is not None and state.entries:
            state.not_before = not_before
            heapq.heappush(self._waiting, (not_before, next(self._tie), key))
        elif state.entries:
            self._ready.append(key)
        else:
            del self._keys[key]

    def next_due(self) -> Optional[float]:
        """When the first waiting key becomes ready (None: no key waits)."""
        return self._waiting[0][0] if self._waiting else None

    def waiting_keys(self) -> Iterator[K]:
        """The keys waiting (each for the retry at the head of its queue)."""
        return (key for key, state in self._keys.items() if state.not_before is not None)

    def give_up_waiting(self) -> List[T]:
        """Forget every waiting key and return all its entries (at stop: a retry not due yet,
        and what waits behind it, stay pending on the server)."""
        left: List[T] = []
        for key in list(self.waiting_keys()):
            left.extend(self._forget(key))
        self._waiting.clear()
        return left

    def drain(self) -> List[T]:
        """Every queued entry; everything is forgotten (the stop deadline passed: nobody
        releases a key after this)."""
        left = [item for state in self._keys.values() for _, item in state.entries]
        self._keys.clear()
        self._ready.clear()
        self._waiting.clear()
        self._count = 0
        return left

    def _forget(self, key: K) -> List[T]:
        items = [item for _, item in self._keys.pop(key).entries]
        self._count -= len(items)
        return items

    def _wake(self, now: float) -> None:
        """Waiting keys whose time has come become ready. (Forgetting a waiting key clears the
        whole heap, so every key in it is still known and waiting.)"""
        while self._waiting and self._waiting[0][0] <= now:
            _, _, key = heapq.heappop(self._waiting)
            self._keys[key].not_before = None
            self._ready.append(key)


def _insert(entries: "Deque[Entry[T]]", entry: "Entry[T]") -> None:
    """Put `entry` after every entry whose id is not greater: almost always at the end."""
    order = entry[0]
    if not entries or entries[-1][0] <= order:
        entries.append(entry)
        return
    at = len(entries) - 1
    while at > 0 and entries[at - 1][0] > order:
        at -= 1
    entries.insert(at, entry)
