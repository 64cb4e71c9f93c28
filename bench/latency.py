"""Child programs of case 3: latency from XADD to handler start at a steady rate.

    python -m bench.latency consumer --url URL --stream S --group G --count N [--timeout S]
    python -m bench.latency producer --url URL --stream S --rate R --seconds T

The producer paces XADDs on an absolute schedule (no drift) and writes its `time.time()` just before
each XADD into field `t`; the consumer (rstream, in another process so the two do not share a GIL)
takes `time.time()` as the first thing its handler does. The consumer prints READY once it has
started, and its result after `count` entries (or the deadline).
"""
from __future__ import annotations

import argparse
import threading
import time
from typing import Any, List, Optional

import redis

from bench.common import POLL_S, READY_MARK, BenchError, emit, percentile

USER = b"user-00042"
PAYLOAD = b"q" * 60  # with t (17 bytes) and the field names: ~100 bytes per entry


def run_consumer(args: argparse.Namespace) -> None:
    import rstream
    from rstream import _hotpath

    delays: List[float] = []

    def handler(message: Any) -> None:
        now = time.time()
        delays.append(now - float(message.fields[b"t"]))  # list.append is atomic under the GIL

    consumer = rstream.Consumer(args.url, args.stream, args.group, "bench-latency", group_start_id="$")
    consumer.start(handler)
    print(READY_MARK, flush=True)
    wake = threading.Event()  # never set: a deadline-bound poll
    deadline = time.monotonic() + args.timeout
    try:
        while len(delays) < args.count and time.monotonic() < deadline:
            if consumer.error is not None:
                raise BenchError(f"rstream stopped: {consumer.error}")
            wake.wait(POLL_S * 25)
    finally:
        consumer.stop()
    if len(delays) < args.count:
        raise BenchError(f"received {len(delays)} of {args.count} entries in {args.timeout} s")
    ordered = sorted(delays)
    emit({"implementation": _hotpath.IMPLEMENTATION, "received": len(ordered),
          "p50_ms": percentile(ordered, 0.50) * 1e3, "p99_ms": percentile(ordered, 0.99) * 1e3,
          "p999_ms": percentile(ordered, 0.999) * 1e3, "max_ms": ordered[-1] * 1e3,
          "mean_ms": sum(ordered) / len(ordered) * 1e3})


def run_producer(args: argparse.Namespace) -> None:
    client = redis.Redis.from_url(args.url)
    client.ping()
    count = int(args.rate * args.seconds)
    interval = 1.0 / args.rate
    behind = 0.0
    start = time.perf_counter()
    for i in range(count):
        lag = time.perf_counter() - (start + i * interval)
        if lag < 0:
            # Pacing is the point here, not waiting for a condition: sleep until the slot's time.
            time.sleep(-lag)
        else:
            behind = max(behind, lag)
        client.xadd(args.stream, {b"t": b"%.6f" % time.time(), b"user": USER, b"payload": PAYLOAD})
    elapsed = time.perf_counter() - start
    emit({"sent": count, "seconds": elapsed, "rate": count / elapsed, "max_behind_ms": behind * 1e3})


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    sub = parser.add_subparsers(dest="role", required=True)
    consumer = sub.add_parser("consumer")
    consumer.add_argument("--group", required=True)
    consumer.add_argument("--count", type=int, required=True)
    consumer.add_argument("--timeout", type=float, default=120.0)
    producer = sub.add_parser("producer")
    producer.add_argument("--rate", type=float, required=True)
    producer.add_argument("--seconds", type=float, required=True)
    for role in (consumer, producer):
        role.add_argument("--url", required=True)
        role.add_argument("--stream", required=True)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if args.role == "consumer":
        run_consumer(args)
    else:
        run_producer(args)


if __name__ == "__main__":
    main()
