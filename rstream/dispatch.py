"""The handler pool and the ledger of entries this consumer holds.

Work is handed over in chunks, not per message: `ThreadPoolExecutor.submit` costs ~13 µs a call,
which alone would cap a per-message design near 70k msg/s. The reader appends whole batches; an
idle worker takes its share of what is queued (queued / concurrency, at least one) and runs the
handler on each message in turn, then reports the chunk's outcomes once.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Deque, Iterable, List, Optional, Set, Tuple

from .message import Message

Failure = Tuple[Message, BaseException]

# Waking a worker costs tens of microseconds (a lock hand-off and a GIL switch). A chunk should
# carry at least that much handler work: fast handlers get whole batches, slow ones are spread
# over all workers.
WAKE_COST_S = 50e-6
# The handler's cost per message is unknown until a chunk has run: assume slow, so the first
# batch is spread over the workers.
INITIAL_COST_S = 1e-3
ChunkDone = Callable[[List[str], List[Failure]], None]


class Ledger:
    """Counts entries read but not settled (bounding reads by `max_in_flight`) and remembers the
    ids this consumer holds, so its own-pending check can tell strays from held entries."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._cond = threading.Condition()
        self._reserved = 0
        self._in_flight = 0
        self._held: Set[str] = set()
        self._room_wanted = False  # due retries wait for slots: reads leave some free
        self._first_callers = 0    # `first` callers inside reserve(): reads leave some free

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def want_room(self, wanted: bool) -> None:
        """Entries read before (due retries) wait for slots: see `reserve`."""
        with self._cond:
            self._room_wanted = wanted

    def reserve(self, want: int, stop: threading.Event, wait_s: Optional[float] = None,
                first: bool = False) -> int:
        """Reserve up to `want` slots, waiting for at least one (until `stop` or `wait_s`).

        `first` callers bring entries read before (claims, retries). While one waits here, or
        `want_room` is on, other callers (reads) leave half the slots (at least one) free:
        else an idle reader, re-reserving every free slot for its next blocking read at once,
        would starve them for good."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        with self._cond:
            self._first_callers += first
            try:
                while True:
                    free = self.limit - self._reserved - self._in_flight
                    if not first and (self._room_wanted or self._first_callers):
                        free -= max(1, self.limit // 2)
                    if free > 0:
                        granted = min(want, free)
                        self._reserved += granted
                        return granted
                    if stop.is_set():
                        return 0
                    remaining = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                    if remaining <= 0:
                        return 0
                    self._cond.wait(remaining)
            finally:
                self._first_callers -= first

    def admit(self, reserved: int, ids: Iterable[str], count: int) -> None:
        """Turn a reservation into `count` held entries (the rest of it is freed)."""
        with self._cond:
            self._reserved -= reserved
            self._in_flight += count
            self._held.update(ids)
            if count < reserved:
                self._cond.notify_all()

    def finish(self, count: int) -> None:
        """Handlers are done with `count` entries: their slots are free for reads."""
        with self._cond:
            self._in_flight -= count
            self._cond.notify_all()

    def forget(self, ids: Iterable[str]) -> None:
        """These entries are settled on the server (or no longer ours)."""
        with self._cond:
            self._held.difference_update(ids)

    def hold(self, ids: Iterable[str]) -> None:
        with self._cond:
            self._held.update(ids)

    def held(self) -> Set[str]:
        with self._cond:
            return set(self._held)

    def wait_idle(self, deadline: float) -> bool:
        """Wait until no entry is in flight; False if the deadline (monotonic) passed first."""
        with self._cond:
            while self._in_flight > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))
            return True


class WorkerPool:
    """`concurrency` named threads running the user's handler over queued chunks."""

    def __init__(self, handler: Callable[[Message], object], concurrency: int,
                 chunk_done: ChunkDone) -> None:
        self._handler = handler
        self._concurrency = concurrency
        self._chunk_done = chunk_done
        self._cond = threading.Condition()
        self._queue: Deque[List[Message]] = collections.deque()
        self._queued = 0
        self._closing = False
        self._threads: List[threading.Thread] = []
        self._cost_s = INITIAL_COST_S  # moving average of handler seconds per message

    def start(self) -> None:
        for n in range(self._concurrency):
            # Daemon threads: a handler that never returns must not keep the process alive.
            thread = threading.Thread(target=self._work, name=f"rstream-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, messages: List[Message]) -> None:
        if not messages:
            return
        with self._cond:
            self._queue.append(messages)
            self._queued += len(messages)
            self._cond.notify(min(-(-len(messages) // self._share()), self._concurrency))

    def close(self) -> None:
        """Workers exit once the queue is empty; queued work is still done (drain)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def abandon(self) -> List[Message]:
        """Drop what no worker has started (it stays pending on the server)."""
        with self._cond:
            left = [m for chunk in self._queue for m in chunk]
            self._queue.clear()
            self._queued = 0
            self._closing = True
            self._cond.notify_all()
            return left

    def runs_on(self, thread: threading.Thread) -> bool:
        """True if `thread` is one of this pool's workers (a handler is calling us)."""
        return thread in self._threads

    def join(self, deadline: float) -> None:
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _take(self) -> Optional[List[Message]]:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            share = self._share()
            head = self._queue[0]
            if len(head) <= share:
                chunk = self._queue.popleft()
            else:
                chunk, self._queue[0] = head[:share], head[share:]
            self._queued -= len(chunk)
            if self._queue:
                self._cond.notify()
            return chunk

    def _share(self) -> int:
        """How many queued messages one worker takes: an even split, or more when the handler
        is so fast that waking another worker would cost more than the work it takes over."""
        if self._queued <= self._concurrency:
            # Few enough for one each: the cost estimate is the past, and one slow message in a
            # shared chunk would hold the others back while workers sit idle.
            return 1
        even = -(-self._queued // self._concurrency)
        worth = int(WAKE_COST_S / self._cost_s) if self._cost_s > 0 else self._queued
        return max(1, even, min(worth, self._queued))

    def _work(self) -> None:
        handler = self._handler
        clock = time.perf_counter
        while True:
            chunk = self._take()
            if chunk is None:
                return
            started = clock()
            ok: List[str] = []
            failures: List[Failure] = []
            for message in chunk:
                try:
                    handler(message)
                except BaseException as exc:  # noqa: B036 - a handler's exception is an outcome
                    failures.append((message, exc))
                else:
                    ok.append(message.id)
            self._cost_s = 0.8 * self._cost_s + 0.2 * (clock() - started) / len(chunk)
            self._chunk_done(ok, failures)
