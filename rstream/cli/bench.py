"""`rstream bench [ARGS...]`: run the benchmark harness (``bench/run.py`` of a source checkout).

The harness and its baselines live in the repository's ``bench/`` directory, not in the
installed package (they need walrus, redis-benchmark and a C compiler for some cases). This
finds it next to the package (an editable install or a checkout on ``PYTHONPATH``) or in the
current directory, and runs it with the remaining arguments.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

from .common import Parser, UsageError

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent


def register(commands: "argparse._SubParsersAction[Parser]") -> None:
    parser = commands.add_parser(
        "bench", help="run the benchmark harness (bench/run.py of a source checkout)",
        description="Run bench/run.py with the arguments after `bench` (e.g. `rstream bench "
                    "--quick --cases drain`); `rstream bench -- --help` lists them.")
    parser.add_argument("harness_args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="arguments for bench/run.py")
    parser.set_defaults(run=run)


def find_harness(places: Optional[List[Path]] = None) -> Optional[Path]:
    for root in places if places is not None else [_PACKAGE_ROOT, Path.cwd()]:
        candidate = root / "bench" / "run.py"
        if candidate.is_file():
            return candidate
    return None


def run(args: argparse.Namespace, argv: List[str]) -> int:
    harness = find_harness()
    if harness is None:
        raise UsageError("the benchmark harness is not installed with the package: run this from "
                         "a clone of the rstream repository (it has bench/run.py)")
    rest: List[str] = args.harness_args
    if rest[:1] == ["--"]:
        rest = rest[1:]
    return subprocess.call([sys.executable, str(harness), *rest], cwd=harness.parent.parent)
