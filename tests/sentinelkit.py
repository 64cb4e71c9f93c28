"""A real Redis Sentinel for tests: the server binary run in sentinel mode on a free port.

`SentinelProcess` watches one or more masters; `sentinel` is a fixture watching the test's
`redis_server` as "mymaster" (conftest.py imports it, so any test may name it). Failover tests
can start replicas, lower `down_after_ms` and wait on `master_address()` to change.
"""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import redis
import redis.sentinel

from helpers import wait_until
from rstream.embedded import EmbeddedServer

HOST = "127.0.0.1"
MASTER_NAME = "mymaster"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 5  # a picked free port can be taken before the sentinel binds it

Address = Tuple[str, int]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class SentinelProcess:
    """One sentinel on 127.0.0.1 watching `masters` (name -> address), quorum 1 unless given.

    `down_after_ms` and `failover_timeout_ms` are the sentinel's own settings; the defaults are
    short so a failover test does not wait the production 30 s / 3 min.
    """

    def __init__(self, binary: str, directory: Path, masters: Dict[str, Address],
                 down_after_ms: int = 1000, failover_timeout_ms: int = 5000,
                 quorum: int = 1) -> None:
        self.binary = binary
        self.directory = directory
        self.masters = dict(masters)
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.port = 0
        self._proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def address(self) -> Address:
        return HOST, self.port

    @property
    def log_path(self) -> Path:
        return self.directory / "sentinel.log"

    def start(self) -> "SentinelProcess":
        """Start and return once the sentinel answers for every master it watches."""
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self.port = _free_port()
            if self._spawn_and_wait(may_retry=attempt < _PORT_ATTEMPTS):
                return self
        raise AssertionError("unreachable: the last attempt raises")  # pragma: no cover

    def _config(self) -> str:
        lines = [f"port {self.port}", f"bind {HOST}", "daemonize no", f"dir {self.directory}",
                 f"logfile {self.log_path}"]
        for name, (host, port) in self.masters.items():
            # `monitor` must come before the per-master settings that name it.
            lines += [f"sentinel monitor {name} {host} {port} {self.quorum}",
                      f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                      f"sentinel failover-timeout {name} {self.failover_timeout_ms}"]
        return "\n".join(lines) + "\n"

    def _spawn_and_wait(self, may_retry: bool) -> bool:
        # The sentinel rewrites its config file as it learns: each start gets a fresh one.
        conf = self.directory / f"sentinel-{self.port}.conf"
        conf.write_text(self._config())
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen([self.binary, str(conf), "--sentinel"],
                                          stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                if may_retry and "in use" in self.log_tail():
                    return False
                raise SentinelUnsupported(
                    f"{self.binary} --sentinel exited with {self._proc.returncode}; "
                    f"log tail:\n{self.log_tail()}")
            if all(self.master_address(name) for name in self.masters):
                return True
            time.sleep(0.01)
        self.close()
        raise AssertionError(f"sentinel on port {self.port} did not answer within "
                             f"{START_TIMEOUT_S} s; log tail:\n{self.log_tail()}")

    def client(self, **kwargs: Any) -> redis.Redis:
        """A plain client to the sentinel itself (SENTINEL commands)."""
        return redis.Redis(host=HOST, port=self.port, socket_timeout=2, decode_responses=True,
                           **kwargs)

    def master_address(self, name: str = MASTER_NAME) -> Optional[Address]:
        """The address the sentinel gives for `name` now, or None if it does not answer."""
        client = self.client()
        try:
            reply = client.execute_command("SENTINEL", "get-master-addr-by-name", name)
        except redis.RedisError:
            return None
        finally:
            client.close()
        return (str(reply[0]), int(reply[1])) if reply else None

    def manager(self, **kwargs: Any) -> redis.sentinel.Sentinel:
        """A redis-py `Sentinel` that asks this sentinel; `kwargs` go to the master's clients."""
        return redis.sentinel.Sentinel([self.address], socket_timeout=2, **kwargs)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> "SentinelProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SentinelUnsupported(AssertionError):
    """The binary would not run in sentinel mode."""


@pytest.fixture
def sentinel(redis_server: EmbeddedServer, tmp_path: Path) -> Iterator[SentinelProcess]:
    """A sentinel watching this test's server as "mymaster"; skipped, naming the binary, if
    that binary has no sentinel mode."""
    directory = tmp_path / "sentinel"
    directory.mkdir()
    process = SentinelProcess(redis_server.binary, directory,
                              {MASTER_NAME: (redis_server.host, redis_server.port)})
    try:
        process.start()
    except SentinelUnsupported as exc:
        process.close()
        label = f"{redis_server.name}-{'.'.join(map(str, redis_server.version))}"
        pytest.skip(f"{label} ({redis_server.binary}) would not run as a sentinel: {exc}")
    try:
        yield process
    finally:
        process.close()


def wait_for_master(process: SentinelProcess, address: Address, timeout: float = 30.0,
                    name: str = MASTER_NAME) -> Address:
    """Wait until the sentinel names `address` as the master of `name` (after a failover)."""
    return wait_until(lambda: process.master_address(name) == address and address, timeout,
                      message=f"the sentinel did not name {address} master of {name}")


class FailoverSet:
    """A primary, its replica and three sentinels (quorum 2) watching it as "mymaster"."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.primary = EmbeddedServer(binary)
        self.replica = EmbeddedServer(binary)
        self.sentinels: List[SentinelProcess] = []
        try:
            self._start(binary, directory)
        except BaseException:
            self.close()
            raise

    def _start(self, binary: str, directory: Path) -> None:
        self.primary.start()
        self.replica.args = ("--replicaof", HOST, str(self.primary.port))
        self.replica.start()
        wait_until(lambda: self.replica.client().info("replication")["master_link_status"] == "up",
                   20, message="the replica did not sync")
        for n in range(3):
            where = directory / f"sentinel-{n}"
            where.mkdir()
            self.sentinels.append(SentinelProcess(
                binary, where, {MASTER_NAME: (HOST, self.primary.port)}, quorum=2).start())
        # A failover needs a majority of sentinels that know each other, and the replica known.
        wait_until(lambda: all(self._sees_everyone(s) for s in self.sentinels), 30, interval=0.1,
                   message="the sentinels did not find each other and the replica")

    @staticmethod
    def _sees_everyone(process: SentinelProcess) -> bool:
        with process.client() as client:
            others = client.execute_command("SENTINEL", "SENTINELS", MASTER_NAME)
            replicas = client.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
        return len(others) == 2 and len(replicas) == 1

    def manager(self, **kwargs: Any) -> redis.sentinel.Sentinel:
        return redis.sentinel.Sentinel([s.address for s in self.sentinels], socket_timeout=2,
                                       **kwargs)

    def wait_for_master(self, server: EmbeddedServer, timeout: float = 30.0) -> None:
        """Until every sentinel names `server` as the master."""
        address = (HOST, server.port)
        wait_until(lambda: all(s.master_address() == address for s in self.sentinels), timeout,
                   interval=0.02, message=f"the sentinels did not promote {address}")

    def close(self) -> None:
        for process in self.sentinels:
            process.close()
        self.replica.close()
        self.primary.close()


__all__: List[str] = ["FailoverSet", "SentinelProcess", "SentinelUnsupported", "sentinel",
                      "wait_for_master", "MASTER_NAME"]
