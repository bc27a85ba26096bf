"""The pipeline at corpus scale: a seeded LLaVA-665K-shaped corpus of N records through ingest, score (stub
scorer), select, export and the training set (written by the train job's Spark part, then read as training's
ranks read it), with the wall time and peak memory of each stage's whole process tree.

    PYTHONPATH=$PWD SPARK_LOCAL_IP=127.0.0.1 .venv/bin/python benchmarks/scale.py --n 10000 --workdir /tmp/scale
    ... --n 100000 (each stage prints one JSON line; --stages ingest,score to run some only;
    VIG_SCALE_EXPORT_PART_ROWS=2000 sets the export's part_rows)

The corpus (``generate``) follows the layout of ``llava_v1_5_mix665k.json`` (../shared/data/README.md): ONE JSON
array, images under an image root in the six source folders, 6% text-only records (no ``image`` key), 1 to
20 assistant turns (geometric, mean about 3), answers of 1 to 150 words (half 1-3 word VQA answers), and 1%
of the records reusing an earlier record's id (LLaVA-665K's ids are not unique across sources). The images
are hard links to one small JPEG per source folder: ingest stats them, the stub scorer never opens them.

The stub scorer (``stub_score_batches``): the score job runs exactly as ``vig score`` does (pending rows,
partitions and file sizes from the data, mapInArrow, staging, MERGE) but the model is replaced by a function
that tokenizes each answer on whitespace and gives every token a VIG drawn from a hash of (sample id, token
index). So the score stage measures the dataflow and the write path, not a model; its rows have the shape
of real ones (per-token arrays with character spans into the stripped answer) so select and export do
their real work.

The training set: ``train_set`` writes the vig selection's training set as ``vig train`` does
(``write_train_set``: Parquet, row groups of ``TRAIN_SET_ROW_GROUP_BYTES``); ``train_read`` (no Spark) starts
``TRAIN_WORLD`` rank processes that read it with ``TrainSetStream`` at once: each reads every row of its own
row groups once, then builds ``TRAIN_BUILT_BATCHES`` batches for the model with a tiny LLaVA checkpoint's
processor (``vig_udf.tiny``: images decoded, tokenized, collated, labelled), without a forward. It reports
rows read per rank and the most rows a rank held at once.

Each stage is its own process (a fresh Spark session, as ``vig <job>`` is): ``local[2]``, Spark's default 1g
driver memory. ``seconds`` is the stage process's wall time (session start included), ``job_seconds`` the
job's call alone. A sampler adds up the memory of that process and all its descendants (the Python
driver, the driver JVM, the Python workers) every 0.5 s, as proportional set size (a page shared by forked
processes counts once in the sum), and reports the peak of the sum and of each part.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

SOURCES = ["coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images", "vg/VG_100K", "vg/VG_100K_2"]
WORDS = ("the a of and to in is it on with that this for are there what how many colour left right image "
         "person table car tree sky water building street dog cat man woman sign red blue green white black").split()
VQA_SUFFIX = "\nAnswer the question using a single word or phrase."
STUB_SCORER_ID = "stub-whitespace-hash"
STAGES = ("ingest", "ingest_rerun", "score", "score_rerun", "select", "select_rerun", "export", "export_rerun",
          "train_set", "train_read")
TRAIN_WORLD = 2  # train_read: ranks, one process each, reading at once
TRAIN_BATCH_SIZE = 8
TRAIN_BUILT_BATCHES = 25  # train_read: batches per rank also built for the model (tokenizer, image processor)
POLICIES = ["vig", "sample", "token", "random", "all"]
LINKS_PER_BASE = 50_000


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _answer_words(rng: random.Random) -> int:
    return rng.randint(1, 3) if rng.random() < 0.5 else rng.randint(1, 150)


def _rounds(rng: random.Random) -> int:
    rounds = 1
    while rounds < 20 and rng.random() < 0.65:
        rounds += 1
    return rounds


def make_record(i: int, rng: random.Random, ids: list[str]) -> dict:
    """Record ``i`` of the corpus (``ids``: the ids so far, for the 1% shared ones)."""
    text_only = rng.random() < 0.06
    source = rng.choice(SOURCES)
    own = f"{i:012d}"
    record_id = rng.choice(ids) if ids and rng.random() < 0.01 else own
    turns = []
    for k in range(_rounds(rng)):
        question = _words(rng, rng.randint(4, 14)) + "?"
        if not text_only and k == 0:
            question = f"<image>\n{question}" if rng.random() < 0.8 else f"{question}\n<image>"
        if not text_only and source in ("gqa/images", "ocr_vqa/images", "textvqa/train_images") and k == 0:
            question += VQA_SUFFIX
        turns.append({"from": "human", "value": question})
        turns.append({"from": "gpt", "value": _words(rng, _answer_words(rng))})
    record = {"id": record_id}
    if not text_only:
        record["image"] = f"{source}/{own}.jpg"
    record["conversations"] = turns
    return record


def generate(root: Path, n: int, seed: int = 0) -> dict:
    """Write ``root/llava.json`` (one array, streamed) and the hard-linked images; returns counts."""
    from PIL import Image

    rng = random.Random(seed)
    images = root / "images"
    bases = {}
    for k, source in enumerate(SOURCES):
        (images / source).mkdir(parents=True, exist_ok=True)
        base = images / f".base-{k}.jpg"
        buf = io.BytesIO()
        Image.new("RGB", (336, 336), (40 * k, 255 - 40 * k, 128)).save(buf, format="JPEG")
        base.write_bytes(buf.getvalue())
        bases[source] = base
    ids: list[str] = []
    text_only, links = 0, dict.fromkeys(SOURCES, 0)
    with open(root / "llava.json", "w") as f:
        f.write("[")
        for i in range(n):
            record = make_record(i, rng, ids)
            ids.append(record["id"])
            if "image" in record:
                target = images / record["image"]
                source = record["image"].rsplit("/", 1)[0]
                if not target.exists():
                    if links[source] and links[source] % LINKS_PER_BASE == 0:  # a file takes 65,000 links on ext4
                        copy = bases[source].with_name(f"{bases[source].stem}-{links[source]}.jpg")
                        copy.write_bytes(bases[source].read_bytes())
                        bases[source] = copy
                    os.link(bases[source], target)
                    links[source] += 1
            else:
                text_only += 1
            f.write(("," if i else "") + "\n" + json.dumps(record))
        f.write("\n]\n")
    return {"records": n, "text_only": text_only, "shared_ids": n - len(set(ids)),
            "json_bytes": (root / "llava.json").stat().st_size}


def stub_score_batches(spec, progress=None):
    """``mapInArrow`` stand-in for the scorer (module docstring): whitespace tokens, hashed VIGs; counts the rows
    done in ``progress`` (the job's accumulator) as the scorer does."""
    import hashlib

    import numpy as np
    import pyarrow as pa

    from vig_udf.scoring.conversation import parse_conversation
    from vig_udf.spark.arrow import SCORES_SCHEMA

    def score(batches):
        for batch in batches:
            rows = []
            for rec in batch.to_pylist():
                row = {"sample_id": rec["sample_id"], "scorer_id": spec.scorer_id, "counterfactual": "stub",
                       "status": rec["status"], "error": rec["error"], "score_seconds": 0.0,
                       "scored_at": None}
                if rec["status"] in ("ok", "text_only"):
                    turns = [{"from": t["from"], "value": t["value"]} for t in rec["conversations"]]
                    conv = parse_conversation(turns, has_image=bool(rec["image_path"]))
                    turn, start, end = [], [], []
                    for k, i in enumerate(conv.answer_turns):
                        text, pos = turns[i]["value"].strip(), 0
                        for word in text.split():
                            pos = text.index(word, pos)
                            turn.append(k), start.append(pos), end.append(pos + len(word))
                            pos += len(word)
                    seed = int.from_bytes(hashlib.blake2b(rec["sample_id"].encode(), digest_size=8).digest(), "little")
                    token_vig = np.random.default_rng(seed).normal(0.2, 0.5, len(turn)).astype(np.float32)
                    row.update(n_tokens=len(turn), token_ids=list(range(len(turn))), token_turn=turn,
                               token_char_start=start, token_char_end=end)
                    if rec["status"] == "ok":
                        row.update(vig=float(token_vig.mean()), nll_with=1.0, nll_without=1.0 + float(token_vig.mean()),
                                   token_vig=token_vig.tolist(), logp_with=[-1.0] * len(turn),
                                   logp_without=[-1.0] * len(turn))
                rows.append(row)
            if progress is not None:
                progress.add(len(rows))
            yield pa.RecordBatch.from_pylist(rows, schema=SCORES_SCHEMA)

    return score


def read_rank(train_set: str, processor_path: str, image_root: str, rank: int) -> dict:
    """One training rank's pass over the training set as training reads it (``TrainSetStream``): every row of
    its own row groups once (an epoch), then ``TRAIN_BUILT_BATCHES`` batches built for the model (examples
    through the tiny checkpoint's processor, collated, labelled); no forward."""
    from transformers import AutoProcessor

    from vig_udf.train.data import TrainSetStream

    processor = AutoProcessor.from_pretrained(processor_path)
    stream = TrainSetStream(train_set, processor, batch_size=TRAIN_BATCH_SIZE, seed=0, rank=rank, world=TRAIN_WORLD,
                            image_root=image_root)
    own = sum(stream._own_rows(u) for u in stream.own_units)
    rows = sum(1 for _ in zip(range(own), stream.samples(0)))
    built = samples = skipped = 0
    for batch in stream:
        built, samples, skipped = built + 1, samples + int(batch["n_samples"]), skipped + len(batch["skipped"])
        if built == TRAIN_BUILT_BATCHES:
            break
    return {"rank": rank, "units": len(stream.own_units), "rows_read": rows, "max_rows_held": stream.max_rows_held,
            "batches_built": built, "samples_built": samples, "samples_skipped": skipped}


def train_read(workdir: Path) -> dict:
    """``TRAIN_WORLD`` ranks reading the training set at once, each in its own process (as training's ranks)."""
    import multiprocessing

    from vig_udf.tiny import build_tiny_checkpoint
    from vig_udf.train.data import list_units

    tiny = workdir / "tiny-llava"
    if not tiny.exists():
        build_tiny_checkpoint("llava", tiny, seed=0)
    train_set = str(workdir / "train" / "train_set")
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(TRAIN_WORLD) as pool:
        ranks = pool.starmap(read_rank, [(train_set, str(tiny), str(workdir / "images"), rank)
                                         for rank in range(TRAIN_WORLD)])
    units = list_units(train_set)
    return {"rows_in": sum(u.rows for u in units), "row_groups": len(units),
            "rows_out": sum(r["rows_read"] for r in ranks), "ranks": ranks,
            "job_seconds": round(time.perf_counter() - started, 1)}


def run_stage(stage: str, workdir: Path) -> dict:
    """One stage in this process; returns rows in and out and the job's summary fields that matter."""
    from vig_udf.config import ScorerConfig, SparkConfig
    from vig_udf.spark.session import spark_session

    if stage == "train_read":  # no Spark: training's ranks read the Parquet training set themselves
        return train_read(workdir)
    conf = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
            "spark.local.dir": str(workdir / "spark-local"), "spark.sql.warehouse.dir": str(workdir / "warehouse")}
    spark = spark_session(SparkConfig(master="local[2]", app_name=f"scale-{stage}", conf=conf))
    spark.sparkContext.setLogLevel("ERROR")
    lake, quiet = str(workdir / "lake"), (lambda *_: None)
    name = stage.removesuffix("_rerun")
    started = time.perf_counter()
    if name == "ingest":
        from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest

        s = run_ingest(spark, IngestJobConfig(input=str(workdir / "llava.json"), image_root=str(workdir / "images"),
                                              lake=lake), out=quiet)
        result = {"rows_out": s["new_rows"], "input_rows": s.get("input_rows"),
                  "rows_by_status": s.get("rows_by_status")}
    elif name == "score":
        import vig_udf.spark.score_job as score_job
        import vig_udf.spark.score_udf as score_udf
        from vig_udf.spark.score_udf import ScorerSpec

        score_job.resolve_spec = lambda cfg, gpu: ScorerSpec(model_path="stub", scorer_id=STUB_SCORER_ID)
        score_udf.score_batches = stub_score_batches
        s = score_job.run_score(spark, score_job.ScoreJobConfig(lake=lake, scorer=ScorerConfig(model_path="stub")),
                                out=quiet)
        files = spark.read.format("delta").load(f"{lake}/scores").inputFiles()
        result = {"rows_in": s.get("corpus_rows"), "rows_out": s["scored"], "rows_by_status": s.get("rows_by_status"),
                  "score_files": len(files)}
    elif name == "select":
        from vig_udf.spark.select_job import SelectJobConfig, run_select

        s = run_select(spark, SelectJobConfig(lake=lake, policies=POLICIES, p=70), out=quiet)
        result = {"rows_out": {p: v["rows"] for p, v in s["policies"].items()},
                  "kept": {p: v["kept_multimodal"] + v["kept_text_only"] for p, v in s["policies"].items()},
                  "selection_version": s["selection_version"]}
    elif name == "export":
        from vig_udf.spark.export_job import ExportJobConfig, run_export

        part_rows = int(os.environ.get("VIG_SCALE_EXPORT_PART_ROWS", ExportJobConfig.model_fields["part_rows"].default))
        s = run_export(spark, ExportJobConfig(lake=lake, policy="vig", output=str(workdir / "export" / "vig.json"),
                                              part_rows=part_rows), out=quiet)
        result = {"rows_out": s["records"], "parts": s["parts"], "largest_part_rows": s["largest_part_rows"],
                  "skipped": s.get("unchanged", False)}
    elif name == "train_set":
        from vig_udf.spark.train_job import TrainJobConfig, resolve_inputs, write_train_set

        resolved = resolve_inputs(spark, TrainJobConfig(lake=lake, policy="vig"))
        n = write_train_set(spark, resolved, str(workdir / "train" / "train_set"))
        result = {"rows_in": resolved["kept"], "rows_out": n}
    else:
        raise ValueError(f"unknown stage {stage!r}; stages: {STAGES}")
    result["job_seconds"] = round(time.perf_counter() - started, 1)  # the job alone, without the session start
    spark.stop()
    return result


def measure(stage: str, workdir: Path) -> dict:
    """Run ``stage`` in a child process; wall time, peak RSS of its process tree (total and by part)."""
    import psutil

    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--stage", stage, "--workdir", str(workdir)],
                             stdout=subprocess.PIPE, text=True)
    peaks = {"total": 0, "python_driver": 0, "jvm": 0, "python_workers": 0}
    stop = threading.Event()

    def sample() -> None:
        root = psutil.Process(child.pid)
        while not stop.is_set():
            parts = {"python_driver": 0, "jvm": 0, "python_workers": 0}
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for proc in procs:
                try:  # PSS: pages shared by forked workers (and the JVM) are counted once in the sum
                    rss = proc.memory_full_info().pss
                    kind = ("python_driver" if proc.pid == root.pid else
                            "jvm" if "java" in proc.name() else "python_workers")
                except psutil.NoSuchProcess:
                    continue
                parts[kind] += rss
            for kind, rss in parts.items():
                peaks[kind] = max(peaks[kind], rss)
            peaks["total"] = max(peaks["total"], sum(parts.values()))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = child.communicate()
    stop.set()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"stage {stage} failed ({child.returncode})")
    result = json.loads(output.strip().splitlines()[-1])
    return {"stage": stage, "seconds": round(time.perf_counter() - started, 1),
            **{f"peak_{k}_mb": round(v / 2**20) for k, v in peaks.items()}, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.workdir)))
        return
    if not (args.workdir / "llava.json").exists():
        args.workdir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        print(json.dumps({"stage": "generate", **generate(args.workdir, args.n, args.seed),
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    for stage in args.stages.split(","):
        print(json.dumps({"n": args.n, **measure(stage, args.workdir)}), flush=True)


if __name__ == "__main__":
    main()
