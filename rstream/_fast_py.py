"""Pure-Python reference for the hot path: stream-id arithmetic and reply decoding.

`rstream/_fast.pyx` is its compiled twin: same names, same results, same exceptions (type and
message); `tests/test_hotpath_parity.py` holds them to that. Import these functions from
`rstream._hotpath`, which picks the compiled twin when it is available.

Pure: no Redis, no threads. Replies arrive as hiredis parsed them: bytes (or str with
``decode_responses=True``), RESP2 lists or RESP3 maps.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

import hiredis

from rstream.message import Message

IdLike = Union[str, bytes]

MAX_ID_PART = 2**64 - 1
# Errors repeat the offending entry; a multi-megabyte value must not land in a log line whole.
_REPR_LIMIT = 100
_DIGITS = frozenset(b"0123456789")


def parse_id(value: IdLike) -> Tuple[int, int]:
    """``"1700000000000-5"`` -> ``(1700000000000, 5)``; anything else raises ValueError.

    Hand-parsed because ``int()`` also takes signs, spaces, underscores and non-ASCII digits,
    none of which Redis would accept in an id.
    """
    if isinstance(value, str):
        try:
            raw = value.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"invalid stream id: {value!r}") from None
    elif isinstance(value, bytes):
        raw = value
    else:
        raise ValueError(f"invalid stream id: {value!r}")
    ms_text, dash, seq_text = raw.partition(b"-")
    if not (dash and _is_digits(ms_text) and _is_digits(seq_text)):
        raise ValueError(f"invalid stream id: {value!r}")
    ms, seq = int(ms_text), int(seq_text)
    if ms > MAX_ID_PART or seq > MAX_ID_PART:
        raise ValueError(f"invalid stream id: {value!r}")
    return ms, seq


def _is_digits(text: bytes) -> bool:
    return bool(text) and _DIGITS.issuperset(text)


def format_id(ms: int, seq: int) -> str:
    """``(1700000000000, 5)`` -> ``"1700000000000-5"``; the inverse of `parse_id`."""
    if not (_is_id_part(ms) and _is_id_part(seq)):
        raise ValueError(f"invalid stream id parts: ({ms!r}, {seq!r})")
    # int() so an int subclass (an IntEnum, say) formats as its number.
    return f"{int(ms)}-{int(seq)}"


def _is_id_part(part: object) -> bool:
    # bool is an int, but True-0 is no stream id.
    return isinstance(part, int) and not isinstance(part, bool) and 0 <= part <= MAX_ID_PART


def compare_ids(a: IdLike, b: IdLike) -> int:
    """-1, 0 or 1 as ``a`` is before, equal to or after ``b`` (numeric, not string, order)."""
    left, right = parse_id(a), parse_id(b)
    return (left > right) - (left < right)


def decode_read_reply(reply: Any) -> List[Tuple[Any, Any]]:
    """XREAD/XREADGROUP reply -> ``[(stream_key, entries), ...]``.

    ``None`` (BLOCK timed out) gives ``[]``; RESP2 gives ``[[key, entries], ...]`` and RESP3
    ``{key: entries}``, both come out the same.
    """
    if reply is None:
        return []
    if isinstance(reply, dict):
        return list(reply.items())
    if not isinstance(reply, (list, tuple)):
        raise ValueError(f"malformed read reply: {_short_repr(reply)}")
    streams: List[Tuple[Any, Any]] = []
    for item in reply:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ValueError(f"malformed read reply item: {_short_repr(item)}")
        streams.append((item[0], item[1]))
    return streams


def decode_entries(
    entries: Optional[Sequence[Any]],
    stream: str,
    attempt: Union[int, Mapping[str, int]],
) -> Tuple[List[Message], List[str]]:
    """``[[id, [k1, v1, ...]], ...]`` -> ``(messages, deleted_ids)``, both in reply order.

    An entry whose fields are ``None`` (or empty) was deleted or trimmed after it was delivered:
    its id goes to ``deleted_ids`` so the caller can acknowledge it instead of handing out garbage.
    ``attempt`` is one delivery count for all, or a mapping id -> count (a missing id counts 1).
    """
    if type(attempt) is int and type(entries) is list:
        try:
            return _decode_plain(entries, stream, attempt)
        except Exception:  # noqa: BLE001 - the checking loop below raises the precise error
            pass
    default_attempt, attempts = _split_attempt(attempt)
    messages: List[Message] = []
    deleted: List[str] = []
    for entry in () if entries is None else entries:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ValueError(f"malformed stream entry: {_short_repr(entry)}")
        raw_id, flat = entry
        entry_id = _entry_id(raw_id, entry)
        if not isinstance(flat, (dict, list, tuple)) and flat is not None:
            raise ValueError(f"malformed stream entry: {_short_repr(entry)}")
        if not flat:
            deleted.append(entry_id)
            continue
        if isinstance(flat, dict):
            fields = dict(flat)
        elif len(flat) % 2:
            raise ValueError(f"malformed stream entry {entry_id!r}: odd number of field items")
        else:
            fields = dict(zip(flat[::2], flat[1::2]))
        count = default_attempt if attempts is None else attempts.get(entry_id, default_attempt)
        messages.append(Message(entry_id, stream, fields, count))
    return messages, deleted


def _decode_plain(entries: List[Any], stream: str, attempt: int) -> Tuple[List[Message], List[str]]:
    """The common reply (a list of [bytes or str id, flat list or None]) with the fewest Python
    operations per entry; anything unusual raises, and `decode_entries` then redoes the reply
    with every check, so results and errors are the checking loop's."""
    messages: List[Message] = []
    deleted: List[str] = []
    append = messages.append
    for raw_id, flat in entries:
        entry_id = raw_id.decode("ascii") if type(raw_id) is bytes else raw_id
        if type(entry_id) is not str:
            raise ValueError
        if flat:
            if type(flat) is not list or len(flat) & 1:
                raise ValueError
            pairs = iter(flat)
            append(Message(entry_id, stream, dict(zip(pairs, pairs)), attempt))
        elif flat is None or type(flat) is list:
            deleted.append(entry_id)
        else:
            raise ValueError
    return messages, deleted


def _split_attempt(attempt: object) -> Tuple[int, Optional[Mapping[str, int]]]:
    """(count for all entries, None) or (1 for ids missing from the mapping, the mapping)."""
    if isinstance(attempt, int) and not isinstance(attempt, bool):
        return attempt, None
    if isinstance(attempt, Mapping):
        return 1, attempt
    raise TypeError(f"attempt must be an int or a mapping of id to int, got {_short_repr(attempt)}")


def _entry_id(raw_id: object, entry: object) -> str:
    if isinstance(raw_id, str):
        return raw_id
    if isinstance(raw_id, bytes):
        try:
            return raw_id.decode("ascii")
        except UnicodeDecodeError:
            pass
    raise ValueError(f"malformed stream entry: {_short_repr(entry)}")


def pack_ack(stream: bytes, group: bytes, ids: Iterable[Any]) -> bytes:
    """The RESP bytes of ``XACK stream group id...`` (``stream`` and ``group`` bytes, the ids
    str or bytes), byte for byte what hiredis packs for the same arguments."""
    args = ("XACK", stream, group, *ids)
    for item in args[3:]:
        if not isinstance(item, (str, bytes)):
            raise TypeError(f"a stream id must be str or bytes, got {_short_repr(item)}")
    packed: bytes = hiredis.pack_command(args)
    return packed


# Replies read straight from a connection's bytes (see rstream.wire).
_NEED_MORE = -1

def _scan(data: bytes, p: int, remaining: int) -> Tuple[int, int]:
    """Step over whole RESP2 values from ``p`` while ``remaining`` are due (an array's items
    are added to it): the offset after the last whole one, and how many are still due. Above
    0, the buffer stops inside the value at that offset: call again from there once it grew."""
    while remaining > 0:
        if p >= len(data):
            return p, remaining
        kind, number = data[p], 0
        if kind in b"+-:":
            line_end = data.find(b"\r\n", p + 1)
            q = _NEED_MORE if line_end < 0 else line_end + 2
        elif kind == ord("$"):
            number, q = _header(data, p + 1)
            if q >= 0 and number >= 0:
                if len(data) - q < number + 2:
                    q = _NEED_MORE
                elif data[q + number:q + number + 2] != b"\r\n":
                    raise ValueError("protocol error: bulk string without CRLF")
                else:
                    q += number + 2
            elif q >= 0 and number != -1:
                raise ValueError("protocol error: bulk length below -1")
            number = 0
        elif kind == ord("*"):
            number, q = _header(data, p + 1)
            if q >= 0 and number < -1:
                raise ValueError("protocol error: array length below -1")
        else:
            raise ValueError(f"protocol error: unexpected byte {bytes([kind])!r}")
        if q < 0:
            return p, remaining
        remaining += max(number, 0) - 1
        p = q
    return p, remaining


def reply_end(buffer: Union[bytes, bytearray, memoryview], pos: int = 0) -> int:
    """The offset just after the RESP2 reply that starts at ``pos`` in ``buffer`` (bytes-like),
    or -1 when the buffer does not hold all of it yet. A byte that starts no RESP2 value raises
    ValueError (protocol error)."""
    data = bytes(buffer)
    if not 0 <= pos <= len(data):
        raise ValueError("reply_end: pos out of range")
    if pos == len(data):
        return _NEED_MORE
    end, remaining = _scan(data, pos, 1)
    return end if remaining == 0 else _NEED_MORE


class ReplyScan:
    """`reply_end` of the reply at the front of a buffer that grows between calls, each byte
    scanned once: `end(buffer)` goes on from where the last call stopped. `reset()` once that
    reply was taken off the buffer's front, for the next one."""

    def __init__(self) -> None:
        self._p = 0
        self._remaining = 1

    def reset(self) -> None:
        self._p = 0
        self._remaining = 1

    def end(self, buffer: Union[bytes, bytearray, memoryview]) -> int:
        """The offset just after the reply, or -1 while the buffer does not hold all of it."""
        data = bytes(buffer)
        if self._p > len(data):
            raise ValueError("ReplyScan: the buffer is shorter than what was scanned of it")
        if self._p < len(data):
            self._p, self._remaining = _scan(data, self._p, self._remaining)
        return self._p if self._remaining == 0 else _NEED_MORE


def _header(data: bytes, p: int) -> Tuple[int, int]:
    """The length (``-?digits``, 18 digits at most) that starts at ``p`` and ends at CRLF, and
    the offset after the CRLF; (0, -1) when the line is not complete yet. A line that cannot
    become a length raises ValueError."""
    negative = data[p:p + 1] == b"-"
    p += negative
    start = p
    while p < len(data) and data[p] in _DIGITS:
        if p - start == 18:
            raise ValueError("protocol error: length out of range")
        p += 1
    if p >= len(data):
        return 0, _NEED_MORE
    if data[p] != 13 or p == start:
        raise ValueError("protocol error: malformed length line")
    if p + 1 >= len(data):
        return 0, _NEED_MORE
    if data[p + 1] != 10:
        raise ValueError("protocol error: malformed length line")
    value = int(data[start:p])
    return (-value if negative else value), p + 2


_OTHER = -3
_FIELD_CACHE = 16


def decode_stream_reply(buffer: Union[bytes, bytearray, memoryview], pos: int, stream: str,
                        attempt: Union[int, Mapping[str, int]], encoding: Optional[str] = None,
                        errors: str = "strict") -> Optional[Tuple[List[Message], List[str], int]]:
    """The XREADGROUP reply of one stream (RESP2) that starts at ``pos`` in ``buffer``
    (bytes-like) -> ``(messages, deleted_ids, end)``: what `decode_read_reply` and
    `decode_entries` give for the same reply parsed by hiredis, and the offset just after
    it; a nil reply (BLOCK timed out) gives two empty lists. ``([], [], -1)`` when the buffer
    does not hold the whole reply yet. Field names and values are bytes, or str decoded with
    ``encoding`` and ``errors`` (a ``decode_responses`` client). None when the reply is of
    any other shape (an error, several streams, anything unexpected): the caller parses it
    the general way (`reply_end`, hiredis), which also names what is wrong with it.

    The reference walks the bytes as the compiled twin does, item by item, so that both say
    None or "not yet" at the same point of a partial reply."""
    default_attempt, attempts = _split_attempt(attempt)
    data = bytes(buffer)
    if not 0 <= pos <= len(data):
        raise ValueError("decode_stream_reply: pos out of range")
    if pos == len(data):
        return [], [], _NEED_MORE
    walk = _Walk(data, pos)
    try:
        count = walk.array()
        if count == -1:
            return [], [], walk.p
        if count != 1 or walk.array() != 2:
            return None
        walk.bulk()
        entries = walk.array()
        if entries < 0:
            return None
        messages: List[Message] = []
        deleted: List[str] = []
        # The field names met last at each position, raw and built: the twin reuses the objects.
        names: List[Optional[Tuple[bytes, Any]]] = [None] * _FIELD_CACHE
        for _ in range(entries):
            if walk.array() != 2:
                return None
            entry_id = walk.bulk().decode("ascii")
            pairs = walk.array()
            if pairs <= 0:
                deleted.append(entry_id)
                continue
            if pairs & 1:
                return None
            fields = {}
            for i in range(pairs // 2):
                raw_key = walk.bulk()
                known = names[i] if i < _FIELD_CACHE else None
                if known is not None and known[0] == raw_key:
                    key = known[1]
                else:
                    key = _text(raw_key, encoding, errors)
                    if i < _FIELD_CACHE:
                        names[i] = (raw_key, key)
                fields[key] = _text(walk.bulk(), encoding, errors)
            count_for = default_attempt if attempts is None else attempts.get(entry_id, default_attempt)
            messages.append(Message(entry_id, stream, fields, count_for))
        return messages, deleted, walk.p
    except _NotYet:
        return [], [], _NEED_MORE
    except (_NotThisShape, UnicodeDecodeError, ValueError):
        return None


class _NotYet(Exception):
    pass


class _NotThisShape(Exception):
    pass


class _Walk:
    """A cursor over RESP2 bytes for `decode_stream_reply`."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.p = pos

    def _number(self, kind: bytes) -> int:
        if self.p >= len(self.data):
            raise _NotYet
        if self.data[self.p:self.p + 1] != kind:
            raise _NotThisShape
        number, p = _header(self.data, self.p + 1)
        if p < 0:
            raise _NotYet
        self.p = p
        return number

    def array(self) -> int:
        """An array's length (-1: nil)."""
        return self._number(b"*")

    def bulk(self) -> bytes:
        """A bulk string's bytes (not nil)."""
        size = self._number(b"$")
        if size < 0:
            raise _NotThisShape
        if len(self.data) - self.p < size + 2:
            raise _NotYet
        if self.data[self.p + size:self.p + size + 2] != b"\r\n":
            raise _NotThisShape
        value = self.data[self.p:self.p + size]
        self.p += size + 2
        return value


def _text(raw: bytes, encoding: Optional[str], errors: str) -> Any:
    return raw if encoding is None else raw.decode(encoding, errors)


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."
