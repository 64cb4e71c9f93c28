"""Every kind of `redis` option rstream accepts leads its connections to the server the user
named, and nowhere else: URLs (redis://, rediss://, unix://), kwargs dicts, `redis.Redis`
instances (TCP, unix socket, TLS), `RedisCluster` and Sentinel-managed `master_for` clients.

Each consuming test runs its server on a free port while something listens on redis-py's
default address, 127.0.0.1:6379, and checks that address received no connection: rstream once
sent a Sentinel client's traffic there. Kinds rstream cannot follow are refused when the Consumer
is built.
"""
from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, NamedTuple, Optional

import pytest
import redis
import redis.sentinel
from redis.cluster import RedisCluster

import rstream
from clusterkit import local_cluster
from helpers import add_entries, unique_name, wait_until
from rstream.embedded import EmbeddedServer
from sentinelkit import MASTER_NAME, SentinelProcess
from tlskit import Certs, TlsServer

DEFAULT_ADDRESS = ("127.0.0.1", 6379)
FAST: Dict[str, Any] = dict(receive_interval=100, heartbeat_interval=100, make_stream=True,
                            group_start_id="0")
ENTRIES = 20


class DefaultAddressWatch:
    """Counts connections to 127.0.0.1:6379 from now on: a listener of our own when the port is
    free, else the INFO stats of the Redis already there (this machine's system Redis), read
    over one connection opened before counting starts."""

    def __init__(self) -> None:
        self._accepted = 0
        self._stop = threading.Event()
        self._listener: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._redis: Optional[redis.Redis] = None
        self._before = 0
        try:
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(DEFAULT_ADDRESS)
        except OSError:
            listener.close()
            self._watch_existing_redis()
        else:
            listener.listen(16)
            listener.settimeout(0.05)  # so the accept loop sees the stop event
            self._listener = listener
            self._thread = threading.Thread(target=self._accept, name="test-default-address")
            self._thread.start()

    def _watch_existing_redis(self) -> None:
        client = redis.Redis(*DEFAULT_ADDRESS, socket_timeout=2, single_connection_client=True)
        try:
            self._before = int(client.info("stats")["total_connections_received"])
        except redis.RedisError as exc:
            client.close()
            pytest.skip(f"127.0.0.1:6379 is taken by something that is neither free to bind nor a "
                        f"Redis whose INFO can be read ({exc})")
        self._redis = client

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._accepted += 1
            conn.close()

    def received(self) -> int:
        """Connections the default address received since the watch began."""
        if self._redis is not None:
            return int(self._redis.info("stats")["total_connections_received"]) - self._before
        return self._accepted

    def forget(self, key: str) -> None:
        """Delete `key` from a Redis at the default address if a test's consumer wrongly made
        it there (unique names: nothing of the machine's own is touched)."""
        if self._redis is not None and self.received():
            self._redis.delete(key)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
        if self._redis is not None:
            self._redis.close()


@pytest.fixture
def default_address() -> Iterator[DefaultAddressWatch]:
    watch = DefaultAddressWatch()
    try:
        yield watch
    finally:
        watch.close()


def consume_through(option: Any, writer: Any, watch: DefaultAddressWatch) -> rstream.Consumer:
    """Start a consumer on `option`, add entries with `writer` (a client of the server meant),
    wait until each is handled, stop; and check the default address saw nothing."""
    stream, handled = unique_name("kinds"), []
    consumer = rstream.Consumer(option, stream, "g", "c1", **FAST)
    try:
        consumer.start(lambda message: handled.append(message.id))
        ids = add_entries(writer, stream, ENTRIES)
        wait_until(lambda: set(handled) >= set(ids), 20,
                   message=f"entries added to the server meant were not handled ({consumer!r})")
    finally:
        consumer.stop(5)
        received = watch.received()
        watch.forget(stream)
    assert consumer.error is None, consumer.error
    assert received == 0, f"127.0.0.1:6379 received {received} connections"
    return consumer


# -- TCP ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["url", "kwargs", "client"])
def test_tcp_kinds_consume_from_the_named_port(
        redis_server: EmbeddedServer, r: redis.Redis, default_address: DefaultAddressWatch,
        kind: str) -> None:
    """A redis:// URL, a kwargs dict and a redis.Redis on a non-default port consume there."""
    option: Any = {
        "url": redis_server.url,
        "kwargs": {"host": redis_server.host, "port": redis_server.port},
        "client": redis.Redis(host=redis_server.host, port=redis_server.port),
    }[kind]
    consume_through(option, r, default_address)


# -- unix socket ----------------------------------------------------------------------------------
class UnixServer(NamedTuple):
    server: EmbeddedServer
    path: str


@pytest.fixture
def unix_server() -> Iterator[UnixServer]:
    """A server listening on a unix socket (in a short /tmp path: sun_path holds 107 bytes)."""
    directory = tempfile.mkdtemp(prefix="rs-sock-")
    path = str(Path(directory) / "redis.sock")
    server = EmbeddedServer(args=["--unixsocket", path, "--unixsocketperm", "700"])
    try:
        server.start()
        yield UnixServer(server, path)
    finally:
        server.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("kind", ["url", "kwargs", "client"])
def test_unix_socket_kinds_consume(unix_server: UnixServer,
                                   default_address: DefaultAddressWatch, kind: str) -> None:
    """A unix:// URL, a kwargs dict with unix_socket_path and a redis.Redis on a unix socket
    consume through that socket."""
    path = unix_server.path
    option: Any = {
        "url": f"unix://{path}?db=0",
        "kwargs": {"unix_socket_path": path},
        "client": redis.Redis(unix_socket_path=path),
    }[kind]
    writer = redis.Redis(unix_socket_path=path)
    consume_through(option, writer, default_address)
    writer.close()


# -- TLS ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["url", "kwargs", "client"])
def test_tls_kinds_consume(tls_server: TlsServer, certs: Certs,
                           default_address: DefaultAddressWatch, kind: str) -> None:
    """A rediss:// URL, a kwargs dict with ssl=True and a TLS redis.Redis consume over TLS."""
    tls_kwargs = dict(host="127.0.0.1", port=tls_server.tls_port, ssl=True, ssl_ca_certs=str(certs.ca))
    option: Any = {
        "url": tls_server.url(certs.ca),
        "kwargs": tls_kwargs,
        "client": redis.Redis(**tls_kwargs),
    }[kind]
    writer = tls_server.server.client()
    consume_through(option, writer, default_address)
    writer.close()


# -- Redis Cluster --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with local_cluster() as client:
        yield client


def test_cluster_client_consumes_from_the_node_of_the_slot(
        cluster: RedisCluster, default_address: DefaultAddressWatch) -> None:
    """A RedisCluster client: rstream's connections go to the node that owns the stream."""
    consumer = consume_through(cluster, cluster, default_address)
    assert "127.0.0.1:" in repr(consumer) and ":6379" not in repr(consumer)


def test_cluster_url_starts_from_any_seed_node_that_answers(
        cluster: RedisCluster, default_address: DefaultAddressWatch) -> None:
    """``redis+cluster://host:port[,host:port...]``: a RedisCluster from the first seed that
    answers (here the second: nothing listens on port 1); consumption as with the client."""
    node = cluster.get_nodes()[0]
    consumer = consume_through(f"redis+cluster://127.0.0.1:1,{node.host}:{node.port}", cluster,
                               default_address)
    assert ":6379" not in repr(consumer)


@pytest.mark.parametrize("url, problem", [
    ("redis+cluster://127.0.0.1:1", "no Redis Cluster node answered"),
    ("redis+cluster://127.0.0.1:1/2", "database 0 only"),
    ("redis+cluster://127.0.0.1", "is not host:port"),
    ("redis+sentinel://127.0.0.1:26379", "names no Sentinel service"),
    ("redis+sentinel://:secret@127.0.0.1:26379/mymaster/x", "database 'x' is not a number"),
    ("redis+sentinel:///mymaster", "names no host:port"),
])
def test_bad_cluster_and_sentinel_urls_are_named(url: str, problem: str) -> None:
    with pytest.raises(rstream.ConfigError, match=problem) as info:
        rstream.Consumer(url, "s", "g", "c")
    assert "secret" not in str(info.value)


# -- Sentinel -------------------------------------------------------------------------------------
class CommandCount:
    """Commands a server processed since this was made, leaving out the INFO calls it makes
    itself (the sentinel keeps no per-command stats). One connection: no handshakes counted."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._reads = 0
        self._start = self._read()

    def _read(self) -> int:
        self._reads += 1
        return int(self._client.info("stats")["total_commands_processed"])

    def since(self) -> int:
        # Each INFO is counted by the next one: all but this read's own came before it.
        return self._read() - self._start - (self._reads - 1)


def test_sentinel_master_for_consumes_from_the_master_it_names(
        redis_server: EmbeddedServer, r: redis.Redis, sentinel: SentinelProcess,
        default_address: DefaultAddressWatch) -> None:
    """A Sentinel master_for client: rstream consumes from the master the sentinel names, and
    asks the sentinel again when its connections reconnect (so it follows a failover)."""
    client = sentinel.manager().master_for(MASTER_NAME)
    consumer = consume_through(client, r, default_address)
    assert "via Sentinel" in repr(consumer)
    # Again, with every connection of the consumer killed once it runs: each reconnect must
    # find the master through the sentinel, not reuse an address (nor fall back to 6379).
    stream, handled = unique_name("kinds"), []
    consumer = rstream.Consumer(client, stream, "g", "c1", **FAST)
    watcher = sentinel.client(single_connection_client=True)
    try:
        consumer.start(lambda message: handled.append(message.id))
        wait_until(lambda: r.exists(stream), 10, message="the group was not created")
        asked = CommandCount(watcher)
        r.client_kill_filter(_type="normal", skipme=True)
        ids = add_entries(r, stream, ENTRIES)
        wait_until(lambda: set(handled) >= set(ids), 20, message="not handled after reconnecting")
        # The reader and the heartbeat at least reconnect at once; each asks the sentinel.
        wait_until(lambda: asked.since() >= 2, 10, message="the reconnects did not ask the sentinel")
    finally:
        consumer.stop(5)
        watcher.close()
        default_address.forget(stream)
    assert consumer.error is None and default_address.received() == 0


def test_sentinel_url_consumes_from_the_master_the_sentinels_name(
        r: redis.Redis, sentinel: SentinelProcess, default_address: DefaultAddressWatch) -> None:
    """``redis+sentinel://host:port[,host:port...]/service``: the master of `service` as the
    Sentinels name it (the first address has no sentinel: the next one answers)."""
    host, port = sentinel.address
    consumer = consume_through(f"redis+sentinel://127.0.0.1:1,{host}:{port}/{MASTER_NAME}", r,
                               default_address)
    assert f"{MASTER_NAME} (via Sentinel)" in repr(consumer)


# -- refused kinds --------------------------------------------------------------------------------
class NotARedisConnection:
    """A connection class rstream cannot address."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


REFUSED: Dict[str, Callable[[], Any]] = {
    "sentinel-replica": lambda: redis.sentinel.Sentinel([("127.0.0.1", 1)]).slave_for(MASTER_NAME),
    "url-without-host": lambda: "redis:///0",
    "client-without-host": lambda: redis.Redis.from_url("redis:///0"),
    "foreign-connection-class": lambda: redis.Redis(
        connection_pool=redis.ConnectionPool(connection_class=NotARedisConnection)),
}
REFUSED_MATCH = {
    "sentinel-replica": "slave_for",
    "url-without-host": "names no host",
    "client-without-host": "names no host",
    "foreign-connection-class": "NotARedisConnection",
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_clients_rstream_cannot_follow_are_refused(
        default_address: DefaultAddressWatch, kind: str) -> None:
    """A client whose server rstream cannot find the way the client does is a ConfigError when
    the Consumer is built, naming the client and why; nothing is tried at the default address."""
    with pytest.raises(rstream.ConfigError, match=REFUSED_MATCH[kind]):
        rstream.Consumer(REFUSED[kind](), unique_name("kinds"), "g", "c1", **FAST)
    assert default_address.received() == 0

