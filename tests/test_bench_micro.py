"""Micro benchmarks of the hot path, compiled twin and pure-Python reference side by side.

Run them as benchmarks with ``pytest tests/test_bench_micro.py --benchmark-enable``
(``--benchmark-group-by=group`` puts the two twins of each function next to each other). In the
normal suite (``--benchmark-disable``) each function runs once, so every test also checks what
it timed: these are smoke tests of both twins on a realistic 500-entry batch.
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any, List, Optional

import hiredis
import pytest

from rstream import _fast_py
from rstream.message import Message

compiled: Optional[ModuleType]
try:
    from rstream import _fast as compiled
except ImportError:  # test_hotpath_parity / test_hotpath_loaded fail the suite for a missing build
    compiled = None

ENTRIES = 500
MS = 1700000000000
PAYLOAD = b"p" * 64  # 3 fields of ~100 bytes in all, like bench/common.py's entries
IDS: List[str] = [f"{MS}-{seq}" for seq in range(ENTRIES)]
REPLY: List[List[Any]] = [
    [entry_id.encode(), [b"n", b"%d" % seq, b"user", b"user-%05d" % seq, b"payload", PAYLOAD]]
    for seq, entry_id in enumerate(IDS)
]

TWINS = [
    pytest.param(_fast_py, id="python"),
    pytest.param(compiled, id="cython", marks=pytest.mark.skipif(
        compiled is None,
        reason=f"rstream._fast not built (RSTREAM_NO_EXTENSIONS={os.environ.get('RSTREAM_NO_EXTENSIONS')})")),
]


@pytest.mark.benchmark(group="decode_entries")
@pytest.mark.parametrize("hot", TWINS)
def test_decode_entries(benchmark: Any, hot: ModuleType) -> None:
    """decode_entries turns a 500-entry XREADGROUP batch into 500 Messages with str ids, in order."""
    messages, deleted = benchmark(hot.decode_entries, REPLY, "orders", 1)
    assert deleted == []
    assert [m.id for m in messages] == IDS
    assert all(type(m) is Message and m.stream == "orders" and m.attempt == 1 for m in messages)
    assert messages[42].fields == {b"n": b"42", b"user": b"user-00042", b"payload": PAYLOAD}


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _array(items: List[bytes]) -> bytes:
    return b"*%d\r\n" % len(items) + b"".join(items)


# The same batch as the server sends it: what rstream.wire decodes from the socket's bytes.
REPLY_BYTES = _array([_array([_bulk(b"orders"), _array([
    _array([_bulk(entry_id), _array([_bulk(x) for x in fields])]) for entry_id, fields in REPLY])])])


@pytest.mark.benchmark(group="decode_stream_reply")
@pytest.mark.parametrize("hot", TWINS)
def test_decode_stream_reply(benchmark: Any, hot: ModuleType) -> None:
    """decode_stream_reply turns the bytes of a 500-entry XREADGROUP reply into the Messages
    decode_entries gives for hiredis's parse of them, and says where the reply ends."""
    messages, deleted, end = benchmark(hot.decode_stream_reply, REPLY_BYTES, 0, "orders", 1)
    assert deleted == [] and end == len(REPLY_BYTES)
    expected, _ = hot.decode_entries(REPLY, "orders", 1)
    assert [(m.id, m.stream, m.fields, m.attempt) for m in messages] == [
        (m.id, m.stream, m.fields, m.attempt) for m in expected]


@pytest.mark.benchmark(group="parse_id")
@pytest.mark.parametrize("hot", TWINS)
def test_parse_id(benchmark: Any, hot: ModuleType) -> None:
    """parse_id splits each of 500 ids into its (ms, seq) integers."""
    parsed = benchmark(lambda: [hot.parse_id(entry_id) for entry_id in IDS])
    assert parsed == [(MS, seq) for seq in range(ENTRIES)]


@pytest.mark.benchmark(group="compare_ids")
@pytest.mark.parametrize("hot", TWINS)
def test_compare_ids(benchmark: Any, hot: ModuleType) -> None:
    """compare_ids orders 499 neighbouring ids numerically ("-9" before "-10", unlike strings)."""
    pairs = list(zip(IDS, IDS[1:]))
    order = benchmark(lambda: [hot.compare_ids(a, b) for a, b in pairs])
    assert order == [-1] * len(pairs)
    assert hot.compare_ids(IDS[10], IDS[9]) == 1 and hot.compare_ids(IDS[7], IDS[7]) == 0


@pytest.mark.benchmark(group="pack_ack")
@pytest.mark.parametrize("hot", TWINS)
def test_pack_ack(benchmark: Any, hot: ModuleType) -> None:
    """pack_ack packs one XACK command for 500 ids, as hiredis packs it, leaving the ids untouched."""
    ids = list(IDS)
    packed = benchmark(hot.pack_ack, b"orders", b"billing", ids)
    assert packed == hiredis.pack_command(("XACK", b"orders", b"billing", *IDS))
    assert ids == IDS
