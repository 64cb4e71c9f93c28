"""The `rstream` command line: `rstream demo` end to end, in a child process as a user runs it."""
from __future__ import annotations

import os
import pty
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import redis

from helpers import REPO_ROOT
from rstream.cli import main
from rstream.cli.bench import find_harness

DEMO_TIMEOUT_S = 120.0
THROUGHPUT_LINE = re.compile(r"^drain throughput: [\d,]+ entries/s \(([\d,]+) entries handled in ",
                             re.MULTILINE)


def run_cli(*args: str, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    """`python -m rstream ARGS` with this checkout first on the path."""
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "rstream", *args], capture_output=True, text=True,
                          env=child_env, timeout=DEMO_TIMEOUT_S)


def handled_count(output: str) -> int:
    match = THROUGHPUT_LINE.search(output)
    assert match, f"no throughput line in:\n{output}"
    return int(match.group(1).replace(",", ""))


def test_demo_on_embedded_server_drains_every_entry() -> None:
    """`rstream demo` with no --redis starts its own server, handles every entry and exits 0."""
    result = run_cli("demo", "--count", "2000", "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert handled_count(result.stdout) == 2000
    assert "published 2,000 entries" in result.stdout
    assert re.search(r"^stats: delivered=2000 acked=2000 ", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"^hot path: (cython|python)$", result.stdout, re.MULTILINE), result.stdout


def test_demo_against_given_server_cleans_up(redis_url: str, r: redis.Redis) -> None:
    """`rstream demo --redis URL` uses that server and deletes its stream afterwards."""
    result = run_cli("demo", "--redis", redis_url, "--count", "1500", "--batch-size", "100",
                     "--concurrency", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert handled_count(result.stdout) == 1500
    assert "started embedded server" not in result.stdout
    assert r.dbsize() == 0, r.keys()


def test_demo_no_extensions_uses_pure_python_hot_path() -> None:
    """`--no-extensions` runs the demo on the pure-Python hot path."""
    result = run_cli("demo", "--count", "500", "--no-extensions")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^hot path: python$", result.stdout, re.MULTILINE), result.stdout
    assert handled_count(result.stdout) == 500


def test_bad_redis_url_is_a_clear_error() -> None:
    """A --redis value that is not a Redis URL exits 1 with one error line, no traceback."""
    result = run_cli("demo", "--redis", "localhost:6379")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rstream: error: --redis: redis must be a URL" in result.stderr
    assert "got 'localhost:6379'" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_server_is_a_clear_error() -> None:
    """A --redis URL nobody listens on exits 1 saying the server cannot be reached."""
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_cli("demo", "--redis", f"redis://127.0.0.1:{port}/0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"rstream: error: cannot reach Redis at redis://127.0.0.1:{port}/0" in result.stderr
    assert "Traceback" not in result.stderr


def test_password_is_not_printed() -> None:
    """An unreachable URL with a password is reported with the password masked."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_cli("demo", "--redis", f"redis://user:s3cret@127.0.0.1:{port}/0")
    assert result.returncode == 1
    assert "user:***@127.0.0.1" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    """`rstream --help` names the demo subcommand and exits 0; no subcommand prints usage and
    is a usage error (2)."""
    assert main(["--help"]) == 0
    assert re.search(r"^\s+demo\s+publish entries", capsys.readouterr().out, re.MULTILINE)
    assert main([]) == 2
    assert "usage: rstream" in capsys.readouterr().out


def test_demo_progress_is_plain_lines_off_a_terminal(redis_url: str) -> None:
    """In a pipe the progress is plain lines (no carriage returns), ending with the total."""
    result = run_cli("demo", "--redis", redis_url, "--count", "3000")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\r" not in result.stdout
    assert re.search(r"^handled 3,000/3,000 \([\d,]+/s\)$", result.stdout, re.MULTILINE), result.stdout


def test_demo_progress_is_a_live_bar_on_a_terminal(redis_url: str) -> None:
    """On a terminal (a pseudo-terminal here) the bar is redrawn in place and ends full."""
    main_fd, child_fd = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "rstream", "demo", "--redis", redis_url,
                             "--count", "3000"], stdout=child_fd, stderr=child_fd, env=env)
    os.close(child_fd)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_fd)
    assert proc.wait(DEMO_TIMEOUT_S) == 0
    output = b"".join(chunks).decode()
    assert "\r[" + "#" * 30 + "]" in output and "3,000/3,000 handled" in output, output


def test_bench_runs_the_harness_of_this_checkout_and_names_a_missing_one(tmp_path: Path) -> None:
    """`rstream bench -- --help` reaches bench/run.py; without a checkout it is a usage error."""
    result = run_cli("bench", "--", "--help")
    assert result.returncode == 0 and "usage: python bench/run.py" in result.stdout, result.stderr
    assert find_harness([tmp_path]) is None
    assert find_harness([REPO_ROOT]) == REPO_ROOT / "bench" / "run.py"
