"""`rstream.inspection`: the report of streams, groups and consumers behind `rstream info`.

First the pure `build_report` on replies captured from real servers (Redis 6.2, which has no
lag, Redis 7.0 and Valkey 8.1, whose XINFO CONSUMERS adds `inactive`); then `describe_stream`
against every server version this machine has, with a group holding two consumers: one alive
(a real `rstream.Consumer` beating every 100 ms) and one dead (a name that read once through a
plain XREADGROUP and has been idle past the threshold since).
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any, Dict, Iterator

import pytest
import redis

import rstream
from clusterkit import local_cluster
from helpers import add_entries, unique_name, wait_until
from rstream.embedded import EmbeddedServer, known_server_binaries
from rstream.failover import ConsumerInfo, dead_consumers
from rstream.inspection import (Liveness, StreamReplies, build_report, describe_stream,
                                describe_streams)

KNOWN_SERVERS = known_server_binaries()
HEARTBEAT_MS = 100
MISSED = 5
DEAD_AFTER_MS = HEARTBEAT_MS * MISSED
OLD_MS = 60_000  # the oldest entry is added with an id this far in the server's past
DEADLINE_S = 20.0  # generous: the machine's 2 cores are shared by several test runs

# -- replies captured from real servers (RESP2, bytes), see the module docstring -----------------
R62 = dict(
    type=b"stream",
    stream_info=[b"length", 3, b"radix-tree-keys", 1, b"radix-tree-nodes", 2, b"last-generated-id",
                 b"1796128122082-1", b"groups", 2, b"first-entry", [b"1796128062000-0", [b"a", b"1"]],
                 b"last-entry", [b"1796128122082-1", [b"a", b"3"]]],
    groups=[[b"name", b"g", b"consumers", 1, b"pending", 1, b"last-delivered-id", b"1796128062000-0"],
            [b"name", b"h", b"consumers", 0, b"pending", 0, b"last-delivered-id", b"1796128122082-1"]],
    consumers={"g": [[b"name", b"c1", b"pending", 1, b"idle", 1]], "h": []},
    pending={"g": [1, b"1796128062000-0", b"1796128062000-0", [[b"c1", b"1"]]], "h": [0, None, None, None]},
    time=[b"1796128122", b"84078"],
)
R70 = dict(
    type=b"stream",
    stream_info=[b"length", 3, b"radix-tree-keys", 1, b"radix-tree-nodes", 2, b"last-generated-id",
                 b"1796128122113-1", b"max-deleted-entry-id", b"0-0", b"entries-added", 3,
                 b"recorded-first-entry-id", b"1796128062000-0", b"groups", 2, b"first-entry",
                 [b"1796128062000-0", [b"a", b"1"]], b"last-entry", [b"1796128122113-1", [b"a", b"3"]]],
    groups=[[b"name", b"g", b"consumers", 1, b"pending", 1, b"last-delivered-id", b"1796128062000-0",
             b"entries-read", 1, b"lag", 2],
            [b"name", b"h", b"consumers", 0, b"pending", 0, b"last-delivered-id", b"1796128122113-1",
             b"entries-read", None, b"lag", 0]],
    consumers={"g": [[b"name", b"c1", b"pending", 1, b"idle", 1]], "h": []},
    pending={"g": [1, b"1796128062000-0", b"1796128062000-0", [[b"c1", b"1"]]], "h": [0, None, None, None]},
    time=[b"1796128122", b"115127"],
)
VALKEY_81_CONSUMERS = [[b"name", b"c1", b"pending", 1, b"idle", 11, b"inactive", 11]]
# Lag the server cannot give: a0 is before the first entry, mid is mid-stream (one entry was
# deleted after it, so Redis 7 says null too); "e" is empty after its only entry was deleted.
LAG_62_STREAM = [b"length", 3, b"last-generated-id", b"1700000000003-0", b"groups", 2,
                 b"first-entry", [b"1700000000000-0", [b"a", b"1"]],
                 b"last-entry", [b"1700000000003-0", [b"a", b"4"]]]
LAG_70_GROUPS = [[b"name", b"a0", b"consumers", 0, b"pending", 0, b"last-delivered-id", b"0-0",
                  b"entries-read", None, b"lag", None],
                 [b"name", b"mid", b"consumers", 1, b"pending", 1, b"last-delivered-id",
                  b"1700000000000-0", b"entries-read", 1, b"lag", None]]
EMPTY_62_STREAM = [b"length", 0, b"last-generated-id", b"5-0", b"groups", 1, b"first-entry", None,
                   b"last-entry", None]
EMPTY_62_GROUPS = [[b"name", b"g", b"consumers", 0, b"pending", 0, b"last-delivered-id", b"0-0"]]
NO_PENDING = [0, None, None, None]
RULE = Liveness(heartbeat_interval=HEARTBEAT_MS, allowed_missed_heartbeats=MISSED)


def replies(captured: Dict[str, Any], **changes: Any) -> StreamReplies:
    return StreamReplies(stream="s", **{**captured, **changes})


def expected_report(h_last_delivered: str, g_lag: Any, g_age_ms: int) -> Dict[str, Any]:
    """The report of R62 or R70 (they differ in h's position, g's lag and the TIME)."""
    return {"stream": "s", "length": 3, "groups": [
        {"name": "g", "pending": 1, "lag": g_lag, "last_delivered_id": "1796128062000-0",
         "oldest_pending_age_ms": g_age_ms,
         "consumers": [{"name": "c1", "pending": 1, "idle_ms": 1, "alive": True}]},
        {"name": "h", "pending": 0, "lag": 0, "last_delivered_id": h_last_delivered,
         "oldest_pending_age_ms": None, "consumers": []}]}


# -- the pure report ------------------------------------------------------------------------------
def test_report_from_redis_62_replies() -> None:
    """Redis 6.2: every SPEC key; no server lag, so a mid-stream group's is null and a caught-up
    group's 0; the age is TIME (ms) minus the oldest pending id's ms part."""
    assert build_report(replies(R62), RULE) == expected_report("1796128122082-1", None,
                                                              1796128122084 - 1796128062000)


def test_report_from_redis_70_replies() -> None:
    """Redis 7.0: the lag is the server's."""
    assert build_report(replies(R70), RULE) == expected_report("1796128122113-1", 2,
                                                              1796128122115 - 1796128062000)


def test_report_from_valkey_consumers_with_inactive_field() -> None:
    """Valkey 8.1 adds `inactive` to XINFO CONSUMERS: the report still reads `idle`."""
    report = build_report(replies(R70, consumers={"g": VALKEY_81_CONSUMERS, "h": []}), RULE)
    assert report["groups"][0]["consumers"] == [{"name": "c1", "pending": 1, "idle_ms": 11, "alive": True}]


def test_report_from_str_replies_equals_bytes_replies() -> None:
    """A decode_responses client's replies (str) give the same report as bytes ones."""
    def text(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, list):
            return [text(v) for v in value]
        if isinstance(value, dict):
            return {k: text(v) for k, v in value.items()}
        return value
    assert build_report(replies({k: text(v) for k, v in R70.items()}), RULE) == build_report(replies(R70), RULE)


@pytest.mark.parametrize("stream_info, groups, name, lag", [
    (LAG_62_STREAM, [g[:8] for g in LAG_70_GROUPS], "a0", 3),   # Redis 6.2, before the first entry
    (LAG_62_STREAM, [g[:8] for g in LAG_70_GROUPS], "mid", None),  # Redis 6.2, mid-stream
    (LAG_62_STREAM, LAG_70_GROUPS, "a0", 3),                    # Redis 7 says null: still exact
    (LAG_62_STREAM, LAG_70_GROUPS, "mid", None),                # Redis 7 says null, and so do we
    (EMPTY_62_STREAM, EMPTY_62_GROUPS, "g", 0),                 # an empty stream: nothing to deliver
])
def test_lag_derived_only_where_exact(stream_info: Any, groups: Any, name: str, lag: Any) -> None:
    """Without a server lag, 0 (delivered the last id, or empty) and the length (before the
    first entry) are derived; anything in between is null, never a guess."""
    report = build_report(StreamReplies(
        stream="s", type=b"stream", stream_info=stream_info, groups=groups, time=[b"1700000001", b"0"],
        consumers={name: []}, pending={name: NO_PENDING}, group=name), RULE)
    assert [g["lag"] for g in report["groups"]] == [lag]


def test_oldest_age_clamped_for_an_id_in_the_future() -> None:
    """An id a producer set ahead of the server clock gives age 0, not a negative age."""
    future = [1, b"1796128999999-0", b"1796128999999-0", [[b"c1", b"1"]]]
    report = build_report(replies(R70, pending={**R70["pending"], "g": future}), RULE)
    assert report["groups"][0]["oldest_pending_age_ms"] == 0


def test_group_filter_keeps_only_that_group() -> None:
    """group= reports that group alone, and needs replies for it alone."""
    report = build_report(replies(R70, group="h", consumers={"h": []}, pending={"h": NO_PENDING}), RULE)
    assert [g["name"] for g in report["groups"]] == ["h"]


def test_missing_group_stream_and_wrong_type_are_named() -> None:
    """A group the stream lacks, a missing stream and a key of another type each raise the
    RStreamError that says so, naming it."""
    with pytest.raises(rstream.GroupMissing, match="stream 's' has no consumer group 'nope'"):
        build_report(replies(R70, group="nope"), RULE)
    with pytest.raises(rstream.StreamMissing, match="stream 's' does not exist"):
        build_report(replies(R70, type=b"none"), RULE)
    with pytest.raises(rstream.WrongType, match="key 's' holds a hash"):
        build_report(replies(R70, type=b"hash"), RULE)


def test_dead_letter_length_only_when_asked() -> None:
    """`dead_letter_length` is in the report only when a dead-letter stream was named."""
    assert "dead_letter_length" not in build_report(replies(R70), RULE)
    assert build_report(replies(R70, dead_letter_length=4), RULE)["dead_letter_length"] == 4


@pytest.mark.parametrize("idle_ms", [0, DEAD_AFTER_MS - 1, DEAD_AFTER_MS, DEAD_AFTER_MS + 1, 10**9])
def test_alive_is_the_failover_rule(idle_ms: int) -> None:
    """`alive` is exactly what the reaper's dead_consumers does not convict, at the boundary."""
    convicted = dead_consumers([ConsumerInfo("c", 1, idle_ms)], me="other", dead_after_ms=DEAD_AFTER_MS)
    assert RULE.alive(idle_ms) is (not convicted)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "100"])
def test_liveness_rejects_bad_values(bad: Any) -> None:
    """A heartbeat interval or allowance that is not a positive int is a ConfigError naming it."""
    with pytest.raises(rstream.ConfigError, match="heartbeat_interval must be a positive int"):
        Liveness(heartbeat_interval=bad)
    with pytest.raises(rstream.ConfigError, match="allowed_missed_heartbeats must be a positive int"):
        Liveness(allowed_missed_heartbeats=bad)


def test_streams_given_as_one_string_is_a_config_error() -> None:
    """describe_streams("orders") would otherwise describe streams "o", "r", "d"...: refused."""
    with pytest.raises(rstream.ConfigError, match="streams must be a list of stream names"):
        describe_streams("redis://127.0.0.1:1/0", "orders")


# -- against real servers -------------------------------------------------------------------------
@pytest.fixture(params=sorted(KNOWN_SERVERS), ids=sorted(KNOWN_SERVERS))
def any_server(request: pytest.FixtureRequest) -> Iterator[EmbeddedServer]:
    """One server of each version this machine has."""
    with EmbeddedServer(binary=KNOWN_SERVERS[request.param]) as server:
        yield server


@dataclasses.dataclass(frozen=True)
class Scene:
    """A stream with one group: `dead` holds the 3 oldest entries (the first added
    OLD_MS in the server's past), `alive` (a running Consumer) holds the next 4, and 5 more
    were added after: the group's lag is 5."""

    url: str
    stream: str
    group: str
    alive: str
    dead: str
    old_ms: int


def server_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def consumer_state(r: redis.Redis, stream: str, group: str) -> Dict[str, Dict[str, Any]]:
    return {c["name"].decode(): c for c in r.xinfo_consumers(stream, group)}


@contextlib.contextmanager
def busy_group(url: str) -> Iterator[Scene]:
    """Build the Scene; the alive consumer's handler holds its entries until the block ends."""
    r = redis.Redis.from_url(url)
    scene = Scene(url, unique_name("stream"), unique_name("group"), unique_name("alive"),
                  unique_name("dead"), server_ms(r) - OLD_MS)
    r.xadd(scene.stream, {"n": "old"}, id=f"{scene.old_ms}-0")
    add_entries(r, scene.stream, 6)
    r.xgroup_create(scene.stream, scene.group, id="0")
    r.xreadgroup(scene.group, scene.dead, {scene.stream: ">"}, count=3)
    release = threading.Event()
    # It beats every 100 ms but would call a consumer dead only after a minute: it never
    # claims from `dead` while the test looks.
    consumer = rstream.Consumer(redis=url, stream=scene.stream, group=scene.group,
                                consumer_name=scene.alive, heartbeat_interval=HEARTBEAT_MS,
                                allowed_missed_heartbeats=600, receive_interval=100,
                                batch_size=4, max_in_flight=4)
    consumer.start(lambda message: release.wait(DEADLINE_S * 3))
    try:
        wait_until(lambda: consumer_state(r, scene.stream, scene.group).get(scene.alive, {}).get("pending") == 4,
                   DEADLINE_S, message="the live consumer holds 4 entries")
        add_entries(r, scene.stream, 5)
        wait_until(lambda: consumer_state(r, scene.stream, scene.group)[scene.dead]["idle"] > DEAD_AFTER_MS,
                   DEADLINE_S, message="the dead consumer idles past the threshold")
        yield scene
    finally:
        release.set()
        consumer.stop(5)
        r.close()


def test_describe_stream_alive_and_dead_consumers(any_server: EmbeddedServer) -> None:
    """Against every server version: the live Consumer is alive and the idle name dead; the
    pending counts are XPENDING's, the lag is XINFO GROUPS' on 7+ (derived on 6.2: mid-stream,
    so null), and the oldest pending entry is at least OLD_MS old by the server's clock."""
    r = any_server.client()
    with busy_group(any_server.url) as scene:
        report = describe_stream(any_server.url, scene.stream, heartbeat_interval=HEARTBEAT_MS,
                                 allowed_missed_heartbeats=MISSED)
        summary = r.xpending(scene.stream, scene.group)
        (xgroup,) = r.xinfo_groups(scene.stream)
        now_ms = server_ms(r)
    assert report["stream"] == scene.stream and report["length"] == r.xlen(scene.stream) == 12
    (group,) = report["groups"]
    assert group["name"] == scene.group
    assert group["pending"] == summary["pending"] == 7
    assert {c["name"]: c["pending"] for c in group["consumers"]} == \
        {c["name"].decode(): c["pending"] for c in summary["consumers"]} == {scene.alive: 4, scene.dead: 3}
    assert {c["name"]: c["alive"] for c in group["consumers"]} == {scene.alive: True, scene.dead: False}
    assert [c["idle_ms"] > DEAD_AFTER_MS for c in group["consumers"] if c["name"] == scene.dead] == [True]
    assert group["last_delivered_id"] == xgroup["last-delivered-id"].decode()
    if any_server.version >= (7,):
        assert group["lag"] == xgroup["lag"] == 5
    else:
        assert "lag" not in xgroup and group["lag"] is None
    assert OLD_MS <= group["oldest_pending_age_ms"] <= now_ms - scene.old_ms
    assert "dead_letter_length" not in report


def test_lag_on_every_server(any_server: EmbeddedServer) -> None:
    """Groups before the first entry, caught up, and mid-stream: the server's lag where it
    gives one (7+), else the exact derivation (length, 0) or null, on every version."""
    r = any_server.client()
    stream = unique_name("stream")
    add_entries(r, stream, 4)
    r.xgroup_create(stream, "at-start", id="0")
    r.xgroup_create(stream, "caught-up", id="$")
    r.xgroup_create(stream, "mid", id="0")
    r.xreadgroup("mid", "m", {stream: ">"}, count=1)
    lags = {g["name"]: g["lag"] for g in describe_stream(r, stream)["groups"]}
    server = {g["name"].decode(): g.get("lag") for g in r.xinfo_groups(stream)}
    if any_server.version >= (7,):
        assert lags == server == {"at-start": 4, "caught-up": 0, "mid": 3}
    else:
        assert lags == {"at-start": 4, "caught-up": 0, "mid": None}


def test_group_filter_dead_letters_and_several_streams(r: redis.Redis, redis_url: str) -> None:
    """group= reports that group only; the dead-letter stream's XLEN is in every report (0
    before it exists); several streams come back in the order asked."""
    first, second, dead_letters = unique_name("stream"), unique_name("stream"), unique_name("dlq")
    for stream in (first, second):
        add_entries(r, stream, 2)
        r.xgroup_create(stream, "billing", id="0")
        r.xgroup_create(stream, "audit", id="0")
    only = describe_stream(redis_url, first, group="audit", dead_letter_stream=dead_letters)
    assert [g["name"] for g in only["groups"]] == ["audit"] and only["dead_letter_length"] == 0
    add_entries(r, dead_letters, 3)
    reports = describe_streams(redis_url, [second, first], dead_letter_stream=dead_letters)
    assert [(s["stream"], s["dead_letter_length"]) for s in reports] == [(second, 3), (first, 3)]
    assert [[g["name"] for g in s["groups"]] for s in reports] == [["audit", "billing"]] * 2


def test_missing_stream_group_and_wrong_types_on_a_server(r: redis.Redis, redis_url: str) -> None:
    """A missing stream is StreamMissing naming it (not XINFO's bare "no such key"); a
    missing group GroupMissing; a stream or dead-letter key of another type WrongType naming it."""
    stream = unique_name("stream")
    with pytest.raises(rstream.StreamMissing, match=f"stream '{stream}' does not exist"):
        describe_stream(redis_url, stream)
    add_entries(r, stream, 1)
    with pytest.raises(rstream.GroupMissing, match=f"stream '{stream}' has no consumer group 'g'"):
        describe_stream(redis_url, stream, group="g")
    r.set("plain", "x")
    with pytest.raises(rstream.WrongType, match="key 'plain' holds a string") as wrong:
        describe_stream(redis_url, "plain")
    assert wrong.value.key == "plain"
    with pytest.raises(rstream.WrongType, match="dead-letter stream 'plain'"):
        describe_stream(redis_url, stream, dead_letter_stream="plain")


def test_decode_responses_client_gives_the_same_report(redis_server: EmbeddedServer) -> None:
    """A client of the user's with decode_responses=True (kept open) gives the same report."""
    plain, decoding = redis_server.client(), redis_server.client(decode_responses=True)
    stream = unique_name("stream")
    add_entries(plain, stream, 3)
    plain.xgroup_create(stream, "g", id="0")
    plain.xreadgroup("g", "c", {stream: ">"}, count=2)
    by_bytes, by_text = describe_stream(plain, stream), describe_stream(decoding, stream)
    for report in (by_bytes, by_text):  # idle times differ by the time between the two looks
        for group in report["groups"]:
            for consumer in group["consumers"]:
                consumer["idle_ms"] = 0
            group["oldest_pending_age_ms"] = 0
    assert by_bytes == by_text
    assert decoding.ping()


def test_unreachable_server_is_redis_unavailable() -> None:
    """A server nobody listens on raises RedisUnavailable, not a redis-py error."""
    server = EmbeddedServer().start()
    url = server.url
    server.close()
    with pytest.raises(rstream.RedisUnavailable):
        describe_stream(url, "s")


def test_streams_on_different_cluster_nodes() -> None:
    """In a Redis Cluster each stream, and the dead-letter stream, is asked on the node that
    owns it: streams spread over several nodes all report their own length and lag."""
    with local_cluster() as cluster:
        streams = [f"{{inspect-{n}}}" for n in range(12)]
        owners = {cluster.get_node_from_key(s).name for s in streams}
        assert len(owners) > 1  # the names spread over several nodes
        for n, stream in enumerate(streams):
            add_entries(cluster, stream, n + 1)
            cluster.xgroup_create(stream, "g", id="0")
        add_entries(cluster, f"{streams[0]}:dlq", 2)
        reports = describe_streams(cluster, streams, dead_letter_stream=f"{streams[0]}:dlq")
        assert [(s["stream"], s["length"], s["groups"][0]["lag"]) for s in reports] == \
            [(stream, n + 1, n + 1) for n, stream in enumerate(streams)]
        assert reports[0]["dead_letter_length"] == 2


def test_read_only_acl_user_is_enough(r: redis.Redis, redis_server: EmbeddedServer) -> None:
    """The minimal ACL the README gives for `rstream info` (read-only commands, the stream and
    dead-letter keys only) lets describe_stream do everything it does."""
    add_entries(r, "orders", 3)
    r.xgroup_create("orders", "billing", id="0")
    r.xreadgroup("billing", "billing-1", {"orders": ">"}, count=1)
    r.execute_command("ACL", "SETUSER", "orders-info", "on", ">CHANGE-ME", "resetkeys", "~orders",
                      "~orders:dlq", "resetchannels", "-@all", "+type", "+xinfo|stream",
                      "+xinfo|groups", "+xinfo|consumers", "+xpending", "+xlen", "+time")
    url = f"redis://orders-info:CHANGE-ME@127.0.0.1:{redis_server.port}/0"
    report = describe_stream(url, "orders", dead_letter_stream="orders:dlq")
    assert report["groups"][0]["pending"] == 1 and report["dead_letter_length"] == 0
    with pytest.raises(rstream.PermissionDenied):
        describe_stream(url, "elsewhere")
