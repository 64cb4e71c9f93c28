"""`Consumer`: the facade that owns the lifecycle of every thread and connection.

Threads (each with its own connection, so a blocking read never delays the others), per stream
(one `rstream.lane.Lane` each): ``rstream-reader`` (replay, then blocking reads),
``rstream-acker`` (acks the reader does not carry, dead letters), ``rstream-reaper`` (failover,
strays, due retries) and ``rstream-heartbeat`` (liveness and the name fence); shared by all
streams: ``rstream-worker-N`` (the handler pool). Shutdown order, written once in `_shutdown`
and run over every lane at each step: stop intake (readers and reapers), let the workers finish
what was read, flush acks, stop the ackers, and stop the heartbeats last so the consumer looks
alive while it drains. ARCHITECTURE.md draws the whole picture.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Literal, NoReturn, Optional, Sequence, Set

from .backoff import Backoff
from .batches import BatchHandler
from .batchpool import BatchPool
from .connection import ConnectionFactory, Link, check_same_slot, client_from_option
from .dispatch import MessagePool, WorkerPool
from .events import EventHandler, Events
from .errors import (ConfigError, FatalRedisError, RedisUnavailable, RStreamError, StreamMissing,
                     WrongType)
from .handlers import FailureHandler, Handler, is_async_callable
from ._hotpath import IMPLEMENTATION
from .keyedpool import KeyedPool
from .lane import Lane, Stops, wait_all_idle
from .options import DEFAULT_BATCH_SIZE, DEFAULT_BATCH_TIMEOUT_MS, DEFAULT_CONCURRENCY, Options
from .partition import PartitionBy
from .redisio import StreamOps
from .stats import Counters, Stats, snapshot
from .supervise import Health, Loop

log = logging.getLogger("rstream")

DEFAULT_STOP_TIMEOUT_S = 30.0
# Longest a try at start() may take to reach the server and create the group: start() returns
# promptly even when the network black-holes it (the threads then keep trying). Above a TLS
# handshake's first try (1 s, see rstream.tls) so a plain port is still diagnosed.
PREPARE_BUDGET_S = 2.0
# "failed" is "stopped" by a fatal error; "forked" is a started consumer seen in a forked child.
State = Literal["new", "starting", "running", "stopping", "stopped", "failed", "forked"]
_RUNNING_STATES = ("starting", "running", "stopping")


class Consumer:
    """One member of a consumer group on one stream (`stream=`) or several (`streams=`, one
    group name, each stream with its own group). See the README for every option."""

    # Every option is spelt out (typed, keyword-only) so that editors complete them and mypy
    # rejects a misspelt one: nothing can be passed to `**unknown: NoReturn`. At run time the
    # names it collects are refused by Options.build, with the closest option suggested.
    # tests/test_options.py keeps these parameters and the fields of Options the same.
    # `stream`, `group` and `consumer_name` are required (checked by Options.build); `stream`
    # has a default only so that `streams=` can replace it.
    def __init__(self, redis: Any, stream: Optional[str] = None, group: Optional[str] = None,
                 consumer_name: Optional[str] = None, *,
                 streams: Optional[Sequence[str]] = None,
                 group_start_id: str = "$",
                 make_stream: bool = False,
                 receive_interval: int = 1000,
                 heartbeat_interval: int = 5000,
                 allowed_missed_heartbeats: int = 3,
                 delete_on_ack: bool = False,
                 concurrency: int = DEFAULT_CONCURRENCY,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 batch_timeout: int = DEFAULT_BATCH_TIMEOUT_MS,
                 max_in_flight: Optional[int] = None,
                 handle_failure: Optional[FailureHandler] = None,
                 max_attempts: Optional[int] = None,
                 dead_letter_stream: Optional[str] = None,
                 start_timeout: Optional[int] = None,
                 on_event: Optional[EventHandler] = None,
                 partition_by: Optional[PartitionBy] = None,
                 **unknown: NoReturn) -> None:
        self.options = Options.build(
            stream=stream, streams=streams, group=group, consumer_name=consumer_name,
            group_start_id=group_start_id,
            make_stream=make_stream, receive_interval=receive_interval,
            heartbeat_interval=heartbeat_interval, allowed_missed_heartbeats=allowed_missed_heartbeats,
            delete_on_ack=delete_on_ack, concurrency=concurrency, batch_size=batch_size,
            batch_timeout=batch_timeout, max_in_flight=max_in_flight,
            handle_failure=handle_failure, max_attempts=max_attempts,
            dead_letter_stream=dead_letter_stream, start_timeout=start_timeout, on_event=on_event,
            partition_by=partition_by, **unknown)
        client = client_from_option(redis)
        o = self.options
        self._counters = Counters()
        self._events = Events(o.on_event, o.group, o.consumer_name)
        self._lanes: List[Lane] = []
        for name in o.streams:
            check_same_slot(client, name, o.dead_letter_stream)
            lane = Lane(o.for_stream(name), ConnectionFactory(client, name), self._events)
            lane.check_fence_slot(client)
            self._lanes.append(lane)
        self._lifecycle = threading.Lock()
        self._state: State = "new"
        self._started_in_pid = 0  # the process that called start(), for the error after a fork
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        self._in_run = False
        self._fatal: Optional[FatalRedisError] = None
        self._links: List[Link] = []
        self._loops: List[Loop] = []

    # -- public API ---------------------------------------------------------------------------
    def start(self, handler: Optional[Handler] = None, *,
              handle_batch: Optional[BatchHandler] = None) -> "Consumer":
        """Start consuming on background threads and return at once. Give `handler` (called
        with each message) or `handle_batch` (called with a list of up to `batch_size`
        messages of one stream; see `rstream.batches` for what it returns)."""
        self._refuse_if_forked()
        pool = self._pool_for(handler, handle_batch)
        with self._lifecycle:
            if self._state != "new":
                raise RStreamError(f"this Consumer was already started (state: {self._state})")
            self._state = "starting"
            self._started_in_pid = os.getpid()
            _started.add(self)
        try:
            self._build(pool)
            self._prepare()
        except BaseException as exc:
            self._close_links()
            if isinstance(exc, FatalRedisError) and self._fatal is None:
                self._fatal = exc  # state "failed", and `error` says why
            self._state = "stopped"
            raise
        self._events.start()
        self._pool.start()
        for loop in self._loops:
            loop.start()
        with self._lifecycle:
            self._state = "running"
        if self._fatal is not None:
            # A thread failed fatally while the others were starting: the stop() of _on_fatal
            # found the state "starting" and did nothing, so stop now.
            self._on_fatal(self._fatal)
        return self

    def run(self, handler: Optional[Handler] = None, stop_timeout: float = DEFAULT_STOP_TIMEOUT_S,
            *, handle_batch: Optional[BatchHandler] = None) -> None:
        """Consume until `stop()`, SIGINT or SIGTERM (on the main thread), then drain and return.
        `handler` or `handle_batch`: as for `start`."""
        self._refuse_if_forked()
        restore = self._install_signal_handlers()
        self._in_run = True
        try:
            try:
                self.start(handler, handle_batch=handle_batch)
                while not self._stop_requested.wait(0.5):
                    pass
            finally:
                self.stop(stop_timeout)
        finally:
            restore()  # only now: a second signal during the drain must still reach on_signal
        if self._fatal is not None:
            raise self._fatal

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop reading, let in-flight handlers finish (until `timeout` seconds), flush acks.
        Entries not finished stay pending and are replayed or claimed later."""
        self._refuse_if_forked()
        self._stop_requested.set()
        pool = getattr(self, "_pool", None)
        if pool is not None and pool.runs_on(threading.current_thread()):
            # Called from a handler, which cannot wait for its own end: drain on another thread
            # (run() is woken by the event and drains itself).
            if not self._in_run:
                threading.Thread(target=self.stop, args=(timeout,), name="rstream-stop").start()
            return
        with self._lifecycle:
            state = self._state
            if state == "running":
                self._state = "stopping"
        if state == "stopping":  # another thread is stopping it: wait for that to finish
            self._stopped.wait(timeout)
            return
        if state != "running":
            return
        try:
            self._shutdown(time.monotonic() + timeout)
        finally:
            self._state = "stopped"
            self._stopped.set()

    def stats(self, stream: Optional[str] = None) -> Stats:
        """Counters since start, and the group's backlog as last sampled (`Stats`); of one of
        the streams when `stream` names it, else summed over all of them."""
        self._refuse_if_forked()
        lanes = self._lanes
        if stream is not None:
            lanes = [lane for lane in lanes if lane.options.stream == stream]
            if not lanes:
                raise ConfigError(f"stats(stream={stream!r}): not a stream of this consumer "
                                  f"({', '.join(map(repr, self.options.streams))})")
        built = lanes if self._built_lanes() else []
        held = self._pool.waiting_retries(stream) if built else 0  # retries partition_by holds
        return snapshot([self._counters, *(lane.counters for lane in lanes)],
                        in_flight=sum(lane.ledger.in_flight for lane in built),
                        waiting_retries=held + sum(lane.settlements.waiting_retries
                                                   for lane in built),
                        backlogs=[lane.backlog.get() for lane in lanes])

    @property
    def state(self) -> State:
        """Where this consumer is in its life: "new", "starting", "running", "stopping",
        "stopped", "failed" (stopped by the fatal error in `error`) or "forked" (started in a
        parent process before os.fork(): unusable here, see `start`)."""
        if self._state == "stopped" and self._fatal is not None:
            return "failed"
        return self._state

    @property
    def error(self) -> Optional[FatalRedisError]:
        """The fatal error that stopped this consumer, if any."""
        return self._fatal

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        o = self.options
        where = (f"stream={o.stream!r}" if len(o.streams) == 1 else f"streams={list(o.streams)!r}")
        servers = sorted({lane.factory.describe() for lane in self._lanes})
        return (f"Consumer({where}, group={o.group!r}, consumer_name={o.consumer_name!r}, "
                f"server={', '.join(servers)!r}, state={self.state!r})")

    # -- fork -----------------------------------------------------------------------------------
    def _after_fork_in_child(self) -> None:
        if self._state in _RUNNING_STATES:
            self._state = "forked"
            # A parent thread may have held it at the fork; in the child nobody would release it.
            self._lifecycle = threading.Lock()

    def _refuse_if_forked(self) -> None:
        if self._state == "forked":
            raise RStreamError(
                f"this Consumer was started in process {self._started_in_pid} before os.fork(); "
                f"its threads did not survive the fork, so it cannot consume in this process "
                f"({os.getpid()}). Create it (or at least start it) in the child, e.g. in "
                "gunicorn's post_fork hook, and stop it in worker_exit")

    # -- wiring -------------------------------------------------------------------------------
    def _ops(self, lane: Lane, role: str, read_timeout_s: float, read_size: int) -> StreamOps:
        link = lane.factory.make(role, read_timeout_s, read_size)
        self._links.append(link)
        return StreamOps(link, lane.options)

    def _pool_for(self, handler: Optional[Handler],
                  handle_batch: Optional[BatchHandler]) -> WorkerPool:
        """The pool that runs the user's handler or batch handler (not started), once both are
        checked: exactly one of the two, callable, synchronous."""
        o = self.options
        if handler is not None and handle_batch is not None:
            raise ConfigError("give a handler or handle_batch, not both")
        if handle_batch is not None:
            _check_handler("handle_batch", handle_batch)
            if o.partition_by is not None:
                raise ConfigError(
                    "handle_batch cannot be used with partition_by: partition_by hands a key's "
                    "messages over one at a time, in order, and a batch's failures would break "
                    "that order (give a per-message handler, or no partition_by)")
            return BatchPool(handle_batch, o.concurrency, o.batch_size, o.batch_timeout / 1000)
        if handler is None:
            raise ConfigError("start() and run() need a handler: start(handle) calls "
                              "handle(message) for each message, start(handle_batch=handle) "
                              "calls handle(messages) with a list of them")
        _check_handler("handler", handler)
        if o.partition_by is not None:
            return KeyedPool(handler, o.concurrency, o.partition_by)
        return MessagePool(handler, o.concurrency)

    def _build(self, pool: WorkerPool) -> None:
        self._stops = stops = Stops()
        # One Health per server, so an outage is logged once, not once per stream.
        health: Dict[str, Health] = {}
        for lane in self._lanes:
            where = lane.factory.describe()
            if where not in health:
                health[where] = Health(self._counters, where, self._events)
            lane.build(pool, health[where], stops, self._ops, self._on_fatal)
        self._health = health
        self._pool = pool
        self._loops = [loop for lane in self._lanes for loop in lane.loops]

    def _built_lanes(self) -> List[Lane]:
        """The lanes once `_build` made their parts (none before start)."""
        return self._lanes if getattr(self, "_pool", None) is not None else []

    def _in_flight(self) -> int:
        return sum(lane.ledger.in_flight for lane in self._built_lanes())

    def _prepare(self) -> None:
        """Check the server and create each stream's group now, so that a fatal fault (wrong
        key type, auth, ACL, TLS, old server) raises from start(). Each try is bounded by
        `PREPARE_BUDGET_S`, so start() returns promptly whatever the network does. An
        unreachable server is not fatal: the threads keep retrying, unless `start_timeout`
        asks start() to fail when the server is not reached in time. A missing stream is
        waited for by the threads."""
        timeout_ms = self.options.start_timeout
        give_up_at = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        unreachable: Set[str] = set()  # servers found down: their other streams are not tried
        for lane in self._lanes:
            where = lane.factory.describe()
            if where not in unreachable and not self._prepare_lane(lane, give_up_at):
                unreachable.add(where)

    def _prepare_lane(self, lane: Lane, give_up_at: Optional[float]) -> bool:
        """Prepare one stream, trying until `give_up_at` (None: once); False if the server is
        unreachable and the threads are left to keep trying."""
        ops, health = lane.ops, self._health[lane.factory.describe()]
        backoff = Backoff()
        reachable = True
        while True:
            budget = time.monotonic() + PREPARE_BUDGET_S
            try:
                with ops.link.bounded(budget if give_up_at is None else min(budget, give_up_at)):
                    found = lane.prepare_once()
                break
            except StreamMissing as exc:
                health.stream_missing(exc)
                found = None
                break
            except RedisUnavailable as exc:
                if give_up_at is None:
                    health.down(exc)  # the threads keep trying; the outage is logged once
                    found, reachable = None, False
                    break
                left = give_up_at - time.monotonic()
                if left <= 0:
                    raise RedisUnavailable(
                        f"Redis at {lane.factory.describe()} not reachable within start_timeout="
                        f"{self.options.start_timeout} ms: {exc}") from None
                self._stop_requested.wait(min(left, backoff.delay()))
                backoff = backoff.failed()
        o = lane.options
        server = f"{found[0]} {'.'.join(map(str, found[1]))} at " if found else ""
        log.info("rstream: consumer %r of group %r on stream %r starting (server %s%s, hot path %s)",
                 o.consumer_name, o.group, o.stream, server, lane.factory.describe(),
                 IMPLEMENTATION)
        return reachable

    def _on_fatal(self, exc: FatalRedisError) -> None:
        if self._fatal is None:
            self._fatal = self._named(exc)
            log.error("rstream: stopping: %s", self._fatal)
        self._stop_requested.set()
        if not self._in_run:
            # A consumer used via start() stops itself; run() is woken by the event and stops it.
            threading.Thread(target=self.stop, args=(5.0,), name="rstream-fatal-stop", daemon=True).start()

    def _named(self, exc: FatalRedisError) -> FatalRedisError:
        """Redis' WRONGTYPE error names no key: look the types up and say which one."""
        if not isinstance(exc, WrongType) or exc.key is not None:
            return exc
        for lane in self._lanes:
            link = lane.factory.make("diagnose")
            try:
                StreamOps(link, lane.options).check_key_types()
            except WrongType as named:
                return named
            except RStreamError:
                pass
            finally:
                link.close()
        return exc

    # -- shutdown -----------------------------------------------------------------------------
    def _shutdown(self, deadline: float) -> None:
        lanes, stops = self._lanes, self._stops
        stops.intake.set()
        for lane in lanes:
            lane.stop_intake()
        for lane in lanes:
            lane.join_intake(deadline)
        self._pool.close()
        if not wait_all_idle(lanes, deadline):
            left = self._pool.abandon()
            log.warning("rstream: stop timed out with %d entries in flight (%d not started); "
                        "they stay pending and will be delivered again", self._in_flight(), len(left))
        stops.acker.set()
        for lane in lanes:
            lane.settlements.wake()
        for lane in lanes:
            lane.flush(deadline)
        stops.heartbeat.set()
        for lane in lanes:
            lane.leave(deadline)
        self._pool.join(min(deadline, time.monotonic() + 0.1))
        self._close_links()
        self._events.close(deadline)

    def _close_links(self) -> None:
        for link in self._links:
            try:
                link.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        received: List[int] = []

        def on_signal(signum: int, frame: Any) -> None:
            name = signal.Signals(signum).name
            if received:
                # The user does not want to wait for the drain. SystemExit unwinds stop() (the
                # threads are daemons) and Python exits without printing a traceback.
                log.warning("rstream: second %s while draining: exiting now; %d entries in flight "
                            "stay pending and will be delivered again", name, self._in_flight())
                raise SystemExit(128 + signum)
            received.append(signum)
            log.info("rstream: %s received; draining (send it again to exit at once)", name)
            self._stop_requested.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return restore


def _check_handler(what: str, handler: Any) -> None:
    if not callable(handler):
        raise ConfigError(f"{what} must be callable, got {handler!r}")
    if is_async_callable(handler):
        raise ConfigError(f"{what} must be a plain (synchronous) function, got the async "
                          f"{handler!r}: rstream runs handlers on threads and would never await "
                          "it (write a def handler; call async code in it with asyncio.run())")


# Consumers that were ever started, so a forked child can tell which ones it holds dead copies of.
_started: "weakref.WeakSet[Consumer]" = weakref.WeakSet()


def _mark_started_consumers_forked() -> None:
    for consumer in list(_started):
        consumer._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX; there is no fork elsewhere
    os.register_at_fork(after_in_child=_mark_started_consumers_forked)
