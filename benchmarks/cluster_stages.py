"""How the score job's stages are scheduled: a Spark standalone cluster whose executors advertise GPUs, next to
local mode, on the same corpus and settings, read from each application's Spark event log.

The cluster is a master and two workers on 127.0.0.1 (tests/standalone.py), each worker with 4 cores and two
GPU addresses from a discovery script (no GPU behind them: the scorer runs on the CPU). The job runs with the
GPU settings of conf/gpu-cluster.yaml, scaled down: every task one CPU and no GPU by default, the
scoring stage one GPU and two CPUs per task (stage-level scheduling). Local mode (``local[4]``) has no GPU
resources and runs the same job with one profile. For each stage the table gives its tasks, the task
resources of its profile, and the most tasks that ran at once on one executor.

    python benchmarks/cluster_stages.py                 # about 3 minutes on 2 cores
    python benchmarks/cluster_stages.py --samples 64 --tasks 8
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.standalone import DISCOVERY, stages_from_event_log, standalone_cluster  # noqa: E402

JOB = """
import json, sys
from vig_udf.config import ScorerConfig, SparkConfig
from vig_udf.spark.score_job import ScoreJobConfig, run_score
from vig_udf.spark.session import spark_session
master, events, model, images, lake, tasks, commit_rows, gpu = sys.argv[1:9]
conf = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", "spark.sql.shuffle.partitions": "8",
        "spark.eventLog.enabled": "true", "spark.eventLog.dir": events, "spark.eventLog.compress": "false",
        "spark.databricks.delta.snapshotPartitions": "2"}
if gpu == "1":
    conf.update({"spark.executor.cores": "4", "spark.executor.memory": "1g",
                 "spark.executor.resource.gpu.amount": "2", "spark.executor.resource.gpu.discoveryScript": sys.argv[9]})
spark = spark_session(SparkConfig(master=master, conf=conf))
cfg = ScoreJobConfig(lake=lake, scorer=ScorerConfig(model_path=model, image_root=images, dtype="float32"),
                     partitions=int(tasks), rows_per_commit=int(commit_rows), task_cpus=2, poll_s=0.5)
summary = run_score(spark, cfg, out=lambda *_: None)
print(json.dumps({k: summary[k] for k in ("tasks", "workers", "model_loads", "commits", "gpus", "seconds")}))
spark.stop()
"""


def write_corpus(folder: Path, n: int) -> tuple[str, str]:
    """Shapes-world records as LLaVA JSON with PNG images; returns (records file, image root)."""
    from vig_udf.demo.world import generate

    (folder / "images").mkdir(parents=True)
    records = []
    for rec in generate(n, seed=3):
        out = {"id": rec["id"], "conversations": rec["conversations"]}
        if "image" in rec:
            rec["image"].save(folder / "images" / f"{rec['id']}.png")
            out["image"] = f"{rec['id']}.png"
        records.append(out)
    (folder / "records.json").write_text(json.dumps(records))
    return str(folder / "records.json"), str(folder / "images")


def run(master: str, events: Path, model: str, images: str, lake: str, args, gpu: bool) -> dict:
    events.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    done = subprocess.run([sys.executable, "-c", JOB, master, f"file:{events}", model, images, lake, str(args.tasks),
                           str(args.rows_per_commit), "1" if gpu else "0", DISCOVERY],
                          env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return {"summary": json.loads(done.stdout.strip().splitlines()[-1]), "stages": stages_from_event_log(events)}


def table(stages: dict[int, dict]) -> list[str]:
    lines = ["| stage | name | tasks | task CPUs | task GPUs | most at once on one executor |", "|---|---|---|---|---|---|"]
    for stage_id in sorted(stages):
        stage = stages[stage_id]
        name = stage["name"].split(" at ")[0]
        lines.append(f"| {stage_id} | {name} | {len(stage['tasks'])} | {stage['profile'].get('cpus', 1):g} | "
                     f"{stage['profile'].get('gpu', 0):g} | {stage['most_at_once']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--rows-per-commit", type=int, default=16)
    args = parser.parse_args()
    from vig_udf.tiny import build_tiny_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="vig-stages-"))
    model = build_tiny_checkpoint("llava", folder / "model", seed=1)
    records, images = write_corpus(folder / "corpus", args.samples)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1"}
    for lake in ("cluster", "local"):
        subprocess.run([sys.executable, "-m", "vig_udf.cli", "ingest", f"input={records}", f"image_root={images}",
                        f"lake={folder / lake}", "spark.master=local[2]"], env=env, check=True, capture_output=True)
    with standalone_cluster(folder / "standalone") as master:
        cluster = run(master, folder / "events-cluster", model, images, str(folder / "cluster"), args, gpu=True)
    local = run("local[4]", folder / "events-local", model, images, str(folder / "local"), args, gpu=False)
    print(f"# score job stages, {dt.date.today()}, {platform.node()}, {os.cpu_count()} cores; "
          f"{args.samples} samples, {args.tasks} scoring tasks, a commit per {args.rows_per_commit} rows")
    for name, result in (("standalone, 2 workers x (4 cores, 2 GPUs), stage-level scheduling", cluster),
                         ("local[4]", local)):
        print(f"\n## {name}: {json.dumps(result['summary'])}\n")
        print("\n".join(table(result["stages"])))


if __name__ == "__main__":
    main()
