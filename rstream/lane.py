"""One stream's share of a consumer: the threads and data that work on that stream alone.

A consumer reads one stream (`stream=`) or several (`streams=`), with one group name. Each
stream is a `Lane`: its own group (created, and re-created after NOGROUP, by its
`GroupKeeper`), its own-pending replay and reads (`Reader`), failover, strays and retries
(`Reaper`), acks and dead letters (`Acker`), heartbeat and name fence (`Heartbeat`), in-flight
window (`Ledger`) and settlement buffer (`Settlements`), each thread on its own connection to
the server that holds the stream (in Redis Cluster, the node owning its slot, followed when it
moves). The lanes share the worker pool, the counters and the consumer's lifecycle; the
`Consumer` runs every lane through each step of start and stop together.

Why a lane per stream rather than one read over all streams: every stream can be on another
cluster node, no command may carry keys of two slots, and each stream's window is its own, so a
flood on one stream never takes the slots another needs (tests/test_streams.py measures it).
On one server a lane per stream drains as fast as one stream does (bench/, README).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, List, Optional, Tuple

from .acker import Acker
from .connection import IO_TIMEOUT_S, READER_READ_SIZE, ConnectionFactory
from .dispatch import WorkerPool
from .errors import ConfigError, FatalRedisError, RStreamError
from .events import Events
from .group import GroupKeeper, Position
from .heartbeat import Heartbeat, NameFence
from .intake import Intake
from .ledger import Ledger
from .options import Options
from .outcomes import Outcomes
from .reaper import Reaper
from .reader import Reader
from .redisio import StreamOps, fence_key
from .settlements import Settlements
from .stats import BacklogSample, Counters
from .supervise import Health, Loop

log = logging.getLogger("rstream")

# How a lane gets the ops of one thread role: (lane, role, read timeout s, socket read size).
MakeOps = Callable[["Lane", str, float, int], StreamOps]


class Stops:
    """The events that stop each kind of thread, shared by every lane: the consumer stops all
    readers and reapers first, then the ackers, then the heartbeats (see Consumer._shutdown)."""

    def __init__(self) -> None:
        self.intake = threading.Event()     # readers and reapers: stop taking entries in
        self.acker = threading.Event()
        self.heartbeat = threading.Event()


class Lane:
    """The parts of one consumer that work on one stream (see the module docstring)."""

    def __init__(self, options: Options, factory: ConnectionFactory, events: Events) -> None:
        self.options = options
        self.factory = factory
        self.events = events
        self.counters = Counters()        # this stream's; the consumer's stats() sums them
        self.backlog = BacklogSample()    # its group on the server, as the reaper last saw it
        self.position = Position()
        self.group = GroupKeeper(options, self.counters, self.position, events)
        self.fence = NameFence(fence_key(options.stream, options.group, options.consumer_name),
                               options)
        self.loops: List[Loop] = []

    def check_fence_slot(self, client: object) -> None:
        """In Redis Cluster the fence key must share the stream's slot (one script uses both)."""
        keyslot = getattr(client, "keyslot", None)
        if keyslot is not None and keyslot(self.options.stream) != keyslot(self.fence.key):
            raise ConfigError(f"stream {self.options.stream!r} has braces that are not a Redis "
                              "Cluster hash tag; give it one, e.g. '{orders}'")

    def build(self, pool: WorkerPool, health: Health, stops: Stops, make_ops: MakeOps,
              on_fatal: Callable[[FatalRedisError], None]) -> None:
        """Make this stream's data and threads (not started). Data flows one way: reads ->
        intake -> pool -> outcomes -> settlements -> reader (acks riding on reads), acker (the
        rest) and reaper (due retries). No object calls back into the thread that feeds it."""
        o, counters = self.options, self.counters
        self.ledger = Ledger(o.in_flight_limit)
        self.settlements = Settlements(self.ledger, counters)
        outcomes = Outcomes(o, self.settlements, self.ledger, counters, self.events)
        self.intake = Intake(self.ledger, pool, counters, self.settlements, o.consumer_name,
                             outcomes.completed)
        self.acker = Acker(make_ops(self, "acker", IO_TIMEOUT_S, 65536), o, self.settlements,
                           stops.acker, self.events)
        read_timeout = o.receive_interval / 1000 + IO_TIMEOUT_S
        self.reader = Reader(make_ops(self, "reader", read_timeout, READER_READ_SIZE), o,
                             self.ledger, self.settlements, self.intake, self.position, stops.intake)
        self.reaper = Reaper(make_ops(self, "reaper", IO_TIMEOUT_S, 65536), o, self.ledger,
                             self.intake, self.settlements, stops.intake, self.reader.replay_done,
                             self.events, self.backlog)
        self.heartbeat = Heartbeat(make_ops(self, "heartbeat", IO_TIMEOUT_S, 65536), o, self.fence,
                                   self.events)

        # Thread names carry the stream when there are several, so a log line says whose it is.
        suffix = f" {o.stream}" if o.streams != (o.stream,) else ""

        def loop(name: str, step: Callable[[], Optional[float]], ops: StreamOps,
                 stop: threading.Event) -> Loop:
            return Loop(name + suffix, step, stop, health, lambda: self.group.ensure(ops), on_fatal,
                        ops.link)

        self.reader_loop = loop("rstream-reader", self.reader.step, self.reader.ops, stops.intake)
        self.reaper_loop = loop("rstream-reaper", self.reaper.step, self.reaper.ops, stops.intake)
        self.acker_loop = loop("rstream-acker", self.acker.step, self.acker.ops, stops.acker)
        self.acker_loop.proves_stream = False  # XACK on a deleted stream succeeds (answers 0)
        self.heartbeat_loop = loop("rstream-heartbeat", self.heartbeat.step, self.heartbeat.ops,
                                   stops.heartbeat)
        self.loops = [self.heartbeat_loop, self.acker_loop, self.reader_loop, self.reaper_loop]

    @property
    def ops(self) -> StreamOps:
        """The ops start-up checks and the clean stop use (the heartbeat's connection)."""
        return self.heartbeat.ops

    def prepare_once(self) -> Optional[Tuple[str, Tuple[int, ...]]]:
        """Check the server and the keys, create the group, beat once; the server found."""
        ops = self.ops
        found = ops.check_server()
        ops.check_key_types()
        self.group.ensure(ops, at_start=True)
        self.heartbeat.beat()
        return found

    # -- the steps of a stop, in the order Consumer._shutdown runs them over every lane --------
    def stop_intake(self) -> None:
        """Admit nothing more, and wake a reaper waiting for a retry and a blocked read now,
        not after receive_interval."""
        self.intake.close()
        self.settlements.wake()
        self.reader.ops.link.abort()

    def join_intake(self, deadline: float) -> None:
        self.reader_loop.join(deadline)
        self.reaper_loop.join(deadline)
        self.reader.abandon()

    def flush(self, deadline: float) -> None:
        """Once the workers are done: stop the acker and send every settlement left."""
        self.acker_loop.join(deadline)
        self.acker.ops.link.limit(deadline)  # a black-holed network must not hold stop() up
        try:
            self.acker.flush_all()
        except RStreamError as exc:
            log.warning("rstream: could not flush acks on %r at stop (%s); those entries stay "
                        "pending", self.options.stream, exc)

    def leave(self, deadline: float) -> None:
        """A clean stop leaves no ghost: with nothing pending, this consumer leaves the group
        (else others would find it dead later, and pid-based names would pile up). A consumer
        whose name another process took over leaves both to that process."""
        self.heartbeat_loop.join(deadline)
        if self.fence.lost_to is not None:
            return
        ops = self.ops
        ops.link.limit(deadline)
        try:
            if ops.leave(self.fence.active_key, self.fence.token):
                log.debug("rstream: consumer %r left group %r on %r", self.options.consumer_name,
                          self.options.group, self.options.stream)
        except RStreamError as exc:
            log.debug("rstream: could not leave the group at stop (%s)", exc)

    def wait_idle(self, deadline: float) -> bool:
        return self.ledger.wait_idle(deadline)


def wait_all_idle(lanes: List[Lane], deadline: float) -> bool:
    """Wait until no lane has an entry in flight; False if the deadline passed first."""
    return all([lane.wait_idle(deadline) for lane in lanes])
