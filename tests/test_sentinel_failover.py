"""Sentinel failover: a consumer given `Sentinel(...).master_for("mymaster")` follows the
primary when it is SIGKILLed and the sentinels promote its replica, and when a manual failover
demotes a live primary whose connections then answer READONLY. One primary, one replica, three
sentinels (quorum 2). Each run prints what it measured (entries lost by asynchronous
replication, entries handled twice, time to the first entry handled after the fault):
`python -m pytest tests/test_sentinel_failover.py -m cluster -s`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import pytest
import redis

import rstream
from helpers import unique_name, wait_until
from movekit import Outcome, Tally, Writer, measure
from rstream.embedded import EmbeddedServer, find_server_binary
from sentinelkit import MASTER_NAME, FailoverSet, SentinelUnsupported

pytestmark = pytest.mark.cluster

FAST: Dict[str, Any] = dict(receive_interval=100, heartbeat_interval=100, group_start_id="0",
                            make_stream=True)
BEFORE = 200  # entries handled before the fault
AFTER = 300   # entries written after the new primary took over


@pytest.fixture
def failover_set(tmp_path: Path) -> Iterator[FailoverSet]:
    binary = find_server_binary()
    try:
        servers = FailoverSet(binary, tmp_path)
    except SentinelUnsupported as exc:
        pytest.skip(f"{binary} would not run as a sentinel: {exc}")
    try:
        yield servers
    finally:
        servers.close()


def _run_failover(servers: FailoverSet, what: str, fault: Callable[[], float]) -> Outcome:
    """Consume while `fault` takes the primary away (it returns the moment the old primary
    stopped taking writes), until the new primary has served AFTER more entries."""
    client = servers.manager().master_for(MASTER_NAME)
    stream = unique_name("failover")
    tally = Tally()
    consumer = rstream.Consumer(client, stream, "g", "c1", **FAST).start(tally)
    writer = Writer(lambda fields: client.xadd(stream, fields)).start()
    try:
        wait_until(lambda: tally.count() >= BEFORE, 20, message="not consuming before the fault")
        fault_at = fault()
        servers.wait_for_master(servers.replica)
        print(f"[{what}] the sentinels named the replica after {time.monotonic() - fault_at:.2f} s")
        # A demoted primary takes writes until the sentinels reconfigure it (then it drops them
        # for the new primary's data): count from when it stopped.
        wait_until(lambda: _role(servers.primary) != "master", 20,
                   message="the old primary still takes writes")
        after = len(writer.ids)
        wait_until(lambda: len(writer.ids) >= after + AFTER, 30, message="writes did not resume")
        written = writer.stop()
        with servers.replica.client() as direct:
            survived = {entry_id.decode() for entry_id, _ in direct.xrange(stream)}
            wait_until(lambda: tally.ids() >= survived, 30,
                       message="entries on the new primary were not all handled")
            wait_until(lambda: direct.xpending(stream, "g")["pending"] == 0, 10,
                       message="not everything acked on the new primary")
    finally:
        writer.stop()
        consumer.stop(5)
    outcome = measure(what, written, survived, tally, fault_at)
    assert consumer.error is None
    assert outcome.resumed_after_s is not None
    assert set(written[after:]) <= survived  # written after the takeover, so all handled
    return outcome


def test_a_killed_primary_is_followed_to_the_promoted_replica(failover_set: FailoverSet) -> None:
    """SIGKILL the primary while consuming: the reconnects ask the sentinels and reach the
    promoted replica; every entry it has is handled and acked there."""
    def kill() -> float:
        killed_at = time.monotonic()
        failover_set.primary.kill()
        return killed_at

    _run_failover(failover_set, "sentinel, primary killed", kill)


def test_a_demoted_primary_answering_readonly_is_left_for_the_new_one(
        failover_set: FailoverSet) -> None:
    """A manual failover demotes the live primary: connections to it answer READONLY (or
    UNBLOCKED for a blocked read); they are dropped and the next ones go to the new primary."""
    old = failover_set.primary

    def failover() -> float:
        with failover_set.sentinels[0].client() as client:
            client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        wait_until(lambda: _role(old) == "slave", 20, interval=0.02,
                   message="the old primary was not demoted")
        return time.monotonic()

    _run_failover(failover_set, "sentinel, manual failover (from the demotion)", failover)


def _role(server: EmbeddedServer) -> str:
    try:
        with server.client() as client:
            return str(client.info("replication")["role"])
    except redis.RedisError:
        return "down"
