"""`rstream info` in a child process, as a user runs it: the JSON document matches what XINFO
says when read directly, the table names every consumer alive or dead, and every failure is
one line with its exit code (1 at run time, 2 for a bad flag)."""
from __future__ import annotations

import json
import re
import socket
from typing import Optional

import pytest
import redis

from helpers import add_entries, unique_name
from rstream.embedded import EmbeddedServer
from rstream.cli.info import human_ms
from test_cli import run_cli
from test_inspection import HEARTBEAT_MS, MISSED, OLD_MS, busy_group, server_ms

RULE_FLAGS = ("--heartbeat-interval", str(HEARTBEAT_MS), "--allowed-missed-heartbeats", str(MISSED))


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_json_matches_xinfo(r: redis.Redis, redis_server: EmbeddedServer) -> None:
    """`--json` for one stream prints the SPEC object; every value agrees with XINFO STREAM,
    GROUPS, CONSUMERS and XPENDING read by the test (the lag with XINFO GROUPS' on 7+; on 6.2,
    which has none, null mid-stream), and alive/dead follow the given rule."""
    redis_url = redis_server.url
    with busy_group(redis_url) as scene:
        result = run_cli("info", "--redis", redis_url, "--stream", scene.stream, "--json", *RULE_FLAGS)
        (xgroup,) = r.xinfo_groups(scene.stream)
        xconsumers = {c["name"].decode(): c["pending"] for c in r.xinfo_consumers(scene.stream, scene.group)}
        summary = r.xpending(scene.stream, scene.group)
        now_ms = server_ms(r)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"stream", "length", "groups"}
    assert (report["stream"], report["length"]) == (scene.stream, r.xinfo_stream(scene.stream)["length"])
    (group,) = report["groups"]
    assert set(group) == {"name", "pending", "lag", "last_delivered_id", "oldest_pending_age_ms", "consumers"}
    assert (group["name"], group["pending"], group["last_delivered_id"], group["lag"]) == \
        (xgroup["name"].decode(), summary["pending"], xgroup["last-delivered-id"].decode(), xgroup.get("lag"))
    assert group["lag"] == (5 if redis_server.version >= (7,) else None)
    assert {c["name"]: c["pending"] for c in group["consumers"]} == xconsumers
    assert {c["name"]: c["alive"] for c in group["consumers"]} == {scene.alive: True, scene.dead: False}
    assert all(set(c) == {"name", "pending", "idle_ms", "alive"} for c in group["consumers"])
    assert OLD_MS <= group["oldest_pending_age_ms"] <= now_ms - scene.old_ms


def test_table_names_consumers_alive_and_dead(redis_server: EmbeddedServer) -> None:
    """The default table has the stream, the group (its lag "?" where the server cannot tell),
    each consumer on its own line with its state, and the oldest pending age in minutes."""
    redis_url = redis_server.url
    lag = "5" if redis_server.version >= (7,) else r"\?"
    with busy_group(redis_url) as scene:
        result = run_cli("info", "--redis", redis_url, "--stream", scene.stream, *RULE_FLAGS)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith(f"stream {scene.stream}  length 12\n"), out
    assert re.search(rf"^  {scene.group} +7 +{lag} +\S+ +1m0\ds$", out, re.MULTILINE), out
    assert re.search(rf"^  {scene.alive} +{scene.group} +4 +\S+ +alive$", out, re.MULTILINE), out
    assert re.search(rf"^  {scene.dead} +{scene.group} +3 +\S+ +dead$", out, re.MULTILINE), out


def test_several_streams_json_list_and_environment(r: redis.Redis, redis_url: str) -> None:
    """Several streams (here from RSTREAM_STREAM, the server from RSTREAM_REDIS) print a JSON
    list in the order given, with the dead-letter stream's length in each."""
    first, second, dead_letters = unique_name("stream"), unique_name("stream"), unique_name("dlq")
    add_entries(r, first, 2)
    add_entries(r, second, 3)
    add_entries(r, dead_letters, 1)
    result = run_cli("info", "--json", "--dead-letter-stream", dead_letters,
                     env={"RSTREAM_REDIS": redis_url, "RSTREAM_STREAM": f"{second},{first}"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == [
        {"stream": second, "length": 3, "groups": [], "dead_letter_length": 1},
        {"stream": first, "length": 2, "groups": [], "dead_letter_length": 1}]


def test_missing_stream_exits_1_with_one_line(redis_url: str) -> None:
    """A stream that does not exist: exit 1, one line naming it."""
    result = run_cli("info", "--redis", redis_url, "--stream", "no-such-stream")
    assert result.returncode == 1, result.stdout + result.stderr
    assert one_error_line(result.stderr) == "rstream: error: stream 'no-such-stream' does not exist"
    assert result.stdout == ""


def test_unreachable_server_exits_1_without_the_password() -> None:
    """A server nobody listens on: exit 1, one line naming it, its password redacted."""
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_cli("info", "--redis", f"redis://user:sekrit@127.0.0.1:{port}/0", "--stream", "s")
    assert result.returncode == 1, result.stdout + result.stderr
    line = one_error_line(result.stderr)
    assert line.startswith(f"rstream info: error: Redis at redis://user:***@127.0.0.1:{port}/0 is unavailable: ")
    assert "sekrit" not in line


def test_bad_redis_url_exits_1_with_one_line() -> None:
    """A --redis value that is no Redis URL, or whose port is no number: exit 1, one line."""
    for url in ("localhost:6379", "redis://user:sekrit@127.0.0.1:port/0"):
        result = run_cli("info", "--redis", url, "--stream", "s")
        assert result.returncode == 1, result.stdout + result.stderr
        assert one_error_line(result.stderr).startswith("rstream info: error: bad --redis URL '")
        assert "sekrit" not in result.stderr


def test_bad_flags_exit_2_with_one_line(redis_url: str) -> None:
    """An unknown flag, a missing --stream and a non-positive interval: exit 2, one line each."""
    for args in (("--stream", "s", "--bogus"), (), ("--stream", "s", "--heartbeat-interval", "0")):
        result = run_cli("info", "--redis", redis_url, *args)
        assert result.returncode == 2, (args, result.stdout + result.stderr)
        # An unknown flag is refused by the top-level parser, which names `rstream` alone.
        assert re.match(r"rstream( info)?: error: ", one_error_line(result.stderr)), args


@pytest.mark.parametrize("ms, shown", [(None, "-"), (0, "0ms"), (999, "999ms"), (1000, "1.0s"),
                                       (59_999, "59.9s"), (60_000, "1m00s"), (3_599_999, "59m59s"),
                                       (3_600_000, "1h00m"), (86_400_000, "1d00h"),
                                       (90_061_000, "1d01h")])
def test_durations_shown_with_two_units_at_most(ms: Optional[int], shown: str) -> None:
    """The table's durations: ms below a second, tenths below a minute, then two units."""
    assert human_ms(ms) == shown
