"""The `rstream` command line. Each subcommand is a module with a `register(commands)` that adds
its parser and sets ``run`` to a function ``(args, argv) -> exit code``:

- `rstream consume` (`consume`, `processes`): run a handler as a consumer, or N supervised
  consumer processes;
- `rstream info` (`info`): streams, their consumer groups and consumers, as a table or JSON;
- `rstream publish` (`publish`): add one entry per JSON object line on stdin to a stream;
- `rstream dead-letters` (`deadletters`): list dead letters, and replay them to their source streams;
- `rstream demo` (`demo`): publish entries and drain them, printing the throughput;
- `rstream bench` (`bench`): run the benchmark harness of a source checkout.

Every flag also reads ``RSTREAM_<FLAG>`` (`common.apply_environment`). Exit codes: 0 clean, 1 a
runtime or fatal error (one line on stderr, no traceback), 2 a usage error (one line).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, List, Optional, Sequence

import redis

from .. import __version__
from ..errors import RStreamError
from . import bench, consume, deadletters, demo, info, publish
from .common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Parser, UsageError, apply_environment

COMMANDS = (consume, info, publish, deadletters, demo, bench)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `rstream` console script and of `python -m rstream`."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(args_list)
        if unknown:  # named by the subcommand's parser: "rstream info: error: ..."
            parser_of(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    command: Callable[[argparse.Namespace, List[str]], int] = args.run
    try:
        return command(args, args_list)
    except UsageError as exc:
        print(f"rstream {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RStreamError, redis.RedisError, OSError) as exc:
        print(f"rstream: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("rstream: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def parser_of(parser: argparse.ArgumentParser, command: Optional[str]) -> argparse.ArgumentParser:
    """The subcommand's own parser (the top-level one without a subcommand)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub: argparse.ArgumentParser = action.choices[command]
            return sub
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rstream",
                    description="rstream: consume Redis Streams as a consumer-group member.")
    parser.add_argument("--version", action="version", version=f"rstream {__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND",
                                     parser_class=Parser)
    for module in COMMANDS:
        module.register(commands)
    for sub in commands.choices.values():
        apply_environment(sub)
    return parser
