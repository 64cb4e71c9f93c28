"""A "dead" verdict goes stale the moment its consumer beats again: a consumer frozen past its
threshold and then resumed loses at most a page, and a stalled server makes nobody dead.

Consumers beat every 100 ms and are dead after 2 missed beats (idle > 200 ms).
"""
from __future__ import annotations

import collections
import signal
import threading
from typing import Any, Callable, Counter, List

import redis

import rstream
from faultkit import publish
from helpers import SpawnedProcess, wait_until
from rstream.embedded import EmbeddedServer

FAST = dict(heartbeat_interval=100, allowed_missed_heartbeats=2, receive_interval=100)
ROBBER_PAGE = 10

# A consumer that reads everything at once and works through it slowly, marking each entry it
# handled in <marks>:victim.
VICTIM = """
import sys, time
import redis, rstream

url, stream, group, marks, count = sys.argv[1:6]
r = redis.Redis.from_url(url)

def handle(message):
    time.sleep(0.015)   # the handler's work
    r.sadd(marks + ":victim", message.id)

rstream.Consumer(url, stream, group, "victim", heartbeat_interval=100, allowed_missed_heartbeats=2,
                 receive_interval=100, concurrency=1, batch_size=int(count),
                 max_in_flight=int(count)).run(handle)
"""


def _pending_of(r: redis.Redis, stream: str, group: str, consumer: str) -> int:
    for c in r.xinfo_consumers(stream, group):
        if c["name"].decode() == consumer:
            return int(c["pending"])
    return 0


def test_a_consumer_frozen_past_its_threshold_loses_at_most_a_page_once_it_beats_again(
        redis_url: str, r: redis.Redis, stream_names: Any,
        spawn: Callable[..., SpawnedProcess]) -> None:
    """SIGSTOP a consumer holding 300 entries for 1 s, then SIGCONT: another consumer claims
    from it while it is frozen (it is dead by the rule), but once it heartbeats again the
    claims stop within a page or two, instead of robbing it of everything."""
    names, marks = stream_names, stream_names.new("marks")
    r.xgroup_create(names.stream, names.group, "0", mkstream=True)
    ids = publish(r, names.stream, 300)
    victim = spawn(VICTIM, redis_url, names.stream, names.group, marks, "300")
    wait_until(lambda: _pending_of(r, names.stream, names.group, "victim") == 300 and
               r.scard(marks + ":victim") > 0, 20, message="the victim did not read its entries")
    robbed: Counter[str] = collections.Counter()
    lock = threading.Lock()

    def rob(message: rstream.Message) -> None:
        threading.Event().wait(0.02)  # the handler's work
        with lock:
            robbed[message.id] += 1

    robber = rstream.Consumer(redis_url, names.stream, names.group, "robber", **FAST,
                              concurrency=1, batch_size=ROBBER_PAGE, max_in_flight=ROBBER_PAGE)
    robber.start(rob)
    try:
        victim.send_signal(signal.SIGSTOP)
        wait_until(lambda: robber.stats().claimed > 0, 10, message="nothing claimed from the frozen victim")
        threading.Event().wait(0.8)  # the freeze: 1 s in all, past the 200 ms threshold
        victim.send_signal(signal.SIGCONT)
        claimed_frozen = robber.stats().claimed
        wait_until(lambda: r.scard(marks + ":victim") + len(robbed) >= 300 and
                   int(r.xpending(names.stream, names.group)["pending"]) == 0, 30,
                   message="entries not all handled")
        claimed_after = robber.stats().claimed - claimed_frozen
    finally:
        victim.send_signal(signal.SIGCONT)
        robber.stop(5)
    handled_by_victim = {m.decode() for m in r.smembers(marks + ":victim")}
    twice = len(handled_by_victim & set(robbed))
    print(f"claimed while frozen: {claimed_frozen}; after it beat again: {claimed_after}; "
          f"handled twice: {twice} of {len(ids)}")
    assert set(ids) <= handled_by_victim | set(robbed)
    # The claim in progress when it resumed, and one more before its first beat lands.
    assert claimed_after <= 2 * ROBBER_PAGE, claimed_after


def test_a_server_stalled_past_the_threshold_makes_nobody_dead(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any) -> None:
    """SIGSTOP the Redis server for 2 s (ten dead thresholds) while three consumers hold
    entries: once it runs again, every idle time it shows is inflated by the stall, but no
    consumer claims another's entries, and each entry is handled exactly once."""
    names = stream_names
    r.xgroup_create(names.stream, names.group, "0", mkstream=True)
    release = threading.Event()
    handled: Counter[str] = collections.Counter()
    lock = threading.Lock()

    def hold(message: rstream.Message) -> None:
        release.wait(30)
        with lock:
            handled[message.id] += 1

    group: List[rstream.Consumer] = [
        rstream.Consumer(redis_server.url, names.stream, names.group, f"c{n}", **FAST,
                         batch_size=10, max_in_flight=10, concurrency=10) for n in range(3)]
    try:
        for consumer in group:
            consumer.start(hold)
        ids = publish(r, names.stream, 30)
        wait_until(lambda: all(c.stats().in_flight == 10 for c in group), 10,
                   message="the consumers did not each take 10 entries")
        redis_server._proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        threading.Event().wait(2.0)  # the stall
        redis_server._proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        # Absence of claims can only be watched for: a second is five dead thresholds.
        threading.Event().wait(1.0)
        claimed = sum(c.stats().claimed for c in group)
        release.set()
        wait_until(lambda: set(ids) <= set(handled) and
                   int(r.xpending(names.stream, names.group)["pending"]) == 0, 20,
                   message="entries not all handled")
    finally:
        release.set()
        if redis_server.running():
            redis_server._proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        for consumer in group:
            consumer.stop(5)
    twice = sum(1 for n in handled.values() if n > 1)
    print(f"after a 2 s server stall: {claimed} entries claimed, {twice} handled twice")
    assert claimed == 0 and twice == 0
