"""The handler pool: worker threads running the user's handler over chunks of messages.

Work is handed over in chunks, not per message: `ThreadPoolExecutor.submit` costs ~13 µs a call,
which alone would cap a per-message design near 70k msg/s. The reader appends whole batches; an
idle worker takes its share of what is queued (queued / concurrency, at least one) and runs the
handler on each message in turn, then reports the chunk's outcomes once, to the `ChunkDone`
the batch was submitted with (each stream's own `rstream.outcomes.Outcomes`: a chunk is always
a part of one submitted batch, so it holds entries of one stream).

`WorkerPool` is what every pool shares (threads, submit, close, abandon); `MessagePool`, here,
runs a handler per message. The two other kinds share its threads and its reports:
`rstream.batchpool` (a batch handler, `handle_batch`) and `rstream.keyedpool` (`partition_by`:
one message of a key at a time, in id order). The `Consumer` picks one at start.
"""
from __future__ import annotations

import abc
import collections
import threading
import time
from typing import Callable, Deque, List, Optional, Protocol, Sequence, Set, Tuple

from .batches import Failure
from .handlers import reject_awaitable
from .message import Message

# A failed message this process runs again itself, and when (unix ms): see `ChunkDone`.
HeldRetry = Tuple[Message, int]

# A chunk carries at least this much handler work: fast handlers get whole batches, slow ones
# are spread over all workers. Waking a worker costs about 25 us of CPU (a futex wake, then GIL
# hand-offs with the reader), and splitting less work than this gains no time: most handlers
# hold the GIL, so two workers on a few hundred microseconds of it take as long as one. At
# 50 us, a batch of 500 no-op messages went to 2 or 3 workers, and every worker woke about
# once per batch: 12 context switches per batch instead of 3 (bench/, case 1).
WAKE_COST_S = 500e-6
# An idle worker takes over the rest of a chunk whose worker has not started a message for this
# long: one hung handler must not strand the messages queued behind it in its chunk.
STALL_S = 0.05
# A worker reports what it handled at least this often, so a handler that hangs later in a
# chunk does not keep the earlier ones from being acked.
REPORT_EVERY = 128
# The handler's cost per message is unknown until a chunk has run: assume slow, so the first
# batch is spread over the workers.
INITIAL_COST_S = 1e-3


class ChunkDone(Protocol):
    """Where a worker reports (a stream's `Outcomes.completed`): `ok` returned, `failures`
    raised, and `unhandled` were handed out but given up without running (at stop: their
    slots come back, they stay pending). It answers with the failures that this process is to
    run again itself, which only a `partition_by` consumer asks for (see `rstream.keyedpool`)."""

    def __call__(self, ok: List[str], failures: List[Failure],
                 unhandled: int = 0) -> Sequence[HeldRetry]: ...


class WorkerPool(abc.ABC):
    """`concurrency` named threads taking the work that `submit` queues; see the subclasses."""

    def __init__(self, concurrency: int) -> None:
        self._concurrency = concurrency
        self._cond = threading.Condition()
        self._closing = False
        self._threads: List[threading.Thread] = []

    def start(self) -> None:
        for n in range(self._concurrency):
            # Daemon threads: a handler that never returns must not keep the process alive.
            thread = threading.Thread(target=self._work, name=f"rstream-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    @abc.abstractmethod
    def submit(self, messages: List[Message], done: ChunkDone) -> None:
        """Queue `messages` (of one stream) for the handler; their outcomes go to `done`."""

    def close(self) -> None:
        """Workers exit once the queue is empty; queued work is still done (drain)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    @abc.abstractmethod
    def abandon(self) -> List[Message]:
        """Drop what no worker has started (it stays pending on the server)."""

    def waiting_retries(self, stream: Optional[str] = None) -> int:
        """Failed messages this pool holds for a retry of its own (of `stream`, or of all)."""
        return 0

    def runs_on(self, thread: threading.Thread) -> bool:
        """True if `thread` is one of this pool's workers (a handler is calling us)."""
        return thread in self._threads

    def join(self, deadline: float) -> None:
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @abc.abstractmethod
    def _work(self) -> None:
        """One worker thread's life: take work, run it, report, until closed."""


class _Chunk:
    """Messages one worker is going through. It takes them from the left, one at a time; an idle
    worker may take the rest from the right when the owner stops making progress (a handler that
    hangs). deque pops are atomic, so no message is ever run twice."""

    __slots__ = ("items", "done", "seen_len", "seen_at")

    def __init__(self, messages: List[Message], done: "ChunkDone") -> None:
        self.items: Deque[Message] = collections.deque(messages)
        self.done = done
        self.seen_len = len(messages)
        self.seen_at = time.monotonic()


class MessagePool(WorkerPool):
    """Runs the user's handler on one message at a time, over queued chunks."""

    def __init__(self, handler: Callable[[Message], object], concurrency: int) -> None:
        super().__init__(concurrency)
        self._handler = handler
        # Batches in the order they came, each with where its outcomes go.
        self._queue: Deque[Tuple[List[Message], ChunkDone]] = collections.deque()
        self._queued = 0
        self._running: Set[_Chunk] = set()
        self._cost_s = INITIAL_COST_S  # moving average of handler seconds per message

    def submit(self, messages: List[Message], done: ChunkDone) -> None:
        if not messages:
            return
        with self._cond:
            self._queue.append((messages, done))
            self._queued += len(messages)
            self._cond.notify(min(-(-len(messages) // self._share()), self._concurrency))

    def abandon(self) -> List[Message]:
        with self._cond:
            left = [m for batch, _ in self._queue for m in batch]
            for chunk in self._running:
                left.extend(_drain_right(chunk.items))
            self._queue.clear()
            self._queued = 0
            self._closing = True
            self._cond.notify_all()
            return left

    def _take(self) -> Optional[_Chunk]:
        with self._cond:
            while True:
                if self._queue:
                    return self._start(*self._next_share())
                stolen = self._steal()
                if stolen is not None:
                    return self._start(*stolen)
                stranded = any(chunk.items for chunk in self._running)
                if self._closing and not stranded:
                    return None
                self._cond.wait(STALL_S if stranded else None)

    def _next_share(self) -> Tuple[List[Message], ChunkDone]:
        share = self._share()
        head, done = self._queue[0]
        if len(head) <= share:
            messages = head
            self._queue.popleft()
        else:
            messages, self._queue[0] = head[:share], (head[share:], done)
        self._queued -= len(messages)
        if self._queue:
            self._cond.notify()
        return messages, done

    def _start(self, messages: List[Message], done: ChunkDone) -> _Chunk:
        chunk = _Chunk(messages, done)
        self._running.add(chunk)
        return chunk

    def _steal(self) -> Optional[Tuple[List[Message], ChunkDone]]:
        """The rest of a chunk whose worker has not taken a message for `STALL_S`."""
        now = time.monotonic()
        for chunk in self._running:
            left = len(chunk.items)
            if left != chunk.seen_len:
                chunk.seen_len, chunk.seen_at = left, now
            elif left and now - chunk.seen_at >= STALL_S:
                stolen = _drain_right(chunk.items)
                chunk.seen_len = len(chunk.items)
                if stolen:
                    return stolen, chunk.done
        return None

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
            done = 0
            take = chunk.items.popleft
            report = chunk.done
            ok: List[str] = []
            failures: List[Failure] = []
            succeeded = ok.append
            unreported = 0
            while True:
                try:
                    message = take()
                except IndexError:
                    break
                try:
                    result = handler(message)
                    if result is not None:  # the usual None costs one comparison, nothing more
                        reject_awaitable(result)
                except BaseException as exc:  # noqa: BLE001 - a handler's exception is an outcome
                    failures.append((message, exc))
                else:
                    succeeded(message.id)
                unreported += 1
                if unreported >= REPORT_EVERY:
                    # Report as we go: if a later handler hangs, these are acked all the same.
                    done += unreported
                    report(ok, failures)
                    ok, failures, unreported = [], [], 0
                    succeeded = ok.append
            with self._cond:
                self._running.discard(chunk)
            done += unreported
            if done:
                self._cost_s = 0.8 * self._cost_s + 0.2 * (clock() - started) / done
            if ok or failures:
                report(ok, failures)


def _drain_right(items: Deque[Message]) -> List[Message]:
    """Pop everything from the right of a chunk being worked on from the left, in order."""
    taken: List[Message] = []
    while True:
        try:
            taken.append(items.pop())
        except IndexError:
            taken.reverse()
            return taken
