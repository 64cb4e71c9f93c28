"""`rstream publish`: one stream entry per JSON object line on stdin, through `rstream.Producer`.

Streaming: stdin is read a block at a time (what one read returns, at most `BLOCK` bytes), and
the lines each block completes go out at once in one pipeline (`Producer.send_many`). A fast
writer's lines so travel in large pipelines, a slow writer's (``tail -f``) as they come, and
memory stays bounded whatever the input's length.

Values: a JSON string is stored as it is; any other value as its compact JSON text: ``42`` ->
``42``, ``1.50`` -> ``1.5`` (Python's shortest form of the float), ``true`` -> ``true``,
``null`` -> ``null``, ``{"a": [1, 2]}`` -> ``{"a":[1,2]}``. NaN, Infinity and numbers too large
for a float are refused: they are not JSON.

A bad line (not UTF-8, not JSON, not an object, an empty object) stops the command with a usage
error (exit 2) naming its number: the entries of the lines before it were sent (they were
streamed), nothing from it on is. Blank lines are skipped but counted in line numbers.

Redis commands: PING (at start, so a wrong URL fails before the first line arrives) and the
Producer's XADDs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, TextIO, Tuple

import redis.exceptions as rex

from ..clients import client_from_option
from ..errors import ConfigError, RStreamError
from ..faults import translate
from ..producer import Producer
from .common import EXIT_OK, UsageError, add_redis_flag, positive_int

BLOCK = 1 << 16  # bytes asked of one read of stdin
Line = Tuple[int, bytes]


class PublishFailed(RStreamError):
    """Redis refused or lost a round trip; the message says how many entries went before."""


class BadLine(ValueError):
    """A line that is no JSON object with fields."""


def register(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    publish = commands.add_parser(
        "publish", help="add one entry per JSON object line on stdin to a stream",
        description="Read JSON objects, one per line, from stdin and add each to --stream as one "
                    "entry (field -> value; strings as they are, other values as JSON text). "
                    "Prints 'published N entries to S' on stderr.")
    add_redis_flag(publish)
    publish.add_argument("--stream", metavar="S", required=True, help="the stream to add to")
    publish.add_argument("--maxlen", metavar="N", type=positive_int,
                         help="trim the stream to N entries at every XADD (default: no trimming)")
    trim = publish.add_mutually_exclusive_group()
    trim.add_argument("--exact", dest="exact", action="store_true",
                      help="trim to exactly --maxlen entries (MAXLEN N)")
    trim.add_argument("--approximate", dest="exact", action="store_false",
                      help="trim to about --maxlen entries, whole nodes only (MAXLEN ~ N; the default)")
    publish.add_argument("--ids", action="store_true", help="print each new entry's id on stdout")
    publish.set_defaults(run=_publish_command)


def _publish_command(args: argparse.Namespace, argv: List[str]) -> int:
    client = client_from_option(args.redis)
    try:
        try:
            client.ping()
        except (rex.RedisError, OSError) as exc:
            raise translate(exc) from None
        try:
            producer = Producer(client, args.stream, maxlen=args.maxlen, approximate=not args.exact)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        with producer:
            count = publish_lines(producer, _line_blocks(sys.stdin.fileno()),
                                  sys.stdout if args.ids else None)
    finally:
        client.close()
    print(f"published {count} entries to {args.stream}", file=sys.stderr)
    return EXIT_OK


def publish_lines(producer: Producer, blocks: Iterator[List[Line]], ids_out: Optional[TextIO]) -> int:
    """Send each block's entries in one go; how many were sent. A bad line is a UsageError
    after the entries before it were sent."""
    published = 0
    for block in blocks:
        entries, bad = parse_block(block)
        try:
            ids = producer.send_many(entries)
        except RStreamError as exc:
            raise PublishFailed(f"{exc} (after {published} entries were published to "
                                f"{producer.stream}; the {len(entries)} of this round trip may "
                                "or may not have been added)") from None
        published += len(ids)
        if ids_out is not None and ids:
            ids_out.write("".join(f"{i}\n" for i in ids))
            ids_out.flush()
        if bad is not None:
            raise UsageError(f"{bad}; the {published} entries before it were published to "
                             f"{producer.stream}, none after it")
    return published


def _line_blocks(fd: int) -> Iterator[List[Line]]:
    """The lines of `fd`, numbered from 1, grouped by the read that completed them."""
    number, pieces = 0, []
    while True:
        block = os.read(fd, BLOCK)
        if not block:
            break
        if b"\n" not in block:
            pieces.append(block)  # joined once the line ends: a long line costs no re-copying
            continue
        *lines, tail = b"".join([*pieces, block]).split(b"\n")
        pieces = [tail] if tail else []
        yield [(number + n, line) for n, line in enumerate(lines, 1)]
        number += len(lines)
    if pieces:  # the last line had no newline
        yield [(number + 1, b"".join(pieces))]


def parse_block(block: List[Line]) -> Tuple[List[Dict[str, str]], Optional[str]]:
    """The entries of the block's lines up to the first bad one, and what is wrong with it."""
    entries: List[Dict[str, str]] = []
    for number, line in block:
        if not line.strip():
            continue
        try:
            entries.append(parse_line(line))
        except BadLine as exc:
            return entries, f"line {number}: {exc}"
    return entries, None


def parse_line(line: bytes) -> Dict[str, str]:
    """The fields of one line: a non-empty JSON object, values as the module docstring says."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadLine(f"not UTF-8 (byte {exc.start + 1})") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise BadLine(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, dict):
        raise BadLine(f"a JSON {_json_kind(value)}, not an object of field -> value")
    if not value:
        raise BadLine("an empty object: an entry needs at least one field")
    return {name: v if isinstance(v, str) else json.dumps(v, separators=(",", ":"), ensure_ascii=False)
            for name, v in value.items()}


def _refuse_constant(name: str) -> Any:
    raise BadLine(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise BadLine(f"the number {text} is too large")
    return value


def _json_kind(value: Any) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds[type(value)]
