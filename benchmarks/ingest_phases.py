"""Where the time of a 6-record ``vig ingest`` goes: the job's phases timed in one process, and Spark's own job
times from its event log.

The command runs ``vig ingest`` in this process (``vig_udf.cli.app``, as ``python -m vig_udf.cli`` does) with the
job's functions wrapped in timers (the code itself is unchanged), on a new lake of 6 shapes-world records, and
Spark's event log on. It prints, in order of their start (seconds since the process started):

- the phases: Python imports, the config, the session's start, the lease and staging clean-up, each table look,
  the fingerprint, the ordinal, the merge, the summary, the commit look, the session's stop;
- each Spark job: when it started, how long it ran, its stages and tasks, and the line of the job that started it.

Usage::

    /work/heavy --idle .venv/bin/python benchmarks/ingest_phases.py [--runs 2] [--conf key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import functools, json, os, sys, time
T0 = float(sys.argv[1])  # the process's start (the parent's clock just before it started us)
phases = []


def mark(name, started):
    phases.append((name, started - T0, time.time() - started))


def timed(module, name, label=None):
    target = getattr(module, name)

    @functools.wraps(target)
    def run(*args, **kwargs):
        started = time.time()
        try:
            return target(*args, **kwargs)
        finally:
            mark(label or name, started)

    setattr(module, name, run)


started = time.time()
import vig_udf.cli as cli
mark("import vig_udf.cli (typer, pydantic, config)", started)
started = time.time()
import vig_udf.spark.ingest_job as job
mark("import the ingest job (pyarrow, corpus parser)", started)
started = time.time()
import pyspark.sql  # noqa: F401
mark("import pyspark.sql", started)
import vig_udf.lake as lake
import vig_udf.lake.maintenance as maintenance
import vig_udf.lake.owners as owners
import vig_udf.lake.write as write
import vig_udf.spark.session as session

timed(session, "spark_session", "Spark session start (JVM, Delta's classes)")
timed(maintenance, "clear_staging", "clear_staging (killed jobs' staging)")
timed(owners, "job_lease", "job_lease: write the lease file")
timed(job, "check_config")
timed(job, "input_fingerprint")
timed(lake, "table_exists", "table_exists (corpus)")
timed(lake, "table_history")
timed(job, "next_ordinal")
timed(job, "with_ingest_ordinal")
if hasattr(job, "split_groups"):
    timed(job, "split_groups", "split_groups (the first action: validation, cache, a collect)")
timed(lake, "insert_new_rows", "insert_new_rows (all of it)")
timed(write, "table_version", "  table_version")
timed(write, "_create_or_merge", "  create the table (Delta's first write)")
timed(write, "_find_commit", "  _find_commit (latest version + history)")
timed(write, "stage_folder", "  stage_folder")
timed(job, "_summary")
timed(job, "run_ingest", "run_ingest (all of it)")
from pyspark.sql import SparkSession
timed(SparkSession, "stop", "spark.stop()")
started = time.time()
try:
    cli.app(["ingest", "--config", sys.argv[2]])
except SystemExit as done:
    if done.code:
        raise
finally:
    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()
    mark("the whole command after imports", started)
    Path = __import__("pathlib").Path
    Path(sys.argv[3]).write_text(json.dumps(phases))
"""


def event_log_jobs(folder: Path, t0: float) -> list[dict]:
    """The Spark jobs of the event log in ``folder``: start (s after ``t0``), duration, stages, tasks, call site."""
    logs = [p for p in folder.iterdir() if p.is_file()]
    jobs, stages_tasks = {}, {}
    for line in logs[0].read_text().splitlines():
        event = json.loads(line)
        kind = event["Event"]
        if kind == "SparkListenerJobStart":
            props = event.get("Properties") or {}
            jobs[event["Job ID"]] = {"start": event["Submission Time"] / 1000 - t0, "stages": event["Stage IDs"],
                                     "site": props.get("callSite.short") or props.get("spark.job.description", "")}
        elif kind == "SparkListenerJobEnd":
            jobs[event["Job ID"]]["seconds"] = event["Completion Time"] / 1000 - t0 - jobs[event["Job ID"]]["start"]
        elif kind == "SparkListenerTaskEnd":
            stages_tasks[event["Stage ID"]] = stages_tasks.get(event["Stage ID"], 0) + 1
    for entry in jobs.values():
        entry["tasks"] = sum(stages_tasks.get(s, 0) for s in entry["stages"])
        entry["ran_stages"] = sum(1 for s in entry["stages"] if s in stages_tasks)
    return [jobs[k] for k in sorted(jobs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--conf", action="append", default=[], help="extra Spark setting key=value")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from lake_overhead import SPARK, write_small_corpus

    import time

    work = Path(tempfile.mkdtemp(prefix="vig-phases-"))
    small = write_small_corpus(work / "small", 6, seed=1)
    for i in range(args.runs):
        events = work / f"events-{i}"
        events.mkdir()
        conf = {**SPARK["conf"], "spark.eventLog.enabled": "true", "spark.eventLog.dir": str(events),
                "spark.eventLog.rolling.enabled": "false", "spark.eventLog.compress": "false",
                **dict(kv.split("=", 1) for kv in args.conf)}
        config = work / f"ingest-{i}.json"
        config.write_text(json.dumps({"lake": str(work / f"lake-{i}"), "spark": {**SPARK, "conf": conf},
                                      "ingest": {"input": str(small), "image_root": str(small.parent / "images")}}))
        out = work / f"phases-{i}.json"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1"}
        t0 = time.time()
        done = subprocess.run([sys.executable, "-c", CHILD, str(t0), str(config), str(out)], env=env,
                              capture_output=True, text=True)
        wall = time.time() - t0
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        print(f"\nrun {i + 1}: {wall:.1f} s in all (load {os.getloadavg()[0]:.1f})\n")
        print("| phase | at (s) | seconds |\n|---|---|---|")
        for name, at, seconds in sorted(json.loads(out.read_text()), key=lambda p: p[1]):
            print(f"| {name} | {at:.1f} | {seconds:.2f} |")
        print("\n| Spark job | at (s) | seconds | stages run | tasks | started by |\n|---|---|---|---|---|---|")
        for n, entry in enumerate(event_log_jobs(events, t0)):
            print(f"| {n} | {entry['start']:.1f} | {entry.get('seconds', float('nan')):.2f} | {entry['ran_stages']} "
                  f"| {entry['tasks']} | {entry['site']} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
