"""Unit tests of an rstream handler, without Redis: copy this file next to your own handler.

Run it with ``python -m pytest examples/test_my_handler.py``. The handler below is the kind you
would write (in your project it lives in its own module; import it from there). Each test builds
a message offline with `make_message`, runs the handler the way the consumer would, with the
same options you give `rstream.Consumer`, and checks what rstream would do with the entry.
"""
from __future__ import annotations

import json
import time
from typing import Callable, List, Tuple

import rstream
from rstream.testing import Outcome, Verdict, make_message, run_attempts, run_handler

# -- the handler under test ---------------------------------------------------------------------
MAX_ATTEMPTS = 3
DEAD_LETTERS = "orders:dead"
Charge = Callable[[str, int], None]


class RateLimited(Exception):
    """Raised by the payment client when the remote side says 429."""


def make_handler(charge: Charge) -> Callable[[rstream.Message], None]:
    """The handler, with its payment client given (a fake one in these tests)."""
    def handle(message: rstream.Message) -> None:
        order = json.loads(message.fields[b"order"])  # bytes keys and values by default
        if order["amount"] <= 0:
            raise ValueError(f"order {order['id']}: amount must be positive, got {order['amount']}")
        charge(order["id"], order["amount"])
    return handle


def handle_failure(message: rstream.Message, error: BaseException) -> None:
    if isinstance(error, ValueError):
        message.configure_ack(retry=False)  # bad data: another attempt will not fix it
    elif isinstance(error, RateLimited):
        message.metadata["retry_after"] = int(time.time() * 1000) + 2_000  # back off 2 s


# -- test helpers: the consumer's options, given as they are -----------------------------------
def order(order_id: str, amount: int) -> rstream.Message:
    return make_message({"order": json.dumps({"id": order_id, "amount": amount})}, stream="orders")


def deliver_once(charge: Charge, message: rstream.Message) -> Outcome:
    return run_handler(make_handler(charge), message, handle_failure=handle_failure,
                       max_attempts=MAX_ATTEMPTS, dead_letter_stream=DEAD_LETTERS)


def deliver_until_settled(charge: Charge, message: rstream.Message) -> Tuple[Outcome, ...]:
    return run_attempts(make_handler(charge), message, handle_failure=handle_failure,
                        max_attempts=MAX_ATTEMPTS, dead_letter_stream=DEAD_LETTERS)


# -- the tests ------------------------------------------------------------------------------------
def test_a_good_order_is_charged_and_acknowledged() -> None:
    """The handler returns: the entry is acknowledged, charged once."""
    charged: List[Tuple[str, int]] = []
    outcome = deliver_once(lambda order_id, amount: charged.append((order_id, amount)), order("A1", 30))
    assert outcome.acked and outcome.error is None
    assert charged == [("A1", 30)]


def test_a_bad_order_is_given_up_at_once_not_retried() -> None:
    """Bad data: handle_failure says retry=False, so it is acknowledged though max_attempts is 3."""
    outcome = deliver_once(lambda order_id, amount: None, order("A2", -5))
    assert outcome.acked  # acknowledged: neither retried nor dead-lettered
    assert isinstance(outcome.error, ValueError)


def test_a_rate_limited_charge_is_retried_in_two_seconds() -> None:
    """A 429: the entry stays pending and comes back no sooner than 2 s from now."""
    def limited(order_id: str, amount: int) -> None:
        raise RateLimited("429")

    before = int(time.time() * 1000)
    outcome = deliver_once(limited, order("A3", 30))
    assert outcome.retried
    assert outcome.retry_at_ms is not None and outcome.retry_at_ms >= before + 2_000


def test_a_flaky_payment_service_is_charged_on_the_third_attempt() -> None:
    """Two failures, then success: retried twice (max_attempts allows it), then acknowledged."""
    calls: List[str] = []

    def flaky(order_id: str, amount: int) -> None:
        calls.append(order_id)
        if len(calls) < 3:
            raise ConnectionError("payment service unreachable")

    outcomes = deliver_until_settled(flaky, order("A4", 30))
    assert [(o.attempt, o.verdict) for o in outcomes] == [
        (1, Verdict.RETRY), (2, Verdict.RETRY), (3, Verdict.ACK)]


def test_an_order_that_keeps_failing_ends_in_the_dead_letter_stream() -> None:
    """Fails every time: on attempt 3 it goes to orders:dead, with its fields and the error."""
    def down(order_id: str, amount: int) -> None:
        raise ConnectionError("payment service unreachable")

    outcomes = deliver_until_settled(down, order("A5", 30))
    last = outcomes[-1]
    assert len(outcomes) == MAX_ATTEMPTS and last.dead_lettered
    assert last.dead_letter is not None  # the entry rstream writes to orders:dead
    assert json.loads(last.dead_letter[b"order"]) == {"id": "A5", "amount": 30}
    assert last.dead_letter[b"rstream-attempt"] == b"3"
    assert last.dead_letter[b"rstream-error"] == b"ConnectionError: payment service unreachable"
