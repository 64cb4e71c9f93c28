"""Fixtures for the tier of tests that runs against real servers started on free ports.

Each test gets its own server process: tests kill, restart and flush servers, and a shared one
would let one test's chaos leak into the next. A server starts in about 10 ms, so this is cheap.
Pick the server with RSTREAM_REDIS_SERVER=/path/to/redis-server (see `rstream.embedded`).
"""
from __future__ import annotations

import dataclasses
import signal
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Union

import pytest
import redis

from helpers import SpawnedProcess, spawn_consumer, unique_name
# Fixtures every test module may use: TLS certificates and server, a Redis Sentinel.
from sentinelkit import sentinel  # noqa: F401
from tlskit import certs, tls_server  # noqa: F401
import rstream
from rstream.embedded import EmbeddedServer, find_server_binary, server_version


def _hot_path() -> str:
    try:
        from rstream._hotpath import IMPLEMENTATION  # the package may not build yet

        return str(IMPLEMENTATION)
    except Exception:  # noqa: BLE001 - a header line must never break collection
        return "unknown"


def pytest_report_header(config: pytest.Config) -> List[str]:
    try:
        binary = find_server_binary()
        name, version = server_version(binary)
        server = f"{name}-{'.'.join(map(str, version))} ({binary})"
    except Exception as exc:  # noqa: BLE001 - report the problem, let the tests fail on it
        server = f"none: {exc}"
    return [f"rstream: server {server}; hot path {_hot_path()}"]


@pytest.fixture
def redis_server() -> Iterator[EmbeddedServer]:
    """A fresh server for this test only; closed (process and data dir) afterwards."""
    server = EmbeddedServer(find_server_binary())
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: EmbeddedServer) -> str:
    return redis_server.url


@pytest.fixture
def r(redis_server: EmbeddedServer) -> Iterator[redis.Redis]:
    """A plain client (bytes replies) for setting up and checking state behind rstream's back."""
    client = redis_server.client(decode_responses=False)
    try:
        yield client
    finally:
        client.close()


@dataclasses.dataclass(frozen=True)
class StreamNames:
    """Unique names for one test; `new(prefix)` gives more."""

    stream: str = dataclasses.field(default_factory=lambda: unique_name("stream"))
    group: str = dataclasses.field(default_factory=lambda: unique_name("group"))
    consumer: str = dataclasses.field(default_factory=lambda: unique_name("consumer"))
    dead_letter: str = dataclasses.field(default_factory=lambda: unique_name("dead"))

    @staticmethod
    def new(prefix: str) -> str:
        return unique_name(prefix)


@pytest.fixture
def stream_names() -> StreamNames:
    return StreamNames()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., SpawnedProcess]]:
    """`spawn_consumer` whose children are SIGKILLed at teardown if still running, with their
    output logged under tmp_path (printed by pytest for a failing test via the report)."""
    children: list[SpawnedProcess] = []

    def start(source: Union[str, Path], *args: str, **kwargs: Any) -> SpawnedProcess:
        kwargs.setdefault("log_path", tmp_path / f"child-{len(children) + 1}.log")
        child = spawn_consumer(source, *args, **kwargs)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass
    for child in children:
        print(f"--- child {child.args[1:3]} exit {child.returncode} ---\n{child.output()[-4000:]}")


@pytest.fixture
def consumer_defaults() -> Dict[str, Any]:
    """Options every consumer `make_consumer` builds gets; a test module overrides this fixture
    to change them. Short intervals keep the suite fast; make_stream lets tests add entries
    after start() while the group is created at "$"."""
    return dict(receive_interval=100, heartbeat_interval=100, make_stream=True)


@pytest.fixture
def make_consumer(redis_url: str, stream_names: StreamNames,
                  consumer_defaults: Dict[str, Any]) -> Iterator[Callable[..., rstream.Consumer]]:
    """Consumers on this test's server and names; stopped at teardown."""
    made: List[rstream.Consumer] = []

    def make(**overrides: Any) -> rstream.Consumer:
        kwargs: Dict[str, Any] = dict(redis=redis_url, stream=stream_names.stream,
                                      group=stream_names.group,
                                      consumer_name=stream_names.consumer, **consumer_defaults)
        kwargs.update(overrides)
        consumer = rstream.Consumer(**kwargs)
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.stop(timeout=5)


@pytest.fixture
def consumers() -> Iterator[List[rstream.Consumer]]:
    """Consumers a test makes (see faultkit.new_consumer); stopped at teardown even when the
    test fails."""
    made: List[rstream.Consumer] = []
    yield made
    for consumer in made:
        consumer.stop(5.0)
