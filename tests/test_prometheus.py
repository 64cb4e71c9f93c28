"""`rstream.prometheus`: the scrape of `RStreamCollector` says what `stats()` says, with the
SPEC's names and labels; `MultiprocessExporter` lets any process of a pre-forking server scrape
every worker's numbers through prometheus-client's multiprocess mode, and forgets a dead
worker's gauges once it is marked dead. Real servers, real prometheus-client, real processes."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

import rstream
from helpers import REPO_ROOT, SpawnedProcess, add_entries, unique_name, wait_until
from rstream.prometheus import (METRICS, UP, Instruments, Mirror, MultiprocessExporter,
                                RStreamCollector)

DEADLINE_S = 15.0
SPEC_COUNTERS = ("rstream_delivered_total", "rstream_acked_total", "rstream_failed_total",
                 "rstream_retried_total", "rstream_claimed_total", "rstream_dead_lettered_total")
SPEC_GAUGES = ("rstream_in_flight", "rstream_pending", "rstream_lag",
               "rstream_oldest_pending_age_seconds")
EXTRA_COUNTERS = ("rstream_dropped_total", "rstream_deleted_total", "rstream_replayed_total",
                  "rstream_group_recreated_total", "rstream_outages_total")
EXTRA_GAUGES = ("rstream_waiting_retries", "rstream_backlog_sample_age_seconds", "rstream_up")
CONSUMER_WIDE = ("rstream_outages_total", "rstream_up")
FAST: Any = dict(receive_interval=100, heartbeat_interval=100, make_stream=True)

Labels = FrozenSet[Tuple[str, str]]
Scrape = Dict[Tuple[str, Labels], float]


@dataclasses.dataclass
class Parsed:
    """A scrape: every sample by (name, labels), and each family's type by sample name."""

    values: Scrape
    types: Dict[str, str]

    def of(self, name: str, **labels: str) -> Optional[float]:
        return self.values.get((name, frozenset(labels.items())))

    def where(self, name: str, **labels: str) -> Dict[Labels, float]:
        """The samples of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return {key: value for (n, key), value in self.values.items() if n == name and wanted <= key}

    def total(self, name: str, **labels: str) -> float:
        return sum(self.where(name, **labels).values())


def parse(text: str) -> Parsed:
    values: Scrape = {}
    types: Dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
            types[sample.name] = family.type
    return Parsed(values, types)


def scrape(*collectors: Any) -> Parsed:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return parse(generate_latest(registry).decode())


def server_has_lag(r: redis.Redis) -> bool:
    info = r.info("server")
    return "valkey_version" in info or int(str(info["redis_version"]).split(".")[0]) >= 7


def add_old(r: redis.Redis, stream: str, count: int, age_ms: int) -> None:
    """`count` entries with ids `age_ms` in the past by the server's clock."""
    now_s, now_us = r.time()
    base = now_s * 1000 + now_us // 1000 - age_ms
    for n in range(count):
        r.xadd(stream, {"n": n}, id=f"{base}-{n + 1}")


def test_every_stats_field_is_exported() -> None:
    """A field added to Stats without a metric fails here; the SPEC names are all there."""
    exported = {spec.field for spec in METRICS}
    assert exported == {f.name for f in dataclasses.fields(rstream.Stats)}
    names = {spec.name for spec in (*METRICS, UP)}
    assert names == {*SPEC_COUNTERS, *SPEC_GAUGES, *EXTRA_COUNTERS, *EXTRA_GAUGES}


def test_the_scrape_has_the_spec_names_labels_and_the_values_of_stats(r: redis.Redis, redis_url: str) -> None:
    """10 entries: one fails on both its attempts (dead-lettered), one fails once (retried, then
    acked). Once idle, every sample of the scrape equals its stats() field, labelled stream,
    group, consumer; counters are typed counter, the rest gauge."""
    stream, group, name, dead = (unique_name(p) for p in ("st", "g", "c", "dead"))

    def handle(message: rstream.Message) -> None:
        n = message.fields[b"n"]
        if n == b"3" or (n == b"5" and message.attempt == 1):
            raise ValueError(f"entry {n!r} fails")

    with rstream.Consumer(redis_url, stream, group, name, max_attempts=2, dead_letter_stream=dead,
                          **FAST) as consumer:
        consumer.start(handle)
        add_entries(r, stream, 10)
        wait_until(lambda: consumer.stats().acked == 10 and consumer.stats().pending == 0,
                   DEADLINE_S, message=str(consumer.stats()))
        parsed = scrape(RStreamCollector(consumer))
        stats = consumer.stats(stream=stream)

    assert (stats.delivered, stats.failed, stats.retried, stats.dead_lettered) == (12, 3, 2, 1)
    labels = dict(stream=stream, group=group, consumer=name)
    for spec in METRICS:
        if spec.name in CONSUMER_WIDE:
            continue
        exported = parsed.of(spec.name, **labels)
        expected = spec.value(stats)
        assert exported is not None and expected is not None, spec.name
        if spec.name == "rstream_backlog_sample_age_seconds":  # the reaper may look in between
            assert 0 <= exported < DEADLINE_S
        else:
            assert exported == expected, spec.name
    assert parsed.of("rstream_oldest_pending_age_seconds", **labels) == 0.0  # nothing pending
    assert parsed.of("rstream_outages_total", group=group, consumer=name) == 0
    assert parsed.of("rstream_up", group=group, consumer=name) == 1
    assert set(parsed.types) == {*SPEC_COUNTERS, *SPEC_GAUGES, *EXTRA_COUNTERS, *EXTRA_GAUGES}
    assert {n for n, t in parsed.types.items() if t == "counter"} == {*SPEC_COUNTERS, *EXTRA_COUNTERS}
    assert all(key == frozenset(labels.items()) for n, key in parsed.values if n not in CONSUMER_WIDE)


def test_backlog_gauges_appear_once_sampled(r: redis.Redis, redis_url: str) -> None:
    """Before the reaper's first look pending, lag and the ages are left out (not 0, not NaN);
    then in_flight, pending, lag (where the server says it) and the oldest age are the group's.
    rstream_up is 0 before start and after stop."""
    stream, release = unique_name("st"), threading.Event()
    add_old(r, stream, 50, age_ms=60_000)
    consumer = rstream.Consumer(redis_url, stream, "g", "c1", group_start_id="0", max_in_flight=10,
                                batch_size=10, **FAST)
    collector = RStreamCollector(consumer)
    before = scrape(collector)
    assert before.of("rstream_up", group="g", consumer="c1") == 0
    assert before.of("rstream_in_flight", stream=stream, group="g", consumer="c1") == 0
    for absent in ("rstream_pending", "rstream_lag", "rstream_oldest_pending_age_seconds",
                   "rstream_backlog_sample_age_seconds"):
        assert not before.where(absent), absent
    try:
        consumer.start(lambda m: release.wait(DEADLINE_S))
        wait_until(lambda: consumer.stats().pending == 10, DEADLINE_S, message=str(consumer.stats()))
        during = scrape(collector)
    finally:
        release.set()
        consumer.stop(5)
    labels = dict(stream=stream, group="g", consumer="c1")
    assert during.of("rstream_in_flight", **labels) == 10
    assert during.of("rstream_pending", **labels) == 10
    assert during.of("rstream_lag", **labels) == (40 if server_has_lag(r) else None)
    oldest = during.of("rstream_oldest_pending_age_seconds", **labels)
    assert oldest is not None and 60 <= oldest < 120
    assert during.of("rstream_up", group="g", consumer="c1") == 1
    assert scrape(collector).of("rstream_up", group="g", consumer="c1") == 0


def test_two_streams_give_two_label_sets(r: redis.Redis, redis_url: str) -> None:
    """With streams=[a, b] each stream has its own series; the consumer-wide ones have none."""
    a, b = unique_name("a"), unique_name("b")
    with rstream.Consumer(redis_url, streams=[a, b], group="g", consumer_name="c1", **FAST) as consumer:
        consumer.start(lambda m: None)
        add_entries(r, a, 3)
        add_entries(r, b, 5)
        wait_until(lambda: consumer.stats().acked == 8, DEADLINE_S, message=str(consumer.stats()))
        parsed = scrape(RStreamCollector(consumer))
    assert parsed.where("rstream_delivered_total") == {
        frozenset(dict(stream=a, group="g", consumer="c1").items()): 3,
        frozenset(dict(stream=b, group="g", consumer="c1").items()): 5}
    assert len(parsed.where("rstream_in_flight")) == 2
    assert list(parsed.where("rstream_outages_total")) == [frozenset(dict(group="g", consumer="c1").items())]


def test_one_collector_per_registry_and_no_series_twice(redis_url: str) -> None:
    """A second collector in a registry is refused by prometheus-client; one collector takes
    several consumers (one series set each) but not two with the same group and name."""
    one = rstream.Consumer(redis_url, unique_name("s"), "g", "c1")
    two = rstream.Consumer(redis_url, unique_name("s"), "g", "c2")
    registry = CollectorRegistry()
    registry.register(RStreamCollector(one))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(RStreamCollector(two))
    both = scrape(RStreamCollector(one, two))
    assert {dict(key)["consumer"] for key in both.where("rstream_up")} == {"c1", "c2"}
    same_name = rstream.Consumer(redis_url, unique_name("s"), "g", "c1")
    for pair in ((one, one), (one, same_name)):
        with pytest.raises(rstream.ConfigError, match="would export the same series"):
            RStreamCollector(*pair)


def test_a_consumer_forked_away_scrapes_as_down_without_breaking_the_scrape(r: redis.Redis,
                                                                           redis_url: str) -> None:
    """In a child forked from a process whose consumer runs, the scrape still answers: up 0,
    nothing else for that consumer (its numbers are in the parent)."""
    stream = unique_name("st")
    with rstream.Consumer(redis_url, stream, "g", "c1", **FAST) as consumer:
        consumer.start(lambda m: None)
        collector = RStreamCollector(consumer)
        child = in_forked_child(lambda: generate_latest(_registry_of(collector)).decode())
        assert scrape(collector).of("rstream_up", group="g", consumer="c1") == 1
    parsed = parse(child)
    assert parsed.values == {("rstream_up", frozenset(dict(group="g", consumer="c1").items())): 0}


def _registry_of(collector: RStreamCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def in_forked_child(work: Callable[[], str], timeout: float = DEADLINE_S) -> str:
    """What `work` returns in a forked child (which leaves with os._exit, never through pytest)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            os.write(write_fd, json.dumps(work()).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks: List[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    return str(json.loads(b"".join(chunks)))


def test_the_mirror_grows_counters_by_deltas_and_marks_a_lost_gauge_nan() -> None:
    """The exporter's copy: a counter grows by what stats() grew; a gauge known once and then
    unknown (lag on Redis 6.2 mid-stream) becomes NaN, since multiprocess files cannot drop it."""
    by_name = {spec.name: spec for spec in (*METRICS, UP)}
    registry = CollectorRegistry()
    mirror = Mirror(Instruments.make(registry))
    labels = ("s", "g", "c")
    mirror.copy([(by_name["rstream_delivered_total"], labels, 3.0), (by_name["rstream_lag"], labels, 5.0)])
    mirror.copy([(by_name["rstream_delivered_total"], labels, 7.0)])
    parsed = parse(generate_latest(registry).decode())
    assert parsed.of("rstream_delivered_total", stream="s", group="g", consumer="c") == 7
    lag = parsed.of("rstream_lag", stream="s", group="g", consumer="c")
    assert lag is not None and math.isnan(lag)


def test_the_exporter_refuses_to_run_outside_multiprocess_mode(redis_url: str) -> None:
    """This test process imported prometheus_client without PROMETHEUS_MULTIPROC_DIR: the
    exporter says so instead of writing values no scrape would see."""
    consumer = rstream.Consumer(redis_url, unique_name("s"), "g", "c1")
    with pytest.raises(rstream.ConfigError, match="PROMETHEUS_MULTIPROC_DIR"):
        MultiprocessExporter(consumer)
    with pytest.raises(rstream.ConfigError, match="interval_s"):
        MultiprocessExporter(consumer, interval_s=0)


def test_without_prometheus_client_the_import_error_names_the_extra() -> None:
    """`import rstream.prometheus` without prometheus-client says which extra to install."""
    code = "import sys; sys.modules['prometheus_client'] = None; import rstream.prometheus"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 1
    assert "ImportError: rstream.prometheus needs prometheus-client: pip install 'rstream-redis[prometheus]'" \
        in done.stderr


WORKER = """
import os, signal, sys, threading
import rstream
from rstream.prometheus import MultiprocessExporter

url, stream, group, name, interval_s = sys.argv[1:6]
release, stop = threading.Event(), threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())

def handle(message):
    if b"hold" in message.fields:
        release.wait(30)

consumer = rstream.Consumer(url, stream, group, name, group_start_id="0", receive_interval=100,
                            heartbeat_interval=100, max_in_flight=2, batch_size=2)
consumer.start(handle)
exporter = MultiprocessExporter(consumer, interval_s=float(interval_s)).start()
try:
    MultiprocessExporter(consumer).start()
except rstream.ConfigError as exc:
    print("second exporter refused:", exc)
print("ready", os.getpid())
while not stop.wait(0.1):
    pass
release.set()
consumer.stop(10)
exporter.stop()
print("stopped")
"""


def start_worker(spawn: Callable[..., SpawnedProcess], directory: Path, *args: str,
                 interval_s: float) -> SpawnedProcess:
    """A WORKER process exporting into `directory`, once it is ready."""
    child = spawn(WORKER, *args, str(interval_s), env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    wait_until(lambda: "ready" in child.output() or child.poll() is not None, DEADLINE_S)
    assert "second exporter refused: another MultiprocessExporter" in child.output(), child.output()
    return child


def merged_scrape(directory: Path) -> Parsed:
    """A scrape as any worker of a multiprocess server serves it."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return parse(generate_latest(registry).decode())


def multiprocess_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    return directory


def test_the_exporters_stop_copies_the_last_counts(r: redis.Redis, redis_url: str, tmp_path: Path,
                                                   spawn: Callable[..., SpawnedProcess]) -> None:
    """An exporter whose thread never ticks (interval of an hour): what the consumer did after
    start() reaches the files only through stop()'s last copy, after consumer.stop()."""
    directory, stream, group = multiprocess_dir(tmp_path), unique_name("mp"), unique_name("g")
    r.xgroup_create(stream, group, id="0", mkstream=True)
    child = start_worker(spawn, directory, redis_url, stream, group, "w1", interval_s=3600)
    last = add_entries(r, stream, 5)[-1]
    wait_until(lambda: all_acked(r, stream, group, last), DEADLINE_S)
    assert merged_scrape(directory).total("rstream_acked_total") == 0
    child.send_signal(signal.SIGTERM)
    assert child.wait(DEADLINE_S) == 0, child.output()
    after = merged_scrape(directory)
    assert after.total("rstream_acked_total") == after.total("rstream_delivered_total") == 5


def all_acked(r: redis.Redis, stream: str, group: str, last_id: str) -> bool:
    [found] = [g for g in r.xinfo_groups(stream) if g["name"].decode() == group]
    return bool(found["last-delivered-id"].decode() == last_id and found["pending"] == 0)


def test_multiprocess_scrape_sums_workers_and_forgets_a_dead_ones_gauges(
        r: redis.Redis, redis_url: str, tmp_path: Path, spawn: Callable[..., SpawnedProcess]) -> None:
    """Two worker processes in one group, each with its exporter; a MultiProcessCollector scrape
    here sums their counters. One is SIGKILLed holding 2 entries and a successor takes its name:
    its in-flight share stays in the sum (livesum) until mark_process_dead, then only the
    successor's counts; the counters keep every process's counts, so after a clean stop acked
    equals the entries added and delivered adds the 2 delivered twice."""
    directory, stream, group = multiprocess_dir(tmp_path), unique_name("mp"), unique_name("g")
    add_entries(r, stream, 20)

    def worker(name: str) -> SpawnedProcess:
        return start_worker(spawn, directory, redis_url, stream, group, name, interval_s=0.05)

    def merged() -> Parsed:
        return merged_scrape(directory)

    def in_flight(name: str) -> Optional[float]:
        return merged().of("rstream_in_flight", stream=stream, group=group, consumer=name)

    first, second = worker("w1"), worker("w2")
    wait_until(lambda: merged().total("rstream_acked_total") == 20, DEADLINE_S, message=str(merged().values))
    assert merged().total("rstream_delivered_total", stream=stream, group=group) == 20
    add_entries(r, stream, 4, {b"hold": b"1"})  # each worker may hold 2: both hold 2
    wait_until(lambda: in_flight("w1") == 2 and in_flight("w2") == 2, DEADLINE_S, message=str(merged().values))
    assert merged().of("rstream_up", group=group, consumer="w1") == 1

    first.send_signal(signal.SIGKILL)
    first.wait(DEADLINE_S)
    successor = worker("w1")  # replays w1's 2 pending entries: holds them again
    wait_until(lambda: in_flight("w1") == 4, DEADLINE_S, message=str(merged().values))
    mark_process_dead(first.pid, str(directory))
    assert in_flight("w1") == 2 and in_flight("w2") == 2
    assert merged().total("rstream_delivered_total") == 26

    for child in (second, successor):
        child.send_signal(signal.SIGTERM)
    for child in (second, successor):
        assert child.wait(DEADLINE_S) == 0, child.output()
        assert "stopped" in child.output()
    final = merged()
    assert final.total("rstream_acked_total") == 24
    assert final.total("rstream_delivered_total") == 26
    assert final.of("rstream_up", group=group, consumer="w2") == 0
