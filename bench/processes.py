"""CPU-bound handlers and `rstream consume --processes N`: one process vs two on this machine.

A handler that spends `--work-us` µs of pure-Python CPU per entry (a busy loop, holding the GIL)
cannot go faster than one core in one process, whatever `concurrency` is. This drains the same
number of entries with ``rstream consume --processes 1`` and ``--processes 2`` (interleaved
rounds, medians) and reports entries/s and the ratio. The server runs on the same cores.

    python -m bench.processes [--count 20000] [--work-us 200] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List

import redis

from rstream.embedded import EmbeddedServer

from .common import REPO_ROOT, BenchError, median, prefill

HANDLER = '''
import os, time

WORK_S = float(os.environ["BENCH_WORK_US"]) / 1e6

def handle(message):
    clock = time.perf_counter
    until = clock() + WORK_S
    while clock() < until:  # pure-Python CPU: the GIL is held throughout
        pass
'''
DEADLINE_S = 600.0


def drain(url: str, client: redis.Redis, count: int, processes: int, work_us: int,
          workdir: Path) -> float:
    """Seconds for `processes` supervised consumers to handle and ack `count` fresh entries."""
    stream, group = f"bench-proc-{uuid.uuid4().hex[:8]}", "bench"
    prefill(client, stream, count)
    client.xgroup_create(stream, group, "0")
    env = {**os.environ, "BENCH_WORK_US": str(work_us), "PYTHONPATH": str(REPO_ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rstream", "consume", "cpuwork:handle", "--redis", url, "--stream", stream,
         "--group", group, "--consumer", "cpu", "--processes", str(processes), "--log-level", "WARNING",
         "--batch-size", "100"], cwd=workdir, env=env)
    try:
        while True:
            info = {g["name"]: g for g in client.xinfo_groups(stream)}[group.encode()]
            if info["entries-read"] == count and info["pending"] == 0:
                elapsed = time.perf_counter() - started
                break
            if proc.poll() is not None:
                raise BenchError(f"rstream consume exited with {proc.returncode}")
            if time.perf_counter() - started > DEADLINE_S:
                raise BenchError("the drain did not finish in time")
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        if proc.wait(60) != 0:
            raise BenchError(f"rstream consume exited with {proc.returncode} after SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
        client.delete(stream)
    return elapsed


def main(argv: List[str] = sys.argv[1:]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.processes", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--work-us", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedServer() as server:
        workdir = Path(tmp)
        (workdir / "cpuwork.py").write_text(HANDLER)
        client = server.client()
        rates: Dict[int, List[float]] = {1: [], 2: []}
        for _ in range(args.rounds):
            for processes in rates:  # interleaved: a noisy spell hits both
                seconds = drain(server.url, client, args.count, processes, args.work_us, workdir)
                rates[processes].append(args.count / seconds)
                print(f"--processes {processes}: {args.count / seconds:,.0f} entries/s", flush=True)
    one, two = median(rates[1]), median(rates[2])
    print(f"\n{args.count:,} entries, {args.work_us} µs of pure-Python CPU each, {os.cpu_count()} cores, "
          f"median of {args.rounds} interleaved rounds")
    print(f"| processes | entries/s |\n|---|---|\n| 1 | {one:,.0f} |\n| 2 | {two:,.0f} |")
    print(f"ratio 2/1: {two / one:.2f}x (ideal on 2 cores: {1e6 / args.work_us:,.0f}/s per core)")


if __name__ == "__main__":
    main()
