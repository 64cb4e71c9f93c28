"""Who is dead, what to claim, what to re-deliver. Pure: no Redis, no threads.

Liveness is per consumer, measured by the server's clock: every live consumer's heartbeat resets
its `idle` in XINFO CONSUMERS, so a consumer idle longer than `dead_after_ms` has stopped beating.
A slow handler never loses its entry while its consumer beats (entries are not judged by their
own idle time, which is what peers built on XAUTOCLAIM get wrong).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Collection, Dict, List, Optional, Sequence, Tuple


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True)
class ConsumerInfo:
    name: str
    pending: int
    idle_ms: int


@dataclasses.dataclass(frozen=True)
class PendingEntry:
    id: str
    consumer: str
    idle_ms: int
    deliveries: int


def parse_consumers(reply: Sequence[Any]) -> List[ConsumerInfo]:
    """XINFO CONSUMERS reply (RESP2 flat lists or RESP3 maps) -> ConsumerInfo list."""
    consumers = []
    for item in reply or ():
        pairs: Dict[str, Any]
        if isinstance(item, dict):
            pairs = {_text(k): v for k, v in item.items()}
        else:
            pairs = {_text(item[i]): item[i + 1] for i in range(0, len(item) - 1, 2)}
        consumers.append(ConsumerInfo(_text(pairs["name"]), int(pairs["pending"]), int(pairs["idle"])))
    return consumers


def parse_pending(reply: Sequence[Any]) -> List[PendingEntry]:
    """Extended XPENDING reply [[id, consumer, idle, deliveries], ...] -> PendingEntry list."""
    return [PendingEntry(_text(e[0]), _text(e[1]), int(e[2]), int(e[3])) for e in reply or ()]


def is_dead(idle_ms: int, dead_after_ms: int) -> bool:
    """The heartbeat rule: a consumer idle (by the server's clock) longer than
    `heartbeat_interval * allowed_missed_heartbeats` is dead."""
    return idle_ms > dead_after_ms


def dead_consumers(consumers: Sequence[ConsumerInfo], me: str, dead_after_ms: int) -> List[ConsumerInfo]:
    """Every other consumer idle longer than `dead_after_ms`, most pending first."""
    dead = [c for c in consumers if c.name != me and is_dead(c.idle_ms, dead_after_ms)]
    return sorted(dead, key=lambda c: -c.pending)


def next_check_ms(consumers: Sequence[ConsumerInfo], me: str, dead_after_ms: int,
                  interval_ms: int) -> int:
    """How long the reaper may wait before it looks again: one interval, or less when another
    consumer, not dead yet, will cross the dead threshold sooner. A death is then seen within
    milliseconds of the threshold, not up to an interval later; consumers that beat on time
    never cause an early look (their idle stays under one interval)."""
    due = [dead_after_ms - c.idle_ms + 1 for c in consumers
           if c.name != me and c.idle_ms <= dead_after_ms]
    return max(1, min([interval_ms, *due]))


def claim_page(entries: Sequence[PendingEntry]) -> Tuple[List[str], Dict[str, int], int]:
    """Ids to XCLAIM from one XPENDING page, the attempt each will have, and the min-idle-time.

    The min-idle-time is the smallest idle observed in the page: any entry another consumer
    claimed since has a smaller idle, so XCLAIM skips it and each entry goes to exactly one.
    """
    if not entries:
        return [], {}, 0
    ids = [e.id for e in entries]
    attempts = {e.id: e.deliveries + 1 for e in entries}
    return ids, attempts, min(e.idle_ms for e in entries)


def stray_entries(entries: Sequence[PendingEntry], held: Collection[str],
                  reading_for_ms: float = 0.0) -> List[PendingEntry]:
    """This consumer's pending entries that it does not hold (a lost read reply, an entry put in
    its pending list by someone else): they must be delivered again. One idle for no longer
    than `reading_for_ms` (how long this consumer's oldest unadmitted read has been out, up to
    the look) may be in that read's reply, still on its way: it is left for a later look."""
    return [e for e in entries if e.id not in held and e.idle_ms > reading_for_ms]


def missing_ids(requested: Sequence[str], returned: Collection[str]) -> List[str]:
    """Ids XCLAIM did not return: deleted from the stream, or taken by another consumer."""
    return [i for i in requested if i not in returned]


def next_start(entries: Sequence[PendingEntry]) -> Optional[str]:
    """Exclusive start of the next XPENDING page, or None when this page was the last one."""
    return "(" + entries[-1].id if entries else None


def verdicts_stale(consumers: Sequence[ConsumerInfo], me: str, interval_ms: int,
                   took_ms: float) -> bool:
    """True when an XINFO CONSUMERS reply cannot be trusted to say who is dead: this consumer
    beats every `interval_ms`, so its own idle past two intervals (or absence) means its beats
    did not land (this process or the server was stalled), and a reply that took longer than
    an interval was held up by a stall. Either way every idle in it is inflated by the stall,
    and consumers that beat as soon as it ended would be robbed."""
    if took_ms > interval_ms:
        return True
    mine = [c for c in consumers if c.name == me]
    return not mine or mine[0].idle_ms > 2 * interval_ms
