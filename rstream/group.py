"""Where the consumer group starts, and where it resumes when it has to be created again.

No entry added after `start()` returned may be skipped. So `group_start_id` applies only to
the first creation, on a stream that exists at start; a group made when a missing stream
appears starts at 0 (the stream is new: every entry in it is); a group lost while running
(destroyed, its stream deleted or flushed, a restart without persistence) resumes after the
last id this consumer saw if the stream survived, else at 0. The check and the creation are one
script (`rstream.scripts.ENSURE_GROUP`).
"""
from __future__ import annotations

import logging
import threading

from . import _hotpath as hot
from .errors import StreamMissing
from .events import Events
from .options import Options
from .redisio import StreamOps
from .stats import Counters

log = logging.getLogger("rstream")


class Position:
    """The last id this consumer read of new entries, or where its group started. The reader
    moves it on; `GroupKeeper` resumes a re-created group after it."""

    def __init__(self) -> None:
        self.last_seen = ""


class GroupKeeper:
    """Finds or creates the group; every thread calls `ensure` on NOGROUP (with its own ops)."""

    def __init__(self, options: Options, counters: Counters, position: Position,
                 events: Events) -> None:
        self._o = options
        self._counters = counters
        self._events = events
        self._position = position
        self._lock = threading.Lock()
        self._seen = False            # the group was created or found once
        self._stream_was_missing = False  # at the first creation: the stream is new to us

    def ensure(self, ops: StreamOps, at_start: bool = False) -> None:
        o, position = self._o, self._position
        with self._lock:
            existed, missing_before = self._seen, self._stream_was_missing
        if existed:
            start_id, resume = "0", position.last_seen or "0-0"
        else:
            start_id, resume = ("0" if missing_before else o.group_start_id), ""
        try:
            state = ops.ensure_group(start_id, resume)
        except StreamMissing:
            with self._lock:
                self._stream_was_missing = self._stream_was_missing or not existed
            raise
        with self._lock:
            self._seen = True
        if state.status == "created":
            position.last_seen = state.position
            if existed and not at_start:
                self._counters.add(group_recreated=1)
                why = ("after the last entry this consumer saw, as the stream survived"
                       if state.reason == "resumed" else "at 0: the stream is new")
                log.warning("rstream: consumer group %r on %r was missing and has been created "
                            "again %s (%s)", o.group, o.stream, why, state.position)
                self._events.emit("group_recreated", o.stream, position=state.position,
                                  reason=state.reason)
            elif missing_before:
                log.info("rstream: stream %r appeared; consumer group %r created at 0, so its "
                         "first entries are delivered", o.stream, o.group)
        elif not position.last_seen or hot.compare_ids(state.position, position.last_seen) > 0:
            # The group is further on than this consumer has read (others read it too): a
            # re-creation resuming there skips nothing this consumer could still get.
            position.last_seen = state.position
