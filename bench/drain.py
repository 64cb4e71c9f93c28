"""Child program: drain `--count` pre-filled entries through one consumer group and report.

    python -m bench.drain {rstream,redis-py,walrus,c-consumer} --url URL --stream S [--stream S2 ...]
                          --group G --count N [--sleep-ms MS] [--concurrency C] [--timeout S]
                          [--cluster] [--c-binary PATH]

The handler is a no-op, or sleeps `--sleep-ms` (an I/O-bound handler). The timed window runs from
just before the first read (rstream: just before `start()`) until the server has acknowledged all
`count` entries; setup and `stop()` are outside it. The result line carries the rate, the server's
CPU in that window, this process's peak RSS and, for rstream, which hot path was loaded.

Several `--stream`s (group G on each, `count` entries over all of them): rstream reads them with
`streams=[...]` (a lane per stream); the redis-py loop with one XREADGROUP over all of them
(`STREAMS a b c > > >`, COUNT 500 per stream) and one XACK per stream per reply. `--cluster`:
`--url` is a node of a Redis Cluster; rstream gets a `RedisCluster` client and the server CPU is
summed over the masters (rstream only: no single command may carry keys of several slots).

`c-consumer` runs the hiredis program built from bench/c_consumer.c (`--c-binary`, see
bench/c_consumer.py): rstream's wire work in C. It times itself (from just before its first write
until its XACK replies have counted every entry) and reports its own CPU (getrusage); this
process only measures the server around it, as for the other variants.

The result also carries the server's INFO commandstats delta over the window (`commands`) and how
many XPENDING calls this harness made in it (`probe_xpending_calls`: the drained-yet check, not
the consumer's).
"""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import redis
from redis.cluster import RedisCluster

from bench.common import (BATCH, POLL_S, READY_MARK, BenchError, Window, emit, parse_result, peak_rss_mb,
                          rss_mb)

Handler = Callable[[Any], None]
READ_BLOCK_MS = 1000
STATS_LAG_LIMIT_S = 5.0
NO_PROGRESS_S = 20.0  # nothing delivered for this long: rstream is stuck, fail fast


def make_handler(sleep_ms: float) -> Handler:
    if sleep_ms <= 0:
        def noop(message: Any) -> None:
            return None
        return noop
    pause = sleep_ms / 1000

    def io_bound(message: Any) -> None:
        time.sleep(pause)  # stands in for a network call: releases the GIL like real I/O
    return io_bound


def drain_rstream(args: argparse.Namespace, handler: Handler, window: Window) -> Dict[str, Any]:
    import rstream
    from rstream import _hotpath

    client = RedisCluster.from_url(args.url) if args.cluster else args.url
    where: Dict[str, Any] = ({"streams": args.streams} if len(args.streams) > 1
                             else {"stream": args.streams[0]})
    consumer = rstream.Consumer(client, group=args.group, consumer_name="bench-rstream",
                                group_start_id="0", concurrency=args.concurrency, **where)
    wake = threading.Event()  # never set: a deadline-bound poll that does not hold the GIL
    deadline = time.monotonic() + args.timeout
    stalled = Progress(NO_PROGRESS_S)
    # When the first entry and the last entry reached a handler, to tell startup and a slow
    # final ack apart from throughput (polled, so the handler stays a true no-op).
    marks: Dict[str, float] = {}
    window.open()
    consumer.start(handler)
    try:
        while not drained(consumer, args, window, marks):
            if consumer.error is not None:
                raise BenchError(f"rstream stopped: {consumer.error}")
            if time.monotonic() > deadline or stalled(consumer.stats().delivered):
                raise BenchError(f"rstream delivered {consumer.stats().delivered} of {args.count} "
                                 f"after {time.perf_counter() - window.t0:.0f} s")
            wake.wait(POLL_S)
        window.close()
        marks["stats_acked_lag_s"] = stats_lag(consumer, args.count, wake)
        stats = consumer.stats()
    finally:
        consumer.stop()
        if args.cluster:
            client.close()
    return {"implementation": _hotpath.IMPLEMENTATION, "stats": dataclasses.asdict(stats), **marks}


class Progress:
    """Called with a growing count; True once it has not grown for `limit_s` seconds."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.count = -1
        self.since = time.monotonic()

    def __call__(self, count: int) -> bool:
        now = time.monotonic()
        if count != self.count:
            self.count, self.since = count, now
        return now - self.since > self.limit_s


def drained(consumer: Any, args: argparse.Namespace, window: Window, marks: Dict[str, float]) -> bool:
    """All entries delivered and none pending on the server. The server is asked, not
    `stats().acked`: that counter may trail the server's acks (see `stats_lag`)."""
    delivered = consumer.stats().delivered
    now = time.perf_counter() - window.t0
    if delivered:
        marks.setdefault("first_delivery_s", now)
    if delivered < args.count:
        return False
    marks.setdefault("all_delivered_s", now)
    marks["probe_xpending_calls"] = marks.get("probe_xpending_calls", 0) + len(args.streams)
    return pending(window.probe, args) == 0


def pending(probe: Any, args: argparse.Namespace) -> int:
    """Entries of the group read and not yet acknowledged, over every stream."""
    return sum(int(probe.xpending(stream, args.group)["pending"]) for stream in args.streams)


def stats_lag(consumer: Any, count: int, wake: threading.Event) -> float:
    """Seconds from the server having acked everything until `stats().acked` says so (capped)."""
    start = time.perf_counter()
    limit = start + STATS_LAG_LIMIT_S
    while consumer.stats().acked < count and time.perf_counter() < limit:
        wake.wait(POLL_S)
    return time.perf_counter() - start


def drain_redis_py(args: argparse.Namespace, handler: Handler, window: Window) -> Dict[str, Any]:
    """What a user writes by hand: XREADGROUP COUNT 500, handle each entry, one XACK per batch.
    Over several streams: one XREADGROUP over all of them (COUNT 500 is per stream, so a reply
    holds up to 500 entries of each), one XACK per stream in the reply."""
    if args.cluster:
        raise BenchError("the redis-py loop reads all streams in one command: not on a cluster")
    client = redis.Redis.from_url(args.url)
    client.ping()  # connect outside the window, as rstream connects before its first read
    connection = client.connection_pool.get_connection()
    parser = type(getattr(connection, "_parser", None)).__name__
    client.connection_pool.release(connection)
    streams = {stream: ">" for stream in args.streams}
    acked = 0
    deadline = time.monotonic() + args.timeout
    window.open()
    while acked < args.count:
        if time.monotonic() > deadline:
            raise BenchError(f"redis-py loop acked {acked} of {args.count} in {args.timeout} s")
        reply: Any = client.xreadgroup(args.group, "bench-redis-py", streams,
                                       count=BATCH, block=READ_BLOCK_MS)  # RESP2: [[key, entries]]
        for key, entries in reply or ():
            for entry in entries:
                handler(entry)
            acked += client.xack(key, args.group, *[entry[0] for entry in entries])
    window.close()
    client.close()
    return {"parser": parser}


def drain_walrus(args: argparse.Namespace, handler: Handler, window: Window) -> Dict[str, Any]:
    """walrus's ConsumerGroup, used as its documentation shows: read(count), then ack(*ids)."""
    import walrus  # type: ignore[import-untyped]

    if args.cluster or len(args.streams) != 1:
        raise BenchError("the walrus variant drains one stream of one server")
    db = walrus.Database.from_url(args.url)
    group = db.consumer_group(args.group, args.streams, consumer="bench-walrus")
    stream = group.streams[args.streams[0]]
    db.ping()
    acked = 0
    deadline = time.monotonic() + args.timeout
    window.open()
    while acked < args.count:
        if time.monotonic() > deadline:
            raise BenchError(f"walrus acked {acked} of {args.count} in {args.timeout} s")
        for _key, messages in group.read(count=BATCH, block=READ_BLOCK_MS) or []:
            for message in messages:
                handler(message)
            if messages:
                acked += stream.ack(*[message_id for message_id, _ in messages])
    window.close()
    return {"walrus": walrus.__version__}


def drain_c(args: argparse.Namespace, handler: Handler, window: Window) -> Dict[str, Any]:
    """The C consumer (bench/c_consumer.c): its own wall time and CPU replace this process's;
    the window here only brackets it for the server's CPU and commandstats."""
    if args.c_binary is None or args.cluster or len(args.streams) != 1:
        raise BenchError("the C consumer needs --c-binary and drains one stream of one server")
    where = window.probe.connection_pool.connection_kwargs
    command = [args.c_binary, str(where["host"]), str(where["port"]), args.streams[0], args.group,
               "bench-c", str(args.count), str(args.timeout), str(args.c_spin_ns)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ready = proc.stdout.readline().strip()
        if ready != READY_MARK:  # it failed to connect: its stderr says why
            stdout, stderr = proc.communicate(timeout=30)
            return parse_result("c_consumer", proc.returncode, ready + stdout, stderr)
        window.open()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        stdout, stderr = proc.communicate(timeout=args.timeout + 30)
        window.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    own = parse_result("c_consumer", proc.returncode, stdout, stderr)
    own["window_seconds"] = window.t1 - window.t0  # the handshake included: the server idles in it
    return own


DRAINERS: Dict[str, Callable[[argparse.Namespace, Handler, Window], Dict[str, Any]]] = {
    "rstream": drain_rstream,
    "redis-py": drain_redis_py,
    "walrus": drain_walrus,
    "c-consumer": drain_c,
}


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__)
    parser.add_argument("variant", choices=sorted(DRAINERS))
    parser.add_argument("--url", required=True)
    parser.add_argument("--stream", dest="streams", action="append", required=True,
                        help="repeat for several streams (group G on each)")
    parser.add_argument("--group", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--sleep-ms", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--cluster", action="store_true", help="--url is a Redis Cluster node")
    parser.add_argument("--c-binary", help="the built C consumer (c-consumer variant)")
    parser.add_argument("--c-spin-ns", type=float, default=0.0,
                        help="the C consumer's handler spins this long per entry (a control)")
    return parser.parse_args(argv)


def make_probe(args: argparse.Namespace) -> Tuple[Any, List[redis.Redis]]:
    """The client that asks about pending entries, and one client per server whose CPU counts
    (every master of a cluster)."""
    if not args.cluster:
        probe = redis.Redis.from_url(args.url)
        return probe, [probe]
    cluster = RedisCluster.from_url(args.url)
    return cluster, [node.redis_connection for node in cluster.get_primaries()]


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    probe, servers = make_probe(args)
    rss_before = rss_mb()
    window = Window(probe, servers)
    extra = DRAINERS[args.variant](args, make_handler(args.sleep_ms), window)
    left = pending(probe, args)
    if left:
        raise BenchError(f"{args.variant}: {left} entries still pending after the drain")
    # The C consumer's own timing and CPU (in `extra`) replace this process's.
    result = {"variant": args.variant, "streams": len(args.streams), **window.result(args.count),
              "rss_before_mb": rss_before, "peak_rss_mb": peak_rss_mb(), **extra}
    if args.variant == "c-consumer":  # and this wrapper's memory is not the C process's
        result["server_busy"] = result["server_cpu_s"] / result["seconds"]
        del result["rss_before_mb"], result["peak_rss_mb"]
    if "first_delivery_s" in extra:  # the rate without rstream's startup (threads, connections)
        result["rate_from_first_delivery"] = args.count / (window.t1 - window.t0 - extra["first_delivery_s"])
    emit(result)


if __name__ == "__main__":
    main()
