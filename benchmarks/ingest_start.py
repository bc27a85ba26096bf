"""A job's fixed cost, before and after a change: a bare Spark start and stop against a 6-record ``vig ingest``,
with the issue's two read-only commands on the ingested lake (``vig sql count(*)``, ``vig lake history``).

The lean variant of benchmarks/read_path.py (no 100,000-row lake): each step is a command of its own in a fresh
process, as a user types it, with a source tree first on the path: ``--before`` (a git revision, checked out
into a temporary worktree) and the working tree; the two trees alternate run by run. Medians of ``--runs``.

Usage::

    /work/heavy --idle .venv/bin/python benchmarks/ingest_start.py --before main --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from lake_overhead import SPARK, write_small_corpus  # noqa: E402
from read_path import BARE_SESSION, COUNT, run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision of the 'before' tree")
    parser.add_argument("--runs", type=int, default=3, help="runs of each step per tree (the median is reported)")
    parser.add_argument("--before-cache", help="a jars cache folder (VIG_SPARK_JARS_CACHE) holding a class archive "
                                               "that the before tree maps: adds the variant 'before, archive'")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vig-ingest-start-"))
    before = work / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before], check=True,
                   capture_output=True)
    cli = [sys.executable, "-m", "vig_udf.cli"]
    trees = [("before", before, {}), ("after", ROOT, {})]
    if args.before_cache:
        trees.insert(1, ("before, archive", before, {"VIG_SPARK_JARS_CACHE": args.before_cache}))
    times: dict[tuple[str, str], list[float]] = {}
    loads: list[float] = []
    try:
        small = write_small_corpus(work / "small", 6, seed=1)
        for i in range(args.runs):
            for name, tree, env in trees:
                def step(label: str, command: list[str]) -> None:
                    load = os.getloadavg()[0]
                    log = work / f"{label[:12].replace(' ', '_')}-{name[:9].replace(', ', '_')}-{i}.log"
                    seconds = run(command, tree, log, env)
                    times.setdefault((label, name), []).append(seconds)
                    loads.append(load)
                    print(f"run {i + 1}  {label:<28} {name:<16} {seconds:6.1f} s  (load {load:.1f})", flush=True)

                lake = work / f"lake-{i}-{name[:9].replace(', ', '_')}"
                config = work / f"ingest-{i}-{name[:9].replace(', ', '_')}.json"
                config.write_text(json.dumps({"lake": str(lake), "spark": SPARK, "ingest": {
                    "input": str(small), "image_root": str(small.parent / "images")}}))
                step("bare Spark start and stop", [sys.executable, "-c", BARE_SESSION])
                step("vig ingest, 6 records", [*cli, "ingest", "--config", str(config)])
                step("vig sql count(*)", [*cli, "sql", COUNT, f"lake={lake}"])
                step("vig lake history corpus", [*cli, "lake", "history", "corpus", f"lake={lake}"])
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nmedian of {args.runs} runs in seconds (the runs in brackets)\n")
    print("| command | " + " | ".join(n for n, _, _ in trees) + " |\n|---|" + "---|" * len(trees))
    for label in dict.fromkeys(label for label, _ in times):
        cells = [f"{statistics.median(times[(label, n)]):.1f} ({', '.join(f'{v:.1f}' for v in times[(label, n)])})"
                 for n, _, _ in trees]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for name, _, _ in trees:
        ratio = statistics.median(times[("vig ingest, 6 records", name)]) / statistics.median(
            times[("bare Spark start and stop", name)])
        print(f"{name}: 6-record ingest / bare start = {ratio:.2f}")
    print(f"1-minute load average as the steps started: {min(loads):.1f} to {max(loads):.1f} "
          f"(median {statistics.median(loads):.1f})")


if __name__ == "__main__":
    main()
