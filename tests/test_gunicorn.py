"""The Flask + gunicorn example (examples/flask_gunicorn): real gunicorn masters and workers,
started with `python -m gunicorn -c gunicorn.conf.py app:app` from the example directory, against
a real server. The example's handler writes one line per order ("<pid> <entry id> <order>"), so
a test counts what was lost and what was handled twice, and by which worker.
"""
from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import psutil
import pytest
import redis

from helpers import REPO_ROOT, SpawnedProcess, add_entries, unique_name, wait_until

pytest.importorskip("flask", reason="the example needs the test extra flask")
gunicorn_config = pytest.importorskip("gunicorn.config", reason="the example needs the test extra gunicorn")

pytestmark = pytest.mark.gunicorn

EXAMPLE = REPO_ROOT / "examples" / "flask_gunicorn"
DEADLINE_S = 20.0
BIND_ATTEMPTS = 3  # a port picked free can be taken before gunicorn binds it
_CONSUMES = re.compile(r"worker (\d+) consumes stream .* as '([^']+)' of group")
# gunicorn >= 25.1 opens a control socket at a fixed path; parallel runs must not share it.
_CONTROL_SOCKET = any(s.name == "control_socket_disable" for s in gunicorn_config.KNOWN_SETTINGS)

# Wrong on purpose (test 4): a consumer started when the app is imported, run with --preload.
EAGER_APP = '''
import os

import rstream
from app import app, record_order

consumer = rstream.Consumer(os.environ["REDIS_URL"], os.environ["STREAM"], os.environ["GROUP"],
                            consumer_name="eager", make_stream=True)
consumer.start(record_order)
app.extensions["rstream"] = consumer
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gunicorn:
    """One gunicorn master (the Popen) and what can be seen of it: workers, log, /healthz."""

    def __init__(self, proc: SpawnedProcess, port: int) -> None:
        self.proc = proc
        self.port = port

    def workers(self) -> List[int]:
        try:
            return [child.pid for child in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def consumers(self) -> Dict[int, str]:
        """Worker pid -> consumer name, as each worker logged once its consumer was running."""
        return {int(pid): name for pid, name in _CONSUMES.findall(self.proc.output())}

    def healthz(self) -> Tuple[int, Dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def answers(self) -> bool:
        try:
            self.healthz()
        except (urllib.error.URLError, ConnectionError):
            return False
        return True


@pytest.fixture
def orders_file(tmp_path: Path) -> Path:
    return tmp_path / "orders.log"


@pytest.fixture
def prefix() -> str:
    return unique_name("web")


@pytest.fixture
def start_gunicorn(tmp_path: Path, redis_url: str, stream_names: Any, orders_file: Path,
                   prefix: str) -> Iterator[Callable[..., Gunicorn]]:
    """`start(*args, env=..., cwd=..., ready=...)`: a gunicorn master bound to a free port, once
    `ready(server)` holds (default: each of its `-w` workers logged its consumer). Killed with its
    workers at teardown; its log is printed for a failing test."""
    started: List[Gunicorn] = []

    def start(*args: str, env: Optional[Dict[str, str]] = None, cwd: Path = EXAMPLE,
              ready: Optional[Callable[[Gunicorn], bool]] = None) -> Gunicorn:
        workers = int(args[args.index("-w") + 1]) if "-w" in args else 2
        child_env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1",
                         REDIS_URL=redis_url, STREAM=stream_names.stream, GROUP=stream_names.group,
                         ORDERS_FILE=str(orders_file), CONSUMER_PREFIX=prefix, **(env or {}))
        is_ready = ready or (lambda server: len(server.consumers()) == workers)
        for attempt in range(1, BIND_ATTEMPTS + 1):
            server = _launch(args, tmp_path / f"gunicorn-{len(started) + 1}.log", cwd, child_env)
            started.append(server)
            if _wait_ready(server, is_ready):
                return server
            _kill(server)
            if "Connection in use" not in server.proc.output() or attempt == BIND_ATTEMPTS:
                raise AssertionError(f"gunicorn failed to start:\n{server.proc.output()}")
        raise AssertionError("unreachable: the last attempt raises")  # pragma: no cover

    yield start
    for server in started:
        _kill(server)
        print(f"--- gunicorn {server.proc.pid} exit {server.proc.returncode} ---\n"
              f"{server.proc.output()[-6000:]}")


def _launch(args: Sequence[str], log: Path, cwd: Path, env: Dict[str, str]) -> Gunicorn:
    port = _free_port()
    command = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", *args]
    if _CONTROL_SOCKET:
        command.insert(3, "--no-control-socket")
    return Gunicorn(SpawnedProcess(command, log, cwd=cwd, env=env), port)


def _wait_ready(server: Gunicorn, is_ready: Callable[[Gunicorn], bool]) -> bool:
    """True once `is_ready(server)`; False if gunicorn exited or could not bind its port first."""
    wait_until(lambda: is_ready(server) or server.proc.poll() is not None
               or "Connection in use" in server.proc.output(), DEADLINE_S,
               message="gunicorn did not get ready (its log is printed at teardown)")
    return is_ready(server)


def _kill(server: Gunicorn) -> None:
    """SIGKILL what is left of a master and its workers (a master already reaped is left alone:
    its pid may be another process' now)."""
    if server.proc.poll() is not None:
        return
    for pid in [server.proc.pid, *server.workers()]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass


def _handled(orders_file: Path) -> List[Tuple[int, str]]:
    """(pid, entry id) of every order recorded, in the order written."""
    if not orders_file.exists():
        return []
    return [(int(pid), entry_id) for pid, entry_id, _ in
            (line.split(" ", 2) for line in orders_file.read_text().splitlines())]


def _pending(r: redis.Redis, stream_names: Any) -> int:
    return int(r.xpending(stream_names.stream, stream_names.group)["pending"])


def _consumer_names(r: redis.Redis, stream_names: Any) -> Set[str]:
    return {c["name"].decode() for c in r.xinfo_consumers(stream_names.stream, stream_names.group)}


def _id_key(entry_id: str) -> Tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def test_two_workers_handle_each_entry_exactly_once(
        start_gunicorn: Callable[..., Gunicorn], r: redis.Redis, stream_names: Any,
        orders_file: Path, prefix: str) -> None:
    """2 workers, 1,000 entries: every entry handled once across both workers, both workers'
    consumers (named <prefix>-1 and <prefix>-2, one per slot) in XINFO CONSUMERS."""
    server = start_gunicorn("-c", "gunicorn.conf.py", "-w", "2", "app:app")
    assert sorted(server.consumers().values()) == [f"{prefix}-1", f"{prefix}-2"]
    assert sorted(server.consumers()) == sorted(server.workers())
    ids = add_entries(r, stream_names.stream, 1000, {b"order": b"42"})

    wait_until(lambda: len(_handled(orders_file)) >= len(ids) and _pending(r, stream_names) == 0,
               DEADLINE_S, message="the entries were not all handled and acked")
    handled = _handled(orders_file)
    counts = collections.Counter(entry_id for _, entry_id in handled)
    assert set(counts) == set(ids), "lost or foreign entries"
    assert [i for i, n in counts.items() if n > 1] == [], "entries handled twice"
    assert {pid for pid, _ in handled} <= set(server.workers())
    assert _consumer_names(r, stream_names) == {f"{prefix}-1", f"{prefix}-2"}


def test_sigterm_to_the_master_drains_the_workers_and_leaves_nothing_pending(
        start_gunicorn: Callable[..., Gunicorn], r: redis.Redis, stream_names: Any,
        orders_file: Path) -> None:
    """SIGTERM while entries are in flight (20 ms handler): the workers finish what they read
    and ack it, leave the group, and the master exits 0; nothing pending, nothing lost, nothing
    twice: every entry up to the group's last delivered id was handled once."""
    server = start_gunicorn("-c", "gunicorn.conf.py", "-w", "2", "app:app", env={"ORDER_WORK_MS": "20"})
    ids = add_entries(r, stream_names.stream, 400)
    wait_until(lambda: len(_handled(orders_file)) >= 40 and _pending(r, stream_names) > 0, DEADLINE_S,
               message="the workers did not start handling")
    handled_at_sigterm = len(_handled(orders_file))
    server.proc.send_signal(signal.SIGTERM)

    assert server.proc.wait(DEADLINE_S) == 0, server.proc.output()
    assert _pending(r, stream_names) == 0
    assert _consumer_names(r, stream_names) == set(), "a worker did not leave the group"
    handled = [entry_id for _, entry_id in _handled(orders_file)]
    assert len(handled) > handled_at_sigterm, "nothing was in flight at SIGTERM: the test proves nothing"
    assert len(handled) == len(set(handled)), "entries handled twice"
    [group] = r.xinfo_groups(stream_names.stream)
    last = _id_key(group["last-delivered-id"].decode())
    delivered = {i for i in ids if _id_key(i) <= last}
    assert set(handled) == delivered, "entries delivered to a worker and never handled"
    assert "stop timed out" not in server.proc.output()


def dead(pid: int) -> bool:
    """The process is gone or a zombie (it may be reaped between the two questions)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_sigkilled_workers_entries_are_replayed_by_its_replacement_under_the_same_name(
        start_gunicorn: Callable[..., Gunicorn], r: redis.Redis, stream_names: Any,
        orders_file: Path) -> None:
    """A worker SIGKILLed while it holds entries (200 ms handler): gunicorn starts a new worker
    in its slot, whose consumer has the dead one's name and replays exactly the entries it
    held (the other worker claims none); every entry is handled, only held ones twice."""
    server = start_gunicorn("-c", "gunicorn.conf.py", "-w", "2", "app:app", env={"ORDER_WORK_MS": "200"})
    names = server.consumers()
    ids = add_entries(r, stream_names.stream, 120)

    def busiest() -> Optional[Tuple[str, int]]:
        infos = r.xinfo_consumers(stream_names.stream, stream_names.group)
        best = max(infos, key=lambda c: c["pending"], default=None)
        return (best["name"].decode(), best["pending"]) if best and best["pending"] >= 8 else None

    victim_name, _ = wait_until(busiest, DEADLINE_S, message="no worker holds entries")
    [victim] = [pid for pid, name in names.items() if name == victim_name]
    [survivor] = [pid for pid in names if pid != victim]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: dead(victim), DEADLINE_S, message="the worker did not die")
    held = {entry["message_id"].decode() for entry in r.xpending_range(
        stream_names.stream, stream_names.group, "-", "+", 1000, consumername=victim_name)}
    assert held, "the killed worker held no entries: the test proves nothing"

    replacement = wait_until(lambda: [pid for pid in server.consumers() if pid not in names], DEADLINE_S,
                             message="gunicorn did not replace the killed worker")[0]
    assert server.consumers()[replacement] == victim_name, "the replacement took another name"
    wait_until(lambda: {i for _, i in _handled(orders_file)} >= set(ids) and _pending(r, stream_names) == 0,
               DEADLINE_S, message="entries were lost after the kill")
    handled = _handled(orders_file)
    assert held <= {i for pid, i in handled if pid == replacement}, "held entries not replayed"
    assert not held & {i for pid, i in handled if pid == survivor}, "the other worker claimed entries"
    counts = collections.Counter(i for _, i in handled)
    assert {i for i, n in counts.items() if n > 1} <= held, "entries not held by the killed worker came twice"
    assert _consumer_names(r, stream_names) == set(names.values())


def test_preload_with_a_consumer_started_at_import_says_forked_in_the_workers(
        start_gunicorn: Callable[..., Gunicorn], tmp_path: Path) -> None:
    """The mistake the example avoids: a consumer started when the app is imported, with
    --preload. Every worker's /healthz answers 503, state "forked", with the error naming the
    fork, the master's pid and the fix (post_fork, worker_exit)."""
    (tmp_path / "eager_app.py").write_text(EAGER_APP)
    # No gunicorn.conf.py in tmp_path: gunicorn's defaults, no hooks.
    server = start_gunicorn("--preload", "-w", "2", "--pythonpath", str(EXAMPLE), "eager_app:app",
                            cwd=tmp_path, ready=lambda s: len(s.workers()) == 2 and s.answers())
    for _ in range(6):
        status, body = server.healthz()
        assert status == 503, body
        assert body["state"] == "forked", body
        assert body["pid"] in server.workers(), body
        error = body["error"]
        assert f"started in process {server.proc.pid} before os.fork()" in error, error
        assert "post_fork" in error and "worker_exit" in error, error


def test_healthz_is_200_while_consuming_and_503_naming_the_error_once_failed(
        start_gunicorn: Callable[..., Gunicorn], r: redis.Redis, stream_names: Any,
        orders_file: Path, prefix: str) -> None:
    """/healthz: 200 with state "running", the consumer's name and its counters while it
    consumes; the stream key replaced by a string (a fatal WRONGTYPE) makes it 503, state
    "failed", the error naming WRONGTYPE and the key."""
    server = start_gunicorn("-c", "gunicorn.conf.py", "-w", "1", "app:app")
    [worker] = server.workers()
    add_entries(r, stream_names.stream, 5)
    wait_until(lambda: server.healthz()[1].get("stats", {}).get("acked") == 5, DEADLINE_S,
               message="/healthz did not count the acks")
    status, body = server.healthz()
    assert status == 200, body
    assert body["state"] == "running" and body["pid"] == worker and body["consumer"] == f"{prefix}-1"
    assert body["stats"]["delivered"] == 5 and body["stats"]["in_flight"] == 0
    assert len(_handled(orders_file)) == 5

    with r.pipeline(transaction=True) as pipe:
        pipe.delete(stream_names.stream).set(stream_names.stream, b"not a stream").execute()

    def unhealthy() -> Optional[Tuple[int, Dict[str, Any]]]:
        reply = server.healthz()
        return reply if reply[0] == 503 else None

    status, body = wait_until(unhealthy, DEADLINE_S, message="/healthz stayed 200 after a fatal error")
    assert body["state"] == "failed", body
    assert "WRONGTYPE" in body["error"] and stream_names.stream in body["error"], body
