"""Build the C consumer anchor (bench/c_consumer.c, hiredis) with the system compiler at bench time.

The binary goes to a per-user cache directory under the system temp dir, named by a hash of
the source, the compiler and its flags, so a second run reuses it and an edit rebuilds it;
nothing built is ever in the checkout. Without a compiler, or without hiredis' header or library
(Debian: `apt-get install libhiredis-dev`), `build()` returns no binary and a note saying why,
and the drain case runs without the anchor.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

from bench.common import REPO_ROOT

SOURCE = REPO_ROOT / "bench" / "c_consumer.c"
INSTALL_HINT = "Debian/Ubuntu: apt-get install libhiredis-dev"


def compiler() -> Optional[str]:
    """$CC if set, else the first of cc, gcc, clang on PATH."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    return next(filter(None, (shutil.which(name) for name in ("cc", "gcc", "clang"))), None)


def hiredis_flags() -> List[str]:
    """pkg-config's flags for hiredis when it knows them (a non-standard prefix), else -lhiredis."""
    if shutil.which("pkg-config"):
        proc = subprocess.run(["pkg-config", "--cflags", "--libs", "hiredis"], capture_output=True,
                              text=True, timeout=30)
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.split()
    return ["-lhiredis"]


def version(cc: str) -> str:
    proc = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    lines = proc.stdout.strip().splitlines()
    return lines[0] if lines else "version unknown"


def cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"rstream-bench-{os.getuid()}"


def why_not(stderr: str) -> str:
    """The compiler's complaint, in the words a user needs."""
    if "hiredis.h" in stderr:
        return f"hiredis header <hiredis/hiredis.h> not found ({INSTALL_HINT})"
    if "-lhiredis" in stderr or "lhiredis" in stderr:
        return f"hiredis library not found ({INSTALL_HINT})"
    lines = stderr.strip().splitlines()
    return "compile failed: " + (lines[-1] if lines else "(no message)")


def build() -> Tuple[Optional[str], str]:
    """(path of the built binary, how it was built) or (None, why it was not)."""
    cc = compiler()
    if cc is None:
        return None, "no C compiler on PATH (cc, gcc, clang, or $CC)"
    flags = hiredis_flags()
    command = [cc, "-O2", str(SOURCE), *flags]
    digest = hashlib.sha256(SOURCE.read_bytes() + "\0".join(command).encode()).hexdigest()[:16]
    binary = cache_dir() / f"c_consumer-{digest}"
    described = f"{' '.join([Path(cc).name, '-O2', SOURCE.name, *flags])} ({version(cc)}) -> {binary}"
    if os.access(binary, os.X_OK):
        return str(binary), described
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(f".{os.getpid()}.tmp")
    proc = subprocess.run([cc, "-O2", "-o", str(partial), str(SOURCE), *flags], capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        return None, why_not(proc.stderr)
    partial.replace(binary)  # atomic: a concurrent run sees a whole binary or none
    return str(binary), described
