"""What a stream's consumer groups look like right now: `describe_stream` and `describe_streams`,
behind `rstream info`.

The report is built by a pure function (`build_report`) from the raw RESP2 replies one look
gathers (`StreamReplies`), so it is tested on replies captured from real servers; the
rest of this module only sends the commands. The report of one stream::

    {"stream": S, "length": n, "groups": [{"name", "pending", "lag", "last_delivered_id",
     "oldest_pending_age_ms", "consumers": [{"name", "pending", "idle_ms", "alive"}]}]}

plus ``"dead_letter_length"`` when a dead-letter stream is named. What each value means:

- ``alive``: rstream's heartbeat rule, the one its failover judges by (`rstream.failover`): a
  consumer idle (by the server's clock) for at most ``heartbeat_interval *
  allowed_missed_heartbeats`` ms is alive; a longer idle means it stopped beating and another
  consumer of the group will claim its entries.
- ``lag``: entries of the stream not yet delivered to the group. Redis 7+ and Valkey report it
  (XINFO GROUPS). Where the server gives none (Redis 6.2 has no lag; 7+ says null after entries
  were deleted) it is derived where XINFO STREAM makes it exact: 0 when the group has delivered
  the stream's last id (or the stream is empty), the stream's length when the group's position
  is before its first entry. Otherwise it is null: counting the entries in between would mean
  reading them.
- ``pending``: the group's entries delivered and not acked (XPENDING), each consumer's own
  (XINFO CONSUMERS), read in one round trip.
- ``oldest_pending_age_ms``: how long ago the oldest pending entry was added to the stream: the
  server's TIME minus the millisecond part of the smallest pending id (so no client clock is
  involved), at least 0, null when nothing is pending. It is the entry's age, not the time since
  it was last delivered (XPENDING's per-entry idle, which every redelivery resets). With ids the
  producer chose it is measured from those ids.

Commands (S = stream, G = group, D = dead-letter stream), over one connection per server
(per cluster node) made as the consumer makes its own (`rstream.connection`):
- ``TYPE S``, ``XINFO STREAM S``, ``XINFO GROUPS S`` — one round trip;
- ``XINFO CONSUMERS S G`` and ``XPENDING S G`` for every group reported, then ``TIME`` — one
  round trip;
- ``XLEN D`` when a dead-letter stream is named.
"""
from __future__ import annotations

import dataclasses
from types import TracebackType
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Type, TypedDict

from . import _hotpath as hot
from .connection import ConnectionFactory, Link, client_from_option
from .errors import ConfigError, GroupMissing, RStreamError, StreamMissing, WrongType
from .stats import Backlog
from .failover import is_dead, parse_consumers
from .options import Options


class ConsumerReport(TypedDict):
    name: str
    pending: int
    idle_ms: int
    alive: bool


class GroupReport(TypedDict):
    name: str
    pending: int
    lag: Optional[int]
    last_delivered_id: str
    oldest_pending_age_ms: Optional[int]
    consumers: List[ConsumerReport]


class _StreamReportKeys(TypedDict):
    stream: str
    length: int
    groups: List[GroupReport]


class StreamReport(_StreamReportKeys, total=False):
    dead_letter_length: int


@dataclasses.dataclass(frozen=True)
class Liveness:
    """rstream's heartbeat rule, with the Consumer's defaults (ms)."""

    heartbeat_interval: int = Options.heartbeat_interval
    allowed_missed_heartbeats: int = Options.allowed_missed_heartbeats

    def __post_init__(self) -> None:
        for name in ("heartbeat_interval", "allowed_missed_heartbeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")

    @property
    def dead_after_ms(self) -> int:
        return self.heartbeat_interval * self.allowed_missed_heartbeats

    def alive(self, idle_ms: int) -> bool:
        return not is_dead(idle_ms, self.dead_after_ms)


@dataclasses.dataclass(frozen=True)
class StreamReplies:
    """The raw replies (bytes, or str with decode_responses) one look at `stream` gathered.
    `consumers` and `pending` map each reported group's name to its XINFO CONSUMERS and
    XPENDING summary replies; `group` is the one group asked for, or None for all."""

    stream: str
    type: Any
    stream_info: Any
    groups: Any
    time: Any
    consumers: Mapping[str, Any]
    pending: Mapping[str, Any]
    group: Optional[str] = None
    dead_letter_length: Optional[int] = None


def build_report(replies: StreamReplies, liveness: Liveness) -> StreamReport:
    """The report of one stream (the module docstring says what each value means). Pure."""
    check_type(replies.stream, replies.type)
    info = _pairs(replies.stream_info)
    now_ms = server_time_ms(replies.time)
    groups = [_group_report(g, info, replies, now_ms, liveness)
              for g in select_groups(replies.stream, replies.groups, replies.group)]
    report = StreamReport(stream=replies.stream, length=int(info["length"]), groups=groups)
    if replies.dead_letter_length is not None:
        report["dead_letter_length"] = replies.dead_letter_length
    return report


def check_type(stream: str, type_reply: Any) -> None:
    """StreamMissing or WrongType, naming the key, unless TYPE said it is a stream."""
    kind = _text(type_reply)
    if kind == "none":
        raise StreamMissing(f"stream {stream!r} does not exist")
    if kind != "stream":
        raise WrongType(f"key {stream!r} holds a {kind}, not a stream", key=stream)


def select_groups(stream: str, groups_reply: Any, group: Optional[str]) -> List[Dict[str, Any]]:
    """The XINFO GROUPS entries to report: all, or only `group` (GroupMissing if it has none)."""
    groups = [_pairs(g) for g in groups_reply or ()]
    if group is None:
        return groups
    chosen = [g for g in groups if _text(g["name"]) == group]
    if not chosen:
        raise GroupMissing(f"stream {stream!r} has no consumer group {group!r}")
    return chosen


def server_time_ms(time_reply: Sequence[Any]) -> int:
    """TIME's [seconds, microseconds] in milliseconds."""
    return int(time_reply[0]) * 1000 + int(time_reply[1]) // 1000


def group_lag(group: Mapping[str, Any], stream_info: Mapping[str, Any]) -> Optional[int]:
    """The server's lag (Redis 7+); without one (Redis 6.2, or null), the lag where XINFO
    STREAM makes it exact; else None."""
    if group.get("lag") is not None:
        return int(group["lag"])
    delivered = group["last-delivered-id"]
    if hot.compare_ids(delivered, stream_info["last-generated-id"]) >= 0:
        return 0
    first = stream_info.get("first-entry")
    if not first:
        return 0  # empty stream: nothing left to deliver
    if hot.compare_ids(delivered, first[0]) < 0:
        return int(stream_info["length"])
    return None


def oldest_pending_age_ms(pending_reply: Sequence[Any], now_ms: int) -> Optional[int]:
    """Server time minus the ms part of XPENDING's smallest pending id; None if none pend."""
    if not int(pending_reply[0]) or pending_reply[1] is None:
        return None
    added_ms, _ = hot.parse_id(pending_reply[1])
    return max(0, now_ms - added_ms)


def backlog_of(stream: str, group: str, stream_info: Any, groups: Any, pending: Any,
               time_reply: Sequence[Any]) -> Backlog:
    """One group's `Backlog` from XINFO STREAM, XINFO GROUPS, XPENDING and TIME replies."""
    [found] = select_groups(stream, groups, group)
    return Backlog(pending=int(pending[0]), lag=group_lag(found, _pairs(stream_info)),
                   oldest_pending_age_ms=oldest_pending_age_ms(pending, server_time_ms(time_reply)))


def _group_report(group: Mapping[str, Any], info: Mapping[str, Any], replies: StreamReplies,
                  now_ms: int, liveness: Liveness) -> GroupReport:
    name = _text(group["name"])
    pending = replies.pending[name]
    consumers = [ConsumerReport(name=c.name, pending=c.pending, idle_ms=c.idle_ms,
                                alive=liveness.alive(c.idle_ms))
                 for c in parse_consumers(replies.consumers[name])]
    return GroupReport(name=name, pending=int(pending[0]), lag=group_lag(group, info),
                       last_delivered_id=_text(group["last-delivered-id"]),
                       oldest_pending_age_ms=oldest_pending_age_ms(pending, now_ms),
                       consumers=consumers)


def _pairs(reply: Any) -> Dict[str, Any]:
    """A RESP2 flat [key, value, ...] list (or a RESP3 map) as a dict with str keys."""
    if isinstance(reply, dict):
        return {_text(k): v for k, v in reply.items()}
    return {_text(reply[i]): reply[i + 1] for i in range(0, len(reply) - 1, 2)}


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def describe_stream(client: Any, stream: str, group: Optional[str] = None,
                    heartbeat_interval: int = Options.heartbeat_interval,
                    allowed_missed_heartbeats: int = Options.allowed_missed_heartbeats,
                    dead_letter_stream: Optional[str] = None) -> StreamReport:
    """The report of `stream` (see the module docstring). `client` is anything the Consumer's
    `redis=` accepts (a client made here from a URL or dict is closed afterwards). Raises
    StreamMissing, GroupMissing (`group` given but absent) or WrongType naming the key, and
    RedisUnavailable when the server cannot be reached."""
    return describe_streams(client, [stream], group, heartbeat_interval,
                            allowed_missed_heartbeats, dead_letter_stream)[0]


def describe_streams(client: Any, streams: Iterable[str], group: Optional[str] = None,
                     heartbeat_interval: int = Options.heartbeat_interval,
                     allowed_missed_heartbeats: int = Options.allowed_missed_heartbeats,
                     dead_letter_stream: Optional[str] = None) -> List[StreamReport]:
    """`describe_stream` for each of `streams`, in order (each its own snapshot)."""
    if isinstance(streams, (str, bytes)):
        raise ConfigError(f"streams must be a list of stream names, got the string {streams!r}")
    liveness = Liveness(heartbeat_interval, allowed_missed_heartbeats)
    owned = isinstance(client, (str, dict))
    client = client_from_option(client)
    try:
        with _Links(client) as links:
            return [build_report(_look(links, s, group, dead_letter_stream), liveness)
                    for s in streams]
    finally:
        if owned:
            client.close()


def _look(links: "_Links", stream: str, group: Optional[str],
          dead_letter_stream: Optional[str]) -> StreamReplies:
    link = links.for_key(stream)
    kind, info, groups = link.pipeline([("TYPE", stream), ("XINFO", "STREAM", stream),
                                        ("XINFO", "GROUPS", stream)])
    check_type(stream, _raised(kind))  # first: it explains the XINFO errors of a missing key
    groups = _raised(groups)
    names = [g["name"] for g in select_groups(stream, groups, group)]
    commands = [c for n in names for c in (("XINFO", "CONSUMERS", stream, n), ("XPENDING", stream, n))]
    replies = [_raised(r) for r in link.pipeline([*commands, ("TIME",)])]
    texts = [_text(n) for n in names]
    return StreamReplies(
        stream=stream, type=kind, stream_info=_raised(info), groups=groups, time=replies[-1],
        consumers=dict(zip(texts, replies[0:-1:2])), pending=dict(zip(texts, replies[1:-1:2])),
        group=group, dead_letter_length=_dead_letter_length(links, dead_letter_stream))


def _dead_letter_length(links: "_Links", dead_letter_stream: Optional[str]) -> Optional[int]:
    """XLEN of the dead-letter stream (0 before the first dead letter creates it)."""
    if dead_letter_stream is None:
        return None
    try:
        return int(links.for_key(dead_letter_stream).call("XLEN", dead_letter_stream))
    except WrongType:
        raise WrongType(f"dead-letter stream {dead_letter_stream!r} holds another type than a "
                        "stream", key=dead_letter_stream) from None


def _raised(reply: Any) -> Any:
    """A reply, or the error it is (a pipeline returns error replies in their place) raised."""
    if isinstance(reply, RStreamError):
        raise reply
    return reply


class _Links:
    """One connection per server the keys live on (in a Redis Cluster, per node), all closed
    together."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._by_server: Dict[str, Link] = {}

    def for_key(self, key: str) -> Link:
        factory = ConnectionFactory(self._client, key)
        where = factory.describe()
        if where not in self._by_server:
            self._by_server[where] = factory.make("info")
        return self._by_server[where]

    def __enter__(self) -> "_Links":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        for link in self._by_server.values():
            link.close()
