"""Write tests/durations.json (seconds per test file, read by tests/file_order.py) from a pytest run's JUnit XML.

    .venv/bin/python -m pytest -q -n 2 --dist loadfile --junitxml=/tmp/run.xml
    .venv/bin/python scripts/test_durations.py /tmp/run.xml

A file's seconds are the sum of its tests' (set-up, call and tear-down); run it on the project's 2-core machine
with no other heavy job, so that the files compare as `make test` runs them.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_file(classname: str) -> str | None:
    """``tests.test_x`` or ``tests.test_x.TestClass`` -> ``tests/test_x.py`` (None when no such file exists)."""
    parts = classname.split(".")
    for end in range(len(parts), 0, -1):
        path = "/".join(parts[:end]) + ".py"
        if (ROOT / path).is_file():
            return path
    return None


def seconds_per_file(junit_xml: str) -> dict[str, float]:
    """Test file -> summed seconds of its test cases, longest first."""
    seconds: dict[str, float] = defaultdict(float)
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        path = test_file(case.get("classname", ""))
        if path is not None:
            seconds[path] += float(case.get("time", 0) or 0)
    return {path: round(s, 1) for path, s in sorted(seconds.items(), key=lambda kv: -kv[1])}


def main(argv: list[str]) -> int:
    """Read the XML named by ``argv[0]`` and write tests/durations.json."""
    if len(argv) != 1:
        print("usage: scripts/test_durations.py RUN.xml", file=sys.stderr)
        return 2
    seconds = seconds_per_file(argv[0])
    if not seconds:
        print(f"no test cases of this repository's test files in {argv[0]}", file=sys.stderr)
        return 1
    (ROOT / "tests" / "durations.json").write_text(json.dumps(seconds, indent=1) + "\n")
    print(f"tests/durations.json: {len(seconds)} files, {sum(seconds.values()):.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
