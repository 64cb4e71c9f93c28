"""The pure failover decisions (rstream.failover) and the retry schedule (rstream.settle): no server."""
from __future__ import annotations

import threading
import time
from typing import List

from hypothesis import given
from hypothesis import strategies as st

from rstream.failover import (ConsumerInfo, PendingEntry, claim_page, dead_consumers, missing_ids,
                              next_check_ms, next_start, parse_consumers, parse_pending,
                              stray_entries)
from rstream.ledger import Ledger


def _pending(*ids: str, idle: int = 500, deliveries: int = 1, consumer: str = "dead") -> List[PendingEntry]:
    return [PendingEntry(i, consumer, idle, deliveries) for i in ids]


# -- parsing --------------------------------------------------------------------------------------
def test_parse_consumers_reads_resp2_flat_lists_with_bytes() -> None:
    """XINFO CONSUMERS in RESP2 (flat name/value lists, bytes) gives name, pending and idle."""
    reply = [[b"name", b"a", b"pending", 3, b"idle", 120],
             [b"name", b"b \xc3\xa9", b"pending", 0, b"idle", 7, b"inactive", 9]]
    assert parse_consumers(reply) == [ConsumerInfo("a", 3, 120), ConsumerInfo("b \u00e9", 0, 7)]


def test_parse_consumers_reads_resp3_maps_and_str() -> None:
    """XINFO CONSUMERS as RESP3 maps (or decoded str) parses the same."""
    reply = [{"name": "a", "pending": 2, "idle": 5, "inactive": -1}]
    assert parse_consumers(reply) == [ConsumerInfo("a", 2, 5)]


def test_parse_consumers_keeps_undecodable_names_round_trippable() -> None:
    """A non-UTF-8 consumer name survives parsing (surrogateescape), so it can be claimed from."""
    [info] = parse_consumers([[b"name", b"\xff", b"pending", 1, b"idle", 1]])
    assert info.name.encode("utf-8", "surrogateescape") == b"\xff"


def test_parse_consumers_of_an_empty_group_is_empty() -> None:
    """A group with no consumers (empty or nil reply) has no dead consumers to parse."""
    assert parse_consumers([]) == []
    assert parse_consumers(None) == []  # type: ignore[arg-type]


def test_parse_pending_reads_extended_xpending() -> None:
    """Extended XPENDING rows [id, consumer, idle, deliveries] become PendingEntry values."""
    reply = [[b"1-0", b"dead", 250, 1], [b"2-5", b"dead", 260, 4]]
    assert parse_pending(reply) == [PendingEntry("1-0", "dead", 250, 1), PendingEntry("2-5", "dead", 260, 4)]
    assert parse_pending([]) == []


# -- who is dead ----------------------------------------------------------------------------------
def test_dead_consumers_are_the_others_idle_longer_than_the_threshold() -> None:
    """Only other consumers idle strictly longer than dead_after are dead; this one never is."""
    consumers = [ConsumerInfo("me", 0, 10_000), ConsumerInfo("alive", 4, 199),
                 ConsumerInfo("edge", 4, 200), ConsumerInfo("dead", 4, 201)]
    assert [c.name for c in dead_consumers(consumers, "me", 200)] == ["dead"]


def test_dead_consumers_with_most_pending_come_first() -> None:
    """The dead consumer holding the most entries is claimed from first; empty ones still listed
    (they are removed)."""
    consumers = [ConsumerInfo("empty", 0, 900), ConsumerInfo("few", 2, 900), ConsumerInfo("many", 50, 300)]
    assert [c.name for c in dead_consumers(consumers, "me", 200)] == ["many", "few", "empty"]


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "me"]), st.integers(0, 100),
                          st.integers(0, 1000))),
       st.integers(1, 1000))
def test_dead_consumers_never_include_me_nor_a_live_one(rows: list, dead_after: int) -> None:
    """For any group, the dead list is exactly the others past the threshold."""
    consumers = [ConsumerInfo(n, p, i) for n, p, i in rows]
    dead = dead_consumers(consumers, "me", dead_after)
    assert all(c.name != "me" and c.idle_ms > dead_after for c in dead)
    assert len(dead) == sum(1 for c in consumers if c.name != "me" and c.idle_ms > dead_after)
    assert [c.pending for c in dead] == sorted((c.pending for c in dead), reverse=True)


# -- when to look again ---------------------------------------------------------------------------
def test_next_check_is_one_interval_while_everyone_beats_on_time() -> None:
    """Consumers idle less than one interval (beating on time) never make the reaper look early."""
    consumers = [ConsumerInfo("a", 3, 0), ConsumerInfo("b", 0, 99), ConsumerInfo("me", 0, 0)]
    assert next_check_ms(consumers, "me", dead_after_ms=200, interval_ms=100) == 100
    assert next_check_ms([], "me", dead_after_ms=200, interval_ms=100) == 100


def test_next_check_comes_just_after_a_late_consumer_crosses_the_threshold() -> None:
    """A consumer that missed a beat is looked at 1 ms after it will count as dead."""
    consumers = [ConsumerInfo("late", 5, 150), ConsumerInfo("later", 5, 190)]
    assert next_check_ms(consumers, "me", dead_after_ms=200, interval_ms=100) == 11
    assert dead_consumers([ConsumerInfo("later", 5, 190 + 11)], "me", 200)  # then it is dead


def test_next_check_ignores_the_already_dead_and_itself() -> None:
    """Dead consumers (handled this round) and this consumer never shorten the wait, so a dead
    consumer that cannot be removed does not make the reaper spin."""
    consumers = [ConsumerInfo("dead", 9, 10_000), ConsumerInfo("edge", 0, 201), ConsumerInfo("me", 0, 199)]
    assert next_check_ms(consumers, "me", dead_after_ms=200, interval_ms=100) == 100


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "me"]), st.integers(0, 5000))),
       st.integers(1, 2000), st.integers(1, 1000))
def test_next_check_is_positive_and_never_later_than_a_death(rows: list, dead_after: int,
                                                           interval: int) -> None:
    """The wait is 1..interval ms, and no live consumer dies more than 1 ms before the next look."""
    consumers = [ConsumerInfo(n, 0, idle) for n, idle in rows]
    wait = next_check_ms(consumers, "me", dead_after, interval)
    assert 1 <= wait <= interval
    for c in consumers:
        if c.name != "me" and c.idle_ms <= dead_after:
            assert c.idle_ms + wait <= dead_after + 1


# -- what to claim --------------------------------------------------------------------------------
def test_claim_page_of_nothing_claims_nothing() -> None:
    """An empty XPENDING page yields no ids, so no XCLAIM with an empty id list is built."""
    assert claim_page([]) == ([], {}, 0)


def test_claim_page_uses_the_real_delivery_count_and_smallest_idle() -> None:
    """Each claimed entry's attempt is its delivery count + 1; min-idle is the page's smallest
    idle, so an entry another consumer claimed since (idle reset) is skipped by XCLAIM."""
    page = [PendingEntry("1-0", "d", 900, 1), PendingEntry("1-1", "d", 450, 3),
            PendingEntry("2-0", "d", 600, 2)]
    ids, attempts, min_idle = claim_page(page)
    assert ids == ["1-0", "1-1", "2-0"]
    assert attempts == {"1-0": 2, "1-1": 4, "2-0": 3}
    assert min_idle == 450


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**7), st.integers(1, 50)),
                min_size=1, unique_by=lambda t: t[0]))
def test_claim_page_min_idle_never_exceeds_any_entry_idle(rows: list) -> None:
    """XCLAIM's min-idle is at most every observed idle: no entry of the page is skipped for it."""
    page = [PendingEntry(f"{n}-0", "d", idle, deliveries) for n, idle, deliveries in rows]
    ids, attempts, min_idle = claim_page(page)
    assert ids == [e.id for e in page]
    assert all(min_idle <= e.idle_ms for e in page)
    assert min_idle in {e.idle_ms for e in page}
    assert all(attempts[e.id] == e.deliveries + 1 for e in page)


def test_next_start_pages_exclusively_after_the_last_id() -> None:
    """The next XPENDING page starts just after the last id seen; an empty page ends paging."""
    assert next_start(_pending("1-0", "7-3")) == "(7-3"
    assert next_start([]) is None


def test_stray_entries_are_pending_ones_not_held() -> None:
    """Own pending entries this consumer does not hold are strays; held ones are left alone."""
    page = _pending("1-0", "2-0", "3-0", consumer="me")
    assert [e.id for e in stray_entries(page, {"2-0", "9-9"})] == ["1-0", "3-0"]
    assert stray_entries(page, {"1-0", "2-0", "3-0"}) == []


def test_entries_delivered_since_the_oldest_open_read_are_no_strays() -> None:
    """An entry idle no longer than the oldest unadmitted read has been out may be in its reply:
    it is left for a later look; older ones not held are strays."""
    page = _pending("1-0", consumer="me", idle=900) + _pending("2-0", "3-0", consumer="me", idle=300)
    assert [e.id for e in stray_entries(page, set(), reading_for_ms=400)] == ["1-0"]
    assert [e.id for e in stray_entries(page, {"1-0"}, reading_for_ms=300)] == []
    assert [e.id for e in stray_entries(page, set(), reading_for_ms=0)] == ["1-0", "2-0", "3-0"]


def test_the_ledger_says_when_its_oldest_open_grant_was_taken() -> None:
    """Held ids and the oldest open grant's time, read together: a grant counts from reserve
    to admit or close, and none is open once each is spent."""
    ledger = Ledger(100)
    stop = threading.Event()
    assert ledger.held_and_reading() == (set(), None)
    before = time.monotonic()
    first, second = ledger.reserve(10, stop), ledger.reserve(10, stop)
    held, since = ledger.held_and_reading()
    assert held == set() and since is not None and before <= since <= time.monotonic()
    first.admit(["1-0"])
    held, later = ledger.held_and_reading()
    assert held == {"1-0"} and later is not None and later >= since
    second.close()
    assert ledger.held_and_reading() == ({"1-0"}, None)
    assert not ledger.reserve(0, stop) and ledger.held_and_reading()[1] is None


def test_missing_ids_keeps_request_order() -> None:
    """Ids XCLAIM did not return (deleted or taken) are listed in the order they were asked for."""
    assert missing_ids(["3-0", "1-0", "2-0"], {"1-0"}) == ["3-0", "2-0"]
    assert missing_ids(["1-0"], {"1-0"}) == []
