"""Option validation: every bad value is a `ConfigError` naming the option.

No server is needed: a Consumer validates its options when it is built and connects only when it
starts. The URL below points at a port nothing listens on, and nothing ever dials it.
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest
import redis

import rstream
from rstream import ConfigError
from rstream.options import Options

UNUSED_URL = "redis://127.0.0.1:1/0"


def _valid(**overrides: Any) -> Dict[str, Any]:
    kwargs: Dict[str, Any] = dict(redis=UNUSED_URL, stream="orders", group="billing",
                                  consumer_name="billing-1")
    kwargs.update(overrides)
    return kwargs


def _not_callable() -> object:
    return object()


# (option, bad value): wrong types, empty names, zero and negative counts and intervals.
NAMES = ("stream", "group", "consumer_name")
COUNTS = ("receive_interval", "heartbeat_interval", "allowed_missed_heartbeats", "concurrency",
          "batch_size", "batch_timeout", "max_in_flight", "max_attempts", "start_timeout")
BOOLS = ("make_stream", "delete_on_ack")

BAD: List[Tuple[str, Any]] = []
for _name in NAMES:
    BAD += [(_name, ""), (_name, None), (_name, 5), (_name, ["orders"])]
for _count in COUNTS:
    BAD += [(_count, 0), (_count, -1), (_count, -1000), (_count, "100"), (_count, 1.5),
            (_count, 100.0), (_count, True), (_count, [100])]
for _flag in BOOLS:
    BAD += [(_flag, "yes"), (_flag, 1), (_flag, 0), (_flag, None), (_flag, "")]
for _flag in ("receive_interval", "heartbeat_interval", "allowed_missed_heartbeats",
              "concurrency", "batch_size", "batch_timeout"):
    BAD.append((_flag, None))
BAD += [
    ("group_start_id", ""), ("group_start_id", None), ("group_start_id", 0),
    ("group_start_id", "latest"), ("group_start_id", "-1"), ("group_start_id", "1-x"),
    ("group_start_id", "1-"), ("group_start_id", " 1-0"), ("group_start_id", "١-0"),
    ("handle_failure", "log_it"), ("handle_failure", 5), ("handle_failure", _not_callable()),
    ("partition_by", "account"), ("partition_by", 5),
    ("dead_letter_stream", ""), ("dead_letter_stream", 5),
]


def _label(case: Tuple[str, Any]) -> str:
    return f"{case[0]}={case[1]!r}"


@pytest.mark.parametrize("option,value", BAD, ids=[_label(c) for c in BAD])
def test_bad_value_raises_config_error_naming_option(option: str, value: Any) -> None:
    """A wrong type, empty name, zero or negative number is refused with the option's name."""
    extra: Dict[str, Any] = {option: value}
    if option == "dead_letter_stream":
        extra["max_attempts"] = 3   # so the error is about the name, not the missing max_attempts
    with pytest.raises(ConfigError) as info:
        rstream.Consumer(**_valid(**extra))
    assert option in str(info.value)


@pytest.mark.parametrize("option,value", [
    ("stream", ""), ("receive_interval", 0), ("batch_size", -5), ("concurrency", "8"),
    ("group_start_id", "latest"), ("make_stream", "yes"), ("max_attempts", 0),
])
def test_error_message_shows_the_bad_value(option: str, value: Any) -> None:
    """The message also shows the value given, so the user sees what was wrong with it."""
    with pytest.raises(ConfigError, match=option) as info:
        rstream.Consumer(**_valid(**{option: value}))
    assert repr(value) in str(info.value)


def test_config_error_is_a_value_error_and_an_rstream_error() -> None:
    """ConfigError can be caught as ValueError and as the library's root error."""
    with pytest.raises(ValueError):
        rstream.Consumer(**_valid(batch_size=0))
    with pytest.raises(rstream.RStreamError):
        rstream.Consumer(**_valid(batch_size=0))


def test_max_in_flight_below_batch_size_is_refused() -> None:
    """max_in_flight smaller than one read could never be filled by a full read."""
    with pytest.raises(ConfigError, match="max_in_flight"):
        rstream.Consumer(**_valid(batch_size=100, max_in_flight=50))


def test_dead_letter_stream_equal_to_stream_is_refused() -> None:
    """Dead letters written to the stream itself would be consumed again forever."""
    with pytest.raises(ConfigError, match="dead_letter_stream"):
        rstream.Consumer(**_valid(dead_letter_stream="orders", max_attempts=3))


def test_dead_letter_stream_without_max_attempts_is_refused() -> None:
    """A dead-letter stream with no attempt limit would never receive anything."""
    with pytest.raises(ConfigError, match="max_attempts"):
        rstream.Consumer(**_valid(dead_letter_stream="orders-dlq"))


@pytest.mark.parametrize("name", ["recieve_interval", "count", "block"])
def test_unknown_option_is_refused_by_name(name: str) -> None:
    """A misspelt or made-up option is an error, not silently ignored."""
    with pytest.raises(ConfigError, match=name):
        rstream.Consumer(**_valid(**{name: 100}))


@pytest.mark.parametrize("typo,meant", [("max_attemps", "max_attempts"),
                                        ("recieve_interval", "receive_interval"),
                                        ("deadletter_stream", "dead_letter_stream"),
                                        ("concurency", "concurrency")])
def test_a_misspelt_option_suggests_the_right_one(typo: str, meant: str) -> None:
    """An unknown option close to a known one is refused with "did you mean '<option>'?"."""
    with pytest.raises(ConfigError) as info:
        rstream.Consumer(**_valid(**{typo: 3}))
    assert str(info.value) == f"unknown option {typo!r}: did you mean {meant!r}?"


def test_several_unknown_options_are_all_named_with_suggestions() -> None:
    """Every unknown option is named, each with its suggestion when there is one."""
    with pytest.raises(ConfigError) as info:
        Options.build(stream="s", group="g", consumer_name="c", max_attemps=3, count=5)
    assert str(info.value) == "unknown options: 'count', 'max_attemps' (did you mean 'max_attempts'?)"


def _option_parameters() -> List[inspect.Parameter]:
    return [p for p in inspect.signature(rstream.Consumer.__init__).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY]


def test_every_option_is_a_typed_keyword_parameter_with_the_options_default() -> None:
    """Consumer.__init__ has one keyword-only parameter per Options field (besides the three
    names), in the same order, with the same default and the same type, so they cannot drift.
    `streams` is the exception: any sequence of names, kept as a tuple."""
    fields = [f for f in dataclasses.fields(Options) if f.name not in NAMES]
    params = _option_parameters()
    assert [p.name for p in params] == [f.name for f in fields]
    assert params[0].name == "streams" and params[0].default is None
    assert [p.default for p in params[1:]] == [f.default for f in fields[1:]]
    hints = typing.get_type_hints(rstream.Consumer.__init__)
    field_hints = typing.get_type_hints(Options)
    assert hints["streams"] == Optional[Sequence[str]]
    assert field_hints["streams"] == Tuple[str, ...]
    assert ({f.name: hints[f.name] for f in fields[1:]}
            == {f.name: field_hints[f.name] for f in fields[1:]})
    for name in NAMES:  # required; `stream` may give way to `streams`
        assert hints[name] == Optional[str] and field_hints[name] is str


def test_every_keyword_parameter_reaches_the_options() -> None:
    """A non-default value given for each option comes back in consumer.options."""
    def on_failure(message: rstream.Message, error: BaseException) -> None:
        pass

    given: Dict[str, Any] = dict(
        group_start_id="0", make_stream=True, receive_interval=7, heartbeat_interval=8,
        allowed_missed_heartbeats=9, delete_on_ack=True, concurrency=2, batch_size=3,
        batch_timeout=20, max_in_flight=30, handle_failure=on_failure, max_attempts=4,
        dead_letter_stream="dlq", start_timeout=1500, on_event=print, partition_by=repr)
    assert set(given) | {"streams"} == {p.name for p in _option_parameters()}, \
        "a new option needs a value here"
    options = rstream.Consumer(**_valid(**given)).options
    assert {name: getattr(options, name) for name in given} == given
    assert options.streams == ("orders",)  # `stream=` is the one-stream spelling of `streams=`


@pytest.mark.parametrize("value", [None, 1, 30_000])
def test_start_timeout_takes_none_or_a_positive_int(value: Any) -> None:
    """start_timeout is None (retry forever) or a positive number of milliseconds."""
    assert rstream.Consumer(**_valid(start_timeout=value)).options.start_timeout == value


@pytest.mark.parametrize("value", [None, 5, b"redis://127.0.0.1:1/0", ["redis://x"], object()])
def test_redis_option_of_wrong_type_is_refused(value: Any) -> None:
    """`redis` must be a URL, a kwargs dict or a client instance."""
    with pytest.raises(ConfigError, match="redis"):
        rstream.Consumer(**_valid(redis=value))


@pytest.mark.parametrize("value", ["", "localhost:6379", "http://127.0.0.1:1/0"])
def test_redis_option_that_is_no_redis_url_is_refused(value: str) -> None:
    """An empty string or a URL of another scheme is refused at once, not at the first connect."""
    with pytest.raises(ConfigError, match="redis"):
        rstream.Consumer(**_valid(redis=value))


def test_redis_option_error_hides_the_password() -> None:
    """A refused URL is quoted without its password."""
    with pytest.raises(ConfigError) as info:
        rstream.Consumer(**_valid(redis="http://alice:s3cret-pw@127.0.0.1:1/0"))
    assert "s3cret-pw" not in str(info.value)
    assert "alice" in str(info.value)


def test_redis_kwargs_dict_with_unknown_key_is_refused() -> None:
    """A kwargs dict redis.Redis does not accept is a ConfigError naming the option."""
    with pytest.raises(ConfigError, match="redis"):
        rstream.Consumer(**_valid(redis={"host": "127.0.0.1", "port": 1, "no_such_kwarg": 1}))


@pytest.mark.parametrize("value", [
    UNUSED_URL,
    "rediss://127.0.0.1:1/0",
    "unix:///tmp/no-such-redis.sock",
    {"host": "127.0.0.1", "port": 1},
    redis.Redis(host="127.0.0.1", port=1),
], ids=["url", "tls-url", "unix-url", "kwargs", "client"])
def test_redis_option_accepts_url_kwargs_and_client(value: Any) -> None:
    """Every documented form of `redis` builds a Consumer without connecting."""
    consumer = rstream.Consumer(**_valid(redis=value))
    assert consumer.stats().delivered == 0


def test_valid_options_are_kept_and_defaults_match_the_spec() -> None:
    """Defaults are the seed's (ms units) and given values come back unchanged."""
    defaults = rstream.Consumer(**_valid()).options
    assert (defaults.group_start_id, defaults.make_stream, defaults.delete_on_ack) == ("$", False, False)
    assert (defaults.receive_interval, defaults.heartbeat_interval) == (1000, 5000)
    assert defaults.allowed_missed_heartbeats == 3
    assert defaults.handle_failure is None and defaults.max_attempts is None
    assert defaults.dead_letter_stream is None
    assert defaults.in_flight_limit >= defaults.batch_size

    def on_failure(message: rstream.Message, error: BaseException) -> None:
        pass

    given = rstream.Consumer(**_valid(
        stream="my stream ✓", group="grüppe", consumer_name="c 1", group_start_id="1700000000000-5",
        make_stream=True, receive_interval=1, heartbeat_interval=2, allowed_missed_heartbeats=1,
        delete_on_ack=True, concurrency=1, batch_size=1, max_in_flight=1, handle_failure=on_failure,
        max_attempts=1, dead_letter_stream="dlq")).options
    assert given.stream == "my stream ✓" and given.group_start_id == "1700000000000-5"
    assert (given.batch_size, given.in_flight_limit, given.max_attempts) == (1, 1, 1)
    assert given.handle_failure is on_failure


@pytest.mark.parametrize("start_id", ["$", "0", "0-0", "1700000000000", "1700000000000-5"])
def test_group_start_id_accepts_special_and_explicit_ids(start_id: str) -> None:
    """'$', '0' and explicit stream ids are what XGROUP CREATE accepts."""
    assert rstream.Consumer(**_valid(group_start_id=start_id)).options.group_start_id == start_id


@pytest.mark.parametrize("handler", [None, "handle", 5])
def test_start_with_a_handler_that_is_not_callable_is_refused(handler: Any) -> None:
    """start() checks its handler before touching the server."""
    consumer = rstream.Consumer(**_valid())
    with pytest.raises(ConfigError, match="handler"):
        consumer.start(handler)


@pytest.mark.parametrize("given, problem", [
    (dict(stream="a", streams=["b"]), "give stream or streams, not both"),
    (dict(), "stream is required"),
    (dict(streams=[]), "at least one stream"),
    (dict(streams="orders"), "streams must be a list of stream names, got str 'orders'"),
    (dict(streams=["a", "b", "a"]), "must not repeat a stream, got 'a'"),
    (dict(streams=["a", ""]), "streams must not be empty"),
    (dict(streams=["a", 5]), "streams must be a str, got int 5"),
    (dict(streams=["a", "dlq"], dead_letter_stream="dlq", max_attempts=2),
     "dead_letter_stream must differ from every stream"),
])
def test_streams_is_checked_and_names_the_problem(given: Dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        rstream.Consumer(UNUSED_URL, group="g", consumer_name="c", **given)


def test_several_streams_give_each_part_its_own_stream() -> None:
    consumer = rstream.Consumer(UNUSED_URL, streams=("a", "b"), group="g", consumer_name="c")
    assert consumer.options.streams == ("a", "b")
    assert [o.stream for o in map(consumer.options.for_stream, consumer.options.streams)] == ["a", "b"]
    assert "streams=['a', 'b']" in repr(consumer)


def test_group_and_consumer_name_are_required_with_streams() -> None:
    with pytest.raises(ConfigError, match="consumer_name is required"):
        rstream.Consumer(UNUSED_URL, streams=["a"], group="g")
