"""The reader thread: replays this consumer's own pending entries, then reads new ones.

Reads block on the server for up to `receive_interval`, so a new entry arrives at once. While
entries flow, the next read is sent before the current batch is delivered (the server prepares
the next reply while this process decodes and dispatches), and acks ride in the same write.
Each read holds a `Grant` of in-flight slots from the moment it is sent until its reply is
delivered or it fails; a grant closes on every path (see `rstream.ledger`).
"""
from __future__ import annotations

import collections
import threading
from typing import Deque, Optional, Tuple

from .group import Position
from .intake import Intake
from .ledger import Grant, Ledger
from .options import Options
from .redisio import EMPTY_PLAN, SettlePlan, StreamOps
from .settle import SettleBatch
from .settlements import Settlements

# Reads kept outstanding while entries flow (slots permitting, see max_in_flight).
PIPELINE_DEPTH = 2


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
        # Reads sent and not yet collected, oldest first, with the acks each carried.
        self._out: Deque[Tuple[Grant, SettleBatch, SettlePlan]] = collections.deque()

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
        grant, batch, plan = self._out.popleft()
        with grant:
            try:
                result = self.ops.finish_settle(plan)
            except BaseException:
                self._settlements.restore(batch)
                raise
            self._settlements.settled(batch, result)
            messages, deleted = self.ops.finish_read()
            if messages:
                self._position.last_seen = messages[-1].id
            self._flowing = len(messages) + len(deleted) >= grant.size
            self._settlements.set_reader_flowing(self._flowing)
            try:
                # A full batch: more is waiting. Keep reads queued on the server while this one
                # is delivered, so it never waits for this process between two replies.
                while self._flowing and len(self._out) < PIPELINE_DEPTH:
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
        self._out.append((grant, batch, plan))

    def abandon(self) -> None:
        """Release the grants of reads that will never be collected (at stop)."""
        while self._out:
            grant, batch, _ = self._out.popleft()
            grant.close()
            self._settlements.restore(batch)
