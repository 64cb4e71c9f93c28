"""Run every benchmark case against one private Redis server; print a table, write JSON.

    python bench/run.py [--quick] [--json out.json] [--redis-server PATH] [--cases drain,latency]

Cases: 0 decode (compiled vs pure decode_entries), 1 drain a pre-filled backlog (rstream compiled and
pure-Python, the hiredis C consumer, a redis-py loop, walrus, the redis-benchmark C-client limit), 2 I/O-bound handlers,
3 XADD -> handler latency, 4 consumer memory on a large backlog, 5 failover (bench/failover.py),
6 streams: one backlog over 3 streams (rstream streams=[...], one stream, one XREADGROUP over all),
7 cluster: those streams on a local 3-master Redis Cluster vs one server.
`--quick` shrinks every case for a smoke run. See bench/README.md for what each baseline is.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

if __package__ in (None, ""):  # `python bench/run.py`: make `bench` and this checkout's rstream importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cases import CASES, FULL, QUICK, Context  # noqa: E402
from bench.common import REPO_ROOT, BenchError  # noqa: E402
from bench.machine import describe, describe_line  # noqa: E402
from bench.report import BREAKDOWN_HEADER, build_table, command_breakdown, document, render_rows, write_json  # noqa: E402
from rstream.embedded import EmbeddedServer, find_server_binary  # noqa: E402

DEFAULT_JSON = REPO_ROOT / "bench" / "results" / "latest.json"
SYSTEM_SERVER = "/usr/bin/redis-server"


def default_server_binary() -> str:
    """The distribution's Redis when installed (what users run), else whatever rstream.embedded finds."""
    return SYSTEM_SERVER if os.access(SYSTEM_SERVER, os.X_OK) else find_server_binary()


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each: a smoke run")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    parser.add_argument("--redis-server", help=f"server binary (default {SYSTEM_SERVER} if present)")
    parser.add_argument("--cases", help="comma-separated subset of: " + ",".join(name for name, _ in CASES))
    args = parser.parse_args(argv)
    known = [name for name, _ in CASES]
    args.cases = args.cases.split(",") if args.cases else known
    unknown = sorted(set(args.cases) - set(known))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {known}")
    return args


def run_cases(ctx: Context, selected: List[str]) -> Dict[str, Dict[str, Any]]:
    results: Dict[str, Dict[str, Any]] = {}
    for name, case in CASES:
        if name not in selected:
            continue
        print((case.__doc__ or name).splitlines()[0], flush=True)
        started = time.monotonic()
        try:
            results[name] = case(ctx)
        except BenchError as exc:
            print(f"    FAILED: {exc}", flush=True)
            results[name] = {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one broken case must not cost the others
            print(f"    FAILED: {traceback.format_exc()}", flush=True)
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        results[name]["wall_s"] = time.monotonic() - started
    return results


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    binary = args.redis_server or default_server_binary()
    sizes = QUICK if args.quick else FULL
    started = datetime.datetime.now(datetime.timezone.utc)
    with EmbeddedServer(binary) as server:
        client = server.client()
        ctx = Context(url=server.url, client=client, binary=binary, sizes=sizes, quick=args.quick)
        machine = describe(client, binary, ctx.redis_benchmark)
        print(f"rstream benchmark, {'quick' if args.quick else 'full'} run, {started:%Y-%m-%d %H:%M} UTC")
        print(describe_line(machine), flush=True)
        results = run_cases(ctx, args.cases)
        client.close()
    machine["load_average_end"] = os.getloadavg()[0]
    table = build_table(results)
    print(f"\n{table.render()}\n\nload average {machine['load_average']:.2f} at start, "
          f"{machine['load_average_end']:.2f} at end; server CPU is its {machine['server_cpu_scope']} "
          "(us per entry, and busy = CPU s / wall s); rates are medians of "
          f"{sizes.repeat} run(s) where repeated ({sizes.drain_repeat} in case 1, {sizes.streams_repeat} in "
          "cases 6 and 7)")
    breakdown = command_breakdown(results)
    if breakdown:
        print("\ncase 1, server time per command (INFO commandstats over each window, medians):\n"
              + render_rows(BREAKDOWN_HEADER, breakdown))
    notes = ctx.all_notes()
    for note in notes:
        print(f"note: {note}")
    meta = {"started": started.isoformat(), "quick": args.quick, "cases": args.cases,
            "command": " ".join(["python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])])}
    write_json(args.json, document(meta, machine, results, table, notes, dataclasses.asdict(sizes)))
    print(f"results written to {args.json}")
    return 1 if any("error" in result for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
