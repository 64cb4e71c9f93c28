"""`rstream info`: a terminal view of streams, their consumer groups and consumers
(`rstream.inspection` gathers it; this module only prints it).

By default one block per stream: its length (and the dead-letter stream's), a table of its
groups (pending, lag, last delivered id, age of the oldest pending entry) and one of their
consumers (pending, idle, alive or dead by rstream's heartbeat rule). ``--json`` prints one JSON
document instead: the report of `rstream.inspection` (keys in its docstring) for one ``--stream``, a list of them, in
the order given, for several. A bad URL, a missing stream or group, or a server that cannot be
reached ends with one line on stderr and exit code 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Sequence

from ..clients import client_from_option, redact
from ..errors import RedisUnavailable
from ..inspection import GroupReport, StreamReport, describe_streams
from ..options import Options
from .common import EXIT_FAILED, EXIT_OK, Append, add_redis_flag, positive_int

UNKNOWN = "?"  # a lag the server cannot tell (Redis 6.2 mid-stream, entries deleted on 7+)
NONE = "-"     # no pending entry, so no oldest one
_GROUP_HEADER = ("GROUP", "PENDING", "LAG", "LAST DELIVERED", "OLDEST PENDING")
_CONSUMER_HEADER = ("CONSUMER", "GROUP", "PENDING", "IDLE", "STATE")
# Columns aligned to the right (numbers, durations); the others to the left.
_GROUP_RIGHT = (1, 2, 4)
_CONSUMER_RIGHT = (2, 3)


def register(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    info = commands.add_parser(
        "info", help="show streams, their consumer groups and consumers",
        description="Show each stream's length, its consumer groups (pending, lag, last "
                    "delivered id, age of the oldest pending entry) and their consumers "
                    "(pending, idle, alive or dead by rstream's heartbeat rule).")
    add_redis_flag(info)
    info.add_argument("--stream", metavar="S", action=Append, required=True,
                      help="stream to show; repeat for several")
    info.add_argument("--group", metavar="G", help="show only this consumer group")
    info.add_argument("--json", action="store_true",
                      help="print one JSON document (an object; a list of them for several --stream)")
    info.add_argument("--heartbeat-interval", metavar="MS", type=positive_int,
                      default=Options.heartbeat_interval,
                      help=f"the consumers' heartbeat_interval (default {Options.heartbeat_interval})")
    info.add_argument("--allowed-missed-heartbeats", metavar="N", type=positive_int,
                      default=Options.allowed_missed_heartbeats,
                      help="beats a consumer may miss before it counts as dead "
                           f"(default {Options.allowed_missed_heartbeats})")
    info.add_argument("--dead-letter-stream", metavar="D", help="also show this stream's length")
    info.set_defaults(run=_info_command)


def _info_command(args: argparse.Namespace, argv: List[str]) -> int:
    try:
        client = client_from_option(args.redis)
    except ValueError as exc:  # a ConfigError, or redis-py's own (a port that is no number)
        return _failed(f"bad --redis URL {redact(args.redis)!r}: {exc}")
    try:
        reports = describe_streams(client, args.stream, args.group, args.heartbeat_interval,
                                   args.allowed_missed_heartbeats, args.dead_letter_stream)
    except RedisUnavailable as exc:
        return _failed(f"Redis at {redact(args.redis)} is unavailable: {exc}")
    finally:
        client.close()
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    else:
        print("\n\n".join(render(r, args.dead_letter_stream) for r in reports))
    return EXIT_OK


def _failed(message: str) -> int:
    print(f"rstream info: error: {message}", file=sys.stderr)
    return EXIT_FAILED


def render(report: StreamReport, dead_letter_stream: Optional[str] = None) -> str:
    """One stream's block of the table view."""
    title = f"stream {_shown(report['stream'])}  length {report['length']}"
    if "dead_letter_length" in report:
        title += f"  dead letters {report['dead_letter_length']}"
        title += f" ({_shown(dead_letter_stream)})" if dead_letter_stream is not None else ""
    if not report["groups"]:
        return f"{title}\n  no consumer groups"
    lines = [title, ""]
    lines += _table(_GROUP_HEADER, [_group_row(g) for g in report["groups"]], _GROUP_RIGHT)
    consumers = [(_shown(c["name"]), _shown(g["name"]), str(c["pending"]), human_ms(c["idle_ms"]),
                  "alive" if c["alive"] else "dead")
                 for g in report["groups"] for c in g["consumers"]]
    lines.append("")
    lines += _table(_CONSUMER_HEADER, consumers, _CONSUMER_RIGHT) if consumers else ["  no consumers"]
    return "\n".join(lines)


def _group_row(group: GroupReport) -> Sequence[str]:
    lag = group["lag"]
    return (_shown(group["name"]), str(group["pending"]), UNKNOWN if lag is None else str(lag),
            group["last_delivered_id"], human_ms(group["oldest_pending_age_ms"]))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int]) -> List[str]:
    """Rows under `header`, each column as wide as its widest cell, indented two spaces."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                             for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
            for row in [header, *rows]]


def human_ms(ms: Optional[int]) -> str:
    """850ms, 12.3s, 5m02s, 3h05m, 2d04h: two units at most; "-" for None."""
    if ms is None:
        return NONE
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms // 1000}.{ms % 1000 // 100}s"
    minutes, seconds = divmod(ms // 1000, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _shown(name: str) -> str:
    """A name as printed: quoted when it holds characters that would break the columns."""
    return name if name.isprintable() and name.strip() == name and name else repr(name)
