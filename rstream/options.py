"""Consumer options: defaults, units and validation. Pure: no Redis, no threads.

Durations are in milliseconds, as in the seed (`receive_interval`, `heartbeat_interval`).
Every bad value raises `ConfigError` naming the option and the value.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Collection, Optional, Tuple

from . import _hotpath as hot
from .errors import ConfigError
from .events import EventHandler
from .handlers import FailureHandler, is_async_callable
from .partition import PartitionBy

DEFAULT_CONCURRENCY = 8
DEFAULT_BATCH_SIZE = 500
# Broadway's default: how long a batch handler's batch may wait to fill up.
DEFAULT_BATCH_TIMEOUT_MS = 1000
# Stream ids Redis accepts for XGROUP CREATE besides explicit "ms-seq" ids.
_SPECIAL_START_IDS = ("$", "0")


@dataclasses.dataclass(frozen=True)
class Options:
    """Validated settings of one Consumer. Build with `Options.build(**kwargs)`.

    `streams` holds every stream the consumer reads (one with `stream=`, several with
    `streams=`); `stream` is the first. The parts that work on one stream (its reader, reaper,
    acker and heartbeat, see `rstream.lane`) get `for_stream(s)`, whose `stream` is theirs."""

    stream: str
    group: str
    consumer_name: str
    streams: Tuple[str, ...] = ()
    group_start_id: str = "$"
    make_stream: bool = False
    receive_interval: int = 1000
    heartbeat_interval: int = 5000
    allowed_missed_heartbeats: int = 3
    delete_on_ack: bool = False
    concurrency: int = DEFAULT_CONCURRENCY
    batch_size: int = DEFAULT_BATCH_SIZE
    # With a batch handler: longest wait (ms) for a batch to fill up to batch_size.
    batch_timeout: int = DEFAULT_BATCH_TIMEOUT_MS
    max_in_flight: Optional[int] = None
    handle_failure: Optional[FailureHandler] = None
    max_attempts: Optional[int] = None
    dead_letter_stream: Optional[str] = None
    # Longest wait in start()/run() for the server (ms); None retries forever.
    start_timeout: Optional[int] = None
    on_event: Optional[EventHandler] = None
    partition_by: Optional[PartitionBy] = None

    @property
    def in_flight_limit(self) -> int:
        """`max_in_flight`, defaulting to four reads' worth: the batch being handled, the
        one being decoded and two reads queued on the server (see reader.PIPELINE_DEPTH).
        With two (the seed-era guess) the server sat idle between replies: 460k vs 650k
        entries/s draining on a 2-core machine. With several streams each has its own window
        of this size, so a flood on one never holds back reads of another."""
        return self.max_in_flight if self.max_in_flight is not None else 4 * self.batch_size

    @property
    def dead_after_ms(self) -> int:
        """Idle time after which another consumer counts as dead."""
        return self.heartbeat_interval * self.allowed_missed_heartbeats

    @classmethod
    def build(cls, **kwargs: Any) -> "Options":
        """Validate every option and return the frozen value; unknown names are errors too."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(known))
        if len(unknown) == 1:
            raise ConfigError(f"unknown option {_suggest(unknown[0], known, ': ')}")
        if unknown:
            raise ConfigError("unknown options: "
                              + ", ".join(_suggest(name, known, " (", ")") for name in unknown))
        kwargs["streams"] = _one_or_several(kwargs.pop("stream", None), kwargs.get("streams"))
        kwargs["stream"] = kwargs["streams"][0]
        for name in ("group", "consumer_name"):
            if kwargs.get(name) is None:
                raise ConfigError(f"{name} is required")
        options = cls(**kwargs)
        options.validate()
        return options

    def for_stream(self, stream: str) -> "Options":
        """These options for the parts that work on `stream` alone."""
        return dataclasses.replace(self, stream=stream, streams=(stream,))

    def validate(self) -> None:
        for name in ("group", "consumer_name"):
            _name(name, getattr(self, name))
        for stream in self.streams:
            _name("streams" if len(self.streams) > 1 else "stream", stream)
        _start_id(self.group_start_id)
        for name in ("make_stream", "delete_on_ack"):
            _bool(name, getattr(self, name))
        for name in ("receive_interval", "heartbeat_interval", "allowed_missed_heartbeats",
                     "concurrency", "batch_size", "batch_timeout"):
            _positive_int(name, getattr(self, name))
        if self.max_in_flight is not None:
            _positive_int("max_in_flight", self.max_in_flight)
            if self.max_in_flight < self.batch_size:
                raise ConfigError(
                    f"max_in_flight must be at least batch_size ({self.batch_size}), "
                    f"got {self.max_in_flight!r}")
        for name in ("handle_failure", "on_event", "partition_by"):
            _sync_callable(name, getattr(self, name))
        if self.max_attempts is not None:
            _positive_int("max_attempts", self.max_attempts)
        if self.start_timeout is not None:
            _positive_int("start_timeout", self.start_timeout)
        if self.dead_letter_stream is not None:
            _name("dead_letter_stream", self.dead_letter_stream)
            if self.dead_letter_stream in self.streams:
                raise ConfigError(
                    f"dead_letter_stream must differ from {'every stream' if len(self.streams) > 1 else 'stream'}"
                    f", got {self.dead_letter_stream!r}")
            if self.max_attempts is None:
                raise ConfigError("dead_letter_stream needs max_attempts (after how many deliveries "
                                  f"an entry is dead-lettered), got dead_letter_stream="
                                  f"{self.dead_letter_stream!r} and max_attempts=None")


def _one_or_several(stream: Any, streams: Any) -> Tuple[Any, ...]:
    """The streams to read: `stream` or `streams`, exactly one of the two."""
    if stream is None and streams is None:
        raise ConfigError("stream is required (or streams=[...] for several)")
    if stream is not None and streams is not None:
        raise ConfigError(f"give stream or streams, not both: got stream={stream!r} and "
                          f"streams={streams!r}")
    if streams is None:
        return (stream,)
    if isinstance(streams, (str, bytes)) or not isinstance(streams, (list, tuple)):
        raise ConfigError(f"streams must be a list of stream names, got {type(streams).__name__} "
                          f"{streams!r}")
    if not streams:
        raise ConfigError("streams must name at least one stream, got []")
    repeated = sorted({s for s in streams if isinstance(s, str) and streams.count(s) > 1})
    if repeated:
        raise ConfigError(f"streams must not repeat a stream, got {', '.join(map(repr, repeated))} "
                          "more than once")
    return tuple(streams)


def _suggest(name: str, known: Collection[str], before: str, after: str = "") -> str:
    """`name` quoted, with the closest known option when one is close (a typo, usually)."""
    close = difflib.get_close_matches(name, known, n=1)
    return f"{name!r}{before}did you mean {close[0]!r}?{after}" if close else repr(name)


def _name(option: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{option} must be a str, got {type(value).__name__} {value!r}")
    if not value:
        raise ConfigError(f"{option} must not be empty, got {value!r}")


def _bool(option: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{option} must be a bool, got {type(value).__name__} {value!r}")


def _sync_callable(option: str, value: Any) -> None:
    if value is not None and not callable(value):
        raise ConfigError(f"{option} must be callable or None, got {value!r}")
    if is_async_callable(value):
        raise ConfigError(f"{option} must be a plain (synchronous) function, got the async "
                          f"{value!r}: rstream calls it on a thread and would never await it")


def _positive_int(option: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{option} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ConfigError(f"{option} must be a positive int, got {value!r}")


def _start_id(value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"group_start_id must be a str, got {type(value).__name__} {value!r}")
    if value in _SPECIAL_START_IDS:
        return
    try:
        hot.parse_id(value if "-" in value else value + "-0")  # "1700000000000" means "...-0"
    except ValueError:
        raise ConfigError(
            f"group_start_id must be '$', '0' or a stream id like '1700000000000-0', got {value!r}") from None
