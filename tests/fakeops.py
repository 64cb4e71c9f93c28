"""A fake I/O layer for the unit tier of the threaded machinery: the real `Consumer` on no Redis.

`FakeRedis` is a small in-memory model of ONE stream with ONE consumer group: its entries
(id -> fields), its pending entries list (id -> consumer, delivery count, delivered at) and its
last-delivered id. Each thread role gets a `FakeStreamOps` over it, with the methods of
`rstream.redisio.StreamOps` that the reader, acker, reaper, intake and heartbeat call, and a
`FakeLink` with what those threads and `supervise.Loop` touch. `FakeConsumer` is the real
Consumer (its wiring, threads and stop order) with `_ops` returning these.

The fake records every call in order (`calls`), with what it carried (the acks riding on a
read, the reads outstanding when one was sent), checks ``reserved + in_flight <= limit`` of the
consumer's ledger at every call (breaches go to `violations`), and lets a test pin the
machinery in a chosen state: `fail` a call the Nth time, `hold` calls until released, run a
function `before` each call of a kind. As on a server, a read is executed when it is sent
(a BLOCKing one on an empty stream waits for entries when it is collected); a connection error
loses every reply outstanding on that link.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
import time
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

from rstream import Consumer, Message
from rstream.connection import Link
from rstream.lane import Lane
from rstream.errors import RedisUnavailable
from rstream.failover import ConsumerInfo, PendingEntry
from rstream.ledger import Ledger
from rstream.options import Options
from rstream.redisio import EMPTY_PLAN, GroupState, Read, SettlePlan, SettleResult, StreamOps
from rstream.settle import SettleBatch
from rstream.stats import Backlog

# Longest any wait in the fake may take (a hold never released, a BLOCK read with no end).
DEADLINE_S = 5.0
Fields = Dict[bytes, bytes]
R = TypeVar("R", bound="Rule")


def id_key(entry_id: str) -> Tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclasses.dataclass
class Call:
    seq: int
    role: str
    name: str
    detail: Dict[str, Any]
    thread: str


@dataclasses.dataclass
class Pending:
    consumer: str
    deliveries: int
    delivered_at: float  # monotonic


@dataclasses.dataclass
class Rule:
    """Matches the calls named `name` (of `role`, if given); `nth` (1-based) picks one of them."""

    name: str
    role: Optional[str] = None
    nth: Optional[int] = None
    seen: int = 0

    def matches(self, call: Call) -> bool:
        if call.name != self.name or (self.role is not None and call.role != self.role):
            return False
        self.seen += 1
        return self.nth is None or self.seen == self.nth


@dataclasses.dataclass
class Fault(Rule):
    exc: BaseException = dataclasses.field(default_factory=lambda: RedisUnavailable("fake"))
    fired: int = 0


@dataclasses.dataclass
class Hold(Rule):
    """The matching calls wait until `release()`; `reached` is set when the first one waits."""

    cond: threading.Condition = dataclasses.field(default_factory=threading.Condition)
    reached: threading.Event = dataclasses.field(default_factory=threading.Event)
    released: bool = False

    def release(self) -> None:
        with self.cond:
            self.released = True
            self.cond.notify_all()


@dataclasses.dataclass
class Hook(Rule):
    fn: Callable[[Call], object] = lambda call: None


@dataclasses.dataclass
class OutRead:
    """A read sent and not yet collected; `result` is None while a BLOCKing one waits."""

    count: int
    block_ms: Optional[int]
    result: Optional[List[Message]] = None


@dataclasses.dataclass(frozen=True)
class FakePlan(SettlePlan):
    batch: SettleBatch = dataclasses.field(default_factory=SettleBatch)


class FakeRedis:
    """One stream, one group, and the log of every call the consumer's threads made on them."""

    def __init__(self, stream: str = "orders", group: str = "workers") -> None:
        self.stream, self.group = stream, group
        self.cond = threading.Condition()
        self.entries: Dict[str, Fields] = {}
        self._order: List[str] = []      # every id ever added, in id order
        self._undelivered = 0            # index in _order of the first id after last_delivered
        self.pel: Dict[str, Pending] = {}
        self.last_delivered = "0-0"
        self.seen: Dict[str, float] = {}  # consumer -> its last interaction (monotonic)
        self.acked: List[str] = []       # ids an ack removed from the PEL, in order
        self.dead_letters: List[str] = []
        self.calls: List[Call] = []
        self.violations: List[str] = []
        self.ledger: Optional[Ledger] = None
        self.consumer: Optional[Consumer] = None  # the FakeConsumer on it, once built
        self.reader_flowing = False      # the reader's last collected read came back full
        self._rules: List[Rule] = []

    # -- what a test sets up ------------------------------------------------------------------
    def add(self, count: int) -> List[str]:
        with self.cond:
            start = id_key(self._order[-1])[0] + 1 if self._order else 1
            ids = [f"{start + n}-0" for n in range(count)]
            for n, entry_id in enumerate(ids):
                self.entries[entry_id] = {b"n": str(start + n - 1).encode()}
            self._order += ids
            self.cond.notify_all()
            return ids

    def add_pending(self, consumer: str, count: int, idle_ms: int, deliveries: int = 1) -> List[str]:
        """Entries already delivered to `consumer` (a previous run of it, or a dead peer)."""
        ids = self.add(count)
        with self.cond:
            at = time.monotonic() - idle_ms / 1000
            for entry_id in ids:
                self.pel[entry_id] = Pending(consumer, deliveries, at)
            self.last_delivered, self._undelivered = ids[-1], len(self._order)
            self.seen[consumer] = min(self.seen.get(consumer, at), at)
        return ids

    def fail(self, name: str, exc: BaseException, nth: int = 1, role: Optional[str] = None) -> Fault:
        """The `nth` call named `name` raises `exc` (before it does anything, except that
        collecting a reply loses it: the read was executed, its entries are pending)."""
        return self._add(Fault(name, role, nth, exc=exc))

    def hold(self, name: str, role: Optional[str] = None, nth: Optional[int] = None) -> Hold:
        return self._add(Hold(name, role, nth, cond=self.cond))

    def before(self, name: str, fn: Callable[[Call], object], role: Optional[str] = None) -> Hook:
        return self._add(Hook(name, role, fn=fn))

    def _add(self, rule: R) -> R:
        with self.cond:
            self._rules.append(rule)
        return rule

    # -- what a test looks at -----------------------------------------------------------------
    @property
    def last_id(self) -> str:
        with self.cond:
            return self._order[-1]

    def log(self, name: Optional[str] = None, role: Optional[str] = None) -> List[Call]:
        with self.cond:
            return [c for c in self.calls if (name is None or c.name == name)
                    and (role is None or c.role == role)]

    def pending_ids(self, consumer: str) -> List[str]:
        with self.cond:
            return sorted((i for i, p in self.pel.items() if p.consumer == consumer), key=id_key)

    def note(self, what: str, **detail: Any) -> None:
        """Put a marker in the call log (from a handler, say), to order events against calls."""
        self.record("test", what, **detail)

    # -- the machinery of every call ----------------------------------------------------------
    def record(self, role: str, name: str, **detail: Any) -> Call:
        """Log a call that does no I/O (it cannot fail, be held or meet a closed link)."""
        self._check_bound(name)
        with self.cond:
            call = Call(len(self.calls), role, name, detail, threading.current_thread().name)
            self.calls.append(call)
            return call

    def enter(self, link: "FakeLink", name: str, **detail: Any) -> Call:
        """Log a call; run its hooks, holds and faults; refuse it on a link closed by stop()."""
        call = self.record(link.role, name, **detail)
        with self.cond:
            matched = [rule for rule in self._rules if rule.matches(call)]
        try:
            for hook in (r for r in matched if isinstance(r, Hook)):
                hook.fn(call)
        except BaseException:
            with self.cond:
                link.out.clear()  # as a Link drops its connection on an unexpected error
            raise
        with self.cond:
            for hold in (r for r in matched if isinstance(r, Hold)):
                hold.reached.set()
                if not self.cond.wait_for(lambda h=hold: h.released or link.aborted, DEADLINE_S):
                    self.violations.append(f"call {call.seq} ({name}) held and never released")
            if link.aborted:
                link.out.clear()
                call.detail["raised"] = "aborted"
                raise RedisUnavailable(f"{link.role} connection closed by stop()")
            for fault in (r for r in matched if isinstance(r, Fault)):
                fault.fired += 1
                call.detail["raised"] = type(fault.exc).__name__
                if isinstance(fault.exc, RedisUnavailable):
                    link.out.clear()  # the connection is gone, with every reply due on it
                elif name in ("finish_settle", "finish_read") and link.out:
                    link.out.popleft()  # an error reply in place of the read's
                raise fault.exc
            link.ok_at = time.monotonic()
        return call

    def _check_bound(self, name: str) -> None:
        ledger = self.ledger
        if ledger is None:
            return
        with ledger._cond:
            reserved, in_flight = ledger._reserved, ledger._in_flight
        if reserved < 0 or in_flight < 0 or reserved + in_flight > ledger.limit:
            with self.cond:
                self.violations.append(f"at {name}: reserved {reserved} + in flight {in_flight} "
                                       f"> limit {ledger.limit}")

    # -- the server side (callers hold self.cond) ---------------------------------------------
    def read_new(self, me: str, count: int) -> List[Message]:
        """XREADGROUP ... > : the next `count` entries, now pending for `me` (attempt 1)."""
        now = time.monotonic()
        self.seen[me] = now
        ids = self._order[self._undelivered:self._undelivered + count]
        self._undelivered += len(ids)
        if ids:
            self.last_delivered = ids[-1]
        for entry_id in ids:
            self.pel[entry_id] = Pending(me, 1, now)
        return [Message(i, self.stream, dict(self.entries[i]), 1) for i in ids]

    def has_new(self) -> bool:
        return self._undelivered < len(self._order)

    def deliver_again(self, me: str, ids: Sequence[str]) -> Read:
        """Pending ids delivered to `me` once more (replay, XCLAIM): the delivery count grows."""
        now = time.monotonic()
        self.seen[me] = now
        messages: List[Message] = []
        deleted: List[str] = []
        for entry_id in ids:
            p = self.pel[entry_id]
            p.consumer, p.deliveries, p.delivered_at = me, p.deliveries + 1, now
            if entry_id in self.entries:
                messages.append(Message(entry_id, self.stream, dict(self.entries[entry_id]),
                                        p.deliveries))
            else:
                deleted.append(entry_id)
        return messages, deleted

    def apply(self, batch: SettleBatch, delete: bool) -> SettleResult:
        for entry_id in batch.acks:
            if self.pel.pop(entry_id, None) is not None:
                self.acked.append(entry_id)
            if delete:
                self.entries.pop(entry_id, None)
        written = 0
        for message, _error in batch.dead_letters:
            if self.pel.pop(message.id, None) is not None:
                self.dead_letters.append(message.id)
                self.acked.append(message.id)
                written += 1
        return SettleResult(acked=len(batch.acks), dead_lettered=written)

    def idle_ms(self, at: float) -> int:
        return int((time.monotonic() - at) * 1000)


class FakeLink(Link):
    """What the threads and `supervise.Loop` use of a `Link`, and the reads outstanding on it.
    It speaks no RESP: `StreamOps` code that would send commands on it fails loudly."""

    def __init__(self, redis: FakeRedis, role: str) -> None:  # no Link.__init__: no connection
        self.redis = redis
        self.role = role
        self.ok_at = 0.0
        self.aborted = False
        self.closed = False
        self.out: Deque[OutRead] = collections.deque()

    def abort(self) -> None:
        with self.redis.cond:
            self.redis.record(self.role, "abort", outstanding=len(self.out))
            self.aborted = True
            self.redis.cond.notify_all()

    def limit(self, deadline: float) -> None:
        pass

    @contextlib.contextmanager
    def bounded(self, deadline: float) -> Iterator[Link]:
        yield self

    def close(self) -> None:
        self.closed = True

    def send(self, commands: Any) -> None:
        raise AssertionError("FakeLink speaks no RESP: a StreamOps method is missing from the fake")

    def read(self, count: int) -> List[Any]:
        raise AssertionError("FakeLink speaks no RESP: a StreamOps method is missing from the fake")


class FakeStreamOps(StreamOps):
    """The `StreamOps` methods the threads call, on `FakeRedis` instead of a connection."""

    def __init__(self, redis: FakeRedis, role: str, options: Options) -> None:  # no connection
        self.redis = redis
        self.link: FakeLink = FakeLink(redis, role)
        self.o = options

    # -- start and stop ---------------------------------------------------------------------
    def check_server(self) -> Optional[Tuple[str, Tuple[int, ...]]]:
        self.redis.enter(self.link, "check_server")
        return "redis", (7, 2, 0)

    def check_key_types(self) -> None:
        self.redis.enter(self.link, "check_key_types")

    def ensure_group(self, start_id: str, resume_after: str = "") -> GroupState:
        self.redis.enter(self.link, "ensure_group", start_id=start_id, resume_after=resume_after)
        with self.redis.cond:
            return GroupState("exists", self.redis.last_delivered)

    def leave(self, key: Optional[str], token: str) -> bool:
        self.redis.enter(self.link, "leave")
        with self.redis.cond:
            me = self.o.consumer_name
            if any(p.consumer == me for p in self.redis.pel.values()):
                return False
            self.redis.seen.pop(me, None)
            return True

    # -- reading ------------------------------------------------------------------------------
    def plan(self, batch: SettleBatch) -> SettlePlan:
        self.redis.record(self.link.role, "plan", acks=list(batch.acks))  # packs; sends nothing
        if not batch:
            return EMPTY_PLAN
        copy = SettleBatch(list(batch.acks), list(batch.dead_letters), batch.dropped)
        return FakePlan(b"", (("fake", 1),), len(batch.acks), copy)

    def send_read(self, plan: SettlePlan, count: int, block_ms: Optional[int]) -> None:
        batch = plan.batch if isinstance(plan, FakePlan) else SettleBatch()
        r = self.redis
        r.enter(self.link, "send_read", count=count, block_ms=block_ms, acks=list(batch.acks),
                outstanding=len(self.link.out))
        with r.cond:
            if self.link.out and self.link.out[-1].result is None:
                r.violations.append("a read was sent behind a BLOCKing read")
            r.apply(batch, self.o.delete_on_ack)
            read = OutRead(count, block_ms)
            if block_ms is None or r.has_new():
                read.result = r.read_new(self.o.consumer_name, count)
            self.link.out.append(read)

    def finish_settle(self, plan: SettlePlan) -> SettleResult:
        self.redis.enter(self.link, "finish_settle")
        if not self.link.out:
            raise RedisUnavailable("connection lost: no reply is coming")
        return SettleResult(acked=plan.acks)

    def finish_read(self) -> Read:
        r = self.redis
        call = r.enter(self.link, "finish_read")
        with r.cond:
            if not self.link.out:
                raise RedisUnavailable("connection lost: no reply is coming")
            read = self.link.out[0]
            if read.result is None:  # BLOCK: wait for entries, the timeout, or stop()
                r.cond.wait_for(lambda: r.has_new() or self.link.aborted, (read.block_ms or 0) / 1000)
                if self.link.aborted:
                    self.link.out.clear()
                    call.detail["raised"] = "aborted"
                    raise RedisUnavailable("reader connection closed by stop()")
                read.result = r.read_new(self.o.consumer_name, read.count)
            self.link.out.popleft()
            call.detail.update(ids=[m.id for m in read.result], count=read.count)
            if self.link.role == "reader":
                r.reader_flowing = len(read.result) >= read.count
            return read.result, []

    def read_own_page(self, after: str, count: int) -> Tuple[Read, str]:
        r = self.redis
        call = r.enter(self.link, "read_own_page", after=after, count=count)
        with r.cond:
            mine = [i for i in self.redis.pel if r.pel[i].consumer == self.o.consumer_name
                    and (after == "0" or id_key(i) > id_key(after))]
            page = sorted(mine, key=id_key)[:count]
            call.detail["ids"] = page
            return r.deliver_again(self.o.consumer_name, page), page[-1] if page else after

    # -- settling -----------------------------------------------------------------------------
    def settle(self, batch: SettleBatch) -> SettleResult:
        r = self.redis
        r.enter(self.link, "settle", acks=list(batch.acks),
                dead=[m.id for m, _ in batch.dead_letters], reader_flowing=r.reader_flowing)
        with r.cond:
            return r.apply(batch, self.o.delete_on_ack)

    # -- liveness and failover ----------------------------------------------------------------
    def heartbeat(self) -> None:
        self.redis.enter(self.link, "beat")
        with self.redis.cond:
            self.redis.seen[self.o.consumer_name] = time.monotonic()

    def beat_and_fence(self, key: str, token: str, ttl_ms: int, registered: bool) -> Any:
        self.heartbeat()
        return 1

    def look(self) -> Tuple[List[ConsumerInfo], Optional[Backlog]]:
        r = self.redis
        r.enter(self.link, "consumers")
        with r.cond:
            consumers = [ConsumerInfo(name, sum(p.consumer == name for p in r.pel.values()),
                                      r.idle_ms(at)) for name, at in r.seen.items()]
            return consumers, Backlog(pending=len(r.pel), lag=None, oldest_pending_age_ms=None)

    def pending_of(self, consumer: str, start: str, count: int, min_idle_ms: int) -> List[PendingEntry]:
        r = self.redis
        r.enter(self.link, "pending_of", consumer=consumer, start=start, min_idle_ms=min_idle_ms)
        after = None if start == "-" else start.lstrip("(")
        with r.cond:
            found = [PendingEntry(i, p.consumer, r.idle_ms(p.delivered_at), p.deliveries)
                     for i, p in r.pel.items() if p.consumer == consumer
                     and (after is None or id_key(i) > id_key(after))
                     and r.idle_ms(p.delivered_at) >= min_idle_ms]
            return sorted(found, key=lambda e: id_key(e.id))[:count]

    def claim(self, ids: Sequence[str], min_idle_ms: int, attempts: Dict[str, int],
              dead: Optional[str] = None) -> Optional[Read]:
        r = self.redis
        call = r.enter(self.link, "claim", ids=list(ids), min_idle_ms=min_idle_ms, dead=dead)
        with r.cond:
            if dead is not None and r.idle_ms(r.seen.get(dead, 0.0)) <= self.o.dead_after_ms:
                return None
            taken = [i for i in ids if i in r.pel and r.idle_ms(r.pel[i].delivered_at) >= min_idle_ms]
            for entry_id in [i for i in taken if i not in r.entries]:
                del r.pel[entry_id]  # Redis 7: XCLAIM drops a deleted entry and leaves it out
            messages, _ = r.deliver_again(self.o.consumer_name, [i for i in taken if i in r.pel])
            call.detail["returned"] = [m.id for m in messages]
            return messages, []

    def whereabouts(self, ids: Sequence[str]) -> Dict[str, Tuple[Optional[str], bool]]:
        r = self.redis
        r.enter(self.link, "whereabouts", ids=list(ids))
        with r.cond:
            return {i: (r.pel[i].consumer if i in r.pel else None, i in r.entries) for i in ids}

    def delete_consumer_if_empty(self, consumer: str, min_idle_ms: int) -> bool:
        r = self.redis
        r.enter(self.link, "delete_consumer_if_empty", consumer=consumer)
        with r.cond:
            if any(p.consumer == consumer for p in r.pel.values()):
                return False
            if r.idle_ms(r.seen.get(consumer, 0.0)) < min_idle_ms:
                return False
            r.seen.pop(consumer, None)
            return True


class FakeConsumer(Consumer):
    """The real Consumer, its threads and stop order, with every role's I/O on `redis`."""

    def __init__(self, redis: FakeRedis, consumer_name: str = "me", **options: Any) -> None:
        # The URL is never connected to: every connection is made through `_ops`.
        super().__init__("redis://fake.invalid:6379/0", redis.stream, redis.group, consumer_name,
                         **options)
        self.fake = redis
        redis.consumer = self

    def _ops(self, lane: Lane, role: str, read_timeout_s: float, read_size: int) -> StreamOps:
        self.fake.ledger = lane.ledger  # built before any ops: checked at every call
        return FakeStreamOps(self.fake, role, lane.options)
