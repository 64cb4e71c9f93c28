"""Failures, retries, retry_after and dead-lettering against a real server.

The README's Failure handling cases come first, then the edges: drops without a dead-letter stream, a retry on
the last attempt, delete_on_ack with dead letters, the dead-letter entry's fields and binary data.
"""
from __future__ import annotations

import logging
import re
import signal
import textwrap
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

import pytest
import redis

import rstream
from helpers import SpawnedProcess, add_entries, wait_until

FAST = dict(receive_interval=100, heartbeat_interval=100, group_start_id="0", make_stream=True)
Factory = Callable[..., rstream.Consumer]
HOUR_MS = 3_600_000


class Poison(Exception):
    """What the handlers under test raise."""


class Handled:
    """A handler's log: every (id, attempt, metadata, monotonic time) it saw, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: List[Tuple[str, int, Dict[str, Any], float]] = []

    def record(self, message: rstream.Message) -> None:
        with self._lock:
            self.calls.append((message.id, message.attempt, dict(message.metadata), time.monotonic()))

    def attempts(self) -> Dict[str, List[int]]:
        with self._lock:
            seen: Dict[str, List[int]] = {}
            for entry_id, attempt, _, _ in self.calls:
                seen.setdefault(entry_id, []).append(attempt)
            return seen

    def count(self) -> int:
        with self._lock:
            return len(self.calls)




@pytest.fixture
def consumer_defaults() -> Dict[str, Any]:
    """Retry tests read the entries they add before start(): the group starts at "0"."""
    return dict(FAST)



def _pending(r: redis.Redis, names: Any) -> int:
    return int(r.xpending(names.stream, names.group)["pending"])


def _wait_settled(consumer: rstream.Consumer, r: redis.Redis, names: Any, acked: int) -> None:
    """Wait until `acked` entries are acknowledged and nothing is pending or in flight."""
    wait_until(lambda: consumer.stats().acked >= acked and _pending(r, names) == 0
               and consumer.stats().in_flight == 0, 20, message=f"{acked} entries not settled")


def _failing(handled: Handled) -> Callable[[rstream.Message], None]:
    def handle(message: rstream.Message) -> None:
        handled.record(message)
        raise Poison(f"poison {message.id}")
    return handle


def _retry_always(message: rstream.Message, error: BaseException) -> None:
    message.configure_ack(retry=True)


def _dead_letters(r: redis.Redis, stream: str) -> List[Tuple[str, Dict[bytes, bytes]]]:
    return [(i.decode(), fields) for i, fields in r.xrange(stream)]


# -- the Failure handling cases ---------------------------------------------------------------------------
def test_1_a_failed_message_is_acked_and_counted_by_default(
        r: redis.Redis, make_consumer: Factory, stream_names: Any, caplog: pytest.LogCaptureFixture) -> None:
    """No handle_failure: a handler that raises gets its entry acked (the seed's default), counted
    in stats().failed, and the failure is logged with the entry id."""
    caplog.set_level(logging.WARNING, logger="rstream")
    [entry_id] = add_entries(r, stream_names.stream, 1)
    handled = Handled()
    consumer = make_consumer()
    consumer.start(_failing(handled))
    _wait_settled(consumer, r, stream_names, acked=1)
    stats = consumer.stats()
    assert (stats.failed, stats.acked, stats.retried, stats.dropped) == (1, 1, 0, 0)
    assert handled.attempts() == {entry_id: [1]}
    assert any(entry_id in rec.getMessage() and rec.levelno == logging.WARNING for rec in caplog.records)


def test_2_retry_while_attempt_below_two_handles_each_entry_twice(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """The seed's test: retry while attempt < 2; each of 5 entries is handled exactly twice
    (attempts 1 then 2) and the pending list ends empty."""
    ids = add_entries(r, stream_names.stream, 5)
    handled = Handled()

    def handle_failure(message: rstream.Message, error: BaseException) -> None:
        if message.attempt < 2:
            message.configure_ack(retry=True)

    consumer = make_consumer(handle_failure=handle_failure)
    consumer.start(_failing(handled))
    _wait_settled(consumer, r, stream_names, acked=5)
    assert handled.attempts() == {i: [1, 2] for i in ids}
    stats = consumer.stats()
    assert (stats.failed, stats.retried, stats.acked, stats.waiting_retries) == (10, 5, 5, 0)


def test_3_a_retry_that_succeeds_is_acked_once(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """Fail on attempt 1, succeed on attempt 2: one ack, one failure, one retry, nothing pending."""
    [entry_id] = add_entries(r, stream_names.stream, 1)
    handled = Handled()

    def handle(message: rstream.Message) -> None:
        handled.record(message)
        if message.attempt == 1:
            raise Poison("first time")

    consumer = make_consumer(handle_failure=_retry_always)
    consumer.start(handle)
    _wait_settled(consumer, r, stream_names, acked=1)
    assert handled.attempts() == {entry_id: [1, 2]}
    stats = consumer.stats()
    assert (stats.failed, stats.retried, stats.acked, stats.delivered) == (1, 1, 1, 2)


def test_4_retry_after_delays_the_retry_by_500_ms(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """The seed's test: retry_after = now + 500 ms; the retry is not delivered in the 400 ms after
    the failure and is delivered within the 600 ms after that; retry_after is gone on attempt 2."""
    [entry_id] = add_entries(r, stream_names.stream, 1)
    handled = Handled()
    failed_at: List[float] = []

    def handle_failure(message: rstream.Message, error: BaseException) -> None:
        if message.attempt == 1:
            failed_at.append(time.monotonic())
            message.metadata["retry_after"] = int(time.time() * 1000) + 500
            message.configure_ack(retry=True)

    consumer = make_consumer(handle_failure=handle_failure)
    consumer.start(_failing(handled))
    wait_until(lambda: handled.count() >= 2, 10, message="the retry never came")
    (_, first, _, _), (_, second, metadata, retried_at) = handled.calls[:2]
    assert (first, second) == (1, 2)
    delay = retried_at - failed_at[0]
    assert 0.4 <= delay <= 1.0, f"retry delivered {delay * 1000:.0f} ms after the failure"
    assert "retry_after" not in metadata
    assert metadata["id"] == entry_id


CHILD = textwrap.dedent("""
    import sys, time, rstream
    url, stream, group, name = sys.argv[1:5]

    def handle(message):
        print("handled", message.id, message.attempt, flush=True)
        raise RuntimeError("poison")

    def handle_failure(message, error):
        message.configure_ack(retry=True)
        if message.attempt >= 3:  # retried twice: park it, the test kills us now
            message.metadata["retry_after"] = time.time() * 1000 + 3_600_000
            print("parked", message.id, message.attempt, flush=True)

    rstream.Consumer(url, stream, group, name, receive_interval=100, heartbeat_interval=100,
                     group_start_id="0", make_stream=True, handle_failure=handle_failure).run(handle)
""")


def test_5_attempt_survives_sigkill_and_restart(
        r: redis.Redis, redis_url: str, make_consumer: Factory, stream_names: Any,
        spawn: Callable[..., SpawnedProcess]) -> None:
    """Retried twice in a child process, SIGKILLed, restarted under the same name: the next
    delivery has attempt 4 (the server's delivery count), not 1."""
    [entry_id] = add_entries(r, stream_names.stream, 1)
    child = spawn(CHILD, redis_url, stream_names.stream, stream_names.group, stream_names.consumer)
    wait_until(lambda: f"parked {entry_id} 3" in child.output() or child.poll() is not None, 30,
               message="the child did not fail the entry 3 times")
    assert [int(a) for a in re.findall(rf"handled {entry_id} (\d+)", child.output())] == [1, 2, 3]
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    assert _pending(r, stream_names) == 1

    handled = Handled()
    consumer = make_consumer()
    consumer.start(handled.record)
    wait_until(lambda: handled.count() >= 1, 10, message="the restarted consumer got nothing")
    assert handled.attempts()[entry_id][0] == 4
    _wait_settled(consumer, r, stream_names, acked=1)


def test_6_max_attempts_moves_a_poison_entry_to_the_dead_letter_stream(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """max_attempts=3 with a dead-letter stream and no handle_failure: retried by default, handled
    3 times, then exactly one dead-letter entry with the fields, origin, attempt and error;
    nothing pending; the source entry stays."""
    [entry_id] = add_entries(r, stream_names.stream, 1, {b"order": b"42"})
    handled = Handled()
    consumer = make_consumer(max_attempts=3, dead_letter_stream=stream_names.dead_letter)
    consumer.start(_failing(handled))
    _wait_settled(consumer, r, stream_names, acked=1)
    assert handled.attempts() == {entry_id: [1, 2, 3]}
    [(_, fields)] = _dead_letters(r, stream_names.dead_letter)
    assert fields[b"order"] == b"42"
    assert fields[b"rstream-stream"] == stream_names.stream.encode()
    assert fields[b"rstream-id"] == entry_id.encode()
    assert fields[b"rstream-attempt"] == b"3"
    assert fields[b"rstream-error"] == f"Poison: poison {entry_id}".encode()
    stats = consumer.stats()
    assert (stats.dead_lettered, stats.failed, stats.retried, stats.dropped) == (1, 3, 2, 0)
    assert r.xlen(stream_names.stream) == 1


def test_retry_false_under_max_attempts_settles_at_once(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """configure_ack(retry=False) opts out of max_attempts' default retries: acked after one try."""
    [entry_id] = add_entries(r, stream_names.stream, 1)
    handled = Handled()

    def give_up(message: rstream.Message, error: BaseException) -> None:
        message.configure_ack(retry=False)

    consumer = make_consumer(handle_failure=give_up, max_attempts=3,
                             dead_letter_stream=stream_names.dead_letter)
    consumer.start(_failing(handled))
    _wait_settled(consumer, r, stream_names, acked=1)
    assert handled.attempts() == {entry_id: [1]}
    assert _dead_letters(r, stream_names.dead_letter) == []


def test_7_a_raising_failure_handler_leaves_the_entry_pending_and_it_is_retried(
        r: redis.Redis, make_consumer: Factory, stream_names: Any, caplog: pytest.LogCaptureFixture) -> None:
    """handle_failure raises: logged with the entry id, the entry stays pending (not acked, not
    dropped) and comes back as a retry with attempt 2, which then succeeds."""
    caplog.set_level(logging.ERROR, logger="rstream")
    [entry_id] = add_entries(r, stream_names.stream, 1)
    handled = Handled()

    def handle(message: rstream.Message) -> None:
        handled.record(message)
        if message.attempt == 1:
            raise Poison("first time")

    def handle_failure(message: rstream.Message, error: BaseException) -> None:
        raise RuntimeError("the failure handler is broken")

    consumer = make_consumer(handle_failure=handle_failure)
    consumer.start(handle)
    wait_until(lambda: consumer.stats().waiting_retries == 1, 10, message="no retry scheduled")
    assert _pending(r, stream_names) == 1 and consumer.stats().acked == 0
    assert any(entry_id in rec.getMessage() and rec.levelno == logging.ERROR for rec in caplog.records)
    _wait_settled(consumer, r, stream_names, acked=1)
    assert handled.attempts() == {entry_id: [1, 2]}
    assert consumer.stats().retried == 1


def test_8_far_retries_do_not_stop_fresh_entries(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """1,000 entries waiting on a retry_after an hour away (as many as max_in_flight) hold no
    in-flight slot: fresh entries added afterwards are handled and acked."""
    parked = add_entries(r, stream_names.stream, 1000, {b"kind": b"poison"})
    fresh_handled = Handled()

    def handle(message: rstream.Message) -> None:
        if message.fields[b"kind"] == b"poison":
            raise Poison("later")
        fresh_handled.record(message)

    def handle_failure(message: rstream.Message, error: BaseException) -> None:
        message.metadata["retry_after"] = time.time() * 1000 + HOUR_MS
        message.configure_ack(retry=True)

    consumer = make_consumer(handle_failure=handle_failure, max_in_flight=1000)
    assert consumer.options.in_flight_limit == 1000
    consumer.start(handle)
    wait_until(lambda: consumer.stats().waiting_retries == 1000, 30, message="not all parked")
    fresh = add_entries(r, stream_names.stream, 50, {b"kind": b"fresh"})
    wait_until(lambda: fresh_handled.count() >= 50, 20, message="fresh entries were not handled")
    wait_until(lambda: consumer.stats().acked == 50 and consumer.stats().in_flight == 0, 10,
               message="fresh entries not acked")
    assert sorted(fresh_handled.attempts()) == sorted(fresh)
    pending = r.xpending_range(stream_names.stream, stream_names.group, "-", "+", 2000)
    assert sorted(p["message_id"].decode() for p in pending) == sorted(parked)
    assert consumer.stats().retried == 0


def test_a_due_retry_with_no_free_slot_does_not_spin(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """While every in-flight slot is held by a slow handler, a due retry waits for a slot without
    busy-looping the acker thread (counted as ledger reservations), and goes once one is free."""
    poison, slow_a, slow_b = (add_entries(r, stream_names.stream, 1, {b"kind": kind})[0]
                              for kind in (b"poison", b"slow", b"slow"))
    release = threading.Event()
    slow_started = Handled()
    handled = Handled()

    def handle(message: rstream.Message) -> None:
        handled.record(message)
        if message.fields[b"kind"] == b"slow":
            slow_started.record(message)
            release.wait(20)
        elif not release.is_set():
            raise Poison("not yet")

    consumer = make_consumer(handle_failure=_retry_always, batch_size=2, max_in_flight=2, concurrency=2)
    consumer.start(handle)
    wait_until(lambda: slow_started.count() == 2 and consumer.stats().waiting_retries == 1, 10,
               message="slots not filled by the slow handlers")
    ledger = consumer._lanes[0].ledger  # white box: count how often the acker asks for a slot
    original = ledger.reserve
    calls: List[int] = []

    def counting_reserve(*args: Any, **kwargs: Any) -> int:
        calls.append(1)
        return original(*args, **kwargs)

    ledger.reserve = counting_reserve  # type: ignore[method-assign]
    time.sleep(0.5)  # the observation window: nothing to wait for, spinning is what we count
    window_calls = len(calls)
    release.set()
    _wait_settled(consumer, r, stream_names, acked=3)
    assert window_calls < 200, f"{window_calls} reservations in 0.5 s: the acker spins"
    assert sorted(handled.attempts()) == sorted([poison, slow_a, slow_b])


def test_a_due_retry_is_not_starved_by_an_idle_reader(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """batch_size == max_in_flight == 1 on an idle stream: the reader's blocking reads take the
    only slot again and again (retry_after makes sure one holds it when the retry falls due);
    the due retry still gets the slot, and reads resume after it."""
    [entry_id] = add_entries(r, stream_names.stream, 1)
    handled = Handled()

    def handle(message: rstream.Message) -> None:
        handled.record(message)
        if message.id == entry_id and message.attempt == 1:
            raise Poison("once")

    def handle_failure(message: rstream.Message, error: BaseException) -> None:
        message.metadata["retry_after"] = time.time() * 1000 + 300
        message.configure_ack(retry=True)

    consumer = make_consumer(handle_failure=handle_failure, batch_size=1, max_in_flight=1, concurrency=1)
    consumer.start(handle)
    _wait_settled(consumer, r, stream_names, acked=1)
    assert handled.attempts() == {entry_id: [1, 2]}
    fresh = add_entries(r, stream_names.stream, 1)
    wait_until(lambda: consumer.stats().acked == 2, 10, message="reads did not resume after the retry")
    assert handled.attempts()[fresh[0]] == [1]


def test_a_dead_consumers_entry_is_claimed_when_reads_could_take_every_slot(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """The same starvation for claims (same ledger rule): with batch_size == max_in_flight == 1 on
    an idle stream, the reaper still gets the slot and claims a dead consumer's entry."""
    [entry_id] = add_entries(r, stream_names.stream, 1)
    r.xgroup_create(stream_names.stream, stream_names.group, id="0")
    r.xreadgroup(stream_names.group, "gone", {stream_names.stream: ">"}, count=1)
    handled = Handled()
    consumer = make_consumer(batch_size=1, max_in_flight=1)
    consumer.start(handled.record)
    _wait_settled(consumer, r, stream_names, acked=1)
    assert handled.attempts() == {entry_id: [2]} and consumer.stats().claimed == 1


# -- max_attempts edges ---------------------------------------------------------------------------
def test_max_attempts_without_dead_letter_stream_drops_with_a_warning(
        r: redis.Redis, make_consumer: Factory, stream_names: Any, caplog: pytest.LogCaptureFixture) -> None:
    """max_attempts=2, no dead-letter stream, retry always asked: handled twice (handle_failure
    runs on the last attempt too), then acked, counted as dropped and logged at WARNING."""
    caplog.set_level(logging.WARNING, logger="rstream")
    [entry_id] = add_entries(r, stream_names.stream, 1)
    handled = Handled()
    failure_calls: List[int] = []

    def handle_failure(message: rstream.Message, error: BaseException) -> None:
        failure_calls.append(message.attempt)
        message.configure_ack(retry=True)

    consumer = make_consumer(handle_failure=handle_failure, max_attempts=2)
    consumer.start(_failing(handled))
    _wait_settled(consumer, r, stream_names, acked=1)
    assert handled.attempts() == {entry_id: [1, 2]} and failure_calls == [1, 2]
    stats = consumer.stats()
    assert (stats.dropped, stats.dead_lettered, stats.acked) == (1, 0, 1)
    drops = [rec for rec in caplog.records if entry_id in rec.getMessage() and "drop" in rec.getMessage()]
    assert drops and all(rec.levelno == logging.WARNING for rec in drops)


def test_a_delayed_retry_on_the_last_attempt_is_dead_lettered_at_once(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """On the last allowed attempt, a retry with a far retry_after does not keep the entry alive:
    it is dead-lettered now, not parked for an hour."""
    [entry_id] = add_entries(r, stream_names.stream, 1)
    handled = Handled()

    def handle_failure(message: rstream.Message, error: BaseException) -> None:
        message.configure_ack(retry=True)
        if message.attempt >= 2:
            message.metadata["retry_after"] = time.time() * 1000 + HOUR_MS

    consumer = make_consumer(handle_failure=handle_failure, max_attempts=2,
                             dead_letter_stream=stream_names.dead_letter)
    consumer.start(_failing(handled))
    _wait_settled(consumer, r, stream_names, acked=1)
    assert handled.attempts() == {entry_id: [1, 2]}
    assert [f[b"rstream-id"] for _, f in _dead_letters(r, stream_names.dead_letter)] == [entry_id.encode()]
    assert consumer.stats().waiting_retries == 0


def test_delete_on_ack_with_dead_lettering(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """delete_on_ack: the dead-lettered entry is deleted from the source stream (with its ack),
    a successful one too, and the dead-letter stream keeps the failed entry's fields."""
    ok_id, bad_id = (add_entries(r, stream_names.stream, 1, {b"kind": kind})[0] for kind in (b"ok", b"bad"))

    def handle(message: rstream.Message) -> None:
        if message.fields[b"kind"] == b"bad":
            raise Poison("bad entry")

    consumer = make_consumer(handle_failure=_retry_always, max_attempts=2, delete_on_ack=True,
                             dead_letter_stream=stream_names.dead_letter)
    consumer.start(handle)
    _wait_settled(consumer, r, stream_names, acked=2)
    wait_until(lambda: r.xlen(stream_names.stream) == 0, 10, message="source entries not deleted")
    [(_, fields)] = _dead_letters(r, stream_names.dead_letter)
    assert fields[b"kind"] == b"bad" and fields[b"rstream-id"] == bad_id.encode()
    assert fields[b"rstream-attempt"] == b"2"
    assert ok_id != bad_id and consumer.stats().dead_lettered == 1


def test_non_utf8_fields_survive_dead_lettering(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """Binary field names and values (non-UTF-8, NUL, empty) reach the dead-letter stream byte
    for byte, next to an error text that itself held undecodable bytes."""
    payload = {b"\xff\xfe key": b"\x00\x80\xc3(binary", b"empty": b"", "caf\u00e9".encode(): b"\xe9t\xe9"}
    [entry_id] = add_entries(r, stream_names.stream, 1, payload)

    def handle(message: rstream.Message) -> None:
        raise Poison(message.fields[b"\xff\xfe key"].decode("utf-8", "surrogateescape"))

    consumer = make_consumer(max_attempts=1, dead_letter_stream=stream_names.dead_letter)
    consumer.start(handle)
    _wait_settled(consumer, r, stream_names, acked=1)
    [(_, fields)] = _dead_letters(r, stream_names.dead_letter)
    assert {k: v for k, v in fields.items() if not k.startswith(b"rstream-")} == payload
    assert fields[b"rstream-id"] == entry_id.encode()
    assert fields[b"rstream-error"] == b"Poison: \x00\\udc80\\udcc3(binary"


def test_a_dead_letter_the_server_refuses_stays_pending_and_blocks_nothing(
        r: redis.Redis, make_consumer: Factory, stream_names: Any, caplog: pytest.LogCaptureFixture) -> None:
    """An entry with more fields than a script call can take cannot be dead-lettered: it is logged,
    stays pending (never acked without its dead letter) and later entries are still acked."""
    caplog.set_level(logging.ERROR, logger="rstream")
    [wide] = add_entries(r, stream_names.stream, 1, {b"f%d" % n: b"v" for n in range(5000)})

    def handle(message: rstream.Message) -> None:
        if len(message.fields) > 1:
            raise Poison("too wide")

    consumer = make_consumer(max_attempts=1, dead_letter_stream=stream_names.dead_letter)
    consumer.start(handle)
    wait_until(lambda: any(wide in rec.getMessage() and "dead-letter" in rec.getMessage()
                           for rec in caplog.records), 10, message="the refusal was not logged")
    fresh = add_entries(r, stream_names.stream, 3)
    wait_until(lambda: consumer.stats().acked == 3, 10, message="entries after the refused one not acked")
    pending = r.xpending_range(stream_names.stream, stream_names.group, "-", "+", 10)
    assert [p["message_id"].decode() for p in pending] == [wide]
    assert r.xlen(stream_names.dead_letter) == 0 and wide not in fresh


def test_a_failure_handler_raising_base_exception_keeps_the_worker(
        r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """handle_failure raising SystemExit neither kills the only worker nor leaks its slot: the
    entry stays pending and is retried, and the next entry is handled."""
    first, second = add_entries(r, stream_names.stream, 2)
    handled = Handled()

    def handle(message: rstream.Message) -> None:
        handled.record(message)
        if message.id == first and message.attempt == 1:
            raise Poison("once")

    def handle_failure(message: rstream.Message, error: BaseException) -> None:
        raise SystemExit("not here")

    consumer = make_consumer(handle_failure=handle_failure, concurrency=1)
    consumer.start(handle)
    _wait_settled(consumer, r, stream_names, acked=2)
    assert handled.attempts() == {first: [1, 2], second: [1]}


def test_dead_lettering_with_a_str_client(
        redis_server: Any, r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """With decode_responses=True the fields are str and dead-lettering still copies them whole."""
    [entry_id] = add_entries(r, stream_names.stream, 1, {b"name": "z\u00fcrich".encode()})
    seen: List[Dict[Any, Any]] = []

    def handle(message: rstream.Message) -> None:
        seen.append(message.fields)
        raise Poison("no")

    client = redis_server.client(decode_responses=True)
    try:
        consumer = make_consumer(redis=client, max_attempts=1, dead_letter_stream=stream_names.dead_letter)
        consumer.start(handle)
        _wait_settled(consumer, r, stream_names, acked=1)
    finally:
        client.close()
    assert seen == [{"name": "z\u00fcrich"}]
    [(_, fields)] = _dead_letters(r, stream_names.dead_letter)
    assert fields[b"name"] == "z\u00fcrich".encode() and fields[b"rstream-id"] == entry_id.encode()
