"""What the tests of a moving server (resharding, replica takeover) measure: a writer that keeps
adding entries through the user's client, a handler that records every call, and the three
numbers the README quotes: entries lost by asynchronous replication, entries handled twice, and
the time from a fault to the first entry handled after it.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import rstream

# An entry handled this long after a kill was read after it: a read already in flight when the
# server died is handled within milliseconds (the handler does nothing).
IN_FLIGHT_GRACE_S = 0.1


class Writer:
    """A thread adding one entry every `interval_s` with `add(fields) -> id`; an add that fails
    (the server is down or moving) is tried again with the next entry. `ids` are the entries
    the server said it wrote."""

    def __init__(self, add: Callable[[Dict[str, Any]], Any], interval_s: float = 0.002) -> None:
        self._add = add
        self._interval_s = interval_s
        self.ids: List[str] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-writer", daemon=True)

    def start(self) -> "Writer":
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                entry_id = self._add({"n": n})
            except Exception:  # noqa: BLE001 - the outage being measured
                self.failures += 1
                self._stop.wait(0.05)
                continue
            self.ids.append(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))
            n += 1
            self._stop.wait(self._interval_s)

    def stop(self) -> List[str]:
        self._stop.set()
        self._thread.join(10)
        return list(self.ids)


class Tally:
    """The handler: every call, with when it happened (monotonic)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: List[Tuple[float, str]] = []

    def __call__(self, message: rstream.Message) -> None:
        with self._lock:
            self.calls.append((time.monotonic(), message.id))

    def ids(self) -> Set[str]:
        with self._lock:
            return {entry_id for _, entry_id in self.calls}

    def count(self) -> int:
        with self._lock:
            return len(self.calls)

    def duplicates(self) -> int:
        with self._lock:
            counts = collections.Counter(entry_id for _, entry_id in self.calls)
        return sum(n - 1 for n in counts.values() if n > 1)

    def first_after(self, moment: float) -> Optional[float]:
        """Seconds from `moment` to the first call more than IN_FLIGHT_GRACE_S after it."""
        with self._lock:
            later = [at for at, _ in self.calls if at > moment + IN_FLIGHT_GRACE_S]
        return min(later) - moment if later else None


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a run measured, printed as one line for the README."""

    what: str
    written: int
    lost: int            # the writer was told they were written; the new server never had them
    lost_but_handled: int
    duplicates: int
    resumed_after_s: Optional[float]

    def line(self) -> str:
        resumed = "never" if self.resumed_after_s is None else f"{self.resumed_after_s:.2f} s"
        return (f"[{self.what}] written={self.written} lost-by-replication={self.lost} "
                f"(of which handled: {self.lost_but_handled}) "
                f"handled-twice={self.duplicates} first-handled-after-fault={resumed}")


def measure(what: str, written: List[str], survived: Set[str], tally: Tally,
            fault_at: float) -> Outcome:
    lost = [entry_id for entry_id in written if entry_id not in survived]
    handled = tally.ids()
    outcome = Outcome(what, len(written), len(lost), sum(1 for i in lost if i in handled),
                      tally.duplicates(), tally.first_after(fault_at))
    print(outcome.line())
    return outcome
