"""Shared by the harness parent and its child programs: test data, server probes, child processes.

Entries are 3 fields of about 100 bytes in all (`n`, `user`, `payload`), written by a server-side
script so that a million of them take about a second to create.
"""
from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULT_MARK = "BENCH-RESULT "
READY_MARK = "BENCH-READY"
BATCH = 500                     # COUNT of every read, in every variant
PAYLOAD = b"p" * 64             # with n, user and the field names: ~95 bytes per entry
PREFILL_CHUNK = 20_000          # entries per EVAL: ~20-40 ms of server time per call
POLL_S = 0.002                  # how often a child checks whether its drain is complete

# Distinct values per entry (n, user) so that nothing about the data is more compressible than
# real data would be; the listpack still stores field names once per node, as it would in production.
_PREFILL_LUA = """
local first = tonumber(ARGV[1])
for i = first, first + tonumber(ARGV[2]) - 1 do
  redis.call('XADD', KEYS[1], '*', 'n', tostring(i),
             'user', string.format('user-%05d', i % 100000), 'payload', ARGV[3])
end
return 1
"""


class BenchError(Exception):
    """A case could not be measured (a child failed, a tool is missing, a deadline passed)."""


def prefill(client: redis.Redis, stream: str, count: int) -> None:
    """Append `count` entries to `stream` (created if missing)."""
    script = client.register_script(_PREFILL_LUA)
    for first in range(0, count, PREFILL_CHUNK):
        script(keys=[stream], args=[first, min(PREFILL_CHUNK, count - first), PAYLOAD])


def new_group(client: redis.Redis, stream: str, group: str, start_id: str = "0") -> None:
    """A group that has read nothing yet: every case drains the same entries through its own group."""
    client.xgroup_create(stream, group, start_id, mkstream=True)


def server_cpu_s(client: redis.Redis) -> float:
    """CPU seconds (user + sys) of the server's main thread; the whole process on old servers."""
    info = client.info("cpu")
    if "used_cpu_sys_main_thread" in info:
        return float(info["used_cpu_sys_main_thread"]) + float(info["used_cpu_user_main_thread"])
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def server_cpu_scope(client: redis.Redis) -> str:
    return "main thread" if "used_cpu_sys_main_thread" in client.info("cpu") else "process"


CommandStats = Dict[str, Dict[str, float]]  # command -> {"calls": n, "usec": n}


def command_stats(client: redis.Redis) -> CommandStats:
    """INFO commandstats: calls and microseconds in each command so far. Commands a script runs
    count as well as the EVAL (whose usec includes theirs)."""
    return {name[len("cmdstat_"):]: {"calls": float(stat["calls"]), "usec": float(stat["usec"])}
            for name, stat in client.info("commandstats").items()}


# INFO stats counters that say how the work reached the server: read and write events it handled
# (a pipelined write is one read event), bytes each way, connections opened.
IO_COUNTERS = ("total_reads_processed", "total_writes_processed", "total_net_input_bytes",
               "total_net_output_bytes", "total_connections_received", "total_commands_processed")


def server_pid(client: redis.Redis) -> Optional[int]:
    """The server's process id when it runs on this machine (its /proc entry is readable)."""
    pid = client.info("server").get("process_id")
    return int(pid) if pid is not None and os.path.exists(f"/proc/{pid}/task/{pid}/status") else None


def io_counters(client: redis.Redis, pid: Optional[int] = None) -> Dict[str, float]:
    """The IO_COUNTERS, and with the `pid` of a local server its main thread's context switches
    from /proc: voluntary (it went to wait for work) and involuntary (it was preempted: something
    else wanted its core)."""
    info = client.info("stats")
    counters = {name: float(info[name]) for name in IO_COUNTERS if name in info}
    if pid is not None:
        with open(f"/proc/{pid}/task/{pid}/status") as status:
            for line in status:
                if "ctxt_switches" in line:
                    name, value = line.split(":", 1)
                    counters["server_" + name.strip()] = float(value)
    return counters


def command_delta(before: Sequence[CommandStats], after: Sequence[CommandStats]) -> CommandStats:
    """Calls and usec per command between two readings of each server, summed over servers."""
    delta: CommandStats = {}
    for old, new in zip(before, after):
        for name, stat in new.items():
            was = old.get(name, {"calls": 0.0, "usec": 0.0})
            calls, usec = stat["calls"] - was["calls"], stat["usec"] - was["usec"]
            if calls:
                total = delta.setdefault(name, {"calls": 0.0, "usec": 0.0})
                total["calls"] += calls
                total["usec"] += usec
    return delta


class Window:
    """Wall time, server CPU and this process's CPU (every thread) between open() and close() of
    one measured run, and the server's INFO commandstats and I/O counters (INFO stats) around it,
    read outside the CPU readings: within them the probe itself adds its 4 INFO calls (4 read and
    4 write events) and, in rstream's windows, its XPENDING calls. `servers`:
    the servers whose CPU counts (default the probe's; every master of a cluster), summed."""

    def __init__(self, probe: Any, servers: Optional[Sequence[redis.Redis]] = None) -> None:
        self.probe = probe
        self.servers = list(servers) if servers is not None else [probe]
        self.t0 = self.t1 = 0.0
        self.own0 = self.own1 = 0.0
        self.cpu0: List[float] = []
        self.cpu1: List[float] = []
        self.stats0: List[CommandStats] = []
        self.stats1: List[CommandStats] = []
        self.pids = [server_pid(server) for server in self.servers]
        self.io0: List[Dict[str, float]] = []
        self.io1: List[Dict[str, float]] = []

    def open(self) -> None:
        self.io0 = [io_counters(server, pid) for server, pid in zip(self.servers, self.pids)]
        self.stats0 = [command_stats(server) for server in self.servers]
        self.cpu0 = [server_cpu_s(server) for server in self.servers]
        self.own0 = time.process_time()
        self.t0 = time.perf_counter()

    def close(self) -> None:
        self.t1 = time.perf_counter()
        self.own1 = time.process_time()
        self.cpu1 = [server_cpu_s(server) for server in self.servers]
        self.stats1 = [command_stats(server) for server in self.servers]
        self.io1 = [io_counters(server, pid) for server, pid in zip(self.servers, self.pids)]

    def result(self, entries: int) -> Dict[str, Any]:
        seconds = self.t1 - self.t0
        each = [after - before for before, after in zip(self.cpu0, self.cpu1)]
        cpu = sum(each)
        result: Dict[str, Any] = {"entries": entries, "seconds": seconds, "rate": entries / seconds,
                                  "server_cpu_s": cpu, "server_cpu_us_per_entry": cpu / entries * 1e6,
                                  "server_busy": cpu / seconds,
                                  "client_cpu_us_per_entry": (self.own1 - self.own0) / entries * 1e6,
                                  "commands": command_delta(self.stats0, self.stats1),
                                  "io": {name: sum(after[name] - before[name]
                                                   for before, after in zip(self.io0, self.io1))
                                         for name in self.io1[0]}}
        if len(each) > 1:  # several servers: busy is their sum; the busiest one said apart
            result["server_busy_each"] = [node / seconds for node in each]
            result["server_busy_max"] = max(each) / seconds
        return result


def rss_mb() -> float:
    """Current resident set of this process, from /proc (no psutil needed in children)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(result: Mapping[str, Any]) -> None:
    """A child's one result line; everything else it prints is ignored by the parent."""
    print(RESULT_MARK + json.dumps(result), flush=True)


def child_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """This environment, with this checkout first on the path, plus `extra`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def child_command(module: str, args: Sequence[str]) -> List[str]:
    return [sys.executable, "-m", module, *args]


def run_child(module: str, args: Sequence[str], timeout: float,
              env: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Run `python -m module args...` to completion and return its result line."""
    try:
        proc = subprocess.run(child_command(module, args), cwd=REPO_ROOT, env=child_env(env),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{module} {' '.join(args)}: no result within {timeout:.0f} s") from None
    return parse_result(module, proc.returncode, proc.stdout, proc.stderr)


def parse_result(module: str, returncode: Optional[int], stdout: str, stderr: str) -> Dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result: Dict[str, Any] = json.loads(line[len(RESULT_MARK):])
            return result
    lines = (stdout + stderr).strip().splitlines()
    last = lines[-1] if lines else "(no output)"
    tail = "\n".join(lines[-15:])
    raise BenchError(f"{module} exited with {returncode}: {last}\n{tail}")


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        raise BenchError("percentile of no values")
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
