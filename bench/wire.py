"""What each drain variant sends, command by command: one drain of each under MONITOR.

    python -m bench.wire [--count 20000] [--redis-server PATH]

Starts a private server, fills a stream, and drains it once with each variant of case 1 (rstream
compiled, the C consumer when it builds, the redis-py loop) while a MONITOR connection records
every command the server runs. Prints, per variant, the commands by kind: full reads
(`XREADGROUP ... COUNT 500 STREAMS s >`, with or without BLOCK), heartbeats (the read past the
largest id), XACKs with how many ids each carried, and everything else, the commands scripts
run marked "in a script". MONITOR costs the server time, so this counts and never times: the
rates and CPU are case 1's (bench/run.py).
"""
from __future__ import annotations

import argparse
import collections
import shlex
import sys
import threading
from pathlib import Path
from typing import Any, Counter, Dict, List, Optional, Set

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from bench import c_consumer  # noqa: E402
from bench.cases import DRAIN_VARIANTS  # noqa: E402
from bench.common import new_group, prefill, run_child  # noqa: E402
from rstream.embedded import EmbeddedServer  # noqa: E402

STREAM = "bench:wire"


class Recorder:
    """A MONITOR connection's lines, collected on a thread until stop()."""

    def __init__(self, client: redis.Redis) -> None:
        self.lines: List[str] = []
        self._monitor = client.monitor()  # type: ignore[no-untyped-call]
        self._monitor.__enter__()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for event in self._monitor.listen():
            if self._stopping and "bench:wire:stop" in event["command"]:
                return
            self.lines.append(f"{event.get('client_type', '')} {event['command']}")

    def stop(self, client: redis.Redis) -> List[str]:
        self._stopping = True
        client.get("bench:wire:stop")  # a marker MONITOR sees after everything before it
        self._thread.join(timeout=30)
        self._monitor.__exit__(None, None, None)
        return self.lines


def kind(line: str) -> str:
    """One command line of MONITOR (client type, then the command) -> what it is."""
    client_type, _, command = line.partition(" ")
    words = shlex.split(command) if command else [""]
    name = words[0].upper()
    where = " (in a script)" if client_type == "lua" else ""
    if name == "XREADGROUP":
        if words[-1] == ">":
            block = "BLOCK" in (word.upper() for word in words)
            return f"XREADGROUP COUNT {words[words.index('COUNT') + 1]} >{' BLOCK' if block else ''}{where}"
        return f"XREADGROUP of history (id {words[-1]}){where}"
    if name == "XACK":
        return f"XACK{where}"
    if name == "XPENDING" and len(words) > 3:
        return f"XPENDING extended form{where}"
    if name == "INFO":
        return f"INFO {words[1] if len(words) > 1 else ''}".strip()
    if name in ("XINFO", "XGROUP", "CLIENT", "CONFIG"):
        return f"{name} {words[1].upper() if len(words) > 1 else ''}{where}"
    return name + where


def tally(lines: List[str]) -> Dict[str, Any]:
    kinds: Counter[str] = collections.Counter()
    ack_sizes: List[int] = []
    acked: Set[str] = set()
    for line in lines:
        what = kind(line)
        kinds[what] += 1
        if what == "XACK":
            ids = shlex.split(line.partition(" ")[2])[3:]
            ack_sizes.append(len(ids))
            acked.update(ids)
    return {"kinds": dict(kinds.most_common()), "xack_ids": ack_sizes, "distinct_acked": len(acked)}


def run_variant(server_url: str, client: redis.Redis, label: str, variant: str, env: Dict[str, str],
                count: int, extra: List[str]) -> Dict[str, Any]:
    group = f"wire-{variant}-{label.split()[-1]}"
    new_group(client, STREAM, group)
    recorder = Recorder(client)
    args = [variant, "--url", server_url, "--stream", STREAM, "--group", group, "--count", str(count),
            "--timeout", "120", *extra]
    run_child("bench.drain", args, timeout=180, env=env)
    return tally(recorder.stop(client))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wire", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--redis-server", default=None)
    args = parser.parse_args(argv)
    from bench.run import default_server_binary

    binary, built = c_consumer.build()
    variants = [DRAIN_VARIANTS[0]] + ([("C consumer", "c-consumer", {})] if binary else []) + [DRAIN_VARIANTS[2]]
    if binary is None:
        print(f"C consumer skipped: {built}")
    with EmbeddedServer(args.redis_server or default_server_binary()) as server:
        client = server.client()
        prefill(client, STREAM, args.count)
        for label, variant, env in variants:
            extra = ["--c-binary", binary] if variant == "c-consumer" and binary else []
            result = run_variant(server.url, client, label, variant, env, args.count, extra)
            print(f"\n{label}, {args.count:,} entries (the harness's own INFO and XPENDING included):")
            for what, calls in result["kinds"].items():
                print(f"  {calls:6,}  {what}  ({calls / args.count * 500:.2f} per 500 entries)")
            sizes = sorted(result["xack_ids"])
            if sizes:
                print(f"  XACK ids per call: min {sizes[0]}, median {sizes[len(sizes) // 2]}, "
                      f"max {sizes[-1]}, mean {sum(sizes) / len(sizes):.0f}; {sum(sizes):,} ids sent, "
                      f"{result['distinct_acked']:,} distinct")
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
