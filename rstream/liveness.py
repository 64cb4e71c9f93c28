"""The heartbeat and reaper threads' steps (SPEC section 5).

Heartbeat: a history read past the last possible id returns nothing but resets this consumer's
idle time in XINFO CONSUMERS, so liveness is kept by the server's clock with no extra keys.

Reaper: every heartbeat interval (sooner when another consumer is about to cross the dead
threshold), (1) claims the pending entries of consumers idle longer than
`heartbeat_interval * allowed_missed_heartbeats`, page by page, (2) removes such consumers once
their pending lists are empty (atomically, by script), and (3) re-delivers this consumer's own
strays: entries pending for it that it does not hold (a read whose reply was lost, an entry put
in its pending list by another client).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from .dispatch import Ledger
from .failover import claim_page, dead_consumers, next_check_ms, next_start, stray_entries
from .intake import Intake
from .options import Options
from .redisio import StreamOps

log = logging.getLogger("rstream")


# Shortest wait between two steps, so that a late step never turns into a busy loop.
MIN_WAIT_S = 0.001


def _rest_of(period_s: float, started: float) -> float:
    """What remains of a period that began at `started` (monotonic): steps keep a fixed rate
    instead of drifting by their own duration, which would eat into the dead threshold."""
    return max(MIN_WAIT_S, period_s - (time.monotonic() - started))


class Heartbeat:
    def __init__(self, ops: StreamOps, options: Options) -> None:
        self.ops = ops
        self._interval_s = options.heartbeat_interval / 1000

    def step(self) -> Optional[float]:
        started = time.monotonic()
        self.ops.heartbeat()
        return _rest_of(self._interval_s, started)


class Reaper:
    def __init__(self, ops: StreamOps, options: Options, ledger: Ledger, intake: Intake,
                 stop: threading.Event, replay_done: threading.Event) -> None:
        self.ops = ops
        self._o = options
        self._ledger = ledger
        self._intake = intake
        self._stop = stop
        self._replay_done = replay_done

    def step(self) -> Optional[float]:
        dead_after = self._o.dead_after_ms
        observed_at = time.monotonic()
        consumers = self.ops.consumers()
        for consumer in dead_consumers(consumers, self._o.consumer_name, dead_after):
            claimed = self._claim_all(consumer.name, dead_after, counter="claimed", strays=False)
            if self._stop.is_set():
                break
            removed = self.ops.delete_consumer_if_empty(consumer.name, dead_after)
            if claimed or removed:
                log.info("rstream: consumer %r is dead (idle %d ms > %d ms): claimed %d entries%s",
                         consumer.name, consumer.idle_ms, dead_after, claimed,
                         ", removed it" if removed else "")
        # Until the start-up replay is done, this consumer's old entries are not strays.
        if self._replay_done.is_set() and not self._stop.is_set():
            strays = self._claim_all(self._o.consumer_name, dead_after, counter="replayed", strays=True)
            if strays:
                log.warning("rstream: re-delivered %d of this consumer's own pending entries that "
                            "it no longer held", strays)
        wait_ms = next_check_ms(consumers, self._o.consumer_name, dead_after,
                                self._o.heartbeat_interval)
        return _rest_of(wait_ms / 1000, observed_at)

    def _claim_all(self, consumer: str, min_idle_ms: int, counter: str, strays: bool) -> int:
        """Claim `consumer`'s entries idle at least `min_idle_ms`, page by page. Slots are
        reserved only for entries found, so a tick with nothing to claim never waits for a
        slot nor holds reads back."""
        total = 0
        start = "-"
        while not self._stop.is_set():
            page = self.ops.pending_of(consumer, start, self._o.batch_size, min_idle_ms)
            cursor = next_start(page)
            if strays and page:
                page = stray_entries(page, self._ledger.held())
            if page:
                reserved = self._ledger.reserve(len(page), self._stop, first=True)
                if not reserved:
                    break
                taken = page[:reserved]
                ids, attempts, min_idle = claim_page(taken)
                total += self._intake.claim(self.ops, reserved, ids, min_idle, attempts,
                                            counter=counter, count_vanished=not strays)
                if len(taken) < len(page):
                    cursor = next_start(taken)  # fewer slots than entries: go on after these
            if cursor is None:
                break
            start = cursor
        return total


StepFactory = Callable[[], Optional[float]]
