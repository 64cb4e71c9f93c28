"""The threaded machinery on a fake I/O layer: the real Consumer, its real threads, no Redis.

Each test drives `FakeConsumer` (tests/fakeops.py) and reads the fake's call log: how reads
pipeline, which acks ride on which read, where the in-flight bound holds on every failure path,
whether a due retry gets slots, and what stop() leaves pending. Tests wait on conditions with
deadlines, never on sleeps; the fake pins the machinery in a chosen state where timing would
otherwise decide. Every test ends in `stop_and_check`: no grant leaked, nothing in flight, and
``reserved + in_flight <= max_in_flight`` held at every call the threads made.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from fakeops import DEADLINE_S, Call, FakeConsumer, FakeRedis
from helpers import wait_until
from rstream import Message, reader, settle, settlements
from rstream.errors import FatalRedisError, GroupMissing, RedisUnavailable, ServerError
from rstream.settlements import ACK_DELAY_S, now_ms
from rstream.supervise import Loop

# Small batches, short BLOCK reads, frequent beats; nobody is judged dead unless a test asks.
DEFAULTS: Dict[str, Any] = dict(batch_size=10, concurrency=2, receive_interval=100,
                                heartbeat_interval=50, allowed_missed_heartbeats=1000)
# Lost replies are found again as strays once idle this long: heartbeat_interval * missed.
STRAYS_SOON: Dict[str, Any] = dict(heartbeat_interval=20, allowed_missed_heartbeats=3)

Start = Callable[..., FakeConsumer]


@pytest.fixture
def fake() -> FakeRedis:
    return FakeRedis()


@pytest.fixture
def start(fake: FakeRedis) -> Iterator[Start]:
    """Start a FakeConsumer on `fake` with DEFAULTS; whatever a test leaves running is stopped."""
    made: List[FakeConsumer] = []

    def run(handler: Callable[[Message], None], **options: Any) -> FakeConsumer:
        consumer = FakeConsumer(fake, **{**DEFAULTS, **options})
        made.append(consumer)
        consumer.start(handler)
        return consumer

    yield run
    for consumer in made:
        consumer.stop(DEADLINE_S)


def stop_and_check(consumer: FakeConsumer) -> None:
    """Stop; then no Grant may have leaked, nothing may be in flight, the bound held throughout."""
    consumer.stop(DEADLINE_S)
    assert consumer.state in ("stopped", "failed")
    ledger = consumer._lanes[0].ledger
    assert ledger._reserved == 0, f"a Grant leaked: {ledger._reserved} slots still reserved"
    assert ledger.in_flight == 0
    assert consumer.fake.violations == []


def before_stop(fake: FakeRedis, role: str) -> List[Call]:
    """`role`'s reads and collections up to stop() (the reader's link is aborted at stop)."""
    aborts = [c.seq for c in fake.log("abort")]
    end = aborts[0] if aborts else len(fake.calls)
    return [c for c in fake.log(role=role) if c.seq < end
            and c.name in ("send_read", "finish_read") and "raised" not in c.detail]


def all_acked(fake: FakeRedis, ids: List[str]) -> Callable[[], bool]:
    return lambda: set(fake.acked) >= set(ids) and not fake.pel


# -- read pipelining ---------------------------------------------------------------------------
def test_reads_pipeline_two_deep_while_entries_flow_then_one_blocking_read(
        fake: FakeRedis, start: Start) -> None:
    """While full batches flow the reader keeps exactly 2 reads outstanding, never more; after a short
    read it sends one BLOCKing read, alone."""
    assert reader.PIPELINE_DEPTH == 2
    ids = fake.add(100)
    consumer = start(lambda m: None, max_in_flight=1000)  # slots never limit the pipeline
    wait_until(all_acked(fake, ids), DEADLINE_S)
    wait_until(lambda: any(c.detail["block_ms"] for c in fake.log("send_read")[1:]), DEADLINE_S)
    stop_and_check(consumer)

    # The reader's calls, cut into steps: a collected read and the reads sent right after it.
    steps: List[Tuple[Optional[Call], List[Call]]] = [(None, [])]
    for call in before_stop(fake, "reader"):
        if call.name == "finish_read":
            steps.append((call, []))
        else:
            steps[-1][1].append(call)
    out = most = 0
    for collected, sends in steps:
        out -= collected is not None
        for send in sends:
            assert send.detail["outstanding"] == out
            blocking = send.detail["block_ms"] is not None
            assert not blocking or out == 0, f"a BLOCKing read sent with {out} outstanding"
            out += 1
            most = max(most, out)
        if collected is not None and len(collected.detail["ids"]) == collected.detail["count"]:
            assert out == reader.PIPELINE_DEPTH, f"after a full batch {out} reads were queued"
        else:  # a short read (or none yet): the next read may block, and goes alone
            assert len(sends) <= 1 and all(s.detail["block_ms"] is not None for s in sends)
    assert most == reader.PIPELINE_DEPTH
    trace = before_stop(fake, "reader")
    full_reads = [c for c in trace if c.name == "finish_read" and len(c.detail["ids"]) == 10]
    assert len(full_reads) == 10


# -- acks riding on reads ----------------------------------------------------------------------
def test_acks_ride_on_the_next_read_while_flowing_and_the_acker_sends_only_after_a_short_read(
        fake: FakeRedis, start: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    """While batches flow each batch's acks go in the write of the next read sent after its handlers
    finish; the acker thread sends acks only once the reader's last read came back short."""
    # The acker's fallback for a stalled reader (acks older than 10 ms) is put out of reach and
    # it looks every millisecond; each collection waits until the handlers are done and their
    # acks are older than an acker would let them wait for a blocked reader: timing cannot
    # hide an acker that sends acks while the reader flows.
    monkeypatch.setattr(settlements, "FLOWING_ACK_DELAY_S", 60.0)
    monkeypatch.setattr(settlements, "IDLE_WAIT_S", 0.001)

    def handlers_done_and_acks_old(call: Call) -> None:
        ledger, consumer = fake.ledger, fake.consumer
        assert ledger is not None and consumer is not None
        waiting = consumer._lanes[0].settlements
        wait_until(lambda: ledger.in_flight == 0 and (
            waiting._oldest is None or time.monotonic() - waiting._oldest > 3 * ACK_DELAY_S),
            DEADLINE_S, 0.001)

    fake.before("finish_read", handlers_done_and_acks_old, role="reader")
    ids = fake.add(100)
    consumer = start(lambda m: None, max_in_flight=1000)
    wait_until(all_acked(fake, ids), DEADLINE_S)
    stop_and_check(consumer)

    trace = before_stop(fake, "reader")
    batches = [set(c.detail["ids"]) for c in trace if c.name == "finish_read" and c.detail["ids"]]
    assert len(batches) == 10
    sends = [c for c in trace if c.name == "send_read"]
    rides = [set(c.detail["acks"]) for c in sends if c.detail["acks"]]
    assert rides == batches[:-1]  # batch k rode on the read sent after batch k+1 was collected
    assert all(not c.detail["acks"] for c in sends if c.detail["block_ms"] is not None)
    by_acker = fake.log("settle", role="acker")
    assert by_acker and all(not c.detail["reader_flowing"] for c in by_acker)
    assert set().union(*(c.detail["acks"] for c in by_acker)) == batches[-1]


# -- the in-flight bound on every failure path -------------------------------------------------
Handler = Callable[[Message], None]


def _fails_first_attempt(every: int) -> Callable[[FakeRedis], Handler]:
    def make(fake: FakeRedis) -> Handler:
        def handler(message: Message) -> None:
            if int(message.fields[b"n"]) % every == 0 and message.attempt == 1:
                raise RuntimeError(f"first attempt of {message.id}")
        return handler
    return make


def _raises_on(every: int) -> Callable[[FakeRedis], Handler]:
    def make(fake: FakeRedis) -> Handler:
        def handler(message: Message) -> None:
            if int(message.fields[b"n"]) % every == 0:
                raise RuntimeError(f"handler failed for {message.id}")
        return handler
    return make


def _last_done_once_the_reader_blocks(fake: FakeRedis) -> Handler:
    """The last entry's handler returns only once the reader sent a BLOCKing read after it
    started: its ack is the acker thread's to send, not a read's."""
    def handler(message: Message) -> None:
        if message.id == fake.last_id:
            began = len(fake.calls)
            wait_until(lambda: [c for c in fake.log("send_read", role="reader")
                                if c.seq > began and c.detail["block_ms"]], DEADLINE_S)
    return handler


def _broken_failure_handler(message: Message, error: BaseException) -> None:
    raise RuntimeError("handle_failure is broken too")


# case: (the call that fails, its error, which call, the role, handler factory, options)
FAILURES: Dict[str, Any] = {
    "send_read raises": ("send_read", RedisUnavailable("reset"), 2, None, None, {}),
    "send_read meets NOGROUP": ("send_read", GroupMissing("NOGROUP"), 3, None, None, {}),
    "finish_settle raises": ("finish_settle", RedisUnavailable("reset"), 3, None, None,
                             STRAYS_SOON),
    "finish_read raises": ("finish_read", RedisUnavailable("reset"), 2, None, None, STRAYS_SOON),
    "claim raises": ("claim", ServerError("ERR script"), 1, None, _fails_first_attempt(4),
                     dict(max_attempts=3)),
    "read_own_page raises": ("read_own_page", RedisUnavailable("reset"), 1, None, None, {}),
    "the acker's settle raises": ("settle", RedisUnavailable("reset"), 1, "acker",
                                  _last_done_once_the_reader_blocks, {}),
    "a handler raises": (None, None, 0, None, _raises_on(3), {}),
    "handle_failure raises": (None, None, 0, None, _fails_first_attempt(4),
                              dict(handle_failure=_broken_failure_handler)),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_the_in_flight_bound_holds_and_every_grant_comes_back_after(
        case: str, fake: FakeRedis, start: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever fails, reserved + in_flight <= max_in_flight at every call, every entry is acked in the
    end, and the ledger ends with 0 reserved and 0 in flight."""
    name, error, nth, role, make_handler, options = FAILURES[case]
    monkeypatch.setattr(settle, "BROKEN_HANDLER_RETRY_MS", 10)  # its length is not tested here
    if case == "read_own_page raises":
        ids = fake.add_pending("me", 30, idle_ms=60_000) + fake.add(10)  # a restart: replay first
    else:
        ids = fake.add(40)
    fault = fake.fail(name, error, nth, role) if name else None
    handler = make_handler(fake) if make_handler else (lambda m: None)
    consumer = start(handler, max_in_flight=20, **options)
    wait_until(all_acked(fake, ids), DEADLINE_S, message=f"{case}: not every entry acked")
    stop_and_check(consumer)
    assert fault is None or fault.fired == 1


def test_a_fatal_error_while_reads_are_outstanding_stops_the_consumer_with_every_grant_back(
        fake: FakeRedis, start: Start) -> None:
    """A fatal error collecting a pipelined read stops the consumer by itself, and the grants of the
    reads still outstanding come back."""
    fake.add(60)
    fault = fake.fail("finish_read", FatalRedisError("NOPERM"), nth=3)
    consumer = start(lambda m: None, max_in_flight=40)
    wait_until(lambda: consumer.state == "failed", DEADLINE_S)
    assert fault.fired == 1 and isinstance(consumer.error, FatalRedisError)
    stop_and_check(consumer)


# -- retries get slots before new reads --------------------------------------------------------
def _fail_once(fake: FakeRedis, entry_id: str, retry_after_ms: int = 0) -> Callable[[Message], None]:
    def handler(message: Message) -> None:
        if message.id == entry_id and message.attempt == 1:
            if retry_after_ms:
                message.metadata["retry_after"] = now_ms() + retry_after_ms
            fake.note("failed", id=message.id)
            raise RuntimeError("fails once")
    return handler


def _claim_of(fake: FakeRedis, entry_id: str) -> List[Call]:
    return [c for c in fake.log("claim") if entry_id in c.detail.get("returned", ())]


def _reads_between_failure_and_claim(fake: FakeRedis, entry_id: str) -> List[Call]:
    failed = wait_until(lambda: fake.log("failed"), DEADLINE_S)[0].seq
    claimed = wait_until(lambda: _claim_of(fake, entry_id), DEADLINE_S)[0].seq
    return [c for c in fake.log("send_read", role="reader") if failed < c.seq < claimed]


def test_a_due_retry_is_redelivered_within_a_few_reads_of_a_flowing_stream(
        fake: FakeRedis, start: Start) -> None:
    """With max_in_flight == batch_size and a stream that keeps flowing, a due retry takes the next
    freed slots (claimed within 2 reads, not starved), and full reads go on after it."""
    ids = fake.add(500)

    def paced(call: Call) -> None:
        # Each collection waits for the handlers and, while the retry is due, until the reaper
        # has taken the slots free for it (or none is free): which thread the OS runs first
        # is not what this test is about; who gets the slots is.
        ledger = fake.ledger
        assert ledger is not None

        def reaper_waits_with_no_slot_free() -> bool:
            with ledger._cond:  # _priority_waiting is set only while the reaper waits in reserve()
                return ledger._priority_waiting > 0 and ledger._reserved >= ledger.limit

        wait_until(lambda: ledger.in_flight == 0 and (
            not fake.log("failed") or _claim_of(fake, ids[0]) or reaper_waits_with_no_slot_free()),
            DEADLINE_S, 0.001)

    fake.before("finish_read", paced, role="reader")
    consumer = start(_fail_once(fake, ids[0]), max_in_flight=10, max_attempts=3)
    reads = _reads_between_failure_and_claim(fake, ids[0])
    assert len(reads) <= 2, f"the retry waited {len(reads)} reads"
    claimed = _claim_of(fake, ids[0])[0].seq
    wait_until(lambda: [c for c in fake.log("finish_read", role="reader")
                        if c.seq > claimed and len(c.detail.get("ids", ())) == c.detail.get("count")],
               DEADLINE_S, message="no full read after the retry")
    stop_and_check(consumer)


def test_an_idle_reader_holding_every_slot_for_its_blocking_reads_does_not_starve_a_due_retry(
        fake: FakeRedis, start: Start) -> None:
    """With max_in_flight == batch_size a reader blocked on an empty stream re-reserves every slot at
    each BLOCK timeout; a retry that comes due still gets slots at the next one."""
    ids = fake.add(1)
    consumer = start(_fail_once(fake, ids[0], retry_after_ms=100), max_in_flight=10,
                     max_attempts=3, receive_interval=50)
    reads = _reads_between_failure_and_claim(fake, ids[0])
    # Due after 100 ms of 50 ms BLOCK reads: about two reads before, at most two after.
    assert len(reads) <= 5, f"the retry waited {len(reads)} reads"
    stop_and_check(consumer)


# -- stop: order, and what it leaves pending ---------------------------------------------------
def test_stop_cuts_reads_off_drains_handlers_and_acks_them_before_the_heartbeat_stops(
        fake: FakeRedis, start: Start) -> None:
    """stop() with two reads outstanding and handlers running: the reads are cut off (their entries
    stay pending, never acked), the handlers finish and are acked, beats go on while draining, and
    the last ack comes before the last beat."""
    ids = fake.add(40)
    go, started = threading.Event(), threading.Event()
    handled: List[str] = []

    def handler(message: Message) -> None:
        started.set()
        go.wait(DEADLINE_S)
        handled.append(message.id)

    held = fake.hold("finish_read", role="reader", nth=2)  # collecting the 2nd read of 3 sent
    # Each ack waits for a beat after it: there is one only if the heartbeat still runs.
    fake.before("settle", role="acker", fn=lambda call: wait_until(
        lambda: [b for b in fake.log("beat") if b.seq > call.seq], DEADLINE_S))
    consumer = start(handler)
    assert held.reached.wait(DEADLINE_S) and started.wait(DEADLINE_S)
    stopper = threading.Thread(target=consumer.stop, args=(DEADLINE_S,))
    stopper.start()
    wait_until(lambda: not consumer._lanes[0].reader_loop.thread.is_alive(), DEADLINE_S)
    reader_done = len(fake.calls)
    wait_until(lambda: [b for b in fake.log("beat") if b.seq > reader_done], DEADLINE_S,
               message="no heartbeat while draining")
    go.set()
    stopper.join(DEADLINE_S)
    assert not stopper.is_alive()
    stop_and_check(consumer)

    assert sorted(handled) == sorted(ids[:10])
    assert sorted(fake.acked) == sorted(handled)  # nothing handled is left unacked
    assert fake.pending_ids("me") == ids[10:30]    # the two reads cut off stay pending
    abort, = fake.log("abort", role="reader")
    assert abort.detail["outstanding"] == 2
    assert all(c.seq < abort.seq for c in fake.log(role="reader") if c.name != "abort")
    last_ack = fake.log("settle", role="acker")[-1].seq
    last_beat = fake.log("beat")[-1].seq
    leave, = fake.log("leave")
    assert abort.seq < last_ack < last_beat < leave.seq


# -- start ---------------------------------------------------------------------------------------
def test_a_fatal_error_while_start_is_still_starting_threads_stops_the_consumer(
        fake: FakeRedis, start: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread that fails fatally before start() returns (when its own stop() is too early to act)
    still stops the consumer."""
    fake.fail("beat", FatalRedisError("NOPERM"), nth=2)  # the 1st is start()'s own check
    start_loop = Loop.start

    def start_then_let_the_heartbeat_fail(loop: Loop) -> None:
        start_loop(loop)
        if loop.name == "rstream-reaper":  # the last one: start() is about to return
            wait_until(lambda: not [t for t in threading.enumerate() if t.name in
                                    ("rstream-heartbeat", "rstream-fatal-stop")], DEADLINE_S)

    monkeypatch.setattr(Loop, "start", start_then_let_the_heartbeat_fail)
    consumer = start(lambda m: None)
    wait_until(lambda: consumer.state == "failed", DEADLINE_S)
    assert isinstance(consumer.error, FatalRedisError)
    stop_and_check(consumer)


def test_a_claim_answered_after_stop_began_is_not_handled_and_gives_its_grant_back(
        fake: FakeRedis, start: Start) -> None:
    """A retry whose claim is answered after stop() began is not handed to a handler: the entry stays
    pending for the next start, and the claim's grant comes back."""
    ids = fake.add(1)
    attempts: List[int] = []

    def handler(message: Message) -> None:
        attempts.append(message.attempt)
        raise RuntimeError("fails")

    def answer_once_stopping(call: Call) -> None:
        consumer = fake.consumer
        assert consumer is not None
        wait_until(lambda: consumer._lanes[0].intake._closed, DEADLINE_S)

    fake.before("claim", answer_once_stopping, role="reaper")
    consumer = start(handler, max_attempts=3)
    wait_until(lambda: fake.log("claim"), DEADLINE_S)
    stop_and_check(consumer)
    assert _claim_of(fake, ids[0]), "the claim was answered"
    assert attempts == [1]
    assert fake.pending_ids("me") == ids and not fake.acked


# -- batch handlers and partition_by -------------------------------------------------------------
BatchHandler = Callable[[List[Message]], Any]


@pytest.fixture
def start_batches(fake: FakeRedis) -> Iterator[Callable[..., FakeConsumer]]:
    """Start a FakeConsumer with a batch handler (handle_batch=); stopped at teardown."""
    made: List[FakeConsumer] = []

    def run(handle_batch: BatchHandler, **options: Any) -> FakeConsumer:
        consumer = FakeConsumer(fake, **{**DEFAULTS, **options})
        made.append(consumer)
        consumer.start(handle_batch=handle_batch)
        return consumer

    yield run
    for consumer in made:
        consumer.stop(DEADLINE_S)


def _as_batch(handler: Handler) -> BatchHandler:
    """A batch handler that fails the messages `handler` raises for, as (message, error) pairs."""
    def handle_batch(batch: List[Message]) -> Any:
        failed = []
        for message in batch:
            try:
                handler(message)
            except Exception as exc:  # noqa: BLE001 - the batch handler reports it
                failed.append((message, exc))
        return failed
    return handle_batch


def _recorder(batches: List[List[str]]) -> BatchHandler:
    def handle_batch(batch: List[Message]) -> None:
        batches.append([m.id for m in batch])
    return handle_batch


def test_a_batch_fills_up_across_small_reads_and_goes_when_full(
        fake: FakeRedis, start_batches: Callable[..., FakeConsumer]) -> None:
    """Entries trickling in 3 at a time (one short read each) make batches of exactly
    batch_size, each in id order: with a far batch_timeout, only a full batch goes."""
    batches: List[List[str]] = []
    consumer = start_batches(_recorder(batches), batch_timeout=60_000, max_in_flight=40)
    ids: List[str] = []

    def delivered() -> bool:
        return set(fake.pending_ids("me")) | set(fake.acked) >= set(ids)

    for _ in range(10):
        ids += fake.add(3)
        wait_until(delivered, DEADLINE_S)  # each 3 came in a read of their own
    wait_until(all_acked(fake, ids), DEADLINE_S)
    assert batches == [ids[:10], ids[10:20], ids[20:]]
    assert max(len(c.detail["ids"]) for c in fake.log("finish_read") if "ids" in c.detail) <= 3
    stop_and_check(consumer)


def test_a_partial_batch_goes_once_its_oldest_entry_waited_batch_timeout(
        fake: FakeRedis, start_batches: Callable[..., FakeConsumer]) -> None:
    """Fewer than batch_size entries are handed over as one batch after batch_timeout."""
    batches: List[List[str]] = []
    ids = fake.add(5)
    consumer = start_batches(_recorder(batches), batch_timeout=50)
    wait_until(all_acked(fake, ids), DEADLINE_S)
    assert batches == [ids]
    stop_and_check(consumer)


def test_stop_flushes_a_batch_that_waits_to_fill_up(
        fake: FakeRedis, start_batches: Callable[..., FakeConsumer]) -> None:
    """stop() does not wait for batch_timeout (60 s here): the waiting batch is handled at once
    and acked before the consumer stops."""
    batches: List[List[str]] = []
    ids = fake.add(5)
    consumer = start_batches(_recorder(batches), batch_timeout=60_000)
    ledger = consumer._lanes[0].ledger
    wait_until(lambda: ledger.in_flight == 5, DEADLINE_S)
    assert batches == []
    began = time.monotonic()
    stop_and_check(consumer)
    assert time.monotonic() - began < DEADLINE_S
    assert batches == [ids] and sorted(fake.acked) == sorted(ids)


def test_a_retry_holds_its_key_back_even_when_the_entries_behind_it_hold_every_slot(
        fake: FakeRedis, start: Start) -> None:
    """partition_by, one key, max_in_flight == batch_size: while the first entry waits for its
    retry the entries behind it take every slot and reading pauses. A retry that needed a new
    slot (a claim by the reaper) would never get one; held by the worker, it runs when due, then
    the rest, in id order, and everything is acked."""
    ids = fake.add(40)
    handled: List[str] = []

    def handler(message: Message) -> None:
        if message.id == ids[0] and message.attempt == 1:
            message.metadata["retry_after"] = now_ms() + 200
            raise RuntimeError("fails once")
        handled.append(message.id)

    consumer = start(handler, max_in_flight=10, max_attempts=3, partition_by=lambda m: "one")
    ledger = consumer._lanes[0].ledger
    wait_until(lambda: ledger.in_flight == 10 and consumer.stats().waiting_retries == 1,
               DEADLINE_S, message="the window did not fill up behind the waiting retry")
    assert handled == []
    wait_until(all_acked(fake, ids), DEADLINE_S)
    assert handled == ids
    assert fake.log("claim") == []  # the retry never went through the reaper
    stats = consumer.stats()
    assert (stats.retried, stats.waiting_retries) == (1, 0)
    stop_and_check(consumer)


def test_stop_gives_up_a_key_waiting_for_a_far_retry_at_once_and_leaves_it_pending(
        fake: FakeRedis, start: Start) -> None:
    """At stop, a key whose retry is due in 60 s is given up: the retried entry and the ones behind
    it stay pending (never acked), the other key's entries are handled and acked, and stop()
    returns at once with nothing in flight."""
    ids = fake.add(20)
    key_a = set(ids[::2])

    def handler(message: Message) -> None:
        if message.id == ids[0]:
            message.metadata["retry_after"] = now_ms() + 60_000
            raise RuntimeError("fails")

    consumer = start(handler, max_attempts=3,
                     partition_by=lambda m: "a" if m.id in key_a else "b")
    wait_until(lambda: set(fake.acked) == set(ids) - key_a, DEADLINE_S)
    began = time.monotonic()
    stop_and_check(consumer)
    assert time.monotonic() - began < DEADLINE_S
    assert set(fake.pending_ids("me")) == key_a and not key_a & set(fake.acked)


# (pool, case): the failure cases of FAILURES above, with a batch handler and with partition_by.
# With partition_by a retry is run again by its worker: no claim, so "claim raises" cannot fire.
POOL_CASES = [(pool, case) for pool in ("batch", "partition_by") for case in FAILURES
              if not (pool == "partition_by" and case == "claim raises")]


@pytest.mark.parametrize("pool, case", POOL_CASES, ids=[f"{p}-{c}" for p, c in POOL_CASES])
def test_the_in_flight_bound_holds_with_batches_and_with_partition_by(
        pool: str, case: str, fake: FakeRedis, start: Start,
        start_batches: Callable[..., FakeConsumer], monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure table of the per-message pool, run with a batch handler (failures returned as
    pairs) and with partition_by (5 keys): the bound holds at every call, every entry is acked,
    and no grant leaks."""
    name, error, nth, role, make_handler, options = FAILURES[case]
    monkeypatch.setattr(settle, "BROKEN_HANDLER_RETRY_MS", 10)
    if case == "read_own_page raises":
        ids = fake.add_pending("me", 30, idle_ms=60_000) + fake.add(10)
    else:
        ids = fake.add(40)
    fault = fake.fail(name, error, nth, role) if name else None
    handler = make_handler(fake) if make_handler else (lambda m: None)
    if pool == "batch":
        consumer = start_batches(_as_batch(handler), max_in_flight=20, batch_timeout=20, **options)
    else:
        consumer = start(handler, max_in_flight=20, partition_by=lambda m: int(m.fields[b"n"]) % 5,
                         **options)
    wait_until(all_acked(fake, ids), DEADLINE_S, message=f"{pool} {case}: not every entry acked")
    stop_and_check(consumer)
    assert fault is None or fault.fired == 1
