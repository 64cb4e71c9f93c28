"""Delivery against a real server: shape, exactly-once handling of a
backlog, acks, delete_on_ack, group creation, concurrency, bounded in-flight, odd payloads and the
forms of the `redis` option."""
from __future__ import annotations

import collections
import threading
from typing import Any, Callable, List, Optional

import pytest
import redis

import rstream
from helpers import add_entries, wait_until
from rstream.embedded import EmbeddedServer

FAST = dict(receive_interval=100, heartbeat_interval=100)
Factory = Callable[..., rstream.Consumer]


class Recorder:
    """A handler that keeps every message it got; tests wait on how many arrived."""

    def __init__(self, work: Optional[Callable[[rstream.Message], None]] = None) -> None:
        self.messages: List[rstream.Message] = []
        self._lock = threading.Lock()
        self._work = work

    def __call__(self, message: rstream.Message) -> None:
        if self._work is not None:
            self._work(message)
        with self._lock:
            self.messages.append(message)

    @property
    def ids(self) -> List[str]:
        with self._lock:
            return [m.id for m in self.messages]

    def wait_for(self, count: int, timeout: float = 20.0) -> List[rstream.Message]:
        wait_until(lambda: len(self.messages) >= count, timeout,
                   message=f"handler got fewer than {count} messages")
        with self._lock:
            return list(self.messages)




def _pending_of(r: redis.Redis, stream: str, group: str, consumer: str) -> List[str]:
    entries = r.xpending_range(stream, group, "-", "+", 100_000, consumername=consumer)
    return [e["message_id"].decode() for e in entries]



def test_message_shape(r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """An entry added as `XADD s 10000-0 foo bar` arrives with the seed's id, data and metadata."""
    r.xadd(stream_names.stream, {b"foo": b"bar"}, id="10000-0")
    recorder = Recorder()
    make_consumer(group_start_id="0").start(recorder)
    [message] = recorder.wait_for(1)
    assert message.id == "10000-0"
    assert message.data == ["10000-0", {b"foo": b"bar"}]
    assert message.fields == {b"foo": b"bar"}
    assert message.stream == stream_names.stream
    assert message.metadata["id"] == "10000-0"
    assert message.metadata["stream"] == stream_names.stream
    assert message.metadata["attempt"] == 1 and message.attempt == 1


def test_thousand_entries_are_each_handled_once(r: redis.Redis, make_consumer: Factory,
                                                stream_names: Any) -> None:
    """A backlog of 1,000 entries is handled completely, every entry exactly once."""
    ids = add_entries(r, stream_names.stream, 1000)
    recorder = Recorder()
    consumer = make_consumer(group_start_id="0", batch_size=100)
    consumer.start(recorder)
    recorder.wait_for(1000)
    wait_until(lambda: consumer.stats().acked == 1000, 10, message="not all acked")
    consumer.stop(timeout=10)
    counts = collections.Counter(recorder.ids)
    assert set(counts) == set(ids)
    assert [i for i, n in counts.items() if n != 1] == []
    assert consumer.stats().delivered == 1000


def test_handled_entries_are_acked_not_deleted(r: redis.Redis, make_consumer: Factory,
                                               stream_names: Any) -> None:
    """After 5 entries are handled the consumer's pending list is empty and the stream keeps them."""
    recorder = Recorder()
    consumer = make_consumer()
    consumer.start(recorder)
    add_entries(r, stream_names.stream, 5)
    recorder.wait_for(5)
    wait_until(lambda: not _pending_of(r, stream_names.stream, stream_names.group,
                                       stream_names.consumer), 10, message="entries still pending")
    assert r.xpending(stream_names.stream, stream_names.group)["pending"] == 0
    assert r.xlen(stream_names.stream) == 5
    # The counter moves once the XACK reply is read, a moment after the server applied it.
    wait_until(lambda: consumer.stats().acked == 5, 10, message="acks not counted")


def test_delete_on_ack_removes_entries(r: redis.Redis, make_consumer: Factory,
                                       stream_names: Any) -> None:
    """With delete_on_ack the acked entries are gone from the pending list and from the stream."""
    recorder = Recorder()
    make_consumer(delete_on_ack=True).start(recorder)
    add_entries(r, stream_names.stream, 5)
    recorder.wait_for(5)
    wait_until(lambda: r.xlen(stream_names.stream) == 0, 10, message="entries not deleted")
    assert r.xpending(stream_names.stream, stream_names.group)["pending"] == 0


def test_group_start_dollar_skips_older_entries(r: redis.Redis, make_consumer: Factory,
                                                stream_names: Any) -> None:
    """group_start_id='$' delivers only entries added after the group was created."""
    add_entries(r, stream_names.stream, 3)
    recorder = Recorder()
    make_consumer(group_start_id="$").start(recorder)
    [new] = add_entries(r, stream_names.stream, 1)
    recorder.wait_for(1)
    # Reads are in id order: an older entry, had it been delivered, would have come first.
    assert recorder.ids == [new]


def test_group_start_zero_delivers_older_entries(r: redis.Redis, make_consumer: Factory,
                                                 stream_names: Any) -> None:
    """group_start_id='0' delivers the entries already in the stream."""
    old = add_entries(r, stream_names.stream, 3)
    recorder = Recorder()
    make_consumer(group_start_id="0").start(recorder)
    recorder.wait_for(3)
    assert recorder.ids == old


def test_existing_group_is_kept(r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """A group that exists already (BUSYGROUP) is used as it is, from its own last id."""
    old = add_entries(r, stream_names.stream, 2)
    r.xgroup_create(stream_names.stream, stream_names.group, id=old[0])
    recorder = Recorder()
    make_consumer(group_start_id="0").start(recorder)
    recorder.wait_for(1)
    assert recorder.ids == [old[1]]


def test_make_stream_creates_a_missing_stream(r: redis.Redis, make_consumer: Factory,
                                              stream_names: Any) -> None:
    """make_stream=True creates the stream and the group at start, then consumes from it."""
    recorder = Recorder()
    make_consumer(make_stream=True).start(recorder)
    assert r.exists(stream_names.stream) == 1
    groups = r.xinfo_groups(stream_names.stream)
    assert [g["name"].decode() for g in groups] == [stream_names.group]
    [new] = add_entries(r, stream_names.stream, 1)
    assert [m.id for m in recorder.wait_for(1)] == [new]


def test_missing_stream_without_make_stream_waits_for_it(r: redis.Redis, make_consumer: Factory,
                                                         stream_names: Any) -> None:
    """make_stream=False on a missing stream does not crash; consuming starts once it appears."""
    recorder = Recorder()
    consumer = make_consumer(make_stream=False, group_start_id="0")
    consumer.start(recorder)
    assert r.exists(stream_names.stream) == 0
    first = add_entries(r, stream_names.stream, 2)
    recorder.wait_for(2, timeout=30)
    later = add_entries(r, stream_names.stream, 1)
    recorder.wait_for(3)
    assert recorder.ids == first + later
    assert consumer.error is None
    assert consumer.stats().group_recreated == 0, "a first creation counted as a re-creation"


@pytest.mark.parametrize("warmup", [0, 2000], ids=["fresh", "after-fast-handlers"])
def test_concurrency_runs_handlers_at_the_same_time(warmup: int, r: redis.Redis,
                                                    make_consumer: Factory,
                                                    stream_names: Any) -> None:
    """With concurrency=8, eight handlers are inside the handler together (a barrier of 8 opens),
    also when a run of fast handlers came first (slow work must not queue behind one worker)."""
    barrier = threading.Barrier(8, timeout=15)
    lock = threading.Lock()
    active = [0]
    peak = [0]
    passed: List[str] = []

    def meet(message: rstream.Message) -> None:
        if message.fields.get(b"fast"):
            return
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            barrier.wait()
            with lock:
                passed.append(message.id)
        finally:
            with lock:
                active[0] -= 1

    recorder = Recorder(meet)
    make_consumer(concurrency=8).start(recorder)
    if warmup:
        pipe = r.pipeline(transaction=False)
        for _ in range(warmup):
            pipe.xadd(stream_names.stream, {b"fast": b"1"})
        pipe.execute()
        recorder.wait_for(warmup)
    add_entries(r, stream_names.stream, 8)
    recorder.wait_for(warmup + 8, timeout=25)
    assert len(passed) == 8, "the barrier broke: fewer than 8 handlers ran at once"
    assert peak[0] == 8


def test_in_flight_never_exceeds_max_in_flight(r: redis.Redis, make_consumer: Factory,
                                               stream_names: Any) -> None:
    """With a slow handler and a 10,000-entry backlog, stats().in_flight stays <= max_in_flight."""
    limit = 100
    add_entries(r, stream_names.stream, 10_000)
    samples: List[int] = []
    slow = threading.Event()   # never set: each handler waits its full 2 ms
    consumer = make_consumer(group_start_id="0", batch_size=40, max_in_flight=limit, concurrency=4)

    def work(message: rstream.Message) -> None:
        samples.append(consumer.stats().in_flight)
        slow.wait(0.002)

    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            samples.append(consumer.stats().in_flight)
            done.wait(0.001)

    watcher = threading.Thread(target=watch, name="test-in-flight-watcher")
    recorder = Recorder(work)
    consumer.start(recorder)
    watcher.start()
    try:
        recorder.wait_for(1500, timeout=60)
        # The server still holds a backlog, so reading was paused by the bound, not by the stream.
        assert r.xinfo_groups(stream_names.stream)[0]["last-delivered-id"] != \
            r.xinfo_stream(stream_names.stream)["last-generated-id"]
    finally:
        done.set()
        watcher.join(10)
    consumer.stop(timeout=10)
    assert max(samples) <= limit
    assert max(samples) > 40, "the bound was never approached; the test proved nothing"
    # Entries a stop() leaves pending (a read in flight at stop) were never handled.
    pending = _pending_of(r, stream_names.stream, stream_names.group, stream_names.consumer)
    assert set(pending) & set(recorder.ids) == set(), "handled but not acked"


def test_odd_names_and_payloads_are_delivered_intact(redis_url: str, r: redis.Redis) -> None:
    """Names with spaces and unicode, non-UTF-8 bytes, an empty value and 5 MB arrive unchanged."""
    stream, group, name = "my stream ✓ ünï 流", "grüppe 組 1", "consumer ☃ 1"
    payloads = [
        {b"\xff\xfe\x00key": b"\x80\x81\xc3\x28 not utf-8 \x00"},
        {b"empty": b""},
        {b"big": bytes(range(256)) * (5 * 1024 * 1024 // 256), b"small": b"x"},
    ]
    ids = [r.xadd(stream, fields).decode() for fields in payloads]
    recorder = Recorder()
    consumer = rstream.Consumer(redis=redis_url, stream=stream, group=group, consumer_name=name,
                                group_start_id="0", **FAST)
    try:
        consumer.start(recorder)
        got = {m.id: m for m in recorder.wait_for(3, timeout=30)}
        assert sorted(got) == sorted(ids)
        for entry_id, fields in zip(ids, payloads):
            assert got[entry_id].fields == fields
            assert got[entry_id].stream == stream
        wait_until(lambda: r.xpending(stream, group)["pending"] == 0, 10,
                   message="odd-named entries not acked")
        consumers = r.xinfo_consumers(stream, group)
        assert [c["name"].decode() for c in consumers] == [name]
    finally:
        consumer.stop(timeout=5)


def test_decode_responses_client_gives_str_fields(redis_server: EmbeddedServer, r: redis.Redis,
                                                  make_consumer: Factory, stream_names: Any) -> None:
    """A user client made with decode_responses=True gets str field names and values."""
    client = redis_server.client(decode_responses=True)
    recorder = Recorder()
    make_consumer(redis=client).start(recorder)
    r.xadd(stream_names.stream, {"name": "José", "n": "1"})
    [message] = recorder.wait_for(1)
    assert message.fields == {"name": "José", "n": "1"}
    assert isinstance(message.id, str)
    client.close()


def test_decode_responses_survives_non_utf8_payload(redis_server: EmbeddedServer, r: redis.Redis,
                                                    make_consumer: Factory,
                                                    stream_names: Any) -> None:
    """With decode_responses=True a non-UTF-8 value arrives as surrogate-escaped str (its bytes
    recoverable) and does not wedge the consumer: the entries after it arrive too."""
    client = redis_server.client(decode_responses=True)
    recorder = Recorder()
    make_consumer(redis=client).start(recorder)
    bad = r.xadd(stream_names.stream, {b"v": b"\xff\xfe"}).decode()
    good = r.xadd(stream_names.stream, {b"v": b"ok"}).decode()
    messages = {m.id: m for m in recorder.wait_for(2)}
    assert messages[bad].fields["v"].encode("utf-8", "surrogateescape") == b"\xff\xfe"
    assert messages[good].fields == {"v": "ok"}
    wait_until(lambda: r.xpending(stream_names.stream, stream_names.group)["pending"] == 0, 10,
               message="not acked")
    client.close()


@pytest.mark.parametrize("form", ["client", "kwargs", "url"])
def test_redis_option_forms_all_consume(form: str, redis_server: EmbeddedServer, r: redis.Redis,
                                        make_consumer: Factory, stream_names: Any) -> None:
    """A redis.Redis instance, a kwargs dict and a URL each work as the `redis` option."""
    option: Any = {
        "client": redis.Redis(host="127.0.0.1", port=redis_server.port),
        "kwargs": {"host": "127.0.0.1", "port": redis_server.port},
        "url": redis_server.url,
    }[form]
    recorder = Recorder()
    consumer = make_consumer(redis=option)
    consumer.start(recorder)
    [new] = add_entries(r, stream_names.stream, 1)
    assert [(m.id, m.fields) for m in recorder.wait_for(1)] == [(new, {b"n": b"0"})]
    wait_until(lambda: consumer.stats().acked == 1, 10, message="not acked")


def _blocked_client_ids(r: redis.Redis) -> List[int]:
    return [int(c["id"]) for c in r.client_list() if "b" in c["flags"]]


def test_blocking_read_longer_than_user_socket_timeout(redis_server: EmbeddedServer, r: redis.Redis,
                                                       make_consumer: Factory,
                                                       stream_names: Any) -> None:
    """A user client with socket_timeout=0.5 still works with 2 s blocking reads: no timeouts,
    no reconnects, and a new entry arrives."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=0.5)
    recorder = Recorder()
    consumer = make_consumer(redis=client, receive_interval=2000)
    consumer.start(recorder)
    blocked = wait_until(lambda: _blocked_client_ids(r), 10, message="reader never blocked")
    # Let a whole blocking read run past the user's socket timeout (the point of this test).
    threading.Event().wait(2.6)
    assert consumer.stats().outages == 0
    assert set(blocked) <= {int(c["id"]) for c in r.client_list()}, "the reader reconnected"
    [new] = add_entries(r, stream_names.stream, 1)
    assert recorder.wait_for(1)[0].id == new
    assert consumer.stats().outages == 0


@pytest.mark.parametrize("decode", [False, True])
def test_resp3_user_client_works(decode: bool, redis_server: EmbeddedServer, r: redis.Redis,
                                 make_consumer: Factory, stream_names: Any) -> None:
    """A user client speaking RESP3 (protocol=3) delivers the same messages as a RESP2 one."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, protocol=3,
                         decode_responses=decode)
    recorder = Recorder()
    consumer = make_consumer(redis=client)
    consumer.start(recorder)
    [new] = add_entries(r, stream_names.stream, 1)
    [message] = recorder.wait_for(1)
    assert message.id == new
    assert message.fields == ({"n": "0"} if decode else {b"n": b"0"})
    wait_until(lambda: consumer.stats().acked == 1, 10, message="not acked")
