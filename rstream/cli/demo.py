"""`rstream demo`: publishes entries and drains them with a Consumer, printing the throughput.

With no ``--redis`` the demo starts a throwaway server (`rstream.embedded`), so
``pip install -e '.[test]' && rstream demo`` works on a machine with no Redis installed.
Expected faults (bad URL, unreachable server, no server binary) end with one line on stderr
and exit code 1, not a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Dict, List, Optional

import redis

from .._hotpath import IMPLEMENTATION
from ..clients import client_from_option, redact
from ..consumer import Consumer
from ..producer import Producer
from ..embedded import EmbeddedServer
from ..errors import ConfigError, RStreamError
from ..message import Message
from ..options import DEFAULT_BATCH_SIZE, DEFAULT_CONCURRENCY
from .common import EXIT_FAILED, EXIT_OK, positive_int
from .progress import Progress

DEFAULT_COUNT = 100_000
DEFAULT_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.1                  # how often the drain wait looks for a fatal consumer error
NO_EXTENSIONS_ENV = "RSTREAM_NO_EXTENSIONS"
_PAYLOAD = b"x" * 60          # with the other two fields: 3 fields, 98 bytes of keys and values


class DemoError(RStreamError):
    """An expected failure of the demo, reported as one line."""


@dataclasses.dataclass(frozen=True)
class DemoResult:
    handled: int
    drain_s: float
    ok: bool


def register(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    demo = commands.add_parser(
        "demo", help="publish entries and consume them, printing the throughput",
        description="Publish --count entries (3 fields, ~100 B) and drain them with a Consumer. "
                    "Without --redis a throwaway server is started and removed afterwards.")
    demo.add_argument("--redis", metavar="URL",
                      help="server to use (redis://host:port/db); default: an embedded server")
    demo.add_argument("--count", type=positive_int, default=DEFAULT_COUNT,
                      help=f"entries to publish and consume (default {DEFAULT_COUNT})")
    demo.add_argument("--concurrency", type=positive_int, default=DEFAULT_CONCURRENCY,
                      help=f"handler threads (default {DEFAULT_CONCURRENCY})")
    demo.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                      help=f"largest COUNT of one read (default {DEFAULT_BATCH_SIZE})")
    demo.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                      help=f"fail if not all entries are handled by then (default {DEFAULT_TIMEOUT_S:g})")
    demo.add_argument("--no-extensions", action="store_true",
                      help=f"use the pure-Python hot path (same as {NO_EXTENSIONS_ENV}=1)")
    demo.set_defaults(run=_demo_command)


def _demo_command(args: argparse.Namespace, argv: List[str]) -> int:
    if args.no_extensions and IMPLEMENTATION != "python":
        # The hot path is chosen once, at import time: only a fresh interpreter can switch it.
        env = {**os.environ, NO_EXTENSIONS_ENV: "1"}
        rest = [a for a in argv if a != "--no-extensions"]
        return subprocess.call([sys.executable, "-m", "rstream", *rest], env=env)
    server: Optional[EmbeddedServer] = None
    url = args.redis
    if url is None:
        server = EmbeddedServer().start()
        url = server.url
        print(f"started embedded server {server.binary} on port {server.port}")
    try:
        result = _demo(url, args)
    finally:
        if server is not None:
            server.close()
    return EXIT_OK if result.ok else EXIT_FAILED


def _connect(url: str) -> redis.Redis:
    """A checked client, or a DemoError saying what is wrong with the URL or the server."""
    try:
        client: redis.Redis = client_from_option(url)
    except ConfigError as exc:
        raise DemoError(f"--redis: {exc}") from None
    try:
        client.ping()
    except redis.ConnectionError as exc:
        raise DemoError(f"cannot reach Redis at {redact(url)}: {exc}") from None
    return client


def _server_label(client: redis.Redis) -> str:
    try:
        info: Dict[str, Any] = client.info("server")
    except redis.ResponseError:
        return "unknown (INFO refused)"
    if "valkey_version" in info:  # Valkey reports redis_version 7.2.4 for compatibility
        return f"valkey {info['valkey_version']}"
    return f"redis {info.get('redis_version', '?')}"


def _demo(url: str, args: argparse.Namespace) -> DemoResult:
    client = _connect(url)
    stream = f"rstream-demo-{uuid.uuid4().hex[:8]}"
    print(f"server: {_server_label(client)} at {redact(url)}")
    print(f"hot path: {IMPLEMENTATION}")
    try:
        _publish(client, stream, args.count)
        return _drain(url, stream, args)
    finally:
        client.delete(stream)  # the group goes with the stream
        client.close()


def _publish(client: redis.Redis, stream: str, count: int) -> None:
    started = time.perf_counter()
    Producer(client, stream).send_many(
        {b"order": b"%010d" % i, b"customer": b"c-%06d" % (i % 1_000_000), b"payload": _PAYLOAD}
        for i in range(count))
    elapsed = time.perf_counter() - started
    print(f"published {count:,} entries (3 fields, ~100 B) in {elapsed:.2f} s: "
          f"{count / elapsed:,.0f} entries/s")


def _drain(url: str, stream: str, args: argparse.Namespace) -> DemoResult:
    """Consume the whole stream from id 0 and time it until the last entry was handled."""
    done = threading.Event()
    lock = threading.Lock()
    handled = 0

    def handle(message: Message) -> None:
        nonlocal handled
        with lock:
            handled += 1
            if handled == args.count:
                done.set()

    consumer = Consumer(redis=url, stream=stream, group="rstream-demo", consumer_name="demo-1",
                        group_start_id="0", concurrency=args.concurrency, batch_size=args.batch_size)
    progress = Progress(args.count, sys.stdout)
    started = time.perf_counter()
    consumer.start(handle)
    try:
        deadline = time.monotonic() + args.timeout
        while not done.wait(POLL_S) and consumer.error is None and time.monotonic() < deadline:
            progress.show(handled)
        elapsed, handled_in_time = time.perf_counter() - started, handled
        progress.show(handled_in_time, final=True)
    finally:
        consumer.stop(STOP_TIMEOUT_S)
    result = DemoResult(handled=handled_in_time, drain_s=elapsed, ok=done.is_set())
    _report(result, consumer, args)
    return result


def _report(result: DemoResult, consumer: Consumer, args: argparse.Namespace) -> None:
    stats = consumer.stats()
    print(f"drain throughput: {result.handled / result.drain_s:,.0f} entries/s "
          f"({result.handled:,} entries handled in {result.drain_s:.2f} s; "
          f"concurrency {args.concurrency}, batch_size {args.batch_size})")
    print("stats: " + " ".join(f"{k}={v}" for k, v in dataclasses.asdict(stats).items()))
    if consumer.error is not None:
        print(f"rstream: error: the consumer stopped: {consumer.error}", file=sys.stderr)
    elif not result.ok:
        print(f"rstream: error: only {result.handled:,} of {args.count:,} entries were handled "
              f"within {args.timeout:g} s", file=sys.stderr)
    elif stats.acked != args.count:
        print(f"rstream: warning: {stats.acked:,} of {args.count:,} entries acknowledged at stop",
              file=sys.stderr)
