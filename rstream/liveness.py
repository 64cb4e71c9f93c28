"""The heartbeat and reaper threads' steps (SPEC section 5).

Heartbeat: a history read past the last possible id returns nothing but resets this consumer's
idle time in XINFO CONSUMERS, so liveness is kept by the server's clock with no extra keys.

Reaper: every heartbeat interval, (1) claims the pending entries of consumers idle longer than
`heartbeat_interval * allowed_missed_heartbeats`, page by page, (2) removes such consumers once
their pending lists are empty (atomically, by script), and (3) re-delivers this consumer's own
strays: entries pending for it that it does not hold (a read whose reply was lost, an entry put
in its pending list by another client).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

from .dispatch import Ledger
from .failover import claim_page, dead_consumers, next_start, stray_entries
from .intake import Intake
from .options import Options
from .redisio import StreamOps

log = logging.getLogger("rstream")


class Heartbeat:
    def __init__(self, ops: StreamOps, options: Options) -> None:
        self.ops = ops
        self._interval_s = options.heartbeat_interval / 1000

    def step(self) -> Optional[float]:
        self.ops.heartbeat()
        return self._interval_s


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
        for consumer in dead_consumers(self.ops.consumers(), self._o.consumer_name, dead_after):
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
        return self._o.heartbeat_interval / 1000

    def _claim_all(self, consumer: str, min_idle_ms: int, counter: str, strays: bool) -> int:
        """Claim `consumer`'s entries idle at least `min_idle_ms`, page by page."""
        total = 0
        start = "-"
        while not self._stop.is_set():
            reserved = self._ledger.reserve(self._o.batch_size, self._stop)
            if not reserved:
                break
            try:
                page = self.ops.pending_of(consumer, start, reserved, min_idle_ms)
            except BaseException:
                self._ledger.admit(reserved, (), 0)
                raise
            cursor = next_start(page)
            if strays:
                page = stray_entries(page, self._ledger.held())
            ids, attempts, min_idle = claim_page(page)
            if ids:
                total += self._intake.claim(self.ops, reserved, ids, min_idle, attempts,
                                            counter=counter, count_vanished=not strays)
            else:
                self._ledger.admit(reserved, (), 0)
            if cursor is None:
                break
            start = cursor
        return total


StepFactory = Callable[[], Optional[float]]
