"""Connections rstream makes for itself, and translation of redis-py errors.

Each thread role (reader, acker, heartbeat, reaper) owns one `Link`: a single redis-py
`Connection` used by that thread only, so a blocking read never holds up acks or heartbeats.
Links are made from the user's `redis` option (URL, kwargs dict or client instance) with three
things pinned: RESP2 (redis-py 8 defaults to RESP3, whose stream replies are maps), a socket
timeout that fits the blocking read, and hiredis as the reply parser.
"""
from __future__ import annotations

import socket
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import redis
import redis.exceptions as rex
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import ConfigError, FatalRedisError, GroupMissing, RedisUnavailable, RStreamError

# Longest wait for any non-blocking reply; a black-holed server is detected after this.
IO_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
# The reader's socket buffer: large replies (COUNT 500 of big entries) in few recv calls.
READER_READ_SIZE = 1 << 20
# Keys of a pool's connection_kwargs that rstream sets itself.
_PINNED = ("protocol", "socket_timeout", "socket_connect_timeout", "retry", "retry_on_error",
           "retry_on_timeout", "health_check_interval", "socket_read_size", "socket_keepalive")
_FATAL_PREFIXES = ("WRONGTYPE", "NOPERM", "NOAUTH", "WRONGPASS", "ERR unknown command",
                   "ERR unknown subcommand", "NOSCRIPT", "CROSSSLOT")
_TRANSIENT_PREFIXES = ("LOADING", "BUSY ", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN",
                       "MOVED", "ASK ")

Command = Sequence[Any]


def client_from_option(value: Any) -> Any:
    """Turn the `redis` option (URL, kwargs dict, or client) into a redis-py client."""
    if isinstance(value, str):
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("redis must be a URL starting with redis://, rediss:// or unix://, "
                              f"got {_redact(value)!r}")
        return redis.Redis.from_url(value)
    if isinstance(value, dict):
        try:
            return redis.Redis(**value)
        except TypeError as exc:
            raise ConfigError(f"redis kwargs not accepted by redis.Redis: {exc}") from None
    if isinstance(value, redis.Redis):
        return value
    cluster_cls = getattr(redis, "RedisCluster", None)
    if cluster_cls is not None and isinstance(value, cluster_cls):
        return value
    raise ConfigError("redis must be a URL, a dict of redis.Redis keyword arguments or a "
                      f"redis.Redis/RedisCluster instance, got {type(value).__name__}")


def _redact(url: str) -> str:
    """A URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user = creds.partition(":")[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


class ConnectionFactory:
    """Makes rstream's own connections to the node that holds the stream."""

    def __init__(self, client: Any, stream: str) -> None:
        pool = _pool_for(client, stream)
        self._cls: Type[redis.Connection] = pool.connection_class
        kwargs: Dict[str, Any] = dict(pool.connection_kwargs)
        for key in _PINNED:
            kwargs.pop(key, None)
        self.decode_responses = bool(kwargs.get("decode_responses", False))
        self._kwargs = kwargs

    def make(self, role: str, read_timeout_s: float = IO_TIMEOUT_S,
             read_size: int = 65536) -> "Link":
        conn = self._cls(
            **self._kwargs,
            protocol=2,
            socket_timeout=read_timeout_s,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_keepalive=True,
            socket_read_size=read_size,
            retry_on_timeout=False,
            # rstream retries with its own backoff; redis-py's would retry a failed AUTH for seconds.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        return Link(conn, role)

    def describe(self) -> str:
        """host:port (never credentials), for log lines."""
        host = self._kwargs.get("host") or self._kwargs.get("path") or "?"
        port = self._kwargs.get("port")
        return f"{host}:{port}" if port else str(host)


def _pool_for(client: Any, stream: str) -> Any:
    if hasattr(client, "get_node_from_key"):  # RedisCluster: the node that owns the stream's slot
        node = client.get_node_from_key(stream)
        if node.redis_connection is None:
            client.get_redis_connection(node)
        return node.redis_connection.connection_pool
    return client.connection_pool


class Link:
    """One connection owned by one thread. Errors come out translated to rstream's tree."""

    def __init__(self, conn: redis.Connection, role: str) -> None:
        self._conn: Any = conn  # redis-py's Connection methods are untyped
        self.role = role

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

    def send(self, commands: Sequence[Command]) -> None:
        try:
            self._conn.send_packed_command(self._conn.pack_commands(commands), check_health=False)
        except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
            self._conn.disconnect()
            raise translate(exc) from None
        except rex.RedisError as exc:  # AUTH/HELLO failures surface here on connect
            self._conn.disconnect()
            raise translate(exc) from None

    def read(self, count: int) -> List[Any]:
        replies: List[Any] = []
        try:
            for _ in range(count):
                try:
                    replies.append(self._conn.read_response())
                except rex.ResponseError as exc:
                    replies.append(translate(exc))
        except (rex.RedisError, OSError) as exc:
            self._conn.disconnect()
            raise translate(exc) from None
        return replies

    def abort(self) -> None:
        """Wake a thread blocked on this link (from another thread): shut the socket down."""
        sock: Optional[socket.socket] = getattr(self._conn, "_sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._conn.disconnect()


def translate(exc: BaseException) -> RStreamError:
    """Map a redis-py error onto rstream's exception tree (the text never holds a password)."""
    text = str(exc)
    if isinstance(exc, (rex.AuthenticationError, rex.AuthorizationError)):
        return FatalRedisError(f"authentication failed: {text}")
    if isinstance(exc, rex.NoPermissionError):
        return FatalRedisError(f"ACL permission missing: {text}")
    if isinstance(exc, (rex.ConnectionError, rex.TimeoutError, OSError)):
        if "invalid password" in text.lower() or "WRONGPASS" in text or "NOAUTH" in text:
            return FatalRedisError(f"authentication failed: {text}")
        if "certificate verify failed" in text.lower() or "ssl" in type(exc).__name__.lower():
            return FatalRedisError(f"TLS handshake failed: {text}")
        return RedisUnavailable(text or type(exc).__name__)
    if text.startswith("NOGROUP"):
        return GroupMissing(text)
    if text.startswith(_TRANSIENT_PREFIXES):
        return RedisUnavailable(text)
    if text.startswith(_FATAL_PREFIXES):
        return FatalRedisError(text)
    return RStreamError(text)


def server_version(info: Any) -> Tuple[str, Tuple[int, ...]]:
    """("redis"|"valkey", version) from an INFO server reply (bulk string)."""
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    name = "valkey" if "valkey_version" in fields or fields.get("server_name") == "valkey" else "redis"
    raw = fields.get("redis_version", "0")
    version = tuple(int(part) for part in raw.split(".") if part.isdigit())
    return name, version


Reply = Union[Any, RStreamError]
