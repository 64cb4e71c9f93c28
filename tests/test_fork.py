"""A consumer and os.fork() (gunicorn --preload): a consumer started before the fork is marked
"forked" in the child and refuses to be used there; one only created before the fork can be
started in the child. Real forks of the test process, against a real server."""
from __future__ import annotations

import json
import os
import select
import threading
import time
from typing import Any, Callable, Dict, List

import redis

import rstream
from helpers import add_entries, wait_until

Factory = Callable[..., rstream.Consumer]


def _in_child(work: Callable[[], Dict[str, Any]], timeout: float = 30.0) -> Dict[str, Any]:
    """Run `work` in a forked child and return what it returned (a JSON-able dict). The child
    leaves with os._exit, so it never runs pytest's teardown."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read_fd)
            try:
                report = work()
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                report, code = {"child_error": repr(exc)}, 1
            os.write(write_fd, json.dumps(report).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        data = _read_all(read_fd, time.monotonic() + timeout)
    finally:
        os.close(read_fd)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child did not exit")
        time.sleep(0.01)
    report = json.loads(data) if data else {"child_error": "no report"}
    report["exit_code"] = os.waitstatus_to_exitcode(status)
    return report


def _read_all(fd: int, deadline: float) -> bytes:
    chunks: List[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("the forked child did not report in time")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _raises(call: Callable[[], Any]) -> str:
    try:
        call()
    except rstream.RStreamError as exc:
        return f"RStreamError: {exc}"
    except BaseException as exc:  # noqa: BLE001 - the wrong exception is what the test reports
        return f"other: {exc!r}"
    return "returned"


def test_a_consumer_started_before_fork_is_marked_forked_and_refuses_use_in_the_child(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """In the child a consumer started in the parent says "forked" and start/run/stop/stats
    raise an RStreamError naming the parent pid and the fix; the parent's consumer goes on."""
    handled = threading.Event()
    consumer = make_consumer()
    consumer.start(lambda m: handled.set())
    assert consumer.state == "running"

    def child() -> Dict[str, Any]:
        return {
            "state": consumer.state,
            "repr": repr(consumer),
            "start": _raises(lambda: consumer.start(lambda m: None)),
            "run": _raises(lambda: consumer.run(lambda m: None)),
            "stop": _raises(lambda: consumer.stop(1)),
            "stats": _raises(consumer.stats),
        }

    report = _in_child(child)
    assert report["exit_code"] == 0, report
    assert report["state"] == "forked"
    assert "state='forked'" in report["repr"]
    for call in ("start", "run", "stop", "stats"):
        error = report[call]
        assert error.startswith("RStreamError:"), (call, error)
        assert f"started in process {os.getpid()} before os.fork()" in error, error
        assert "post_fork" in error and "worker_exit" in error, error
    # The parent's consumer is untouched by the child's fork.
    assert consumer.state == "running"
    add_entries(r, stream_names.stream, 1)
    assert handled.wait(20), "the parent's consumer stopped consuming after the fork"


def test_a_consumer_created_before_fork_can_be_started_in_the_child(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """Created in the parent, started in the child (gunicorn's post_fork): the child consumes and
    acks, and its consumer goes from "new" to "running" to "stopped"."""
    consumer = make_consumer(group_start_id="0")
    [entry_id] = add_entries(r, stream_names.stream, 1)

    def child() -> Dict[str, Any]:
        seen: List[str] = []
        got = threading.Event()

        def handle(message: rstream.Message) -> None:
            seen.append(message.id)
            got.set()

        states = [consumer.state]
        consumer.start(handle)
        states.append(consumer.state)
        got.wait(20)
        consumer.stop(10)
        states.append(consumer.state)
        return {"seen": seen, "states": states, "acked": consumer.stats().acked}

    report = _in_child(child)
    assert report["exit_code"] == 0, report
    assert report["seen"] == [entry_id]
    assert report["states"] == ["new", "running", "stopped"]
    assert report["acked"] == 1
    wait_until(lambda: r.xpending(stream_names.stream, stream_names.group)["pending"] == 0, 10,
               message="the child's ack did not reach the server")
    assert consumer.state == "new"  # the parent's copy was never started
