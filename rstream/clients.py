"""The `redis` option: which redis-py clients rstream accepts, and how its connections follow one.

rstream does not borrow connections from the client's pool: each thread owns one connection with
timeouts of its own (see `rstream.connection`). It makes them from the pool's connection class
and keyword arguments, which reach the client's server only for classes whose address is in those
arguments or is looked up when they connect:

- `Connection` and `SSLConnection` (redis:// and rediss:// URLs, a kwargs dict, a `redis.Redis`,
  each node of a `RedisCluster`): the host and port;
- `UnixDomainSocketConnection` (unix:// URLs, ``unix_socket_path``): the socket path;
- `SentinelManagedConnection` (`Sentinel(...).master_for(...)`): the master the client's
  `SentinelConnectionPool` names, asked again at every connect.

Any other client is refused with a `ConfigError` saying why: following it would mean guessing
an address, and redis-py's guess is localhost:6379, a server the user never named.

A `RedisCluster`'s recipe can be looked up again (`Recipe.again`): when the stream's slot moves
to another master (resharding, a replica taking over from a dead master), the client's map of
the slots is read again from the cluster and the recipe names the node that owns the slot now.
All the keys of one consumer (stream, dead-letter stream, fence key) hash to that one slot.
A Sentinel-managed connection needs none: it asks the Sentinels for the master at every connect.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Type

import redis
from redis.connection import AbstractConnection, UnixDomainSocketConnection
from redis.sentinel import SentinelManagedConnection

from .errors import ConfigError

_URL_SCHEMES = ("redis://", "rediss://", "unix://")


def client_from_option(value: Any) -> Any:
    """Turn the `redis` option (URL, kwargs dict, or client) into a redis-py client."""
    if isinstance(value, str):
        if not value.startswith(_URL_SCHEMES):
            raise ConfigError("redis must be a URL starting with redis://, rediss:// or unix://, "
                              f"got {redact(value)!r}")
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


def redact(url: str) -> str:
    """A URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user = creds.partition(":")[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to make a connection to the server a client reaches: `connection_class(**kwargs)`.
    `where` names that server for log lines (never credentials). `again`, for a server that
    can move (a Redis Cluster node), looks the server up afresh and returns its recipe; it may
    raise redis-py's errors (`rstream.faults.translate` maps them)."""

    connection_class: Type[AbstractConnection]
    kwargs: Dict[str, Any]
    where: str
    again: Optional[Callable[[], "Recipe"]] = dataclasses.field(default=None, compare=False)


def recipe_for(client: Any, stream: str) -> Recipe:
    """The recipe for connections to the server that holds `stream`, or a ConfigError naming
    the client and why rstream cannot follow it."""
    recipe = _recipe_from(client, stream)
    if _is_cluster(client):
        return dataclasses.replace(recipe, again=lambda: _look_again(client, stream))
    return recipe


def _look_again(client: Any, stream: str) -> Recipe:
    """After MOVED or a lost connection: the client reads the slot map from the cluster again
    (CLUSTER SLOTS from any node it knows, `NodesManager.initialize`), then the recipe names
    the master that owns the stream's slot now."""
    client.nodes_manager.initialize()
    return recipe_for(client, stream)


def _recipe_from(client: Any, stream: str) -> Recipe:
    pool = _pool_for(client, stream)
    what = f"{type(client).__name__} with {type(pool).__name__}"
    cls = getattr(pool, "connection_class", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not (isinstance(cls, type) and issubclass(cls, AbstractConnection)) or not isinstance(kwargs, dict):
        raise ConfigError(f"cannot follow {what}: rstream makes its own connections from a pool's "
                          "connection_class and connection_kwargs, and this pool has no "
                          f"redis-py connection class (connection_class={cls!r})")
    return Recipe(cls, dict(kwargs), _where(what, cls, kwargs))


def _where(what: str, cls: Type[AbstractConnection], kwargs: Dict[str, Any]) -> str:
    if issubclass(cls, SentinelManagedConnection):
        proxy = kwargs.get("connection_pool")
        if proxy is None:
            raise ConfigError(f"cannot follow {what}: its {cls.__name__} has no "
                              "SentinelConnectionPool to ask for the master")
        if not getattr(proxy, "is_master", True):
            raise ConfigError(f"cannot consume through {what} for replicas (Sentinel.slave_for): "
                              "reading a consumer group writes to the stream; use "
                              "Sentinel.master_for")
        return f"{proxy.service_name} (via Sentinel)"
    if issubclass(cls, UnixDomainSocketConnection):
        if not kwargs.get("path"):
            raise ConfigError(f"cannot follow {what}: its {cls.__name__} names no socket path")
        return str(kwargs["path"])
    if issubclass(cls, redis.Connection):
        if not kwargs.get("host"):
            raise ConfigError(f"cannot follow {what}: it names no host, and rstream does not "
                              "fall back to localhost:6379; give one (e.g. redis://localhost:6379/0)")
        return f"{kwargs['host']}:{kwargs.get('port', 6379)}"
    raise ConfigError(f"cannot follow {what}: rstream can address Connection, SSLConnection, "
                      "UnixDomainSocketConnection and Sentinel-managed connections (or "
                      f"subclasses), not {cls.__name__}")


def check_same_slot(client: Any, stream: str, dead_letter_stream: Optional[str]) -> None:
    """In Redis Cluster the dead letter is written and the entry acked in one script, which
    needs both keys in one hash slot: say so when the Consumer is built, not on the first
    poison message."""
    if dead_letter_stream is None or not hasattr(client, "keyslot"):
        return
    if client.keyslot(stream) != client.keyslot(dead_letter_stream):
        raise ConfigError(
            f"dead_letter_stream {dead_letter_stream!r} must hash to the same Redis Cluster slot as "
            f"stream {stream!r}: give both the same hash tag, e.g. '{{orders}}' and '{{orders}}:dlq'")


def _is_cluster(client: Any) -> bool:
    return hasattr(client, "get_node_from_key") and hasattr(client, "nodes_manager")


def _pool_for(client: Any, stream: str) -> Any:
    if hasattr(client, "get_node_from_key"):  # RedisCluster: the node that owns the stream's slot
        node = client.get_node_from_key(stream)
        if node.redis_connection is None:
            client.get_redis_connection(node)
        return node.redis_connection.connection_pool
    return client.connection_pool
