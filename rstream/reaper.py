"""The reaper thread's step: failover, this consumer's strays, and its due retries.

Every heartbeat interval (sooner when another consumer is about to cross the dead threshold),
(1) claims the pending entries of consumers idle longer than
`heartbeat_interval * allowed_missed_heartbeats`, page by page, each page only while its owner
still looks dead (checked in the claiming script), and never from a look at XINFO CONSUMERS
that a stall inflated (`failover.verdicts_stale`), (2) removes such consumers once their
pending lists are empty (atomically, by script), and (3) re-delivers this consumer's own
strays: entries pending for it that it does not hold (a read whose reply was lost, an entry put
in its pending list by another client), but not those the server delivered after this
consumer's oldest unadmitted read was sent: they may be in its reply, still on the wire or
waiting for a reader short of CPU (`Ledger.held_and_reading`). Between looks it re-delivers failed entries whose retry
is due, taken from `Settlements`: the same claim path (XCLAIM to itself), with priority for
in-flight slots over new reads.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import List, Optional, Tuple

from .failover import (ConsumerInfo, claim_page, dead_consumers, next_check_ms, next_start,
                       stray_entries, verdicts_stale)
from .events import Events
from .heartbeat import rest_of
from .intake import Intake
from .ledger import Ledger
from .options import Options
from .redisio import StreamOps
from .settlements import Settlements, mono_ms
from .stats import BacklogSample

log = logging.getLogger("rstream")

# Idle times are the server's, in whole milliseconds, against this process's clock: an entry
# delivered into a reply not yet admitted can look this much older than the grant it came in.
IDLE_MARGIN_MS = 50

# A retry's XCLAIM min-idle is the time since its handler finished, less this margin: the
# server's idle time of the entry is at least that, so only another consumer's claim meanwhile
# (which resets it) makes XCLAIM leave the entry where it is.
RETRY_IDLE_MARGIN_MS = 50


class Reaper:
    def __init__(self, ops: StreamOps, options: Options, ledger: Ledger, intake: Intake,
                 settlements: Settlements, stop: threading.Event,
                 replay_done: threading.Event, events: Events, backlog: BacklogSample) -> None:
        self.ops = ops
        self._o = options
        self._ledger = ledger
        self._intake = intake
        self._settlements = settlements
        self._stop = stop
        self._replay_done = replay_done
        self._events = events
        self._backlog = backlog
        self._backlog_refused = False
        self._look_at = 0.0     # monotonic: when to look at XINFO CONSUMERS next
        self._judge_after = 0.0  # monotonic: no dead verdicts before it (after a stall)

    def step(self) -> Optional[float]:
        if time.monotonic() >= self._look_at:
            self._look()
        self._redeliver_due()
        self._settlements.wait_for_retry(self._look_at - time.monotonic())
        return None

    def _look(self) -> None:
        dead_after = self._o.dead_after_ms
        observed_at = time.monotonic()
        consumers, backlog = self.ops.look()
        now = time.monotonic()
        if backlog is not None:
            self._backlog.set(backlog)
        elif not self._backlog_refused:
            self._backlog_refused = True
            log.warning("rstream: the ACL user may not run XINFO STREAM, XINFO GROUPS, XPENDING "
                        "or TIME on %r, so stats() has no pending, lag or oldest pending age "
                        "(see the README's minimal ACL); consuming and failover are unaffected",
                        self._o.stream)
        if verdicts_stale(consumers, self._o.consumer_name, self._o.heartbeat_interval,
                          (now - observed_at) * 1000):
            # This consumer's own beats did not land, or the look took longer than a beat: the
            # server or this process was stalled, and every idle time it shows is inflated by
            # the stall. Judge nobody until each live consumer has had a beat's time to beat.
            self._judge_after = now + self._o.heartbeat_interval / 1000
        if now >= self._judge_after:
            self._reap(dead_consumers(consumers, self._o.consumer_name, dead_after), dead_after)
        # Until the start-up replay is done, this consumer's old entries are not strays.
        if self._replay_done.is_set() and not self._stop.is_set():
            strays, _ = self._claim_all(self._o.consumer_name, dead_after, counter="replayed",
                                        strays=True)
            if strays:
                log.warning("rstream: re-delivered %d of this consumer's own pending entries that "
                            "it no longer held", strays)
        wait_ms = next_check_ms(consumers, self._o.consumer_name, dead_after,
                                self._o.heartbeat_interval)
        if now < self._judge_after:
            wait_ms = min(wait_ms, int((self._judge_after - now) * 1000) + 1)
        self._look_at = time.monotonic() + rest_of(wait_ms / 1000, observed_at)

    def _redeliver_due(self) -> None:
        """Deliver again, to this consumer, the failed entries whose retry is due."""
        while not self._stop.is_set() and self._settlements.retry_due_in_s() == 0:
            with self._ledger.reserve(self._o.batch_size, self._stop, priority=True) as grant:
                due = self._settlements.take_due_retries(grant.size) if grant else []
                if not due:
                    return
                now = mono_ms()
                min_idle = max(0, min(now - item.handled_at_ms for item in due) - RETRY_IDLE_MARGIN_MS)
                attempts = {item.id: item.attempt + 1 for item in due}
                try:
                    self._intake.claim(self.ops, grant, [item.id for item in due], min_idle,
                                       attempts, counter="retried", count_vanished=False)
                except BaseException:
                    for item in due:
                        self._settlements.retry_later(item)
                    raise

    def _reap(self, dead: List[ConsumerInfo], dead_after: int) -> None:
        for consumer in dead:
            claimed, alive = self._claim_all(consumer.name, dead_after, counter="claimed",
                                             strays=False)
            if self._stop.is_set():
                break
            if alive:
                log.info("rstream: consumer %r is alive again (it was idle %d ms); claimed %d of "
                         "its entries before it was back", consumer.name, consumer.idle_ms, claimed)
                continue
            removed = self.ops.delete_consumer_if_empty(consumer.name, dead_after)
            if claimed or removed:
                log.info("rstream: consumer %r is dead (idle %d ms > %d ms): claimed %d entries%s",
                         consumer.name, consumer.idle_ms, dead_after, claimed,
                         ", removed it" if removed else "")
                self._events.emit("consumer_dead", self._o.stream, dead=consumer.name,
                                  idle_ms=consumer.idle_ms, claimed=claimed, removed=removed)

    def _claim_all(self, consumer: str, min_idle_ms: int, counter: str,
                   strays: bool) -> Tuple[int, bool]:
        """Claim `consumer`'s entries idle at least `min_idle_ms`, page by page; from another
        consumer only while it still looks dead. Returns how many were claimed, and True if
        the consumer was found alive again (the rest stays with it). Slots are
        reserved only for entries found, so a tick with nothing to claim never waits for a
        slot nor holds reads back."""
        total = 0
        start = "-"
        while not self._stop.is_set():
            page = self.ops.pending_of(consumer, start, self._o.batch_size, min_idle_ms)
            cursor = next_start(page)
            if strays and page:
                # After the look: a grant open now was taken before any delivery its reply
                # holds, so entries idle less than its age (at the look, at most now) may be in
                # it; the server counts idle in whole milliseconds of its own clock.
                held, reading_since = self._ledger.held_and_reading()
                reading_for_ms = (0.0 if reading_since is None else
                                  (time.monotonic() - reading_since) * 1000 + IDLE_MARGIN_MS)
                page = stray_entries(page, held, reading_for_ms)
            if page:
                grant = self._ledger.reserve(len(page), self._stop, priority=True)
                if not grant:
                    break
                taken = page[:grant.size]
                ids, attempts, min_idle = claim_page(taken)
                claimed = self._intake.claim(self.ops, grant, ids, min_idle, attempts,
                                             counter=counter, count_vanished=not strays,
                                             dead=None if strays else consumer)
                if claimed is None:
                    return total, True
                total += claimed
                if len(taken) < len(page):
                    cursor = next_start(taken)  # fewer slots than entries: go on after these
            if cursor is None:
                break
            start = cursor
        return total, False
