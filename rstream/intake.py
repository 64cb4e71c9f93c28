"""The one way entries enter the pipeline: from reads, replays, claims and retries.

Every entry comes in under a `Grant` of in-flight slots, which `deliver` spends on what was
read; deleted entries (no fields left) take no slot and go straight to `Settlements` as acks.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

from .dispatch import ChunkDone, WorkerPool
from .errors import RStreamError
from .failover import missing_ids
from .message import Message
from .ledger import Grant, Ledger
from .redisio import StreamOps
from .settlements import Settlements
from .stats import Counters

log = logging.getLogger("rstream")


class Intake:
    """Admits entries to the ledger, hands them to the pool, and sends deleted ones to be acked."""

    def __init__(self, ledger: Ledger, pool: WorkerPool, counters: Counters,
                 settlements: Settlements, me: str, completed: ChunkDone) -> None:
        self._ledger = ledger
        self._pool = pool
        self._completed = completed  # where the handlers' outcomes go (this stream's Outcomes)
        self._counters = counters
        self._ack_deleted = settlements.put_acks
        self._me = me
        self._closed = False

    def close(self) -> None:
        """Stop admitting entries (at stop): what is read from now on stays pending on the
        server and is replayed at the next start or claimed by another consumer."""
        self._closed = True

    def deliver(self, grant: Grant, messages: List[Message], deleted: List[str],
                counter: str = "") -> None:
        """Deliver what a read returned, spending `grant` on it. Deleted entries (no fields:
        the stream entry was deleted or trimmed) are acked, never handled."""
        if self._closed:
            grant.close()
            return
        grant.admit([m.id for m in messages])
        amounts = {"delivered": len(messages)}
        if counter:
            amounts[counter] = len(messages)
        if deleted:
            self._ledger.hold(deleted)
            self._ack_deleted(deleted)
            amounts["deleted"] = len(deleted)
        self._counters.add(**amounts)
        self._pool.submit(messages, self._completed)

    def claim(self, ops: StreamOps, grant: Grant, ids: Sequence[str], min_idle_ms: int,
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
        with grant:
            read = ops.claim(ids, min_idle_ms, attempts, dead)
            if read is None:
                return None
            messages, deleted = read
            self.deliver(grant, messages, deleted, counter)
        returned = {m.id for m in messages}
        returned.update(deleted)
        missing = missing_ids(ids, returned)
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
