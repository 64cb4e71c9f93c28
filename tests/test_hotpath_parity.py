"""The compiled hot path (`rstream._fast`) and its pure-Python reference (`rstream._fast_py`)
give equal results and raise the same exception type with the same message, on any input."""
from __future__ import annotations

import os
from types import MappingProxyType, ModuleType
from typing import Any, List, Optional, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paritykit import DECODING, MAX, PARITY, same
from rstream import _fast_py as pure
from rstream.message import Message

compiled: Optional[ModuleType]
try:
    from rstream import _fast as compiled
except ImportError:
    # Only an explicit opt-out may run without the extension; anywhere else its absence is a failure.
    if os.environ.get("RSTREAM_NO_EXTENSIONS") != "1":
        raise
    compiled = None

needs_compiled = pytest.mark.skipif(
    compiled is None, reason="rstream._fast not built (RSTREAM_NO_EXTENSIONS=1)"
)



def assert_same(name: str, *args: Any) -> Tuple[Any, ...]:
    assert compiled is not None
    return same(compiled, pure, name, *args)


# --- inputs -----------------------------------------------------------------------------------

parts = st.one_of(st.integers(0, MAX), st.sampled_from([0, 1, MAX - 1, MAX]))
id_texts = st.builds(lambda ms, seq, zeros: "0" * zeros + f"{ms}-{seq}", parts, parts, st.integers(0, 2))
ids = st.one_of(id_texts, id_texts.map(str.encode))
known_bad_ids = st.sampled_from([
    "", "-", "1-", "-1", "1", "1-2-3", "+1-2", "1-+2", " 1-2", "1-2 ", "1_0-2", "１-2", "1-２",
    "1.0-2", "0x1-2", "1-2\n", "18446744073709551616-0", "0-18446744073709551616", "99999999999999999999-0",
    "*", "$", ">", b"1-\xff", b"\xff-1", b"", b"1 -2", bytearray(b"1-2"), memoryview(b"1-2"),
    1, 1.5, None, (1, 2), ["1-2"],
])
any_ids = st.one_of(ids, known_bad_ids, st.text(max_size=30), st.binary(max_size=30))

non_utf8 = st.binary(min_size=1, max_size=8).map(lambda b: b"\xff" + b)
small_values = st.one_of(st.binary(max_size=40), st.just(b""), non_utf8)
large_values = st.integers(1 << 20, (1 << 20) + 64).map(lambda size: b"\x80\xfe" * (size // 2 + 1))
byte_values = st.one_of(small_values, small_values, small_values, large_values)


def flat_fields(keys: st.SearchStrategy[Any], values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A RESP2 flat field list, its tuple form or a RESP3 map; duplicate names are allowed."""
    pairs = st.lists(st.tuples(keys, values), max_size=6)
    return st.one_of(
        pairs.map(lambda ps: [item for pair in ps for item in pair]),
        pairs.map(lambda ps: tuple(item for pair in ps for item in pair)),
        pairs.map(dict),
    )


def entries_of(mode: str) -> st.SearchStrategy[List[Any]]:
    """Entries as hiredis gives them: bytes throughout, or str with decode_responses=True."""
    if mode == "bytes":
        entry_id, fields = id_texts.map(str.encode), flat_fields(st.binary(max_size=8), byte_values)
    else:
        entry_id, fields = id_texts, flat_fields(st.text(max_size=8), st.text(max_size=40))
    deleted: st.SearchStrategy[Any] = st.sampled_from([None, [], {}, ()])
    entry = st.builds(lambda i, f: [i, f], entry_id, st.one_of(fields, fields, fields, deleted))
    return st.lists(st.one_of(entry, entry.map(tuple)), max_size=8)


malformed_entries = st.sampled_from([
    None, 5, "1-0", b"1-0", [], [b"1-0"], [b"1-0", [b"a", b"b"], b"extra"], (b"1-0",),
    [b"1-0", [b"a"]], [b"1-0", [b"a", b"b", b"c"]], ["1-0", ("k",)], [b"1-\xff", [b"a", b"b"]],
    [1, [b"a", b"b"]], [None, None], [b"1-0", b"ab"], [b"1-0", 7], [b"1-0", "x" * 300],
    [b"1-0", [[1], b"unhashable"]], [b"9-9", [b"k", b"v" * 500, b"odd"]], b"y" * 300,
    [b"1-0", [b"a", b"b" * 200], b"x"], [b"1-\xff", [b"k", b"v" * 200]], ("z" * 150, [b"k", b"v"]),
])


def with_one_bad(good: List[Any], bad: Any, at: int) -> List[Any]:
    return good[:at] + [bad] + good[at:]


entry_lists = st.one_of(
    entries_of("bytes"),
    entries_of("str"),
    st.builds(with_one_bad, entries_of("bytes"), malformed_entries, st.integers(0, 8)),
    st.builds(with_one_bad, entries_of("str"), malformed_entries, st.integers(0, 8)),
)
bad_attempts = st.sampled_from([True, False, "3", 1.5, None, [1], b"1"])


def entry_ids(entries: List[Any]) -> List[str]:
    """The decodable ids among these entries, as decode_entries names them."""
    found = []
    for entry in entries:
        raw = entry[0] if isinstance(entry, (list, tuple)) and entry else None
        if isinstance(raw, str):
            found.append(raw)
        elif isinstance(raw, bytes) and raw.isascii():
            found.append(raw.decode())
    return found


@st.composite
def attempts_for(draw: st.DrawFn, entries: List[Any]) -> Any:
    """An int, garbage, or a mapping that covers some of these entries' ids (the rest count 1)."""
    choice = draw(st.integers(0, 5))
    if choice <= 1:
        return draw(st.integers(0, 10**6))
    if choice == 5:
        return draw(bad_attempts)
    known = entry_ids(entries)
    covered = draw(st.lists(st.sampled_from(known), unique=True)) if known else []
    mapping = {entry_id: draw(st.integers(1, 50)) for entry_id in covered}
    mapping.update(draw(st.dictionaries(id_texts, st.integers(1, 50), max_size=2)))
    return MappingProxyType(mapping) if choice == 4 else mapping


def read_reply(entries: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """XREAD(GROUP) replies: None on timeout, RESP2 [[key, entries], ...] or RESP3 {key: entries}."""
    keys = st.one_of(st.binary(max_size=10), st.text(max_size=10))
    resp2 = st.lists(st.builds(lambda k, e: [k, e], keys, entries), max_size=3)
    resp3 = st.dictionaries(keys, entries, max_size=3)
    malformed = st.sampled_from([5, b"x", "x", [[b"k"]], [[b"k", [], 1]], [b"k"], [None], ([b"k", []], 3)])
    return st.one_of(st.none(), resp2, resp2.map(tuple), resp3, malformed)


# --- stream ids -------------------------------------------------------------------------------

@needs_compiled
@PARITY
@given(any_ids)
def test_parse_id_matches(value: Any) -> None:
    """parse_id agrees on valid ids (0..2**64-1 parts, str and bytes) and on malformed ones."""
    assert_same("parse_id", value)


@needs_compiled
@PARITY
@given(parts | st.integers(-5, -1) | st.integers(MAX + 1, MAX + 5) | st.sampled_from([True, 1.0, "1"]), parts)
def test_format_id_matches_and_inverts_parse(ms: Any, seq: int) -> None:
    """format_id agrees, and parse_id(format_id(ms, seq)) gives back (ms, seq)."""
    result = assert_same("format_id", ms, seq)
    if result[0] == "returned":
        assert pure.parse_id(result[1][1]) == (ms, seq)


@needs_compiled
@PARITY
@given(st.one_of(ids, any_ids), st.one_of(ids, any_ids))
def test_compare_ids_matches(a: Any, b: Any) -> None:
    """compare_ids agrees, and orders by the numbers, not by the text."""
    result = assert_same("compare_ids", a, b)
    if result[0] == "returned":
        left, right = pure.parse_id(a), pure.parse_id(b)
        assert result[1][1] == (left > right) - (left < right)


# --- replies ----------------------------------------------------------------------------------

@needs_compiled
@DECODING
@given(st.data(), entry_lists)
def test_decode_entries_matches(data: st.DataObject, entries: List[Any]) -> None:
    """decode_entries agrees on bytes and str entries, deleted ones, RESP3 field maps, large and
    non-UTF-8 values, malformed entries, and attempt given as an int, a mapping or garbage."""
    attempt = data.draw(attempts_for(entries))
    assert_same("decode_entries", entries, "orders", attempt)
    assert_same("decode_entries", tuple(entries), b"orders", attempt)


@needs_compiled
@DECODING
@given(st.data(), read_reply(entries_of("bytes")) | read_reply(entries_of("str")))
def test_decode_read_reply_then_entries_matches(data: st.DataObject, reply: Any) -> None:
    """A whole XREADGROUP reply (None, RESP2 list-shaped or RESP3 dict-shaped) decodes the same
    way, and so does each stream's entries."""
    result = assert_same("decode_read_reply", reply)
    if result[0] == "returned":
        for stream, entries in pure.decode_read_reply(reply):
            assert_same("decode_entries", entries, stream, data.draw(attempts_for(entries)))


@needs_compiled
def test_decode_entries_large_non_utf8_values_match() -> None:
    """A 1 MB non-UTF-8 value, an empty value and a deleted entry decode the same on both."""
    big = bytes(range(128, 256)) * 8192
    entries = [[b"1-0", [b"big", big, b"empty", b""]], [b"1-1", None], (b"2-0", (b"k", big[:10]))]
    result = assert_same("decode_entries", entries, "s", {"1-0": 3})
    assert result[0] == "returned"


# --- the specified behaviour, pinned on both ----------------------------------------------------

def both() -> List[ModuleType]:
    return [pure] + ([compiled] if compiled is not None else [])


@pytest.mark.parametrize("impl", both(), ids=lambda m: m.__name__)
def test_decode_entries_examples(impl: ModuleType) -> None:
    """Deleted entries are reported, the last duplicate field wins, and a missing mapping id counts 1."""
    entries = [[b"1-0", [b"a", b"1", b"a", b"2"]], [b"2-0", None], ["3-0", []], [b"4-1", {b"k": b""}]]
    messages, deleted = impl.decode_entries(entries, "s", {"4-1": 9})
    assert messages == [Message("1-0", "s", {b"a": b"2"}, 1), Message("4-1", "s", {b"k": b""}, 9)]
    assert deleted == ["2-0", "3-0"]
    assert impl.decode_entries(None, "s", 1) == ([], [])


@pytest.mark.parametrize("impl", both(), ids=lambda m: m.__name__)
def test_error_messages_examples(impl: ModuleType) -> None:
    """The error texts are the documented ones, and a huge entry is cut to 100 characters."""
    with pytest.raises(ValueError, match=r"^invalid stream id: '1-'$"):
        impl.parse_id("1-")
    with pytest.raises(ValueError, match=r"^malformed stream entry '7-0': odd number of field items$"):
        impl.decode_entries([[b"7-0", [b"a"]]], "s", 1)
    with pytest.raises(ValueError) as caught:
        impl.decode_entries([[b"7-0", [b"a", b"b"], b"x" * 10_000]], "s", 1)
    assert str(caught.value).startswith("malformed stream entry: [b'7-0'")
    assert len(str(caught.value)) == len("malformed stream entry: ") + 100
