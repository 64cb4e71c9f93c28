"""`rstream.Producer` against real servers: ids, order, chunked pipelines, trimming, errors named."""
from __future__ import annotations

import socket
from typing import Any, Dict, Iterator, List

import pytest
import redis
from redis.cluster import RedisCluster

from clusterkit import local_cluster
from helpers import wait_until
from rstream import ConfigError, RedisUnavailable, RStreamError, WrongType
from rstream.embedded import EmbeddedServer
from rstream.producer import CHUNK, Producer

NODE_ENTRIES = 100  # stream-node-max-entries, set on the server where trimming is measured


class CountingRedis(redis.Redis):
    """A real client that counts the pipelines it executes: the round trips of send_many."""

    round_trips = 0

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = super().pipeline(*args, **kwargs)
        execute = pipe.execute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.round_trips += 1
            return execute(*args, **kwargs)

        pipe.execute = counted
        return pipe


def entries_of(r: redis.Redis, stream: str) -> List[Any]:
    return [(i.decode(), fields) for i, fields in r.xrange(stream)]


def slowlog_commands(r: redis.Redis) -> List[bytes]:
    return [entry["command"] for entry in r.slowlog_get(10_000)]


def free_port() -> int:
    with socket.socket() as s:  # free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_send_returns_the_new_id_and_stores_the_fields(redis_url: str, r: redis.Redis) -> None:
    """send() adds one entry and returns its id as str; bytes, str, int and float are stored."""
    with Producer(redis_url, "s") as producer:
        entry_id = producer.send({"a": "x", b"b": b"y", "n": 3, "f": 1.5})
    assert isinstance(entry_id, str)
    assert entries_of(r, "s") == [(entry_id, {b"a": b"x", b"b": b"y", b"n": b"3", b"f": b"1.5"})]


def test_send_many_10000_in_order_in_chunks(redis_server: EmbeddedServer, r: redis.Redis) -> None:
    """10,000 entries: 10,000 ids in input order, each stored once, in 10 round trips of 1,000."""
    client = CountingRedis(host="127.0.0.1", port=redis_server.port)
    ids = Producer(client, "s").send_many([{"n": n} for n in range(10_000)])
    assert len(ids) == len(set(ids)) == 10_000
    stored = entries_of(r, "s")
    assert [i for i, _ in stored] == ids
    assert [int(fields[b"n"]) for _, fields in stored] == list(range(10_000))
    assert client.round_trips == 10_000 // CHUNK
    client.close()


def test_send_many_takes_a_generator_and_sends_as_it_goes(r: redis.Redis, redis_url: str) -> None:
    """A generator is consumed chunk by chunk: the first 1,000 are in the stream before entry
    1,500 is even made, and all 2,500 come back in order."""
    seen_length: Dict[int, int] = {}

    def entries() -> Iterator[Dict[str, int]]:
        for n in range(2_500):
            if n == 1_500:
                seen_length[n] = r.xlen("s")
            yield {"n": n}

    ids = Producer(redis_url, "s").send_many(entries())
    assert seen_length == {1_500: CHUNK}
    assert [i for i, _ in entries_of(r, "s")] == ids and len(ids) == 2_500


def test_send_many_of_nothing_sends_nothing(redis_url: str, r: redis.Redis) -> None:
    """An empty list or an exhausted generator: no ids, and no stream is created."""
    producer = Producer(redis_url, "s")
    assert producer.send_many([]) == []
    assert producer.send_many(iter(())) == []
    assert r.exists("s") == 0


def test_maxlen_exact_keeps_exactly_the_newest(redis_url: str, r: redis.Redis) -> None:
    """maxlen=150, approximate=False: after 1,000 entries (and one more send) exactly the newest
    150 remain, and every XADD carried MAXLEN 150."""
    r.config_set("slowlog-log-slower-than", 0)
    r.config_set("slowlog-max-len", 10_000)
    producer = Producer(redis_url, "s", maxlen=150, approximate=False)
    ids = producer.send_many([{"n": n} for n in range(1_000)])
    ids.append(producer.send({"n": 1_000}))
    assert [i for i, _ in entries_of(r, "s")] == ids[-150:]
    xadds = [c for c in slowlog_commands(r) if c.startswith(b"XADD")]
    assert len(xadds) == 1_001 and all(c.startswith(b"XADD s MAXLEN 150 * ") for c in xadds)


def test_maxlen_approximate_trims_whole_nodes(redis_url: str, r: redis.Redis) -> None:
    """maxlen=150 (approximate): the stream is trimmed, but only by whole nodes of 100 entries, so
    more than 150 and fewer than 250 of the newest remain; every XADD carried MAXLEN ~ 150."""
    r.config_set("stream-node-max-entries", NODE_ENTRIES)
    r.config_set("slowlog-log-slower-than", 0)
    r.config_set("slowlog-max-len", 10_000)
    producer = Producer(redis_url, "s", maxlen=150)
    ids = producer.send_many([{"n": n} for n in range(999)])
    ids.append(producer.send({"n": 999}))
    kept = [i for i, _ in entries_of(r, "s")]
    assert 150 < len(kept) < 150 + NODE_ENTRIES and kept == ids[-len(kept):]
    xadds = [c for c in slowlog_commands(r) if c.startswith(b"XADD")]
    assert len(xadds) == 1_000 and all(c.startswith(b"XADD s MAXLEN ~ 150 * ") for c in xadds)


@pytest.mark.parametrize("kwargs, named", [
    (dict(stream=""), "stream must be a non-empty str"),
    (dict(stream=b"s"), "stream must be a non-empty str"),
    (dict(maxlen=0), "maxlen must be a positive int"),
    (dict(maxlen=-5), "maxlen must be a positive int"),
    (dict(maxlen=True), "maxlen must be a positive int"),
    (dict(maxlen=10.0), "maxlen must be a positive int"),
    (dict(approximate="yes"), "approximate must be a bool"),
    (dict(redis="localhost:6379"), "redis must be a URL"),
])
def test_bad_arguments_are_config_errors_naming_them(redis_url: str, kwargs: Dict[str, Any],
                                                     named: str) -> None:
    """Each bad constructor argument is a ConfigError whose message names it."""
    arguments: Dict[str, Any] = {"redis": redis_url, "stream": "s", **kwargs}
    with pytest.raises(ConfigError, match=named):
        Producer(**arguments)


@pytest.mark.parametrize("fields, named", [
    ({}, "non-empty mapping"),
    ([("a", "b")], "non-empty mapping"),
    (None, "non-empty mapping"),
    ({"a": None}, "value None of field 'a' must be bytes, str, int or float, not NoneType"),
    ({"a": True}, "value True of field 'a' must be bytes, str, int or float, not bool"),
    ({"a": [1]}, r"value \[1\] of field 'a' must be"),
    ({("t",): "x"}, r"field name \('t',\) of field"),
])
def test_bad_fields_are_config_errors_and_nothing_is_sent(redis_url: str, r: redis.Redis,
                                                          fields: Any, named: str) -> None:
    """send() and send_many() refuse fields that are not a non-empty mapping of encodable
    values, naming the problem, before anything reaches the server."""
    producer = Producer(redis_url, "s")
    with pytest.raises(ConfigError, match=named):
        producer.send(fields)
    with pytest.raises(ConfigError, match="entry at index 1.*" + named):
        producer.send_many([{"ok": 1}, fields])
    assert r.exists("s") == 0


def test_a_bad_entry_stops_send_many_before_its_chunk(redis_url: str, r: redis.Redis) -> None:
    """A bad entry at index 1,500: the first chunk of 1,000 is in the stream, nothing after."""
    entries: List[Any] = [{"n": n} for n in range(3_000)]
    entries[1_500] = {"n": None}
    with pytest.raises(ConfigError, match="entry at index 1500"):
        Producer(redis_url, "s").send_many(entries)
    assert [int(f[b"n"]) for _, f in r.xrange("s")] == list(range(CHUNK))


def test_a_key_of_another_type_is_wrong_type_naming_it(redis_url: str, r: redis.Redis) -> None:
    """XADD to a string key: WrongType (a FatalRedisError) naming the key, from both calls."""
    r.set("s", "not a stream")
    producer = Producer(redis_url, "s")
    for call in (lambda: producer.send({"a": 1}), lambda: producer.send_many([{"a": 1}] * 3)):
        with pytest.raises(WrongType, match="'s' is no stream") as caught:
            call()
        assert caught.value.key == "s"


def test_an_unreachable_server_is_redis_unavailable() -> None:
    """Nobody listens: RedisUnavailable from send and from send_many, not a redis-py error."""
    producer = Producer(f"redis://127.0.0.1:{free_port()}/0", "s")
    with pytest.raises(RedisUnavailable):
        producer.send({"a": 1})
    with pytest.raises(RedisUnavailable):
        producer.send_many([{"a": 1}])


def test_a_decode_responses_client_gives_the_same_ids(redis_server: EmbeddedServer,
                                                      r: redis.Redis) -> None:
    """A client with decode_responses=True works as well: ids are str, the entries stored."""
    client = redis_server.client(decode_responses=True)
    producer = Producer(client, "s")
    ids = [producer.send({"a": "x"}), *producer.send_many([{"n": n} for n in range(5)])]
    assert all(isinstance(i, str) for i in ids)
    assert [i for i, _ in entries_of(r, "s")] == ids
    client.close()


def test_close_closes_only_a_client_it_made(redis_url: str, r: redis.Redis) -> None:
    """After close() sends are refused; a client passed in is left open for its owner."""
    producer = Producer(r, "s")
    producer.close()
    with pytest.raises(RStreamError, match="closed"):
        producer.send({"a": 1})
    with pytest.raises(RStreamError, match="closed"):
        producer.send_many([{"a": 1}])
    assert r.ping()
    with Producer(redis_url, "s") as owned:
        owned.send({"a": 1})
        assert len(r.client_list()) == 2
    wait_until(lambda: len(r.client_list()) == 1, message="the Producer's connection stayed open")


def test_repr_names_the_stream_but_not_the_password() -> None:
    """The repr shows the redacted URL and the options, never the password."""
    producer = Producer("redis://app:s3cret@127.0.0.1:1/0", "orders", maxlen=10)
    text = repr(producer)
    assert "s3cret" not in text
    assert text == ("Producer(redis='redis://app:***@127.0.0.1:1/0', stream='orders', maxlen=10, "
                    "approximate=True)")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with local_cluster(3) as client:
        yield client


def test_on_a_cluster_each_stream_goes_to_its_node(cluster: RedisCluster) -> None:
    """Through a RedisCluster, streams on different nodes each get all their entries, in order,
    on the node that owns their slot."""
    streams = ["{a}s", "{b}s", "{c}s"]
    assert len({cluster.get_node_from_key(s).name for s in streams}) == 3
    for stream in streams:
        producer = Producer(cluster, stream, maxlen=5_000)
        ids = producer.send_many([{"n": n} for n in range(2_500)]) + [producer.send({"n": 2_500})]
        node = cluster.get_node_from_key(stream)
        with redis.Redis(host=node.host, port=node.port) as direct:
            assert [i.decode() for i, _ in direct.xrange(stream)] == ids
