"""The chaos soak: consumer processes SIGKILLed and restarted, Redis killed once.

4 consumer processes share one group while 100,000 entries are published. Every ~2 s a random
consumer is frozen (SIGSTOP), its pending count read (what it may handle twice), then SIGKILLed
and restarted under the same name (it replays its own pending entries) or a new one (the others
claim the dead name's entries). Once, Redis itself is SIGKILLed and restarted from its AOF
(appendfsync always). At the end every entry was handled at least once, the pending list is
empty, and duplicates stay under the bound: the entries pending for the killed consumers (and
for all consumers when Redis died) at the moment of each kill.

Each consumer process appends the id of each entry it handles to its own file with one
`os.write` per entry, which a SIGKILL cannot tear: the files are the record of what was handled.
"""
from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
import redis

from faultkit import pending
from helpers import SpawnedProcess, wait_until
from rstream.embedded import EmbeddedServer, find_server_binary

ENTRIES = 100_000
CONSUMERS = 4
PUBLISH_BATCH = 500
PUBLISH_RATE = 2_200          # entries/s: ~45 s of publishing, ~20 kills
KILL_EVERY_S = 2.0
REDIS_DOWN_S = 1.0
FINISH_TIMEOUT_S = 60.0
# Each handler call sleeps 4 ms; with 4 threads a consumer handles ~1,000 entries/s, so the
# 4 of them run at ~55% and a killed one leaves up to max_in_flight (200) entries behind.
HANDLER_S = 0.004

CONSUMER_SCRIPT = '''
import os, sys, time
import rstream

url, stream, group, name, out = sys.argv[1:6]
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

def handle(message):
    time.sleep({handler_s})  # real work takes time: a kill finds entries in flight
    os.write(fd, (message.id + "\\n").encode())

consumer = rstream.Consumer(url, stream, group, name, receive_interval=200,
                            heartbeat_interval=500, allowed_missed_heartbeats=4,
                            batch_size=100, max_in_flight=200, concurrency=4)
consumer.run(handle, stop_timeout=10)
print("stopped:", consumer.stats(), flush=True)
'''.format(handler_s=HANDLER_S)


@dataclasses.dataclass
class Chaos:
    """What the soak did, for the final report."""

    kills: int = 0
    same_name: int = 0
    redis_kills: int = 0
    bound: int = 0
    publish_errors: int = 0
    incarnations: int = 0


class Publisher(threading.Thread):
    """XADDs ids 1-0 .. ENTRIES-0 at PUBLISH_RATE, retrying through the Redis outage. Explicit
    ids make a retry of a batch whose reply was lost harmless: Redis refuses the ids it has."""

    def __init__(self, r: redis.Redis, stream: str, chaos: Chaos) -> None:
        super().__init__(name="soak-publisher", daemon=True)
        self._r = r
        self._stream = stream
        self._chaos = chaos
        self.published = 0
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            start = time.monotonic()
            for first in range(1, ENTRIES + 1, PUBLISH_BATCH):
                self._publish(range(first, min(first + PUBLISH_BATCH, ENTRIES + 1)))
                self.published = min(first + PUBLISH_BATCH - 1, ENTRIES)
                ahead = start + self.published / PUBLISH_RATE - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # pacing, not waiting on a condition
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self.error = exc

    def _publish(self, numbers: range) -> None:
        todo = list(numbers)
        deadline = time.monotonic() + 60
        while todo:
            try:
                pipe = self._r.pipeline(transaction=False)
                for n in todo:
                    pipe.xadd(self._stream, {b"n": str(n).encode()}, id=f"{n}-0")
                results = pipe.execute(raise_on_error=False)
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                results = [None] * len(todo)
            self._chaos.publish_errors += sum(1 for x in results if not isinstance(x, bytes))
            todo = [n for n, x in zip(todo, results)
                    if not isinstance(x, bytes) and "equal or smaller" not in str(x)]
            if todo:
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not publish {len(todo)} entries: {results[:3]}")
                time.sleep(0.1)  # the server is restarting


class Fleet:
    """The consumer processes: slot -> running process and its current name."""

    def __init__(self, spawn: Callable[..., SpawnedProcess], script: Path, url: str, stream: str,
                 group: str, out_dir: Path, chaos: Chaos) -> None:
        self._spawn = spawn
        self._script = script
        self._args = (url, stream, group)
        self._out_dir = out_dir
        self._chaos = chaos
        self.procs: Dict[int, SpawnedProcess] = {}
        self.names: Dict[int, str] = {}

    def start(self, slot: int, name: str) -> None:
        self._chaos.incarnations += 1
        out = self._out_dir / f"handled-{self._chaos.incarnations}.log"
        self.procs[slot] = self._spawn(self._script, *self._args, name, str(out))
        self.names[slot] = name

    def kill_and_restart(self, slot: int, r: redis.Redis, stream: str, group: str,
                         rng: random.Random) -> None:
        proc = self.procs[slot]
        proc.send_signal(signal.SIGSTOP)  # frozen: its pending count cannot change under us
        try:
            counts = {c["name"].decode(): int(c["pending"])
                      for c in r.xpending(stream, group)["consumers"]}
            self._chaos.bound += counts.get(self.names[slot], 0)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        self._chaos.kills += 1
        if rng.random() < 0.5:
            self._chaos.same_name += 1
            self.start(slot, self.names[slot])
        else:
            self.start(slot, f"soak-{slot}-{self._chaos.incarnations + 1}")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            proc.wait(30)


def _handled(out_dir: Path) -> List[str]:
    ids: List[str] = []
    for path in out_dir.glob("handled-*.log"):
        ids.extend(path.read_text().split())
    return ids


def _all_handled(out_dir: Path) -> bool:
    return len(set(_handled(out_dir))) >= ENTRIES


@pytest.mark.soak
def test_chaos_soak_every_entry_handled_pending_empty_duplicates_bounded(
        spawn: Callable[..., SpawnedProcess], tmp_path: Path, stream_names: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    """SIGKILLed consumers (every ~2 s) and one SIGKILLed Redis lose nothing: every entry is
    handled at least once, nothing stays pending, duplicates stay under the in-flight bound."""
    rng = random.Random(os.environ.get("RSTREAM_SOAK_SEED", time.time_ns()))
    chaos = Chaos()
    script = tmp_path / "soak_consumer.py"
    script.write_text(CONSUMER_SCRIPT)
    out_dir = tmp_path / "handled"
    out_dir.mkdir()
    stream, group = stream_names.stream, stream_names.group
    started = time.monotonic()
    with EmbeddedServer(find_server_binary(), appendonly=True) as server:
        r = server.client()
        r.xgroup_create(stream, group, "0", mkstream=True)
        fleet = Fleet(spawn, script, server.url, stream, group, out_dir, chaos)
        for slot in range(CONSUMERS):
            fleet.start(slot, f"soak-{slot}")
        publisher = Publisher(server.client(), stream, chaos)
        publisher.start()
        while publisher.is_alive():
            threading.Event().wait(rng.uniform(0.75, 1.25) * KILL_EVERY_S)
            if not publisher.is_alive():
                break
            if chaos.redis_kills == 0 and publisher.published >= ENTRIES // 2:
                chaos.bound += pending(r, stream, group)  # every consumer's in-flight entries
                server.kill()
                chaos.redis_kills += 1
                threading.Event().wait(REDIS_DOWN_S)
                server.start()
                continue
            fleet.kill_and_restart(rng.randrange(CONSUMERS), r, stream, group, rng)
        assert publisher.error is None, publisher.error
        assert r.xlen(stream) == ENTRIES  # AOF always: every acknowledged XADD survived
        wait_until(lambda: _all_handled(out_dir), FINISH_TIMEOUT_S,
                   message="not every entry was handled")
        wait_until(lambda: pending(r, stream, group) == 0, FINISH_TIMEOUT_S,
                   message="entries left pending")
        fleet.stop_all()
        assert pending(r, stream, group) == 0
        wall = time.monotonic() - started
        r.close()
    handled = _handled(out_dir)
    unique = set(handled)
    duplicates = len(handled) - len(unique)
    with capsys.disabled():  # the figures belong in the CI log, pass or fail
        print(f"\nsoak: entries {ENTRIES}, handled {len(handled)} ({len(unique)} distinct), "
              f"duplicates {duplicates} (bound {chaos.bound}), consumer kills {chaos.kills} "
              f"({chaos.same_name} restarted under the same name), Redis kills {chaos.redis_kills}, "
              f"processes {chaos.incarnations}, wall time {wall:.1f} s")
    assert unique == {f"{n}-0" for n in range(1, ENTRIES + 1)}
    assert chaos.kills >= 10 and chaos.redis_kills == 1
    assert duplicates <= chaos.bound
