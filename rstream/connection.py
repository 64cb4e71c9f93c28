"""Connections rstream makes for itself.

Each thread role (reader, acker, heartbeat, reaper) owns one `Link`: a single redis-py
`Connection` used by that thread only, so a blocking read never holds up acks or heartbeats.
Links are made like the user's client makes its own (`rstream.clients`: URL, kwargs dict,
`redis.Redis`, `RedisCluster` node, Sentinel-managed master) with three things pinned: RESP2
(redis-py 8 defaults to RESP3, whose stream replies are maps), a socket timeout that fits the
blocking read, and hiredis as the reply parser. Once connected, a link reads its connection's
replies off the socket itself (`rstream.wire`: a read's bytes become Messages in one pass, the
other replies are parsed by hiredis as redis-py would). A link connects through the connection's own
`connect()`, never implicitly on first send: redis-py's implicit connect skips the master lookup
of Sentinel-managed connections and would reach localhost:6379 instead. A link to a
`RedisCluster` node follows the stream's slot: after a MOVED or READONLY reply, or a lost
connection, its next connection goes where `ConnectionFactory.look_again` finds the slot now.
While the slot migrates, the commands its node refuses with ASK (their key moved already) are
sent again to the node importing it, after ASKING (`rstream.asking`). Errors come out of a
link translated to rstream's tree (`rstream.faults`).
"""
from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import (Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple,
                    TypeVar, Union)

import redis
import redis.exceptions as rex
from redis.backoff import NoBackoff
from redis.connection import AbstractConnection
from redis.retry import Retry

from . import tls, wire
from .asking import Asking, address, asked_to
from .clients import Recipe, recipe_for
# Re-exported: the consumer and redisio take everything about connections from this module.
from .clients import check_same_slot as check_same_slot
from .clients import client_from_option as client_from_option
from .errors import RedisUnavailable, RStreamError
from .faults import translate as translate

# Longest wait for any non-blocking reply; a black-holed server is detected after this.
IO_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
# A link quiet for this long is checked for a server-side close before it is used again.
STALE_AFTER_S = 0.5
# The reader's socket buffer: large replies (COUNT 500 of big entries) in few recv calls.
READER_READ_SIZE = 1 << 20
# Keys of a pool's connection_kwargs that rstream sets itself.
_PINNED = ("protocol", "socket_timeout", "socket_connect_timeout", "retry", "retry_on_error",
           "retry_on_timeout", "health_check_interval", "socket_read_size", "socket_keepalive")

Command = Sequence[Any]
Timeout = Optional[float]
# Replies saying this connection's server no longer serves the stream: the slot moved to
# another cluster node (MOVED), or a master was demoted to a replica (READONLY). The link drops
# the connection and its next one goes where the server is now.
_WRONG_SERVER = (rex.MovedError, rex.ReadOnlyError)

log = logging.getLogger("rstream")
_T = TypeVar("_T")


class ConnectionFactory:
    """Makes rstream's own connections to the server the client reaches for the stream, and
    finds that server again when it moved (`look_again`)."""

    def __init__(self, client: Any, stream: str) -> None:
        self._lock = threading.Lock()
        self._generation = 0  # how many times the server was looked up again
        self._use(recipe_for(client, stream))

    def _use(self, recipe: Recipe) -> None:
        kwargs = dict(recipe.kwargs)
        for key in _PINNED:
            kwargs.pop(key, None)
        self.decode_responses = bool(kwargs.get("decode_responses", False))
        # A non-UTF-8 payload must not wedge a decode_responses consumer: it arrives as a str
        # with surrogates (``.encode("utf-8", "surrogateescape")`` gives its bytes back).
        if kwargs.get("encoding_errors", "strict") == "strict":
            kwargs["encoding_errors"] = "surrogateescape"
        self._recipe = recipe
        self._cls = recipe.connection_class
        self._kwargs = kwargs
        self._where = recipe.where

    def make(self, role: str, read_timeout_s: float = IO_TIMEOUT_S,
             read_size: int = 65536) -> "Link":
        pinned: Dict[str, Any] = dict(
            protocol=2,
            socket_timeout=read_timeout_s,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_read_size=read_size,
            retry_on_timeout=False,
            # rstream retries with its own backoff; redis-py's would retry a failed AUTH for seconds.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        with self._lock:
            conn, generation = self._connection(pinned), self._generation
        follow = _Follower(self, pinned, generation) if self._recipe.again is not None else None
        return Link(conn, role, follow)

    def _connection(self, pinned: Dict[str, Any], **address: Any) -> AbstractConnection:
        extra = dict(pinned)
        if issubclass(self._cls, redis.Connection):  # TCP only: a unix socket refuses the option
            extra["socket_keepalive"] = True
        return self._cls(**{**self._kwargs, **address}, **extra)

    def at(self, pinned: Dict[str, Any], host: str, port: int) -> AbstractConnection:
        """A connection like the others to another node of the cluster: the one an ASK reply
        names, importing the stream's slot."""
        with self._lock:
            return self._connection(pinned, host=host, port=port)

    def look_again(self, pinned: Dict[str, Any], seen: int) -> Tuple[AbstractConnection, int]:
        """A connection to where the server is now, for a link whose last connection was made
        at lookup `seen`. The first link to ask after a lookup looks again (a RedisCluster
        reads the slot map); the others asking meanwhile take what it found, so a slot move
        costs one lookup, not one per thread. Raises redis-py's errors untranslated."""
        again = self._recipe.again
        with self._lock:
            if again is not None and seen == self._generation:
                recipe = again()
                if recipe.where != self._where:
                    log.info("rstream: the stream moved from %s to %s", self._where, recipe.where)
                self._use(recipe)
                self._generation += 1
            return self._connection(pinned), self._generation

    def describe(self) -> str:
        """host:port, socket path or Sentinel service (never credentials), for log lines."""
        return self._where


class _Follower:
    """How one link gets its next connection after its server moved or its connection was lost:
    from `ConnectionFactory.look_again`, remembering which lookup it has seen."""

    def __init__(self, factory: ConnectionFactory, pinned: Dict[str, Any], generation: int) -> None:
        self._factory = factory
        self._pinned = pinned
        self._generation = generation

    def __call__(self) -> AbstractConnection:
        conn, self._generation = self._factory.look_again(self._pinned, self._generation)
        return conn

    def asked(self, host: str, port: int) -> AbstractConnection:
        """A connection to the node an ASK reply names."""
        return self._factory.at(self._pinned, host, port)


class Link:
    """One connection owned by one thread (and, while its stream's slot migrates, one to the
    node importing it: `rstream.asking`). Errors come out translated to rstream's tree.

    `ok_at` is when the request behind the last reply read was sent (monotonic): the evidence
    `supervise.Health` needs before it calls an outage or a missing stream over. A step that
    sent nothing proves nothing, and neither does a blocking read sent before the fault began
    (Redis 6.2 times it out as usual when its stream is deleted meanwhile).
    """

    def __init__(self, conn: AbstractConnection, role: str, follow: Optional[_Follower] = None) -> None:
        self._conn: Any = conn  # redis-py's Connection methods are untyped
        self.role = role
        # Where the next connection comes from once this one was lost or told it is on the wrong
        # server (a RedisCluster's slot moved): None for servers that stay where they are.
        self._follow = follow
        self._asking: Optional[Asking] = None  # while the stream's slot migrates
        # Reads this connection's replies from its socket once connected (`rstream.wire`).
        self._replies: Optional[wire.ParsedReplies] = None
        self._connected_before = False
        self.ok_at = 0.0
        self._sent_at = 0.0
        self._aborted = False
        # The connection's own timeouts; a deadline only ever shortens them (see `bounded`).
        self._timeouts: Tuple[Timeout, Timeout] = (conn.socket_timeout, conn.socket_connect_timeout)
        self._stop_at: Optional[float] = None   # set by `limit`, for good
        self._bound_at: Optional[float] = None  # set by `bounded`, for one block
        self._tls_tried = False

    def call(self, *args: Any) -> Any:
        """Send one command and return its reply (an error reply raises)."""
        result = self.pipeline([args])[0]
        if isinstance(result, RStreamError):
            raise result
        return result

    def pipeline(self, commands: Sequence[Command]) -> List[Any]:
        """Send commands in one write and read every reply; error replies come back as
        exception values in their place, a broken connection raises `RedisUnavailable`."""
        self.send(commands)
        return self.read(len(commands))

    def encode(self, value: Any) -> bytes:
        """`value` as this connection would send it (the client's encoding)."""
        return self._conn.encoder.encode(value)  # type: ignore[no-any-return]

    def send(self, commands: Union[Sequence[Command], bytes]) -> None:
        """Send commands, or bytes already packed (the reader's hot path packs with hiredis)."""
        if self._aborted:
            raise RedisUnavailable(f"{self.role} connection closed by stop()")
        if self._stop_at is not None or self._bound_at is not None:
            self._cut_to_deadline()
        now = time.monotonic()
        if now - self.ok_at > STALE_AFTER_S:
            self._drop_if_stale()  # a syscall: only for a link that sat idle, not per hot read
        self._sent_at = now
        if self._conn._sock is None:
            if self._connected_before and self._follow is not None:
                self._relocate(self._follow)
            self._connected_before = True
            self._connect(self._conn)
            self._replies = wire.replies_for(self._conn)
        try:
            # send_packed_command iterates its argument: bytes must go in a list, not bare.
            payload = [commands] if isinstance(commands, bytes) else self._conn.pack_commands(commands)
            self._conn.send_packed_command(payload, check_health=False)
        except (rex.RedisError, OSError) as exc:
            self._drop()
            raise translate(exc) from None
        if self._asking is not None:
            self._asking.record(commands)

    def _relocate(self, follow: _Follower) -> None:
        """Replace the lost connection by one to where the stream's server is now. On another
        node than the one that answered ASK, the migration it told of is none of this link's
        business any more (it ended, or that node failed)."""
        try:
            conn = follow()
        except (rex.RedisError, rex.RedisClusterException, OSError) as exc:
            raise translate(exc) from None
        if self._asking is not None and address(conn) != self._asking.source:
            self._end_asking()
        self._conn = conn
        self._cut_to_deadline()

    def _connect(self, conn: Any) -> None:
        """Open a connection with its own `connect()`, which is where a Sentinel-managed
        connection asks for the current master: the implicit connect of `send_packed_command`
        skips that and goes to the default localhost:6379."""
        first_tls = tls.is_tls(conn) and not self._tls_tried
        read_s = conn.socket_timeout
        if first_tls:
            # A plain server behind rediss:// never answers the handshake (see rstream.tls):
            # the first one waits briefly, so that start() can tell so in about a second.
            self._tls_tried = True
            short = tls.FIRST_HANDSHAKE_TIMEOUT_S
            _set_timeouts(conn, short if read_s is None else min(read_s, short),
                          conn.socket_connect_timeout)
        try:
            conn.connect()
        except (rex.RedisError, OSError) as exc:  # AUTH/HELLO failures surface here too
            conn.disconnect()
            left = self._time_left()
            probe_s = tls.PROBE_TIMEOUT_S if left is None else min(left, tls.PROBE_TIMEOUT_S)
            problem = tls.diagnose(conn, exc, probe_s)
            raise (problem or translate(exc)) from None
        finally:
            if first_tls:
                _set_timeouts(conn, read_s, conn.socket_connect_timeout)

    def _drop_if_stale(self) -> None:
        """Reconnect, rather than fail, when the server closed this idle connection (it was
        restarted, or a proxy dropped us). Without this, every thread that sat out an outage
        would fail once after it ended and report the outage again."""
        if _closed_by_server(self._conn):
            self._drop()

    def _drop(self) -> None:
        """Disconnect, losing the replies still due: the caller sees the connection broken."""
        self._conn.disconnect()
        self._replies = None
        if self._asking is not None:
            self._asking.drop()

    def _end_asking(self) -> None:
        if self._asking is not None:
            self._asking.drop()
            self._asking = None

    def read(self, count: int) -> List[Any]:
        """The replies of the next `count` commands sent, in order: error replies come back as
        exception values (translated) in their place, a broken connection raises."""
        asking = self._asking
        raw = self._reading(lambda: self._read_raw(self._conn, count) if asking is None
                            else asking.read(self._conn, count, self._read_raw, self._ready_asked))
        return self._judged(raw)

    def read_entries(self, stream: str, attempt: wire.Attempt) -> Tuple[Optional[wire.Read], Any]:
        """The reply of the next command sent, an XREADGROUP of one stream: (its entries
        decoded as `Message`s of `stream`, None) where this link's reader of replies decodes
        them from the wire itself (`rstream.wire`), else (None, the reply as `read(1)` gives
        it, to be decoded by the caller)."""
        replies = self._replies
        if replies is None or self._asking is not None:
            return None, self.read(1)[0]
        if self._stop_at is not None or self._bound_at is not None:
            self._cut_to_deadline()
        read, reply = self._reading(lambda: self._next_read(replies, stream, attempt))
        if read is None:
            return None, self._judged([reply])[0]
        self.ok_at = self._sent_at
        return read, None

    def _reading(self, read: Callable[[], _T]) -> _T:
        """`read()`, with every fault leaving the connection dropped: a broken connection
        raises `RedisUnavailable` (or another translated error), and anything else (a reply
        that does not decode) leaves the rest of the reply unread, which the next command
        would read as its own answer."""
        try:
            return read()
        except (rex.RedisError, OSError) as exc:
            self._drop()
            raise translate(exc) from None
        except BaseException:
            self._drop()
            raise

    def _judged(self, raw: List[Any]) -> List[Any]:
        replies = self._judge(raw)
        self.ok_at = self._sent_at
        return replies

    def _next_read(self, replies: "wire.ParsedReplies", stream: str,
                   attempt: wire.Attempt) -> Tuple[Optional[wire.Read], Any]:
        self._check_socket(replies, self._conn)
        return replies.next_read(stream, attempt)

    def _check_socket(self, replies: "wire.ParsedReplies", conn: Any) -> None:
        """A reader of replies serves the socket it was made for: one replaced behind this
        link's back (redis-py reconnecting by itself) has none of the replies due."""
        if replies.sock is not conn._sock:
            raise rex.ConnectionError(wire.CLOSED)

    def _read_raw(self, conn: Any, count: int) -> List[Any]:
        """`count` replies from `conn`, error replies as redis-py's exceptions in their place."""
        replies: List[Any] = []
        bounded = self._stop_at is not None or self._bound_at is not None
        own = self._replies if conn is self._conn else None
        if own is not None:
            self._check_socket(own, conn)
        for _ in range(count):
            if bounded:
                self._cut_to_deadline()
            if own is not None:
                replies.append(own.reply())
                continue
            try:
                replies.append(conn.read_response())
            except rex.ResponseError as exc:
                replies.append(exc)
        return replies

    def _judge(self, replies: List[Any]) -> List[Any]:
        """Translate the error replies in place. Every reply is read, so the connection can go
        after one saying it is on the wrong server (MOVED, READONLY): the next connect looks
        again. It goes after a first ASK too: the commands sent before it were not kept, so the
        unanswered ones could not be sent again; the next connection keeps them (`Asking`).
        The refused command was not run: its refusal, translated (`RedisUnavailable`), fails
        the caller's step (and a read queued behind it fails with the connection), and the step
        tried again after the loop's shortest backoff finds the link following the migration.
        That costs each link a step or two per migration; keeping the commands of every cluster
        link all the time would cost every write a split of its packed commands."""
        wrong_server = False
        target: Optional[Tuple[str, int]] = None
        for n, reply in enumerate(replies):
            if isinstance(reply, rex.ResponseError):
                wrong_server = wrong_server or isinstance(reply, _WRONG_SERVER)
                target = asked_to(reply) or target
                replies[n] = translate(reply)
        if wrong_server:
            self._drop()
            self._end_asking()
        elif target is not None and self._asking is None and self._follow is not None:
            self._drop()
            self._asking = Asking(self._follow, address(self._conn), target)
        return replies

    def _ready_asked(self, conn: Any) -> None:
        """Make the connection to the importing node ready to send on: reopened if its server
        closed it, cut to this link's deadlines, connected."""
        if _closed_by_server(conn):
            conn.disconnect()
        self._cut_to_deadline()
        if conn._sock is None:
            self._connect(conn)

    def abort(self) -> None:
        """Wake a thread blocked on this link (from another thread): shut its sockets down.
        The link sends nothing afterwards; it is only closed."""
        self._aborted = True
        for conn in self._connections():
            sock: Optional[socket.socket] = getattr(conn, "_sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def limit(self, deadline: float) -> None:
        """No wait on this link (connect, write, read) outlasts `deadline` (monotonic) from
        now on: at stop, a flush over a black-holed network must not hold stop() up."""
        self._stop_at = deadline if self._stop_at is None else min(self._stop_at, deadline)
        self._cut_to_deadline()

    @contextlib.contextmanager
    def bounded(self, deadline: float) -> Iterator["Link"]:
        """Within the block, no wait on this link outlasts `deadline` (monotonic), so that
        start() returns promptly whatever the network does. Each write and each reply read is
        cut to the time left when it starts (1 ms once the deadline has passed); a connect's
        waits (TCP connect, TLS handshake, the AUTH/HELLO/SELECT replies) each get the time
        left when the connect starts, as redis-py sets them once per connect. On exit the
        link's own timeouts come back: socket_timeout, socket_connect_timeout and the live
        socket's. Blocks nest; `limit` outlasts them.
        """
        outer = self._bound_at
        self._bound_at = deadline if outer is None else min(outer, deadline)
        self._cut_to_deadline()
        try:
            yield self
        finally:
            self._bound_at = outer
            if outer is None and self._stop_at is None:
                for conn in self._connections():
                    _set_timeouts(conn, *self._timeouts)
            else:
                self._cut_to_deadline()

    def _time_left(self) -> Optional[float]:
        """Seconds to the nearest deadline (at least 1 ms), or None without one."""
        deadlines = [d for d in (self._stop_at, self._bound_at) if d is not None]
        return max(0.001, min(deadlines) - time.monotonic()) if deadlines else None

    def _cut_to_deadline(self) -> None:
        left = self._time_left()
        if left is None:
            return
        read_s, connect_s = self._timeouts
        for conn in self._connections():
            _set_timeouts(conn, left if read_s is None else min(read_s, left),
                          left if connect_s is None else min(connect_s, left))

    def _connections(self) -> List[Any]:
        """The link's own connection, and the one to an importing node while the slot migrates.
        `abort` calls it from another thread: `_asking` is read once."""
        asking = self._asking
        asked = asking.conn if asking is not None else None
        return [self._conn] if asked is None else [self._conn, asked]

    def close(self) -> None:
        self._conn.disconnect()
        self._end_asking()


def _closed_by_server(conn: Any) -> bool:
    """Whether an open connection with no reply due was closed by its server."""
    if conn._sock is None:
        return False
    try:
        conn.can_read(timeout=0)  # no reply is outstanding: only EOF makes it raise
    except (rex.ConnectionError, OSError):
        return True
    return False


def _set_timeouts(conn: Any, read_s: Timeout, connect_s: Timeout) -> None:
    """Set a connection's timeouts, on its live socket too."""
    conn.socket_timeout = read_s
    conn.socket_connect_timeout = connect_s
    sock: Optional[socket.socket] = conn._sock
    if sock is not None:
        sock.settimeout(read_s)
    # redis-py's parsers keep the timeout they saw at connect and put it back on the socket
    # after a timed poll: they must keep this one.
    parser: Any = getattr(conn, "_parser", None)
    if hasattr(parser, "_socket_timeout"):
        parser._socket_timeout = read_s
    buffer: Any = getattr(parser, "_buffer", None)
    if hasattr(buffer, "socket_timeout"):
        buffer.socket_timeout = read_s


def server_version(info: Any) -> Tuple[str, Tuple[int, ...]]:
    """("redis"|"valkey", version) from an INFO server reply (bulk string)."""
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    name = "valkey" if "valkey_version" in fields or fields.get("server_name") == "valkey" else "redis"
    raw = fields.get("valkey_version") or fields.get("redis_version", "0")
    version = tuple(int(part) for part in raw.split(".") if part.isdigit())
    return name, version

