"""The order in which `make test`'s two processes take the test files: the longest first.

Under ``-n 2 --dist loadfile`` a file runs whole in one process, and xdist hands the files out one at a time in
collection order (with ``--no-loadscope-reorder``; its default order is the number of tests per file, which put
the one-test files that run longest, the demo, Spark Connect and the standalone cluster, at the very end, where
one process ran them alone while the other had nothing left). Longest first, then the short files fill the gaps,
so both processes finish at about the same time.

The seconds per file are ``tests/durations.json``, measured on the project's 2-core machine
(``scripts/test_durations.py`` writes it from a run's ``--junitxml``); a file it does not list yet counts as
the median file. Only the processes of an xdist run reorder: a plain ``pytest`` keeps the files' usual order.
Tests within a file keep their order, so module-scoped fixtures are still made once.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

DURATIONS = Path(__file__).with_name("durations.json")


def file_seconds() -> dict[str, float]:
    """Test file (its path from the repository root, ``tests/test_x.py``) -> measured seconds; empty without one."""
    try:
        seconds = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in seconds.items()} if isinstance(seconds, dict) else {}


def longest_first(items: list, seconds: dict[str, float]) -> list:
    """``items`` (pytest items) grouped by file, the files in decreasing measured seconds (unknown files at the
    median), ties and the tests within a file in their collected order."""
    default = statistics.median(seconds.values()) if seconds else 0.0
    first_seen: dict[str, int] = {}
    for item in items:
        first_seen.setdefault(item.nodeid.split("::", 1)[0], len(first_seen))

    def key(item):
        path = item.nodeid.split("::", 1)[0]
        return -seconds.get(path, default), first_seen[path]

    return sorted(items, key=key)  # stable: a file's tests keep their order


def pytest_collection_modifyitems(config, items):
    """In an xdist worker, put the longest files first (the controller hands them out in this order)."""
    if hasattr(config, "workerinput"):
        items[:] = longest_first(items, file_seconds())
