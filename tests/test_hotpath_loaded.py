"""The selector `rstream._hotpath` loads the compiled hot path, unless told not to."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rstream import _fast_py, _hotpath

OPTED_OUT = os.environ.get("RSTREAM_NO_EXTENSIONS") == "1"
FUNCTIONS = (
    "parse_id", "format_id", "compare_ids", "decode_read_reply", "decode_entries", "pack_ack",
    "reply_end", "decode_stream_reply", "ReplyScan",
)
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(OPTED_OUT, reason="RSTREAM_NO_EXTENSIONS=1 asks for pure Python")
def test_compiled_hot_path_is_loaded() -> None:
    """Without the opt-out the Cython module is in use: a missing or broken build fails here."""
    from rstream import _fast

    assert _hotpath.COMPILED is True, "rstream._fast did not load: build it with `pip install -e .`"
    assert _hotpath.IMPLEMENTATION == "cython"
    for name in FUNCTIONS:
        assert getattr(_hotpath, name) is getattr(_fast, name), name


@pytest.mark.skipif(not OPTED_OUT, reason="only under RSTREAM_NO_EXTENSIONS=1")
def test_opt_out_selects_pure_python() -> None:
    """Under RSTREAM_NO_EXTENSIONS=1 every hot-path function is the pure-Python reference."""
    assert _hotpath.COMPILED is False
    assert _hotpath.IMPLEMENTATION == "python"
    for name in FUNCTIONS:
        assert getattr(_hotpath, name) is getattr(_fast_py, name), name


def test_opt_out_switch_works_in_a_fresh_process() -> None:
    """Setting RSTREAM_NO_EXTENSIONS=1 before import selects pure Python, whatever this run uses."""
    env = {**os.environ, "RSTREAM_NO_EXTENSIONS": "1"}
    probe = "from rstream import _hotpath as h; print(h.IMPLEMENTATION, h.COMPILED, h.parse_id.__module__)"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        check=True,
    )
    assert result.stdout.split() == ["python", "False", "rstream._fast_py"]


def test_selector_exports_every_function() -> None:
    """The selector re-exports the whole hot-path API and names it in __all__."""
    assert set(FUNCTIONS) | {"COMPILED", "IMPLEMENTATION", "MAX_ID_PART"} == set(_hotpath.__all__)
    assert all(callable(getattr(_hotpath, name)) for name in FUNCTIONS)
