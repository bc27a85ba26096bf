"""A local Spark driver's fixed cost with Delta Lake: the session start and the first Delta write (a 3-row
table), then two more writes in the same JVM, under four JVM settings, side by side in one run:

- ``resolve``: Delta Lake's package resolved by Spark's Ivy at the start (``spark.jars.packages``, the old way);
- ``jars``: the resolved jar files passed as ``spark.jars`` (vig_udf.spark.startup's manifest);
- ``jars + archive``: the same, mapping a class-data archive of the classes (``-XX:SharedArchiveFile``),
  which the script first makes in a JVM of its own (``-XX:ArchiveClassesAtExit``) by the same writes;
- ``jars + archive + C1``: also only the first JIT tier (``-XX:TieredStopAtLevel=1``), for comparison: it
  trades the optimising compiler, which long jobs need, for a faster start.

Each run is a fresh Python process (``local[2]``); the variants alternate run by run. Usage::

    /work/heavy --idle .venv/bin/python benchmarks/jvm_start.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = """
import json, sys, time
started = time.perf_counter()
from pyspark.sql import SparkSession
from vig_udf.config import SparkConfig
from vig_udf.spark.session import DELTA_CONF, delta_packages
from vig_udf.spark.startup import resolved_jars

variant, folder, options = sys.argv[1], sys.argv[2], sys.argv[3]
builder = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
for key, value in DELTA_CONF.items():
    builder = builder.config(key, value)
packages = delta_packages(SparkConfig())
if variant == "resolve":
    builder = builder.config("spark.jars.packages", ",".join(packages))
else:
    builder = builder.config("spark.jars", ",".join(resolved_jars(packages)))
if options:
    builder = builder.config("spark.driver.extraJavaOptions", options)
spark = builder.getOrCreate()
times = {"start": time.perf_counter() - started}
for i in range(3):
    before = time.perf_counter()
    spark.range(3).write.format("delta").mode("overwrite").save(f"{folder}/table-{i}")
    times[f"write {i + 1}"] = time.perf_counter() - before
if variant == "dump":
    from pyspark import SparkContext

    jvm = SparkContext._gateway.proc  # the archive is written as the JVM exits
    spark.stop()
    jvm.stdin.close()
    jvm.wait()
print(json.dumps(times))
"""
QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"


def measure(variant: str, options: str, folder: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WORKLOAD, variant, str(folder), options], env=env,
                          capture_output=True, text=True, check=True)
    times = json.loads(done.stdout.strip().splitlines()[-1])
    times["process"] = time.perf_counter() - started
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vig-jvm-start-"))
    archive = work / "classes.jsa"
    measure("dump", f"-XX:ArchiveClassesAtExit={archive} {QUIET}", work / "dump")
    print(f"class archive: {archive.stat().st_size / 2**20:.0f} MB", flush=True)
    variants = {"resolve": "", "jars": "", "jars + archive": f"-XX:SharedArchiveFile={archive} {QUIET}",
                "jars + archive + C1": f"-XX:SharedArchiveFile={archive} {QUIET} -XX:TieredStopAtLevel=1"}
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for run in range(args.runs):
        for name, options in variants.items():
            load = os.getloadavg()[0]
            times = measure("resolve" if name == "resolve" else "jars", options, work / f"{run}-{len(results[name])}"
                            f"-{name.replace(' ', '').replace('+', '-')}")
            results[name].append(times)
            print(f"run {run + 1} {name:<22} " + "  ".join(f"{k} {v:.1f}" for k, v in times.items())
                  + f"  (load {load:.1f})", flush=True)
    keys = ["start", "write 1", "write 2", "write 3", "process"]
    print(f"\nmedians of {args.runs} runs, seconds\n\n| JVM | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, runs in results.items():
        print(f"| {name} | " + " | ".join(f"{statistics.median(r[k] for r in runs):.1f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
