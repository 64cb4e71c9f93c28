"""`rstream consume MODULE:FUNCTION`: run a handler as a consumer until SIGTERM/SIGINT.

Every `Consumer` option is a flag (``--batch-size``), made from `rstream.options.Options` so the
two cannot drift, and every flag reads ``RSTREAM_<FLAG>`` too. With ``--processes N`` the
command supervises N consumer processes (`rstream.cli.processes`), named ``NAME-1`` .. ``NAME-N``.

Exit codes: 0 after a clean stop (every handler that started finished, acks flushed), 1 when the
consumer stopped on a fatal error (wrong key type, ACL, its name taken by a newer process...), 2
for a usage error (a bad flag, a handler that cannot be imported, an option value refused).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
import threading
import typing
from typing import Any, Callable, Dict, List, Optional

from ..consumer import DEFAULT_STOP_TIMEOUT_S, Consumer
from ..errors import ConfigError, FatalRedisError
from ..options import Options
from .common import (EXIT_FAILED, EXIT_OK, Append, Parser, UsageError, add_redis_flag,
                     optional_positive_int, positive_int)

log = logging.getLogger("rstream")

# Options that are not plain flags: the names and the stream(s) have their own, the failure
# handler, the event callback and the partition key are imported from MODULE:FUNCTION like the
# handler.
_OWN_FLAGS = ("stream", "streams", "group", "consumer_name", "handle_failure", "on_event",
              "partition_by")
# Set by the supervisor in each child: the child stops when its supervisor is gone.
SUPERVISOR_ENV = "RSTREAM_SUPERVISOR_PID"
PARENT_CHECK_S = 1.0
# What each option flag means, for --help (the README's options table says more).
HELP = {
    "group_start_id": ("ID", "where a new group starts: $ (entries added from now on), 0 (the "
                             "whole stream) or an entry id"),
    "make_stream": ("", "create a missing stream (MKSTREAM) instead of waiting for it"),
    "receive_interval": ("MS", "longest wait of a blocking read when the stream is idle"),
    "heartbeat_interval": ("MS", "period of the heartbeat"),
    "allowed_missed_heartbeats": ("N", "a consumer idle longer than heartbeat-interval x N is "
                                       "dead; its entries are claimed"),
    "delete_on_ack": ("", "XDEL each entry with its XACK"),
    "concurrency": ("N", "handler threads"),
    "batch_size": ("N", "largest COUNT of one read, and of a --batch handler's batch"),
    "batch_timeout": ("MS", "with --batch: longest wait for a batch to fill up"),
    "max_in_flight": ("N", "most entries read and not yet handled, per stream (none: 4 x "
                           "batch-size)"),
    "max_attempts": ("N", "deliveries before a failing entry is dead-lettered or dropped"),
    "dead_letter_stream": ("STREAM", "stream that receives exhausted entries (needs "
                                     "--max-attempts)"),
    "start_timeout": ("MS", "fail at start if the server is not reached in time (none: keep "
                            "retrying)"),
}


def register(commands: "argparse._SubParsersAction[Parser]") -> None:
    parser = commands.add_parser(
        "consume", help="run a handler as a consumer (or N supervised processes)",
        description="Consume with MODULE:FUNCTION as the handler until SIGTERM or SIGINT, then "
                    "drain and exit 0 (1: fatal error, 2: usage error). Every flag also reads "
                    "RSTREAM_<FLAG>, e.g. RSTREAM_REDIS, RSTREAM_BATCH_SIZE.")
    parser.add_argument("target", metavar="MODULE:FUNCTION",
                        help="the handler, e.g. myapp.tasks:handle (imported from the current "
                             "directory too)")
    add_redis_flag(parser)
    parser.add_argument("--stream", action=Append, required=True, metavar="STREAM",
                        help="stream to consume; repeat for several (RSTREAM_STREAM: comma-separated)")
    parser.add_argument("--group", required=True, help="consumer group")
    parser.add_argument("--consumer", required=True, metavar="NAME",
                        help="consumer name, unique among live consumers (with --processes N: "
                             "NAME-1 .. NAME-N)")
    parser.add_argument("--handle-failure", metavar="MODULE:FUNCTION",
                        help="called as function(message, error) for each failed message")
    parser.add_argument("--on-event", metavar="MODULE:FUNCTION",
                        help="called as function(event) for outages, claims, dead letters...")
    parser.add_argument("--batch", action="store_true",
                        help="MODULE:FUNCTION is a batch handler: called with a list of up to "
                             "--batch-size messages (rstream's handle_batch)")
    parser.add_argument("--partition-by", metavar="MODULE:FUNCTION",
                        help="called as function(message) -> key: messages with the same key "
                             "are handled one at a time, in stream-id order")
    for field in dataclasses.fields(Options):
        if field.name not in _OWN_FLAGS:
            _add_option_flag(parser, field)
    parser.add_argument("--processes", type=positive_int, metavar="N",
                        help="supervise N consumer processes (for CPU-bound handlers), "
                             "restarting any that crashes")
    parser.add_argument("--stop-timeout", type=float, default=DEFAULT_STOP_TIMEOUT_S,
                        metavar="SECONDS", help="longest drain at stop (default %(default)g)")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="default %(default)s")
    parser.set_defaults(run=run)


def _add_option_flag(parser: argparse.ArgumentParser, field: "dataclasses.Field[Any]") -> None:
    """A flag for one Options field, typed from the field's annotation."""
    flag = "--" + field.name.replace("_", "-")
    hint = typing.get_type_hints(Options)[field.name]
    default = field.default
    metavar, text = HELP[field.name]
    if hint is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                            help=f"{text} (default {'on' if default else 'off'})")
        return
    shown = "none" if default is None else default
    kind = {int: positive_int, Optional[int]: optional_positive_int}.get(hint, str)
    parser.add_argument(flag, type=kind, default=default, metavar=metavar,
                        help=f"{text} (default {shown})")


def option_flags() -> List[str]:
    """The Options fields that have a flag of their own name (for the test that keeps them in
    step)."""
    return [f.name for f in dataclasses.fields(Options) if f.name not in _OWN_FLAGS]


def consumer_kwargs(args: argparse.Namespace, name: Optional[str] = None) -> Dict[str, Any]:
    """The Consumer's keyword arguments from parsed flags (handle_failure not yet imported)."""
    kwargs: Dict[str, Any] = {f: getattr(args, f) for f in option_flags()}
    streams: List[str] = args.stream
    if len(streams) == 1:
        kwargs["stream"] = streams[0]
    else:
        kwargs["streams"] = streams
    kwargs.update(group=args.group, consumer_name=name or args.consumer)
    return kwargs


def load(target: str, what: str) -> Callable[..., Any]:
    """``package.module:function`` imported (from the current directory too); UsageError
    naming the problem otherwise."""
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise UsageError(f"{what} must be MODULE:FUNCTION, got {target!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the user's own modules
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {what} module {module_name!r}: {exc}") from None
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise UsageError(f"{what} {target!r}: module {module_name!r} has no {attribute!r}") from None
    if not callable(value):
        raise UsageError(f"{what} {target!r} is not callable: {value!r}")
    return typing.cast(Callable[..., Any], value)


def check(args: argparse.Namespace) -> None:
    """Refuse option values the Consumer would refuse, before anything starts."""
    kwargs = consumer_kwargs(args)
    try:
        Options.build(**kwargs)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def run(args: argparse.Namespace, argv: List[str]) -> int:
    logging.getLogger("rstream").setLevel(args.log_level)
    check(args)
    if args.processes is not None:
        from .processes import supervise
        return supervise(args, argv)
    return consume(args)


def consume(args: argparse.Namespace) -> int:
    """One consumer in this process, until a signal or a fatal error."""
    handler = load(args.target, "handler")
    kwargs = consumer_kwargs(args)
    if args.handle_failure is not None:
        kwargs["handle_failure"] = load(args.handle_failure, "--handle-failure")
    if args.on_event is not None:
        kwargs["on_event"] = load(args.on_event, "--on-event")
    if args.partition_by is not None:
        kwargs["partition_by"] = load(args.partition_by, "--partition-by")
    try:
        consumer = Consumer(args.redis, **kwargs)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    _stop_with_supervisor(consumer)
    work = dict(handle_batch=handler) if args.batch else dict(handler=handler)
    try:
        consumer.run(stop_timeout=args.stop_timeout, **work)
    except FatalRedisError as exc:
        print(f"rstream consume: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ConfigError as exc:  # e.g. an async handler, found at start
        raise UsageError(str(exc)) from None
    return EXIT_OK


def _stop_with_supervisor(consumer: Consumer) -> None:
    """In a supervised child: stop (drain) once the supervisor is gone, e.g. SIGKILLed, so no
    orphan keeps consuming under a name a new supervisor will give another process."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if not supervisor or not supervisor.isdigit():
        return

    def watch() -> None:
        never = threading.Event()  # a daemon thread: it ends with the process
        while os.getppid() == int(supervisor):
            never.wait(PARENT_CHECK_S)
        log.warning("rstream: the supervisor (pid %s) is gone; stopping", supervisor)
        consumer.stop()

    threading.Thread(target=watch, name="rstream-supervisor-watch", daemon=True).start()
