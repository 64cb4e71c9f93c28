"""The heartbeat and reaper threads' steps.

Heartbeat: a history read past the last possible id returns nothing but resets this consumer's
idle time in XINFO CONSUMERS, so liveness is kept by the server's clock. With it goes the name
check (`NameFence`): a second live process under this consumer's name fences the older one.

Reaper: every heartbeat interval (sooner when another consumer is about to cross the dead
threshold), (1) claims the pending entries of consumers idle longer than
`heartbeat_interval * allowed_missed_heartbeats`, page by page, each page only while its owner
still looks dead (checked in the claiming script), and never from a look at XINFO CONSUMERS
that a stall inflated (`failover.verdicts_stale`), (2) removes such consumers once
their pending lists are empty (atomically, by script), and (3) re-delivers this consumer's own
strays: entries pending for it that it does not hold (a read whose reply was lost, an entry put
in its pending list by another client).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import List, Optional, Tuple

from .dispatch import Ledger
from .errors import FatalRedisError
from .failover import (ConsumerInfo, claim_page, dead_consumers, next_check_ms, next_start,
                       stray_entries, verdicts_stale)
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


class NameFence:
    """Which process holds this consumer's name. Each instance has its own token; the newest
    instance to start writes it, and an older one that finds another token there stops (as
    Kafka fences an old instance with the same static member id): two processes under one
    name would take each other's entries for their own."""

    def __init__(self, key: str, options: Options) -> None:
        self.key = key
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # Long enough to outlive a stall this instance survives, short enough not to linger.
        self.ttl_ms = 2 * options.dead_after_ms + options.heartbeat_interval
        self.held = False
        self.lost_to: Optional[str] = None
        self.refused = False  # the ACL does not let this user use the key: no fencing

    @property
    def active_key(self) -> Optional[str]:
        return None if self.refused else self.key


class Heartbeat:
    def __init__(self, ops: StreamOps, options: Options, fence: NameFence) -> None:
        self.ops = ops
        self.fence = fence
        self._o = options
        self._interval_s = options.heartbeat_interval / 1000

    def step(self) -> Optional[float]:
        started = time.monotonic()
        self.beat()
        return _rest_of(self._interval_s, started)

    def beat(self) -> None:
        """Reset this consumer's idle time and check that this process still holds its name."""
        fence = self.fence
        if fence.refused:
            self.ops.heartbeat()
            return
        verdict = self.ops.beat_and_fence(fence.key, fence.token, fence.ttl_ms, fence.held)
        if verdict is None:
            fence.refused = True
            log.warning("rstream: the ACL user may not use key %r (GET and SET), so rstream cannot "
                        "check that consumer name %r is used by one process only; see the README's "
                        "minimal ACL", fence.key, self._o.consumer_name)
        elif isinstance(verdict, str):
            fence.lost_to = verdict
            o = self._o
            raise FatalRedisError(
                f"consumer {o.consumer_name!r} of group {o.group!r} on stream {o.stream!r} is "
                f"used by another process started later ({verdict.rsplit(':', 1)[0]}); this one "
                f"({fence.token.rsplit(':', 1)[0]}) stops. Consumer names must be unique among "
                "live consumers: give each process its own name")
        if verdict == 1:
            fence.held = True


class Reaper:
    def __init__(self, ops: StreamOps, options: Options, ledger: Ledger, intake: Intake,
                 stop: threading.Event, replay_done: threading.Event) -> None:
        self.ops = ops
        self._o = options
        self._ledger = ledger
        self._intake = intake
        self._stop = stop
        self._replay_done = replay_done
        self._judge_after = 0.0  # monotonic: no dead verdicts before it (after a stall)

    def step(self) -> Optional[float]:
        dead_after = self._o.dead_after_ms
        observed_at = time.monotonic()
        consumers = self.ops.consumers()
        now = time.monotonic()
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
        return _rest_of(wait_ms / 1000, observed_at)

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
                page = stray_entries(page, self._ledger.held())
            if page:
                reserved = self._ledger.reserve(len(page), self._stop, first=True)
                if not reserved:
                    break
                taken = page[:reserved]
                ids, attempts, min_idle = claim_page(taken)
                claimed = self._intake.claim(self.ops, reserved, ids, min_idle, attempts,
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
