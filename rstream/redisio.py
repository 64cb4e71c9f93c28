"""Every Redis command rstream sends, built and checked here and nowhere else. It decides nothing.

Keys: the stream (`stream`), the dead-letter stream (`dead_letter_stream`) when configured, and
one string per consumer name, ``rstream:fence:{<stream>}:<group>:<consumer>``, that says which
process holds the name (see `fence_key`). In Redis Cluster all must hash to one slot: the fence
key takes the stream's hash tag; give the dead-letter stream the same one (``{orders}``,
``{orders}:dlq``).

Commands (S = stream, G = group, ME = consumer_name, D = dead-letter stream, F = fence key);
the scripts are in `rstream.scripts`, with the commands each calls:
- ``INFO server`` — server name and version at start (skipped if the ACL forbids it).
- ``TYPE S``, ``TYPE D`` — at start, so a key of another type is named in the error (optional).
- ``EVAL <ensure-group> 1 S G <start-id> <mkstream> <resume-after>`` — find or create the group
  (``XINFO GROUPS``, ``XRANGE``, ``XGROUP CREATE [MKSTREAM]``), at start and after NOGROUP.
- ``XREADGROUP GROUP G ME COUNT n [BLOCK ms] STREAMS S >`` — new entries (reader).
- ``EVAL <replay-page> 1 S G ME <start> <after> n`` — one page of this consumer's own pending
  entries with their delivery counts (``XPENDING``, ``XREADGROUP``): replay at start.
- ``XACK S G id...`` — settle. With `delete_on_ack`: ``XACKDEL S G KEEPREF IDS n id...`` where
  the server has it (Redis 8.2+, Valkey 9.2+), else ``MULTI / XACK S G id... / XDEL S id... / EXEC``;
  ``XACKDEL S G KEEPREF IDS 1 0-0`` asks which, once per connection (see "XACKDEL" below).
- ``EVAL <dead-letter> 2 S D G id del field value...`` — if the entry is still pending
  (``XPENDING``), ``XADD`` it to D, then ``XACK`` (and ``XDEL`` with `delete_on_ack`), atomically.
- ``XREADGROUP GROUP G ME COUNT 1 STREAMS S 18446744073709551615-0`` with
  ``EVAL <fence> 1 F <token> <ttl> <held>`` — the heartbeat (returns nothing, resets ME's idle in
  XINFO CONSUMERS) and the name check (``GET``, ``SET F token PX ttl``), in one round trip.
- ``XINFO CONSUMERS S G`` — liveness of the other consumers (reaper), with ``XINFO STREAM S``,
  ``XINFO GROUPS S``, ``XPENDING S G`` and ``TIME`` in the same round trip: the backlog
  `stats()` reports (pending, lag, age of the oldest pending entry; optional for the ACL).
- ``XPENDING S G IDLE ms <start> + n <consumer>`` — a dead consumer's entries, or this consumer's strays.
- ``EVAL <claim-from-dead> 1 S G <dead> <dead-after> ME <min-idle> id...`` — ``XCLAIM`` only while
  the owner still looks dead (``XINFO CONSUMERS``).
- ``XCLAIM S G ME <min-idle> id...`` — this consumer's own retries and strays (never with no ids).
- ``XPENDING S G id id 1`` and ``XRANGE S id id`` — who holds an id XCLAIM did not return, and
  whether the stream still has it (only the stream can say an entry was deleted).
- ``EVAL <delconsumer> 1 S G <consumer> <min-idle>`` — ``XGROUP DELCONSUMER`` only if the consumer
  has no pending entries and is still idle, checked and done atomically; at a clean stop, for ME,
  with ``EVAL <unfence> 1 F <token>`` (``GET``, ``SET``) to give the name up.

XACKDEL. With `delete_on_ack` an ack deletes the entry from the stream for every group, and
KEEPREF does what XACK then XDEL did: other groups' pending lists keep their references (XDEL
never touched them), so their consumers still get the entry back, as deleted, and ack it.
DELREF would drop those references behind the other groups' backs; ACKED would keep entries
another group has not acked yet: both would change what `delete_on_ack` means. One XACKDEL,
atomic on its own, replaces a four-command transaction.

Whether the server has it is learned per link from the link's own replies, not from INFO: an
ACL user may not run INFO, Valkey has XACKDEL from 9.2, and after a failover or a restart a link
may reach another server than the one asked at start. Once per connection, in a round trip of
its own when nothing is outstanding on the link (before the reader's first read, the acker's
first ack), it sends ``XACKDEL S G KEEPREF IDS 1 0-0``: harmless (no entry has id 0-0; a missing
key or group answers [-1] and nothing is created). An array says yes; an error (unknown
command, an ACL refusal: one ACL LOG entry) says no, and batches go by MULTI, as they do while
it is not known. The answer is forgotten when the link reports its connection lost. Should an
XACKDEL be refused all the same (an idle link reconnected to an older server without reporting
it), the acker sends the batch again at once by MULTI; a read that carried it fails like a lost
connection, its acks go again, and its entries are found again as strays (ARCHITECTURE.md).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, cast

import hiredis

from . import _hotpath as hot
from . import scripts
from .connection import Link, server_version, translate
from .errors import (FatalRedisError, GroupMissing, PermissionDenied, RedisUnavailable, RStreamError,
                     StreamMissing, TransientError, WrongType)
from .failover import ConsumerInfo, PendingEntry, parse_consumers, parse_pending
from .message import Message
from .options import Options
from .inspection import backlog_of
from .settle import SettleBatch, SettleResult, dead_letter_fields
from .stats import Backlog

MIN_SERVER_VERSION = (6, 2)
# A history read past every possible id: returns nothing, but counts as an interaction. Not
# MAX-MAX: the server reads history after the id given, and MAX-MAX + 1 wraps round to 0-0,
# which would deliver this consumer's whole pending list again.
HEARTBEAT_ID = hot.format_id(hot.MAX_ID_PART, 0)
FENCE_PREFIX = "rstream:fence:"


def fence_key(stream: str, group: str, consumer: str) -> str:
    """The key that says which process holds `consumer`'s name in `group`: in the stream's
    hash slot (Redis Cluster), by the stream's own hash tag, or the stream's name as one."""
    start = stream.find("{")
    end = stream.find("}", start + 1) if start >= 0 else -1
    tag = stream[start + 1:end] if start >= 0 and end > start + 1 else stream
    return f"{FENCE_PREFIX}{{{tag}}}:{group}:{consumer}"


@dataclasses.dataclass(frozen=True)
class GroupState:
    """What `ensure_group` found or did: `status` is "exists", "created" or "missing";
    `position` the group's last-delivered id; `reason` why a created group starts where it
    does ("start": the given id, "new": the stream is new, from 0, "resumed": after the last
    id this consumer saw)."""

    status: str
    position: str = ""
    reason: str = ""


_ACK, _ACK_AND_DELETE, _DEAD_LETTER = "XACK", "MULTI XACK XDEL EXEC", "dead-letter script"
_ACKDEL = "XACKDEL"


@dataclasses.dataclass(frozen=True)
class SettlePlan:
    """The commands that settle one batch, packed in one write, and how to read their replies:
    `steps` says, in order, what each group of replies belongs to and how many it has."""

    packed: bytes
    steps: Tuple[Tuple[str, int], ...]
    acks: int

    @property
    def replies(self) -> int:
        return sum(n for _, n in self.steps)

    def xackdel_refusal(self, replies: Sequence[Any]) -> Optional[RStreamError]:
        """The error the plan's XACKDEL got if it says the server will not run XACKDEL."""
        at = 0
        for what, n in self.steps:
            if what == _ACKDEL:
                return replies[at] if _refuses_xackdel(replies[at]) else None
            at += n
        return None

    def check(self, replies: Sequence[Any]) -> SettleResult:
        """Raise the first error among the replies; else what the server settled."""
        result = SettleResult()
        at = 0
        for what, n in self.steps:
            mine = replies[at:at + n]
            at += n
            for reply in mine:
                _raise_if_error(reply)
            if what == _DEAD_LETTER:
                result.dead_lettered += int(mine[0])
                continue
            if what == _ACK_AND_DELETE:
                for reply in mine[-1]:  # EXEC's reply holds each queued command's
                    _raise_if_error(reply)
            # XACK counts only entries still pending (XACKDEL answers -1 for the others): one
            # acked twice (a re-sent batch whose first reply was lost) is settled all the same.
            result.acked += self.acks
        return result


EMPTY_PLAN = SettlePlan(b"", (), 0)
_MULTI, _EXEC = b"*1\r\n$5\r\nMULTI\r\n", b"*1\r\n$4\r\nEXEC\r\n"
_Method = TypeVar("_Method", bound=Callable[..., Any])


def _forgets_server_on_outage(method: _Method) -> _Method:
    """A StreamOps method after whose lost connection the link's next one may reach another
    server: what this one said of XACKDEL no longer holds."""
    @functools.wraps(method)
    def wrapper(self: "StreamOps", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except RedisUnavailable:
            self.has_xackdel = None
            raise
    return cast(_Method, wrapper)


Read = Tuple[List[Message], List[str]]  # messages, ids of deleted entries


class StreamOps:
    """The commands of one consumer on one stream, sent over one `Link`."""

    def __init__(self, link: Link, options: Options) -> None:
        self.link = link
        self.o = options
        self._group_args = ("XREADGROUP", "GROUP", options.group, options.consumer_name)
        self._heartbeat = (*self._group_args, "COUNT", 1, "STREAMS", options.stream, HEARTBEAT_ID)
        # The hot commands are packed by hiredis from names encoded once (half redis-py's cost).
        stream, group = link.encode(options.stream), link.encode(options.group)
        self._stream_b, self._group_b = stream, group
        self._read_head = (b"XREADGROUP", b"GROUP", group, link.encode(options.consumer_name), b"COUNT")
        self._read_tail = (b"STREAMS", stream, b">")
        # Whether this link's server runs XACKDEL: None until it said (module docstring).
        self.has_xackdel: Optional[bool] = None
        self._probe = _pack(b"XACKDEL", stream, group, b"KEEPREF", b"IDS", 1, b"0-0")
        self._reads_out = 0  # reads sent and not collected: a probe now would cut in line

    # -- start -------------------------------------------------------------------------------
    def check_server(self) -> Optional[Tuple[str, Tuple[int, ...]]]:
        try:
            name, version = server_version(self.link.call("INFO", "server"))
        except PermissionDenied:
            return None  # a minimal ACL user may not run INFO; XREADGROUP errors will tell
        if name == "redis" and version < MIN_SERVER_VERSION:
            raise FatalRedisError(f"unsupported server: Redis {'.'.join(map(str, version))}; "
                                  "rstream needs Redis 6.2 or newer (or Valkey)")
        return name, version

    def ensure_group(self, start_id: str, resume_after: str = "") -> GroupState:
        """Find the group, or create it: at `start_id` on a first creation; on a re-creation
        (`resume_after` given) after `resume_after` if the stream still holds entries up to it,
        else from 0 (the stream is new: every entry in it is)."""
        reply = self.link.call("EVAL", scripts.ENSURE_GROUP, 1, self.o.stream, self.o.group,
                               start_id, int(self.o.make_stream), resume_after)
        status, *rest = [_text(x) for x in reply]
        if status == "missing":
            raise StreamMissing(f"stream {self.o.stream!r} does not exist (make_stream=False)")
        return GroupState(status, *rest)

    def check_key_types(self) -> None:
        """Raise `WrongType` naming the stream or dead-letter key if one holds another type
        (skipped when the ACL does not allow TYPE: the commands' own errors will tell)."""
        roles = {self.o.stream: "the stream"}
        if self.o.dead_letter_stream is not None:
            roles[self.o.dead_letter_stream] = "dead_letter_stream"
        try:
            replies = self.link.pipeline([("TYPE", k) for k in roles])
            types = {k: _text(_raise_if_error(t)) for k, t in zip(roles, replies)}
        except PermissionDenied:
            return
        wrong = {k: t for k, t in types.items() if t not in ("stream", "none")}
        if wrong:
            key = next(iter(wrong))
            raise WrongType("WRONGTYPE: " + "; ".join(
                f"key {k!r} ({roles[k]}) holds a {t}, not a stream" for k, t in wrong.items()), key)

    # -- reading -----------------------------------------------------------------------------
    @_forgets_server_on_outage
    def send_read(self, plan: "SettlePlan", count: int, block_ms: Optional[int]) -> None:
        """Send the plan's settle commands and a read of new entries in one write; collect
        with `finish_settle(plan)`, then `finish_read()`."""
        block = (b"BLOCK", block_ms) if block_ms is not None else ()
        self._learn_xackdel()
        try:
            self.link.send(plan.packed + _pack(*self._read_head, count, *block, *self._read_tail))
        except BaseException:
            self._reads_out = 0  # a link that fails a send has no connection: nothing is due
            raise
        self._reads_out += 1

    @_forgets_server_on_outage
    def finish_settle(self, plan: "SettlePlan") -> SettleResult:
        """Collect the replies of the settle commands `send_read` sent ahead of its read: they
        come back at once, while the read itself may still be blocked on the server."""
        replies = self._read(plan.replies)
        try:
            refused = plan.xackdel_refusal(replies)
            if refused is not None:
                # Not settled, and the read's reply is still to come: fail like a lost
                # connection, so that the reader restores the batch and sends it again.
                raise RedisUnavailable(f"XACKDEL refused ({refused}): this connection's server "
                                       "changed; acks go by MULTI/EXEC on it")
            return plan.check(replies)
        except RStreamError:
            # Keep the connection in step: the read's reply is still to come (with NOGROUP the
            # read failed too; anything it did deliver is found again by the stray check).
            self._read(1, collects_read=True)
            raise

    @_forgets_server_on_outage
    def finish_read(self) -> Read:
        """Collect the reply of the read `send_read` sent (decoded from the wire by the link
        where it can, see `rstream.wire`)."""
        try:
            read, reply = self.link.read_entries(self.o.stream, 1)
        except BaseException:
            self._reads_out = 0
            raise
        self._reads_out = max(0, self._reads_out - 1)
        return read if read is not None else self._decode(_raise_if_error(reply), 1)

    def _read(self, count: int, collects_read: bool = False) -> List[Any]:
        """`link.read`, counting the reads still out: a link whose read fails dropped its
        connection, and every reply that was due on it."""
        try:
            replies = self.link.read(count)
        except BaseException:
            self._reads_out = 0
            raise
        if collects_read:
            self._reads_out = max(0, self._reads_out - 1)
        return replies

    def read_own_page(self, after: str, count: int) -> Tuple[Read, str]:
        """One page of this consumer's pending entries after `after`, with real attempts;
        returns the read and the id to continue after (unchanged when the page was empty)."""
        start = "-" if after == "0" else "(" + after
        pending_reply, read_reply = self.link.call(
            "EVAL", scripts.REPLAY_PAGE, 1, self.o.stream, self.o.group, self.o.consumer_name,
            start, after, count)
        pending = parse_pending(pending_reply)
        attempts = {e.id: e.deliveries + 1 for e in pending}
        read = self._decode(_raise_if_error(read_reply), attempts)
        return read, pending[-1].id if pending else after

    def _decode(self, reply: Any, attempt: Any) -> Read:
        for _key, entries in hot.decode_read_reply(reply):
            return hot.decode_entries(entries, self.o.stream, attempt)
        return [], []

    # -- settling ----------------------------------------------------------------------------
    @_forgets_server_on_outage
    def settle(self, batch: SettleBatch) -> SettleResult:
        """Send the batch's settle commands on their own and check the replies. A refused
        XACKDEL sends the batch again at once, by MULTI/EXEC (a dead letter sent twice is
        guarded by its script; the acker sends acks and dead letters apart anyway)."""
        plan = self.plan(batch)
        if not plan.replies:
            return SettleResult()
        self.link.send(plan.packed)
        replies = self.link.read(plan.replies)
        if plan.xackdel_refusal(replies) is not None:
            self.has_xackdel = False
            return self.settle(batch)
        return plan.check(replies)

    def _learn_xackdel(self) -> None:
        """With `delete_on_ack`, learn whether this link's server runs XACKDEL, unless known or
        reads are outstanding (their replies come first). Called before the reader's reads and
        in `plan`: the reader asks before its first read on a connection, the acker before its
        first ack. A fault every command meets (an outage, a moved slot) raises."""
        if not self.o.delete_on_ack or self.has_xackdel is not None or self._reads_out:
            return
        self.link.send(self._probe)
        reply = self.link.read(1)[0]
        if isinstance(reply, list):
            self.has_xackdel = True
        elif _refuses_xackdel(reply):
            self.has_xackdel = False
        else:
            _raise_if_error(reply)

    @_forgets_server_on_outage
    def plan(self, batch: SettleBatch) -> "SettlePlan":
        """The commands that settle `batch`, packed, with how to read their replies: XACK (for
        `delete_on_ack`: XACKDEL, or XACK and XDEL in MULTI, see the module docstring), then
        one dead-letter script per dead letter."""
        if not batch:
            return EMPTY_PLAN
        o = self.o
        if batch.acks:
            self._learn_xackdel()
        packed: List[bytes] = []
        steps: List[Tuple[str, int]] = []
        if batch.acks:
            if not o.delete_on_ack:
                packed.append(hot.pack_ack(self._stream_b, self._group_b, batch.acks))
                steps.append((_ACK, 1))
            elif self.has_xackdel:
                packed.append(_pack(b"XACKDEL", self._stream_b, self._group_b, b"KEEPREF", b"IDS",
                                    len(batch.acks), *batch.acks))
                steps.append((_ACKDEL, 1))
            else:
                packed += [_MULTI, hot.pack_ack(self._stream_b, self._group_b, batch.acks),
                           _pack(b"XDEL", self._stream_b, *batch.acks), _EXEC]
                steps.append((_ACK_AND_DELETE, 4))
        for message, error in batch.dead_letters:
            flat = dead_letter_fields(message, error, stream=o.stream, group=o.group,
                                      consumer=o.consumer_name)
            packed.append(_pack(b"EVAL", scripts.DEAD_LETTER, 2, self._stream_b,
                                self.link.encode(o.dead_letter_stream), self._group_b, message.id,
                                int(o.delete_on_ack), *(self.link.encode(x) for x in flat)))
            steps.append((_DEAD_LETTER, 1))
        return SettlePlan(b"".join(packed), tuple(steps), len(batch.acks))

    # -- liveness and failover ---------------------------------------------------------------
    def heartbeat(self) -> None:
        self.link.call(*self._heartbeat)

    def beat_and_fence(self, key: str, token: str, ttl_ms: int, registered: bool) -> Any:
        """The heartbeat and the name check in one round trip: 1 (this instance holds the
        name), 0 (could not write it now), the token of the process that took it over, or
        None when the ACL does not let this user use the fence key."""
        replies = self.link.pipeline([
            self._heartbeat,
            ("EVAL", scripts.FENCE, 1, key, token, ttl_ms, int(registered)),
        ])
        _raise_if_error(replies[0])
        if isinstance(replies[1], PermissionDenied):
            return None
        verdict = _raise_if_error(replies[1])
        return verdict if isinstance(verdict, int) else _text(verdict)

    def leave(self, key: Optional[str], token: str) -> bool:
        """At a clean stop: give up the name (when `key` is held) and leave the group if
        nothing is pending for this consumer (no ghost consumers); True if it left."""
        commands = [self._delconsumer(self.o.consumer_name, 0)]
        if key is not None:
            commands.append(("EVAL", scripts.UNFENCE, 1, key, token))
        replies = self.link.pipeline(commands)
        for reply in replies[1:]:
            _raise_if_error(reply)
        return int(_raise_if_error(replies[0])) == 1

    def look(self) -> Tuple[List[ConsumerInfo], Optional[Backlog]]:
        """The group's consumers (for failover) and its backlog (for stats), in one round
        trip; no backlog when the ACL refuses what it needs (failover does not need it)."""
        s, g = self.o.stream, self.o.group
        replies = self.link.pipeline([("XINFO", "CONSUMERS", s, g), ("XINFO", "STREAM", s),
                                      ("XINFO", "GROUPS", s), ("XPENDING", s, g), ("TIME",)])
        consumers = parse_consumers(_raise_if_error(replies[0]))
        if any(isinstance(r, PermissionDenied) for r in replies[1:]):
            return consumers, None
        info, groups, pending, now = [_raise_if_error(r) for r in replies[1:]]
        return consumers, backlog_of(s, g, info, groups, pending, now)

    def pending_of(self, consumer: str, start: str, count: int, min_idle_ms: int) -> List[PendingEntry]:
        reply = self.link.call("XPENDING", self.o.stream, self.o.group, "IDLE", min_idle_ms,
                               start, "+", count, consumer)
        return parse_pending(reply)

    def claim(self, ids: Sequence[str], min_idle_ms: int, attempts: Dict[str, int],
              dead: Optional[str] = None) -> Optional[Read]:
        """XCLAIM `ids` for this consumer. With `dead` (the consumer they are claimed from),
        only while that consumer still looks dead, checked in the same script: None when it
        is alive again. Entries XCLAIM drops or returns empty (deleted from the stream) are
        not in the messages; see `whereabouts` to tell them from lost races."""
        if not ids:
            return [], []
        if dead is None:
            reply = self.link.call("XCLAIM", self.o.stream, self.o.group, self.o.consumer_name,
                                   min_idle_ms, *ids)
        else:
            reply = self.link.call("EVAL", scripts.CLAIM_FROM_DEAD, 1, self.o.stream, self.o.group,
                                   dead, self.o.dead_after_ms, self.o.consumer_name, min_idle_ms,
                                   *ids)
            if reply == -1:
                return None
        # Redis 6.2 answers nil in place of a deleted entry; 7+ leaves it out.
        entries = [e for e in reply if e is not None]
        return hot.decode_entries(entries, self.o.stream, attempts)

    def whereabouts(self, ids: Sequence[str]) -> Dict[str, Tuple[Optional[str], bool]]:
        """For each id: the consumer it is pending for (None if it is not pending) and whether
        the stream still has the entry. Only the stream can say an entry was deleted."""
        commands: List[Sequence[Any]] = []
        for i in ids:
            commands += [("XPENDING", self.o.stream, self.o.group, i, i, 1),
                         ("XRANGE", self.o.stream, i, i)]
        replies = self.link.pipeline(commands)
        found: Dict[str, Tuple[Optional[str], bool]] = {}
        for n, entry_id in enumerate(ids):
            entries = parse_pending(_raise_if_error(replies[2 * n]))
            exists = bool(_raise_if_error(replies[2 * n + 1]))
            found[entry_id] = (entries[0].consumer if entries else None, exists)
        return found

    def delete_consumer_if_empty(self, consumer: str, min_idle_ms: int) -> bool:
        return int(self.link.call(*self._delconsumer(consumer, min_idle_ms))) == 1

    def _delconsumer(self, consumer: str, min_idle_ms: int) -> Tuple[Any, ...]:
        return ("EVAL", scripts.DELCONSUMER, 1, self.o.stream, self.o.group, consumer, min_idle_ms)


def _pack(*args: Any) -> bytes:
    """One command in RESP, packed by hiredis in C."""
    packed: bytes = hiredis.pack_command(args)
    return packed


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _refuses_xackdel(reply: Any) -> bool:
    """Whether an XACKDEL error reply says this server will not run it (unknown command, a proxy
    that does not pass it, an ACL refusal), not a fault every command would meet (an outage, a
    moved slot, a wrong key type). Falling back is safe either way: MULTI/EXEC then fails on a
    fault of the key or the user with its own error."""
    return isinstance(reply, RStreamError) and not isinstance(reply, (TransientError, WrongType))


def _raise_if_error(reply: Any) -> Any:
    if isinstance(reply, RStreamError):
        raise reply
    if isinstance(reply, Exception):  # an error nested in an EXEC reply
        raise translate(reply)
    return reply


__all__ = ["StreamOps", "SettleResult", "GroupMissing"]
