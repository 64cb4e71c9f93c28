"""Every Python block of README.md runs, as a user would paste it, against a real server.

Each block is written to a file and run with ``python`` in a fresh process, with
``REDIS_URL`` set to a server of this test's own (the README's blocks read it with
``os.environ.get("REDIS_URL", "redis://localhost:6379/0")``, so a pasted block works on a
local Redis). Nothing in a block is edited. A block that defines ``test_`` functions is run
with pytest instead. A block that consumes until a signal (``.run(``) gets SIGTERM once it
is reading, and must then drain and exit 0, as the README promises.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest
import redis

from helpers import REPO_ROOT, wait_until
from rstream.embedded import EmbeddedServer

README = REPO_ROOT / "README.md"
DEADLINE_S = 60.0
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_HEADING = re.compile(r"^#{2,4} (.+)$", re.M)


def python_blocks() -> List[Tuple[str, str]]:
    """(id, code) of each Python block, the id made of the heading it is under."""
    text = README.read_text()
    blocks: List[Tuple[str, str]] = []
    for match in _BLOCK.finditer(text):
        headings = _HEADING.findall(text, 0, match.start())
        title = re.sub(r"[^a-z0-9]+", "-", (headings[-1] if headings else "top").lower()).strip("-")
        blocks.append((f"{len(blocks) + 1:02d}-{title}"[:60], match.group(1)))
    return blocks


def reading(r: redis.Redis) -> bool:
    """Some client (the block's consumer) is blocked in XREADGROUP on the server."""
    return any(c.get("cmd") == "xreadgroup" for c in r.client_list())


@pytest.mark.parametrize("code", [code for _, code in python_blocks()],
                         ids=[name for name, _ in python_blocks()])
def test_readme_block_runs(code: str, tmp_path: Path) -> None:
    with EmbeddedServer() as server:
        script = tmp_path / ("test_block.py" if re.search(r"^def test_", code, re.M) else "block.py")
        script.write_text(code)
        env = {**os.environ, "REDIS_URL": server.url, "PYTHONPATH": str(REPO_ROOT)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)] \
            if script.name.startswith("test_") else [sys.executable, str(script)]
        log = tmp_path / "output.txt"
        with log.open("wb") as out:
            proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            if ".run(" in code:
                client = server.client()
                wait_until(lambda: reading(client) or proc.poll() is not None, DEADLINE_S,
                           message="the block's consumer never started reading")
                client.close()
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            code_ = proc.wait(DEADLINE_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        output = log.read_text(errors="replace")
        assert code_ == 0, f"the block exited with {code_}:\n{output}"
        assert "Traceback" not in output, output


def test_the_readme_has_python_blocks_to_check() -> None:
    assert len(python_blocks()) >= 8
