"""Counters shared by rstream's threads, the backlog the reaper samples, and the frozen
snapshot `Consumer.stats()` returns."""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Dict, Optional, Sequence


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
    # The group on the server, as the reaper last saw it (every heartbeat_interval; None until
    # the first look, or when the server cannot say): see `Backlog`.
    pending: Optional[int] = None                # delivered to the group and not acked (all consumers)
    lag: Optional[int] = None                    # entries not yet delivered to the group
    oldest_pending_age_ms: Optional[int] = None  # age of the oldest pending entry (server clock)
    sampled_age_ms: Optional[int] = None         # how long ago that look was


@dataclasses.dataclass(frozen=True)
class Backlog:
    """One look at a stream's group: `pending` (XPENDING), `lag` (XINFO GROUPS; derived on
    Redis 6.2 where exact, else None) and the age of the oldest pending entry (server TIME
    minus its id's time). See `rstream.inspection` for how each is read."""

    pending: int
    lag: Optional[int]
    oldest_pending_age_ms: Optional[int]
    at: float = dataclasses.field(default_factory=time.monotonic)


class BacklogSample:
    """The latest `Backlog` of one stream: written by its reaper, read by `stats()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: Optional[Backlog] = None

    def set(self, value: Backlog) -> None:
        with self._lock:
            self._value = value

    def get(self) -> Optional[Backlog]:
        with self._lock:
            return self._value


_GAUGES = ("in_flight", "waiting_retries", "pending", "lag", "oldest_pending_age_ms", "sampled_age_ms")
_COUNTERS = tuple(f.name for f in dataclasses.fields(Stats) if f.name not in _GAUGES)


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

    def values(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._values)


def snapshot(counters: Sequence[Counters], in_flight: int, waiting_retries: int,
             backlogs: Sequence[Optional[Backlog]]) -> Stats:
    """The sum of `counters`, with the gauges; over several streams, `pending` and `lag` are
    sums (None if any stream's is unknown) and the oldest age and the sample's age the largest."""
    totals = dict.fromkeys(_COUNTERS, 0)
    for c in counters:
        for name, value in c.values().items():
            totals[name] += value
    known = [b for b in backlogs if b is not None]
    complete = bool(backlogs) and len(known) == len(backlogs)
    lags = [b.lag for b in known]
    ages = [b.oldest_pending_age_ms for b in known if b.oldest_pending_age_ms is not None]
    now = time.monotonic()
    return Stats(
        in_flight=in_flight, waiting_retries=waiting_retries,
        pending=sum(b.pending for b in known) if complete else None,
        lag=sum(lag for lag in lags if lag is not None) if complete and None not in lags else None,
        oldest_pending_age_ms=max(ages) if complete and ages else None,
        sampled_age_ms=int(max(now - b.at for b in known) * 1000) if complete else None,
        **totals)
