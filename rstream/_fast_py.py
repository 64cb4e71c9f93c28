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


def ack_args(stream: Any, group: Any, ids: Iterable[Any]) -> List[Any]:
    """``["XACK", stream, group, *ids]`` as a new list, ready for one packed command."""
    args = ["XACK", stream, group]
    args.extend(ids)
    return args


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."
