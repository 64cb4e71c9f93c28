"""The example a user copies (examples/test_my_handler.py) runs green under pytest from the
repository root, on its own: no server, none of this suite's fixtures."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from helpers import REPO_ROOT

EXAMPLE = "examples/test_my_handler.py"
TIMEOUT_S = 120.0


def test_the_handler_test_example_passes() -> None:
    """`python -m pytest examples/test_my_handler.py` in a child process: every test passes."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "pytest", EXAMPLE, "-q", "-p", "no:cacheprovider"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^5 passed", result.stdout, re.MULTILINE), result.stdout
