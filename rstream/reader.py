"""The reader thread: replays this consumer's own pending entries, then reads new ones.

Reads block on the server for up to `receive_interval`, so a new entry arrives at once. While
entries flow, the next read is sent before the current batch is delivered (the server prepares
the next reply while this process decodes and dispatches), and acks ride in the same write.
"""
from __future__ import annotations

import collections
import threading
from typing import Deque, Optional, Tuple

from .acker import Acker
from .dispatch import Ledger
from .intake import Intake
from .options import Options
from .redisio import StreamOps
from .settle import SettleBatch


# Reads kept outstanding while entries flow (slots permitting, see max_in_flight).
PIPELINE_DEPTH = 2


class Reader:
    def __init__(self, ops: StreamOps, options: Options, ledger: Ledger, acker: Acker,
                 intake: Intake, stop: threading.Event) -> None:
        self.ops = ops
        self._o = options
        self._ledger = ledger
        self._acker = acker
        self._intake = intake
        self._stop = stop
        self.replay_done = threading.Event()
        self._after = "0"
        # The last id a read of new entries returned (or where the group started): a group
        # that has to be created again resumes after it, so nothing added meanwhile is skipped.
        self.last_seen = ""
        self._flowing = False  # the last read came back full: more entries are waiting
        # Reads sent and not yet collected, oldest first: (reserved, batch, replies).
        self._out: Deque[Tuple[int, SettleBatch, int]] = collections.deque()

    def step(self) -> Optional[float]:
        if not self.replay_done.is_set():
            self._replay_page()
        else:
            self._read_new()
        return None

    def _replay_page(self) -> None:
        reserved = self._ledger.reserve(self._o.batch_size, self._stop)
        if not reserved:
            return
        try:
            (messages, deleted), after = self.ops.read_own_page(self._after, reserved)
        except BaseException:
            self._ledger.admit(reserved, (), 0)
            raise
        if after == self._after:
            self.replay_done.set()
        self._after = after
        self._intake.deliver(reserved, messages, deleted, counter="replayed")

    def _read_new(self) -> None:
        if not self._out:
            # After a short read this one may block: acks then stay with the acker thread
            # rather than wait up to receive_interval for this read's reply.
            self._send(self._ledger.reserve(self._o.batch_size, self._stop), flowing=self._flowing)
            if not self._out:
                return
        reserved, batch, replies = self._out.popleft()
        try:
            self._acker.sent(batch, self.ops.finish_settle(batch, replies))
        except BaseException:
            self._ledger.admit(reserved, (), 0)
            self._acker.restore(batch)
            raise
        try:
            messages, deleted = self.ops.finish_read()
        except BaseException:
            self._ledger.admit(reserved, (), 0)
            raise
        if messages:
            self.last_seen = messages[-1].id
        self._flowing = len(messages) + len(deleted) >= reserved
        self._acker.set_reader_flowing(self._flowing)
        try:
            # A full batch: more is waiting. Keep reads queued on the server while this one is
            # delivered, so it never waits for this process between two replies.
            while self._flowing and len(self._out) < PIPELINE_DEPTH:
                granted = self._ledger.reserve(self._o.batch_size, self._stop, wait_s=0)
                if not granted:
                    break
                self._send(granted, flowing=True)
        finally:
            self._intake.deliver(reserved, messages, deleted)

    def _send(self, reserved: int, flowing: bool) -> None:
        """Send a read. While entries flow it carries the waiting acks and does not BLOCK: a
        blocked read would hold up every command queued behind it on this connection. After
        a short read it BLOCKs for new entries, and acks stay with the acker thread."""
        if not reserved:
            return
        batch = self._acker.take_for_send() if flowing else SettleBatch()
        try:
            replies = self.ops.send_read(batch, reserved, None if flowing else self._o.receive_interval)
        except BaseException:
            self._ledger.admit(reserved, (), 0)
            self._acker.restore(batch)
            raise
        self._out.append((reserved, batch, replies))

    def abandon(self) -> None:
        """Release the reservations of reads that will never be collected (at stop)."""
        while self._out:
            reserved, batch, _ = self._out.popleft()
            self._ledger.admit(reserved, (), 0)
            self._acker.restore(batch)
