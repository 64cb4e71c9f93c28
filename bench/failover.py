"""Failover time: from SIGKILL of a consumer holding entries to the last of them handled by another.

    python bench/failover.py [--runs 7] [--entries 5] [--heartbeat-interval 100]
                             [--allowed-missed-heartbeats 2] [--redis-server PATH] [--json]

Each run: a fresh stream and group; a child process (this file with ``--hold``) runs a Consumer whose
handler never returns, and reads `entries` entries (they are pending for it); a live Consumer starts
in this process; one to two heartbeat intervals later (a random delay, so that kills fall at every
phase of the heartbeats and reaper rounds), the child is SIGKILLed. The failover time is from just before the
kill to the moment the live consumer's handler has been called for the last of those entries
(`time.monotonic()` in both places, one process). It is compared with the bound
``heartbeat_interval * (allowed_missed_heartbeats + 1)``: the victim's last heartbeat is at most one
interval old when it dies, it is dead once idle longer than ``heartbeat_interval *
allowed_missed_heartbeats``, and the live reaper looks once per interval.

`measure_failover(...)` returns the result as a dict (the harness, `bench/run.py`, imports it);
it uses the server at `url`, or starts its own with `rstream.embedded`.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__" and str(REPO_ROOT) not in sys.path:  # `python bench/failover.py`
    sys.path.insert(0, str(REPO_ROOT))

import redis  # noqa: E402

import rstream  # noqa: E402
from rstream.embedded import EmbeddedServer, find_server_binary  # noqa: E402

RUNS = 7
QUICK_RUNS = 3
ENTRIES = 5
HOLD_DEADLINE_S = 30.0   # for the child to start and read its entries
FAILOVER_DEADLINE_S = 60.0


def _hold(url: str, stream: str, group: str, name: str, heartbeat_ms: int, missed: int) -> None:
    """The victim (child process): read entries and hold them until killed."""
    def hold(message: rstream.Message) -> None:
        threading.Event().wait()

    rstream.Consumer(url, stream, group, name, heartbeat_interval=heartbeat_ms,
                     allowed_missed_heartbeats=missed, receive_interval=100,
                     concurrency=64).run(hold)


def _spawn_holder(url: str, stream: str, group: str, heartbeat_ms: int, missed: int) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    args = ["--hold", url, stream, group, "victim", str(heartbeat_ms), str(missed)]
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"failover bench: {what} within {timeout:.0f} s")
        time.sleep(0.005)


def _one_run(client: redis.Redis, url: str, entries: int, heartbeat_ms: int, missed: int) -> float:
    """Failover time of one kill, in ms."""
    stream, group = f"failover-{uuid.uuid4().hex[:8]}", "bench"
    client.xgroup_create(stream, group, "0", mkstream=True)
    for n in range(entries):
        client.xadd(stream, {"n": n})
    child = _spawn_holder(url, stream, group, heartbeat_ms, missed)
    handled: List[float] = []
    all_handled = threading.Event()

    def record(message: rstream.Message) -> None:
        handled.append(time.monotonic())  # list.append is atomic; one entry per call
        if len(handled) >= entries:
            all_handled.set()

    survivor: Optional[rstream.Consumer] = None
    try:
        _wait(lambda: client.xpending(stream, group)["pending"] == entries or child.poll() is not None,
              HOLD_DEADLINE_S, "the victim did not read its entries")
        if child.poll() is not None:
            raise RuntimeError(f"failover bench: the victim exited with {child.returncode}")
        survivor = rstream.Consumer(url, stream, group, "survivor", heartbeat_interval=heartbeat_ms,
                                    allowed_missed_heartbeats=missed, receive_interval=100,
                                    concurrency=min(entries, 64))
        survivor.start(record)
        # A random moment, so kills fall at every phase of the victim's heartbeat and of the
        # survivor's reaper rounds, rather than right after the survivor's first round.
        time.sleep(random.uniform(1.0, 2.0) * heartbeat_ms / 1000)
        killed_at = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        if not all_handled.wait(FAILOVER_DEADLINE_S):
            raise RuntimeError(f"failover bench: {len(handled)} of {entries} entries handled "
                               f"within {FAILOVER_DEADLINE_S:.0f} s of the kill")
        return (max(handled) - killed_at) * 1000
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        if survivor is not None:
            survivor.stop(timeout=5)
        client.delete(stream)


def measure_failover(url: Optional[str] = None, server_binary: Optional[str] = None,
                     runs: Optional[int] = None, entries: int = ENTRIES, heartbeat_interval: int = 100,
                     allowed_missed_heartbeats: int = 2, quick: bool = False) -> Dict[str, Any]:
    """Failover times over `runs` kills against the server at `url` (or a private one started
    from `server_binary`), with the bound they are held to."""
    runs = runs or (QUICK_RUNS if quick else RUNS)
    server = None if url else EmbeddedServer(server_binary or find_server_binary()).start()
    try:
        target = url or server.url  # type: ignore[union-attr]
        client = redis.Redis.from_url(target)
        info = client.info("server")
        times = [_one_run(client, target, entries, heartbeat_interval, allowed_missed_heartbeats)
                 for _ in range(runs)]
        client.close()
    finally:
        if server is not None:
            server.close()
    bound = heartbeat_interval * (allowed_missed_heartbeats + 1)
    return {
        # Valkey reports redis_version 7.2.4 for compatibility; its own version is valkey_version.
        "server": f"{info.get('server_name', 'redis')}-{info.get('valkey_version', info['redis_version'])}",
        "heartbeat_interval_ms": heartbeat_interval,
        "allowed_missed_heartbeats": allowed_missed_heartbeats,
        "entries": entries,
        "runs": runs,
        "bound_ms": bound,
        "failover_ms_median": statistics.median(times),
        "failover_ms_min": min(times),
        "failover_ms_max": max(times),
        "within_bound": f"{sum(t <= bound for t in times)}/{runs}",
        "failover_ms_runs": [round(t, 1) for t in times],
    }


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--hold"]:
        url, stream, group, name, heartbeat_ms, missed = argv[1:7]
        _hold(url, stream, group, name, int(heartbeat_ms), int(missed))
        return
    parser = argparse.ArgumentParser(prog="python bench/failover.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--entries", type=int, default=ENTRIES)
    parser.add_argument("--heartbeat-interval", type=int, default=100, help="ms")
    parser.add_argument("--allowed-missed-heartbeats", type=int, default=2)
    parser.add_argument("--redis-server", help="server binary (default: rstream.embedded's pick)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args(argv)
    result = measure_failover(server_binary=args.redis_server, runs=args.runs, entries=args.entries,
                              heartbeat_interval=args.heartbeat_interval,
                              allowed_missed_heartbeats=args.allowed_missed_heartbeats)
    if args.json:
        print(json.dumps(result))
        return
    print(f"failover on {result['server']}: heartbeat_interval {result['heartbeat_interval_ms']} ms, "
          f"allowed_missed_heartbeats {result['allowed_missed_heartbeats']}, "
          f"{result['entries']} entries held by the killed consumer, {result['runs']} runs")
    print(f"  SIGKILL -> last entry handled by another consumer: median "
          f"{result['failover_ms_median']:.0f} ms, min {result['failover_ms_min']:.0f} ms, "
          f"max {result['failover_ms_max']:.0f} ms (runs: {result['failover_ms_runs']})")
    print(f"  bound heartbeat_interval * (allowed_missed_heartbeats + 1) = {result['bound_ms']} ms; "
          f"within it: {result['within_bound']}")


if __name__ == "__main__":
    main()
