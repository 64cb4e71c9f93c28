"""`rstream.otel`: process spans per message, send spans, and the trace context from one to the
other, against real servers. Spans go to an in-memory exporter of a TracerProvider passed
explicitly; the global provider is only set in child processes, so no test leaks it into another.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import rstream
from helpers import REPO_ROOT, add_entries, wait_until
from rstream.embedded import EmbeddedServer
from rstream.otel import DELIVERY_COUNT, ProducerTracing, traced

Factory = Callable[..., rstream.Consumer]
TRACEPARENT = "rstream.traceparent"


class Poison(Exception):
    """What the failing handlers raise."""


@pytest.fixture
def consumer_defaults() -> Dict[str, Any]:
    return dict(receive_interval=100, heartbeat_interval=100, make_stream=True, group_start_id="0")


@pytest.fixture
def spans() -> Iterator[Tuple[TracerProvider, InMemorySpanExporter]]:
    """A provider of its own for each test, exporting each span as it ends."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


class Seen:
    """A handler's log of the messages it got, thread-safe (workers call it concurrently)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages: List[rstream.Message] = []

    def __call__(self, message: rstream.Message) -> None:
        with self._lock:
            self.messages.append(message)


def finished(exporter: InMemorySpanExporter, count: int, name: str) -> List[ReadableSpan]:
    """Wait for `count` finished spans called `name`; all of them."""
    def found() -> List[ReadableSpan]:
        named = [span for span in exporter.get_finished_spans() if span.name == name]
        return named if len(named) >= count else []

    return wait_until(found, message=f"{count} spans {name!r}")


def pending(r: redis.Redis, stream: str, group: str) -> int:
    return int(r.xpending(stream, group)["pending"])


def run_child(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    child_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=child_env, timeout=60)


def test_one_consumer_span_per_message_with_the_conventions_attributes(
        r: redis.Redis, make_consumer: Factory, stream_names: Any, spans: Any) -> None:
    """20 entries -> 20 CONSUMER spans "process <stream>", one per entry id, each with the
    messaging attributes, delivery count 1, status unset, and no parent (propagate off)."""
    provider, exporter = spans
    ids = add_entries(r, stream_names.stream, 20)
    consumer = make_consumer()
    consumer.start(traced(Seen(), consumer, tracer_provider=provider))
    found = finished(exporter, 20, f"process {stream_names.stream}")
    assert sorted(s.attributes["messaging.message.id"] for s in found) == sorted(ids)
    for span in found:
        assert span.kind is SpanKind.CONSUMER
        assert span.status.status_code is StatusCode.UNSET
        assert span.parent is None and not span.links
        assert span.instrumentation_scope is not None and span.instrumentation_scope.name == "rstream.otel"
        assert dict(span.attributes or {}) == {
            "messaging.system": "redis", "messaging.destination.name": stream_names.stream,
            "messaging.operation.type": "process", "messaging.operation.name": "process",
            "messaging.consumer.group.name": stream_names.group,
            "messaging.client.id": stream_names.consumer,
            "messaging.message.id": span.attributes["messaging.message.id"],
            DELIVERY_COUNT: 1}
    wait_until(lambda: pending(r, stream_names.stream, stream_names.group) == 0)
    assert len(exporter.get_finished_spans()) == 20  # none twice


def test_a_failure_is_recorded_and_reraised_and_its_retry_counts_two(
        r: redis.Redis, make_consumer: Factory, stream_names: Any, spans: Any) -> None:
    """The first delivery raises: its span has status ERROR with the message, error.type and the
    exception event; rstream still sees the failure (it retries under max_attempts), and the
    retry's span has delivery count 2 and status unset; then the entry is acked."""
    provider, exporter = spans

    def handle(message: rstream.Message) -> None:
        if message.attempt == 1:
            raise Poison("boom")

    [entry_id] = add_entries(r, stream_names.stream, 1)
    consumer = make_consumer(max_attempts=3)
    consumer.start(traced(handle, consumer, tracer_provider=provider))
    first, second = sorted(finished(exporter, 2, f"process {stream_names.stream}"),
                           key=lambda s: s.start_time or 0)
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes[DELIVERY_COUNT] == 1 and second.attributes[DELIVERY_COUNT] == 2
    assert first.attributes["messaging.message.id"] == second.attributes["messaging.message.id"] == entry_id
    assert first.status.status_code is StatusCode.ERROR and first.status.description == "boom"
    assert first.attributes["error.type"] == "test_otel.Poison"
    [event] = first.events
    assert event.name == "exception" and event.attributes is not None
    assert event.attributes["exception.type"] == "test_otel.Poison"
    assert event.attributes["exception.message"] == "boom"
    assert second.status.status_code is StatusCode.UNSET and "error.type" not in second.attributes
    wait_until(lambda: pending(r, stream_names.stream, stream_names.group) == 0)
    assert consumer.stats().retried == 1 and len(exporter.get_finished_spans()) == 2


@pytest.mark.parametrize("decode_responses", [False, True])
def test_the_send_span_is_the_parent_when_both_sides_propagate(
        redis_server: EmbeddedServer, r: redis.Redis, make_consumer: Factory,
        stream_names: Any, spans: Any, decode_responses: bool) -> None:
    """A traced Producer (3 sends, one send_many of 4) and propagate=True: each process span is
    in its send span's trace, that span its parent and its link; one PRODUCER span per send,
    one for the batch (message_count 4). The context fields stay in message.fields, with a
    bytes client and a decode_responses one alike."""
    provider, exporter = spans
    stream = stream_names.stream
    with rstream.Producer(redis_server.url, stream, trace=ProducerTracing(provider)) as producer:
        single = [producer.send({"n": n}) for n in range(3)]
        batch = producer.send_many({"n": n} for n in range(3, 7))
    sends = finished(exporter, 4, f"send {stream}")
    assert all(s.kind is SpanKind.PRODUCER and s.status.status_code is StatusCode.UNSET for s in sends)
    by_id = {s.attributes["messaging.message.id"]: s for s in sends
             if s.attributes and "messaging.message.id" in s.attributes}
    assert sorted(by_id) == sorted(single)
    [batch_span] = [s for s in sends if s.attributes and "messaging.batch.message_count" in s.attributes]
    assert dict(batch_span.attributes or {}) == {
        "messaging.system": "redis", "messaging.destination.name": stream,
        "messaging.operation.type": "send", "messaging.operation.name": "send",
        "messaging.batch.message_count": 4}
    by_id.update({entry_id: batch_span for entry_id in batch})

    client = redis_server.client(decode_responses=decode_responses)
    seen = Seen()
    consumer = make_consumer(redis=client)
    consumer.start(traced(seen, consumer, tracer_provider=provider, propagate=True))
    processed = finished(exporter, 7, f"process {stream}")
    for span in processed:
        sent = by_id[span.attributes["messaging.message.id"]]
        assert span.context is not None and sent.context is not None and span.parent is not None
        assert span.context.trace_id == sent.context.trace_id
        assert span.parent.span_id == sent.context.span_id and span.parent.is_remote
        assert [link.context.span_id for link in span.links] == [sent.context.span_id]
    name = TRACEPARENT if decode_responses else TRACEPARENT.encode()
    assert all(name in message.fields for message in seen.messages)
    client.close()


@pytest.mark.parametrize("producer_traced, consumer_propagates", [(True, False), (False, True)])
def test_no_parent_when_either_side_is_off(
        redis_url: str, r: redis.Redis, make_consumer: Factory, stream_names: Any, spans: Any,
        producer_traced: bool, consumer_propagates: bool) -> None:
    """Consumer side off: the context fields are ignored (left in the fields) and each process
    span starts a trace of its own. Producer side off: no field is added, no span made, and the
    consumer finds no context. Either way no parent and no link."""
    provider, exporter = spans
    trace_option: Any = ProducerTracing(provider) if producer_traced else False
    with rstream.Producer(redis_url, stream_names.stream, trace=trace_option) as producer:
        producer.send_many([{"n": 1}, {"n": 2}])
    stored = [fields for _, fields in r.xrange(stream_names.stream)]
    assert all((TRACEPARENT.encode() in fields) is producer_traced for fields in stored)
    seen = Seen()
    consumer = make_consumer()
    consumer.start(traced(seen, consumer, tracer_provider=provider, propagate=consumer_propagates))
    processed = finished(exporter, 2, f"process {stream_names.stream}")
    send_traces = {s.context.trace_id for s in exporter.get_finished_spans()
                   if s.kind is SpanKind.PRODUCER}
    assert len(send_traces) == (1 if producer_traced else 0)
    for span in processed:
        assert span.parent is None and not span.links
        assert span.context is not None and span.context.trace_id not in send_traces
    wait_until(lambda: len(seen.messages) == 2)
    assert [m.fields for m in sorted(seen.messages, key=lambda m: m.id)] == stored


def test_send_replaces_old_context_fields_and_leaves_the_callers_dict(
        redis_url: str, r: redis.Redis, spans: Any) -> None:
    """Forwarding fields that carry an older context: the entry gets this send's traceparent,
    the old tracestate goes (this context has none), other fields are kept as they were, and
    the caller's mapping is not changed."""
    provider, exporter = spans
    old = {"order": "7", TRACEPARENT: "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
           b"rstream.tracestate": b"vendor=old"}
    original = dict(old)
    with rstream.Producer(redis_url, "s", trace=ProducerTracing(provider)) as producer:
        producer.send(old)
    [span] = exporter.get_finished_spans()
    assert span.context is not None
    [(_, stored)] = r.xrange("s")
    assert stored == {b"order": b"7",
                      TRACEPARENT.encode(): f"00-{span.context.trace_id:032x}-"
                                            f"{span.context.span_id:016x}-{span.context.trace_flags:02x}".encode()}
    assert old == original


def test_a_refused_send_ends_its_span_in_error(redis_url: str, r: redis.Redis, spans: Any) -> None:
    """XADD to a key that is no stream: the send span has status ERROR and error.type
    WrongType, and the caller gets rstream's WrongType as without tracing."""
    provider, exporter = spans
    r.set("not-a-stream", "x")
    with rstream.Producer(redis_url, "not-a-stream", trace=ProducerTracing(provider)) as producer:
        with pytest.raises(rstream.WrongType):
            producer.send({"a": "1"})
        with pytest.raises(rstream.WrongType):
            producer.send_many([{"a": "1"}])
    assert [s.status.status_code for s in exporter.get_finished_spans()] == [StatusCode.ERROR] * 2
    assert all((s.attributes or {})["error.type"] == "rstream.errors.WrongType" for s in exporter.get_finished_spans())
    assert "trace=ProducerTracing(" in repr(producer)


def test_without_an_sdk_the_wrapper_and_trace_true_change_nothing(
        redis_url: str, r: redis.Redis, make_consumer: Factory, stream_names: Any) -> None:
    """No provider given and no global one set: Producer(trace=True) adds no field, traced()
    hands every message to the handler unchanged, and all are acked."""
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # nothing set globally
    with rstream.Producer(redis_url, stream_names.stream, trace=True) as producer:
        producer.send({"n": 0})
        producer.send_many({"n": n} for n in range(1, 10))
    stored = {i.decode(): fields for i, fields in r.xrange(stream_names.stream)}
    assert all(set(fields) == {b"n"} for fields in stored.values())
    seen = Seen()
    consumer = make_consumer()
    consumer.start(traced(seen, consumer, propagate=True))
    wait_until(lambda: pending(r, stream_names.stream, stream_names.group) == 0
               and len(seen.messages) == 10)
    assert {m.id: m.fields for m in seen.messages} == stored


def test_a_span_current_around_the_call_stays_as_a_link(stream_names: Any, spans: Any) -> None:
    """propagate=True called inside another span (as in a handler test): the creation context
    is the parent, and links are the creation context and that span. A malformed traceparent
    is no context: the span is then the current span's child, with no link."""
    provider, exporter = spans
    consumer = rstream.Consumer("redis://127.0.0.1:1/0", stream_names.stream, "g", "c")
    handle = traced(Seen(), consumer, tracer_provider=provider, propagate=True)
    creation = f"00-{'a' * 32}-{'b' * 16}-01"
    with provider.get_tracer("test").start_as_current_span("test") as ambient:
        handle(rstream.Message("1-0", stream_names.stream, {TRACEPARENT.encode(): creation.encode()}))
        handle(rstream.Message("2-0", stream_names.stream, {TRACEPARENT: "garbage"}))
    parented, fallback = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert parented.parent is not None and parented.parent.span_id == int("b" * 16, 16)
    assert [link.context.span_id for link in parented.links] == [
        int("b" * 16, 16), ambient.get_span_context().span_id]
    assert fallback.parent is not None and fallback.parent.span_id == ambient.get_span_context().span_id
    assert not fallback.links


def test_any_exception_fails_the_span_and_async_handlers_are_refused(stream_names: Any,
                                                                      spans: Any) -> None:
    """A BaseException (rstream fails the message for it too) is recorded and raised again, as
    is an exception whose __str__ raises; an awaitable returned is refused inside the span; an
    async handler is refused up front, and a trace= that is neither bool nor ProducerTracing."""
    provider, exporter = spans
    consumer = rstream.Consumer("redis://127.0.0.1:1/0", stream_names.stream, "g", "c")

    def leave(message: rstream.Message) -> None:
        raise SystemExit("leaving")

    async def coroutine() -> None:
        pass

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    def unprintable(message: rstream.Message) -> None:
        raise Unprintable()

    with pytest.raises(SystemExit):
        traced(leave, consumer, tracer_provider=provider)(rstream.Message("1-0", "s", {b"a": b"1"}))
    with pytest.raises(TypeError, match="awaitable"):
        traced(lambda m: coroutine(), consumer, tracer_provider=provider)(rstream.Message("2-0", "s", {}))
    with pytest.raises(Unprintable):
        traced(unprintable, consumer, tracer_provider=provider)(rstream.Message("3-0", "s", {}))
    failed = exporter.get_finished_spans()
    assert [(s.attributes or {})["error.type"] for s in failed] == [
        "SystemExit", "TypeError", f"test_otel.{Unprintable.__qualname__}"]
    assert {s.status.status_code for s in failed} == {StatusCode.ERROR}
    assert failed[2].status.description == "<unprintable Unprintable>"

    async def handle(message: rstream.Message) -> None:
        pass

    with pytest.raises(rstream.ConfigError, match="synchronous"):
        traced(handle, consumer)
    with pytest.raises(rstream.ConfigError, match="trace must be"):
        rstream.Producer("redis://127.0.0.1:1/0", "s", trace="yes")


def test_a_global_provider_set_later_is_used(redis_url: str, r: redis.Redis) -> None:
    """In a child (the global provider can be set once per process): traced() and
    Producer(trace=True) made before the SDK is set record nothing, then, once it is set,
    record their spans with the producer's context in the entry."""
    child = run_child("""
        import os
        import rstream, rstream.otel
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        rstream.otel.LOOK_AGAIN_S = 0.0
        consumer = rstream.Consumer(os.environ["URL"], "s", "g", "c")
        handle = rstream.otel.traced(lambda message: None, consumer, propagate=True)
        producer = rstream.Producer(os.environ["URL"], "s", trace=True)
        handle(rstream.Message("1-0", "s", {b"a": b"1"}))
        before = producer.send({"a": "1"})
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        after = producer.send({"a": "2"})
        import redis
        fields = dict(redis.Redis.from_url(os.environ["URL"]).xrange("s", after, after)[0][1])
        handle(rstream.Message(after, "s", fields))
        send, process = exporter.get_finished_spans()
        assert process.parent.span_id == send.context.span_id, (send, process)
        print(before, send.name, process.name, *sorted(name.decode() for name in fields))
    """, URL=redis_url)
    assert child.returncode == 0, child.stderr
    before, *names = child.stdout.split()
    assert names == ["send", "s", "process", "s", "a", "rstream.traceparent"]
    assert r.xrange("s", before, before)[0][1] == {b"a": b"1"}


def test_rstream_works_without_opentelemetry(redis_url: str, r: redis.Redis) -> None:
    """With opentelemetry not importable: import rstream and an untraced Producer work, and
    trace=True says which extra to install."""
    child = run_child("""
        import os, sys
        sys.modules["opentelemetry"] = None  # as if not installed
        import rstream
        rstream.Producer(os.environ["URL"], "s").send({"a": "1"})
        try:
            rstream.Producer(os.environ["URL"], "s", trace=True)
        except rstream.ConfigError as exc:
            print(exc)
    """, URL=redis_url)
    assert child.returncode == 0, child.stderr
    assert "pip install 'rstream-redis[otel]'" in child.stdout
    assert r.xlen("s") == 1
