"""What every `rstream` subcommand shares: exit codes, one-line usage errors, `RSTREAM_*`
environment variables as flag defaults, and argument types.

Exit codes (the README's Command line): 0 a clean run, 1 a runtime or fatal error, 2 a usage error (bad
flags, printed as one line on stderr, not argparse's usage block).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, List, NoReturn, Optional

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
ENV_PREFIX = "RSTREAM_"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class UsageError(Exception):
    """A flag or environment variable the command cannot use; exit code 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``rstream consume: error: ...``), exit 2.
    No abbreviated flags: ``--proc 2`` must not silently mean ``--processes 2``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


class Append(argparse._AppendAction):
    """A repeatable flag whose values given on the command line replace its default (from the
    environment) instead of adding to it, as argparse's own "append" does."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> None:
        if getattr(namespace, self.dest, None) is self.default:
            setattr(namespace, self.dest, None)
        super().__call__(parser, namespace, values, option_string)


def env_name(action: argparse.Action) -> str:
    """``--batch-size`` reads ``RSTREAM_BATCH_SIZE``."""
    return ENV_PREFIX + action.dest.upper()


def apply_environment(parser: argparse.ArgumentParser) -> None:
    """Every flag of `parser` takes its default from ``RSTREAM_<FLAG>`` when that is set (a
    flag given on the command line still wins); a required flag so given is no longer
    required. Repeatable flags (``--stream``) take a comma-separated list."""
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        name = env_name(action)
        text = os.environ.get(name)
        if text is None:
            continue
        action.default = _from_environment(parser, action, name, text)
        action.required = False
        if action.help and action.help is not argparse.SUPPRESS:
            action.help += f" [set by {name}]"


def _from_environment(parser: argparse.ArgumentParser, action: argparse.Action, name: str,
                      text: str) -> Any:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                           argparse.BooleanOptionalAction)):
        lowered = text.strip().lower()
        if lowered not in _TRUE + _FALSE:
            parser.error(f"{name}={text!r}: expected 1/0, true/false, yes/no")
        value = lowered in _TRUE
        return not value if isinstance(action, argparse._StoreFalseAction) else value
    convert: Callable[[str], Any] = action.type if callable(action.type) else str
    items: List[str] = [t.strip() for t in text.split(",")] if isinstance(
        action, argparse._AppendAction) else [text]
    try:
        values = [convert(item) for item in items]
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(f"{name}={text!r}: {exc}")
    if action.choices is not None:
        for value in values:
            if value not in action.choices:
                parser.error(f"{name}={text!r}: choose from {', '.join(map(str, action.choices))}")
    return values if isinstance(action, argparse._AppendAction) else values[0]


def add_redis_flag(parser: argparse.ArgumentParser) -> None:
    """``--redis URL`` (required; also ``RSTREAM_REDIS``), the same for every subcommand."""
    parser.add_argument("--redis", metavar="URL", required=True,
                        help="the server: redis://, rediss://, unix://, redis+cluster:// or "
                             "redis+sentinel:// URL")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def optional_positive_int(text: str) -> Optional[int]:
    """A positive int, or ``none`` for an option whose default is None."""
    return None if text.strip().lower() == "none" else positive_int(text)
