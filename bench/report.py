"""Turn the cases' results into the printed table, the targets and the JSON document."""
from __future__ import annotations

import dataclasses
import json
import operator
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from bench.cases import C_CONSUMER, C_CONTROL

Row = List[str]
HEADER: Row = ["case", "measurement", "result", "server CPU/entry, busy", "target", "status"]


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    value: float
    bound: float
    at_least: bool  # value >= bound, else value < bound (or <= for "at most")
    inclusive: bool = True

    @property
    def met(self) -> bool:
        if self.at_least:
            return self.value >= self.bound
        compare: Callable[[float, float], bool] = operator.le if self.inclusive else operator.lt
        return compare(self.value, self.bound)

    @property
    def text(self) -> str:
        sign = ">=" if self.at_least else ("<=" if self.inclusive else "<")
        return f"{sign} {self.bound:g}"

    def as_json(self) -> Dict[str, Any]:
        return {"name": self.name, "value": self.value, "target": self.text, "met": self.met}


class Table:
    """Rows of the printed table and the targets judged on the way."""

    def __init__(self) -> None:
        self.rows: List[Row] = []
        self.targets: List[Target] = []

    def add(self, case: str, measurement: str, result: str, server: str = "") -> None:
        self.rows.append([case, measurement, result, server, "", ""])

    def judge(self, case: str, target: Target, result: str) -> None:
        self.targets.append(target)
        self.rows.append([case, target.name, result, "", target.text, "met" if target.met else "NOT MET"])

    def render(self) -> str:
        widths = [max(len(row[i]) for row in [HEADER] + self.rows) for i in range(len(HEADER))]
        lines = [fmt_row(HEADER, widths), fmt_row(["-" * w for w in widths], widths)]
        last_case = None
        for row in self.rows:
            shown = [""] + row[1:] if row[0] == last_case else row
            last_case = row[0]
            lines.append(fmt_row(shown, widths))
        return "\n".join(lines)


def fmt_row(row: Row, widths: List[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()


def rate(value: float) -> str:
    return f"{value:,.0f} entries/s"


def ratio(value: float) -> str:
    return f"{value:.2f}x"


def server(result: Dict[str, Any]) -> str:
    if "server_cpu_us_per_entry" not in result:
        return ""
    if "server_busy_max" in result:  # several servers: CPU and busy are their sums
        return (f"{result['server_cpu_us_per_entry']:.2f} us, {result['server_busy']:.0%} in all, "
                f"busiest {result['server_busy_max']:.0%}")
    return f"{result['server_cpu_us_per_entry']:.2f} us, {result['server_busy']:.0%}"


def add_decode(table: Table, result: Dict[str, Any]) -> None:
    case = "0 decode 500 entries"
    table.add(case, "pure Python decode_entries", f"{result['pure_us_per_entry']:.3f} us/entry")
    if "compiled_us_per_entry" not in result:
        table.add(case, "compiled decode_entries", f"not loaded: {result.get('compiled_error')}")
        return
    table.add(case, "compiled decode_entries", f"{result['compiled_us_per_entry']:.3f} us/entry")
    table.judge(case, Target("compiled / pure decode", result["speedup"], 3.0, True), ratio(result["speedup"]))
    if "from_bytes_us_per_entry" in result:
        table.add(case, "read path: hiredis parse + compiled decode_entries",
                  f"{result['hiredis_then_decode_us_per_entry']:.3f} us/entry")
        table.add(case, "read path: compiled decode_stream_reply of the bytes (rstream.wire)",
                  f"{result['from_bytes_us_per_entry']:.3f} us/entry")


def add_drain(table: Table, result: Dict[str, Any]) -> None:
    case = f"1 drain {result['entries']:,}"
    variants = result["variants"]
    for label, summary in variants.items():
        loaded = summary.get("implementation")
        suffix = f" [{','.join(loaded)}]" if loaded else ""
        table.add(case, label + suffix, rate_and_client(summary), server(summary))
        add_startup(table, case, summary)
    limit = result["c_client"]
    if "rate" in limit:
        table.add(case, "C-client limit: redis-benchmark -P 2 re-reading a pending list (reads, no acks)",
                  rate(limit["rate"]), server(limit))
    compiled, pure = variants["rstream compiled"], variants["rstream pure-Python"]
    loop, walrus = variants["redis-py loop"], variants["walrus ConsumerGroup"]
    anchor = variants.get(C_CONSUMER)
    if anchor is not None:
        table.judge(case, Target("compiled / C consumer", compiled["rate"] / anchor["rate"], 0.9, True),
                    paired(compiled, anchor))
        if "rate_from_first_delivery" in compiled:
            table.add(case, "  same, compiled after startup / C consumer",
                      ratio(compiled["rate_from_first_delivery"] / anchor["rate"]))
    table.judge(case, Target("compiled / redis-py loop", compiled["rate"] / loop["rate"], 2.2, True),
                paired(compiled, loop))
    table.judge(case, Target("compiled client CPU (us/entry)", compiled["client_cpu_us_per_entry"], 1.2, False),
                f"{compiled['client_cpu_us_per_entry']:.2f} us/entry")
    if anchor is not None:
        key = "server_cpu_us_per_entry"
        over = compiled[key] / anchor[key]
        table.judge(case, Target("compiled server CPU/entry / C consumer's", over, 1.05, False),
                    f"{paired(compiled, anchor, key)}; {compiled[key]:.2f} vs {anchor[key]:.2f} us")
    control = variants.get(C_CONTROL)
    if control is not None:
        table.add(case, "compiled / C consumer + spin (control)", paired(compiled, control))
    if "rate" in limit:
        table.judge(case, Target("compiled / C-client limit", compiled["rate"] / limit["rate"], 0.7, True),
                    ratio(compiled["rate"] / limit["rate"]))
    table.judge(case, Target("pure / redis-py loop", pure["rate"] / loop["rate"], 1.2, True),
                paired(pure, loop))
    table.add(case, "compiled / walrus", ratio(compiled["rate"] / walrus["rate"]))


# Commands the harness's probe sends inside a window: INFO (cpu, commandstats) always; XPENDING
# in rstream's windows (is the drain done?), counted by the child as `probe_xpending_calls`.
PROBE_COMMANDS = ("info",)
PROBE_INFO_CALLS = 4.0  # INFO commandstats, cpu, cpu, commandstats between the two INFO stats
BREAKDOWN_HEADER: Row = ["variant", "command", "calls", "per 500 entries", "us/call", "us/entry"]


def command_breakdown(results: Dict[str, Dict[str, Any]]) -> List[Row]:
    """Case 1's server time per command (INFO commandstats over each window, medians of the
    runs), per variant: how many calls per 500 entries and what each costs, then the sum of
    command time against the server's CPU per entry (the rest is reading requests, writing
    replies, the event loop)."""
    drain = results.get("drain", {})
    if "variants" not in drain:
        return []
    entries = drain["entries"]
    named = dict(drain["variants"])
    if "commands" in drain.get("c_client", {}):
        limit = drain["c_client"]
        named["C-client limit (redis-benchmark)"] = {**limit, "entries": limit["runs"][0]["entries_read"]}
    rows: List[Row] = []
    for label, summary in named.items():
        commands = summary.get("commands")
        if not commands:
            continue
        count = summary.get("entries", entries)
        probe = summary.get("probe_xpending_calls", 0.0)
        total = 0.0
        for name, stat in sorted(commands.items(), key=lambda item: -item[1]["usec"]):
            if name in PROBE_COMMANDS:
                continue
            calls = stat["calls"] - (probe if name == "xpending" else 0.0)
            note = f" (+{probe:.0f} by the harness)" if name == "xpending" and probe else ""
            total += stat["usec"]
            rows.append([label, name, f"{calls:,.0f}{note}", f"{calls / count * 500:.2f}",
                         f"{stat['usec'] / stat['calls']:.1f}" if stat["calls"] else "",
                         f"{stat['usec'] / count:.3f}"])
        cpu = summary["server_cpu_us_per_entry"]
        rows.append([label, "all commands (EVAL includes its commands)", "", "", "", f"{total / count:.3f}"])
        rows.append([label, "server CPU (INFO cpu)", "", "", "", f"{cpu:.3f}"])
        rows.append([label, "CPU less command time (negative: preempted in commands)", "", "", "",
                     f"{cpu - total / count:.3f}"])
        rows += io_rows(label, summary, count, probe)
    return rows


def io_rows(label: str, summary: Dict[str, Any], count: int, probe: float) -> List[Row]:
    """The server's read and write events (one per request write it read, one per reply write)
    and bytes, less the harness probe's own (4 INFO calls, and its XPENDING calls)."""
    io = summary.get("io")
    if not io:
        return []
    own = PROBE_INFO_CALLS + probe if label != "C-client limit (redis-benchmark)" else 0.0
    rows = []
    for name, what in (("total_reads_processed", "server read events"),
                       ("total_writes_processed", "server write events")):
        if name in io:
            events = io[name] - own
            rows.append([label, what, f"{events:,.0f}", f"{events / count * 500:.2f}", "", ""])
    for name, what in (("server_voluntary_ctxt_switches", "server main thread: waits (voluntary switches)"),
                       ("server_nonvoluntary_ctxt_switches", "server main thread: preempted (involuntary)")):
        if name in io:
            rows.append([label, what, f"{io[name]:,.0f}", f"{io[name] / count * 500:.2f}", "", ""])
    for name, what in (("total_net_input_bytes", "bytes in per entry"),
                       ("total_net_output_bytes", "bytes out per entry")):
        if name in io:
            rows.append([label, what, f"{io[name] / count:.1f}", "", "", ""])
    return rows


def render_rows(header: Row, rows: List[Row]) -> str:
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = [fmt_row(header, widths), fmt_row(["-" * w for w in widths], widths)]
    last = None
    for row in rows:
        lines.append(fmt_row([""] + row[1:] if row[0] == last else row, widths))
        last = row[0]
    return "\n".join(lines)


def add_startup(table: Table, case: str, summary: Dict[str, Any]) -> None:
    """rstream's rate with its startup (threads, connections, group check) left out."""
    if "rate_from_first_delivery" in summary:
        startup_ms = summary["first_delivery_s"] * 1e3
        table.add(case, f"  same, after startup ({startup_ms:.0f} ms)", rate(summary["rate_from_first_delivery"]))


def add_io(table: Table, result: Dict[str, Any]) -> None:
    case = f"2 sleep 1 ms x{result['entries']:,}"
    ours, loop = result["rstream"]["rate"], result["redis_py_loop"]["rate"]
    table.add(case, f"rstream concurrency={result['concurrency']}", rate(ours), server(result["rstream"]))
    add_startup(table, case, result["rstream"])
    table.add(case, "redis-py loop (sequential)", rate(loop))
    table.add(case, "ideal", rate(result["ideal_rate"]))
    # time.sleep(0.001) overshoots; the sequential loop's rate shows by how much on this machine.
    table.add(case, f"{result['concurrency']} x the sequential loop", rate(result["concurrency"] * loop))
    table.judge(case, Target("rstream / ideal", ours / result["ideal_rate"], 0.7, True),
                ratio(ours / result["ideal_rate"]))
    table.add(case, "rstream / redis-py loop", ratio(ours / loop))


def add_latency(table: Table, result: Dict[str, Any]) -> None:
    case = f"3 latency {result['rate']:,}/s {result['seconds']:g} s"
    producer = result["producer"]
    table.add(case, "producer rate achieved", rate(producer["rate"]))
    table.add(case, "p50 XADD -> handler", f"{result['p50_ms']:.2f} ms")
    table.judge(case, Target("p99 XADD -> handler (ms)", result["p99_ms"], 2.0, False),
                f"{result['p99_ms']:.2f} ms")
    table.add(case, "p99.9 XADD -> handler", f"{result['p999_ms']:.2f} ms")
    table.add(case, "max XADD -> handler", f"{result['max_ms']:.2f} ms")


def add_memory(table: Table, result: Dict[str, Any]) -> None:
    small, large = result["backlogs"]
    case = f"4 memory {small:,} vs {large:,}"
    for count in result["backlogs"]:
        run = result["runs"][str(count)]
        table.add(case, f"peak RSS draining {count:,}",
                  f"{run['peak_rss_mb']:.1f} MB ({run['rss_before_mb']:.1f} MB before start)", server(run))
    table.judge(case, Target("peak RSS growth (MB)", result["growth_mb"], 50.0, False, inclusive=False),
                f"{result['growth_mb']:+.1f} MB")


def add_failover(table: Table, result: Dict[str, Any]) -> None:
    case = "5 failover"
    if "skipped" in result:
        table.add(case, "failover time", "skipped (see notes)")
        return
    if "failover_ms_median" in result:
        table.add(case, "setup", f"heartbeat {result['heartbeat_interval_ms']} ms x "
                  f"{result['allowed_missed_heartbeats']} missed, {result['entries']} entries held")
        table.add(case, "SIGKILL -> last entry handled elsewhere",
                  f"median {result['failover_ms_median']:.0f} ms (min {result['failover_ms_min']:.0f}, "
                  f"max {result['failover_ms_max']:.0f})")
        table.add(case, f"runs within bound {result['bound_ms']} ms", str(result["within_bound"]))
        return
    for key, value in result.items():  # a result shape this table does not know: show the scalars
        if not isinstance(value, (list, dict)):
            table.add(case, key, f"{value:.3f}" if isinstance(value, float) else str(value))


def rate_and_client(summary: Dict[str, Any]) -> str:
    """The rate and the consumer process's CPU per entry (all its threads), which a busy
    neighbour on a shared machine moves far less than it moves the rate."""
    if "client_cpu_us_per_entry" not in summary:
        return rate(summary["rate"])
    return f"{rate(summary['rate'])}, client CPU {summary['client_cpu_us_per_entry']:.2f} us/entry"


def paired(over: Dict[str, Any], under: Dict[str, Any], key: str = "rate") -> str:
    """The ratio of two variants' medians of `key` (the rate unless said), and how it spread round
    by round: the variants ran interleaved, so a round's two runs saw about the same neighbours."""
    text = ratio(over[key] / under[key])
    rounds = [a[key] / b[key] for a, b in zip(over.get("runs", []), under.get("runs", []))]
    if len(rounds) > 1:
        text += (f" (round by round: median {ratio(median(rounds))}, "
                 f"{ratio(min(rounds))} to {ratio(max(rounds))})")
    return text


def median(values: List[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def add_streams(table: Table, result: Dict[str, Any]) -> None:
    n = result["streams"]
    case = f"6 drain {result['entries']:,} over {n} streams"
    variants = result["variants"]
    labels = {
        "rstream 1 stream": "rstream compiled, 1 stream",
        "rstream 3 streams": f"rstream compiled, streams=[{n} streams] (a lane each)",
        "redis-py 1 stream": "redis-py loop, 1 stream",
        "redis-py 3 streams, one read": f"redis-py, one XREADGROUP over {n} streams + XACK each",
    }
    for key, label in labels.items():
        table.add(case, label, rate_and_client(variants[key]), server(variants[key]))
        add_startup(table, case, variants[key])
    several, one = variants["rstream 3 streams"], variants["rstream 1 stream"]
    one_read, loop = variants["redis-py 3 streams, one read"], variants["redis-py 1 stream"]
    table.add(case, f"rstream {n} streams / rstream 1 stream", paired(several, one))
    table.add(case, f"rstream {n} streams / one XREADGROUP over {n}", paired(several, one_read))
    table.add(case, f"one XREADGROUP over {n} / redis-py loop 1 stream", paired(one_read, loop))


def add_cluster(table: Table, result: Dict[str, Any]) -> None:
    streams = len(result["streams"])
    case = f"7 cluster, {result['entries']:,} over {streams} streams"
    cluster, single = result["variants"]["cluster"], result["variants"]["one server"]
    table.add(case, f"rstream, RedisCluster of {result['masters']} masters ({result['cores']} cores)",
              rate_and_client(cluster), server(cluster))
    add_startup(table, case, cluster)
    table.add(case, "rstream, the same streams on one server", rate_and_client(single), server(single))
    add_startup(table, case, single)
    table.add(case, "cluster / one server", paired(cluster, single))


ADDERS: Dict[str, Callable[[Table, Dict[str, Any]], None]] = {
    "decode": add_decode, "drain": add_drain, "io": add_io,
    "latency": add_latency, "memory": add_memory, "failover": add_failover,
    "streams": add_streams, "cluster": add_cluster,
}


def build_table(results: Dict[str, Dict[str, Any]]) -> Table:
    table = Table()
    for name, result in results.items():
        if "error" in result:
            table.add(name, "FAILED", result["error"].splitlines()[0][:100])
            continue
        try:
            ADDERS[name](table, result)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:  # a partial result
            table.add(name, "could not tabulate", f"{type(exc).__name__}: {exc}"[:100])
    return table


def write_json(path: Path, document: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def document(meta: Dict[str, Any], machine: Dict[str, Any], results: Dict[str, Dict[str, Any]],
             table: Table, notes: List[str], sizes: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    return {"meta": meta, "machine": machine, "sizes": sizes or {}, "cases": results,
            "targets": [target.as_json() for target in table.targets], "notes": notes,
            "table": table.render().splitlines(),
            "command_breakdown": render_rows(BREAKDOWN_HEADER, command_breakdown(results)).splitlines()}
