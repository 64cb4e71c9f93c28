"""rstream.wire: replies read from a connection's socket by rstream, not by redis-py's parser.

The bytes here are a real server's: a pipeline of the commands rstream sends (reads with
entries, deleted entries and none, acks, transactions, scripts, XINFO, error replies) is sent
over a plain socket and everything the server answers is recorded. Those bytes are then handed
to both readers of replies through a socket that returns them a few at a time (1 byte, 7, 64 or
all at once), so a reply cut anywhere is met, and what each reader gives must be what redis-py's
own hiredis parser and the decoders give for the same bytes.
"""
from __future__ import annotations

import gc
import socket
import sys
from typing import Any, List, Optional, Tuple

import hiredis
import pytest
import redis
import redis.exceptions as rex

from rstream import _hotpath as hot
from rstream import wire
from rstream.embedded import EmbeddedServer
from rstream.message import Message

STREAM = "wire:s"
GROUP = "g"


def _commands() -> List[Tuple[Any, ...]]:
    """What rstream sends, with replies of every shape; (command, kind of reply) pairs."""
    return [
        ("XGROUP", "CREATE", STREAM, GROUP, "0", "MKSTREAM"),
        *[("XADD", STREAM, f"{n + 1}-0", "a", "x" * n, "b", bytes([n % 256]) * 3, "c", "\r\n$*")
          for n in range(40)],
        ("XADD", STREAM, "41-0", "only", b"\xff\xfe non-UTF-8"),
        ("XREADGROUP", "GROUP", GROUP, "c1", "COUNT", "10", "STREAMS", STREAM, ">"),
        ("XDEL", STREAM, "3-0"),
        ("XREADGROUP", "GROUP", GROUP, "c1", "COUNT", "100", "STREAMS", STREAM, ">"),
        # Own pending history: the deleted entry 3-0 comes back with nil fields.
        ("XREADGROUP", "GROUP", GROUP, "c1", "COUNT", "5", "STREAMS", STREAM, "0"),
        ("XREADGROUP", "GROUP", GROUP, "c1", "COUNT", "5", "BLOCK", "1", "STREAMS", STREAM, ">"),
        ("XACK", STREAM, GROUP, "1-0", "2-0"),
        ("MULTI",), ("XACK", STREAM, GROUP, "4-0"), ("XDEL", STREAM, "4-0"), ("EXEC",),
        ("XREADGROUP", "GROUP", "nogroup", "c1", "COUNT", "5", "STREAMS", STREAM, ">"),
        ("NOSUCHCOMMAND", "x"),
        ("EVAL", "return {1, {2, 'x'}, redis.status_reply('OK'), false}", "0"),
        ("XINFO", "STREAM", STREAM),
        ("XPENDING", STREAM, GROUP, "-", "+", "3"),
        ("PING",),
        ("XREADGROUP", "GROUP", GROUP, "c1", "COUNT", "5", "STREAMS", STREAM, "999-0"),
    ]


def _is_read(command: Tuple[Any, ...]) -> bool:
    return command[0] == "XREADGROUP"


@pytest.fixture(scope="module")
def recorded() -> Tuple[List[Tuple[Any, ...]], bytes]:
    """The commands, and every byte a real server answered to them, in one recording."""
    from rstream.embedded import find_server_binary

    server = EmbeddedServer(find_server_binary())
    server.start()
    try:
        commands = _commands()
        payload = b"".join(hiredis.pack_command(tuple(c)) for c in commands)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(payload)
            data = bytearray()
            counter = hiredis.Reader()
            seen = 0
            while seen < len(commands):
                chunk = sock.recv(1 << 16)
                assert chunk, "the server closed the connection"
                data += chunk
                counter.feed(chunk)
                while counter.gets() is not False:
                    seen += 1
        return commands, bytes(data)
    finally:
        server.close()


class Trickle:
    """A socket whose reads return at most `step` bytes of what a server sent."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step

    def recv_into(self, buffer: bytearray) -> int:
        size = min(self._step, len(buffer), len(self._data))
        buffer[:size] = self._data[:size]
        self._data = self._data[size:]
        return size  # 0 once everything was read: the server closed the connection


def _connection(sock: Any, decode: bool) -> Any:
    conn = redis.Connection(decode_responses=decode, encoding_errors="surrogateescape")
    conn._sock = sock
    return conn


def _expected(commands: List[Tuple[Any, ...]], data: bytes, decode: bool) -> List[Any]:
    """What redis-py's hiredis parser gives for each reply, a read decoded as StreamOps does."""
    conn = _connection(None, decode)
    options = dict(protocolError=rex.InvalidResponse, replyError=conn._parser.parse_error,
                   errors="surrogateescape")
    if decode:
        options["encoding"] = "utf-8"
    reader = hiredis.Reader(**options)
    reader.feed(data)
    out: List[Any] = []
    for command in commands:
        reply = reader.gets()
        if _is_read(command) and not isinstance(reply, Exception):
            streams = hot.decode_read_reply(reply)
            reply = hot.decode_entries(streams[0][1], STREAM, 1) if streams else ([], [])
        out.append(reply)
    assert reader.gets() is False
    return out


def _image(value: Any) -> Any:
    """A comparable image: Messages by their slots, exceptions by type and text."""
    if isinstance(value, Message):
        return ("Message", value.id, value.stream, _image(value.fields), value.attempt)
    if isinstance(value, BaseException):
        return (type(value), str(value))
    if isinstance(value, (list, tuple)):
        return (type(value), [_image(v) for v in value])
    if isinstance(value, dict):
        return {_image(k): _image(v) for k, v in value.items()}
    return (type(value), value)


def _read_all(replies: wire.ParsedReplies, commands: List[Tuple[Any, ...]]) -> List[Any]:
    out: List[Any] = []
    for command in commands:
        if _is_read(command):
            read, reply = replies.next_read(STREAM, 1)
            out.append(read if read is not None else _decoded(reply))
        else:
            out.append(replies.reply())
    return out


def _decoded(reply: Any) -> Any:
    """A read that the reader of replies handed back whole, decoded as StreamOps does."""
    if isinstance(reply, Exception):
        return reply
    streams = hot.decode_read_reply(reply)
    return hot.decode_entries(streams[0][1], STREAM, 1) if streams else ([], [])


KINDS = [wire.ParsedReplies] + ([wire.ScannedReplies] if hot.COMPILED else [])


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("step", [1, 7, 64, 1 << 20])
@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "decode_responses"])
def test_replies_are_what_redis_py_parses(recorded: Tuple[List[Tuple[Any, ...]], bytes],
                                          kind: type, step: int, decode: bool) -> None:
    commands, data = recorded
    replies = kind(_connection(Trickle(data, step), decode))
    got = _read_all(replies, commands)
    assert [_image(x) for x in got] == [_image(x) for x in _expected(commands, data, decode)]
    # The recording holds what a consumer meets: entries, a deleted one, a nil read, errors.
    reads = [g for c, g in zip(commands, got) if _is_read(c)]
    assert [len(r[0]) for r in reads if isinstance(r, tuple)] == [10, 31, 4, 0, 0]
    assert ["3-0"] == reads[2][1]
    assert any(isinstance(r, rex.ResponseError) and "NOGROUP" in str(r) for r in reads)
    # Then the server closes: redis-py's error, with its message.
    with pytest.raises(rex.ConnectionError, match="Connection closed by server"):
        replies.reply()


def test_a_timeout_and_a_socket_error_come_out_as_redis_py_raises_them() -> None:
    left, right = socket.socketpair()
    try:
        left.settimeout(0.05)
        conn = _connection(left, False)  # kept: a Connection closes its socket when collected
        replies = wire.replies_for(conn)
        with pytest.raises(rex.TimeoutError, match="Timeout reading from socket"):
            replies.reply()
        left.shutdown(socket.SHUT_RDWR)
        right.close()
        with pytest.raises(rex.ConnectionError):
            replies.next_read(STREAM, 1)
    finally:
        left.close()
        right.close()


def test_a_byte_that_starts_no_reply_is_a_protocol_error() -> None:
    replies = wire.replies_for(_connection(Trickle(b"?what\r\n", 64), False))
    with pytest.raises(rex.InvalidResponse):
        replies.reply()


@pytest.mark.skipif(not hot.COMPILED, reason="the pure-Python hot path builds Messages with Message()")
def test_messages_are_left_out_of_the_cycle_collector_and_freed_by_reference_count() -> None:
    """The compiled decoders untrack each Message (README, "Performance"); one dropped by its
    last reference is freed at once all the same, with its fields."""
    fields = [b"k", b"v" * 1000]
    entries = [[f"{n}-0".encode(), fields] for n in range(2000)]
    reply = b"*1\r\n*2\r\n$1\r\ns\r\n" + b"*%d\r\n" % len(entries) + b"".join(
        b"*2\r\n$%d\r\n%s\r\n*2\r\n$1\r\nk\r\n$1000\r\n%s\r\n" % (len(e[0]), e[0], b"v" * 1000)
        for e in entries)
    decoders = (lambda: hot.decode_entries(entries, "s", 1)[0],
                lambda: _read_ok(hot.decode_stream_reply(reply, 0, "s", 1)))
    for decode in decoders:
        messages = decode()
        assert len(messages) == 2000 and not any(gc.is_tracked(m) for m in messages)
        value = messages[0].fields[b"k"]
        before = sys.getrefcount(value)
        del messages
        # The Messages are gone without a collection: nothing else refers to their values.
        assert sys.getrefcount(value) < before


def _read_ok(result: Optional[Tuple[List[Message], List[str], int]]) -> List[Message]:
    assert result is not None and result[2] > 0
    return result[0]
