"""The cost of Spark, Arrow and Delta around the scorer: the score job against the bare scorer loop.

Same model, same corpus, same machine, in one run. The corpus is written to disk (images as PNG files,
records as LLaVA JSON) and ingested first (not timed). Then:

- bare loop: one process loads the scorer and scores the records in chunks of ``--batch-rows``, reading
  images from disk, exactly as one Spark task does;
- Spark job: ``run_score`` on ``local[2]`` with ``spark.task.cpus=2`` (one task at a time with both
  cores, as one GPU task owns its GPU) and the same chunking (``arrow_batch_rows``), model loading,
  Arrow conversion and the Delta commit included.

Both include one model load. The ratio spark/bare is the overhead; the design target is at most 1.10.

    python benchmarks/score_spark.py                 # about 5 minutes on 2 cores
    python benchmarks/score_spark.py --samples 32 --no-write

On a GPU machine (one GPU, Spark in local mode, Java 17 installed): the device defaults to ``cuda`` and
the dtype to bfloat16, for the bare loop and the Spark task alike (the task has no Spark GPU resource in
local mode, so the scorer takes the configured device); ``--size gpu`` builds a 1.3B-parameter LLaVA-shaped
checkpoint (336 px, 576 image tokens; about 5 GB on disk, built on the CPU in a minute or two) so that the
forward passes, not fixed costs, dominate:

    python benchmarks/score_spark.py --size gpu --samples 1024 --batch-rows 256
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.corpus import make_corpus  # noqa: E402
from benchmarks.score_cpu import CPU_SIZE, benchmark_tokenizer  # noqa: E402
from vig_udf.tiny import TinySize, build_tiny_checkpoint  # noqa: E402

SIZES = {
    "cpu": CPU_SIZE,  # 48M parameters, benchmarks/score_cpu.py
    "gpu": TinySize(hidden_size=2048, num_layers=16, num_heads=16, intermediate_size=5504, vision_hidden_size=1024,
                    vision_layers=24, image_size=336, patch_size=14),  # about 1.3B parameters
}


def write_corpus(root: Path, n: int, seed: int) -> list[dict]:
    records = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for rec in make_corpus(n, seed=seed):
        out = {"id": rec["id"], "conversations": rec["conversations"]}
        if rec.get("image") is not None:
            name = f"coco/{rec['id']}.png"
            (root / "images" / "coco").mkdir(exist_ok=True)
            rec["image"].save(root / "images" / name)
            out["image"] = name
        records.append(out)
    (root / "records.json").write_text(json.dumps(records))
    return records


def bare_loop(model: str, records: list[dict], image_root: Path, batch_rows: int, batch_tokens: int, *,
              device: str, dtype: str) -> float:
    """Seconds to load the scorer and score ``records`` in chunks of ``batch_rows`` in this process."""
    from vig_udf.scoring.scorer import VIGScorer

    started = time.perf_counter()
    scorer = VIGScorer.from_pretrained(model, image_root=str(image_root), batch_tokens=batch_tokens, device=device,
                                       dtype=dtype)
    for start in range(0, len(records), batch_rows):
        scorer.score(records[start:start + batch_rows])
    return time.perf_counter() - started


def spark_job(spark, model: str, lake: Path, image_root: Path, batch_rows: int, batch_tokens: int, *,
              device: str, dtype: str) -> tuple[float, dict]:
    """Seconds of the score job (one partition, the same chunking and scorer settings) and its summary."""
    from vig_udf.config import ScorerConfig
    from vig_udf.spark.score_job import ScoreJobConfig, run_score

    cfg = ScoreJobConfig(lake=str(lake), partitions=1, arrow_batch_rows=batch_rows, scorer=ScorerConfig(
        model_path=model, image_root=str(image_root), batch_tokens=batch_tokens, dtype=dtype, device=device))
    started = time.perf_counter()
    summary = run_score(spark, cfg, out=lambda *_: None)
    return time.perf_counter() - started, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-rows", type=int, default=32)
    parser.add_argument("--batch-tokens", type=int, default=None, help="default 2048 on CPU, 32768 on CUDA")
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu", help="model size (see the docstring)")
    parser.add_argument("--device", default=None, help="default cuda when available, else cpu")
    parser.add_argument("--dtype", default=None, help="default bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.batch_tokens = args.batch_tokens or (32768 if cuda else 2048)

    from vig_udf.config import SparkConfig
    from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest
    from vig_udf.spark.session import spark_session

    work = Path(tempfile.mkdtemp(prefix="vig-bench-spark-"))
    model = build_tiny_checkpoint("llava", work / "model", size=SIZES[args.size], tokenizer=benchmark_tokenizer())
    records = write_corpus(work, args.samples, args.seed)
    spark = spark_session(SparkConfig(master="local[2]", conf={
        "spark.task.cpus": "2", "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "2", "spark.executorEnv.OMP_NUM_THREADS": str(os.cpu_count())}))
    spark.sparkContext.setLogLevel("ERROR")
    run_ingest(spark, IngestJobConfig(input=str(work / "records.json"), image_root=str(work / "images"),
                                      lake=str(work / "lake")), out=lambda *_: None)

    bare = bare_loop(model, records, work / "images", args.batch_rows, args.batch_tokens, device=device, dtype=dtype)
    spark_seconds, summary = spark_job(spark, model, work / "lake", work / "images", args.batch_rows, args.batch_tokens,
                                       device=device, dtype=dtype)
    assert summary["rows_for_scorer"] == len(records), summary
    ratio = spark_seconds / bare
    table = (
        "| procedure | seconds | samples/s |\n|---|---|---|\n"
        f"| bare scorer loop (one process) | {bare:.1f} | {len(records) / bare:.2f} |\n"
        f"| Spark score job (local[2], task.cpus=2, Delta commit) | {spark_seconds:.1f} | "
        f"{len(records) / spark_seconds:.2f} |\n\n"
        f"Spark / bare time ratio: **{ratio:.2f}** (target <= 1.10); rows by status {summary['rows_by_status']}.\n"
    )
    print(table)
    if not args.no_write:
        gpu = torch.cuda.get_device_name() if cuda else None
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())
        section = (
            f"\n## Spark job vs bare scorer loop ({gpu or 'CPU'}), {dt.date.today().isoformat()}\n\n"
            f"Machine: {os.cpu_count()} cores, {cpu}{', ' + gpu if gpu else ''}. Command: `python benchmarks/"
            f"{Path(__file__).name} {shlex.join(sys.argv[1:])}`. {len(records)} samples from benchmarks/corpus.py, "
            f"the --size {args.size} model (random weights, {SIZES[args.size]}), blur, {device}, {dtype}, "
            f"{args.batch_rows} rows per Arrow batch, batch_tokens "
            f"{args.batch_tokens}. Both times include one model load; ingest is not timed.\n\n" + table
        )
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(section)
    spark.stop()


if __name__ == "__main__":
    main()
