"""What mypy --strict tells a user about their rstream code: the mistakes it catches before the
code runs, and the correct code it lets through.

One mypy run checks every snippet below (each its own file) against this checkout's package.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from typing import Dict, List

import pytest

from helpers import REPO_ROOT

SNIPPETS: Dict[str, str] = {
    "sync_handler": """
        from typing import Any, Dict

        import rstream

        def handle(message: rstream.Message) -> None:
            print(message.id)

        def on_failure(message: rstream.Message, error: BaseException) -> None:
            message.configure_ack(retry=True)

        consumer = rstream.Consumer("redis://127.0.0.1:6379/0", "orders", "billing", "billing-1",
                                    group_start_id="0", make_stream=True, receive_interval=100,
                                    max_in_flight=None, max_attempts=3, handle_failure=on_failure,
                                    dead_letter_stream="orders:dead", start_timeout=5000)
        # Options gathered in a dict pass when it is typed Dict[str, Any], as for any typed kwargs.
        options: Dict[str, Any] = {"concurrency": 4}
        rstream.Consumer("redis://127.0.0.1:6379/0", "orders", "billing", "billing-2", **options)
        consumer.start(handle)
        consumer.run(handle)
        consumer.start(lambda message: None)
    """,
    "async_handle_failure": """
        import rstream

        async def on_failure(message: rstream.Message, error: BaseException) -> None:
            pass

        rstream.Consumer("redis://127.0.0.1:6379/0", "orders", "billing", "billing-1",
                         handle_failure=on_failure)
    """,
    "misspelt_option": """
        import rstream

        rstream.Consumer("redis://127.0.0.1:6379/0", "orders", "billing", "billing-1",
                         max_attemps=3)
    """,
    "float_interval": """
        import rstream

        rstream.Consumer("redis://127.0.0.1:6379/0", "orders", "billing", "billing-1",
                         receive_interval=0.5)
    """,
    "async_handler": """
        import rstream

        async def handle(message: rstream.Message) -> None:
            print(message.id)

        rstream.Consumer("redis://127.0.0.1:6379/0", "orders", "billing", "billing-1").start(handle)
    """,
}


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, List[str]]:
    """mypy --strict's error lines for each snippet, by snippet name."""
    where = tmp_path_factory.mktemp("typing")
    for name, source in SNIPPETS.items():
        (where / f"{name}.py").write_text(textwrap.dedent(source))
    # MYPYPATH comes before site-packages: this checkout's rstream is the one checked.
    env = dict(os.environ, MYPYPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(where / ".mypy_cache"),
         *(f"{name}.py" for name in SNIPPETS)],
        cwd=where, env=env, capture_output=True, text=True, timeout=240)
    errors: Dict[str, List[str]] = {name: [] for name in SNIPPETS}
    for line in proc.stdout.splitlines():
        found = re.match(r"([\w/.-]+)\.py:\d+: error: (.*)", line)
        if found:
            errors.setdefault(found.group(1), []).append(found.group(2))
    unexpected = set(errors) - set(SNIPPETS)
    assert not unexpected, f"mypy found errors outside the snippets:\n{proc.stdout}{proc.stderr}"
    return errors


def test_mypy_accepts_correct_code(mypy_errors: Dict[str, List[str]]) -> None:
    """A sync handler and handle_failure, start() and run() type-check under --strict."""
    assert mypy_errors["sync_handler"] == []


def test_mypy_rejects_an_async_handler(mypy_errors: Dict[str, List[str]]) -> None:
    """start(async_handler) is a mypy error about start()'s argument."""
    [error] = mypy_errors["async_handler"]
    assert 'Argument 1 to "start" of "Consumer"' in error and "Coroutine" in error


def test_mypy_rejects_an_async_handle_failure(mypy_errors: Dict[str, List[str]]) -> None:
    """handle_failure=async_function is a mypy error about that argument."""
    [error] = mypy_errors["async_handle_failure"]
    assert 'Argument "handle_failure" to "Consumer"' in error and "Coroutine" in error


def test_mypy_rejects_a_misspelt_option(mypy_errors: Dict[str, List[str]]) -> None:
    """Consumer(..., max_attemps=3) is a mypy error naming the misspelt argument."""
    [error] = mypy_errors["misspelt_option"]
    assert 'Argument "max_attemps" to "Consumer"' in error


def test_mypy_rejects_a_float_interval(mypy_errors: Dict[str, List[str]]) -> None:
    """receive_interval=0.5 is a mypy error: intervals are int milliseconds."""
    [error] = mypy_errors["float_interval"]
    assert 'Argument "receive_interval" to "Consumer" has incompatible type "float"' in error
