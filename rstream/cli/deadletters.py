"""`rstream dead-letters [list|replay]`: show the entries a Consumer dead-lettered, and move them
back to the streams they came from (`rstream.deadletters`: one script per entry, so an entry is
never in both streams and never in neither, even when the command is killed half-way).

    rstream dead-letters --redis URL --stream D                 # list (the default)
    rstream dead-letters list --redis URL --stream D --json     # one JSON object per line
    rstream dead-letters replay --redis URL --stream D --yes    # replay them all
    rstream dead-letters replay ... --source orders --count 10 --yes
    rstream dead-letters replay ... --id 1700000000000-0 --yes

``--stream`` is the dead-letter stream, so it reads ``RSTREAM_DEAD_LETTER_STREAM``, the variable
`rstream consume` takes its ``--dead-letter-stream`` from. A replay without ``--yes`` is a usage
error: ``list`` with the same flags shows what it would move. A dead-letter stream that does not
exist holds no dead letters (a healthy system has none): listing it prints that and exits 0.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List

import redis

from .. import deadletters
from ..clients import client_from_option, redact
from ..deadletters import DeadLetter, Replay
from ..errors import ConfigError, RedisUnavailable, RStreamError
from ..faults import translate
from .common import EXIT_OK, Append, UsageError, add_redis_flag, positive_int

ERROR_WIDTH = 60  # characters of the error column in the table


class DeadLettersError(RStreamError):
    """An expected failure of the command (unreachable server, bad URL), as one line."""


def register(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "dead-letters", help="list dead letters, and replay them to their source streams",
        description="List the entries a Consumer moved to its dead-letter stream (the default), "
                    "or replay them: each goes back to its source stream with its original "
                    "fields and leaves the dead-letter stream, atomically.")
    parser.add_argument("action", nargs="?", choices=("list", "replay"), default="list",
                        help="list (default) or replay")
    add_redis_flag(parser)
    parser.add_argument("--stream", "--dead-letter-stream", dest="dead_letter_stream",
                        metavar="D", required=True,
                        help="the dead-letter stream (RSTREAM_DEAD_LETTER_STREAM, as for consume)")
    parser.add_argument("--start", type=_bound, default="-", metavar="ID",
                        help="first dead-letter id (default: -, the oldest); (ID leaves ID out")
    parser.add_argument("--end", type=_bound, default="+", metavar="ID",
                        help="last dead-letter id (default: +, the newest; a replay never goes "
                             "past the newest present when it starts); (ID leaves ID out")
    parser.add_argument("--count", type=positive_int, metavar="N", help="at most N entries")
    parser.add_argument("--source", metavar="S", help="only dead letters from stream S")
    parser.add_argument("--id", dest="ids", action=Append, type=_entry_id, metavar="ID",
                        help="replay: this dead-letter id (repeat for more); not with "
                             "--start/--end/--count")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument("--yes", action="store_true", help="replay: really move the entries")
    parser.set_defaults(run=_command)


def _bound(text: str) -> str:
    if not deadletters.is_stream_id(text):
        raise argparse.ArgumentTypeError(f"not a stream id: {text!r} (ms-seq, ms, - or +; "
                                         "( in front excludes it)")
    return text


def _entry_id(text: str) -> str:
    if not deadletters.is_entry_id(text):
        raise argparse.ArgumentTypeError(f"not a stream entry id: {text!r} (ms-seq)")
    return text


def _command(args: argparse.Namespace, argv: List[str]) -> int:
    _check_flags(args)
    client = _connect(args.redis)
    try:
        return _replay(client, args) if args.action == "replay" else _list(client, args)
    finally:
        client.close()


def _check_flags(args: argparse.Namespace) -> None:
    if args.ids and args.action == "list":
        raise UsageError("--id goes with replay; to list one id use --start ID --end ID")
    if args.ids and (args.start, args.end, args.count) != ("-", "+", None):
        raise UsageError("--id cannot be combined with --start, --end or --count")
    if args.action == "replay" and not args.yes:
        raise UsageError("replay moves dead letters back to their source streams: add --yes "
                         "(list with the same flags shows what would move)")


def _connect(url: str) -> Any:
    """A client that answered PING, or one line saying what is wrong with the URL or server."""
    try:
        client = client_from_option(url)
    except ConfigError:
        raise
    except ValueError as exc:  # redis-py's own parse of the URL (a port that is no number)
        raise DeadLettersError(f"bad --redis URL {redact(url)!r}: {exc}") from None
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        error = translate(exc)
        if isinstance(error, RedisUnavailable):
            raise DeadLettersError(f"cannot reach Redis at {redact(url)}: {error}") from None
        raise error from None
    return client


def _list(client: Any, args: argparse.Namespace) -> int:
    stream = args.dead_letter_stream
    letters = deadletters.list_dead_letters(client, stream, args.start, args.end, args.count,
                                            args.source)
    if args.json:
        for letter in letters:
            print(json.dumps(_letter_json(letter)))
    elif letters:
        _print_table(letters)
        print(f"{len(letters)} dead letter{'s' if len(letters) != 1 else ''} in {stream!r}")
    else:
        missing = "" if deadletters.stream_exists(client, stream) else " (no such stream)"
        print(f"no dead letters in {stream!r}{missing}")
    return EXIT_OK


def _replay(client: Any, args: argparse.Namespace) -> int:
    stream = args.dead_letter_stream
    done = deadletters.iter_replay(client, stream, args.ids, args.start, args.end, args.count,
                                   args.source)
    moved = gone = 0
    for result in done:
        moved, gone = moved + (result.new_id is not None), gone + (result.new_id is None)
        print(json.dumps(_replay_json(result)) if args.json else _replay_line(result), flush=True)
    if not args.json:
        print(f"replayed {moved} dead letter{'s' if moved != 1 else ''} from {stream!r}"
              + (f"; {gone} already gone" if gone else ""))
    return EXIT_OK


def _replay_line(result: Replay) -> str:
    if result.new_id is None:
        return f"gone {result.dead_letter_id} (replayed already, or deleted)"
    return f"replayed {result.dead_letter_id} -> {result.source} {result.new_id}"


def _replay_json(result: Replay) -> Dict[str, Any]:
    return {"id": result.dead_letter_id, "source": result.source, "new_id": result.new_id}


def _print_table(letters: List[DeadLetter]) -> None:
    rows = [("ID", "SOURCE", "ORIGINAL ID", "ATTEMPT", "ERROR")]
    rows += [(x.id, x.source, x.original_id, str(x.attempt), _short(x.error)) for x in letters]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])


def _short(error: str) -> str:
    flat = " ".join(error.split())
    return flat if len(flat) <= ERROR_WIDTH else flat[:ERROR_WIDTH - 3] + "..."


def _letter_json(letter: DeadLetter) -> Dict[str, Any]:
    return {"id": letter.id, "source": letter.source, "original_id": letter.original_id,
            "group": letter.group, "consumer": letter.consumer, "attempt": letter.attempt,
            "error": letter.error,
            "fields": {_json_text(k): _json_text(v) for k, v in letter.fields.items()}}


def _json_text(value: Any) -> str:
    """Field names and values as JSON strings; bytes that are not UTF-8 show as \\x escapes."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
