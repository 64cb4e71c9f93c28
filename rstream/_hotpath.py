"""The one place that chooses the hot-path implementation; import its functions from here.

The compiled `rstream._fast` is used when it was built; ``RSTREAM_NO_EXTENSIONS=1`` forces the
pure-Python reference `rstream._fast_py` (to debug, or to check that both agree). A failed import
of the compiled module falls back silently here; `tests/test_hotpath_loaded.py` is what makes
that fallback a test failure where the extension should have been built.
"""
from __future__ import annotations

import os

COMPILED: bool
IMPLEMENTATION: str

if os.environ.get("RSTREAM_NO_EXTENSIONS") != "1":
    try:
        from rstream._fast import (
            MAX_ID_PART,
            ReplyScan,
            compare_ids,
            decode_entries,
            decode_read_reply,
            decode_stream_reply,
            format_id,
            pack_ack,
            parse_id,
            reply_end,
        )
    except ImportError:
        COMPILED = False
    else:
        COMPILED = True
else:
    COMPILED = False

if not COMPILED:
    from rstream._fast_py import (
        MAX_ID_PART,
        compare_ids,
        decode_entries,
        decode_read_reply,
        decode_stream_reply,
        format_id,
        pack_ack,
        parse_id,
        reply_end,
    )
    # Two classes of one interface (rstream/_fast.pyi): mypy sees two types.
    from rstream._fast_py import ReplyScan  # type: ignore[assignment]

IMPLEMENTATION = "cython" if COMPILED else "python"

__all__ = [
    "MAX_ID_PART",
    "ReplyScan",
    "COMPILED",
    "IMPLEMENTATION",
    "compare_ids",
    "decode_entries",
    "decode_read_reply",
    "decode_stream_reply",
    "format_id",
    "pack_ack",
    "parse_id",
    "reply_end",
]
