"""A Flask app whose gunicorn workers each consume the "orders" stream (see gunicorn.conf.py).

`record_order` is the handler: it runs on the consumer's threads inside the worker, next to the
web requests. `/healthz` says whether this worker's consumer is consuming; point a load
balancer's or an orchestrator's health check at it.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Dict, Tuple

from flask import Flask

import rstream

# Where recorded orders go: one line per order, "<pid> <entry id> <order>". A real handler
# writes to a database.
ORDERS_FILE = os.environ.get("ORDERS_FILE", "orders.log")
# Simulated work per order, in ms: set it (e.g. 200) to watch a worker drain on SIGTERM.
ORDER_WORK_S = int(os.environ.get("ORDER_WORK_MS", "0")) / 1000

app = Flask(__name__)


def record_order(message: rstream.Message) -> None:
    """Record one order. Delivery is at-least-once (a worker killed before the ack has its
    orders delivered again), so a real handler is idempotent: the entry id is a natural key."""
    time.sleep(ORDER_WORK_S)
    order = message.fields.get(b"order", b"").decode()
    # One write per line in append mode: lines from several threads and workers never mix.
    with open(ORDERS_FILE, "a") as out:
        out.write(f"{os.getpid()} {message.id} {order}\n")


@app.get("/healthz")
def healthz() -> Tuple[Dict[str, Any], int]:
    """200 with the consumer's state and counters while it consumes; 503 otherwise, with the
    reason when there is one ("failed": the fatal error; "forked": started before os.fork())."""
    consumer = app.extensions.get("rstream")
    if consumer is None:
        return {"state": "absent", "error": "no consumer in this process: run the app with "
                                            "gunicorn -c gunicorn.conf.py"}, 503
    body: Dict[str, Any] = {"state": consumer.state, "pid": os.getpid(),
                            "consumer": consumer.options.consumer_name}
    try:
        body["stats"] = dataclasses.asdict(consumer.stats())
    except rstream.RStreamError as exc:  # "forked": every method says why it cannot work here
        body["error"] = str(exc)
    if consumer.error is not None:
        body["error"] = str(consumer.error)
    return body, 200 if body["state"] == "running" else 503
