"""The ledger of entries this consumer holds, and the grants that bound how many it reads.

Every entry read (by a read of new entries, the own-pending replay, a claim or a retry) takes an
in-flight slot first: `reserve` returns a `Grant` of up to the slots asked for. The grant is
spent on what the read returned (`Grant.admit`) and gives the rest back when it closes, on
every path, error or not; the slots of admitted entries come back when their handlers are done
(`finish`). So at any time ``reserved + in_flight <= limit`` (`max_in_flight`).

Entries read before (claims and retries) reserve with ``priority=True``: while one waits, reads
of new entries leave half the slots free, else an idle reader that re-reserves every free slot
for its next blocking read would starve them for good.

The ledger also remembers the ids it holds, so the own-pending check can tell strays (pending
for this consumer but not held) from entries a handler has, and when each open grant was taken:
an entry the server delivered after that may be in a reply not admitted yet (still on the wire,
or its reader starved of CPU), which is no stray either (`held_and_reading`).
"""
from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Dict, Iterable, Optional, Sequence, Set, Tuple, Type


class Grant:
    """Slots reserved for one read. `admit(ids)` turns as many slots into held entries (once);
    `close()`, or leaving the ``with`` block, gives back whatever was not admitted."""

    __slots__ = ("_ledger", "size", "_open")

    def __init__(self, ledger: "Ledger", size: int) -> None:
        self._ledger = ledger
        self.size = size
        self._open = size > 0

    def __bool__(self) -> bool:
        return self.size > 0

    def __repr__(self) -> str:
        return f"Grant(size={self.size}, open={self._open})"

    def admit(self, ids: Sequence[str]) -> None:
        """The read returned these entries, which handlers will now run (each takes a slot);
        the unused rest of the grant is freed at once."""
        if self._open:
            self._open = False
            self._ledger._settle_grant(self, ids)

    def close(self) -> None:
        """Give the whole grant back (nothing was admitted: a failed or abandoned read)."""
        self.admit(())

    def __enter__(self) -> "Grant":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()


class Ledger:
    """Counts entries reserved and in flight against `limit`, and the ids this consumer holds."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._cond = threading.Condition()
        self._reserved = 0
        self._in_flight = 0
        self._held: Set[str] = set()
        # The open grants (taken, not yet admitted or closed) and when each was taken (monotonic).
        self._taken_at: Dict[Grant, float] = {}
        self._priority_waiting = 0  # priority callers inside reserve(): reads leave room

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def resize(self, limit: int) -> None:
        """A new window (the reader widens it for a far link). Entries already in flight past
        a smaller one stay; new grants wait until they fit."""
        if limit != self.limit:
            with self._cond:
                self.limit = limit
                self._cond.notify_all()

    def reserve(self, want: int, stop: threading.Event, wait_s: Optional[float] = None,
                priority: bool = False) -> Grant:
        """A grant of up to `want` slots, waiting for at least one until `stop` is set or
        `wait_s` passes (then the grant is empty)."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        with self._cond:
            self._priority_waiting += priority
            try:
                while True:
                    free = self.limit - self._reserved - self._in_flight
                    if not priority and self._priority_waiting:
                        free -= max(1, self.limit // 2)
                    if free > 0:
                        granted = min(want, free)
                        self._reserved += granted
                        grant = Grant(self, granted)
                        if grant:  # an empty one is never admitted: nothing to wait for
                            self._taken_at[grant] = time.monotonic()
                        return grant
                    if stop.is_set():
                        return Grant(self, 0)
                    remaining = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                    if remaining <= 0:
                        return Grant(self, 0)
                    self._cond.wait(remaining)
            finally:
                self._priority_waiting -= priority

    def _settle_grant(self, grant: Grant, ids: Sequence[str]) -> None:
        with self._cond:
            self._held.update(ids)
            self._reserved -= grant.size
            self._in_flight += len(ids)
            self._taken_at.pop(grant, None)
            if len(ids) < grant.size:
                self._cond.notify_all()

    def finish(self, count: int) -> None:
        """Handlers are done with `count` entries: their slots are free for reads."""
        with self._cond:
            self._in_flight -= count
            self._cond.notify_all()

    def forget(self, ids: Iterable[str]) -> None:
        """These entries are settled on the server (or no longer ours)."""
        with self._cond:
            self._held.difference_update(ids)

    def hold(self, ids: Iterable[str]) -> None:
        """Remember ids held without a slot (deleted entries waiting for their ack)."""
        with self._cond:
            self._held.update(ids)

    def held(self) -> Set[str]:
        with self._cond:
            return set(self._held)

    def held_and_reading(self) -> Tuple[Set[str], Optional[float]]:
        """The ids held, and when the oldest open grant was taken (monotonic; None without
        one), at one moment: an entry pending for this consumer is either held, or delivered
        after that time into a reply not admitted yet, or neither (a stray)."""
        with self._cond:
            return set(self._held), min(self._taken_at.values(), default=None)

    def wait_idle(self, deadline: float) -> bool:
        """Wait until no entry is in flight; False if the deadline (monotonic) passed first."""
        with self._cond:
            while self._in_flight > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))
            return True
