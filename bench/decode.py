"""Child program of case 0: decode_entries of one 500-entry reply, compiled twin against pure Python.

    python -m bench.decode [--seconds S]

The reply is what hiredis hands rstream for XREADGROUP COUNT 500 (lists of bytes); both modules are
imported directly (not through the selector) so one process times both. Best of several timed
rounds, since a shared machine only ever makes a round slower; the garbage collector stays on.

It also times the whole read path from the reply's bytes: hiredis's parse then the compiled
`decode_entries` (what rstream did before `rstream.wire`), against the compiled
`decode_stream_reply` of the same bytes (what its reader does now).
"""
from __future__ import annotations

import argparse
import gc
import timeit
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional

import hiredis

from bench.common import BATCH, PAYLOAD, emit

ROUNDS = 5


def make_reply(count: int = BATCH) -> List[List[Any]]:
    """`count` entries shaped like those bench.common.prefill writes, as hiredis parses them."""
    return [[b"1700000000000-%d" % i, [b"n", b"%d" % i, b"user", b"user-%05d" % i, b"payload", PAYLOAD]]
            for i in range(count)]


def reply_bytes(reply: List[List[Any]]) -> bytes:
    """The same reply as the server sends it (RESP2): ``[[stream, entries]]``."""
    def bulk(value: bytes) -> bytes:
        return b"$%d\r\n%b\r\n" % (len(value), value)

    def array(items: List[bytes]) -> bytes:
        return b"*%d\r\n" % len(items) + b"".join(items)

    return array([array([bulk(b"bench"), array([
        array([bulk(entry_id), array([bulk(x) for x in fields])]) for entry_id, fields in reply])])])


def time_per_entry(work: Callable[[], Any], entries: int, seconds: float) -> float:
    """Best seconds per entry over ROUNDS rounds of about `seconds / ROUNDS` each."""
    # timeit turns the garbage collector off; rstream runs with it on, and 500 Messages and their
    # dicts per batch are enough allocations to trigger young-generation collections.
    timer = timeit.Timer(work, setup=gc.enable)
    loops, took = timer.autorange()
    loops = max(1, int(loops * (seconds / ROUNDS) / took))
    return min(timer.repeat(ROUNDS, loops)) / loops / entries


def time_decode(module: ModuleType, reply: List[List[Any]], seconds: float) -> float:
    return time_per_entry(lambda: module.decode_entries(reply, "bench", 1), len(reply), seconds)


def time_read_paths(fast: ModuleType, reply: List[List[Any]], seconds: float) -> Dict[str, float]:
    """Seconds per entry from the reply's bytes to Messages, both ways."""
    raw = reply_bytes(reply)

    def parsed_then_decoded() -> Any:
        parser = hiredis.Reader()
        parser.feed(raw)
        return fast.decode_entries(parser.gets()[0][1], "bench", 1)

    def from_the_bytes() -> Any:
        return fast.decode_stream_reply(raw, 0, "bench", 1)

    assert len(from_the_bytes()[0]) == len(parsed_then_decoded()[0]) == len(reply)
    return {"hiredis_then_decode_us_per_entry": time_per_entry(parsed_then_decoded, len(reply), seconds) * 1e6,
            "from_bytes_us_per_entry": time_per_entry(from_the_bytes, len(reply), seconds) * 1e6}


def measure(seconds: float) -> Dict[str, Any]:
    from rstream import _fast_py

    reply = make_reply()
    result: Dict[str, Any] = {"entries": len(reply), "pure_us_per_entry": time_decode(_fast_py, reply, seconds) * 1e6}
    try:
        from rstream import _fast
    except ImportError as exc:
        result["compiled_error"] = str(exc)
        return result
    result["compiled_us_per_entry"] = time_decode(_fast, reply, seconds) * 1e6
    result["speedup"] = result["pure_us_per_entry"] / result["compiled_us_per_entry"]
    result.update(time_read_paths(_fast, reply, seconds))
    return result


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per module")
    emit(measure(parser.parse_args(argv).seconds))


if __name__ == "__main__":
    main()
