"""Child program of case 5: run `bench.failover.measure_failover` in its own process.

    python -m bench.failover_case --url URL --binary PATH [--quick]

`bench/failover.py` belongs to the failover issue. Its `measure_failover(...) -> dict` gets, of the
keyword arguments below, those its signature names (so either side can evolve): `url` / `redis_url`
(the harness's server), `server_binary` / `binary` / `redis_server` (path of that server's binary,
for a measurement that needs a server of its own) and `quick`.
"""
from __future__ import annotations

import argparse
import inspect
from typing import Any, Dict, List, Optional

from bench.common import BenchError, emit


def call_arguments(function: Any, offered: Dict[str, Any]) -> Dict[str, Any]:
    """The offered keyword arguments the function accepts; BenchError if it requires others."""
    parameters = inspect.signature(function).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    chosen = {name: value for name, value in offered.items() if takes_any or name in parameters}
    missing = [name for name, p in parameters.items()
               if p.default is inspect.Parameter.empty and name not in chosen
               and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    if missing:
        raise BenchError(f"measure_failover requires {missing}, which the harness does not know")
    return chosen


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.failover_case", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    from bench.failover import measure_failover  # type: ignore[import-not-found,unused-ignore]

    offered = {"url": args.url, "redis_url": args.url, "server_binary": args.binary,
               "binary": args.binary, "redis_server": args.binary, "quick": args.quick}
    result = measure_failover(**call_arguments(measure_failover, offered))
    if not isinstance(result, dict):
        raise BenchError(f"measure_failover returned {type(result).__name__}, not a dict")
    emit(result)


if __name__ == "__main__":
    main()
