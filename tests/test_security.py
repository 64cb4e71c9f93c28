"""Security: a minimal ACL user, wrong credentials, TLS, no password in logs.

The minimal ACL here is the one the README (A minimal ACL user) documents; if rstream starts sending another
command, the end-to-end test fails on it (NOPERM) and both must change together.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, List, Sequence, Set

import pytest
import redis

from faultkit import Recorder, command_calls, new_consumer, pending, publish, rstream_threads
from helpers import wait_until
from rstream import Consumer, FatalRedisError, Message, RStreamError
from rstream.embedded import EmbeddedServer, find_server_binary
from tlskit import Certs, TlsServer

PASSWORD = "s3cret-Pa55word-xyzzy"
USER = "rstream-app"
# The commands rstream needs (README, A minimal ACL user). XADD only for the dead-letter stream, XDEL
# only with delete_on_ack; INFO and CLIENT|SETINFO are optional (see OPTIONAL_DENIED).
MINIMAL_COMMANDS = ("-@all +xreadgroup +xack +xpending +xclaim +xinfo|consumers +xinfo|groups +xinfo|stream +time "
                    "+xgroup|create +xgroup|delconsumer +xadd +xdel +xrange +type +multi +exec "
                    "+eval")
# The consumer-name fence key (a string): GET and SET, scoped to the fence keys by an ACL
# selector where the server has them (Redis 7+, Valkey); Redis 6.2 can only allow them on
# every key of the user.
FENCE_COMMANDS = "+eval +get +set +del"
# Denied without harm: rstream skips its server-version check without INFO, and redis-py
# ignores a refused CLIENT SETINFO (the connection's library name).
OPTIONAL_DENIED = {"info", "client|setinfo", "client", "xackdel"}


def acl_rules(keys: Sequence[str], commands: str = MINIMAL_COMMANDS,
              selectors: bool = True, fences: bool = True) -> List[str]:
    """ACL SETUSER arguments for USER: the given keys and their consumer-name fence keys only,
    no channels, `commands`, and GET/SET on the fence keys (a selector, or on 6.2 for all)."""
    fence_keys = [f"~rstream:fence:{{{k}}}:*" for k in keys]
    rules = ["on", f">{PASSWORD}", "resetkeys", *[f"~{k}" for k in keys], "resetchannels",
             *commands.split()]
    if not fences:
        return rules
    if selectors:
        return rules + [f"({' '.join([*fence_keys, FENCE_COMMANDS])})"]
    return rules + fence_keys + FENCE_COMMANDS.split()


def has_selectors(r: redis.Redis) -> bool:
    """ACL selectors came with Redis 7.0 (Valkey has them)."""
    info = r.info("server")
    return "valkey_version" in info or int(str(info["redis_version"]).split(".")[0]) >= 7


def make_user(r: redis.Redis, keys: Sequence[str], commands: str = MINIMAL_COMMANDS) -> None:
    r.execute_command("ACL", "SETUSER", USER, "reset", *acl_rules(keys, commands, has_selectors(r)))


def user_url(server: EmbeddedServer, password: str = PASSWORD) -> str:
    return f"redis://{USER}:{password}@{server.host}:{server.port}/0"


def denied_commands(r: redis.Redis) -> set[str]:
    """Commands the ACL refused USER, from ACL LOG."""
    return {str(e["object"]).lower() for e in r.acl_log(count=1000)
            if e.get("username") == USER and e.get("reason") != "auth"}


def _number(message: Message) -> int:
    return int(message.fields[b"n"])


# -- the minimal ACL, end to end ---------------------------------------------------------------
def test_minimal_acl_user_works_end_to_end(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer]) -> None:
    """With only the documented commands on the stream and its dead-letter stream, every
    feature works: reads, acks with delete_on_ack, retries, dead letters, claims from a dead
    consumer and its removal; the server refused nothing rstream needed."""
    names = stream_names
    make_user(r, [names.stream, names.dead_letter])
    r.xgroup_create(names.stream, names.group, "0", mkstream=True)
    ids = publish(r, names.stream, 100)
    # A consumer that read 20 entries and died: the reaper must claim them (XCLAIM) and then
    # remove it (the DELCONSUMER script).
    r.xreadgroup(names.group, "ghost", {names.stream: ">"}, count=20)

    def retry_then_dead_letter(message: Message, error: BaseException) -> None:
        message.configure_ack(retry=True)

    rec = Recorder(lambda m: ValueError("poison") if _number(m) % 10 == 0 else None)
    consumer = new_consumer(consumers, user_url(redis_server), names, delete_on_ack=True,
                         max_attempts=2, dead_letter_stream=names.dead_letter,
                         handle_failure=retry_then_dead_letter)
    consumer.start(rec)
    poison = {i for n, i in enumerate(ids) if n % 10 == 0}
    wait_until(lambda: len(rec.handled) == 90 and r.xlen(names.dead_letter) == 10, 30,
               message="entries were not all handled or dead-lettered")
    wait_until(lambda: r.xlen(names.stream) == 0, 10, message="delete_on_ack left entries")
    wait_until(lambda: pending(r, names.stream, names.group) == 0, 10, message="entries left pending")
    wait_until(lambda: all(c["name"] != b"ghost" for c in r.xinfo_consumers(names.stream, names.group)),
               10, message="the dead consumer was not removed")
    dead = {fields[b"rstream-id"].decode() for _, fields in r.xrange(names.dead_letter)}
    assert dead == poison
    stats = consumer.stats()
    # Poison entries claimed from the ghost arrive on their 2nd delivery: dead-lettered at once.
    assert stats.claimed == 20 and stats.dead_lettered == 10 and stats.retried >= 8
    assert consumer.error is None
    denied = denied_commands(r)
    print(f"commands the minimal ACL refused (optional ones only): {sorted(denied)}")
    assert denied <= OPTIONAL_DENIED, denied


def test_minimal_acl_user_cannot_touch_other_keys(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any) -> None:
    """The documented ACL really is minimal: other keys and other commands are refused."""
    make_user(r, [stream_names.stream, stream_names.dead_letter])
    app = redis.Redis(host=redis_server.host, port=redis_server.port, username=USER, password=PASSWORD)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.xadd("another-stream", {"a": 1})
        if has_selectors(r):  # on 6.2, GET and SET (for the fence keys) cover every key
            with pytest.raises(redis.exceptions.NoPermissionError):
                app.get(stream_names.stream)
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.flushall()
    finally:
        app.close()


# -- wrong credentials and missing permissions: clear errors, no retry loop --------------------
def _auth_calls(r: redis.Redis) -> int:
    return int(r.info("commandstats").get("cmdstat_auth", {}).get("calls", 0))


def _no_retry_loop(r: redis.Redis, before: Set[threading.Thread]) -> None:
    wait_until(lambda: not rstream_threads(before), 5, message="rstream threads left running")
    before, auths = command_calls(r), _auth_calls(r)
    threading.Event().wait(1.0)
    assert _auth_calls(r) == auths, "rstream kept trying to authenticate"
    assert command_calls(r) - before <= 3, "rstream kept sending commands"


@pytest.mark.parametrize("entry", ["start", "run"])
def test_wrong_password_raises_clear_error_without_retrying(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer], entry: str) -> None:
    """A wrong password: start()/run() raise an RStreamError saying authentication failed,
    at once, and nothing keeps trying."""
    before = set(threading.enumerate())  # other tests' threads are not ours
    make_user(r, [stream_names.stream, stream_names.dead_letter])
    consumer = new_consumer(consumers, user_url(redis_server, "wrong-password"), stream_names)
    with pytest.raises(RStreamError, match="authentication failed") as raised:
        consumer.start(Recorder()) if entry == "start" else consumer.run(Recorder(), stop_timeout=5)
    assert "wrong-password" not in str(raised.value)
    _no_retry_loop(r, before)


@pytest.mark.parametrize("missing", ["+xreadgroup", "key"])
def test_missing_acl_permission_fails_start_with_clear_error(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer], missing: str) -> None:
    """Without a needed command or key, start() raises an RStreamError naming the ACL."""
    before = set(threading.enumerate())  # other tests' threads are not ours
    if missing == "key":
        make_user(r, [stream_names.dead_letter])
    else:
        make_user(r, [stream_names.stream], MINIMAL_COMMANDS.replace(" +xreadgroup", ""))
    consumer = new_consumer(consumers, user_url(redis_server), stream_names)
    with pytest.raises(FatalRedisError, match="ACL permission missing") as raised:
        consumer.start(Recorder())
    assert "NOPERM" in str(raised.value) or "permission" in str(raised.value)
    _no_retry_loop(r, before)


def test_permission_missing_at_runtime_stops_run_with_clear_error(
        redis_server: EmbeddedServer, r: redis.Redis, stream_names: Any,
        consumers: List[Consumer]) -> None:
    """XACK refused (found only when the first entry is settled): run() stops and raises, the
    entry stays pending rather than being lost."""
    before = set(threading.enumerate())  # other tests' threads are not ours
    make_user(r, [stream_names.stream], MINIMAL_COMMANDS.replace(" +xack", ""))
    consumer = new_consumer(consumers, user_url(redis_server), stream_names)
    raised: List[BaseException] = []

    def run() -> None:
        try:
            consumer.run(Recorder(), stop_timeout=5)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            raised.append(exc)

    runner = threading.Thread(target=run, name="test-run")
    runner.start()
    wait_until(lambda: r.exists(stream_names.stream), 10, message="the group was not created")
    publish(r, stream_names.stream, 5)
    runner.join(15)
    assert not runner.is_alive(), "run() kept going without XACK permission"
    assert raised and isinstance(raised[0], FatalRedisError), raised
    assert "ACL permission missing" in str(raised[0])
    assert pending(r, stream_names.stream, stream_names.group) == 5
    _no_retry_loop(r, before)


# -- TLS -----------------------------------------------------------------------------------------
def test_tls_with_the_right_ca_consumes(
        tls_server: TlsServer, certs: Certs, stream_names: Any,
        consumers: List[Consumer]) -> None:
    """rediss:// with the test CA: rstream consumes over TLS."""
    r = tls_server.server.client()
    consumer = new_consumer(consumers, tls_server.url(certs.ca), stream_names)
    rec = Recorder()
    consumer.start(rec)
    ids = publish(r, stream_names.stream, 100)
    wait_until(lambda: rec.has_all(ids), 20, message="not every entry was handled over TLS")
    wait_until(lambda: pending(r, stream_names.stream, stream_names.group) == 0, 10)
    tls_clients = [c for c in r.client_list() if c.get("laddr", "").endswith(f":{tls_server.tls_port}")]
    assert len(tls_clients) >= 4, "rstream's connections did not use the TLS port"
    r.close()


def test_tls_with_a_wrong_ca_fails_start_with_clear_error(
        tls_server: TlsServer, certs: Certs, stream_names: Any,
        consumers: List[Consumer]) -> None:
    """A CA that did not sign the server's certificate: start() raises a TLS error at once."""
    before = set(threading.enumerate())  # other tests' threads are not ours
    consumer = new_consumer(consumers, tls_server.url(certs.other_ca), stream_names)
    with pytest.raises(FatalRedisError, match="TLS") as raised:
        consumer.start(Recorder())
    assert "certificate verify failed" in str(raised.value).lower()
    wait_until(lambda: not rstream_threads(before), 5, message="rstream threads left running")


# -- no password in any log line -----------------------------------------------------------------
def test_no_password_in_any_log_line(
        stream_names: Any, consumers: List[Consumer], caplog: pytest.LogCaptureFixture) -> None:
    """Every log line of a run with a password URL, an outage, a password change and the
    resulting fatal error is free of the password (and so are errors and reprs)."""
    caplog.set_level(logging.DEBUG)  # everything, from every logger (rstream, redis-py, ...)
    user_line = ["--user", USER, *acl_rules(["*"], "+@all", fences=False)]
    with EmbeddedServer(find_server_binary(), appendonly=True, args=user_line) as server:
        r = server.client()  # the default user: it survives the password change below
        url = user_url(server)
        seen: List[str] = [repr(Consumer(url, "s", "g", "c"))]
        with pytest.raises(RStreamError) as bad_url:
            Consumer(url.replace("redis://", "http://"), "s", "g", "c")
        seen.append(str(bad_url.value))
        rec = Recorder()
        consumer = new_consumer(consumers, url, stream_names)
        consumer.start(rec)
        seen.append(repr(consumer))
        ids = publish(r, stream_names.stream, 50)
        wait_until(lambda: rec.has_all(ids), 20, message="not consumed")
        server.kill()  # an outage: logged with the connection error's text
        server.start()
        ids = publish(r, stream_names.stream, 50, start=50)
        wait_until(lambda: rec.has_all(ids), 30, message="not consumed after the outage")
        # The password changes under a running consumer: a fatal error, logged and raised.
        r.execute_command("ACL", "SETUSER", USER, "resetpass", ">another-password")
        r.execute_command("CLIENT", "KILL", "USER", USER)
        wait_until(lambda: consumer.error is not None, 20, message="no fatal error after the change")
        seen.append(str(consumer.error))
    assert any("unreachable" in rec_.getMessage() for rec_ in caplog.records)
    assert any(rec_.levelno == logging.ERROR for rec_ in caplog.records)
    lines = [caplog.text, *seen]
    lines += [str(rec_.args) for rec_ in caplog.records]
    leaked = [line for line in lines if PASSWORD in line or "another-password" in line]
    assert not leaked, leaked
