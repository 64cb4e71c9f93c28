"""gunicorn settings and hooks: each worker runs its own rstream Consumer next to the web app.

    REDIS_URL=redis://127.0.0.1:6379/0 STREAM=orders GROUP=billing gunicorn -c gunicorn.conf.py app:app

The consumer lives and dies with its worker process:

- `pre_fork`, in the master: the new worker gets a slot, the lowest of 1, 2, ... not in use;
- `post_fork`, in the worker: its consumer is created, named `<prefix>-<slot>`, and started;
- `worker_exit`, in the worker: its consumer stops, draining what it read.
"""
from __future__ import annotations

import itertools
import logging
import os
import socket
from typing import TYPE_CHECKING

import rstream

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
STREAM = os.environ.get("STREAM", "orders")
GROUP = os.environ.get("GROUP", "billing")
# Consumer names are "<prefix>-<slot>". Two gunicorn servers on one host must not share names
# (the newer takes a name over and the older one's consumer stops, failing its /healthz): give
# each its own prefix.
CONSUMER_PREFIX = os.environ.get("CONSUMER_PREFIX") or socket.gethostname()

workers = 2
# gunicorn SIGKILLs a worker still alive `graceful_timeout` s after its SIGTERM, and one that has
# not checked in for `timeout` s (this also counts while it drains after a max_requests restart
# or a reload). The drain must end before both, with room left for the acks and for leaving the
# group: what it has not finished stays pending, and is replayed by the next worker in its slot.
graceful_timeout = 30
timeout = 30
DRAIN_TIMEOUT_S = 20.0

# Why the consumer is not made when app.py is imported, and why --preload would break it
# -------------------------------------------------------------------------------------------
# With --preload gunicorn imports the app once, in the master, and forks the workers from it. A
# consumer started there runs its threads (reader, heartbeat, handlers) in the master, and
# threads do not survive os.fork(): each worker would get a copy with no threads behind it,
# that looks fine and never consumes. rstream detects it: in a worker, such a consumer's
# `state` is "forked" and every method raises (and /healthz answers 503 with the text)
#
#   RStreamError: this Consumer was started in process 4242 before os.fork(); its threads did
#   not survive the fork, so it cannot consume in this process (4243). Create it (or at least
#   start it) in the child, e.g. in gunicorn's post_fork hook, and stop it in worker_exit
#
# Starting in post_fork is enough for that; the consumer is also *created* here, because its
# name needs the worker's slot, and because then nothing of it (its redis client, its
# connection pool) was ever made in the master, --preload or not.
#
# Names per slot, not per process
# -------------------------------
# gunicorn replaces a worker that dies (a crash, an OOM kill) with a new process: a new pid and
# a new `worker.age` (it counts spawns, so it is no more stable than the pid). The replacement
# takes the free slot, so its consumer has the dead one's name and replays the entries it held
# at once, before reading new ones. With a per-process name (pid or age) those entries would
# wait until another worker's consumer found the old name dead, after heartbeat_interval x
# allowed_missed_heartbeats (15 s by default), and claimed them. Both lose nothing; the slot is
# quicker and keeps the group's list of consumers short. A graceful reload (SIGHUP) starts the
# new workers while the old ones still drain, so those take the next slots up.


def pre_fork(server: Arbiter, worker: Worker) -> None:
    """In the master, before the fork: the lowest slot no live worker has."""
    taken = {getattr(other, "rstream_slot", None) for other in server.WORKERS.values()}
    worker.rstream_slot = next(n for n in itertools.count(1) if n not in taken)


def post_fork(server: Arbiter, worker: Worker) -> None:
    """In the new worker: make its consumer, hand it to the app (/healthz) and start it."""
    from app import app, record_order

    # rstream's log lines go to gunicorn's error log, in its format (with the worker's pid).
    rstream_log = logging.getLogger("rstream")
    rstream_log.handlers = server.log.error_log.handlers
    rstream_log.setLevel(logging.INFO)
    rstream_log.propagate = False

    name = f"{CONSUMER_PREFIX}-{worker.rstream_slot}"
    consumer = rstream.Consumer(REDIS_URL, STREAM, GROUP, consumer_name=name, make_stream=True)
    worker.rstream_consumer = consumer
    app.extensions["rstream"] = consumer
    try:
        consumer.start(record_order)
    except rstream.FatalRedisError as exc:
        # A fault that waiting cannot fix (a wrong password, a key of the wrong type): the web
        # app still serves, and /healthz answers 503 with this error.
        server.log.error("worker %s: consumer %r could not start: %s", worker.pid, name, exc)
        return
    server.log.info("worker %s consumes stream %r as %r of group %r", worker.pid, STREAM, name, GROUP)


def worker_exit(server: Arbiter, worker: Worker) -> None:
    """In the worker as it exits: stop reading, finish what was read, flush the acks. (gunicorn
    also calls this in the master for a worker that was already gone: that copy has no consumer.)"""
    consumer = getattr(worker, "rstream_consumer", None)
    if consumer is not None:
        consumer.stop(DRAIN_TIMEOUT_S)
