"""The benchmark cases, run by the parent against its one server; each measurement is a child process.

Every case fills its own stream once; each measured run then drains the same entries through a new
consumer group created at id 0, so runs see identical data without copying it. A case deletes its
streams when done, so the server's memory does not carry one case into the next. Repeated runs are
interleaved (A B C A B C ...) so that a noisy neighbour slows every variant alike; the table shows
medians and the JSON keeps every run.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import subprocess
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import redis

from bench.cluster import local_cluster, streams_on_every_master
from bench import c_consumer
from bench.common import (BATCH, READY_MARK, REPO_ROOT, BenchError, child_command, child_env, command_delta,
                          command_stats, io_counters, median, new_group, parse_result, prefill, run_child,
                          server_cpu_s, server_pid)

IO_SLEEP_MS = 1.0
IO_CONCURRENCY = 64
SLOW_STATS_MS = 100.0  # stats().acked trailing the server's acks by more than this is worth a note
STREAMS = 3                # case 6: streams the backlog is split over
CLUSTER_MASTERS = 3        # case 7: masters of the local cluster
CLUSTER_STREAMS_PER_MASTER = 1


@dataclasses.dataclass(frozen=True)
class Sizes:
    drain: int                 # case 1 entries
    io: int                    # case 2 entries
    latency_seconds: float     # case 3 duration
    latency_rate: int          # case 3 entries/s
    memory: Tuple[int, int]    # case 4 backlogs, small and large
    repeat: int                # runs of each fast variant (median reported)
    drain_repeat: int          # rounds of case 1 (its ratios are the targets)
    c_client_requests: int     # redis-benchmark -n
    decode_seconds: float      # case 0 time budget per module
    streams: int               # case 6 entries in all, split over STREAMS streams
    cluster: int               # case 7 entries in all, split over the cluster's streams
    streams_repeat: int        # rounds of cases 6 and 7: short runs, ratios within ~10%, noisy machine


FULL = Sizes(drain=200_000, io=20_000, latency_seconds=10.0, latency_rate=5000,
             memory=(100_000, 1_000_000), repeat=3, drain_repeat=7, c_client_requests=2000,
             decode_seconds=1.0, streams=200_000, cluster=200_000, streams_repeat=7)
QUICK = Sizes(drain=20_000, io=4_000, latency_seconds=2.0, latency_rate=5000,
              memory=(10_000, 100_000), repeat=1, drain_repeat=1, c_client_requests=400,
              decode_seconds=0.3, streams=20_000, cluster=20_000, streams_repeat=1)

# (label, bench.drain variant, extra environment). "0" is not "1": the selector loads the extension.
DRAIN_VARIANTS: List[Tuple[str, str, Dict[str, str]]] = [
    ("rstream compiled", "rstream", {"RSTREAM_NO_EXTENSIONS": "0"}),
    ("rstream pure-Python", "rstream", {"RSTREAM_NO_EXTENSIONS": "1"}),
    ("redis-py loop", "redis-py", {}),
    ("walrus ConsumerGroup", "walrus", {}),
]
C_CONSUMER = "C consumer (hiredis)"  # case 1's anchor, when bench/c_consumer.c builds
# A control: the same C consumer, its handler spinning CONTROL_SPIN_NS per entry, about the client
# CPU rstream spends beyond the C consumer's: the same wire work at rstream's client cost.
CONTROL_SPIN_NS = 1000
C_CONTROL = f"C consumer + {CONTROL_SPIN_NS / 1000:g} us/entry spin (control)"


@dataclasses.dataclass
class Context:
    url: str
    client: redis.Redis
    binary: str
    sizes: Sizes
    quick: bool
    redis_benchmark: Optional[str] = dataclasses.field(default_factory=lambda: shutil.which("redis-benchmark"))
    notes: List[str] = dataclasses.field(default_factory=list)
    stats_lags: Dict[str, List[float]] = dataclasses.field(default_factory=dict)  # label -> ms
    _groups: int = 0

    def all_notes(self) -> List[str]:
        lags = [f"{label}: stats().acked trailed the server's acks by up to {max(ms):,.0f} ms "
                f"in {len(ms)} run(s)" for label, ms in self.stats_lags.items()]
        return self.notes + lags

    def group(self, stream: str, label: str) -> str:
        """A new group at id 0 on `stream`: a fresh copy of its entries to drain."""
        return self.group_on(self.client, [stream], label)

    def group_on(self, client: Any, streams: Sequence[str], label: str) -> str:
        """A new group, of one name, at id 0 on each of `streams` (through `client`, which may
        be a RedisCluster)."""
        self._groups += 1
        name = f"{label.replace(' ', '-')}-{self._groups}"
        for stream in streams:
            new_group(client, stream, name)
        return name


def drain(ctx: Context, stream: str, count: int, variant: str, env: Dict[str, str],
          label: str, sleep_ms: float = 0.0, concurrency: int = 8, extra: Sequence[str] = ()) -> Dict[str, Any]:
    """One child that drains `count` entries of `stream` through a new group."""
    return drain_group(ctx, [stream], ctx.group(stream, label), count, variant, env, label,
                       sleep_ms=sleep_ms, concurrency=concurrency, extra=extra)


def drain_group(ctx: Context, streams: Sequence[str], group: str, count: int, variant: str,
                env: Dict[str, str], label: str, sleep_ms: float = 0.0, concurrency: int = 8,
                url: Optional[str] = None, cluster: bool = False,
                extra: Sequence[str] = ()) -> Dict[str, Any]:
    """One child that drains `count` entries in all of `streams` through `group` (on each), on
    the harness's server or the one at `url` (a cluster node when `cluster`); `extra`: more
    arguments for bench.drain."""
    args = [variant, "--url", url or ctx.url, "--group", group, "--count", str(count),
            "--sleep-ms", str(sleep_ms), "--concurrency", str(concurrency), *extra]
    for stream in streams:
        args += ["--stream", stream]
    if cluster:
        args.append("--cluster")
    budget = 60.0 + count * (sleep_ms / 1000 * 1.5 + 1e-4)  # generous: the machine is shared
    result = run_child("bench.drain", args + ["--timeout", str(budget)], timeout=budget + 30, env=env)
    print(f"    {label}: {result['rate']:,.0f} entries/s{timeline(ctx, label, result)}", flush=True)
    return result


def timeline(ctx: Context, label: str, result: Dict[str, Any]) -> str:
    """rstream's startup and final-ack delays, which a rate alone would hide."""
    if "all_delivered_s" not in result:
        return ""
    first_ms = result["first_delivery_s"] * 1e3
    tail_ms = (result["seconds"] - result["all_delivered_s"]) * 1e3
    lag_ms = result["stats_acked_lag_s"] * 1e3
    if lag_ms > SLOW_STATS_MS:
        ctx.stats_lags.setdefault(label, []).append(lag_ms)
    return (f" (first entry handled after {first_ms:,.0f} ms; all acked {tail_ms:,.0f} ms after the "
            f"last delivery; stats().acked caught up {lag_ms:,.0f} ms later)")


def summarize(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Medians of the runs' numbers, plus the runs themselves."""
    keys = ("rate", "seconds", "server_cpu_us_per_entry", "server_busy", "server_busy_max",
            "client_cpu_us_per_entry", "peak_rss_mb", "rate_from_first_delivery", "first_delivery_s",
            "probe_xpending_calls")
    summary: Dict[str, Any] = {key: median([run[key] for run in runs]) for key in keys if key in runs[0]}
    if "commands" in runs[0]:
        summary["commands"] = median_commands([run["commands"] for run in runs])
    if "io" in runs[0]:
        summary["io"] = {name: median([run["io"][name] for run in runs]) for name in runs[0]["io"]}
    summary["runs"] = runs
    if "implementation" in runs[0]:
        summary["implementation"] = sorted({run["implementation"] for run in runs})
    return summary


def median_commands(deltas: List[Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, float]]:
    """Per command, the median over runs of its calls and of its usec (0 in a run without it)."""
    names = sorted({name for delta in deltas for name in delta})
    return {name: {field: median([delta.get(name, {}).get(field, 0.0) for delta in deltas])
                   for field in ("calls", "usec")} for name in names}


def case_decode(ctx: Context) -> Dict[str, Any]:
    """0. decode_entries of a 500-entry reply, compiled and pure (the issue's >= 3x target)."""
    return run_child("bench.decode", ["--seconds", str(ctx.sizes.decode_seconds)], timeout=120)


def case_drain(ctx: Context) -> Dict[str, Any]:
    """1. Drain a pre-filled backlog with a no-op handler: rstream both paths, peers, the C consumer."""
    count, stream = ctx.sizes.drain, "bench:drain"
    prefill(ctx.client, stream, count)
    history = c_client_group(ctx, stream)
    variants = list(DRAIN_VARIANTS)
    binary, built = c_consumer.build()
    print(f"    C consumer: {built}", flush=True)
    if binary is None:
        ctx.notes.append(f"case 1: C consumer (hiredis) skipped: {built}")
    else:
        variants[1:1] = [(C_CONSUMER, "c-consumer", {}),  # back to back with rstream compiled
                         (C_CONTROL, "c-consumer", {})]
    runs: Dict[str, List[Dict[str, Any]]] = {label: [] for label, _, _ in variants}
    limits: List[Dict[str, Any]] = []
    for _ in range(ctx.sizes.drain_repeat):
        for label, variant, env in variants:
            extra = ["--c-binary", binary] if variant == "c-consumer" and binary else []
            if label == C_CONTROL:
                extra += ["--c-spin-ns", str(CONTROL_SPIN_NS)]
            runs[label].append(drain(ctx, stream, count, variant, env, label, extra=extra))
        if history is not None:
            limits.append(c_client_limit(ctx, stream, history))
    result: Dict[str, Any] = {"entries": count, "variants": {label: summarize(r) for label, r in runs.items()},
                              "c_consumer_build": built,
                              "c_client": summarize(limits) if limits else {"skipped": "no redis-benchmark"}}
    ctx.client.delete(stream)
    return result


def c_client_group(ctx: Context, stream: str) -> Optional[str]:
    """A group whose consumer "c" has every entry of `stream` pending, for history reads."""
    if ctx.redis_benchmark is None:
        ctx.notes.append("case 1: redis-benchmark not found on PATH; C-client limit skipped")
        return None
    group = ctx.group(stream, "c-client")
    while ctx.client.xreadgroup(group, "c", {stream: ">"}, count=10_000):
        pass
    return group


def c_client_limit(ctx: Context, stream: str, group: str) -> Dict[str, Any]:
    """redis-benchmark -c 1 -P 2 re-reading the history of a consumer with every entry pending:
    each call returns COUNT 500 entries (reads only, no acks)."""
    assert ctx.redis_benchmark is not None
    where = ctx.client.connection_pool.connection_kwargs
    requests = ctx.sizes.c_client_requests
    command = [ctx.redis_benchmark, "-h", str(where["host"]), "-p", str(where["port"]), "-c", "1", "-P", "2",
               "-n", str(requests), "--csv", "XREADGROUP", "GROUP", group, "c", "COUNT", str(BATCH),
               "STREAMS", stream, "0"]
    pid = server_pid(ctx.client)
    io0, stats0 = io_counters(ctx.client, pid), [command_stats(ctx.client)]
    cpu0 = server_cpu_s(ctx.client)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    cpu = server_cpu_s(ctx.client) - cpu0
    commands = command_delta(stats0, [command_stats(ctx.client)])
    io1 = io_counters(ctx.client, pid)
    rps = parse_benchmark_csv(proc.stdout, proc.stderr)
    entries, rate = requests * BATCH, rps * BATCH
    print(f"    C-client limit: {rate:,.0f} entries/s", flush=True)
    return {"rate": rate, "requests_per_s": rps, "requests": requests, "entries_read": entries,
            "server_cpu_us_per_entry": cpu / entries * 1e6, "server_busy": cpu / (entries / rate),
            "commands": commands, "io": {name: io1[name] - io0[name] for name in io1},
            "command": " ".join(["redis-benchmark", *command[1:]])}


def parse_benchmark_csv(stdout: str, stderr: str) -> float:
    """requests/s from `redis-benchmark --csv`: a header line, then "command","rps",..."""
    for line in stdout.splitlines()[1:]:
        cells = [cell.strip('"') for cell in line.split('","')]
        if len(cells) > 1:
            return float(cells[1])
    raise BenchError(f"redis-benchmark printed no result: {(stdout + stderr)[-500:]}")


def case_io(ctx: Context) -> Dict[str, Any]:
    """2. I/O-bound handlers (sleep 1 ms), concurrency 64, against the ideal and the redis-py loop."""
    count, stream = ctx.sizes.io, "bench:io"
    prefill(ctx.client, stream, count)
    compiled = DRAIN_VARIANTS[0][2]
    runs = [drain(ctx, stream, count, "rstream", compiled, "rstream c64", IO_SLEEP_MS, IO_CONCURRENCY)
            for _ in range(ctx.sizes.repeat)]
    loop = drain(ctx, stream, count, "redis-py", {}, "redis-py loop", IO_SLEEP_MS)
    ctx.client.delete(stream)
    return {"entries": count, "sleep_ms": IO_SLEEP_MS, "concurrency": IO_CONCURRENCY,
            "ideal_rate": IO_CONCURRENCY * 1000 / IO_SLEEP_MS, "rstream": summarize(runs),
            "redis_py_loop": summarize([loop])}


def case_latency(ctx: Context) -> Dict[str, Any]:
    """3. XADD -> handler start at a steady rate: producer and consumer in separate processes."""
    sizes, stream = ctx.sizes, "bench:latency"
    count = int(sizes.latency_rate * sizes.latency_seconds)
    new_group(ctx.client, stream, "latency", start_id="$")
    consumer_args = ["consumer", "--url", ctx.url, "--stream", stream, "--group", "latency",
                     "--count", str(count), "--timeout", str(sizes.latency_seconds * 3 + 30)]
    with tempfile.TemporaryFile("w+") as errors:
        consumer = subprocess.Popen(child_command("bench.latency", consumer_args), cwd=REPO_ROOT,
                                    env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=errors, text=True)
        try:
            producer = start_producer_when_ready(ctx, consumer, stream, sizes)
            stdout, _ = consumer.communicate(timeout=sizes.latency_seconds * 3 + 60)
        finally:
            if consumer.poll() is None:
                consumer.kill()
                consumer.wait()
        errors.seek(0)
        result = parse_result("bench.latency consumer", consumer.returncode, stdout, errors.read())
    ctx.client.delete(stream)
    print(f"    p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, max {result['max_ms']:.2f} ms",
          flush=True)
    return {"rate": sizes.latency_rate, "seconds": sizes.latency_seconds, "producer": producer, **result}


def start_producer_when_ready(ctx: Context, consumer: "subprocess.Popen[str]", stream: str,
                              sizes: Sizes) -> Dict[str, Any]:
    assert consumer.stdout is not None
    for line in consumer.stdout:  # ends at EOF if the consumer dies before it is ready
        if line.strip() == READY_MARK:
            break
    else:
        raise BenchError(f"latency consumer exited with {consumer.wait()} before it was ready")
    args = ["producer", "--url", ctx.url, "--stream", stream, "--rate", str(sizes.latency_rate),
            "--seconds", str(sizes.latency_seconds)]
    return run_child("bench.latency", args, timeout=sizes.latency_seconds * 3 + 30)


def case_memory(ctx: Context) -> Dict[str, Any]:
    """4. Peak RSS of a consumer process draining a small and a large backlog."""
    result: Dict[str, Any] = {}
    for count in ctx.sizes.memory:
        stream = f"bench:memory:{count}"
        prefill(ctx.client, stream, count)
        result[str(count)] = drain(ctx, stream, count, "rstream", DRAIN_VARIANTS[0][2], f"rstream {count:,}")
        ctx.client.delete(stream)
    small, large = (result[str(count)] for count in ctx.sizes.memory)
    return {"backlogs": list(ctx.sizes.memory), "runs": result,
            "growth_mb": large["peak_rss_mb"] - small["peak_rss_mb"]}


def case_failover(ctx: Context) -> Dict[str, Any]:
    """5. Failover time, measured by bench/failover.py (the failover issue) when it exists."""
    if importlib.util.find_spec("bench.failover") is None:
        note = "bench/failover.py not present: failover case skipped"
        ctx.notes.append(note)
        print(f"    {note}", flush=True)
        return {"skipped": note}
    args = ["--url", ctx.url, "--binary", ctx.binary] + (["--quick"] if ctx.quick else [])
    return run_child("bench.failover_case", args, timeout=600)


def split(total: int, parts: int) -> List[int]:
    """`total` entries over `parts` streams, as evenly as whole entries allow."""
    return [total // parts + (1 if n < total % parts else 0) for n in range(parts)]


# Case 6: (key, bench.drain variant, several streams?). The keys are what report.py looks up.
STREAMS_VARIANTS: List[Tuple[str, str, bool]] = [
    ("rstream 1 stream", "rstream", False),
    ("rstream 3 streams", "rstream", True),
    ("redis-py 1 stream", "redis-py", False),
    ("redis-py 3 streams, one read", "redis-py", True),
]


def case_streams(ctx: Context) -> Dict[str, Any]:
    """6. One backlog over 3 streams, one server: rstream streams=[...] vs 1 stream vs one XREADGROUP over 3."""
    total = ctx.sizes.streams
    one, several = "bench:streams:one", [f"bench:streams:{n}" for n in range(STREAMS)]
    prefill(ctx.client, one, total)
    for stream, share in zip(several, split(total, STREAMS)):
        prefill(ctx.client, stream, share)
    compiled = DRAIN_VARIANTS[0][2]
    runs: Dict[str, List[Dict[str, Any]]] = {key: [] for key, _, _ in STREAMS_VARIANTS}
    for _ in range(ctx.sizes.streams_repeat):
        for key, variant, spread in STREAMS_VARIANTS:
            streams = several if spread else [one]
            group = ctx.group_on(ctx.client, streams, key)
            runs[key].append(drain_group(ctx, streams, group, total, variant, compiled, key))
    ctx.client.delete(one, *several)
    return {"entries": total, "streams": STREAMS, "variants": {key: summarize(r) for key, r in runs.items()}}


def case_cluster(ctx: Context) -> Dict[str, Any]:
    """7. Streams spread over a local 3-master Redis Cluster, one rstream consumer, vs them on one server."""
    total, cores = ctx.sizes.cluster, os.cpu_count() or 1
    if cores <= CLUSTER_MASTERS:
        ctx.notes.append(f"case 7: the {CLUSTER_MASTERS} cluster masters and the consumer share this "
                         f"machine's {cores} cores, so the cluster cannot add server CPU here")
    compiled = DRAIN_VARIANTS[0][2]
    runs: Dict[str, List[Dict[str, Any]]] = {"cluster": [], "one server": []}
    with local_cluster(ctx.binary, CLUSTER_MASTERS) as cluster:
        streams = streams_on_every_master(cluster, "bench:cluster:", CLUSTER_STREAMS_PER_MASTER)
        seed = cluster.get_primaries()[0]
        url = f"redis://{seed.host}:{seed.port}"
        for stream, share in zip(streams, split(total, len(streams))):
            prefill(cluster.get_node_from_key(stream).redis_connection, stream, share)
            prefill(ctx.client, stream, share)
        for _ in range(ctx.sizes.streams_repeat):
            group = ctx.group_on(cluster, streams, "cluster")
            runs["cluster"].append(drain_group(ctx, streams, group, total, "rstream", compiled,
                                               f"rstream, RedisCluster of {CLUSTER_MASTERS} masters",
                                               url=url, cluster=True))
            group = ctx.group_on(ctx.client, streams, "one-server")
            runs["one server"].append(drain_group(ctx, streams, group, total, "rstream", compiled,
                                                  "rstream, the same streams on one server"))
    ctx.client.delete(*streams)
    return {"entries": total, "masters": CLUSTER_MASTERS, "streams": streams, "cores": cores,
            "variants": {key: summarize(r) for key, r in runs.items()}}


CASES: List[Tuple[str, Callable[[Context], Dict[str, Any]]]] = [
    ("decode", case_decode),
    ("drain", case_drain),
    ("io", case_io),
    ("latency", case_latency),
    ("memory", case_memory),
    ("failover", case_failover),
    ("streams", case_streams),
    ("cluster", case_cluster),
]
