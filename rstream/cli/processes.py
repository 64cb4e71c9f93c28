"""`rstream consume --processes N`: a supervisor of N consumer processes.

Each child is ``python -m rstream consume ...`` with the same flags and its own consumer name,
``NAME-1`` .. ``NAME-N``: stable, so a child started again replays its own pending entries at
once instead of waiting for another to find it dead. Children run in their own session, so a
Ctrl-C on the terminal reaches the supervisor only, which forwards one SIGTERM to each (each
drains); a second signal is forwarded too (each child exits at once, its unfinished entries
stay pending). A child that crashes (killed, or an exit code other than 0, 1 or 2) is started
again after a capped exponential backoff, reset once it has run for `STABLE_S`. A child that
exits 1 (a fatal error: ACL, wrong key type, its name taken) or 2 (a usage error) would only
fail again: the supervisor stops the others and exits with that code. Exit 0 when every child
stopped cleanly.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from ..backoff import Backoff
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .consume import SUPERVISOR_ENV

log = logging.getLogger("rstream")

STABLE_S = 30.0          # a child that ran this long has its restart backoff reset
POLL_S = 0.1             # how often the supervisor looks at its children
KILL_GRACE_S = 5.0       # past --stop-timeout, a child still draining is SIGKILLed
RESTART_BASE_S = 0.5     # the first restart waits up to this, doubling to RESTART_CAP_S
RESTART_CAP_S = 30.0
_DONE_CODES = (EXIT_FAILED, EXIT_USAGE)  # would fail again if restarted


class Child:
    """One supervised consumer process, started again under the same name when it crashes."""

    def __init__(self, name: str, argv: List[str], env: Dict[str, str]) -> None:
        self.name = name
        self._argv = argv
        self._env = env
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.started_at = 0.0
        self.backoff = Backoff(base_s=RESTART_BASE_S, cap_s=RESTART_CAP_S)
        self.restart_at: Optional[float] = None  # monotonic: when to start it again
        self.code: Optional[int] = None          # its last exit code, once it is done

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "rstream", *self._argv], env=self._env,
                                     start_new_session=True)
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("rstream: started consumer %s (pid %d)", self.name, self.proc.pid)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.running:
            assert self.proc is not None
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:
                pass


def child_argv(argv: List[str], name: str) -> List[str]:
    """The supervisor's own arguments less ``--processes N``, with the child's name."""
    out: List[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token == "--processes":
            skip = True
        elif not token.startswith("--processes="):
            out.append(token)
    return [*out, "--consumer", name]  # the last --consumer wins


def supervise(args: argparse.Namespace, argv: List[str]) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("RSTREAM_PROCESSES", "RSTREAM_CONSUMER")}
    env[SUPERVISOR_ENV] = str(os.getpid())
    children = [Child(name, child_argv(argv, name), env)
                for name in (f"{args.consumer}-{n}" for n in range(1, args.processes + 1))]
    stop = _Stop(children)
    previous = {sig: signal.signal(sig, stop.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for child in children:
            child.start()
        return _watch(children, stop, args.stop_timeout)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for child in children:  # only after an error in the supervisor itself
            child.signal(signal.SIGKILL)


class _Stop:
    """The supervisor's stop: the signals received, forwarded to every child."""

    def __init__(self, children: List[Child]) -> None:
        self._children = children
        self.requested = False
        self.at = 0.0
        self.code = EXIT_OK
        self.wake = threading.Event()  # set by a signal: the watch loop looks at once

    def on_signal(self, signum: int, frame: Any) -> None:
        if not self.requested:
            log.info("rstream: %s received; stopping %d consumers (send it again to make them "
                     "exit at once)", signal.Signals(signum).name, len(self._children))
        self.begin(EXIT_OK)
        self.wake.set()

    def begin(self, code: int) -> None:
        """Stop every child (each drains); the supervisor will exit with `code` unless it is
        0 and a child then fails its stop. Each call forwards one more SIGTERM."""
        if not self.requested:
            self.requested, self.at, self.code = True, time.monotonic(), code
        for child in self._children:
            child.signal(signal.SIGTERM)


def _watch(children: List[Child], stop: _Stop, stop_timeout: float) -> int:
    while True:
        now = time.monotonic()
        for child in children:
            _look_after(child, stop, now)
        if stop.requested and not any(c.running for c in children):
            break
        if all(c.code == EXIT_OK for c in children):
            break
        if stop.requested and now - stop.at > stop_timeout + KILL_GRACE_S:
            for child in children:
                if child.running:
                    log.error("rstream: consumer %s still running %.0f s after the stop; killing "
                              "it (its entries stay pending)", child.name, now - stop.at)
                    child.signal(signal.SIGKILL)
        stop.wake.wait(POLL_S)
        stop.wake.clear()
    if stop.code != EXIT_OK:
        return stop.code
    failed = [c for c in children if c.code not in (None, EXIT_OK)]
    return EXIT_FAILED if failed else EXIT_OK


def _look_after(child: Child, stop: _Stop, now: float) -> None:
    """Note a child's exit, and start it again when it crashed and its backoff is over."""
    if child.proc is None or child.code is not None:
        return
    if child.restart_at is not None:
        if not stop.requested and now >= child.restart_at:
            child.start()
        return
    code = child.proc.poll()
    if code is None:
        return
    if stop.requested or code == EXIT_OK:
        child.code = code
        return
    if code in _DONE_CODES:
        log.error("rstream: consumer %s exited with code %d; stopping the others", child.name, code)
        child.code = code
        stop.begin(code)
        return
    if now - child.started_at >= STABLE_S:
        child.backoff = child.backoff.reset()
    delay = child.backoff.delay()
    child.backoff = child.backoff.failed()
    child.restart_at = now + delay
    log.warning("rstream: consumer %s (pid %d) exited with %s; starting it again in %.1f s",
                child.name, child.proc.pid,
                f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}", delay)
