"""The one way entries enter the pipeline: from reads, replays, claims and retries."""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Sequence

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
              attempts: Dict[str, int], counter: str, count_vanished: bool,
              dead: Optional[str] = None) -> Optional[int]:
        """XCLAIM `ids` into this consumer and deliver them; returns how many were delivered,
        or None when `dead` (the consumer they are taken from) turned out to be alive.

        Ids XCLAIM did not return are looked up, and only the stream can say one was deleted:
        an entry gone from the stream but still pending here (Redis 6.2 claims it with no
        data) is acked; one still in the stream was taken by another consumer, or by another
        process using this consumer's name, whose handler may be running it: it is left alone.
        One no longer pending anywhere was deleted (Redis 7+ drops it) or acked by someone;
        counted as deleted when `count_vanished` and the stream no longer has it."""
        try:
            read = ops.claim(ids, min_idle_ms, attempts, dead)
        except BaseException:
            self._ledger.admit(reserved, (), 0)
            raise
        if read is None:
            self._ledger.admit(reserved, (), 0)
            return None
        messages, deleted = read
        returned = {m.id for m in messages}
        returned.update(deleted)
        missing = missing_ids(ids, returned)
        self.deliver(reserved, messages, deleted, counter)
        if missing:
            try:
                found = ops.whereabouts(missing)
            except RStreamError:
                # Not knowing is safe: entries still pending here come back via the stray check.
                self._ledger.forget(missing)
                return len(messages)
            gone_here = [i for i, (owner, exists) in found.items() if owner == self._me and not exists]
            vanished = sum(1 for owner, exists in found.values() if owner is None and not exists)
            self._ledger.forget(i for i in found if i not in gone_here)
            if gone_here:
                self._ledger.hold(gone_here)
                self._ack_deleted(gone_here)
            deleted_count = len(gone_here) + (vanished if count_vanished else 0)
            if deleted_count:
                self._counters.add(deleted=deleted_count)
            log.debug("rstream: %d claimed ids were not returned (%d deleted here, %d elsewhere)",
                      len(missing), len(gone_here), len(missing) - len(gone_here))
        return len(messages)
