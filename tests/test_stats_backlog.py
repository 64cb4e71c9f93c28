"""`stats()` reports the group's backlog on the server (pending, lag, age of the oldest pending
entry), sampled by the reaper on its look at the group, against real servers."""
from __future__ import annotations

import threading
from typing import Any, List

import pytest
import redis

import rstream
from helpers import unique_name, wait_until

DEADLINE_S = 20.0
FAST: Any = dict(heartbeat_interval=100, allowed_missed_heartbeats=5, receive_interval=100,
                 group_start_id="0", batch_size=10, max_in_flight=10)


def server_has_lag(r: redis.Redis) -> bool:
    """Redis 7+ and Valkey report a group's lag; 6.2 does not."""
    info = r.info("server")
    return "valkey_version" in info or int(str(info["redis_version"]).split(".")[0]) >= 7


def add_old(r: redis.Redis, stream: str, count: int, age_ms: int) -> List[str]:
    """`count` entries with ids `age_ms` in the past by the server's clock."""
    now_s, now_us = r.time()
    base = now_s * 1000 + now_us // 1000 - age_ms
    return [r.xadd(stream, {"n": n}, id=f"{base}-{n + 1}").decode() for n in range(count)]


def test_stats_report_pending_lag_and_the_oldest_pending_age(r: redis.Redis, redis_url: str) -> None:
    """50 entries added a minute ago; the handler holds the 10 it may have in flight: pending
    10, lag 40 (where the server reports lag), the oldest pending about a minute old. Once
    released: nothing pending, no lag, no oldest age."""
    stream, release = unique_name("bl"), threading.Event()
    add_old(r, stream, 50, age_ms=60_000)
    with rstream.Consumer(redis_url, stream, "g", "c1", make_stream=True, **FAST) as consumer:
        assert consumer.stats().pending is None  # no look yet
        consumer.start(lambda m: release.wait(DEADLINE_S))
        wait_until(lambda: consumer.stats().pending == 10, DEADLINE_S, message=str(consumer.stats()))
        stats = consumer.stats()
        assert stats.lag == (40 if server_has_lag(r) else None)
        assert stats.oldest_pending_age_ms is not None and 60_000 <= stats.oldest_pending_age_ms < 120_000
        assert stats.sampled_age_ms is not None and stats.sampled_age_ms < 5_000
        release.set()
        wait_until(lambda: consumer.stats().pending == 0 and consumer.stats().lag == 0,
                   DEADLINE_S, message=str(consumer.stats()))
        assert consumer.stats().oldest_pending_age_ms is None


def test_stats_of_one_stream_and_of_all(r: redis.Redis, redis_url: str) -> None:
    """With several streams, stats(stream=s) is that stream's; stats() sums them."""
    a, b, release = unique_name("bl"), unique_name("bl"), threading.Event()
    add_old(r, a, 30, age_ms=1_000)
    add_old(r, b, 5, age_ms=90_000)
    with rstream.Consumer(redis_url, streams=[a, b], group="g", consumer_name="c1",
                          make_stream=True, **FAST) as consumer:
        consumer.start(lambda m: release.wait(DEADLINE_S))
        wait_until(lambda: consumer.stats().pending == 15, DEADLINE_S, message=str(consumer.stats()))
        assert consumer.stats(stream=a).pending == 10 and consumer.stats(stream=b).pending == 5
        assert consumer.stats(stream=a).delivered == 10 and consumer.stats(stream=b).delivered == 5
        assert consumer.stats().delivered == 15
        assert consumer.stats().oldest_pending_age_ms >= 90_000  # the oldest of all streams
        if server_has_lag(r):
            assert (consumer.stats(stream=a).lag, consumer.stats().lag) == (20, 20)
        release.set()
        wait_until(lambda: consumer.stats().acked == 35, DEADLINE_S)
        with pytest.raises(rstream.ConfigError, match="not a stream of this consumer"):
            consumer.stats(stream="elsewhere")


def test_the_sample_is_taken_by_the_reaper_not_per_call(r: redis.Redis, redis_url: str) -> None:
    """Calling stats() in a loop sends no command: the numbers come from the last look."""
    stream = unique_name("bl")
    options = {**FAST, "heartbeat_interval": 5000}
    with rstream.Consumer(redis_url, stream, "g", "c1", make_stream=True, **options) as c:
        c.start(lambda m: None)
        wait_until(lambda: c.stats().pending == 0, DEADLINE_S)
        before = int(r.info("stats")["total_commands_processed"])
        for _ in range(1000):
            c.stats()
        after = int(r.info("stats")["total_commands_processed"])
        # The consumer's own threads run meanwhile (blocking reads every 100 ms): far fewer
        # than the 1,000 stats() calls.
        assert after - before < 100, after - before
