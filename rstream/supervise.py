"""The loop every rstream thread runs, with the fault handling in one place (ARCHITECTURE.md, Faults).

A thread is a `step` called until its stop event is set; the step does one read/decide/write
round and returns how long to wait before the next one. Faults are handled here:
- server unreachable, or refusing writes for want of memory (OOM): capped exponential backoff
  with jitter; the outage is logged once at WARNING by whichever thread sees it first, and its
  end once at INFO;
- NOGROUP: the group is created again (the thread's `recover`), logged, and the loop goes on;
- stream missing with make_stream=False: wait with backoff until it exists;
- fatal errors (wrong type, auth, ACL, TLS misconfiguration) and any `ConfigError`: reported to
  the owner, which stops the consumer.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from .backoff import Backoff
from .connection import Link
from .events import Events
from .errors import (ConfigError, FatalRedisError, GroupMissing, RedisOutOfMemory, RedisUnavailable,
                     StreamMissing)
from .stats import Counters

log = logging.getLogger("rstream")

Step = Callable[[], Optional[float]]
# How long a thread whose connection was shut at the stop deadline gets to notice and end.
ABORT_JOIN_S = 0.2


class Health:
    """Shared outage state, so an outage is logged once, not once per thread.

    An outage (or a wait for a missing stream) ends only on evidence: a reply read after it
    began (`Link.ok_at`). A step that sent nothing, like the acker's with nothing to settle,
    proves nothing; ending the outage on it made every outage log as several.
    """

    def __init__(self, counters: Counters, where: str, events: Optional[Events] = None) -> None:
        self._lock = threading.Lock()
        self._down_since: Optional[float] = None
        self._waiting_since: Optional[float] = None
        self._stream_seen_at = 0.0  # the reply that ended the last wait for the stream
        self._up_at = 0.0           # when the last outage ended (monotonic)
        self._out_of_memory = False  # the outage is an OOM refusal, not a lost connection
        self._counters = counters
        self._where = where
        self._events = events

    def down(self, exc: BaseException, ok_at: Optional[float] = None) -> None:
        """A step failed to reach the server. `ok_at` is when its link last read a reply: if
        that was before the last outage ended, the link simply had not been used since (its
        old connection died with that outage), so this is no new outage."""
        with self._lock:
            if self._down_since is not None:
                return
            if ok_at is not None and ok_at < self._up_at:
                return
            self._down_since = time.monotonic()
            self._out_of_memory = isinstance(exc, RedisOutOfMemory)
        self._counters.add(outages=1)
        if self._events is not None:
            self._events.emit("outage", None, server=self._where, error=str(exc),
                              out_of_memory=self._out_of_memory)
        if self._out_of_memory:
            log.warning("rstream: Redis at %s refuses writes: out of memory (%s); retrying with "
                        "backoff", self._where, exc)
        else:
            log.warning("rstream: Redis at %s unreachable (%s); retrying with backoff", self._where, exc)

    def up(self, ok_at: Optional[float] = None, proves_stream: bool = True) -> None:
        """A step succeeded; `ok_at` is when its link last read a reply (None: trust the step).
        `proves_stream` is False for steps that succeed on a missing stream too (XACK)."""
        if self._down_since is None and self._waiting_since is None:
            return
        with self._lock:
            since, waited = self._down_since, self._waiting_since
            out_of_memory = self._out_of_memory
            if since is not None and (ok_at is None or ok_at > since):
                self._down_since = None
                self._up_at = time.monotonic()
            else:
                since = None
            if waited is not None and proves_stream and (ok_at is None or ok_at > waited):
                self._waiting_since = None
                self._stream_seen_at = ok_at or time.monotonic()
            else:
                waited = None
        if since is not None:
            down_s = time.monotonic() - since
            log.info("rstream: Redis at %s %s again after %.1f s", self._where,
                     "accepts writes" if out_of_memory else "reachable", down_s)
            if self._events is not None:
                self._events.emit("recovered", None, server=self._where, down_s=round(down_s, 3))
        if waited is not None:
            log.info("rstream: the stream exists now; consuming")

    def stream_missing(self, exc: BaseException, seen_at: Optional[float] = None) -> None:
        """The stream is missing, as a reply read at `seen_at` said. A reply older than the
        one that ended the last wait is stale news (another thread saw the stream since)."""
        with self._lock:
            if seen_at is not None and seen_at < self._stream_seen_at:
                return
            first = self._waiting_since is None
            if first:
                self._waiting_since = time.monotonic()
        if first:
            log.warning("rstream: %s; waiting for it to be created", exc)


class Loop:
    """A named thread running `step` until `stop` is set."""

    def __init__(self, name: str, step: Step, stop: threading.Event, health: Health,
                 recover: Callable[[], None], on_fatal: Callable[[FatalRedisError], None],
                 link: Optional[Link] = None) -> None:
        self.name = name
        self.stop = stop
        self._step = step
        self._health = health
        self._recover = recover
        self._on_fatal = on_fatal
        self._link = link  # the step's connection: its replies are the evidence of health
        # False for a step whose commands succeed on a missing stream (XACK answers 0): its
        # success must not end a wait for the stream.
        self.proves_stream = True
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, deadline: float) -> bool:
        """Wait for the thread until `deadline` (monotonic). One still blocked on the network
        then has its connection shut, so it ends at once and never uses the link again."""
        self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive() and self._link is not None:
            self._link.abort()
            self.thread.join(ABORT_JOIN_S)
        return not self.thread.is_alive()

    def _run(self) -> None:
        backoff = Backoff()
        while not self.stop.is_set():
            try:
                wait = self._attempt()
                if backoff.failures:
                    backoff = backoff.reset()
            except (RedisUnavailable, StreamMissing) as exc:
                if self.stop.is_set():
                    return
                if isinstance(exc, StreamMissing):
                    self._health.stream_missing(exc, self._link.ok_at if self._link else None)
                else:
                    self._health.down(exc, self._link.ok_at if self._link else None)
                wait, backoff = backoff.delay(), backoff.failed()
            except FatalRedisError as exc:
                self._on_fatal(exc)
                return
            except ConfigError as exc:  # the link's configuration cannot work: retrying won't help
                fatal = FatalRedisError(str(exc))
                fatal.__cause__ = exc
                self._on_fatal(fatal)
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
            # Every thread sees it, on every retry while the stream is missing: the one warning
            # is the consumer's, logged when the group is actually created again.
            log.debug("rstream: %s (%s); creating the consumer group again", self.name, exc)
            self._recover()
            return None
        self._health.up(self._link.ok_at if self._link is not None else None, self.proves_stream)
        return wait
