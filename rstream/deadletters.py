"""Dead letters: list what a Consumer moved to its dead-letter stream, and replay entries back to
the stream they came from, each one atomically (never in both streams, never in neither).

A dead letter (built by `settle.dead_letter_fields`, written by `scripts.DEAD_LETTER`) is the
original entry's fields followed by six pairs, always last and in this order: ``rstream-stream``
(the source stream), ``rstream-id``, ``rstream-group``, ``rstream-consumer``,
``rstream-attempt``, ``rstream-error``. Only those six are rstream's: an original field named
``rstream-trace`` stays an original field. (redis-py hands an entry over as a dict, so a
listing cannot show an original field that has one of those six names; a replay can, and
does: the script takes the original fields by position, ahead of the last six pairs.)

A replay moves one entry per script (`REPLAY`): the script reads the entry again, so two
replays of the same id (two operators, or a command re-sent after a lost reply) move it once;
the second finds it gone and says so. A replay's range ends at the last dead letter present when
it starts: an entry whose handler fails again is dead-lettered anew, and must not be replayed
again by the same run (it would circle for ever).

In Redis Cluster a script's keys must share a slot: the dead-letter stream and each source
stream do when they share a hash tag (``{orders}`` and ``{orders}:dlq``), which a Consumer
already requires (`clients.check_same_slot`). An entry whose source is in another slot is not
touched: the replay stops with a `ReplayError` naming both streams.

Commands (D = dead-letter stream, S = a source stream):
- ``XRANGE D <start> <end> COUNT n`` — a page of dead letters (list, and what a replay picks).
- ``XRANGE D id id`` — a dead letter asked for by id.
- ``XREVRANGE D + - COUNT 1`` — the last dead letter, where a replay's range ends.
- ``EXISTS D`` — whether a dead-letter stream with no entries exists at all (`stream_exists`).
- ``EVAL <replay> 2 D S id`` — ``XRANGE D id id`` (still there, and from S?), ``XADD S * <the
  original fields>``, ``XDEL D id``, in one step (Redis 7+ first asks ``redis.acl_check_cmd``
  whether the user may run both writes).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import redis

from .errors import ConfigError, RStreamError
from .faults import translate

PAGE = 200  # entries per XRANGE: long reads block the server for everyone else
META = ("rstream-stream", "rstream-id", "rstream-group", "rstream-consumer", "rstream-attempt",
        "rstream-error")
_BOUND = re.compile(r"^\(?\d+(-\d+)?$")
_ENTRY_ID = re.compile(r"^\d+-\d+$")
T = TypeVar("T")

# KEYS: dead-letter stream, source stream. ARGV: dead-letter id.
# Returns {'moved', new id}, {'gone'}, {'foreign'} (not written by rstream), {'elsewhere',
# source} (the entry names another source than KEYS[2]) or {'denied', command}.
# XADD before XDEL: a script error does not roll back earlier writes, so a refused XADD (wrong
# type, memory) must fail before the dead letter is deleted. The original fields are taken by
# position from the entry itself, so they go back exactly as they were (order included).
REPLAY = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return {'gone'} end
local flat = found[1][2]
local n = #flat - 12
if n < 2 then return {'foreign'} end
local meta = {'rstream-stream', 'rstream-id', 'rstream-group', 'rstream-consumer',
              'rstream-attempt', 'rstream-error'}
for i, name in ipairs(meta) do
  if flat[n + 2 * i - 1] ~= name then return {'foreign'} end
end
if flat[n + 2] ~= KEYS[2] then return {'elsewhere', flat[n + 2]} end
if redis.acl_check_cmd then
  if not redis.acl_check_cmd('XADD', KEYS[2], '*', 'f', 'v') then return {'denied', 'XADD'} end
  if not redis.acl_check_cmd('XDEL', KEYS[1], ARGV[1]) then return {'denied', 'XDEL'} end
end
local id = redis.call('XADD', KEYS[2], '*', unpack(flat, 1, n))
redis.call('XDEL', KEYS[1], ARGV[1])
return {'moved', id}
"""


class NotADeadLetter(RStreamError):
    """An entry of the dead-letter stream that rstream did not write (it lacks rstream's
    fields): listed or replayed, it would be guessed at, so it stops the command."""


class ReplayError(RStreamError):
    """A dead letter that cannot be replayed as asked: its source is in another Redis Cluster
    slot, the ACL refuses a write, or the entry changed under the replay."""


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """One dead letter: its id in the dead-letter stream, where it came from (`source`,
    `original_id`), who failed it (`group`, `consumer`, on which `attempt`, with `error`) and
    the original `fields` (bytes, or str from a client with ``decode_responses=True``)."""

    id: str
    source: str
    original_id: str
    group: str
    consumer: str
    attempt: int
    error: str
    fields: Dict[Any, Any]


@dataclasses.dataclass(frozen=True)
class Replay:
    """What a replay did with one dead letter: `new_id` is its id in `source`, or None when it
    was gone (replayed already, by another run or a re-sent command, or deleted); `source` is
    None when it was gone before it could be read."""

    dead_letter_id: str
    source: Optional[str]
    new_id: Optional[str]


def parse_dead_letter(entry_id: Any, fields: Dict[Any, Any]) -> DeadLetter:
    """The `DeadLetter` for an entry as redis-py returns it (id, field dict); `NotADeadLetter`
    if rstream's fields are missing or the attempt is not a number."""
    text = {_text(k): v for k, v in fields.items()}
    dead_id = _text(entry_id)
    missing = [name for name in META if name not in text]
    attempt = _text(text.get("rstream-attempt", ""))
    if missing or not attempt.isdigit():
        what = f"has no {', '.join(missing)}" if missing else f"has rstream-attempt {attempt!r}"
        raise NotADeadLetter(f"entry {dead_id} was not written by rstream: it {what}")
    return DeadLetter(id=dead_id, source=_text(text["rstream-stream"]),
                      original_id=_text(text["rstream-id"]), group=_text(text["rstream-group"]),
                      consumer=_text(text["rstream-consumer"]), attempt=int(attempt),
                      error=_text(text["rstream-error"]),
                      fields={k: v for k, v in fields.items() if _text(k) not in META})


def list_dead_letters(client: Any, dead_letter_stream: str, start: str = "-", end: str = "+",
                      count: Optional[int] = None, source: Optional[str] = None) -> List[DeadLetter]:
    """The dead letters from `start` to `end` (ids, inclusive unless prefixed with ``(``), oldest
    first, at most `count`, only those from `source` if given. A missing stream has none."""
    _check_count(count)
    return list(_limit(_from(_pages(client, dead_letter_stream, start, end), source), count))


def stream_exists(client: Any, dead_letter_stream: str) -> bool:
    """Whether the key exists: an empty list may be a stream never created (nothing has failed
    yet) or a mistyped name."""
    return bool(_call(client.exists, dead_letter_stream))


def replay(client: Any, dead_letter_stream: str, ids: Optional[Sequence[str]] = None,
           start: str = "-", end: str = "+", count: Optional[int] = None,
           source: Optional[str] = None) -> List[Tuple[str, Optional[str]]]:
    """Move dead letters back to their source streams; ``(dead-letter id, new id in the
    source)`` for each, the new id None for one already gone. See `iter_replay`."""
    return [(r.dead_letter_id, r.new_id)
            for r in iter_replay(client, dead_letter_stream, ids, start, end, count, source)]


def iter_replay(client: Any, dead_letter_stream: str, ids: Optional[Sequence[str]] = None,
                start: str = "-", end: str = "+", count: Optional[int] = None,
                source: Optional[str] = None) -> Iterator[Replay]:
    """Replay, yielding each `Replay` as soon as the server did it. Either `ids` (in that order;
    an id asked twice is gone the second time) or a range `start`..`end` with at most `count`
    entries; `source` keeps only the dead letters of that stream (others are left alone and
    not reported). Stops with `NotADeadLetter` or `ReplayError` at an entry it must not move,
    after replaying those before it."""
    if ids is not None:
        if isinstance(ids, str) or (start, end, count) != ("-", "+", None):
            raise ConfigError("replay takes ids (a list) or a start/end/count range, not both")
        wrong = [i for i in ids if not is_entry_id(i)]
        if wrong:
            raise ConfigError(f"not a stream entry id (ms-seq): {wrong[0]!r}")
        return _replay_ids(client, dead_letter_stream, ids, source)
    _check_count(count)
    letters = _from(_until_last(client, dead_letter_stream, start, end), source)
    return (replay_one(client, dead_letter_stream, letter) for letter in _limit(letters, count))


def replay_one(client: Any, dead_letter_stream: str, letter: DeadLetter) -> Replay:
    """Move `letter` back to its source stream in one script: XADD there, XDEL here."""
    key_slot: Optional[Callable[[str], int]] = getattr(client, "keyslot", None)
    if key_slot is not None and key_slot(dead_letter_stream) != key_slot(letter.source):
        raise ReplayError(
            f"cannot replay {letter.id} atomically: in Redis Cluster {dead_letter_stream!r} and its "
            f"source {letter.source!r} hash to different slots; name them with one hash tag, "
            "e.g. '{orders}' and '{orders}:dlq'")
    reply = _call(client.eval, REPLAY, 2, dead_letter_stream, letter.source, letter.id)
    status, *rest = [_text(x) for x in reply]
    if status == "moved":
        return Replay(letter.id, letter.source, rest[0])
    if status == "gone":
        return Replay(letter.id, letter.source, None)
    if status == "foreign":
        raise NotADeadLetter(f"entry {letter.id} of {dead_letter_stream!r} was not written by "
                             "rstream: its last six fields are not rstream's")
    if status == "elsewhere":
        raise ReplayError(f"entry {letter.id} of {dead_letter_stream!r} now names source "
                          f"{rest[0]!r}, not {letter.source!r}: left where it is")
    raise ReplayError(f"cannot replay {letter.id}: the ACL does not let this user run {rest[0]} "
                      f"on {letter.source if rest[0] == 'XADD' else dead_letter_stream!r}")


def _replay_ids(client: Any, dead_letter_stream: str, ids: Sequence[str],
                source: Optional[str]) -> Iterator[Replay]:
    for entry_id in ids:
        found = _call(client.xrange, dead_letter_stream, entry_id, entry_id)
        if not found:
            yield Replay(entry_id, None, None)
            continue
        letter = parse_dead_letter(*found[0])
        if source is None or letter.source == source:
            yield replay_one(client, dead_letter_stream, letter)


def _until_last(client: Any, dead_letter_stream: str, start: str, end: str) -> Iterator[DeadLetter]:
    """The dead letters from `start` to `end`, but none added after this was called."""
    last = _call(client.xrevrange, dead_letter_stream, "+", "-", count=1)
    if not last:
        return
    bound = _id_key(_text(last[0][0]))
    for letter in _pages(client, dead_letter_stream, start, end):
        if _id_key(letter.id) > bound:
            return
        yield letter


def _pages(client: Any, dead_letter_stream: str, start: str, end: str) -> Iterator[DeadLetter]:
    """Every dead letter from `start` to `end`, read a page at a time. A page goes on after the
    last id seen, so entries a replay deletes meanwhile do not shift it."""
    at = start
    while True:
        page = _call(client.xrange, dead_letter_stream, at, end, count=PAGE)
        for entry_id, fields in page:
            yield parse_dead_letter(entry_id, fields)
        if len(page) < PAGE:
            return
        at = "(" + _text(page[-1][0])


def _from(letters: Iterator[DeadLetter], source: Optional[str]) -> Iterator[DeadLetter]:
    return letters if source is None else (x for x in letters if x.source == source)


def _limit(items: Iterator[T], count: Optional[int]) -> Iterator[T]:
    for n, item in enumerate(items):
        if count is not None and n >= count:
            return
        yield item


def _check_count(count: Optional[int]) -> None:
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count <= 0):
        raise ConfigError(f"count must be a positive int or None, got {count!r}")


def is_stream_id(text: str) -> bool:
    """An id XRANGE takes as a bound: ``-``, ``+``, ``ms`` or ``ms-seq``, ``(`` for exclusive."""
    return text in ("-", "+") or _BOUND.match(text) is not None


def is_entry_id(text: str) -> bool:
    """A whole entry id, ``ms-seq``: ``XRANGE D ms ms`` would name every entry of that ms."""
    return _ENTRY_ID.match(text) is not None


def _id_key(entry_id: str) -> Tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _call(command: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one redis-py command, its errors translated onto rstream's tree (`rstream.faults`)."""
    try:
        return command(*args, **kwargs)
    except redis.RedisError as exc:
        raise translate(exc) from None


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)
