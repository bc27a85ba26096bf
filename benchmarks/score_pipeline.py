"""Does the score job keep its accelerators busy? The real score job on a multi-executor ``local-cluster``,
with a simulated accelerator per executor (benchmarks/sim_accelerator.py), over a generated corpus cut
into several chunks and commits.

    PYTHONPATH=$PWD SPARK_LOCAL_IP=127.0.0.1 .venv/bin/python benchmarks/score_pipeline.py \\
        --samples 480 --rows-per-commit 120 --executors 2 --tokens-per-s 1000 --label "main at 47b93cd"

What runs: a tiny random-weight LLaVA checkpoint (vig_udf.tiny, the 32000-token BPE vocabulary of
benchmarks/score_cpu.py) and a corpus of ``--samples`` records from benchmarks/corpus.py (PNG images of
320-640 px under an image root) are built and ingested (not timed). Then ``run_score`` (the product's,
unchanged) scores them on ``local-cluster[E,C,M]``: ``--executors`` executor JVMs of ``--cores`` cores, one
task at a time each (``spark.task.cpus`` = cores, as one GPU task owns its GPU), so each executor is one
accelerator. Every forward batch lasts ``padded tokens / --tokens-per-s`` seconds (the real tiny forward,
then a sleep), recorded by the workers.

What it reports (one JSON object with everything, a markdown table, and with ``--write`` a dated section
appended to BENCHMARKS.md):

- per accelerator, the share of wall time it is busy after its first batch (from the end of its first
  batch to the end of the last batch on any accelerator), its batches, rows and overruns (batches whose
  stand-in CPU forward took longer than the simulated time; the excess is not counted as busy, but it
  delays what follows, so many overruns mean the rate is too high for this machine);
- model loads (``ScorerSpec.load_log_dir``'s markers, one per load, named by the worker's pid): per
  worker, per accelerator, in all;
- commits: every Delta write to the scores table (a ``MERGE``, or an append, from the driver) with its
  start and end, measured by wrapping delta-spark's ``DeltaMergeBuilder.execute`` and pyspark's
  ``DataFrameWriter.save`` in this process (a save under ``_staging`` is the scoring stage's write, not a
  commit); their total time, and how much of it overlapped scoring (some accelerator busy), and the mean
  over accelerators of each one's idle time during commits;
- rows/s: rows scored over ``run_score``'s wall time (session start, ingest and model build excluded).

Whatever the score job's dataflow (chunks in order, commits overlapped, one stage for the whole job), the
instrument is the same, so the numbers of two versions of the job compare side by side: rerun with the
same arguments and another ``--label``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import sim_accelerator as sim  # noqa: E402
ONE_GPU = str(ROOT / "benchmarks" / "data" / "one_gpu.sh")


class CommitClock:
    """Records every Delta write this process makes to the scores table, and the staging writes (the
    scoring stage), as ``{"kind", "start", "end", "thread"}`` intervals (wall-clock seconds)."""

    def __init__(self):
        self.intervals: list[dict] = []
        self._lock = threading.Lock()
        self._undo: list = []

    def __enter__(self) -> "CommitClock":
        import vig_udf.spark.score_job as score_job

        if hasattr(score_job, "commit_parts"):  # one scoring stage, its parts committed by commit_parts
            self._wrap(score_job, "commit_parts", lambda *args, **kwargs: "commit")
            return self
        from delta.tables import DeltaMergeBuilder  # the chunked job of 47b93cd: a stage and a MERGE per chunk
        from pyspark.sql.readwriter import DataFrameWriter

        self._wrap(DeltaMergeBuilder, "execute", lambda *args, **kwargs: "commit")
        self._wrap(DataFrameWriter, "save", lambda self_, path=None, *args, **kwargs: save_kind(path))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in self._undo:
            setattr(owner, name, original)

    def _wrap(self, owner, name: str, kind_of) -> None:
        original = getattr(owner, name)
        clock = self

        def timed(*args, **kwargs):
            kind, start = kind_of(*args, **kwargs), time.time()
            try:
                return original(*args, **kwargs)
            finally:
                with clock._lock:
                    clock.intervals.append({"kind": kind, "start": start, "end": time.time(),
                                            "thread": threading.current_thread().name})

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def of(self, kind: str) -> list[tuple[float, float]]:
        return [(i["start"], i["end"]) for i in self.intervals if i["kind"] == kind]


def save_kind(path) -> str:
    """``stage`` for a write under the lake's staging folder (the scored rows, before their commit),
    ``commit`` for a write to the scores table itself, ``other`` for anything else."""
    path = str(path or "")
    if "/_staging/" in path:
        return "stage"
    return "commit" if path.rstrip("/").endswith("/scores") else "other"


def loads_by_worker(load_dir: Path) -> Counter:
    """Model loads per worker pid, from the ``<pid>-<uuid>`` markers of ``ScorerSpec.load_log_dir``."""
    return Counter(p.name.split("-")[0] for p in load_dir.iterdir()) if load_dir.exists() else Counter()


def pipeline_report(events: list[dict], commits: list[tuple[float, float]], loads: Counter, *, rows: int,
                    job_start: float, job_end: float) -> dict:
    """Everything the benchmark reports, from the workers' events, the commit intervals and the load markers."""
    accelerators = sim.accelerator_report(events)
    steps = [e for e in events if e.get("event") == "step"]
    busy_any = sim.union((e["start"], e["end"]) for e in steps)
    daemon_of = {e["pid"]: e["daemon"] for e in events}
    loads_per_accelerator = Counter()
    for pid, n in loads.items():
        loads_per_accelerator[daemon_of.get(int(pid), "unknown")] += n
    for acc in accelerators:
        acc["loads"] = loads_per_accelerator.get(acc["accelerator"], 0)
        own = [(e["start"], e["end"]) for e in steps if e["daemon"] == acc["accelerator"]]
        if own:
            window = (acc["warm_at"], max(e["end"] for e in steps))
            idle = _gaps(sim.clip(own, *window), *window)
            acc["idle_s"] = sim.length(idle)
            acc["idle_during_commits_s"] = sim.overlap(idle, commits)
    shares = [a["busy_share"] for a in accelerators if a.get("busy_share") is not None]
    commit_s = sim.length(commits)
    idle_in_commits = [a["idle_during_commits_s"] for a in accelerators if "idle_during_commits_s" in a]
    seconds = job_end - job_start
    return {
        "rows": rows, "job_seconds": seconds, "rows_per_s": rows / seconds if seconds > 0 else None,
        "accelerators": accelerators,
        "busy_share_min": min(shares, default=None), "busy_share_mean": sum(shares) / len(shares) if shares else None,
        "first_step_s": min((e["start"] for e in steps), default=job_start) - job_start,
        "last_step_to_job_end_s": job_end - max((e["end"] for e in steps), default=job_end),
        "workers": len({e["pid"] for e in events}), "loads": sum(loads.values()),
        "loads_per_worker_max": max(loads.values(), default=0),
        "commits": len(commits), "commit_s": commit_s, "commit_overlapping_scoring_s": sim.overlap(commits, busy_any),
        "idle_during_commits_mean_s": sum(idle_in_commits) / len(idle_in_commits) if idle_in_commits else None,
        "overruns": sum(e["overrun_s"] > 0 for e in steps), "overrun_s": sum(e["overrun_s"] for e in steps),
        "steps": len(steps),
    }


def _gaps(intervals, lo: float, hi: float) -> list[tuple[float, float]]:
    """The parts of ``[lo, hi]`` that ``intervals`` do not cover."""
    gaps, at = [], lo
    for start, end in sim.union(intervals):
        if start > at:
            gaps.append((at, start))
        at = max(at, end)
    if hi > at:
        gaps.append((at, hi))
    return gaps


def build_inputs(work: Path, samples: int, seed: int) -> tuple[str, Path]:
    """The tiny checkpoint and the corpus (records.json and images/ under ``work``)."""
    from benchmarks.score_cpu import benchmark_tokenizer
    from benchmarks.score_spark import write_corpus
    from vig_udf.tiny import build_tiny_checkpoint

    model = build_tiny_checkpoint("llava", work / "model", seed=seed, tokenizer=benchmark_tokenizer())
    write_corpus(work, samples, seed)
    return model, work / "images"


def session(args, sim_dir: Path):
    """A ``local-cluster`` session whose executors' Python workers run the simulated accelerator."""
    from vig_udf.config import SparkConfig
    from vig_udf.spark.session import spark_session

    jvm = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"  # as tests/cluster_job.py: small JVMs on a small machine
    conf = {
        "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
        "spark.task.cpus": str(args.cores), "spark.executor.cores": str(args.cores),
        "spark.executor.memory": f"{args.executor_memory_mb}m", "spark.sql.shuffle.partitions": str(args.executors),
        "spark.driver.extraJavaOptions": jvm, "spark.executor.extraJavaOptions": jvm,
        "spark.python.daemon.module": "benchmarks.sim_accelerator",
        f"spark.executorEnv.{sim.RATE_ENV}": str(args.tokens_per_s), f"spark.executorEnv.{sim.DIR_ENV}": str(sim_dir),
        "spark.executorEnv.OMP_NUM_THREADS": str(args.torch_threads),
        "spark.executorEnv.PYTHONPATH": os.environ["PYTHONPATH"],
    }
    cores = args.cores
    if args.gpus:  # as conf/gpu-cluster.yaml: one GPU per executor, a spare core, stage-level scheduling
        cores = args.cores + 1
        conf.update({"spark.task.cpus": "1", "spark.executor.cores": str(cores),
                     "spark.worker.resource.gpu.amount": "1", "spark.worker.resource.gpu.discoveryScript": ONE_GPU,
                     "spark.executor.resource.gpu.amount": "1", "spark.executor.resource.gpu.discoveryScript": ONE_GPU,
                     "spark.dynamicAllocation.enabled": "false"})
        if args.other_task_gpus:  # a share of a GPU for the other stages' tasks (what conf/gpu-cluster.yaml avoids)
            conf["spark.task.resource.gpu.amount"] = str(args.other_task_gpus)
    master = f"local-cluster[{args.executors},{cores},{args.executor_memory_mb + 512}]"
    return spark_session(SparkConfig(master=master, app_name="vig-score-pipeline", conf=conf))


def run(args) -> dict:
    from vig_udf.config import ScorerConfig
    from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest
    from vig_udf.spark.score_job import ScoreJobConfig, run_score

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    sim_dir, load_dir, lake = work / "busy", work / "loads", work / "lake"
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    os.environ["VIG_LOAD_LOG_DIR"] = str(load_dir)  # resolve_spec puts it into the ScorerSpec
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    model, images = build_inputs(work, args.samples, args.seed)
    spark = session(args, sim_dir)
    spark.sparkContext.setLogLevel("ERROR")
    quiet = lambda *_: None  # noqa: E731
    run_ingest(spark, IngestJobConfig(input=str(work / "records.json"), image_root=str(images), lake=str(lake)),
               out=quiet)
    scorer = {"model_path": model, "image_root": str(images), "dtype": "float32", "batch_tokens": args.batch_tokens,
              **({"prep_workers": args.prep_workers} if args.prep_workers is not None else {}),
              **({"prep_chunk": args.prep_chunk} if args.prep_chunk is not None else {})}
    job = {"lake": str(lake), "scorer": ScorerConfig(**scorer), "rows_per_commit": args.rows_per_commit,
           "arrow_batch_rows": args.arrow_batch_rows, "progress_every_s": 0,
           **({"rows_per_task": args.rows_per_task} if args.rows_per_task else {}),
           **({"task_cpus": args.cores, "task_gpus": 1} if args.gpus else {})}
    cfg = ScoreJobConfig(**job)
    lines: list[tuple[float, str]] = []
    with CommitClock() as clock:
        start = time.time()
        summary = run_score(spark, cfg, out=lambda line: lines.append((time.time(), line)))
        end = time.time()
    spark.stop()
    report = pipeline_report(sim.read_events(sim_dir), clock.of("commit"), loads_by_worker(load_dir),
                             rows=summary.get("scored", 0), job_start=start, job_end=end)
    report.update({"label": args.label, "code": _git_commit(), "rows_for_scorer": summary.get("rows_for_scorer"),
                   "rows_by_status": summary.get("rows_by_status"), "chunks": sum(l.startswith(("chunk ", "commit ")) for _, l in lines),
                   "stage_s": sim.length(clock.of("stage")), "job_lines": [[t - start, l] for t, l in lines],
                   "settings": {k: v for k, v in vars(args).items() if k not in ("write", "json")},
                   "workdir": str(work)})
    if report["rows_for_scorer"] != args.samples:
        raise RuntimeError(f"rows in {args.samples} != rows out {report['rows_for_scorer']}: {summary}")
    return report


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return done.stdout.strip() + ("+changes" if dirty else "") if done.returncode == 0 else None
    except OSError:
        return None


def markdown(report: dict) -> str:
    rows = ["| accelerator (executor) | batches | sequences | busy after first batch | idle s | idle during commits s "
            "| model loads | workers |", "|---|---|---|---|---|---|---|---|"]
    for i, acc in enumerate(report["accelerators"]):
        share = acc.get("busy_share")
        rows.append(f"| {i} | {acc['steps']} | {acc.get('rows', 0)} | {share:.1%} | {acc.get('idle_s', 0):.1f} | "
                    f"{acc.get('idle_during_commits_s', 0):.1f} | {acc['loads']} | {len(acc['workers'])} |"
                    if share is not None else f"| {i} | 0 | 0 | - | - | - | {acc['loads']} | {len(acc['workers'])} |")
    r = report
    rows += ["", f"- {r['label'] or 'run'} (code {r['code']}): {r['rows']} rows in {r['job_seconds']:.1f} s "
             f"({r['rows_per_s']:.2f} rows/s); {r['chunks']} chunks, {r['commits']} commits",
             f"- busy share after the first batch: min {r['busy_share_min']:.1%}, mean {r['busy_share_mean']:.1%}",
             f"- commits: {r['commit_s']:.1f} s in all, {r['commit_overlapping_scoring_s']:.1f} s of it while some "
             f"accelerator was busy; each accelerator idled {r['idle_during_commits_mean_s']:.1f} s during commits "
             "(mean)",
             f"- model loads: {r['loads']} in {r['workers']} workers (at most {r['loads_per_worker_max']} per worker)",
             f"- first batch {r['first_step_s']:.1f} s after the job started; last batch to the job's end "
             f"{r['last_step_to_job_end_s']:.1f} s; staging writes (scoring stages) {r['stage_s']:.1f} s",
             f"- {r['overruns']} of {r['steps']} batches overran their simulated time ({r['overrun_s']:.1f} s in all); "
             "rows by status "
             f"{r['rows_by_status']}"]
    return "\n".join(rows) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=480, help="corpus records")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows-per-commit", type=int, default=120, help="the job's rows_per_commit (0 = one commit)")
    parser.add_argument("--rows-per-task", type=int, default=None, help="the job's rows_per_task (default: the job's)")
    parser.add_argument("--arrow-batch-rows", type=int, default=16)
    parser.add_argument("--batch-tokens", type=int, default=2048, help="the scorer's token budget per batch")
    parser.add_argument("--prep-workers", type=int, default=None, help="the scorer's prep_workers (default: the job's)")
    parser.add_argument("--prep-chunk", type=int, default=None, help="the scorer's prep_chunk (default: the job's)")
    parser.add_argument("--executors", type=int, default=2, help="executor JVMs of the local-cluster (accelerators)")
    parser.add_argument("--cores", type=int, default=1, help="cores per executor (= spark.task.cpus); with --gpus, "
                        "the scoring task's CPUs")
    parser.add_argument("--gpus", action="store_true",
                        help="executors advertise one GPU each (a discovery script, no GPU behind it) and one core "
                             "more than --cores: the scoring stage gets its own resource profile (1 GPU, --cores "
                             "CPUs per task) and the commits run on the spare core, as on conf/gpu-cluster.yaml")
    parser.add_argument("--other-task-gpus", type=float, default=0.0,
                        help="with --gpus: spark.task.resource.gpu.amount for the other stages (0: unset)")
    parser.add_argument("--executor-memory-mb", type=int, default=1024)
    parser.add_argument("--torch-threads", type=int, default=1, help="OMP_NUM_THREADS of the Python workers")
    parser.add_argument("--tokens-per-s", type=float, default=1000.0,
                        help="the simulated accelerator's rate in padded tokens per second")
    parser.add_argument("--label", default=None, help="what is measured, e.g. 'main at 47b93cd'")
    parser.add_argument("--workdir", default=None, help="keep the model, corpus, lake and records here (default: "
                        "a temporary folder, removed afterwards)")
    parser.add_argument("--json", default=None, help="also write the report as JSON to this file")
    parser.add_argument("--write", action="store_true", help="append a dated section to BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.samples <= 0 or args.executors <= 0 or args.cores <= 0 or args.tokens_per_s <= 0:
        parser.error("--samples, --executors, --cores and --tokens-per-s must be positive")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="vig-score-pipeline-") as tmp:
        args.workdir = args.workdir or tmp
        report = run(args)
    report["load_average"] = [load_before, os.getloadavg()[0]]
    table = markdown(report)
    print(table)
    print(json.dumps({k: v for k, v in report.items() if k != "job_lines"}, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    if args.write:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(f"\n## {now}: score job dataflow with a simulated accelerator, {report['label'] or ''} "
                    f"(benchmarks/score_pipeline.py)\n\nMachine: {os.cpu_count()} cores, {cpu}; 1-minute load "
                    f"average {report['load_average'][0]:.1f} before, {report['load_average'][1]:.1f} after. "
                    f"Command: `python benchmarks/score_pipeline.py {shlex.join(sys.argv[1:])}`.\n\n" + table)
    return report


if __name__ == "__main__":
    main()
