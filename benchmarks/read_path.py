"""What a person waits for: a bare Spark start, a 6-record ingest, and the read-only commands (`vig sql`, `vig lake
history`) on both engines, before and after a change, side by side in one run.

Each step is a command of its own, as a user types it (``python -m vig_udf.cli ...`` in a fresh process), with a
source tree first on the path: ``--before`` (a git revision, checked out into a temporary worktree, on its own
Spark engine) and the working tree (``engine=local`` and ``engine=spark``). The trees alternate run by run, so that
load on the machine touches both alike. Steps (medians of ``--runs`` runs):

- a bare Spark session (no Delta) started and stopped, ``local[2]``: the floor of any Spark job;
- ``vig ingest`` of 6 shapes-world records into a new lake;
- ``vig sql "SELECT count(*) AS n FROM corpus"`` and ``vig lake history corpus`` on that 6-row lake;
- on a 100,000-row lake (corpus by ``vig ingest``, a scores table of 100,000 rows written by Spark with Delta
  Lake), ``SELECT count(*)`` and the README's join-and-group query.

Usage::

    /work/heavy --idle .venv/bin/python benchmarks/read_path.py --before 47b93cd
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from lake_overhead import SPARK, write_large_corpus, write_small_corpus  # noqa: E402

BARE_SESSION = ("from pyspark.sql import SparkSession; "
                "SparkSession.builder.master('local[2]').config('spark.ui.enabled', 'false').getOrCreate().stop()")
COUNT = "SELECT count(*) AS n FROM corpus"
JOIN = ("SELECT c.source, avg(s.vig) FROM scores s JOIN corpus c USING (sample_id) WHERE s.status = 'ok' "
        "GROUP BY c.source")
SCORES = """
import sys
from pyspark.sql import functions as F
from vig_udf.config import SparkConfig
from vig_udf.lake import read_table, write_table
from vig_udf.spark.session import spark_session

lake = sys.argv[1]
spark = spark_session(SparkConfig(master="local[2]", conf={"spark.ui.enabled": "false"}))
corpus = read_table(spark, lake + "/corpus")
scores = corpus.select("sample_id", F.lit("bench").alias("scorer_id"),
                       F.when(F.col("image_path").isNull(), "text_only").otherwise("ok").alias("status"),
                       (F.rand(1) * 2 - 1).alias("vig"), (F.rand(2) * 3).alias("nll_with"),
                       F.col("n_turns").alias("n_tokens"))
write_table(scores, lake + "/scores", mode="error", job="benchmark", config={"rows": "all"})
spark.stop()
"""


def run(command: list[str], tree: Path, log: Path, env: dict | None = None) -> float:
    """Seconds of one command run in ``tree`` with ``tree`` first on the path (and ``env``); fails on a non-zero
    exit."""
    env = {**os.environ, "PYTHONPATH": str(tree), "SPARK_LOCAL_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1", **(env or {})}
    started = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed in {tree}; see {log}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision of the 'before' tree")
    parser.add_argument("--runs", type=int, default=3, help="runs of each step per tree (the median is reported)")
    parser.add_argument("--large", type=int, default=100_000, help="rows of the large lake")
    parser.add_argument("--workdir", default=".bench/read_path")
    args = parser.parse_args()

    work = (ROOT / args.workdir).absolute()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    before = Path(tempfile.mkdtemp(prefix="vig-before-")) / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before], check=True,
                   capture_output=True)
    cli = [sys.executable, "-m", "vig_udf.cli"]
    times: dict[tuple[str, str], list[float]] = {}
    loads: list[float] = []  # the 1-minute load average as each step started
    try:
        small = write_small_corpus(work / "small", 6, seed=1)
        large_input = write_large_corpus(work / "large", args.large)
        large_lake = work / "large-lake"
        conf = work / "large.json"
        conf.write_text(json.dumps({"lake": str(large_lake), "spark": SPARK, "ingest": {
            "input": str(large_input), "image_root": str(large_input.parent / "images")}}))
        print(f"building the {args.large:,}-row lake ...", flush=True)
        run([*cli, "ingest", "--config", str(conf)], ROOT, work / "large-ingest.log")
        run([sys.executable, "-c", SCORES, str(large_lake)], ROOT, work / "large-scores.log")

        def sql(tree: Path, lake: Path, statement: str, engine: str | None) -> list[str]:
            if tree == before:  # the before tree's vig sql: --lake, Spark only
                return [*cli, "sql", statement, "--lake", str(lake)]
            return [*cli, "sql", statement, f"lake={lake}", f"engine={engine}"]

        def history(tree: Path, lake: Path, engine: str | None) -> list[str]:
            return [*cli, "lake", "history", "corpus", f"lake={lake}"] + ([f"engine={engine}"] if engine else [])

        # "after" runs the jobs and the read-only commands on engine=local; "after, engine=spark" the same
        # read-only commands on Spark, on the after tree's 6-row lake of the same run
        variants = [("before", before, None), ("after", ROOT, "local"), ("after, engine=spark", ROOT, "spark")]
        for i in range(args.runs):
            for name, tree, engine in variants:
                def step(label: str, command: list[str]) -> None:
                    load = os.getloadavg()[0]
                    seconds = run(command, tree, work / f"{label.replace(' ', '_')}-{name[:12]}-{i}.log")
                    times.setdefault((label, name), []).append(seconds)
                    loads.append(load)
                    print(f"run {i + 1}  {label:<34} {name:<20} {seconds:6.1f} s  (load {load:.1f})", flush=True)

                lake = work / f"lake-{i}-{name.split(',')[0]}"  # after, engine=spark: the after run's lake
                if engine != "spark":  # one ingest and one bare start per tree and run
                    step("bare Spark start and stop", [sys.executable, "-c", BARE_SESSION])
                    ingest = work / f"ingest-{i}-{name.split(',')[0]}.json"
                    ingest.write_text(json.dumps({"lake": str(lake), "spark": SPARK, "ingest": {
                        "input": str(small), "image_root": str(small.parent / "images")}}))
                    step("vig ingest, 6 records", [*cli, "ingest", "--config", str(ingest)])
                step("vig sql count(*), 6 rows", sql(tree, lake, COUNT, engine))
                step("vig lake history corpus", history(tree, lake, engine))
                step(f"vig sql count(*), {args.large:,} rows", sql(tree, large_lake, COUNT, engine))
                step(f"vig sql README join, {args.large:,} rows", sql(tree, large_lake, JOIN, engine))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], capture_output=True)

    labels = list(dict.fromkeys(label for label, _ in times))
    names = [name for name, _, _ in variants]
    print(f"\nmedian of {args.runs} runs in seconds (the runs in brackets); after = engine=local for vig sql and "
          "vig lake history\n")
    print("| command | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for label in labels:
        cells = []
        for name in names:
            values = times.get((label, name))
            cells.append(f"{statistics.median(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})" if values
                         else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\n1-minute load average as the steps started: {min(loads):.1f} to {max(loads):.1f} "
          f"(median {statistics.median(loads):.1f}; a step itself adds up to about 2 on this machine)")
    bare = {name: statistics.median(times[("bare Spark start and stop", name)]) for name in names
            if ("bare Spark start and stop", name) in times}
    for name in bare:
        ingest = statistics.median(times[("vig ingest, 6 records", name)])
        print(f"\n{name}: 6-record ingest / bare start = {ingest / bare[name]:.2f}")


if __name__ == "__main__":
    main()
