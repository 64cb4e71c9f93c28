"""`Consumer`: the facade that owns the lifecycle of every thread and connection.

Threads (each with its own connection, so a blocking read never delays the others):
``rstream-reader`` (replay, then blocking reads), ``rstream-worker-N`` (the handler pool),
``rstream-acker`` (acks the reader does not carry, dead letters), ``rstream-reaper`` (failover,
strays, due retries) and ``rstream-heartbeat`` (liveness and the name fence). Shutdown order,
written once in `_shutdown`: stop intake (reader and reaper), let the workers finish what was
read, flush acks, stop the acker, and stop the heartbeat last so the consumer looks alive while
it drains. ARCHITECTURE.md draws the whole picture.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
import weakref
from typing import Any, Callable, List, Literal, NoReturn, Optional, Tuple

from .acker import Acker
from .backoff import Backoff
from .connection import (IO_TIMEOUT_S, READER_READ_SIZE, ConnectionFactory, Link, check_same_slot,
                         client_from_option)
from .dispatch import WorkerPool
from .errors import (ConfigError, FatalRedisError, RedisUnavailable, RStreamError, StreamMissing,
                     WrongType)
from .handlers import FailureHandler, Handler, is_async_callable
from .intake import Intake
from ._hotpath import IMPLEMENTATION
from .group import GroupKeeper, Position
from .heartbeat import Heartbeat, NameFence
from .ledger import Ledger
from .outcomes import Outcomes
from .reaper import Reaper
from .options import DEFAULT_BATCH_SIZE, DEFAULT_CONCURRENCY, Options
from .reader import Reader
from .redisio import StreamOps, fence_key
from .settlements import Settlements
from .stats import Counters, Stats
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
    """One member of a consumer group on one stream. See the README for every option."""

    # Every option is spelt out (typed, keyword-only) so that editors complete them and mypy
    # rejects a misspelt one: nothing can be passed to `**unknown: NoReturn`. At run time the
    # names it collects are refused by Options.build, with the closest option suggested.
    # tests/test_options.py keeps these parameters and the fields of Options the same.
    def __init__(self, redis: Any, stream: str, group: str, consumer_name: str, *,
                 group_start_id: str = "$",
                 make_stream: bool = False,
                 receive_interval: int = 1000,
                 heartbeat_interval: int = 5000,
                 allowed_missed_heartbeats: int = 3,
                 delete_on_ack: bool = False,
                 concurrency: int = DEFAULT_CONCURRENCY,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 max_in_flight: Optional[int] = None,
                 handle_failure: Optional[FailureHandler] = None,
                 max_attempts: Optional[int] = None,
                 dead_letter_stream: Optional[str] = None,
                 start_timeout: Optional[int] = None,
                 **unknown: NoReturn) -> None:
        self.options = Options.build(
            stream=stream, group=group, consumer_name=consumer_name, group_start_id=group_start_id,
            make_stream=make_stream, receive_interval=receive_interval,
            heartbeat_interval=heartbeat_interval, allowed_missed_heartbeats=allowed_missed_heartbeats,
            delete_on_ack=delete_on_ack, concurrency=concurrency, batch_size=batch_size,
            max_in_flight=max_in_flight, handle_failure=handle_failure, max_attempts=max_attempts,
            dead_letter_stream=dead_letter_stream, start_timeout=start_timeout, **unknown)
        client = client_from_option(redis)
        check_same_slot(client, stream, self.options.dead_letter_stream)
        self._factory = ConnectionFactory(client, stream)
        self._counters = Counters()
        self._lifecycle = threading.Lock()
        self._state: State = "new"
        self._started_in_pid = 0  # the process that called start(), for the error after a fork
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        self._in_run = False
        self._fatal: Optional[FatalRedisError] = None
        self._links: List[Link] = []
        self._loops: List[Loop] = []
        self._position = Position()
        self._group = GroupKeeper(self.options, self._counters, self._position)
        self._fence = NameFence(fence_key(stream, group, consumer_name), self.options)
        if hasattr(client, "keyslot") and client.keyslot(stream) != client.keyslot(self._fence.key):
            raise ConfigError(f"stream {stream!r} has braces that are not a Redis Cluster hash tag; "
                              "give it one, e.g. '{orders}'")

    # -- public API ---------------------------------------------------------------------------
    def start(self, handler: Handler) -> "Consumer":
        """Start consuming on background threads and return at once."""
        self._refuse_if_forked()
        if not callable(handler):
            raise ConfigError(f"handler must be callable, got {handler!r}")
        if is_async_callable(handler):
            raise ConfigError(f"handler must be a plain (synchronous) function, got the async "
                              f"{handler!r}: rstream runs handlers on threads and would never await "
                              "it (write a def handler; call async code in it with asyncio.run())")
        with self._lifecycle:
            if self._state != "new":
                raise RStreamError(f"this Consumer was already started (state: {self._state})")
            self._state = "starting"
            self._started_in_pid = os.getpid()
            _started.add(self)
        try:
            self._build(handler)
            self._prepare()
        except BaseException as exc:
            self._close_links()
            if isinstance(exc, FatalRedisError) and self._fatal is None:
                self._fatal = exc  # state "failed", and `error` says why
            self._state = "stopped"
            raise
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

    def run(self, handler: Handler, stop_timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Consume until `stop()`, SIGINT or SIGTERM (on the main thread), then drain and return."""
        self._refuse_if_forked()
        restore = self._install_signal_handlers()
        self._in_run = True
        try:
            try:
                self.start(handler)
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

    def stats(self) -> Stats:
        self._refuse_if_forked()
        settlements = getattr(self, "_settlements", None)
        ledger = getattr(self, "_ledger", None)
        return self._counters.snapshot(
            in_flight=ledger.in_flight if ledger else 0,
            waiting_retries=settlements.waiting_retries if settlements else 0)

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
        return (f"Consumer(stream={o.stream!r}, group={o.group!r}, consumer_name={o.consumer_name!r}, "
                f"server={self._factory.describe()!r}, state={self.state!r})")

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
    def _ops(self, role: str, read_timeout_s: float = IO_TIMEOUT_S, read_size: int = 65536) -> StreamOps:
        link = self._factory.make(role, read_timeout_s, read_size)
        self._links.append(link)
        return StreamOps(link, self.options)

    def _build(self, handler: Handler) -> None:
        o = self.options
        self._intake_stop = threading.Event()   # reader and reaper: stop taking entries in
        self._acker_stop = threading.Event()
        self._heartbeat_stop = threading.Event()
        # Data flows one way: reads -> intake -> pool -> outcomes -> settlements -> reader (acks
        # riding on reads), acker (the rest) and reaper (due retries). No object calls back
        # into the thread that feeds it.
        self._ledger = Ledger(o.in_flight_limit)
        self._settlements = Settlements(self._ledger, self._counters)
        outcomes = Outcomes(o, self._settlements, self._ledger, self._counters)
        self._pool = WorkerPool(handler, o.concurrency, outcomes.completed)
        self._intake = Intake(self._ledger, self._pool, self._counters, self._settlements,
                              o.consumer_name)
        self._acker = Acker(self._ops("acker"), o, self._settlements, self._acker_stop)
        read_timeout = o.receive_interval / 1000 + IO_TIMEOUT_S
        self._reader = Reader(self._ops("reader", read_timeout, READER_READ_SIZE), o, self._ledger,
                              self._settlements, self._intake, self._position, self._intake_stop)
        self._reaper = Reaper(self._ops("reaper"), o, self._ledger, self._intake,
                              self._settlements, self._intake_stop, self._reader.replay_done)
        self._heartbeat = Heartbeat(self._ops("heartbeat"), o, self._fence)
        self._health = health = Health(self._counters, self._factory.describe())

        def loop(name: str, step: Callable[[], Optional[float]], ops: StreamOps,
                 stop: threading.Event) -> Loop:
            return Loop(name, step, stop, health, lambda: self._group.ensure(ops), self._on_fatal,
                        ops.link)

        self._reader_loop = loop("rstream-reader", self._reader.step, self._reader.ops, self._intake_stop)
        self._reaper_loop = loop("rstream-reaper", self._reaper.step, self._reaper.ops, self._intake_stop)
        self._acker_loop = loop("rstream-acker", self._acker.step, self._acker.ops, self._acker_stop)
        self._acker_loop.proves_stream = False  # XACK on a deleted stream succeeds (answers 0)
        self._heartbeat_loop = loop("rstream-heartbeat", self._heartbeat.step, self._heartbeat.ops,
                                    self._heartbeat_stop)
        self._loops = [self._heartbeat_loop, self._acker_loop, self._reader_loop, self._reaper_loop]

    def _prepare(self) -> None:
        """Check the server and create the group now, so that a fatal fault (wrong key type,
        auth, ACL, TLS, old server) raises from start(). Each try is bounded by
        `PREPARE_BUDGET_S`, so start() returns promptly whatever the network does. An
        unreachable server is not fatal: the threads keep retrying, unless `start_timeout`
        asks start() to fail when the server is not reached in time. A missing stream is
        waited for by the threads."""
        ops = self._heartbeat.ops
        timeout_ms = self.options.start_timeout
        give_up_at = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        backoff = Backoff()
        while True:
            budget = time.monotonic() + PREPARE_BUDGET_S
            try:
                with ops.link.bounded(budget if give_up_at is None else min(budget, give_up_at)):
                    found = self._prepare_once(ops)
                break
            except StreamMissing as exc:
                self._health.stream_missing(exc)
                found = None
                break
            except RedisUnavailable as exc:
                if give_up_at is None:
                    self._health.down(exc)  # the threads keep trying; the outage is logged once
                    found = None
                    break
                left = give_up_at - time.monotonic()
                if left <= 0:
                    raise RedisUnavailable(
                        f"Redis at {self._factory.describe()} not reachable within start_timeout="
                        f"{timeout_ms} ms: {exc}") from None
                self._stop_requested.wait(min(left, backoff.delay()))
                backoff = backoff.failed()
        o = self.options
        server = f"{found[0]} {'.'.join(map(str, found[1]))} at " if found else ""
        log.info("rstream: consumer %r of group %r on stream %r starting (server %s%s, hot path %s)",
                 o.consumer_name, o.group, o.stream, server, self._factory.describe(),
                 IMPLEMENTATION)

    def _prepare_once(self, ops: StreamOps) -> Optional[Tuple[str, Tuple[int, ...]]]:
        found = ops.check_server()
        ops.check_key_types()
        self._group.ensure(ops, at_start=True)
        self._heartbeat.beat()
        return found

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
        link = self._factory.make("diagnose")
        try:
            StreamOps(link, self.options).check_key_types()
        except WrongType as named:
            return named
        except RStreamError:
            pass
        finally:
            link.close()
        return exc

    # -- shutdown -----------------------------------------------------------------------------
    def _shutdown(self, deadline: float) -> None:
        self._intake_stop.set()
        self._intake.close()
        self._settlements.wake()        # a reaper waiting for a retry notices the stop at once
        self._reader.ops.link.abort()   # wake a blocked read now, not after receive_interval
        self._reader_loop.join(deadline)
        self._reaper_loop.join(deadline)
        self._reader.abandon()
        self._pool.close()
        if not self._ledger.wait_idle(deadline):
            left = self._pool.abandon()
            log.warning("rstream: stop timed out with %d entries in flight (%d not started); "
                        "they stay pending and will be delivered again",
                        self._ledger.in_flight, len(left))
        self._acker_stop.set()
        self._settlements.wake()
        self._acker_loop.join(deadline)
        self._acker.ops.link.limit(deadline)  # a black-holed network must not hold stop() up
        try:
            self._acker.flush_all()
        except RStreamError as exc:
            log.warning("rstream: could not flush acks at stop (%s); those entries stay pending", exc)
        self._heartbeat_stop.set()
        self._heartbeat_loop.join(deadline)
        self._leave_group(deadline)
        self._pool.join(min(deadline, time.monotonic() + 0.1))
        self._close_links()

    def _leave_group(self, deadline: float) -> None:
        """A clean stop leaves no ghost: with nothing pending, this consumer leaves the group
        (else others would find it dead later, and pid-based names would pile up). A consumer
        whose name another process took over leaves both to that process."""
        if self._fence.lost_to is not None:
            return
        ops = self._heartbeat.ops
        ops.link.limit(deadline)
        try:
            if ops.leave(self._fence.active_key, self._fence.token):
                log.debug("rstream: consumer %r left group %r", self.options.consumer_name,
                          self.options.group)
        except RStreamError as exc:
            log.debug("rstream: could not leave the group at stop (%s)", exc)

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
                ledger = getattr(self, "_ledger", None)
                log.warning("rstream: second %s while draining: exiting now; %d entries in flight "
                            "stay pending and will be delivered again", name,
                            ledger.in_flight if ledger is not None else 0)
                raise SystemExit(128 + signum)
            received.append(signum)
            log.info("rstream: %s received; draining (send it again to exit at once)", name)
            self._stop_requested.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return restore


# Consumers that were ever started, so a forked child can tell which ones it holds dead copies of.
_started: "weakref.WeakSet[Consumer]" = weakref.WeakSet()


def _mark_started_consumers_forked() -> None:
    for consumer in list(_started):
        consumer._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX; there is no fork elsewhere
    os.register_at_fork(after_in_child=_mark_started_consumers_forked)
