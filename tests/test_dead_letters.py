"""Dead letters (`rstream.deadletters`, `rstream dead-letters`): listing what a real Consumer
dead-lettered, and replaying it to its source stream. Every replay test counts, by an original
field, what is in the source and what is in the dead-letter stream: never both, never neither,
never twice, even when the replay is SIGKILLed half-way.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import pytest
import redis
from redis.cluster import RedisCluster

import rstream
from clusterkit import local_cluster
from helpers import REPO_ROOT, unique_name, wait_until
from rstream import deadletters
from rstream.deadletters import NotADeadLetter, ReplayError
from rstream.cli import main
from test_cli import run_cli

DEADLINE_S = 30.0
FAST: Dict[str, Any] = dict(receive_interval=100, heartbeat_interval=100, group_start_id="0",
                            max_attempts=1)
GROUP, NAME = "billing", "billing-1"
Fields = Dict[bytes, bytes]


def publish(r: Any, stream: str, count: int, **extra: bytes) -> Dict[str, Fields]:
    """`count` entries with field n = their index (and `extra`): id -> fields, in id order."""
    pipe = r.pipeline(transaction=False)
    made = [{b"n": str(n).encode(), **{k.encode(): v for k, v in extra.items()}} for n in range(count)]
    for fields in made:
        pipe.xadd(stream, fields)
    return {entry_id.decode(): fields for entry_id, fields in zip(pipe.execute(), made)}


def poison(message: rstream.Message) -> None:
    """Fails the entries whose n is a multiple of 3."""
    if int(message.fields[b"n"]) % 3 == 0:
        raise ValueError(f"poison {message.fields[b'n'].decode()}")


def dead_letter(redis_url: str, r: Any, streams: Sequence[str], dlq: str, expected: int,
                handler: Callable[[rstream.Message], None] = poison, **options: Any) -> None:
    """Run a real Consumer (max_attempts=1) over `streams` until `expected` entries are in `dlq`
    and nothing is pending."""
    with rstream.Consumer(redis_url, streams=list(streams), group=GROUP, consumer_name=NAME,
                          dead_letter_stream=dlq, **{**FAST, **options}) as consumer:
        consumer.start(handler)
        wait_until(lambda: r.xlen(dlq) == expected and all(
            r.xpending(s, GROUP)["pending"] == 0 for s in streams), DEADLINE_S,
            message="not dead-lettered")


def id_key(entry_id: str) -> Tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def cli_process(*args: str, output: Any = subprocess.PIPE) -> "subprocess.Popen[str]":
    """`python -m rstream ARGS` started, not waited for (see test_cli.run_cli); its stdout and
    stderr go to `output`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "rstream", *args], stdout=output,
                            stderr=subprocess.STDOUT if output is not subprocess.PIPE else output,
                            text=True, env=env)


def in_source(r: Any, stream: str, after: str = "-") -> List[Tuple[str, Fields]]:
    return [(i.decode(), f) for i, f in r.xrange(stream, after)]


@pytest.fixture
def names() -> Tuple[str, str]:
    return unique_name("orders"), unique_name("dlq")


# -- listing ------------------------------------------------------------------------------------
def test_list_matches_what_a_consumer_dead_lettered(r: redis.Redis, redis_url: str,
                                                    names: Tuple[str, str]) -> None:
    """Each dead letter lists its source, original id, group, consumer, attempt, error and the
    original fields only (an original field named rstream-* that is not rstream's stays)."""
    stream, dlq = names
    written = publish(r, stream, 30, **{"rstream-trace": b"t1", "bin": b"\xff\x00"})
    dead_letter(redis_url, r, [stream], dlq, 10)
    letters = deadletters.list_dead_letters(r, dlq)
    failed = [i for i, f in written.items() if int(f[b"n"]) % 3 == 0]
    assert [x.id for x in letters] == [i.decode() for i, _ in r.xrange(dlq)]
    assert sorted((x.original_id for x in letters), key=id_key) == failed  # workers finish out of order
    for letter in letters:
        original = written[letter.original_id]
        assert (letter.source, letter.group, letter.consumer, letter.attempt) == (stream, GROUP, NAME, 1)
        assert letter.error == f"ValueError: poison {original[b'n'].decode()}"
        assert letter.fields == original


def test_cli_lists_a_table_and_json_lines(r: redis.Redis, redis_url: str,
                                          names: Tuple[str, str]) -> None:
    """`rstream dead-letters` prints a table (error truncated) and `--json` one object a line;
    `replay --json` prints one object per replayed entry; flags read RSTREAM_<DEST>."""
    stream, dlq = names
    written = publish(r, stream, 3)

    def long_error(message: rstream.Message) -> None:
        raise RuntimeError("x" * 200 + "\nsecond line")

    dead_letter(redis_url, r, [stream], dlq, 3, long_error)
    letters = deadletters.list_dead_letters(r, dlq)
    table = run_cli("dead-letters", "--redis", redis_url, "--stream", dlq)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "SOURCE", "ORIGINAL", "ID", "ATTEMPT", "ERROR"]
    for line, letter in zip(lines[1:], letters):
        assert line.split()[:4] == [letter.id, stream, letter.original_id, "1"]
        assert line.endswith("RuntimeError: " + "x" * 43 + "...")
    assert lines[-1] == f"3 dead letters in {dlq!r}"
    listed = run_cli("dead-letters", "list", "--json", "--redis", redis_url, "--stream", dlq)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(x["id"], x["original_id"], x["fields"]) for x in rows] == [
        (x.id, x.original_id, {"n": written[x.original_id][b"n"].decode()}) for x in letters]
    assert rows[0]["error"] == "RuntimeError: " + "x" * 200 + "\nsecond line"
    replayed = run_cli("dead-letters", "replay", "--json", "--yes", "--redis", redis_url,
                       env={"RSTREAM_COUNT": "2", "RSTREAM_DEAD_LETTER_STREAM": dlq})
    moved = [json.loads(line) for line in replayed.stdout.splitlines()]
    assert [(x["id"], x["source"]) for x in moved] == [(x.id, stream) for x in letters[:2]]
    assert [x["new_id"] for x in moved] == [i for i, _ in in_source(r, stream)[3:]]


# -- replaying ----------------------------------------------------------------------------------
def test_replay_puts_entries_back_and_a_consumer_handles_them(
        r: redis.Redis, redis_url: str, names: Tuple[str, str]) -> None:
    """Each dead letter goes back to its source with its original fields (in order; even one
    named like rstream's own), leaves the dead-letter stream, and a consumer of the group then
    handles each once."""
    stream, dlq = names
    written = publish(r, stream, 30, **{"rstream-stream": b"mine", "bin": b"\xff\x00"})
    dead_letter(redis_url, r, [stream], dlq, 10)
    letters = deadletters.list_dead_letters(r, dlq)
    assert {x.source for x in letters} == {stream}  # not the original field of that name
    last_original = list(written)[-1]
    results = deadletters.replay(r, dlq)
    assert [dead_id for dead_id, _ in results] == [x.id for x in letters]
    back = in_source(r, stream, "(" + last_original)
    assert [new_id for _, new_id in results] == [i for i, _ in back]
    assert [list(f.items()) for _, f in back] == [list(written[x.original_id].items()) for x in letters]
    assert r.xlen(dlq) == 0
    handled: List[bytes] = []
    with rstream.Consumer(redis_url, stream=stream, group=GROUP, consumer_name=NAME,
                          **FAST) as consumer:
        consumer.start(lambda m: handled.append(m.fields[b"n"]))
        wait_until(lambda: len(handled) >= 10 and r.xpending(stream, GROUP)["pending"] == 0,
                   DEADLINE_S, message="replayed entries not handled")
    assert sorted(handled) == sorted(written[x.original_id][b"n"] for x in letters)


def test_count_range_and_source_filters(r: redis.Redis, redis_url: str) -> None:
    """list and replay take at most `count`, only ids in start..end, only entries from `source`;
    the rest stay where they are."""
    a, b, dlq = unique_name("a"), unique_name("b"), unique_name("dlq")
    publish(r, a, 6)
    publish(r, b, 6)
    dead_letter(redis_url, r, [a, b], dlq, 4)
    ids = [x.id for x in deadletters.list_dead_letters(r, dlq)]
    by_source = {x.id: x.source for x in deadletters.list_dead_letters(r, dlq)}
    assert sorted(by_source.values()) == [a, a, b, b]
    assert [x.id for x in deadletters.list_dead_letters(r, dlq, count=3)] == ids[:3]
    assert [x.id for x in deadletters.list_dead_letters(r, dlq, ids[1], ids[2])] == ids[1:3]
    assert [x.id for x in deadletters.list_dead_letters(r, dlq, "(" + ids[1])] == ids[2:]
    assert [x.id for x in deadletters.list_dead_letters(r, dlq, source=b)] == [
        i for i in ids if by_source[i] == b]
    assert [d for d, _ in deadletters.replay(r, dlq, count=1)] == ids[:1]
    assert [d for d, _ in deadletters.replay(r, dlq, source=b, count=1)] == [
        next(i for i in ids[1:] if by_source[i] == b)]
    left = [x.id for x in deadletters.list_dead_letters(r, dlq)]
    assert [d for d, _ in deadletters.replay(r, dlq, start=left[1], end=left[1])] == [left[1]]
    remaining = [i for i in left if i != left[1]]
    assert [x.id for x in deadletters.list_dead_letters(r, dlq)] == remaining
    assert r.xlen(a) + r.xlen(b) == 12 + 3
    with redis.Redis.from_url(redis_url, decode_responses=True) as text:
        letter, raw = (deadletters.list_dead_letters(c, dlq, count=1)[0] for c in (text, r))
        assert letter.id == raw.id == remaining[0] and letter.source == raw.source
        assert letter.fields == {k.decode(): v.decode() for k, v in raw.fields.items()}
        assert deadletters.replay(text, dlq, ids=[letter.id])[0][1] == text.xrange(letter.source)[-1][0]


def test_replaying_an_id_twice_does_not_duplicate(r: redis.Redis, redis_url: str,
                                                  names: Tuple[str, str]) -> None:
    """The second replay of an id (in one call, a later call, or a racing replay) finds it gone
    and says so: each dead letter lands in its source exactly once."""
    stream, dlq = names
    publish(r, stream, 600)
    dead_letter(redis_url, r, [stream], dlq, 200, delete_on_ack=True)
    first = deadletters.list_dead_letters(r, dlq, count=1)[0].id
    moved = deadletters.replay(r, dlq, ids=[first, first])
    assert moved[0][1] is not None and moved[1] == (first, None)
    assert deadletters.replay(r, dlq, ids=[first]) == [(first, None)]
    results: List[List[Tuple[str, Any]]] = []
    racers = [threading.Thread(target=lambda: results.append(deadletters.replay(r, dlq)))
              for _ in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(DEADLINE_S)
    new_ids = [new for result in results for _, new in result if new is not None]
    assert len(new_ids) == 199 and r.xlen(dlq) == 0
    values = [f[b"n"] for _, f in in_source(r, stream)]
    assert len(values) == len(set(values)) == 200


def test_replay_stops_at_the_dead_letters_present_when_it_started(
        r: redis.Redis, redis_url: str, names: Tuple[str, str]) -> None:
    """An entry whose handler fails again while the replay runs is dead-lettered anew; the
    replay does not chase it round for ever: it replays each dead letter it started with once
    (more than a page of them, so it reads on after the new one arrived) and ends."""
    stream, dlq = names
    count = deadletters.PAGE + 50
    publish(r, stream, count)

    def always_fail(message: rstream.Message) -> None:
        raise ValueError("still broken")

    with rstream.Consumer(redis_url, stream=stream, group=GROUP, consumer_name=NAME,
                          dead_letter_stream=dlq, **FAST) as consumer:
        consumer.start(always_fail)
        wait_until(lambda: r.xlen(dlq) == count, DEADLINE_S, message="not dead-lettered")
        before = [x.id for x in deadletters.list_dead_letters(r, dlq)]
        replaying = deadletters.iter_replay(r, dlq)
        first = next(replaying)
        wait_until(lambda: consumer.stats().dead_lettered == count + 1, DEADLINE_S,
                   message="the replayed entry was not dead-lettered again")
        assert [first.dead_letter_id] + [x.dead_letter_id for x in replaying] == before
        wait_until(lambda: consumer.stats().dead_lettered == 2 * count, DEADLINE_S,
                   message="replayed entries not dead-lettered again")
    again = deadletters.list_dead_letters(r, dlq)
    assert len(again) == count and min(id_key(x.id) for x in again) > id_key(before[-1])
    assert sorted(x.fields[b"n"] for x in again) == sorted(str(n).encode() for n in range(count))


def test_sigkilled_replay_loses_and_duplicates_nothing(r: redis.Redis, redis_url: str,
                                                       names: Tuple[str, str], tmp_path: Path) -> None:
    """`rstream dead-letters replay` SIGKILLed half-way through 2,000 entries leaves each
    original in exactly one of the two streams; a second run brings every one back once."""
    stream, dlq = names
    written = publish(r, stream, 2000)
    dead_letter(redis_url, r, [stream], dlq, 2000, handler=_always_fails, delete_on_ack=True)
    n_of = {entry_id: fields[b"n"] for entry_id, fields in written.items()}
    with (tmp_path / "replay.log").open("w") as log:  # read by nobody: a pipe would fill up
        replay = cli_process("dead-letters", "replay", "--redis", redis_url, "--stream", dlq,
                             "--yes", output=log)
    try:
        wait_until(lambda: r.xlen(stream) >= 200, DEADLINE_S, interval=0.0005,
                   message="the replay moved nothing")
    finally:
        replay.send_signal(signal.SIGKILL)
        replay.wait(DEADLINE_S)
    in_dlq = [n_of[f[b"rstream-id"].decode()] for _, f in r.xrange(dlq)]
    back = [f[b"n"] for _, f in r.xrange(stream)]
    assert 0 < len(back) < 2000, "the replay was not killed half-way"
    print(f"killed after {len(back)} of 2000 replays")
    assert len(set(in_dlq)) == len(in_dlq) and len(set(back)) == len(back)
    assert not set(in_dlq) & set(back) and len(in_dlq) + len(back) == 2000
    rest = run_cli("dead-letters", "replay", "--redis", redis_url, "--stream", dlq, "--yes")
    assert rest.returncode == 0, rest.stderr
    assert rest.stdout.splitlines()[-1] == f"replayed {len(in_dlq)} dead letters from {dlq!r}"
    values = sorted(f[b"n"] for _, f in r.xrange(stream))
    assert values == sorted(n_of.values()) and r.xlen(dlq) == 0


def _always_fails(message: rstream.Message) -> None:
    raise ValueError("down")


# -- what replay refuses to touch ---------------------------------------------------------------
def test_entries_rstream_did_not_write_are_named_and_left_alone(
        r: redis.Redis, redis_url: str, names: Tuple[str, str]) -> None:
    """An entry without rstream's fields, or with them not last, stops list and replay with an
    error naming it; the dead letters before it are replayed, it stays where it is."""
    stream, dlq = names
    publish(r, stream, 4)
    dead_letter(redis_url, r, [stream], dlq, 2, delete_on_ack=True)
    foreign = r.xadd(dlq, {"x": "y"}).decode()
    with pytest.raises(NotADeadLetter, match=f"entry {foreign} was not written by rstream"):
        deadletters.list_dead_letters(r, dlq)
    with pytest.raises(NotADeadLetter, match=foreign):
        list(deadletters.iter_replay(r, dlq))
    assert r.xlen(stream) == 2 and [i.decode() for i, _ in r.xrange(dlq)] == [foreign]
    r.xdel(dlq, foreign)
    meta = {k: "v" for k in deadletters.META} | {"rstream-stream": stream, "rstream-attempt": "1"}
    shuffled = r.xadd(dlq, {"n": "9", **meta, "after": "last"}).decode()
    assert deadletters.list_dead_letters(r, dlq)[0].fields == {b"n": b"9", b"after": b"last"}
    with pytest.raises(NotADeadLetter, match=shuffled):
        deadletters.replay(r, dlq)
    assert r.xlen(stream) == 2 and r.xlen(dlq) == 1


def test_a_refused_write_moves_nothing(r: redis.Redis, redis_url: str,
                                       names: Tuple[str, str]) -> None:
    """A source key that is not a stream (XADD fails), or a user who may XADD but not XDEL
    (the script asks the ACL first, Redis 7+): the entry stays in the dead-letter stream only."""
    stream, dlq = names
    publish(r, stream, 3)
    dead_letter(redis_url, r, [stream], dlq, 1, delete_on_ack=True)
    r.delete(stream)
    r.set(stream, "not a stream")
    with pytest.raises(rstream.RStreamError, match="WRONGTYPE"):  # Redis 6.2 wraps it: ServerError
        deadletters.replay(r, dlq)
    assert r.xlen(dlq) == 1 and r.get(stream) == b"not a stream"
    r.delete(stream)
    if int(r.info("server")["redis_version"].split(".")[0]) < 7:
        pytest.skip("redis.acl_check_cmd came with Redis 7")
    r.execute_command("ACL", "SETUSER", "replayer", "on", ">pw", "~*", "+@all", "-xdel")
    with redis.Redis.from_url(redis_url.replace("redis://", "redis://replayer:pw@")) as limited:
        with pytest.raises(ReplayError, match=f"does not let this user run XDEL on {dlq!r}"):
            deadletters.replay(limited, dlq)
    assert r.xlen(dlq) == 1 and r.exists(stream) == 0


def test_cluster_replays_within_a_slot_and_names_a_cross_slot_source() -> None:
    """On Redis Cluster a dead letter replays when its stream and the dead-letter stream share
    a hash tag; one whose source is in another slot is named and left alone."""
    tag = unique_name("t")
    stream, dlq, other = "{%s}orders" % tag, "{%s}:dlq" % tag, unique_name("other")
    with local_cluster(3) as cluster:
        assert cluster.keyslot(other) != cluster.keyslot(dlq)
        publish(cluster, stream, 6)
        dead_letter_on(cluster, stream, dlq)
        assert [x.source for x in deadletters.list_dead_letters(cluster, dlq)] == [stream, stream]
        assert len(deadletters.replay(cluster, dlq)) == 2 and cluster.xlen(stream) == 2
        meta = {k: "v" for k in deadletters.META} | {"rstream-stream": other, "rstream-attempt": "1"}
        cross = cluster.xadd(dlq, {"n": "1", **meta}).decode()
        with pytest.raises(ReplayError, match=f"{dlq!r} and its source {other!r} hash to different"):
            deadletters.replay(cluster, dlq)
        assert [i.decode() for i, _ in cluster.xrange(dlq)] == [cross]
        assert cluster.exists(other) == 0


def dead_letter_on(cluster: RedisCluster, stream: str, dlq: str) -> None:
    with rstream.Consumer(cluster, stream=stream, group=GROUP, consumer_name=NAME,
                          dead_letter_stream=dlq, delete_on_ack=True, **FAST) as consumer:
        consumer.start(poison)
        wait_until(lambda: cluster.xlen(dlq) == 2 and cluster.xlen(stream) == 0, DEADLINE_S,
                   message="not dead-lettered")


# -- the command line: missing streams, usage and runtime errors ----------------------------------
def test_missing_dead_letter_stream_lists_nothing_and_exits_0(
        r: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """No dead-letter stream means no dead letters (nothing has failed yet): list says so,
    --json prints nothing, replay moves nothing, all exit 0, and no key is created; an
    existing empty stream is not called missing."""
    missing = unique_name("none")
    assert deadletters.list_dead_letters(r, missing) == [] and deadletters.replay(r, missing) == []
    flags = ["--redis", redis_url, "--stream", missing]
    for args, out in (([], f"no dead letters in {missing!r} (no such stream)\n"), (["--json"], ""),
                      (["replay", "--yes"], f"replayed 0 dead letters from {missing!r}\n")):
        assert main(["dead-letters", *args, *flags]) == 0
        assert capsys.readouterr() == (out, "")
    assert r.exists(missing) == 0
    r.xdel(missing, r.xadd(missing, {"n": "1"}))
    assert main(["dead-letters", *flags]) == 0
    assert capsys.readouterr().out == f"no dead letters in {missing!r}\n"


BAD_FLAGS = [
    ((), "rstream dead-letters: error: the following arguments are required: --stream/--dead-letter-stream"),
    (("--stream", "d", "--start", "abc"), "argument --start: not a stream id: 'abc'"),
    (("--stream", "d", "--count", "0"), "argument --count: must be positive, got 0"),
    (("lst", "--stream", "d"), "argument action: invalid choice: 'lst'"),
    (("replay", "--stream", "d"),
     "rstream dead-letters: error: replay moves dead letters back to their source streams: add --yes"),
    (("list", "--stream", "d", "--id", "1-0"), "--id goes with replay"),
    (("replay", "--yes", "--stream", "d", "--id", "1-0", "--count", "3"), "--id cannot be combined"),
    (("replay", "--yes", "--stream", "d", "--id", "12"), "argument --id: not a stream entry id: '12'"),
    (("--stream", "d", "--bogus"), "unrecognized arguments: --bogus"),
]


def test_bad_flags_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Each usage error exits 2 with one line on stderr, before any connection is tried (the
    server named is not there); the same from a real `python -m rstream` process."""
    url = f"redis://127.0.0.1:{_free_port()}/0"
    for args, want in BAD_FLAGS:
        assert main(["dead-letters", "--redis", url, *args]) == 2, want
        out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1 and want in err, (want, out, err)
    run = cli_process("dead-letters", "replay", "--redis", url, "--stream", "d")
    out, err = run.communicate(timeout=DEADLINE_S)
    assert (run.returncode, out, len(err.splitlines())) == (2, "", 1) and "add --yes" in err


def test_runtime_errors_exit_1_with_one_line(r: redis.Redis, redis_url: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A key of another type, an entry rstream did not write, and an unreachable server
    (password masked; in a real process) each exit 1 with one line on stderr."""
    r.set("a-string", "x")
    r.xadd("foreign", {"x": "y"})
    for key, want in (("a-string", "WRONGTYPE"),
                      ("foreign", "was not written by rstream: it has no rstream-stream")):
        assert main(["dead-letters", "--redis", redis_url, "--stream", key]) == 1
        out, err = capsys.readouterr()
        assert len(err.splitlines()) == 1 and err.startswith("rstream: error: ") and want in err, err
    port = _free_port()
    run = cli_process("dead-letters", "--redis", f"redis://u:s3cret@127.0.0.1:{port}/0", "--stream", "d")
    out, err = run.communicate(timeout=DEADLINE_S)
    assert run.returncode == 1 and len(err.splitlines()) == 1, (out, err)
    assert err.startswith(f"rstream: error: cannot reach Redis at redis://u:***@127.0.0.1:{port}/0")
    assert "s3cret" not in out + err


def _free_port() -> int:
    with socket.socket() as s:  # free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
