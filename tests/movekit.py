"""What the tests of a moving server (resharding, replica takeover) measure: a writer that keeps
adding entries through the user's client, a handler that records every call, and the three
numbers the README quotes: entries lost by asynchronous replication, entries handled twice, and
the time from a fault to the first entry handled after it. `SlotMigration` moves a slot step by
step, so that a test can hold it half-migrated.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import rstream
from clusterkit import ReplicatedCluster
from helpers import wait_until
from rstream.embedded import EmbeddedServer

# An entry handled this long after a kill was read after it: a read already in flight when the
# server died is handled within milliseconds (the handler does nothing).
IN_FLIGHT_GRACE_S = 0.1


class SlotMigration:
    """The steps of `ReplicatedCluster.move_slot` one at a time, so that a test can leave the slot
    between them: `begin` (IMPORTING on the target, MIGRATING on the source), `migrate` (some keys
    moved: the source now answers ASK for them), `finish` (every key left, then NODE on every
    master). Keys are moved without REPLACE: a key the target created while it was still on the
    source (a command served there before its key was moved) fails the move with BUSYKEY."""

    def __init__(self, cluster: ReplicatedCluster, slot: int, target: EmbeddedServer) -> None:
        self.cluster = cluster
        self.slot = slot
        self.source = cluster.owner(slot)
        self.target = target
        self._source_id, self._target_id = cluster.node_id(self.source), cluster.node_id(target)

    def begin(self) -> None:
        with self.cluster.direct(self.target) as dst, self.cluster.direct(self.source) as src:
            dst.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", self._source_id)
            src.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self._target_id)

    def migrate(self, *keys: str) -> None:
        with self.cluster.direct(self.source) as src:
            src.execute_command("MIGRATE", "127.0.0.1", self.target.port, "", 0, 5000, "KEYS", *keys)

    def finish(self) -> None:
        with self.cluster.direct(self.source) as src:
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, 100):
                self.migrate(*(key.decode() for key in keys))
        for master in [self.target, self.source] + [m for m in self.cluster.masters()
                                                    if m not in (self.source, self.target)]:
            with self.cluster.direct(master) as client:
                client.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", self._target_id)
        wait_until(lambda: self.cluster.owner(self.slot) is self.target, 10,
                   message=f"slot {self.slot} did not move")


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
