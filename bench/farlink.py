"""Draining through a far link: a loopback proxy that delays every byte `--delay-ms` each way.

On a far link a consumer needs enough reads in flight to cover the round trip (the
bandwidth-delay product): with R entries/s wanted and a round trip of T seconds, R x T entries
must be on the wire at once, which `max_in_flight` bounds. This drains the same backlog with
rstream's defaults and with a larger `max_in_flight`, through tests/proxy.py's delaying proxy,
and once without the proxy for reference (interleaved rounds, medians).

    python -m bench.farlink [--count 200000] [--delay-ms 20] [--rounds 3] [--max-in-flight 20000]
"""
from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import threading
import time
import uuid
from typing import Dict, Iterator, List, Optional

import rstream
from rstream.embedded import EmbeddedServer

from .common import REPO_ROOT, BenchError, median, prefill

DEADLINE_S = 300.0
PROXY = REPO_ROOT / "tests" / "proxy.py"  # the suite's loopback proxy, taught to delay


@contextlib.contextmanager
def far_link(port: int, delay_ms: float) -> Iterator[str]:
    """A URL reaching `port` through the delaying proxy, run in a process of its own: in this
    one its threads would compete with the consumer for the GIL and slow both."""
    proc = subprocess.Popen([sys.executable, str(PROXY), str(port), str(delay_ms)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield f"redis://127.0.0.1:{int(proc.stdout.readline())}/0"
    finally:
        proc.kill()
        proc.wait()


def drain(url: str, server: EmbeddedServer, count: int, max_in_flight: Optional[int]) -> float:
    """Entries/s for one consumer to handle `count` fresh entries through `url`, from the first
    handled entry to the last: start-up (a dozen round trips: connections, the group, the
    replay) is left out, as it is paid once per consumer, not per entry."""
    client = server.client()
    stream = f"bench-far-{uuid.uuid4().hex[:8]}"
    prefill(client, stream, count)
    done = threading.Event()
    handled = [0]
    first = [0.0]
    lock = threading.Lock()

    def handle(message: rstream.Message) -> None:
        with lock:
            handled[0] += 1
            if handled[0] == 1:
                first[0] = time.perf_counter()
            if handled[0] == count:
                done.set()

    consumer = rstream.Consumer(url, stream, "bench", "far", group_start_id="0",
                                max_in_flight=max_in_flight)
    consumer.start(handle)
    try:
        if not done.wait(DEADLINE_S):
            raise BenchError(f"drain through {url} did not finish: {handled[0]} of {count}")
        elapsed = time.perf_counter() - first[0]
    finally:
        consumer.stop(30)
        client.delete(stream)
        client.close()
    return count / elapsed


def main(argv: List[str] = sys.argv[1:]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.farlink", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-in-flight", type=int, default=20_000)
    args = parser.parse_args(argv)
    variants = {"local, defaults": (False, None), "far, defaults": (True, None),
                f"far, max_in_flight={args.max_in_flight}": (True, args.max_in_flight)}
    rates: Dict[str, List[float]] = {name: [] for name in variants}
    with EmbeddedServer() as server, far_link(server.port, args.delay_ms) as far_url:
        for _ in range(args.rounds):
            for name, (far, limit) in variants.items():
                rate = drain(far_url if far else server.url, server, args.count, limit)
                rates[name].append(rate)
                print(f"{name}: {rate:,.0f} entries/s", flush=True)
    print(f"\n{args.count:,} entries, {args.delay_ms:g} ms each way through the proxy, "
          f"median of {args.rounds} interleaved rounds")
    print("| variant | entries/s |\n|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {median(values):,.0f} |")


if __name__ == "__main__":
    main()
