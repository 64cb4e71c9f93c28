"""The reply hot path read straight from a connection's bytes (`reply_end`, `decode_stream_reply`)
and the packed XACK (`pack_ack`): the compiled twin (`rstream._fast`) and the pure-Python
reference (`rstream._fast_py`, the specification) give equal results and raise the same exception
type with the same message, and both agree with hiredis on the bytes Redis sends."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, Dict, List, Optional, Sequence, Tuple

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paritykit import DECODING, MAX, PARITY, same, shape
from rstream import _fast_py as pure
from rstream.message import Message

# RSTREAM_NO_EXTENSIONS=1 selects the pure-Python reference (as rstream._hotpath does), even where
# the extension is built: the tests of the compiled twin skip, those of the reference still run.
# Without it, the extension must be there: its absence is a failure.
OPTED_OUT = os.environ.get("RSTREAM_NO_EXTENSIONS") == "1"
compiled: Optional[ModuleType] = None
if not OPTED_OUT:
    from rstream import _fast as compiled

needs_compiled = pytest.mark.skipif(compiled is None, reason="RSTREAM_NO_EXTENSIONS=1 asks for pure Python")

REPLIES = settings(PARITY, max_examples=200)  # any shape, with every prefix: the file stays under 20 s
ROOT = Path(__file__).resolve().parent.parent


def assert_same(name: str, *args: Any) -> Tuple[Any, ...]:
    assert compiled is not None
    return same(compiled, pure, name, *args)


def both() -> List[ModuleType]:
    return [pure] + ([compiled] if compiled is not None else [])


each_impl = pytest.mark.parametrize("impl", both(), ids=lambda m: m.__name__)


# --- RESP2 bytes --------------------------------------------------------------------------------

NIL_BULK = b"$-1\r\n"
NIL_ARRAY = b"*-1\r\n"
EMPTY_ARRAY = b"*0\r\n"


def bulk(payload: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(payload), payload)


def array(*items: bytes) -> bytes:
    return b"*%d\r\n" % len(items) + b"".join(items)


def line(kind: bytes, text: bytes) -> bytes:
    return kind + text + b"\r\n"


line_texts = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
bulk_payloads = st.one_of(
    st.binary(max_size=30),
    st.sampled_from([b"", b"\r\n", b"\r", b"\n", b"$3\r\n", b"*2\r\n\r\n", b"\x00\xff", b"-ERR\r\n", b"+OK"]),
    st.binary(min_size=200, max_size=400),
)
resp_leaves = st.one_of(
    line_texts.map(lambda t: line(b"+", t)),
    line_texts.map(lambda t: line(b"-", t)),
    st.just(b"-NOGROUP No such key 's' or consumer group 'g' in XREADGROUP with GROUP option\r\n"),
    st.integers(-(2**63), 2**63 - 1).map(lambda n: b":%d\r\n" % n),
    bulk_payloads.map(bulk),
    st.sampled_from([NIL_BULK, NIL_ARRAY, EMPTY_ARRAY]),
)
# Any one RESP2 reply: simple strings, errors, integers, bulk strings (binary, CRLF inside, nil),
# arrays (nil, empty, nested).
resp_values = st.recursive(
    resp_leaves, lambda children: st.lists(children, max_size=4).map(lambda xs: array(*xs)), max_leaves=12
)
reply_runs = st.lists(resp_values, min_size=1, max_size=5)


def _no_long_numbers(data: bytes) -> bool:
    # Length lines of 19 digits and more are tried in a child process instead (test_long_length_lines_match):
    # a C overflow there once crashed the compiled side, and a crash in this process ends the whole run.
    run = 0
    for byte in data:
        run = run + 1 if 48 <= byte <= 57 else 0
        if run >= 19:
            return False
    return True


garbage_tokens = st.sampled_from([
    b"*", b"$", b"+", b"-", b":", b"\r\n", b"\r", b"\n", b"0", b"1", b"2", b"3", b"-1", b"-2", b"12",
    b"x", b"\x00", b"\xff", b"!", b"%", b"_", b" ", b"OK",
])
garbage = st.one_of(
    st.binary(max_size=40),
    st.lists(garbage_tokens, max_size=25).map(b"".join),
    st.builds(lambda a, b: a + b, resp_values, st.lists(garbage_tokens, max_size=10).map(b"".join)),
).filter(_no_long_numbers)


def as_kind(data: bytes, kind: str) -> Any:
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(data)
    return data


buffer_kinds = st.sampled_from(["bytes", "bytearray", "memoryview"])


def hiredis_parsed(value: Any) -> Any:
    """A comparable image of a hiredis reply (a ReplyError compares by its text, not its identity)."""
    if isinstance(value, hiredis.ReplyError):
        return ("error", type(value), str(value))
    if isinstance(value, list):
        return [hiredis_parsed(item) for item in value]
    return value


def hiredis_replies(data: bytes) -> List[Any]:
    reader = hiredis.Reader()
    reader.feed(data)
    replies = []
    while (reply := reader.gets()) is not False:
        replies.append(hiredis_parsed(reply))
    return replies


def walk(impl: ModuleType, data: Any) -> Tuple[List[int], int]:
    """The reply boundaries reply_end finds from 0, and where it stopped (-1: an incomplete reply)."""
    bounds, pos = [0], 0
    while pos < len(data):
        pos = impl.reply_end(data, pos)
        if pos < 0:
            return bounds, -1
        bounds.append(pos)
    return bounds, pos


# --- reply_end: compiled == pure -----------------------------------------------------------------

@needs_compiled
@PARITY
@given(resp_values, buffer_kinds)
def test_reply_end_every_prefix_matches(value: bytes, kind: str) -> None:
    """Every prefix of a reply (incomplete: -1) and the whole reply give the same on both."""
    data = as_kind(value, kind)
    for size in range(len(value) + 1):
        assert_same("reply_end", data[:size])
    assert assert_same("reply_end", data) == ("returned", (int, len(value)))


@each_impl
@PARITY
@given(reply_runs, st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_reply_scan_resumed_gives_reply_end(impl: ModuleType, values: List[bytes], steps: List[int]) -> None:
    """ReplyScan over a buffer that grows by any steps says what reply_end says of each prefix,
    and after reset() it scans the next reply of the buffer with the first one taken off."""
    joined = bytearray(b"".join(values))
    scan = impl.ReplyScan()
    for value in values:
        buffer = bytearray()
        size = 0
        while size < len(joined):
            size = min(len(joined), size + steps[size % len(steps)])
            buffer[:] = joined[:size]
            assert scan.end(buffer) == impl.reply_end(buffer)
            if scan.end(buffer) >= 0:
                break
        assert scan.end(buffer) == len(value)
        del joined[:len(value)]
        scan.reset()
    with pytest.raises(ValueError, match="shorter than what was scanned"):
        grown = impl.ReplyScan()
        assert grown.end(b"*2\r\n:1\r\n") == -1
        grown.end(b"*2\r\n")


@needs_compiled
@PARITY
@given(reply_runs, st.binary(max_size=6), buffer_kinds, st.data())
def test_reply_end_at_reply_starts_matches(values: List[bytes], junk: bytes, kind: str, data: st.DataObject) -> None:
    """In several replies one after the other (after some junk), reply_end from each reply's start
    gives the next one's on both, and so does a buffer cut short anywhere."""
    joined = junk + b"".join(values)
    starts = [len(junk)]
    for value in values:
        starts.append(starts[-1] + len(value))
    buffer = as_kind(joined, kind)
    for start, end in zip(starts, starts[1:]):
        assert assert_same("reply_end", buffer, start) == ("returned", (int, end))
        cut = data.draw(st.integers(start, end), label="cut")
        assert_same("reply_end", buffer[:cut], start)
    assert assert_same("reply_end", buffer, len(joined)) == ("returned", (int, -1))


@needs_compiled
@PARITY
@given(reply_runs, buffer_kinds, st.data())
def test_reply_end_any_pos_matches(values: List[bytes], kind: str, data: st.DataObject) -> None:
    """From any offset (a reply's middle reads as garbage), and out of range, both give the same."""
    joined = b"".join(values)
    buffer = as_kind(joined, kind)
    for pos in data.draw(st.lists(st.integers(-2, len(joined) + 2), min_size=1, max_size=8), label="pos"):
        assert_same("reply_end", buffer, pos)


@needs_compiled
@PARITY
@given(garbage, st.data())
def test_reply_end_garbage_matches(junk: bytes, data: st.DataObject) -> None:
    """Bytes that are no RESP2 (or only start as RESP2) give the same offset, -1 or ValueError,
    from the start, from any offset and on every prefix."""
    assert_same("reply_end", junk)
    assert_same("reply_end", junk, data.draw(st.integers(0, len(junk)), label="pos"))
    for size in range(len(junk) + 1):
        assert_same("reply_end", junk[:size])


STREAM_HEAD = b"*1\r\n*2\r\n$1\r\ns\r\n"
ENTRY_HEAD = STREAM_HEAD + b"*1\r\n*2\r\n$3\r\n1-0\r\n"
LONG_LENGTH_LINES = [
    b"$9223372036854775807\r\nab",  # 2**63 - 1: the length + 2 would overflow in C
    b"$9223372036854775806\r\nab",
    b"$9223372036854775808\r\n",  # 2**63: would overflow a long long
    b"*9223372036854775807\r\n",
    b"*1000000000000000000\r\n",  # 19 digits
    b"*0000000000000000001\r\n:1\r\n",  # 19 digits, leading zeros
    b"$99999999999999999999",  # no CRLF yet
    b"$999999999999999999\r\n",  # 18 digits: in range, needs more bytes
    b"*-999999999999999999\r\n",
    b"*1\r\n*2\r\n$9223372036854775807\r\nab",  # a stream key
    STREAM_HEAD + b"*9223372036854775807\r\n",  # the entry count
    ENTRY_HEAD + b"*999999999999999998\r\n",  # the field count, 18 digits
    ENTRY_HEAD + b"*2\r\n$1\r\nk\r\n$9223372036854775806\r\nv",  # a value
    ENTRY_HEAD + b"*2\r\n$1\r\nk\r\n$999999999999999999\r\nv",
]
_CHILD = """
import sys
from rstream import _fast
for text in sys.argv[1:]:
    data = bytes.fromhex(text)
    for call in (lambda: _fast.reply_end(data), lambda: _fast.decode_stream_reply(data, 0, "s", 1)):
        try:
            print(repr(("returned", call())), flush=True)
        except Exception as error:  # noqa: BLE001
            print(repr(("raised", type(error).__name__, str(error))), flush=True)
"""


@functools.lru_cache(maxsize=None)
def _compiled_outcomes() -> Dict[bytes, Tuple[str, ...]]:
    """The compiled side's outcomes on LONG_LENGTH_LINES, computed in child processes: one for all
    of them, and one more after each case that kills its child."""
    found: Dict[bytes, Tuple[str, ...]] = {}
    todo = list(LONG_LENGTH_LINES)
    while todo:
        child = subprocess.run([sys.executable, "-c", _CHILD, *(data.hex() for data in todo)],
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
        lines = child.stdout.splitlines()
        done = len(lines) // 2
        for n, data in enumerate(todo[:done]):
            found[data] = tuple(lines[2 * n:2 * n + 2])
        if child.returncode == 0 and done == len(todo):
            break
        found[todo[done]] = (f"died: rc {child.returncode}", child.stderr[-300:])
        todo = todo[done + 1:]
    return found


def _pure_outcomes(data: bytes) -> Tuple[str, ...]:
    lines = []
    for call in (lambda: pure.reply_end(data), lambda: pure.decode_stream_reply(data, 0, "s", 1)):
        try:
            lines.append(repr(("returned", call())))
        except Exception as error:  # noqa: BLE001 - the exception is the result under test
            lines.append(repr(("raised", type(error).__name__, str(error))))
    return tuple(lines)


@needs_compiled
@pytest.mark.parametrize("data", LONG_LENGTH_LINES, ids=lambda b: repr(b)[-34:])
def test_long_length_lines_match(data: bytes) -> None:
    """Length lines of 18 digits and more, alone and inside an XREADGROUP reply: reply_end and
    decode_stream_reply give the same on both, and the compiled side does not crash (it runs in a
    child process, so that a crash fails that case only)."""
    assert _compiled_outcomes()[data] == _pure_outcomes(data)


# --- reply_end: against hiredis (pure and compiled) ----------------------------------------------

@each_impl
@PARITY
@given(reply_runs, buffer_kinds)
def test_reply_end_walk_matches_hiredis(impl: ModuleType, values: List[bytes], kind: str) -> None:
    """Walking a run of replies with reply_end from 0 cuts it into exactly the replies hiredis reads
    from it, one by one; every strict prefix of a reply is incomplete (-1) for both."""
    joined = b"".join(values)
    bounds, stop = walk(impl, as_kind(joined, kind))
    assert stop == len(joined)
    assert [joined[a:b] for a, b in zip(bounds, bounds[1:])] == values
    whole = hiredis_replies(joined)
    assert len(whole) == len(values)
    for value, reply in zip(values, whole):
        assert hiredis_replies(value) == [reply]
    for a, b in zip(bounds, bounds[1:]):
        for cut in range(a, b):
            assert impl.reply_end(as_kind(joined[:cut], kind), a) == -1
            reader = hiredis.Reader()
            reader.feed(joined[a:cut])
            assert reader.gets() is False


# --- XREADGROUP replies ------------------------------------------------------------------------

NOT_YET = ([], [], -1)  # decode_stream_reply: the buffer does not hold the whole reply yet
parts = st.one_of(st.integers(0, MAX), st.sampled_from([0, 1, MAX - 1, MAX]))
id_texts = st.builds(lambda ms, seq: f"{ms}-{seq}", parts, parts)
# decode_stream_reply does not check an id's syntax (decode_entries does not either): any ASCII.
ascii_ids = st.one_of(id_texts, id_texts, st.text(st.characters(max_codepoint=127), max_size=12))
non_utf8 = st.one_of(
    st.binary(max_size=8).map(lambda b: b"\xff" + b),
    st.sampled_from([b"\xed\xa0\x80", b"\xc3", b"a\x80b", b"\xf4\x90\x80\x80", b"\xc0\xaf"]),
)
NAME_POOL = [b"a", b"b", b"k1", b"k2", b"id", b"name", b"payload", b"\xff\xfe", b"", b"k\r\n"]
byte_names = st.one_of(st.sampled_from(NAME_POOL), st.sampled_from(NAME_POOL), st.binary(max_size=8), non_utf8)
byte_values = st.one_of(st.binary(max_size=40), st.just(b""), st.just(b"\r\n"), non_utf8, st.binary(max_size=40))
# At most one large value per reply (see stream_replies): more would only slow the tests down.
large_values = st.integers(60_000, 70_000).map(lambda n: b"\x80\xfe\r\n" * (n // 4))
text_names = st.one_of(st.sampled_from(["a", "b", "k1", "name", "é", "名前"]), st.text(max_size=8)).map(str.encode)
text_values = st.text(max_size=40).map(str.encode)
Fields = Optional[List[Tuple[bytes, bytes]]]
Model = Tuple[bytes, List[Tuple[str, Fields]]]


@st.composite
def stream_replies(draw: st.DrawFn, utf8: bool = False) -> Model:
    """A stream key and 0..8 entries as Redis delivers them to XREADGROUP: fields ([(name, value)],
    names repeating across entries and within one, over 16 of them at times, one large value at
    times), or deleted (None for a nil field list, [] for an empty one). ``utf8``: every name, value
    and the key is valid UTF-8."""
    names, values = (text_names, text_values) if utf8 else (byte_names, byte_values)
    key = draw(text_values if utf8 else st.binary(max_size=10))
    entries: List[Tuple[str, Fields]] = []
    for _ in range(draw(st.integers(0, 8))):
        entry_id = draw(ascii_ids)
        kind = draw(st.integers(0, 9))
        if kind == 0:
            entries.append((entry_id, None))
        elif kind == 1:
            entries.append((entry_id, []))
        else:
            sizes = st.one_of(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(15, 18))
            entries.append((entry_id, [(draw(names), draw(values)) for _ in range(draw(sizes))]))
    with_fields = [n for n, (_, fields) in enumerate(entries) if fields]
    if with_fields and not utf8 and draw(st.integers(0, 5)) == 0:
        entry_id, fields = entries[draw(st.sampled_from(with_fields))]
        assert fields
        at = draw(st.integers(0, len(fields) - 1))
        fields[at] = (fields[at][0], draw(large_values))
    return key, entries


def encode_entry(entry_id: str, fields: Fields) -> bytes:
    flat = NIL_ARRAY if fields is None else array(*(bulk(item) for pair in fields for item in pair))
    return array(bulk(entry_id.encode("ascii")), flat)


def encode_reply(key: bytes, entries: Sequence[bytes]) -> bytes:
    return array(array(bulk(key), array(*entries)))


def encode_model(model: Model) -> bytes:
    key, entries = model
    return encode_reply(key, [encode_entry(i, f) for i, f in entries])


@st.composite
def attempts_for(draw: st.DrawFn, model: Model, bad: bool = False) -> Any:
    """An int, or a dict (at times read-only) of id -> count covering some of the model's ids;
    with ``bad``, at times no attempt at all (a TypeError)."""
    choice = draw(st.integers(0, 5 if bad else 4))
    if choice <= 1:
        return draw(st.integers(0, 10**6))
    if choice == 5:
        return draw(st.sampled_from([True, "3", 1.5, None, [1], b"1"]))
    ids = [entry_id for entry_id, _ in model[1]]
    covered = draw(st.lists(st.sampled_from(ids), unique=True)) if ids else []
    mapping = {entry_id: draw(st.integers(1, 50)) for entry_id in covered}
    mapping.update(draw(st.dictionaries(id_texts, st.integers(1, 50), max_size=2)))
    return MappingProxyType(mapping) if choice == 4 else mapping


Decoding = Tuple[Optional[str], str]
# Decodings that cannot fail on any bytes, and (for models of valid UTF-8 only) strict UTF-8.
LENIENT_DECODINGS: List[Decoding] = [
    (None, "strict"), (None, "strict"),
    ("utf-8", "surrogateescape"), ("utf-8", "replace"), ("utf-8", "backslashreplace"), ("latin-1", "strict"),
]
replies_and_decodings = st.one_of(
    st.tuples(stream_replies(), st.sampled_from(LENIENT_DECODINGS)),
    st.tuples(stream_replies(utf8=True), st.sampled_from(LENIENT_DECODINGS + [("utf-8", "strict")])),
)


@st.composite
def embedded(draw: st.DrawFn, reply: bytes) -> Tuple[Any, int, int]:
    """The reply inside a larger buffer (other replies or junk around it): (buffer, pos, end)."""
    before = draw(st.one_of(st.just(b""), st.binary(max_size=8), resp_values))
    after = draw(st.one_of(st.just(b""), st.binary(max_size=8), resp_values))
    buffer = as_kind(before + reply + after, draw(buffer_kinds))
    return buffer, len(before), len(before) + len(reply)


def decode_args(buffer: Any, pos: int, attempt: Any, decoding: Decoding = (None, "strict")) -> Tuple[Any, ...]:
    """decode_stream_reply's arguments; the encoding only when there is one (the default then)."""
    encoding, errors = decoding
    if encoding is None:
        return (buffer, pos, "orders", attempt)
    return (buffer, pos, "orders", attempt, encoding, errors)


def decode(impl: ModuleType, buffer: Any, pos: int, attempt: Any, decoding: Decoding = (None, "strict")) -> Any:
    return impl.decode_stream_reply(*decode_args(buffer, pos, attempt, decoding))


def via_hiredis(reply: bytes, attempt: Any, decoding: Decoding) -> Any:
    """What the general path gives: hiredis's parse, then decode_read_reply and decode_entries."""
    encoding, errors = decoding
    reader = hiredis.Reader() if encoding is None else hiredis.Reader(encoding=encoding, errors=errors)
    reader.feed(reply)
    parsed = reader.gets()
    if parsed is None:
        return [], []
    return pure.decode_entries(pure.decode_read_reply(parsed)[0][1], "orders", attempt)


def cuts(data: st.DataObject, start: int, end: int) -> List[int]:
    """Where to cut a reply short: everywhere in a short one, a sample in a long one."""
    if end - start <= 200:
        return list(range(start, end))
    return data.draw(st.lists(st.integers(start, end - 1), max_size=12), label="cuts")


@needs_compiled
@DECODING
@given(replies_and_decodings, st.data())
def test_decode_stream_reply_matches(case: Tuple[Model, Decoding], data: st.DataObject) -> None:
    """XREADGROUP replies of 0..8 entries (deleted ones, repeated and varying field names, binary
    and non-UTF-8 values, large values) decode the same on both, as bytes or as str, with attempt
    an int, a dict or garbage (the same TypeError), wherever the reply sits in the buffer, and so
    do the same bytes cut short."""
    model, decoding = case
    buffer, pos, end = data.draw(embedded(encode_model(model)), label="buffer")
    attempt = data.draw(attempts_for(model, bad=True), label="attempt")
    result = assert_same("decode_stream_reply", *decode_args(buffer, pos, attempt, decoding))
    if result[0] == "returned":
        assert result[1][0] is tuple and result[1][1][2] == (int, end)
        for cut in data.draw(st.lists(st.integers(pos, end - 1), max_size=4), label="cuts"):
            assert_same("decode_stream_reply", *decode_args(buffer[:cut], pos, attempt, decoding))


@each_impl
@PARITY
@given(replies_and_decodings, st.data())
def test_decode_stream_reply_matches_hiredis(impl: ModuleType, case: Tuple[Model, Decoding],
                                             data: st.DataObject) -> None:
    """An XREADGROUP reply decodes to what decode_read_reply + decode_entries give on hiredis's
    parse (with the same encoding), and ends where reply_end says; cut short, it is not there yet."""
    model, decoding = case
    reply = encode_model(model)
    buffer, pos, end = data.draw(embedded(reply), label="buffer")
    attempt = data.draw(attempts_for(model), label="attempt")
    result = decode(impl, buffer, pos, attempt, decoding)
    assert result is not None
    messages, deleted, stop = result
    assert stop == end == impl.reply_end(buffer, pos)
    assert shape((messages, deleted)) == shape(via_hiredis(reply, attempt, decoding))
    for cut in cuts(data, pos, end):
        assert decode(impl, buffer[:cut], pos, attempt, decoding) == NOT_YET


@st.composite
def other_shapes(draw: st.DrawFn) -> bytes:
    """A reply that is no one-stream XREADGROUP reply of bulk strings: a valid one with one thing
    changed (an entry or the whole reply), which decode_stream_reply must leave to the general path."""
    # The change is drawn first and from two even halves, or the shapes of whole replies come up rarely.
    whole_reply = draw(st.booleans())
    key, entries = draw(stream_replies())
    good = [encode_entry(i, f) for i, f in entries]
    entry_id = bulk(draw(id_texts).encode())
    pair = [bulk(b"k"), bulk(b"v")]
    bad_entries = {
        "nil field value": array(entry_id, array(bulk(b"k"), NIL_BULK)),
        "nil field name": array(entry_id, array(NIL_BULK, bulk(b"v"))),
        "array field": array(entry_id, array(bulk(b"k"), array(bulk(b"v")))),
        "empty array field": array(entry_id, array(bulk(b"k"), EMPTY_ARRAY)),
        "integer field": array(entry_id, array(bulk(b"k"), b":1\r\n")),
        "error field": array(entry_id, array(bulk(b"k"), b"-ERR x\r\n")),
        "simple string field": array(entry_id, array(bulk(b"k"), b"+v\r\n")),
        "simple string name": array(entry_id, array(b"+k\r\n", bulk(b"v"))),
        "odd field count": array(entry_id, array(*pair, bulk(b"k2"))),
        "one field item": array(entry_id, array(bulk(b"k"))),
        "non-ASCII id": array(bulk(draw(non_utf8 | st.just("1-é".encode()))), array(*pair)),
        "non-ASCII deleted id": array(bulk(b"1-\x80"), draw(st.sampled_from([NIL_ARRAY, EMPTY_ARRAY]))),
        "nil id": array(NIL_BULK, array(*pair)),
        "integer id": array(b":1\r\n", array(*pair)),
        "simple string id": array(b"+1-0\r\n", array(*pair)),
        "array id": array(array(entry_id), array(*pair)),
        "entry of one": array(entry_id),
        "entry of three": array(entry_id, array(*pair), bulk(b"x")),
        "empty entry": EMPTY_ARRAY,
        "nil entry": NIL_ARRAY,
        "entry a bulk string": entry_id,
        "fields a bulk string": array(entry_id, bulk(b"k v")),
        "fields an integer": array(entry_id, b":2\r\n"),
    }
    entries_item = array(*good)
    whole = {
        "error reply": line(b"-", b"NOGROUP No such key 'orders' or consumer group 'g'"),
        "integer reply": b":0\r\n",
        "bulk reply": bulk(b"orders"),
        "nil bulk reply": NIL_BULK,
        "simple string reply": b"+OK\r\n",
        "no streams": EMPTY_ARRAY,
        "two streams": array(array(bulk(key), entries_item), array(bulk(key + b"2"), entries_item)),
        "stream item of one": array(array(bulk(key))),
        "stream item of three": array(array(bulk(key), entries_item, bulk(b"x"))),
        "nil stream item": array(NIL_ARRAY),
        "nil key": array(array(NIL_BULK, entries_item)),
        "simple string key": array(array(line(b"+", key.replace(b"\r", b"").replace(b"\n", b"")), entries_item)),
        "array key": array(array(array(bulk(key)), entries_item)),
        "nil entries": array(array(bulk(key), NIL_ARRAY)),
        "entries a bulk string": array(array(bulk(key), bulk(b"entries"))),
        "nested once more": array(array(array(bulk(key), entries_item))),
    }
    if whole_reply:
        return whole[draw(st.sampled_from(sorted(whole)))]
    choice = draw(st.sampled_from(sorted(bad_entries)))
    at = draw(st.integers(0, len(good)))
    return encode_reply(key, good[:at] + [bad_entries[choice]] + good[at:])


@each_impl
@PARITY
@given(other_shapes(), st.sampled_from(LENIENT_DECODINGS), st.data())
def test_decode_stream_reply_other_shapes_give_none(impl: ModuleType, reply: bytes, decoding: Decoding,
                                                   data: st.DataObject) -> None:
    """An error reply, several streams, a nil, array or simple-string element, an odd field count, a
    non-ASCII id and every other unexpected shape: None (the caller parses it the general way);
    cut short, None or not there yet."""
    buffer, pos, end = data.draw(embedded(reply), label="buffer")
    assert impl.reply_end(buffer, pos) == end
    assert decode(impl, buffer, pos, 1, decoding) is None
    for cut in cuts(data, pos, end):
        assert decode(impl, buffer[:cut], pos, 1, decoding) in (None, NOT_YET)


@needs_compiled
@REPLIES
@given(other_shapes() | resp_values, st.sampled_from(LENIENT_DECODINGS), st.data())
def test_decode_stream_reply_other_shapes_match(reply: bytes, decoding: Decoding, data: st.DataObject) -> None:
    """Other shapes and any RESP2 reply, whole and cut short anywhere: the same on both (None and
    "not yet" at the same point)."""
    buffer, pos, end = data.draw(embedded(reply), label="buffer")
    assert_same("decode_stream_reply", *decode_args(buffer, pos, 7, decoding))
    for cut in cuts(data, pos, end):
        assert_same("decode_stream_reply", *decode_args(buffer[:cut], pos, 7, decoding))


@each_impl
@PARITY
@given(resp_values, st.sampled_from(LENIENT_DECODINGS), st.data())
def test_decode_stream_reply_any_reply_matches_hiredis(impl: ModuleType, reply: bytes, decoding: Decoding,
                                                       data: st.DataObject) -> None:
    """Any one whole RESP2 reply gives None or what the general path gives, ending where it ends."""
    buffer, pos, end = data.draw(embedded(reply), label="buffer")
    result = decode(impl, buffer, pos, 7, decoding)
    if result is not None:
        assert result[2] == end
        assert shape(result[:2]) == shape(via_hiredis(reply, 7, decoding))


@needs_compiled
@PARITY
@given(garbage, st.sampled_from(LENIENT_DECODINGS), st.data())
def test_decode_stream_reply_garbage_matches(junk: bytes, decoding: Decoding, data: st.DataObject) -> None:
    """Bytes that are no RESP2 (malformed lengths among them), from any offset: the same on both."""
    for prefix in (b"", STREAM_HEAD, ENTRY_HEAD):
        buffer = prefix + junk
        assert_same("decode_stream_reply", *decode_args(buffer, 0, 1, decoding))
        assert_same("decode_stream_reply", *decode_args(buffer, data.draw(st.integers(0, len(buffer))), 1, decoding))


DECODING_FAILURES = {
    "non-UTF-8 value, strict": (encode_reply(b"s", [encode_entry("1-0", [(b"a", b"\xff")])]), "utf-8", "strict"),
    "non-UTF-8 name, strict": (encode_reply(b"s", [encode_entry("1-0", [(b"\xff", b"v")])]), "utf-8", "strict"),
    "non-UTF-8 key, strict": (encode_reply(b"\xff", [encode_entry("1-0", [(b"a", b"v")])]), "utf-8", "strict"),
    "odd bytes, utf-16": (encode_reply(b"s", [encode_entry("1-0", [(b"a", b"vv")])]), "utf-16", "strict"),
    "unknown codec": (encode_reply(b"s", [encode_entry("1-0", [(b"a", b"v")])]), "no-such-codec", "strict"),
    "unknown codec, deleted": (encode_reply(b"s", [encode_entry("1-0", None)]), "no-such-codec", "strict"),
    "unknown error handler": (encode_reply(b"s", [encode_entry("1-0", [(b"a", b"v")])]), "utf-8", "no-such"),
    "unknown error handler, bad bytes": (encode_reply(b"s", [encode_entry("1-0", [(b"a", b"\xff")])]), "utf-8",
                                         "no-such"),
}


@needs_compiled
@pytest.mark.parametrize("case", list(DECODING_FAILURES.values()), ids=list(DECODING_FAILURES))
def test_decode_stream_reply_decoding_failures_match(case: Tuple[bytes, str, str]) -> None:
    """Bytes the encoding cannot decode with ``errors="strict"`` (in a value, a field name or the
    stream key), and an unknown codec or error handler: the same on both."""
    reply, encoding, errors = case
    assert_same("decode_stream_reply", *decode_args(reply, 0, 1, (encoding, errors)))


@needs_compiled
@PARITY
@given(st.binary(max_size=60), st.integers(-3, 70), buffer_kinds)
def test_decode_stream_reply_pos_and_attempt_errors_match(junk: bytes, pos: int, kind: str) -> None:
    """A pos outside the buffer, and an attempt of the wrong type, raise the same on both."""
    assert_same("decode_stream_reply", *decode_args(as_kind(junk, kind), pos, 1))
    reply = encode_model((b"s", [("1-0", [(b"a", b"b")])]))
    assert assert_same("decode_stream_reply", *decode_args(reply, 0, True))[0] == "raised"
    assert assert_same("decode_stream_reply", *decode_args(reply, len(reply) + 1, 1))[0] == "raised"


# --- pack_ack ------------------------------------------------------------------------------------

# Ids UTF-8 can encode: a lone surrogate ("\ud800") is a bad id, in bad_ack_ids.
_encodable = st.characters(blacklist_categories=("Cs",))
ack_ids = st.one_of(
    id_texts, id_texts.map(str.encode), st.text(_encodable, max_size=10), st.binary(max_size=10),
    st.text(st.characters(min_codepoint=128, blacklist_categories=("Cs",)), min_size=1, max_size=5),
)
bad_ack_ids = st.sampled_from([1, 0, None, 1.5, bytearray(b"1-0"), memoryview(b"1-0"), ["1-0"], ("1-0",), "\ud800"])


def hiredis_ack(stream: bytes, group: bytes, ids: Sequence[Any]) -> bytes:
    packed: bytes = hiredis.pack_command(("XACK", stream, group, *ids))
    return packed


@needs_compiled
@PARITY
@given(st.binary(max_size=12), st.binary(max_size=12), st.lists(ack_ids, max_size=30))
def test_pack_ack_matches(stream: bytes, group: bytes, ids: List[Any]) -> None:
    """str ids (ASCII or not) and bytes ids, in a list or a tuple: the same bytes on both."""
    assert assert_same("pack_ack", stream, group, ids) == ("returned", (bytes, hiredis_ack(stream, group, ids)))
    assert_same("pack_ack", stream, group, tuple(ids))


@each_impl
@PARITY
@given(st.binary(max_size=12), st.binary(max_size=12), st.lists(ack_ids, max_size=30))
def test_pack_ack_matches_hiredis(impl: ModuleType, stream: bytes, group: bytes, ids: List[Any]) -> None:
    """Byte for byte what hiredis.pack_command packs for XACK stream group id..."""
    assert impl.pack_ack(stream, group, ids) == hiredis_ack(stream, group, ids)
    assert impl.pack_ack(stream, group, tuple(ids)) == hiredis_ack(stream, group, ids)


@needs_compiled
@PARITY
@given(st.lists(ack_ids, max_size=5), st.lists(bad_ack_ids, min_size=1, max_size=2), st.data())
def test_pack_ack_bad_ids_match(good: List[Any], bad: List[Any], data: st.DataObject) -> None:
    """Ids that are neither str nor bytes (and a str UTF-8 cannot encode): the same error on both,
    wherever they sit among good ones."""
    ids = list(good)
    for item in bad:
        ids.insert(data.draw(st.integers(0, len(ids)), label="at"), item)
    assert assert_same("pack_ack", b"s", b"g", ids)[0] == "raised"


@needs_compiled
def test_pack_ack_iterable_ids_match() -> None:
    """ids is an Iterable (see the signature): a generator or an iterator packs the same."""
    ids = ["1-0", b"2-0"]
    expected = pure.pack_ack(b"s", b"g", ids)
    for impl in (pure, compiled):
        assert impl is not None
        assert impl.pack_ack(b"s", b"g", (i for i in ids)) == expected  # a fresh one each
        assert impl.pack_ack(b"s", b"g", iter(ids)) == expected


@each_impl
def test_pack_ack_examples(impl: ModuleType) -> None:
    """The packed bytes spelled out; an int id is a TypeError naming it."""
    assert impl.pack_ack(b"orders", b"g", ["1-0", b"2-1", "é-0"]) == (
        b"*6\r\n$4\r\nXACK\r\n$6\r\norders\r\n$1\r\ng\r\n$3\r\n1-0\r\n$3\r\n2-1\r\n$4\r\n\xc3\xa9-0\r\n")
    assert impl.pack_ack(b"s", b"g", []) == b"*3\r\n$4\r\nXACK\r\n$1\r\ns\r\n$1\r\ng\r\n"
    with pytest.raises(TypeError, match=r"^a stream id must be str or bytes, got 1$"):
        impl.pack_ack(b"s", b"g", ["1-0", 1])


# --- examples, pinned on both -------------------------------------------------------------------

@each_impl
def test_reply_end_examples(impl: ModuleType) -> None:
    """Offsets, incomplete replies and protocol errors, spelled out."""
    assert impl.reply_end(b"+OK\r\n") == 5
    assert impl.reply_end(b"$-1\r\n*-1\r\n", 5) == 10
    assert impl.reply_end(bytearray(b"*2\r\n$3\r\na\r\n\r\n:1\r\n")) == 17
    assert impl.reply_end(memoryview(b"*2\r\n:1\r\n")) == -1
    assert impl.reply_end(b"$3\r\nab") == -1
    assert impl.reply_end(b"") == -1
    for data, message in [
        (b"!x\r\n", r"^protocol error: unexpected byte b'!'$"),
        (b"$3\r\nabcd\r\n", r"^protocol error: bulk string without CRLF$"),
        (b"$x\r\n", r"^protocol error: malformed length line$"),
        (b"$-2\r\n", r"^protocol error: bulk length below -1$"),
        (b"*-2\r\n", r"^protocol error: array length below -1$"),
        (b"*1234567890123456789\r\n", r"^protocol error: length out of range$"),
    ]:
        with pytest.raises(ValueError, match=message):
            impl.reply_end(data)
    for pos in (-1, 6):
        with pytest.raises(ValueError, match=r"^reply_end: pos out of range$"):
            impl.reply_end(b"+OK\r\n", pos)


@needs_compiled
@pytest.mark.parametrize("data", [b"$ab", b"$1\rx", b"*12x", b"$-\x00\x00", b"*-", b"$1\r"], ids=repr)
def test_reply_end_incomplete_length_line_matches(data: bytes) -> None:
    """A length line whose CRLF has not come yet, good so far or already wrong: the same on both."""
    assert_same("reply_end", data)


def decode_checked(impl: ModuleType, reply: bytes, attempt: Any, decoding: Decoding = (None, "strict")) -> Any:
    """decode_stream_reply on a whole reply, checked against the general path; (messages, deleted)."""
    result = decode(impl, reply, 0, attempt, decoding)
    assert result is not None and result[2] == len(reply)
    assert shape(result[:2]) == shape(via_hiredis(reply, attempt, decoding))
    return result[:2]


@each_impl
def test_decode_stream_reply_500_entries(impl: ModuleType) -> None:
    """500 entries of 3 fields, as bytes and as str."""
    entries: List[Tuple[str, Fields]] = [
        (f"1700000000000-{n}", [(b"id", b"%d" % n), (b"name", b"x" * (n % 7)), (b"payload", b"\xff" * 3)])
        for n in range(500)
    ]
    reply = encode_model((b"orders", entries))
    assert impl.reply_end(reply) == len(reply)
    messages, deleted = decode_checked(impl, reply, {"1700000000000-499": 4})
    assert deleted == [] and len(messages) == 500
    assert messages[0] == Message("1700000000000-0", "orders", {b"id": b"0", b"name": b"", b"payload": b"\xff" * 3}, 1)
    assert messages[499].fields == {b"id": b"499", b"name": b"x" * 2, b"payload": b"\xff" * 3}
    assert messages[499].attempt == 4
    messages, _ = decode_checked(impl, reply, 2, ("utf-8", "surrogateescape"))
    assert messages[1] == Message("1700000000000-1", "orders", {"id": "1", "name": "x", "payload": "\udcff" * 3}, 2)
    assert decode(impl, reply[:-1], 0, 1) == NOT_YET


@each_impl
def test_decode_stream_reply_nil_reply(impl: ModuleType) -> None:
    """BLOCK timed out (a nil array): two empty lists, also mid-buffer and with an encoding."""
    assert decode(impl, NIL_ARRAY, 0, 1) == ([], [], 5)
    buffer = b"+OK\r\n" + NIL_ARRAY + b":1\r\n"
    assert decode(impl, memoryview(buffer), 5, {"1-0": 2}, ("utf-8", "strict")) == ([], [], 10)
    assert decode(impl, NIL_ARRAY[:4], 0, 1) == NOT_YET


@each_impl
def test_decode_stream_reply_deleted_entry(impl: ModuleType) -> None:
    """A deleted entry (nil or empty field list) among others goes to deleted_ids, in order."""
    entries: List[Tuple[str, Fields]] = [
        ("1-0", [(b"a", b"1")]), ("2-0", None), ("3-0", [(b"a", b"2"), (b"a", b"3")]), ("4-0", [])]
    reply = encode_model((b"orders", entries))
    messages, deleted = decode_checked(impl, reply, {"3-0": 5})
    assert messages == [Message("1-0", "orders", {b"a": b"1"}, 1), Message("3-0", "orders", {b"a": b"3"}, 5)]
    assert deleted == ["2-0", "4-0"]
    messages, deleted = decode_checked(impl, reply, 3, ("utf-8", "strict"))
    assert [m.fields for m in messages] == [{"a": "1"}, {"a": "3"}] and deleted == ["2-0", "4-0"]


@each_impl
def test_decode_stream_reply_back_to_back(impl: ModuleType) -> None:
    """Replies one after another are read one by one from the offset the previous one gave."""
    first = encode_model((b"orders", [("1-0", [(b"a", b"1")])]))
    second = encode_model((b"orders", [("2-0", None)]))
    buffer = first + NIL_ARRAY + second + b"*1\r\n"
    results, pos = [], 0
    while (result := decode(impl, buffer, pos, 1)) != NOT_YET:
        results.append(result[:2])
        pos = result[2]
    assert results == [([Message("1-0", "orders", {b"a": b"1"}, 1)], []), ([], []), ([], ["2-0"])]
    assert pos == len(buffer) - 4
    assert decode(impl, buffer, len(buffer), 1) == NOT_YET


OTHER_SHAPE_EXAMPLES = {
    "error": line(b"-", b"NOGROUP No such key 'orders' or consumer group 'g' in XREADGROUP with GROUP option"),
    "two streams": array(array(bulk(b"a"), EMPTY_ARRAY), array(bulk(b"b"), EMPTY_ARRAY)),
    "array field": encode_reply(b"orders", [array(bulk(b"1-0"), array(bulk(b"k"), array(bulk(b"v"))))]),
    "odd count": encode_reply(b"orders", [array(bulk(b"1-0"), array(bulk(b"k"), bulk(b"v"), bulk(b"k2")))]),
    "nil field": encode_reply(b"orders", [array(bulk(b"1-0"), array(bulk(b"k"), NIL_BULK))]),
    "non-ASCII id": encode_reply(b"orders", [array(bulk("1-é".encode()), array(bulk(b"k"), bulk(b"v")))]),
    "no streams": EMPTY_ARRAY,
    "nil bulk": NIL_BULK,
    "simple string key": array(array(b"+orders\r\n", array(array(bulk(b"1-0"), array(bulk(b"a"), bulk(b"b")))))),
    "simple string id": array(array(bulk(b"orders"), array(array(b"+1-0\r\n", array(bulk(b"a"), bulk(b"b")))))),
    "simple string fields": array(array(bulk(b"orders"), array(array(bulk(b"1-0"), array(b"+a\r\n", b"+b\r\n"))))),
    "malformed length": STREAM_HEAD + b"*1x\r\n",
}


@each_impl
@pytest.mark.parametrize("reply", list(OTHER_SHAPE_EXAMPLES.values()), ids=list(OTHER_SHAPE_EXAMPLES))
def test_decode_stream_reply_other_shape_examples(impl: ModuleType, reply: bytes) -> None:
    """The shapes named in the docstring, one by one, and their kin: None."""
    assert decode(impl, reply, 0, 1) is None
    assert decode(impl, reply, 0, 1, ("utf-8", "surrogateescape")) is None
