"""Helpers shared by the integration tests: waiting on conditions, unique names, child processes.

Tests wait on observable state with a monotonic deadline, never with bare sleeps: a sleep is either
too short on a loaded CI box or wastes time everywhere else.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, TypeVar, Union

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count(1)
_RUN_ID = uuid.uuid4().hex[:6]


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str = "condition not met",
) -> T:
    """Poll `predicate` until it returns something truthy and return that value.

    Raises AssertionError with `message` (and the last falsy value) when `timeout` seconds pass.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (after {timeout} s; last value: {value!r})")
        time.sleep(interval)


def unique_name(prefix: str = "s") -> str:
    """A stream/group/consumer name no other test in this run (or an earlier run) uses."""
    return f"{prefix}-{_RUN_ID}-{next(_counter)}"


class SpawnedProcess(subprocess.Popen):  # type: ignore[type-arg]
    """A Popen whose stdout and stderr go to a file, so a chatty child never blocks on a full
    pipe that nobody reads, and its output can still be shown when a test fails."""

    def __init__(self, cmd: Sequence[str], log_path: Path, **kwargs: Any) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            super().__init__(list(cmd), stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, **kwargs)

    def output(self) -> str:
        """Everything the child printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def spawn_consumer(
    source: Union[str, Path],
    *args: str,
    env: Optional[Mapping[str, str]] = None,
    log_path: Optional[Path] = None,
    **popen_kwargs: Any,
) -> SpawnedProcess:
    """Run Python code in a child process (a `str` is code for `-c`, a `Path` is a script file).

    The child inherits this environment plus `env`, imports this checkout's `rstream` first
    (PYTHONPATH), and is unbuffered so its output is in the log file as it happens. Tests that
    SIGKILL consumers use it; the `spawn` fixture kills whatever a test leaves running.
    """
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH")])
    )
    child_env["PYTHONUNBUFFERED"] = "1"
    child_env.update(env or {})
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="rstream-child-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    program = [str(source)] if isinstance(source, Path) else ["-c", source]
    return SpawnedProcess([sys.executable, *program, *args], log_path, env=child_env, **popen_kwargs)


def add_entries(r: Any, stream: str, count: int, fields: Optional[Mapping[bytes, bytes]] = None) -> List[str]:
    """XADD `count` entries (fields {b"n": index} unless given) in one pipeline; their ids."""
    pipe = r.pipeline(transaction=False)
    for n in range(count):
        pipe.xadd(stream, dict(fields) if fields else {b"n": str(n).encode()})
    return [i.decode() for i in pipe.execute()]
