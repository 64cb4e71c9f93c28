"""OpenTelemetry tracing: a span per handled message, a span per send, and the trace context
carried from one to the other in the entry (optional extra ``otel``: opentelemetry-api).

Only this module imports ``opentelemetry``; ``import rstream`` does not. Spans follow the
OpenTelemetry messaging semantic conventions (development status):

- `traced(handler, consumer)` wraps a handler: each message runs in a CONSUMER span
  ``process <stream>``. A handler that raises (the message fails; rstream's retry and
  dead-letter rules follow) ends its span with status ERROR, ``error.type`` and the exception
  recorded, and the exception goes on to rstream unchanged.
- ``Producer(..., trace=True)`` (or ``trace=ProducerTracing(tracer_provider)``): `send` is a
  PRODUCER span ``send <stream>``, `send_many` one such span for the whole call (its context is
  the creation context of every entry, ``messaging.batch.message_count`` the number sent).

Attributes: ``messaging.system`` = ``"redis"`` (the conventions register no value for Redis
Streams, so this is the custom value they allow), ``messaging.destination.name`` (the stream),
``messaging.operation.type`` and ``.name`` (``process`` / ``send``), ``messaging.message.id``
(the entry id), and on process spans ``messaging.consumer.group.name`` (the group),
``messaging.client.id`` (the consumer name) and `DELIVERY_COUNT` (``rstream.message.delivery_count``,
the server's delivery count, `Message.attempt`: the conventions define a delivery count only
per system, e.g. ``messaging.servicebus.message.delivery_count``, and advise against custom
names inside their namespaces, hence rstream's own). A failed span has ``error.type``: the
exception's class as the SDK names ``exception.type`` (``module.QualName``, builtins bare). No
``server.address``: with a cluster or Sentinel the server of a stream changes while spans are
made, and the Consumer keeps its connections to itself.

Trace context goes in the entry's fields, written by the globally configured propagator (W3C
``traceparent`` and ``tracestate``, and ``baggage`` if there is any, by default) with their
names prefixed by `FIELD_PREFIX`: ``rstream.traceparent``, ``rstream.tracestate``,
``rstream.baggage``. A traced Producer replaces those fields if an entry already has them (a
handler forwarding ``message.fields`` starts a new hop, it does not pass the old one on); every
other field is left alone, and a consumer never removes them from ``message.fields``.

With ``propagate=True`` the process span's parent is the entry's creation context (the
conventions allow this for single-message processing), and the span also links to it (their
default correlation); a span active around the handler call (not the case on rstream's worker
threads) is kept as a second link. Without it, or when the entry carries no valid context, the
process span is a child of whatever is current: on a worker thread, a new trace.

Tracing costs nothing measurable when it would record nothing: with the API's no-op provider,
or no provider passed and none set globally, the handler is called and the fields sent as they
are, without a span (so no context is passed through either); `_Live` decides.

Redis commands: none (the Producer sends the XADDs; this module only adds their fields).
"""
from __future__ import annotations

import contextlib
import functools
import time
from typing import (TYPE_CHECKING, Any, Callable, ContextManager, Dict, FrozenSet, Iterable, Iterator,
                    List, Mapping, Optional, Sequence, Tuple)

from opentelemetry import propagate as otel_propagate
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.util.types import AttributeValue

from . import __version__
from .errors import ConfigError
from .handlers import Handler, is_async_callable, reject_awaitable
from .message import Message

if TYPE_CHECKING:
    from .consumer import Consumer
    from .producer import Fields

FIELD_PREFIX = "rstream."  # before each name the propagator writes: rstream.traceparent, ...
SYSTEM = "redis"
DELIVERY_COUNT = "rstream.message.delivery_count"
# A global tracer provider set after traced() or ProducerTracing() is used from at most this
# many seconds later (see _Live).
LOOK_AGAIN_S = 1.0
_SCOPE = "rstream.otel"  # instrumentation scope name of every span made here


def traced(handler: Handler, consumer: "Consumer", *, tracer_provider: Optional[TracerProvider] = None,
           propagate: bool = False) -> Handler:
    """`handler` run in a ``process <stream>`` span per message: ``consumer.run(traced(handle,
    consumer))``. `consumer` gives the group and consumer name. Spans go to `tracer_provider`,
    else to the global one (set up before or after this call, see `LOOK_AGAIN_S`); with none
    configured the handler is called as it is, at the cost of one check (~0.2 us).
    `propagate`: parent the span on the context the producer wrote into the entry."""
    if not callable(handler) or is_async_callable(handler):
        raise ConfigError(f"traced() takes a plain (synchronous) handler, got {handler!r}")
    call: Callable[[Message], object] = handler  # a handler may wrongly return an awaitable
    tracer, live = _tracer(tracer_provider), _Live(tracer_provider)
    options = consumer.options
    consumer_attributes: Dict[str, AttributeValue] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.consumer.group.name": options.group,
        "messaging.client.id": options.consumer_name,
    }

    @functools.wraps(handler)
    def handle(message: Message) -> Any:
        if not live():
            return call(message)  # as if unwrapped: rstream refuses an awaitable itself
        attributes = dict(consumer_attributes)
        attributes["messaging.destination.name"] = message.stream
        attributes["messaging.message.id"] = message.id
        attributes[DELIVERY_COUNT] = message.attempt
        parent, links = _creation_context(message.fields) if propagate else (None, ())
        with _span(tracer, f"process {message.stream}", SpanKind.CONSUMER, attributes, parent,
                   links):
            result = call(message)
            if result is not None:
                reject_awaitable(result)  # raised inside the span, which records the failure
        return None

    return handle


class ProducerTracing:
    """What ``Producer(..., trace=...)`` takes to make its spans through `tracer_provider`
    (``trace=True`` is ``ProducerTracing()``: the global provider, set before or after). With no
    SDK configured a call sends the fields as they are, without a span."""

    def __init__(self, tracer_provider: Optional[TracerProvider] = None) -> None:
        self._tracer, self._live = _tracer(tracer_provider), _Live(tracer_provider)
        self._provider = tracer_provider

    def send(self, stream: str, fields: "Fields", send: Callable[["Fields"], str]) -> str:
        """`send` (the untraced XADD) of `fields` plus the send span's context, in that span."""
        if not self._live():
            return send(fields)
        with self._span(stream) as span:
            entry_id = send(_with_context(fields, _current_context_fields(), _reserved_names()))
            span.set_attribute("messaging.message.id", entry_id)
            return entry_id

    def send_many(self, stream: str, entries: Iterable["Fields"],
                  send_many: Callable[[Iterable["Fields"]], List[str]]) -> List[str]:
        """`send_many` of `entries`, each with the context of one span for the whole batch (not a
        span per entry: a batch of 10,000 would make 10,000 spans)."""
        if not self._live():
            return send_many(entries)
        with self._span(stream) as span:
            context, reserved = _current_context_fields(), _reserved_names()
            ids = send_many(_with_context(fields, context, reserved) for fields in entries)
            span.set_attribute("messaging.batch.message_count", len(ids))
            return ids

    def _span(self, stream: str) -> ContextManager[Span]:
        return _span(self._tracer, f"send {stream}", SpanKind.PRODUCER, {
            "messaging.system": SYSTEM, "messaging.destination.name": stream,
            "messaging.operation.type": "send", "messaging.operation.name": "send"})

    def __repr__(self) -> str:
        shown = "" if self._provider is None else f"tracer_provider={self._provider!r}"
        return f"ProducerTracing({shown})"


def _tracer(tracer_provider: Optional[TracerProvider]) -> Tracer:
    return trace.get_tracer(_SCOPE, __version__, tracer_provider=tracer_provider)


class _Live:
    """Whether spans would record anything, asked before each span: not with the API's no-op
    provider, nor with the global one while no SDK is set. Skipping the span then saves the
    ~10 us a no-op span and its context switch cost. The global provider is looked up at most
    every `LOOK_AGAIN_S` until one is set (the lookup reads os.environ: ~1.5 us), and is then
    used for good (OpenTelemetry sets it once per process)."""

    def __init__(self, tracer_provider: Optional[TracerProvider]) -> None:
        self._fixed = None if tracer_provider is None else not isinstance(
            tracer_provider, trace.NoOpTracerProvider)
        self._global_set = False
        self._look_at = 0.0

    def __call__(self) -> bool:
        if self._fixed is not None:
            return self._fixed
        if self._global_set:
            return True
        now = time.monotonic()
        if now < self._look_at:
            return False
        self._look_at = now + LOOK_AGAIN_S
        self._global_set = not isinstance(trace.get_tracer_provider(), _UNSET_PROVIDERS)
        return self._global_set


_UNSET_PROVIDERS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


@contextlib.contextmanager
def _span(tracer: Tracer, name: str, kind: SpanKind, attributes: Dict[str, AttributeValue],
          parent: Optional[Context] = None, links: Sequence[Link] = ()) -> Iterator[Span]:
    """The current span while the block runs. A block that raises (BaseException too: rstream
    fails a message for any) ends it with status ERROR and the exception's message,
    ``error.type`` its class and the exception as an event (the conventions' "Recording
    errors"); one that returns leaves the status unset. The exception goes on unchanged."""
    with tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes,
                                      links=links, record_exception=False,
                                      set_status_on_exception=False) as span:
        try:
            yield span
        except BaseException as exc:  # noqa: BLE001 - recorded, then raised again
            _record_failure(span, exc)
            raise


def _record_failure(span: Span, exc: BaseException) -> None:
    kind = type(exc)  # error.type named as the SDK names exception.type: module.qualname
    span.set_attribute("error.type", kind.__qualname__ if kind.__module__ == "builtins"
                       else f"{kind.__module__}.{kind.__qualname__}")
    try:
        description = str(exc)
        span.record_exception(exc)  # calls str(exc) too
    except Exception:  # noqa: BLE001 - a broken __str__ must not replace the handler's exception
        description = f"<unprintable {type(exc).__name__}>"
    span.set_status(Status(StatusCode.ERROR, description))


# -- the context in the fields --------------------------------------------------------------------

class _FieldSetter(Setter[Dict[str, str]]):
    def set(self, carrier: Dict[str, str], key: str, value: str) -> None:
        carrier[FIELD_PREFIX + key] = value


class _FieldGetter(Getter[Mapping[Any, Any]]):
    """Reads the prefixed fields of ``message.fields``: str keys and values with
    decode_responses, bytes otherwise."""

    def get(self, carrier: Mapping[Any, Any], key: str) -> Optional[List[str]]:
        name = FIELD_PREFIX + key
        value = carrier.get(name)
        if value is None:
            value = carrier.get(name.encode())
        if value is None:
            return None
        return [value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)]

    def keys(self, carrier: Mapping[Any, Any]) -> List[str]:
        names = (k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k) for k in carrier)
        return [name[len(FIELD_PREFIX):] for name in names if name.startswith(FIELD_PREFIX)]


_SETTER = _FieldSetter()
_GETTER = _FieldGetter()


def _current_context_fields() -> Dict[str, str]:
    """The current context (inside a send span: that span) as prefixed fields, by the global
    propagator; empty when no span is valid (no SDK) and there is no baggage."""
    carrier: Dict[str, str] = {}
    otel_propagate.inject(carrier, setter=_SETTER)
    return carrier


def _reserved_names() -> FrozenSet[Any]:
    """Every field name the global propagator may write, as str and as bytes."""
    names = [FIELD_PREFIX + name for name in otel_propagate.get_global_textmap().fields]
    return frozenset(names + [name.encode() for name in names])


def _with_context(fields: "Fields", context: Mapping[str, str], reserved: FrozenSet[Any]) -> "Fields":
    """A copy of `fields` without the `reserved` (old context) fields, plus `context`. Anything
    but a non-empty mapping is returned as it is, for the Producer's own checks to refuse."""
    if not isinstance(fields, Mapping) or not fields:
        return fields
    copy = {name: value for name, value in fields.items() if name not in reserved}
    copy.update(context)
    return copy


def _creation_context(fields: Mapping[Any, Any]) -> Tuple[Optional[Context], Sequence[Link]]:
    """The entry's creation context as (parent, links), or (None, ()) if it carries no valid
    one. A valid span current around the call stays correlated as a second link."""
    context = otel_propagate.extract(fields, getter=_GETTER)
    creation = trace.get_current_span(context).get_span_context()
    if not creation.is_valid:
        return None, ()
    links = [Link(creation)]
    ambient = trace.get_current_span().get_span_context()
    if ambient.is_valid:
        links.append(Link(ambient))
    return context, links
