"""The heartbeat thread's step, and the check that this process still holds its name.

Heartbeat: a history read past the last possible id returns nothing but resets this consumer's
idle time in XINFO CONSUMERS, so liveness is kept by the server's clock (no clock sync between
hosts). With it, in the same round trip, goes the name check (`NameFence`): a second live
process under this consumer's name fences the older one.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Optional

from .errors import FatalRedisError
from .events import Events
from .options import Options
from .redisio import StreamOps

log = logging.getLogger("rstream")


# Shortest wait between two steps, so that a late step never turns into a busy loop.
MIN_WAIT_S = 0.001


def rest_of(period_s: float, started: float) -> float:
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
    def __init__(self, ops: StreamOps, options: Options, fence: NameFence, events: Events) -> None:
        self.ops = ops
        self.fence = fence
        self._events = events
        self._o = options
        self._interval_s = options.heartbeat_interval / 1000

    def step(self) -> Optional[float]:
        started = time.monotonic()
        self.beat()
        return rest_of(self._interval_s, started)

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
            self._events.emit("fenced", o.stream, by=verdict.rsplit(":", 1)[0])
            raise FatalRedisError(
                f"consumer {o.consumer_name!r} of group {o.group!r} on stream {o.stream!r} is "
                f"used by another process started later ({verdict.rsplit(':', 1)[0]}); this one "
                f"({fence.token.rsplit(':', 1)[0]}) stops. Consumer names must be unique among "
                "live consumers: give each process its own name")
        if verdict == 1:
            fence.held = True
