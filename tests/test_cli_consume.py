"""`rstream consume`: a handler run as a consumer, or as N supervised processes, in real
subprocesses against a real server. Every handled entry is written down by the handler (one
file per process, one line per entry), so a test counts what was lost and what was handled twice.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import psutil
import pytest
import redis

from helpers import REPO_ROOT, add_entries, unique_name, wait_until
from rstream.cli.consume import HELP, option_flags
from rstream.options import Options

DEADLINE_S = 30.0
FAST = ["--heartbeat-interval", "200", "--allowed-missed-heartbeats", "3", "--receive-interval", "200"]

HANDLERS = '''
import os, time

OUT = os.environ["HANDLED_DIR"]
DELAY = float(os.environ.get("HANDLER_DELAY_S", "0"))

def handle(message):
    if DELAY:
        time.sleep(DELAY)
    with open(os.path.join(OUT, f"handled-{os.getpid()}"), "a") as out:
        out.write(f"{message.stream} {message.id} {message.attempt}\\n")

def failed(message, error):
    pass
'''


@dataclasses.dataclass
class Run:
    """A `python -m rstream consume` process and the directory its handler writes to."""

    proc: "subprocess.Popen[bytes]"
    out: Path
    log: Path

    def handled(self) -> "collections.Counter[str]":
        seen: "collections.Counter[str]" = collections.Counter()
        for path in self.out.glob("handled-*"):
            for line in path.read_text().splitlines():
                stream, entry_id, _ = line.split()
                seen[f"{stream} {entry_id}"] += 1
        return seen

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> List[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []


@pytest.fixture
def consume(tmp_path: Path) -> Any:
    runs: List[Run] = []

    def start(*args: str, env: Optional[Dict[str, str]] = None, delay_s: float = 0.0) -> Run:
        out = tmp_path / f"out-{len(runs)}"
        out.mkdir()
        (tmp_path / "handlers.py").write_text(HANDLERS)
        log = tmp_path / f"log-{len(runs)}.txt"
        child_env = {**os.environ, "HANDLED_DIR": str(out), "HANDLER_DELAY_S": str(delay_s),
                     "PYTHONPATH": str(REPO_ROOT), **(env or {})}
        with log.open("wb") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "rstream", "consume", *args], cwd=tmp_path,
                                    env=child_env, stdout=sink, stderr=subprocess.STDOUT)
        run = Run(proc, out, log)
        runs.append(run)
        return run

    yield start
    for run in runs:
        for child in run.children():
            child.kill()
        if run.proc.poll() is None:
            run.proc.kill()
        run.proc.wait(10)


def pending(r: redis.Redis, stream: str, group: str) -> int:
    return int(r.xpending(stream, group)["pending"])


def names_in_group(r: redis.Redis, stream: str, group: str) -> List[str]:
    """The group's consumers; none before the group exists."""
    try:
        return sorted(c["name"].decode() for c in r.xinfo_consumers(stream, group))
    except redis.ResponseError:
        return []


def stopped(run: Run, signum: int = signal.SIGTERM, timeout: float = DEADLINE_S) -> int:
    run.proc.send_signal(signum)
    try:
        return run.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"did not exit after {signal.Signals(signum).name}:\n{run.output()}") from None


def test_two_processes_drain_1000_entries_once_and_exit_0_on_sigterm(
        r: redis.Redis, redis_url: str, consume: Any) -> None:
    """--processes 2: consumers NAME-1 and NAME-2 share 1,000 entries, each handled once; on
    SIGTERM both drain, the supervisor exits 0, nothing is pending and both left the group."""
    stream, group = unique_name("cli"), unique_name("g")
    ids = add_entries(r, stream, 1000)
    run = consume("handlers:handle", "--redis", redis_url, "--stream", stream, "--group", group,
                  "--consumer", "w", "--group-start-id", "0", "--processes", "2", "--batch-size", "50",
                  *FAST, delay_s=0.002)
    wait_until(lambda: names_in_group(r, stream, group) == ["w-1", "w-2"], DEADLINE_S,
               message=f"both consumers did not join:\n{run.output()}")
    wait_until(lambda: sum(run.handled().values()) >= 1000, DEADLINE_S,
               message=f"not drained:\n{run.output()}")
    assert stopped(run) == 0, run.output()
    handled = run.handled()
    assert set(handled) == {f"{stream} {i}" for i in ids}
    assert [k for k, n in handled.items() if n > 1] == []
    assert pending(r, stream, group) == 0
    assert names_in_group(r, stream, group) == []  # a clean stop leaves no ghost consumer
    assert len(list(run.out.glob("handled-*"))) == 2  # both processes handled some


def test_a_crashed_child_is_started_again_under_its_name_and_replays_its_entries(
        r: redis.Redis, redis_url: str, consume: Any) -> None:
    """A child SIGKILLed mid-handler is started again with the same name, replays the entries
    it held at once (no wait for the dead threshold: 60 s here), and nothing is lost."""
    stream, group = unique_name("cli"), unique_name("g")
    ids = add_entries(r, stream, 200)
    run = consume("handlers:handle", "--redis", redis_url, "--stream", stream, "--group", group,
                  "--consumer", "w", "--group-start-id", "0", "--processes", "2", "--batch-size", "20",
                  "--heartbeat-interval", "20000", "--receive-interval", "200", delay_s=0.05)
    wait_until(lambda: len(run.children()) == 2, DEADLINE_S, message=run.output())
    wait_until(lambda: sum(run.handled().values()) >= 10, DEADLINE_S, message=run.output())
    victim = run.children()[0]
    victim.kill()
    wait_until(lambda: len(run.children()) == 2 and victim.pid not in [c.pid for c in run.children()],
               DEADLINE_S, message=f"the crashed child was not started again:\n{run.output()}")
    wait_until(lambda: set(run.handled()) >= {f"{stream} {i}" for i in ids}, 2 * DEADLINE_S,
               message=f"entries lost after the crash:\n{run.output()}")
    wait_until(lambda: pending(r, stream, group) == 0, DEADLINE_S, message=run.output())
    assert stopped(run) == 0, run.output()
    assert "starting it again" in run.output()
    twice = sum(n - 1 for n in run.handled().values())
    assert twice <= 2 * 20, f"{twice} handled twice: more than the crashed child could hold"


def test_one_process_from_environment_variables_drains_and_exits_0(
        r: redis.Redis, redis_url: str, consume: Any) -> None:
    """RSTREAM_* variables stand for the flags; several streams from one comma-separated
    RSTREAM_STREAM; SIGINT drains and exits 0."""
    streams, group = [unique_name("cli"), unique_name("cli")], unique_name("g")
    env = {"RSTREAM_REDIS": redis_url, "RSTREAM_STREAM": ",".join(streams), "RSTREAM_GROUP": group,
           "RSTREAM_CONSUMER": "solo", "RSTREAM_GROUP_START_ID": "0", "RSTREAM_MAKE_STREAM": "true"}
    expected = {f"{s} {i}" for s in streams for i in add_entries(r, s, 100)}
    run = consume("handlers:handle", env=env)
    wait_until(lambda: set(run.handled()) == expected, DEADLINE_S, message=run.output())
    assert stopped(run, signal.SIGINT) == 0, run.output()
    assert all(pending(r, s, group) == 0 for s in streams)


@pytest.mark.parametrize("args, problem", [
    (["handlers:handle", "--stream", "s", "--group", "g"], "the following arguments are required: --consumer"),
    (["handlers:handle", "--stream", "s", "--group", "g", "--consumer", "c", "--batch-size", "0"],
     "--batch-size: must be positive, got 0"),
    (["handlers:handle", "--stream", "s", "--group", "g", "--consumer", "c", "--batch-size", "100",
      "--max-in-flight", "10"], "max_in_flight must be at least batch_size"),
    (["handlers", "--stream", "s", "--group", "g", "--consumer", "c"], "handler must be MODULE:FUNCTION"),
    (["nosuchmodule:handle", "--stream", "s", "--group", "g", "--consumer", "c"],
     "cannot import handler module 'nosuchmodule'"),
    (["handlers:nothing", "--stream", "s", "--group", "g", "--consumer", "c"], "has no 'nothing'"),
    (["handlers:handle", "--stream", "s", "--group", "g", "--consumer", "c", "--proc", "2"],
     "unrecognized arguments: --proc"),
])
def test_usage_errors_exit_2_with_one_line(redis_url: str, consume: Any, args: List[str],
                                           problem: str) -> None:
    run = consume(*args[:1], "--redis", redis_url, *args[1:])
    assert run.proc.wait(DEADLINE_S) == 2, run.output()
    lines = run.output().strip().splitlines()
    assert len(lines) == 1 and problem in lines[0], lines


@pytest.mark.parametrize("processes", [None, 2])
def test_a_fatal_error_exits_1_with_one_line(r: redis.Redis, redis_url: str, consume: Any,
                                             processes: Optional[int]) -> None:
    """The stream key holds a string: the consumer (or every supervised one) stops with a line
    naming the key, and the exit code is 1."""
    stream = unique_name("cli")
    r.set(stream, "not a stream")
    more = ["--processes", str(processes)] if processes else []
    run = consume("handlers:handle", "--redis", redis_url, "--stream", stream, "--group", "g",
                  "--consumer", "c", "--log-level", "ERROR", *more)
    assert run.proc.wait(DEADLINE_S) == 1, run.output()
    errors = [line for line in run.output().splitlines() if "error" in line]
    assert errors and all(stream in line and "holds a string" in line for line in errors), run.output()


def test_children_stop_when_their_supervisor_is_killed(
        r: redis.Redis, redis_url: str, consume: Any) -> None:
    """A SIGKILLed supervisor leaves no orphan consuming: each child notices and drains."""
    stream = unique_name("cli")
    run = consume("handlers:handle", "--redis", redis_url, "--stream", stream, "--group", "g",
                  "--consumer", "w", "--make-stream", "--processes", "2", *FAST)
    wait_until(lambda: len(run.children()) == 2, DEADLINE_S, message=run.output())
    children = run.children()
    run.proc.kill()
    run.proc.wait(10)
    gone = psutil.wait_procs(children, timeout=DEADLINE_S)[1]
    assert gone == [], f"orphans still running: {gone}"


def test_every_consumer_option_has_a_flag_with_help() -> None:
    """The flags are made from Options: a new option gets a flag (and needs its help text)."""
    own = {"stream", "streams", "group", "consumer_name", "handle_failure", "on_event",
           "partition_by"}
    assert set(option_flags()) == {f.name for f in dataclasses.fields(Options)} - own
    assert set(HELP) == set(option_flags())
