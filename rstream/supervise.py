"""The loop every rstream thread runs, with the fault handling of SPEC section 6 in one place.

A thread is a `step` called until its stop event is set; the step does one read/decide/write
round and returns how long to wait before the next one. Faults are handled here:
- server unreachable: capped exponential backoff with jitter; the outage is logged once at
  WARNING by whichever thread sees it first, and its end once at INFO;
- NOGROUP: the group is created again (the thread's `recover`), logged, and the loop goes on;
- stream missing with make_stream=False: wait with backoff until it exists;
- fatal errors (wrong type, auth, ACL): reported to the owner, which stops the consumer.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from .backoff import Backoff
from .errors import FatalRedisError, GroupMissing, RedisUnavailable, StreamMissing
from .stats import Counters

log = logging.getLogger("rstream")

Step = Callable[[], Optional[float]]


class Health:
    """Shared outage state, so an outage is logged once, not once per thread."""

    def __init__(self, counters: Counters, where: str) -> None:
        self._lock = threading.Lock()
        self._down_since: Optional[float] = None
        self._waiting_for_stream = False
        self._counters = counters
        self._where = where

    def down(self, exc: BaseException) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        self._counters.add(outages=1)
        log.warning("rstream: Redis at %s unreachable (%s); retrying with backoff", self._where, exc)

    def up(self) -> None:
        if self._down_since is None and not self._waiting_for_stream:
            return
        with self._lock:
            since, self._down_since = self._down_since, None
            waited, self._waiting_for_stream = self._waiting_for_stream, False
        if since is not None:
            log.info("rstream: Redis at %s reachable again after %.1f s", self._where,
                     time.monotonic() - since)
        if waited:
            log.info("rstream: the stream exists now; consuming")

    def stream_missing(self, exc: BaseException) -> None:
        with self._lock:
            first, self._waiting_for_stream = not self._waiting_for_stream, True
        if first:
            log.warning("rstream: %s; waiting for it to be created", exc)


class Loop:
    """A named thread running `step` until `stop` is set."""

    def __init__(self, name: str, step: Step, stop: threading.Event, health: Health,
                 recover: Callable[[], None], on_fatal: Callable[[FatalRedisError], None]) -> None:
        self.name = name
        self.stop = stop
        self._step = step
        self._health = health
        self._recover = recover
        self._on_fatal = on_fatal
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, deadline: float) -> bool:
        self.thread.join(max(0.0, deadline - time.monotonic()))
        return not self.thread.is_alive()

    def _run(self) -> None:
        backoff = Backoff()
        while not self.stop.is_set():
            try:
                wait = self._attempt()
                backoff = backoff.reset()
            except (RedisUnavailable, StreamMissing) as exc:
                if self.stop.is_set():
                    return
                if isinstance(exc, StreamMissing):
                    self._health.stream_missing(exc)
                else:
                    self._health.down(exc)
                wait, backoff = backoff.delay(), backoff.failed()
            except FatalRedisError as exc:
                self._on_fatal(exc)
                return
            except Exception:  # a bug in rstream: log it, back off, never crash-loop silently
                log.exception("rstream: unexpected error in %s", self.name)
                wait, backoff = backoff.delay(), backoff.failed()
            if wait:
                self.stop.wait(wait)

    def _attempt(self) -> Optional[float]:
        try:
            wait = self._step()
        except GroupMissing as exc:
            log.warning("rstream: %s (%s); creating the consumer group again", self.name, exc)
            self._recover()
            return None
        self._health.up()
        return wait
