"""Counters shared by rstream's threads, and the frozen snapshot `Consumer.stats()` returns."""
from __future__ import annotations

import dataclasses
import threading
from typing import Dict


@dataclasses.dataclass(frozen=True)
class Stats:
    """A snapshot of one consumer's counters (entries, since start)."""

    delivered: int = 0        # handed to the handler (first deliveries, retries and claims)
    acked: int = 0            # acknowledged by the server (success and settled failures)
    failed: int = 0           # handler raised
    retried: int = 0          # delivered again after configure_ack(retry=True) or a broken handle_failure
    claimed: int = 0          # taken over from dead consumers
    dead_lettered: int = 0    # moved to dead_letter_stream
    dropped: int = 0          # failed on the last attempt with no dead-letter stream: acked and logged
    deleted: int = 0          # pending entries whose stream entry was deleted or trimmed: acked, not handled
    replayed: int = 0         # own pending entries delivered again at start or by the own-pending check
    group_recreated: int = 0  # times the consumer group had to be created again (NOGROUP)
    outages: int = 0          # times the server became unreachable
    in_flight: int = 0        # read, handler not finished yet (its slot is freed when it returns)
    waiting_retries: int = 0  # failed entries waiting for their retry


_COUNTERS = tuple(f.name for f in dataclasses.fields(Stats) if f.name not in ("in_flight", "waiting_retries"))


class Counters:
    """Thread-safe monotonic counters; threads add per batch, not per entry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Dict[str, int] = dict.fromkeys(_COUNTERS, 0)

    def add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self._values[name] += amount

    def get(self, name: str) -> int:
        return self._values[name]

    def snapshot(self, in_flight: int, waiting_retries: int) -> Stats:
        with self._lock:
            return Stats(in_flight=in_flight, waiting_retries=waiting_retries, **self._values)
