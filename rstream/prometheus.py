"""Prometheus metrics from `Consumer.stats()` (the optional extra ``prometheus``: prometheus-client).

Two ways to export, from one table of metrics (`METRICS`):

- `RStreamCollector(consumer, ...)`: a custom collector that reads `stats(stream=s)` of each
  stream when scraped. One process serves its own numbers (Flask, a plain worker,
  `prometheus_client.start_http_server`).
- `MultiprocessExporter(consumer, ...)`: for gunicorn and other pre-forking servers, where the
  scrape is answered by whichever worker gets the request. prometheus-client's multiprocess
  mode keeps each process's values in files under ``PROMETHEUS_MULTIPROC_DIR`` and
  `prometheus_client.multiprocess.MultiProcessCollector` merges them; a custom collector has no
  file, so this exporter copies the stats into multiprocess-mode counters and gauges, on a
  thread of its own (``rstream-prometheus``) every `interval_s`.

A gauge whose value rstream does not know (`pending` and `lag` before the reaper's first look
at the group, `lag` on Redis 6.2 mid-stream) is left out of the scrape rather than exported as 0
(a lie) or NaN (which turns every `sum()` over it into NaN). The multiprocess files cannot take
a sample back, so there a gauge that was known and becomes unknown is set to NaN. The age of
the oldest pending entry is 0 when the group is known to have nothing pending.

Sends no Redis command: `stats()` reads what the consumer's threads already hold.
"""
from __future__ import annotations

import dataclasses
import math
import os
import threading
from typing import Dict, Iterator, List, Literal, Optional, Sequence, Set, Tuple, Union

try:
    import prometheus_client
    from prometheus_client import values as _values
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import CollectorRegistry
except ImportError:
    raise ImportError("rstream.prometheus needs prometheus-client: "
                      "pip install 'rstream-redis[prometheus]'") from None

from .consumer import Consumer
from .errors import ConfigError
from .stats import Stats

STREAM_LABELS = ("stream", "group", "consumer")
CONSUMER_LABELS = ("group", "consumer")
DEFAULT_INTERVAL_S = 1.0
MS_PER_S = 1000.0
GaugeMode = Literal["livesum", "livemax", "livemin"]


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One exported metric: the `Stats` field it reads and, for a gauge, how the multiprocess
    files merge it across processes (`mode`: always a "live" one, so that `mark_process_dead`
    takes a dead process's share away; None for a counter, which the files sum, dead
    processes included, so that it never goes down)."""

    name: str
    field: str
    help: str
    mode: Optional[GaugeMode] = None
    per_stream: bool = True    # labelled STREAM_LABELS; else CONSUMER_LABELS
    scale: float = 1.0

    def value(self, stats: Stats) -> Optional[float]:
        raw = getattr(stats, self.field)
        if raw is None and self.field == "oldest_pending_age_ms" and stats.pending == 0:
            return 0.0  # known: nothing is pending
        return None if raw is None else raw * self.scale


def _counter(field: str, help: str, per_stream: bool = True) -> MetricSpec:
    return MetricSpec(f"rstream_{field}_total", field, help, per_stream=per_stream)


# in_flight and waiting_retries belong to a process: summed over live ones. pending, lag and the
# ages describe the group, the same from whichever process looked: the largest (for pending and
# lag, the worst case while a name moves from a dying process to its successor), and the
# freshest look for the sample's age.
METRICS: Tuple[MetricSpec, ...] = (
    _counter("delivered", "Entries handed to the handler (first deliveries, retries and claims)."),
    _counter("acked", "Entries acknowledged by the server (successes and settled failures)."),
    _counter("failed", "Handler calls that raised."),
    _counter("retried", "Entries delivered again for a retry."),
    _counter("claimed", "Entries taken over from dead consumers."),
    _counter("dead_lettered", "Entries moved to the dead-letter stream."),
    _counter("dropped", "Entries that failed on their last attempt with no dead-letter stream."),
    _counter("deleted", "Pending entries whose stream entry was deleted or trimmed: acked, not handled."),
    _counter("replayed", "This consumer's own pending entries delivered again."),
    _counter("group_recreated", "Times the consumer group had to be created again."),
    # Counted once for the consumer (per server, not per stream): stats(stream=s) carries the
    # consumer's total in every stream's numbers, so a stream label would count it once per stream.
    _counter("outages", "Times a server became unreachable.", per_stream=False),
    MetricSpec("rstream_in_flight", "in_flight",
               "Entries read whose handler has not finished.", "livesum"),
    MetricSpec("rstream_waiting_retries", "waiting_retries",
               "Failed entries waiting for their retry.", "livesum"),
    MetricSpec("rstream_pending", "pending",
               "Entries delivered to the group and not acked (all consumers), as last sampled.",
               "livemax"),
    MetricSpec("rstream_lag", "lag",
               "Entries not yet delivered to the group, as last sampled.", "livemax"),
    MetricSpec("rstream_oldest_pending_age_seconds", "oldest_pending_age_ms",
               "Age of the group's oldest pending entry (server clock), as last sampled.",
               "livemax", scale=1 / MS_PER_S),
    MetricSpec("rstream_backlog_sample_age_seconds", "sampled_age_ms",
               "How long ago pending, lag and the oldest age were sampled.", "livemin",
               scale=1 / MS_PER_S),
)
UP = MetricSpec("rstream_up", "", "1 while the consumer is running, else 0.", "livemax",
                per_stream=False)
ALL_METRICS = (*METRICS, UP)

Sample = Tuple[MetricSpec, Tuple[str, ...], float]


def samples(consumer: Consumer) -> Iterator[Sample]:
    """What `consumer` reports now: each metric with its label values and value. A consumer
    started in a parent process before os.fork() reports only `rstream_up 0` (its stats are
    not in this process)."""
    o = consumer.options
    state = consumer.state
    yield UP, (o.group, o.consumer_name), 1.0 if state == "running" else 0.0
    if state == "forked":
        return
    every = consumer.stats()
    per_stream = {s: consumer.stats(stream=s) for s in o.streams}
    for spec in METRICS:
        if not spec.per_stream:
            yield spec, (o.group, o.consumer_name), float(getattr(every, spec.field))
            continue
        for stream, stats in per_stream.items():
            value = spec.value(stats)
            if value is not None:
                yield spec, (stream, o.group, o.consumer_name), value


def _distinct(consumers: Sequence[Consumer]) -> Tuple[Consumer, ...]:
    """The consumers, refusing two that would export the same series (same group and name)."""
    seen: Dict[Tuple[str, str], Consumer] = {}
    for consumer in consumers:
        key = (consumer.options.group, consumer.options.consumer_name)
        if key in seen:
            raise ConfigError(f"two consumers with group={key[0]!r} and consumer_name={key[1]!r} "
                              "would export the same series (give one consumer streams=[...])")
        seen[key] = consumer
    return tuple(seen.values())


def _family(spec: MetricSpec) -> Union[CounterMetricFamily, GaugeMetricFamily]:
    labels = STREAM_LABELS if spec.per_stream else CONSUMER_LABELS
    if spec.mode is None:
        return CounterMetricFamily(spec.name, spec.help, labels=labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=labels)


class RStreamCollector:
    """A prometheus-client collector for one or more consumers, read when scraped:
    ``REGISTRY.register(RStreamCollector(consumer))``.

    `describe()` names every metric, so a registry refuses a second RStreamCollector
    (prometheus-client raises ValueError: "Duplicated timeseries") instead of serving every
    series twice; give several consumers to one collector."""

    def __init__(self, consumer: Consumer, *more: Consumer) -> None:
        self._consumers = _distinct((consumer, *more))

    def describe(self) -> List[Metric]:
        return [_family(spec) for spec in ALL_METRICS]

    def collect(self) -> List[Metric]:
        families = {spec.name: _family(spec) for spec in ALL_METRICS}
        for consumer in self._consumers:
            for spec, labels, value in samples(consumer):
                families[spec.name].add_metric(labels, value)
        return list(families.values())


@dataclasses.dataclass(frozen=True)
class Instruments:
    """prometheus-client metric objects for every metric, by name."""

    counters: Dict[str, prometheus_client.Counter]
    gauges: Dict[str, prometheus_client.Gauge]

    @staticmethod
    def make(registry: Optional[CollectorRegistry] = None) -> "Instruments":
        counters, gauges = {}, {}
        for spec in ALL_METRICS:
            labels = STREAM_LABELS if spec.per_stream else CONSUMER_LABELS
            if spec.mode is None:
                counters[spec.name] = prometheus_client.Counter(spec.name, spec.help, labels,
                                                                registry=registry)
            else:
                gauges[spec.name] = prometheus_client.Gauge(spec.name, spec.help, labels,
                                                            registry=registry, multiprocess_mode=spec.mode)
        return Instruments(counters, gauges)


class Mirror:
    """Copies samples into metric objects: a counter grows by what its `Stats` field grew
    since the last copy; a gauge is set, and set to NaN if it was known and no longer is."""

    def __init__(self, into: Instruments) -> None:
        self._into = into
        self._counted: Dict[Tuple[str, Tuple[str, ...]], float] = {}
        self._gauged: Set[Tuple[str, Tuple[str, ...]]] = set()

    def copy(self, current: Sequence[Sample]) -> None:
        seen = set()
        for spec, labels, value in current:
            key = (spec.name, labels)
            if spec.mode is None:
                grown = value - self._counted.get(key, 0.0)
                if grown > 0:
                    self._into.counters[spec.name].labels(*labels).inc(grown)
                self._counted[key] = value
            else:
                self._into.gauges[spec.name].labels(*labels).set(value)
                seen.add(key)
        for name, labels in self._gauged - seen:
            self._into.gauges[name].labels(*labels).set(math.nan)
        self._gauged |= seen


# This process's metric objects: the multiprocess files are per process, so one set serves
# every exporter in it (a second set would write the same keys and overwrite the first's).
_PROCESS_INSTRUMENTS = Instruments.make()
_exporting: Set[Tuple[str, str]] = set()  # (group, consumer name) of the running exporters
_exporting_lock = threading.Lock()


def _require_multiprocess_mode() -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")
    if _values.ValueClass is _values.MutexValue or not directory or not os.path.isdir(directory):
        raise ConfigError("MultiprocessExporter needs prometheus-client's multiprocess mode: set "
                          "PROMETHEUS_MULTIPROC_DIR to an existing directory before prometheus_client "
                          f"is first imported (it is {directory!r}); in one process, use RStreamCollector")


class MultiprocessExporter:
    """Copies the consumers' stats into prometheus-client multiprocess-mode metrics every
    `interval_s` seconds on the ``rstream-prometheus`` thread, for a scrape through
    `MultiProcessCollector` in any process. Start it after `consumer.start()` in the process
    that runs the consumer (gunicorn: `post_fork`); `stop()` it after `consumer.stop()`, so the
    last counts are copied (gunicorn: `worker_exit`), and call
    `prometheus_client.multiprocess.mark_process_dead(pid)` when the process is gone (gunicorn:
    `child_exit`, in the master) to take its gauges away."""

    def __init__(self, consumer: Consumer, *more: Consumer,
                 interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if not interval_s > 0:
            raise ConfigError(f"interval_s must be > 0 seconds, got {interval_s!r}")
        _require_multiprocess_mode()
        self._consumers = _distinct((consumer, *more))
        self._interval_s = interval_s
        self._mirror = Mirror(_PROCESS_INSTRUMENTS)
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _names(self) -> Set[Tuple[str, str]]:
        return {(c.options.group, c.options.consumer_name) for c in self._consumers}

    def start(self) -> "MultiprocessExporter":
        """Copy once now, then every `interval_s` on a thread; return at once."""
        with _exporting_lock:
            if self._thread is not None:
                raise ConfigError("this MultiprocessExporter was already started")
            taken = self._names() & _exporting
            if taken:
                raise ConfigError(f"another MultiprocessExporter in this process exports {sorted(taken)}: "
                                  "its counters would be counted twice")
            _exporting.update(self._names())
            self._thread = threading.Thread(target=self._run, name="rstream-prometheus", daemon=True)
        self._copy()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread, copy a last time, and let another exporter take these consumers."""
        thread = self._thread
        if thread is None or self._stopping.is_set():
            return
        self._stopping.set()
        thread.join()
        self._copy()
        with _exporting_lock:
            _exporting.difference_update(self._names())

    def _copy(self) -> None:
        self._mirror.copy([sample for consumer in self._consumers for sample in samples(consumer)])

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            self._copy()

    def __enter__(self) -> "MultiprocessExporter":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
