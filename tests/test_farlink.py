"""A far link: the reader keeps enough reads in flight to cover the round trip, and without an
explicit max_in_flight the window grows with them (bounded); near links keep two reads and the
default window. Real server behind the suite's proxy, delaying every byte 20 ms each way."""
from __future__ import annotations

import threading
from typing import List

import pytest

import rstream
from helpers import add_entries, unique_name, wait_until
from proxy import Proxy
from rstream.embedded import EmbeddedServer
from rstream.options import Options
from rstream.reader import (MAX_AUTO_WINDOW_BATCHES, MAX_PIPELINE_DEPTH, PIPELINE_DEPTH,
                            pipeline_depth, window)

DEADLINE_S = 60.0


@pytest.mark.parametrize("round_trip_s, depth", [
    (None, PIPELINE_DEPTH), (0.0001, PIPELINE_DEPTH), (0.009, PIPELINE_DEPTH), (0.010, 7),
    (0.040, 27), (10.0, MAX_PIPELINE_DEPTH)])
def test_one_read_per_one_and_a_half_milliseconds_of_a_far_round_trip(round_trip_s: float, depth: int) -> None:
    assert pipeline_depth(round_trip_s) == depth


def test_the_window_follows_the_depth_unless_max_in_flight_is_given() -> None:
    default = Options.build(stream="s", group="g", consumer_name="c")
    assert window(default, PIPELINE_DEPTH) == default.in_flight_limit == 2000
    assert window(default, 27) == 29 * 500
    assert window(default, 40) == MAX_AUTO_WINDOW_BATCHES * 500
    assert window(default, MAX_PIPELINE_DEPTH) == MAX_AUTO_WINDOW_BATCHES * 500
    given = Options.build(stream="s", group="g", consumer_name="c", max_in_flight=1000)
    assert window(given, 40) == 1000


def test_a_far_link_gets_a_deep_pipeline_and_a_wider_window_and_loses_nothing() -> None:
    """Through 20 ms each way the reader's depth and window grow past the near-link values
    while 20,000 entries are drained once each; a near link keeps two reads."""
    handled: List[str] = []
    lock = threading.Lock()

    def handle(message: rstream.Message) -> None:
        with lock:
            handled.append(message.id)

    with EmbeddedServer() as server, Proxy(server.port, delay_s=0.02) as proxy:
        stream = unique_name("far")
        ids = add_entries(server.client(), stream, 20_000)
        with rstream.Consumer(proxy.url, stream, "g", "far", group_start_id="0") as consumer:
            consumer.start(handle)
            lane = consumer._lanes[0]
            wait_until(lambda: len(handled) == len(ids), DEADLINE_S, message="not drained")
            assert lane.reader.depth >= 15, lane.reader.depth  # ~40 ms round trip: ~27 reads
            assert lane.ledger.limit > consumer.options.in_flight_limit
        assert sorted(handled) == sorted(ids)
        with rstream.Consumer(server.url, stream, "g", "near") as near:
            near.start(handle)
            more = add_entries(server.client(), stream, 5_000)
            wait_until(lambda: len(handled) == len(ids) + len(more), DEADLINE_S)
            assert near._lanes[0].reader.depth == PIPELINE_DEPTH
            assert near._lanes[0].ledger.limit == near.options.in_flight_limit
