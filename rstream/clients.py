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
import urllib.parse
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import redis
import redis.exceptions as rex
from redis.connection import AbstractConnection, UnixDomainSocketConnection
from redis.sentinel import SentinelManagedConnection

from .errors import ConfigError

_URL_SCHEMES = ("redis://", "rediss://", "unix://")
# URLs naming several servers: a Redis Cluster's seed nodes, or the Sentinels of a service.
_CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
_SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
_SENTINEL_QUERY = ("sentinel_username", "sentinel_password")
URL_CONNECT_TIMEOUT_S = 5.0
URL_SOCKET_TIMEOUT_S = 30.0


def client_from_option(value: Any) -> Any:
    """Turn the `redis` option (URL, kwargs dict, or client) into a redis-py client."""
    if isinstance(value, str):
        if value.startswith(_CLUSTER_SCHEMES):
            return _cluster_from_url(value)
        if value.startswith(_SENTINEL_SCHEMES):
            return _sentinel_from_url(value)
        if not value.startswith(_URL_SCHEMES):
            raise ConfigError("redis must be a URL starting with redis://, rediss://, unix://, "
                              f"redis+cluster:// or redis+sentinel://, got {redact(value)!r}")
        try:
            # Options in the URL win: these only keep a black-holed host from hanging a
            # Producer or a CLI command for the OS's own connect timeout (the Consumer's
            # connections set their own).
            return redis.Redis.from_url(value, socket_connect_timeout=URL_CONNECT_TIMEOUT_S,
                                        socket_timeout=URL_SOCKET_TIMEOUT_S)
        except ValueError as exc:  # redis-py's own checks: a port that is not a number...
            raise ConfigError(f"bad redis URL {redact(value)!r}: {exc}") from None
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


def _several_hosts(url: str) -> Tuple[str, List[Tuple[str, int]], str]:
    """Split ``scheme+kind://[user:password@]host:port[,host:port...][/rest]`` into a plain
    ``scheme://[user:password@]host:port/rest`` URL for redis-py to parse (options, TLS,
    credentials), the addresses, and the path after them."""
    scheme, _, rest = url.partition("://")
    creds, at, hosts_and_path = rest.rpartition("@")
    hosts, slash, path = hosts_and_path.partition("/")
    addresses: List[Tuple[str, int]] = []
    for item in filter(None, hosts.split(",")):
        host, colon, port = item.rpartition(":")
        if not colon or not port.isdigit() or not host:
            raise ConfigError(f"redis URL {redact(url)!r}: {item!r} is not host:port")
        addresses.append((host.strip("[]"), int(port)))
    if not addresses:
        raise ConfigError(f"redis URL {redact(url)!r} names no host:port")
    first = f"{addresses[0][0]}:{addresses[0][1]}"
    plain = f"{scheme.partition('+')[0]}://{creds}{at}{first}{slash}{path}"
    return plain, addresses, path


def _cluster_from_url(url: str) -> Any:
    """``redis+cluster://[user:password@]host:port[,host:port...][?options]``: a RedisCluster
    that starts from these nodes (any reachable one gives it the slot map)."""
    from redis.cluster import ClusterNode, RedisCluster
    plain, addresses, path = _several_hosts(url)
    kwargs = _url_options(plain)
    if path.partition("?")[0] not in ("", "0"):
        raise ConfigError(f"redis URL {redact(url)!r}: a Redis Cluster has database 0 only")
    try:
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in addresses],  # type: ignore[no-untyped-call]
                            **kwargs)
    except rex.RedisClusterException as exc:
        raise ConfigError(f"redis URL {redact(url)!r}: no Redis Cluster node answered with the "
                          f"slot map: {exc}") from None


def _sentinel_from_url(url: str) -> Any:
    """``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db][?options]``: the
    master of `service` as the Sentinels at these addresses name it (``Sentinel.master_for``).
    The credentials and options are the master's; ``sentinel_username`` and
    ``sentinel_password`` in the query authenticate to the Sentinels themselves."""
    from redis.sentinel import Sentinel
    plain, addresses, path = _several_hosts(url)
    service, _, db = path.partition("?")[0].partition("/")
    if not service:
        raise ConfigError(f"redis URL {redact(url)!r} names no Sentinel service: "
                          "redis+sentinel://host:port[,host:port...]/service[/db]")
    if db and not db.isdigit():
        raise ConfigError(f"redis URL {redact(url)!r}: database {db!r} is not a number")
    query = urllib.parse.parse_qs(plain.partition("?")[2])
    sentinel_kwargs = {k[len("sentinel_"):]: query[k][0] for k in _SENTINEL_QUERY if k in query}
    kept = "&".join(f"{k}={v}" for k, vs in query.items() if k not in _SENTINEL_QUERY for v in vs)
    kwargs = _url_options(_without_path(plain, kept))
    manager = Sentinel(addresses, sentinel_kwargs=sentinel_kwargs or None)  # type: ignore[no-untyped-call]
    return manager.master_for(service, db=int(db or 0), **kwargs)  # type: ignore[no-untyped-call]


def _url_options(plain: str) -> Dict[str, Any]:
    """The connection options of a plain URL, less its address (given apart) and with TLS as
    ``ssl=True``: RedisCluster and Sentinel pick their own connection classes."""
    kwargs: Dict[str, Any] = redis.connection.parse_url(plain)  # type: ignore[no-untyped-call]
    for key in ("host", "port", "db"):
        kwargs.pop(key, None)
    if kwargs.pop("connection_class", None) is redis.SSLConnection:
        kwargs["ssl"] = True
    return kwargs


def _without_path(plain: str, query: str) -> str:
    """`plain` with its path (the Sentinel service) left out and only `query` kept."""
    scheme, _, rest = plain.partition("://")
    authority = rest.partition("/")[0].partition("?")[0]
    return f"{scheme}://{authority}" + (f"?{query}" if query else "")


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
