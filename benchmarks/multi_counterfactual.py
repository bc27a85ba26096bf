"""Several counterfactuals in one score job against one job per counterfactual: time and forward passes.

Same model, same corpus, same Spark session, in one run. The corpus (benchmarks/corpus.py, images as PNG files
under two sources, so that ``mismatched`` finds partners within each) is ingested first (not timed). Then:

- k separate jobs: ``run_score`` once per counterfactual of ``--counterfactuals``, each a real-image pass and a
  counterfactual pass per sample (2k passes), each loading its scorer;
- one job: ``run_score`` with ``counterfactuals=[...]`` into another lake, one real-image pass shared by the k
  counterfactual passes (k + 1 passes), one model load.

Forward passes are the sequences the tasks' scorers ran (the summary's ``passes``); the expected share of the
work is (k + 1) / 2k. FLOPs are counted by PyTorch's ``FlopCounterMode`` around the same scorer in this process
(no Spark: the tasks' workers cannot be instrumented from here) over the same records, once per counterfactual
and once with all of them: every matrix multiplication and attention the forward passes run, padding included. Both sides run on ``local[2]`` with ``spark.task.cpus=2`` and one scoring task. The scores
of the two sides are compared row for row. A first, untimed job on four records warms the JVM and the Python
worker, so that neither side pays for them.

    python benchmarks/multi_counterfactual.py                  # about 5 minutes on 2 cores
    python benchmarks/multi_counterfactual.py --samples 16 --no-write
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
from vig_udf.tiny import build_tiny_checkpoint  # noqa: E402


def write_corpus(root: Path, n: int, seed: int) -> list[dict]:
    """``n`` records with their images saved under two sources (coco, gqa)."""
    records = []
    for i, rec in enumerate(make_corpus(n, seed=seed)):
        out = {"id": rec["id"], "conversations": rec["conversations"]}
        if rec.get("image") is not None:
            name = f"{('coco', 'gqa')[i % 2]}/{rec['id']}.png"
            (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            rec["image"].save(root / "images" / name)
            out["image"] = name
        records.append(out)
    (root / "records.json").write_text(json.dumps(records))
    return records


def score(spark, lake: Path, scorer: dict, batch_rows: int) -> tuple[float, dict]:
    """Seconds of one score job and its summary."""
    from vig_udf.config import ScorerConfig
    from vig_udf.spark.score_job import ScoreJobConfig, run_score

    cfg = ScoreJobConfig(lake=str(lake), partitions=1, arrow_batch_rows=batch_rows, scorer=ScorerConfig(**scorer))
    started = time.perf_counter()
    summary = run_score(spark, cfg, out=lambda *_: None)
    return time.perf_counter() - started, summary


def vig_by_key(spark, lake: Path) -> dict[tuple[str, str], float | None]:
    from vig_udf.lake import read_table

    return {(r.sample_id, r.scorer_id): r.vig for r in read_table(spark, str(lake / "scores"))
            .select("sample_id", "scorer_id", "vig").collect()}


def forward_flops(model: str, records: list[dict], image_root: Path, batch_rows: int, **options) -> int:
    """FLOPs of scoring ``records`` with the in-process scorer under ``options`` (PyTorch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vig_udf.scoring.partners import assign_partners
    from vig_udf.scoring.scorer import VIGScorer

    scorer = VIGScorer.from_pretrained(model, image_root=str(image_root), dtype="float32", **options)
    if "mismatched" in scorer.counterfactuals:
        records = assign_partners(records, seed=scorer.options.partner_seed, scope=scorer.options.partner_scope)
    counter = FlopCounterMode(display=False)
    with counter:
        for start in range(0, len(records), batch_rows):
            scorer.score_all(records[start:start + batch_rows])
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--counterfactuals", default="blur,mismatched,drop")
    parser.add_argument("--batch-rows", type=int, default=16)
    parser.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
    args = parser.parse_args()
    counterfactuals = args.counterfactuals.split(",")

    from vig_udf.config import SparkConfig
    from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest
    from vig_udf.spark.session import spark_session

    work = Path(tempfile.mkdtemp(prefix="vig-bench-multi-"))
    model = build_tiny_checkpoint("llava", work / "model", size=CPU_SIZE, tokenizer=benchmark_tokenizer())
    records = write_corpus(work, args.samples, args.seed)
    spark = spark_session(SparkConfig(master="local[2]", conf={
        "spark.task.cpus": "2", "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "2", "spark.executorEnv.OMP_NUM_THREADS": str(os.cpu_count())}))
    spark.sparkContext.setLogLevel("ERROR")
    (work / "warmup.json").write_text(json.dumps(records[:4]))
    for lake, records_file in (("warmup", "warmup.json"), ("separate", "records.json"), ("multi", "records.json")):
        run_ingest(spark, IngestJobConfig(input=str(work / records_file), image_root=str(work / "images"),
                                          lake=str(work / lake)), out=lambda *_: None)
    scorer = {"model_path": model, "image_root": str(work / "images"), "dtype": "float32"}
    score(spark, work / "warmup", {**scorer, "counterfactual": "noise"}, args.batch_rows)  # JVM and worker warm

    separate = []
    for cf in counterfactuals:
        seconds, summary = score(spark, work / "separate", {**scorer, "counterfactual": cf}, args.batch_rows)
        separate.append((cf, seconds, summary))
    multi_seconds, multi = score(spark, work / "multi", {**scorer, "counterfactuals": counterfactuals},
                                 args.batch_rows)
    a, b = vig_by_key(spark, work / "separate"), vig_by_key(spark, work / "multi")
    assert a.keys() == b.keys() and len(a) == len(records) * len(counterfactuals)
    gap = max((abs(a[k] - b[k]) for k in a if a[k] is not None), default=0.0)
    assert all((a[k] is None) == (b[k] is None) for k in a)

    k = len(counterfactuals)
    flops_separate = {cf: forward_flops(model, records, work / "images", args.batch_rows, counterfactual=cf)
                      for cf in counterfactuals}
    flops_multi = forward_flops(model, records, work / "images", args.batch_rows, counterfactuals=counterfactuals)
    sep_seconds = sum(s for _, s, _ in separate)
    sep_passes = sum(m["passes"] for _, _, m in separate)
    sep_load = sum(m["load_seconds"] for _, _, m in separate)
    sep_flops = sum(flops_separate.values())
    rows = [f"| separate job, {cf} | {s:.1f} | {m['load_seconds']:.1f} | {m['passes']} | {flops_separate[cf]:.3e} |"
            for cf, s, m in separate]
    table = (
        "| job | seconds | of which model loads | forward passes (sequences) | forward FLOPs |\n|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n"
        f"| **{k} separate jobs** | **{sep_seconds:.1f}** | {sep_load:.1f} | **{sep_passes}** | **{sep_flops:.3e}** |\n"
        f"| **one job, counterfactuals=[{','.join(counterfactuals)}]** | **{multi_seconds:.1f}** | "
        f"{multi['load_seconds']:.1f} | **{multi['passes']}** | **{flops_multi:.3e}** |\n\n"
        f"One job / {k} jobs: time {multi_seconds / sep_seconds:.2f}, time without model loads "
        f"{(multi_seconds - multi['load_seconds']) / (sep_seconds - sep_load):.2f}, passes "
        f"{multi['passes'] / sep_passes:.2f}, FLOPs {flops_multi / sep_flops:.2f} (expected (k+1)/2k = "
        f"{(k + 1) / (2 * k):.2f}); the same {len(a)} scores rows, largest |VIG| difference {gap:.1e}.\n"
    )
    print(table)
    if not args.no_write:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())
        try:
            load = "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
        except OSError:
            load = "load unknown"
        section = (
            f"\n## {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC: several counterfactuals in one score job "
            f"against one job per counterfactual (benchmarks/multi_counterfactual.py, issue 24)\n\n"
            f"Machine: {os.cpu_count()} cores, {cpu}, CPU only, shared ({load} at the end of the run). Command: "
            f"`python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}`. {len(records)} samples from "
            f"benchmarks/corpus.py under two sources, the 48M-parameter CPU benchmark model (random weights), "
            f"float32, local[2] with spark.task.cpus=2, one scoring task, {args.batch_rows} rows per Arrow batch. "
            "Ingest and a warm-up job are not timed; each job's time includes its model load and its Delta commit.\n\n" + table
        )
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(section)
    spark.stop()


if __name__ == "__main__":
    main()
