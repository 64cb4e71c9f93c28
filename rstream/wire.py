"""Replies read from a connection's socket by rstream itself, not by redis-py's parser.

redis-py opens each connection (TCP or TLS, AUTH, HELLO, SELECT: its `connect()`); from then
on a `Link` reads every reply on it through the `Replies` made for it here. Two reasons:
- The reader's replies are the hot path. With the compiled hot path (`ScannedReplies`) the
  socket's bytes are kept as they came, and an XREADGROUP reply is turned into Messages
  straight from them in one pass (`decode_stream_reply`): no list per entry and per field list
  as hiredis would build, no second pass over those, a field name built once per batch rather
  than once per entry. Other replies are cut out by `ReplyScan`, which finds where a reply ends
  without building anything, and given to hiredis whole.
- It skips redis-py's layers per reply (its connection's and parser's read_response), which
  matter for the small replies (XACK's integer) that ride with every read.

Every other reply (and an XREADGROUP reply of an unexpected shape: an error, NOGROUP) is parsed
by hiredis exactly as redis-py's parser does (the same error classes, `parse_error`, the same
decoding), so what a caller gets does not depend on who read it. Without the compiled hot path
`ParsedReplies` feeds every byte to hiredis, as redis-py would. Socket faults come out as
redis-py's exceptions, with redis-py's messages: `rstream.faults` translates them as before.
"""
from __future__ import annotations

import socket
from typing import Any, List, Mapping, Optional, Tuple, Union

import hiredis
import redis.exceptions as rex

from . import _hotpath as hot
from .message import Message

Read = Tuple[List[Message], List[str]]  # (messages, deleted ids), as StreamOps decodes a read
Attempt = Union[int, Mapping[str, int]]
CLOSED = "Connection closed by server."
DEFAULT_READ_SIZE = 65536


class ParsedReplies:
    """Every byte fed to one hiredis reader, configured as redis-py configures its own."""

    def __init__(self, conn: Any) -> None:
        self.sock: Any = conn._sock
        encoder = conn.encoder
        self._encoding: Optional[str] = encoder.encoding if encoder.decode_responses else None
        self._errors: str = encoder.encoding_errors
        options = dict(protocolError=rex.InvalidResponse, replyError=conn._parser.parse_error,
                       errors=self._errors)
        if self._encoding is not None:
            options["encoding"] = self._encoding
        self._parser = hiredis.Reader(**options)
        self._chunk = bytearray(getattr(conn._parser, "socket_read_size", DEFAULT_READ_SIZE))

    def reply(self) -> Any:
        """The next reply: error replies as exception values (`rex.ResponseError`), as redis-py
        returns them; a reply saying the connection is unusable (LOADING, say) is raised."""
        reply = self._parser.gets()
        while reply is False:
            # hiredis takes any buffer (its stubs say bytes), as redis-py feeds it a bytearray.
            self._parser.feed(self._chunk, 0, self._receive())  # type: ignore[arg-type]
            reply = self._parser.gets()
        return _checked(reply)

    def next_read(self, stream: str, attempt: Attempt) -> Tuple[Optional[Read], Any]:
        """(the next reply decoded as a read of one stream, None) where this reader can decode
        it itself, else (None, the reply as `reply()` gives it)."""
        return None, self.reply()

    def _receive(self) -> int:
        """Bytes read into the chunk (at least one); socket faults as redis-py raises them."""
        try:
            size: int = self.sock.recv_into(self._chunk)
        except socket.timeout:
            raise rex.TimeoutError("Timeout reading from socket") from None
        except OSError as exc:
            raise rex.ConnectionError(f"Error while reading from socket: {exc.args}") from None
        if size == 0:
            raise rex.ConnectionError(CLOSED)
        return size


class ScannedReplies(ParsedReplies):
    """The connection's bytes kept as they came: XREADGROUP replies decoded from the bytes
    themselves (`decode_stream_reply`), the others cut out by `ReplyScan` and fed to hiredis
    one whole reply at a time (so it never holds a part of a reply this class must decode)."""

    def __init__(self, conn: Any) -> None:
        super().__init__(conn)
        self._data = bytearray()
        self._scan = hot.ReplyScan()  # how far the reply at the front was scanned

    def reply(self) -> Any:
        return self._parsed(self._whole_reply())

    def next_read(self, stream: str, attempt: Attempt) -> Tuple[Optional[Read], Any]:
        while True:
            decoded = hot.decode_stream_reply(self._data, 0, stream, attempt, self._encoding,
                                              self._errors)
            if decoded is None:  # another reply (an error, say): parsed as any other
                return None, self._parsed(self._whole_reply())
            messages, deleted, end = decoded
            if end >= 0:
                self._take(end)
                return (messages, deleted), None
            # Not all here yet (seldom on a near link: a pipelined reply is usually whole in
            # the socket by the time it is collected): wait for the whole of it, then decode it.
            self._whole_reply()

    def _whole_reply(self) -> int:
        """Read until the buffer holds the next reply whole; where it ends. Each byte is
        scanned once however many reads the reply takes to arrive (`ReplyScan`)."""
        while True:
            try:
                end = self._scan.end(self._data)
            except ValueError as exc:
                raise rex.InvalidResponse(str(exc)) from None
            if end >= 0:
                return end
            size = self._receive()
            self._data += memoryview(self._chunk)[:size]

    def _parsed(self, end: int) -> Any:
        self._parser.feed(self._data, 0, end)  # type: ignore[arg-type]
        self._take(end)
        return _checked(self._parser.gets())

    def _take(self, end: int) -> None:
        """The reply that ends at `end` was taken: drop it from the buffer."""
        del self._data[:end]  # bytearray drops its front without moving the rest
        self._scan.reset()


def _checked(reply: Any) -> Any:
    """What redis-py's parser does with a reply before returning it: a connection error (as
    parse_error maps LOADING, say), alone or first in an array, is raised."""
    if isinstance(reply, rex.ConnectionError):
        raise reply
    if isinstance(reply, list) and reply and isinstance(reply[0], rex.ConnectionError):
        raise reply[0]
    return reply


def replies_for(conn: Any) -> ParsedReplies:
    """The reader of replies for a connection that has just connected."""
    return ScannedReplies(conn) if hot.COMPILED else ParsedReplies(conn)


__all__ = ["ParsedReplies", "ScannedReplies", "replies_for"]
