"""The one way entries enter the pipeline: from reads, replays, claims and retries."""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Sequence

from .dispatch import Ledger, WorkerPool
from .errors import RStreamError
from .failover import missing_ids
from .message import Message
from .redisio import StreamOps
from .stats import Counters

log = logging.getLogger("rstream")


class Intake:
    """Admits entries to the ledger, hands them to the pool, and sends deleted ones to be acked."""

    def __init__(self, ledger: Ledger, pool: WorkerPool, counters: Counters,
                 ack_deleted: Callable[[List[str]], None], me: str) -> None:
        self._ledger = ledger
        self._pool = pool
        self._counters = counters
        self._ack_deleted = ack_deleted
        self._me = me
        self._closed = False

    def close(self) -> None:
        """Stop admitting entries (at stop): what is read from now on stays pending on the
        server and is replayed at the next start or claimed by another consumer."""
        self._closed = True

    def deliver(self, reserved: int, messages: List[Message], deleted: List[str],
                counter: str = "") -> None:
        """Deliver what a read returned, inside a reservation of `reserved` ledger slots.
        Deleted entries (no fields: the stream entry was deleted or trimmed) are acked, never handled."""
        if self._closed:
            self._ledger.admit(reserved, (), 0)
            return
        ids = [m.id for m in messages]
        self._ledger.admit(reserved, ids, len(messages))
        amounts = {"delivered": len(messages)}
        if counter:
            amounts[counter] = len(messages)
        if deleted:
            self._ledger.hold(deleted)
            self._ack_deleted(deleted)
            amounts["deleted"] = len(deleted)
        self._counters.add(**amounts)
        self._pool.submit(messages)

    def claim(self, ops: StreamOps, reserved: int, ids: Sequence[str], min_idle_ms: int,
              attempts: Dict[str, int], counter: str, count_vanished: bool) -> int:
        """XCLAIM `ids` into this consumer and deliver them; returns how many were delivered.

        Ids XCLAIM did not return are looked up: still pending here means the entry was deleted
        (Redis 6.2 claims it with no data), so it is acked; pending elsewhere means another
        consumer won the race; not pending means the server dropped a deleted entry (Redis 7+)
        or someone acked it — counted as deleted when `count_vanished`."""
        try:
            messages, deleted = ops.claim(ids, min_idle_ms, attempts)
        except BaseException:
            self._ledger.admit(reserved, (), 0)
            raise
        returned = {m.id for m in messages}
        returned.update(deleted)
        missing = missing_ids(ids, returned)
        self.deliver(reserved, messages, deleted, counter)
        if missing:
            try:
                owners = ops.owners(missing)
            except RStreamError:
                # Not knowing is safe: entries still pending here come back via the stray check.
                self._ledger.forget(missing)
                return len(messages)
            mine = [i for i, owner in owners.items() if owner == self._me]
            vanished = sum(1 for owner in owners.values() if owner is None)
            gone = [i for i, owner in owners.items() if owner != self._me]
            self._ledger.forget(gone)
            if mine:
                self._ledger.hold(mine)
                self._ack_deleted(mine)
            deleted_count = len(mine) + (vanished if count_vanished else 0)
            if deleted_count:
                self._counters.add(deleted=deleted_count)
            log.debug("rstream: %d claimed ids were not returned (%d deleted here, %d gone)",
                      len(missing), len(mine), len(gone))
        return len(messages)
