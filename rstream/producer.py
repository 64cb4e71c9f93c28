"""`Producer`: adds entries to one stream, one at a time or pipelined.

The other side of a `Consumer`: it takes the same `redis` option (`rstream.clients`) and raises
the same error tree (`rstream.faults.translate`), so one URL and one ``except`` serve both. It
uses the redis-py client itself, not connections of its own: a `RedisCluster` routes every XADD
to the node that owns the stream's slot and follows it when the slot moves.

Redis commands: ``XADD stream [MAXLEN [~] n] * field value ...``, alone (`send`) or in
pipelines of `CHUNK` commands without MULTI (`send_many`).

Delivery is at-least-once, as for any XADD: a connection lost after the server added an entry
but before its id came back raises `RedisUnavailable`, and sending again adds it twice (so does
a client given with a redis-py ``retry`` that re-sends: a whole chunk, for `send_many`).

Tracing is opt-in (``trace=``, extra ``otel``): `rstream.otel.ProducerTracing` wraps each call in
a span and adds its context to the fields. Off (the default), nothing of it runs or is imported.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, List, Mapping, Optional, Union

import redis.exceptions as rex

from .clients import client_from_option, redact
from .errors import ConfigError, RStreamError, WrongType
from .faults import translate

if TYPE_CHECKING:
    from .otel import ProducerTracing

CHUNK = 1000  # XADDs per round trip in send_many: larger gains little, and holds more memory
# Keys are Any: Mapping is invariant in its key type, so Dict[str, str] would not fit
# Mapping[Union[bytes, str], ...]; check_fields tells them apart at run time.
Fields = Mapping[Any, Union[bytes, str, int, float]]
_ENCODABLE = (bytes, str, int, float)
_ENCODABLE_TYPES = frozenset(_ENCODABLE)


class Producer:
    """Adds entries to `stream` through `redis` (a URL, a dict of `redis.Redis` keyword arguments,
    or a `redis.Redis` / `RedisCluster`). With `maxlen`, every XADD trims the stream to about
    (`approximate`, ``MAXLEN ~``: cheap, whole macro nodes only) or exactly that many entries.
    With `trace` (``True``: the global tracer provider, or an `rstream.otel.ProducerTracing`),
    each call is a ``send <stream>`` span whose context goes into the entries (README, Tracing).

    Thread-safe: each call takes a connection from the client's pool. `close()` (or leaving a
    ``with`` block) closes a client the Producer made from a URL or a dict; a client passed in
    belongs to the caller and stays open.
    """

    def __init__(self, redis: Any, stream: str, maxlen: Optional[int] = None,
                 approximate: bool = True, *, trace: Union[bool, "ProducerTracing"] = False) -> None:
        if not isinstance(stream, str) or not stream:
            raise ConfigError(f"stream must be a non-empty str, got {stream!r}")
        if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, int)
                                   or maxlen <= 0):
            raise ConfigError(f"maxlen must be a positive int or None, got {maxlen!r}")
        if not isinstance(approximate, bool):
            raise ConfigError(f"approximate must be a bool, got {approximate!r}")
        self._tracing = _tracing_for(trace)
        self._client = client_from_option(redis)
        self._owns_client = self._client is not redis
        self._label = redact(redis) if isinstance(redis, str) else type(self._client).__name__
        self.stream, self.maxlen, self.approximate = stream, maxlen, approximate
        self._closed = False

    def send(self, fields: Fields) -> str:
        """Add one entry; its id."""
        check_fields(fields, "fields")
        self._check_open()
        if self._tracing is not None:
            return self._tracing.send(self.stream, fields, self._send)
        return self._send(fields)

    def _send(self, fields: Fields) -> str:
        try:
            return _text(self._client.xadd(self.stream, fields, maxlen=self.maxlen,
                                           approximate=self.approximate))
        except (rex.RedisError, OSError) as exc:
            raise self._fault(exc) from None

    def send_many(self, entries: Iterable[Fields]) -> List[str]:
        """Add every entry of `entries` (any iterable, a generator too), `CHUNK` XADDs per
        round trip; their ids, in order. An invalid entry raises a `ConfigError` naming its
        index before its chunk is sent: the chunks before it are in the stream, nothing after.
        A refused or lost round trip raises the translated error; that chunk may be partly in
        the stream (a refusal such as OOM can hit some of its XADDs and not others)."""
        self._check_open()
        if self._tracing is not None:
            return self._tracing.send_many(self.stream, entries, self._send_many)
        return self._send_many(entries)

    def _send_many(self, entries: Iterable[Fields]) -> List[str]:
        ids: List[str] = []
        pipe = self._client.pipeline(transaction=False)  # execute() empties it for the next chunk
        for index, fields in enumerate(entries):
            check_fields(fields, f"entry at index {index}")
            pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=self.approximate)
            if len(pipe) == CHUNK:
                ids.extend(self._execute(pipe))
        if len(pipe):
            ids.extend(self._execute(pipe))
        return ids

    def _execute(self, pipe: Any) -> List[str]:
        try:
            # Errors as replies: redis-py's raised one prefixes the command (and its values)
            # to the server's text, which hides the error code from translate.
            replies = pipe.execute(raise_on_error=False)
        except (rex.RedisError, OSError) as exc:
            raise self._fault(exc) from None
        refused = next((r for r in replies if isinstance(r, Exception)), None)
        if refused is not None:
            raise self._fault(refused)
        return [_text(reply) for reply in replies]

    def close(self) -> None:
        """Close the client if this Producer made it. Further sends raise `RStreamError`."""
        self._closed = True
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        traced = "" if self._tracing is None else f", trace={self._tracing!r}"
        return (f"Producer(redis={self._label!r}, stream={self.stream!r}, maxlen={self.maxlen!r}, "
                f"approximate={self.approximate!r}{traced})")

    def _fault(self, exc: BaseException) -> RStreamError:
        error = translate(exc)
        if isinstance(error, WrongType):  # the server's text does not say which key
            return WrongType(f"{error} (the key {self.stream!r} is no stream)", key=self.stream)
        return error

    def _check_open(self) -> None:
        if self._closed:
            raise RStreamError(f"{self!r} is closed")


def check_fields(fields: object, what: str) -> None:
    """A ConfigError unless `fields` is a non-empty mapping of bytes/str/int/float to the same
    (bool is refused: redis-py would not encode it, and "True" is rarely what a reader expects)."""
    if not (type(fields) is dict or isinstance(fields, Mapping)) or not fields:
        raise ConfigError(f"{what} must be a non-empty mapping of field to value, got {fields!r}")
    for name, value in fields.items():
        # The exact types first: send_many checks every field, and isinstance costs more.
        if type(name) not in _ENCODABLE_TYPES or type(value) not in _ENCODABLE_TYPES:
            for part, item in (("field name", name), ("value", value)):
                if isinstance(item, bool) or not isinstance(item, _ENCODABLE):
                    raise ConfigError(f"{what}: {part} {item!r} of field {name!r} must be bytes, "
                                      f"str, int or float, not {type(item).__name__}")


def _tracing_for(trace: object) -> Optional["ProducerTracing"]:
    """None when tracing is off; rstream.otel is imported only when it is on."""
    if trace is False:
        return None
    try:
        from .otel import ProducerTracing
    except ImportError as exc:
        raise ConfigError(f"trace={trace!r} needs OpenTelemetry: pip install 'rstream-redis[otel]' "
                          f"({exc})") from None
    if trace is True:
        return ProducerTracing()
    if isinstance(trace, ProducerTracing):
        return trace
    raise ConfigError(f"trace must be a bool or an rstream.otel.ProducerTracing, got {trace!r}")


def _text(entry_id: Union[bytes, str]) -> str:
    """A decode_responses client replies str, others bytes."""
    return entry_id if isinstance(entry_id, str) else entry_id.decode()
