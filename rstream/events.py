"""Events for users' own telemetry, at the moments rstream's log lines already mark.

``Consumer(..., on_event=callback)`` calls ``callback(event)`` with an `Event` for each of:

==================  =======================================================================
``kind``            when, and what ``details`` holds
==================  =======================================================================
``outage``          the server became unreachable or refuses writes (``server``, ``error``,
                    ``out_of_memory``)
``recovered``       it answers again (``server``, ``down_s``)
``group_recreated`` the consumer group was missing and was created again (``position``,
                    ``reason``: ``resumed`` after the last entry seen, or ``new`` stream)
``consumer_dead``   another consumer was found dead and its entries claimed (``dead``,
                    ``idle_ms``, ``claimed``, ``removed``: whether it left the group)
``dead_lettered``   an entry moved to the dead-letter stream (``id``, ``attempt``, ``error``,
                    ``dead_letter_stream``)
``dropped``         an entry failed its last attempt with no dead-letter stream and was acked
                    (``id``, ``attempt``, ``error``)
``fenced``          a newer process took this consumer's name; this one stops (``by``)
==================  =======================================================================

The callback runs on a thread of its own (``rstream-events``), never on the threads that read,
handle and ack: a slow or failing callback delays nothing and loses nothing but events. An
exception it raises is logged and the next event is delivered. Events wait in a bounded queue
(`QUEUE_LIMIT`); past it the oldest are dropped and counted (logged once per burst).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Deque, Dict, Optional

log = logging.getLogger("rstream")

QUEUE_LIMIT = 10_000
KINDS = ("outage", "recovered", "group_recreated", "consumer_dead", "dead_lettered", "dropped",
         "fenced")


@dataclasses.dataclass(frozen=True)
class Event:
    """Something that happened to a consumer. `at` is unix time in seconds."""

    kind: str
    stream: Optional[str]  # None for the server's events (outage, recovered)
    group: str
    consumer: str
    details: Dict[str, Any]
    at: float


EventHandler = Callable[[Event], None]


class Events:
    """Where rstream's threads report events: queued, and delivered by one thread."""

    def __init__(self, handler: Optional[EventHandler], group: str, consumer: str) -> None:
        self._handler = handler
        self._group = group
        self._consumer = consumer
        self._cond = threading.Condition()
        self._queue: Deque[Event] = collections.deque()
        self._lost = 0
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    def emit(self, kind: str, stream: Optional[str], **details: Any) -> None:
        """Queue an event (nothing at all when no callback was given)."""
        if self._handler is None:
            return
        event = Event(kind, stream, self._group, self._consumer, details, time.time())
        with self._cond:
            if len(self._queue) >= QUEUE_LIMIT:
                self._queue.popleft()
                self._lost += 1
            self._queue.append(event)
            self._cond.notify()

    def start(self) -> None:
        if self._handler is not None and self._thread is None:
            self._thread = threading.Thread(target=self._deliver, name="rstream-events", daemon=True)
            self._thread.start()

    def close(self, deadline: float) -> None:
        """Deliver what is queued (until `deadline`, monotonic), then end the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))

    def _deliver(self) -> None:
        handler = self._handler
        assert handler is not None
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                event = self._queue.popleft()
                lost, self._lost = self._lost, 0
            if lost:
                log.warning("rstream: %d events were dropped: the on_event callback is slower "
                            "than they come", lost)
            try:
                handler(event)
            except Exception:  # noqa: BLE001 - the user's callback must not end the delivery
                log.exception("rstream: the on_event callback raised for a %r event", event.kind)
