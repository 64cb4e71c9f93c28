"""The benchmark harness: `python bench/run.py [--quick]` (see bench/README.md).

The parent (`run.py`, `cases.py`) starts one Redis server, fills streams and creates groups; every
measurement runs in a child process (`drain.py`, `latency.py`, `decode.py`, `failover_case.py`)
that prints one JSON result line, so no case can disturb another's memory, threads or GIL.
"""
