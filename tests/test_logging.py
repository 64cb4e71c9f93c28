"""Logs a user can debug from, against a real server: handler failures with their traceback,
every dead letter (once written) and every drop at WARNING with its id, and a second SIGINT
while run() drains that exits at once with one line and no traceback."""
from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
import redis

import rstream
from helpers import SpawnedProcess, add_entries, wait_until

Factory = Callable[..., rstream.Consumer]


@pytest.fixture
def consumer_defaults() -> Dict[str, Any]:
    """Entries are added before start(): the group starts at "0"."""
    return dict(receive_interval=100, heartbeat_interval=100, make_stream=True, group_start_id="0")


class Poison(Exception):
    """What the handlers under test raise."""


def explode(message: rstream.Message) -> None:
    raise Poison(f"poison {message.id}")


def _warnings(caplog: pytest.LogCaptureFixture, *texts: str) -> List[logging.LogRecord]:
    return [rec for rec in caplog.records if rec.levelno == logging.WARNING
            and all(text in rec.getMessage() for text in texts)]


def test_a_handler_failure_nobody_handles_is_logged_with_its_traceback(
        r: redis.Redis, make_consumer: Factory, stream_names: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """Without handle_failure a failure is one WARNING with the entry id, the attempt and the
    handler's traceback (the frame that raised included)."""
    caplog.set_level(logging.WARNING, logger="rstream")
    [entry_id] = add_entries(r, stream_names.stream, 1)
    consumer = make_consumer()
    consumer.start(explode)
    wait_until(lambda: consumer.stats().acked == 1, 20, message="the failure was not settled")
    [record] = _warnings(caplog, "handler failed", entry_id)
    assert "(attempt 1)" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], Poison)
    text = caplog.text
    assert "Traceback (most recent call last)" in text and "in explode" in text
    assert f"Poison: poison {entry_id}" in text


def test_a_failure_taken_by_handle_failure_is_not_logged_as_a_handler_failure(
        r: redis.Redis, make_consumer: Factory, stream_names: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """handle_failure takes the failure over: rstream does not log it a second time."""
    caplog.set_level(logging.WARNING, logger="rstream")
    add_entries(r, stream_names.stream, 1)
    taken: List[str] = []
    consumer = make_consumer(handle_failure=lambda m, e: taken.append(m.id))
    consumer.start(explode)
    wait_until(lambda: consumer.stats().acked == 1, 20, message="the failure was not settled")
    assert len(taken) == 1 and _warnings(caplog, "handler failed") == []


class DeadLetterWatch(logging.Handler):
    """Notes, for each dead-letter log line, whether the entry was in the dead-letter stream
    when the line was logged (read with a separate client on the logging thread)."""

    def __init__(self, r: redis.Redis, dead_letter_stream: str) -> None:
        super().__init__(logging.WARNING)
        self._r, self._dlq = r, dead_letter_stream
        self.seen: Dict[str, bool] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if "dead-letter stream" in record.getMessage():
            entry_id = record.args[0] if isinstance(record.args, tuple) else None
            written = {f[b"rstream-id"].decode() for _, f in self._r.xrange(self._dlq)}
            self.seen[str(entry_id)] = entry_id in written


def test_every_dead_letter_is_logged_once_written_and_only_then(
        redis_server: Any, r: redis.Redis, make_consumer: Factory, stream_names: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """Each dead letter is one WARNING with its id, attempt, dead-letter stream and error,
    logged after the entry is in that stream; one the script found already settled (acked
    behind the consumer's back) is written nowhere and not logged."""
    caplog.set_level(logging.WARNING, logger="rstream")
    watch_client = redis_server.client()
    watch = DeadLetterWatch(watch_client, stream_names.dead_letter)
    logging.getLogger("rstream").addHandler(watch)
    s, g = stream_names.stream, stream_names.group

    def handle(message: rstream.Message) -> None:
        if message.fields[b"n"] == b"acked-elsewhere":
            r.xack(s, g, message.id)
        raise Poison(f"poison {message.id}")

    try:
        consumer = make_consumer(max_attempts=1, dead_letter_stream=stream_names.dead_letter)
        consumer.start(handle)
        [settled_id] = add_entries(r, s, 1, {b"n": b"acked-elsewhere"})
        # Its dead letter is queued before the next two: once they are logged, it was sent.
        wait_until(lambda: consumer.stats().failed == 1, 20, message="first entry not handled")
        dead_ids = add_entries(r, s, 2)
        wait_until(lambda: len(watch.seen) == 2, 20, message="dead letters not logged")
    finally:
        logging.getLogger("rstream").removeHandler(watch)
        watch_client.close()
    assert watch.seen == {dead_ids[0]: True, dead_ids[1]: True}
    for entry_id in dead_ids:
        [record] = _warnings(caplog, entry_id, "dead-letter stream")
        message = record.getMessage()
        assert "(attempt 1)" in message and repr(stream_names.dead_letter) in message
        assert f"Poison: poison {entry_id}" in message
    assert _warnings(caplog, settled_id, "dead-letter stream") == []
    assert consumer.stats().dead_lettered == 2 and r.xlen(stream_names.dead_letter) == 2


@pytest.mark.parametrize("with_handle_failure", [False, True], ids=["alone", "with-handle_failure"])
def test_every_drop_is_logged_at_warning_with_its_id(
        with_handle_failure: bool, r: redis.Redis, make_consumer: Factory, stream_names: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """A last attempt failing with no dead-letter stream is one WARNING naming the id and the
    error, whether or not handle_failure ran."""
    caplog.set_level(logging.WARNING, logger="rstream")
    ids = add_entries(r, stream_names.stream, 2)
    on_failure: Optional[Callable[[rstream.Message, BaseException], None]] = (
        (lambda m, e: None) if with_handle_failure else None)
    consumer = make_consumer(max_attempts=1, handle_failure=on_failure)
    consumer.start(explode)
    wait_until(lambda: consumer.stats().dropped == 2, 20, message="entries not dropped")
    for entry_id in ids:
        [record] = _warnings(caplog, entry_id, "dropped")
        assert f"Poison: poison {entry_id}" in record.getMessage()


# A consumer process whose handler blocks: argv url stream group name. It prints "handling"
# once a handler runs; logs go to stderr (the same log file) at INFO.
BLOCKING_CHILD = r'''
import logging, sys, threading
import rstream

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
url, stream, group, name = sys.argv[1:5]
never = threading.Event()

def handle(message):
    print("handling", message.id, flush=True)
    never.wait()

consumer = rstream.Consumer(url, stream, group, name, receive_interval=100, heartbeat_interval=100,
                            make_stream=True, group_start_id="0", concurrency=2)
consumer.run(handle, stop_timeout=120)
print("run returned", flush=True)
'''


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_while_draining_exits_at_once_with_one_line(
        signum: int, redis_url: str, r: redis.Redis, stream_names: Any,
        spawn: Callable[..., SpawnedProcess], tmp_path: Path) -> None:
    """run() drains on the first signal; a second one while a hung handler holds the drain up
    exits at once with code 128 + signal, one WARNING line and no traceback."""
    script = tmp_path / "blocking_child.py"
    script.write_text(BLOCKING_CHILD)
    add_entries(r, stream_names.stream, 3)
    child = spawn(script, redis_url, stream_names.stream, stream_names.group, stream_names.consumer)
    wait_until(lambda: child.output().count("handling") == 2, 30,
               message="the child's handlers did not start")
    child.send_signal(signum)
    wait_until(lambda: "received; draining" in child.output(), 10,
               message="the child did not start draining")
    began = time.monotonic()
    child.send_signal(signum)
    code = child.wait(10)
    elapsed = time.monotonic() - began
    output = child.output()
    assert code == 128 + signum, output
    assert elapsed < 5, "the second signal did not exit at once"  # the drain would take 120 s
    name = signal.Signals(signum).name
    lines = [line for line in output.splitlines() if f"second {name} while draining" in line]
    assert lines == [f"WARNING rstream rstream: second {name} while draining: exiting now; 3 "
                     "entries in flight stay pending and will be delivered again"], output
    assert "Traceback" not in output and "run returned" not in output, output
    pending = r.xpending(stream_names.stream, stream_names.group)["pending"]
    assert pending == 3  # nothing was acked: all three stay pending for the next consumer
