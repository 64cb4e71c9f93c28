"""`rstream publish` in a child process fed from a pipe, as a user runs it: entries, order,
trimming, bad lines, environment variables, an unreachable server."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Any, Dict, List, Optional

import pytest
import redis

from helpers import REPO_ROOT, wait_until
from rstream.cli.publish import parse_block

TIMEOUT_S = 60.0


def child_env(env: Optional[Dict[str, str]]) -> Dict[str, str]:
    merged = {k: v for k, v in os.environ.items() if not k.startswith("RSTREAM_")}
    merged.update(env or {})
    merged["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), merged.get("PYTHONPATH")]))
    return merged


def publish(stdin: str, *args: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    """`python -m rstream publish ARGS` with `stdin` written to its pipe."""
    return subprocess.run([sys.executable, "-m", "rstream", "publish", *args], input=stdin,
                          capture_output=True, text=True, env=child_env(env), timeout=TIMEOUT_S)


def lines_of(objects: List[Dict[str, Any]]) -> str:
    return "".join(json.dumps(o) + "\n" for o in objects)


def stored(r: redis.Redis, stream: str) -> List[Dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in r.xrange(stream)]


def test_1000_lines_become_1000_entries_in_order(redis_url: str, r: redis.Redis) -> None:
    """Every line is one entry with its fields, in line order; strings as they are, other values
    as JSON text; one summary line on stderr, nothing on stdout."""
    objects = [{"n": n, "name": f"item-{n}", "ok": n % 2 == 0, "price": 1.5, "none": None,
                "tags": ["a", n], "ünï": "cödé"} for n in range(1_000)]
    result = publish(lines_of(objects), "--redis", redis_url, "--stream", "s")
    assert (result.returncode, result.stdout) == (0, ""), result.stderr
    assert result.stderr == "published 1000 entries to s\n"
    assert stored(r, "s") == [{"n": str(n), "name": f"item-{n}", "ok": "true" if n % 2 == 0 else "false",
                               "price": "1.5", "none": "null", "tags": f'["a",{n}]', "ünï": "cödé"}
                              for n in range(1_000)]


def test_ids_are_printed_in_order_and_blank_lines_skipped(redis_url: str, r: redis.Redis) -> None:
    """--ids prints each new id on stdout, in order; blank lines and a last line without a
    newline are handled."""
    text = '{"n": 0}\n\n   \n{"n": 1}\r\n{"n": 2}'
    result = publish(text, "--redis", redis_url, "--stream", "s", "--ids")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [i.decode() for i, _ in r.xrange("s")]
    assert stored(r, "s") == [{"n": "0"}, {"n": "1"}, {"n": "2"}]
    assert result.stderr == "published 3 entries to s\n"


def test_lines_are_sent_as_they_come(redis_url: str, r: redis.Redis) -> None:
    """Streaming: lines written to a pipe that stays open are in the stream before stdin ends."""
    child = subprocess.Popen([sys.executable, "-m", "rstream", "publish", "--redis", redis_url,
                              "--stream", "s"], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=child_env(None))
    try:
        assert child.stdin is not None
        child.stdin.write('{"n": 0}\n{"n": 1}\n')
        child.stdin.flush()
        wait_until(lambda: r.xlen("s") == 2, TIMEOUT_S, message="lines not sent before stdin ended")
        assert child.poll() is None
        child.stdin.write('{"n": 2}\n')
        child.stdin.close()
        assert child.wait(TIMEOUT_S) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert stored(r, "s") == [{"n": "0"}, {"n": "1"}, {"n": "2"}]


@pytest.mark.parametrize("flags, low, high", [(["--exact"], 10, 10), ([], 10, 110)])
def test_maxlen_trims_to_the_newest(redis_url: str, r: redis.Redis, flags: List[str], low: int,
                                    high: int) -> None:
    """--maxlen 10 --exact keeps exactly the newest 10; --maxlen 10 alone (approximate) keeps the
    newest 10 to 110 (whole nodes of 100) of 1,000."""
    r.config_set("stream-node-max-entries", 100)
    objects = [{"n": n} for n in range(1_000)]
    result = publish(lines_of(objects), "--redis", redis_url, "--stream", "s", "--maxlen", "10", *flags)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "published 1000 entries to s\n"
    kept = [int(f["n"]) for f in stored(r, "s")]
    assert low <= len(kept) <= high and kept == list(range(1_000 - len(kept), 1_000))


def test_a_bad_line_is_exit_2_naming_it_and_stops_there(redis_url: str, r: redis.Redis) -> None:
    """Line 1,502 (a blank line counted) is no JSON: exit 2, one stderr line naming it; the
    1,500 entries before it are in the stream, none of the 500 after it."""
    before = [{"n": n} for n in range(1_500)]
    text = lines_of(before) + "\n{not json\n" + lines_of([{"after": n} for n in range(500)])
    result = publish(text, "--redis", redis_url, "--stream", "s")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("rstream publish: error: line 1502: not valid JSON: "), line
    assert "the 1500 entries before it were published" in line
    assert stored(r, "s") == [{"n": str(n)} for n in range(1_500)]


@pytest.mark.parametrize("bad, named", [
    (b"{not json", "not valid JSON: Expecting property name enclosed in double quotes at column 2"),
    (b'["a", "b"]', "a JSON array, not an object"),
    (b'"text"', "a JSON string, not an object"),
    (b"null", "a JSON null, not an object"),
    (b"{}", "an empty object"),
    (b'{"a": NaN}', "NaN is not JSON"),
    (b'{"a": 1e999}', "the number 1e999 is too large"),
    (b'{"a": "\xff"}', "not UTF-8 (byte 8)"),
])
def test_each_kind_of_bad_line_is_named(bad: bytes, named: str) -> None:
    """No server: every kind of bad line is refused with its own reason and its line number,
    and the good lines before it in the same read are kept."""
    entries, problem = parse_block([(1, b'{"a": 1}'), (2, b""), (3, bad), (4, b'{"b": 2}')])
    assert entries == [{"a": "1"}]
    assert problem is not None and problem.startswith(f"line 3: {named}"), problem


def test_environment_instead_of_flags(redis_url: str, r: redis.Redis) -> None:
    """RSTREAM_REDIS, RSTREAM_STREAM, RSTREAM_MAXLEN and RSTREAM_EXACT stand for the flags."""
    env = {"RSTREAM_REDIS": redis_url, "RSTREAM_STREAM": "from-env", "RSTREAM_MAXLEN": "3",
           "RSTREAM_EXACT": "1"}
    result = publish(lines_of([{"n": n} for n in range(20)]), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "published 20 entries to from-env\n"
    assert stored(r, "from-env") == [{"n": "17"}, {"n": "18"}, {"n": "19"}]


def test_an_unreachable_server_is_exit_1_with_one_line() -> None:
    """Nobody listens on the port: exit 1 and one error line, no traceback, before any input."""
    with socket.socket() as s:  # free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = publish('{"n": 1}\n', "--redis", f"redis://127.0.0.1:{port}/0", "--stream", "s")
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("rstream: error: ") and f"127.0.0.1:{port}" in line, line


def test_missing_stream_is_a_usage_error() -> None:
    """No --stream and no RSTREAM_STREAM: exit 2 with one line naming the flag."""
    result = publish("", "--redis", "redis://127.0.0.1:1/0")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "--stream" in line, line
