"""The reader thread: replays this consumer's own pending entries, then reads new ones.

Reads block on the server for up to `receive_interval`, so a new entry arrives at once. While
entries flow, the next read is sent before the current batch is delivered (the server prepares
the next reply while this process decodes and dispatches), and acks ride in the same write.
Each read holds a `Grant` of in-flight slots from the moment it is sent until its reply is
delivered or it fails; a grant closes on every path (see `rstream.ledger`).

How many reads stay outstanding: two on a near link (the server prepares the next reply while
this process decodes and dispatches the current one), and on a far link enough to cover the
round trip, one read per `READ_SPACING_S` of it (`pipeline_depth`): a batch of 500 takes one
to two milliseconds to decode and hand over, so replies arriving that often keep the reader
busy instead of waiting on the network (40 ms of round trip: 27 reads, 13,500 entries on the
wire, 330k entries/s at most). A link under `FAR_LINK_S` keeps two: two reads of 500 per round
trip still carry 100k entries/s at 10 ms, and a read's time also holds this process's own work
on the reads before it, several ms on a loaded machine, which must not pass for distance.
The round trip is the fastest of the recent non-blocking reads (queueing on either side only
makes a read slower). Slots bound it all: a read needs free in-flight slots, so the depth a
far link gets is at most `max_in_flight / batch_size` reads. Without an explicit
`max_in_flight` the window follows the depth (`window`): four batches on a near link, as many
as the reads outstanding plus two on a far one, up to `MAX_AUTO_WINDOW_BATCHES`; a given
`max_in_flight` is kept as it is.
"""
from __future__ import annotations

import collections
import math
import threading
import time
from typing import Deque, Optional, Tuple

from .group import Position
from .intake import Intake
from .ledger import Grant, Ledger
from .options import Options
from .redisio import EMPTY_PLAN, SettlePlan, StreamOps
from .settle import SettleBatch
from .settlements import Settlements

# Reads kept outstanding while entries flow on a near link (slots permitting, see max_in_flight).
PIPELINE_DEPTH = 2
# On a far link (a round trip of FAR_LINK_S or more), one read outstanding per READ_SPACING_S
# of round trip, up to MAX_PIPELINE_DEPTH.
FAR_LINK_S = 0.010
READ_SPACING_S = 0.0015
MAX_PIPELINE_DEPTH = 256
# The round trip is the fastest of this many recent non-blocking reads.
RTT_WINDOW = 32


# Without max_in_flight, a far link's window grows to at most this many batches (16,000 entries
# with the default batch_size: a bounded read-ahead, whatever the round trip).
MAX_AUTO_WINDOW_BATCHES = 32


def window(options: Options, depth: int) -> int:
    """The in-flight window for this pipeline depth: `max_in_flight` when given, else the
    default (four batches) or, on a far link, room for every read outstanding plus the batch
    being decoded and the one being handled."""
    if options.max_in_flight is not None:
        return options.max_in_flight
    batches = min(MAX_AUTO_WINDOW_BATCHES, depth + 2)
    return max(options.in_flight_limit, batches * options.batch_size)


def pipeline_depth(round_trip_s: Optional[float]) -> int:
    """Reads to keep outstanding for a link with this round trip (None: not measured yet)."""
    if round_trip_s is None or round_trip_s < FAR_LINK_S:
        return PIPELINE_DEPTH
    return max(PIPELINE_DEPTH, min(MAX_PIPELINE_DEPTH, math.ceil(round_trip_s / READ_SPACING_S)))


class Reader:
    def __init__(self, ops: StreamOps, options: Options, ledger: Ledger, settlements: Settlements,
                 intake: Intake, position: Position, stop: threading.Event) -> None:
        self.ops = ops
        self._o = options
        self._ledger = ledger
        self._settlements = settlements
        self._intake = intake
        self._stop = stop
        self.replay_done = threading.Event()
        self._after = "0"
        self._position = position  # the last id read of new entries (see rstream.group)
        self._flowing = False  # the last read came back full: more entries are waiting
        # Reads sent and not yet collected, oldest first, with the acks each carried and when
        # each was sent (None for a blocking read, whose time says nothing of the link).
        self._out: Deque[Tuple[Grant, SettleBatch, SettlePlan, Optional[float]]] = collections.deque()
        self._round_trips: Deque[float] = collections.deque(maxlen=RTT_WINDOW)
        self._depth = PIPELINE_DEPTH

    @property
    def depth(self) -> int:
        """Reads kept outstanding while entries flow, as the link's round trip asks."""
        return self._depth

    @property
    def reads_out(self) -> int:
        """Reads sent and not yet collected (for tests of the pipelining)."""
        return len(self._out)

    def step(self) -> Optional[float]:
        if not self.replay_done.is_set():
            self._replay_page()
        else:
            self._read_new()
        return None

    def _replay_page(self) -> None:
        with self._ledger.reserve(self._o.batch_size, self._stop) as grant:
            if not grant:
                return
            (messages, deleted), after = self.ops.read_own_page(self._after, grant.size)
            if after == self._after:
                self.replay_done.set()
            self._after = after
            self._intake.deliver(grant, messages, deleted, counter="replayed")

    def _read_new(self) -> None:
        if not self._out:
            # After a short read this one may block: acks then stay with the acker thread
            # rather than wait up to receive_interval for this read's reply.
            self._send(self._ledger.reserve(self._o.batch_size, self._stop), flowing=self._flowing)
            if not self._out:
                return
        grant, batch, plan, sent_at = self._out.popleft()
        with grant:
            try:
                result = self.ops.finish_settle(plan)
            except BaseException:
                self._settlements.restore(batch)
                raise
            self._settlements.settled(batch, result)
            messages, deleted = self.ops.finish_read()
            if sent_at is not None:
                self._round_trips.append(time.monotonic() - sent_at)
                self._depth = pipeline_depth(min(self._round_trips))
                self._ledger.resize(window(self._o, self._depth))
            if messages:
                self._position.last_seen = messages[-1].id
            self._flowing = len(messages) + len(deleted) >= grant.size
            self._settlements.set_reader_flowing(self._flowing)
            try:
                # A full batch: more is waiting. Keep reads queued on the server while this one
                # is delivered, so it never waits for this process between two replies.
                while self._flowing and len(self._out) < self._depth:
                    more = self._ledger.reserve(self._o.batch_size, self._stop, wait_s=0)
                    if not more:
                        break
                    self._send(more, flowing=True)
            finally:
                self._intake.deliver(grant, messages, deleted)

    def _send(self, grant: Grant, flowing: bool) -> None:
        """Send a read. While entries flow it carries the waiting acks and does not BLOCK: a
        blocked read would hold up every command queued behind it on this connection. After
        a short read it BLOCKs for new entries, and acks stay with the acker thread."""
        if not grant:
            return
        batch = self._settlements.take_for_read() if flowing else SettleBatch()
        try:
            plan = self.ops.plan(batch) if batch else EMPTY_PLAN
            self.ops.send_read(plan, grant.size, None if flowing else self._o.receive_interval)
        except BaseException:
            grant.close()
            self._settlements.restore(batch)
            raise
        self._out.append((grant, batch, plan, time.monotonic() if flowing else None))

    def abandon(self) -> None:
        """Release the grants of reads that will never be collected (at stop)."""
        while self._out:
            grant, batch, _, _ = self._out.popleft()
            grant.close()
            self._settlements.restore(batch)
