"""The cost of the lake around the work, before and after a change, side by side in one run.

Runs each step as the user does (``python -m vig_udf.cli ...`` in a process of its own, local Spark) with
two source trees on the same virtual environment: ``--before`` (a git revision, checked out into a
temporary worktree) and the working tree. Steps alternate between the two trees, so that load on the
machine affects both alike. Steps:

- a bare Spark session started and stopped (no Delta), and, for trees that have it, the product's own
  session (with Delta Lake) started and stopped: the engine's start-up cost;
- ``vig ingest`` of 6 records, then the same ingest again (nothing to add);
- ``vig ingest`` of 100,000 records (LLaVA layout, 64 image files shared by all rows), then again;
- ``vig score`` of 96 records with the demo model.

Wall time and the peak resident memory of the whole process tree (Python driver, JVM, Python workers)
are printed as a Markdown table. Usage::

    .venv/bin/python benchmarks/lake_overhead.py --before 2be25ed
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SPARK = {"master": "local[2]", "conf": {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                                        "spark.sql.shuffle.partitions": "4"}}
BARE_SESSION = ("from pyspark.sql import SparkSession; "
                "SparkSession.builder.master('local[2]').config('spark.ui.enabled', 'false').getOrCreate().stop()")
DELTA_SESSION = ("from vig_udf.config import SparkConfig; from vig_udf.spark.session import spark_session; "
                 "spark = spark_session(SparkConfig(master='local[2]', conf={'spark.ui.enabled': 'false'})); ")
FIRST_READ = "import sys; from vig_udf.lake import table_version; table_version(spark, sys.argv[1]); "


def run(command: list[str], tree: Path, log: Path) -> tuple[float, float]:
    """(seconds, peak MB of the process tree) of one command run with ``tree`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree), "SPARK_LOCAL_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
        parent, peak = psutil.Process(process.pid), 0
        while process.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.2)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed in {tree}; see {log}")
    return seconds, peak / 2**20


def write_small_corpus(folder: Path, n: int, seed: int) -> Path:
    """``n`` shapes-world records (the demo's generator) with their PNG images."""
    from vig_udf.demo.world import generate

    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for rec in generate(n, seed=seed):
        out = {"id": rec["id"], "conversations": rec["conversations"]}
        if "image" in rec:
            (folder / "images").mkdir(exist_ok=True)
            rec["image"].save(folder / "images" / f"{rec['id']}.png")
            out["image"] = f"{rec['id']}.png"
        records.append(out)
    (folder / "records.json").write_text(json.dumps(records))
    return folder / "records.json"


def write_large_corpus(folder: Path, n: int) -> Path:
    """``n`` LLaVA-layout JSONL records over a pool of 64 image files (6% text-only, 1-4 turns)."""
    from PIL import Image

    images = folder / "images" / "coco"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(64):
        Image.new("RGB", (64, 48), (i * 4, 255 - i * 4, 128)).save(images / f"{i}.png")
    with open(folder / "records.jsonl", "w") as out:
        for i in range(n):
            turns = []
            for t in range(1 + i % 4):
                question = f"What is the colour of object {t} in picture {i}?"
                turns += [{"from": "human", "value": ("<image>\n" if t == 0 and i % 16 else "") + question},
                          {"from": "gpt", "value": f"Object {t} is red and sits on the left of shape {i % 97}."}]
            record = {"id": str(i), "conversations": turns}
            if i % 16:
                record["image"] = f"coco/{i % 64}.png"
            out.write(json.dumps(record) + "\n")
    return folder / "records.jsonl"


def conf(folder: Path, name: str, tree: Path, **sections) -> Path:
    path = folder / f"{name}-{tree.name}.json"
    path.write_text(json.dumps({"lake": str(folder / f"lake-{name}-{tree.name}"), "spark": SPARK, **sections}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision of the 'before' tree")
    parser.add_argument("--large", type=int, default=100_000, help="records of the large ingest")
    parser.add_argument("--workdir", default=".bench/lake_overhead")
    parser.add_argument("--only", default=None, help="run only the steps whose name contains this text")
    args = parser.parse_args()

    work = (ROOT / args.workdir).absolute()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    before = Path(tempfile.mkdtemp(prefix="vig-before-")) / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before], check=True,
                   capture_output=True)
    after = ROOT
    try:
        from vig_udf.demo.model import build_demo_model

        model = build_demo_model(str(ROOT / ".demo" / "model"))
        small = write_small_corpus(work / "small", 6, seed=1)
        scored = write_small_corpus(work / "scored", 96, seed=2)
        large = write_large_corpus(work / "large", args.large)
        cli = [sys.executable, "-m", "vig_udf.cli"]
        results: dict[str, dict[str, tuple[float, float]]] = {}

        def step(name: str, commands: dict[Path, list[str]]) -> None:
            if args.only and args.only not in name:
                return
            for tree, command in commands.items():
                key = "before" if tree == before else "after"
                results.setdefault(name, {})[key] = run(command, tree, work / f"{name}-{key}.log")
                print(f"{name:<28} {key:<6} {results[name][key][0]:7.1f} s {results[name][key][1]:8.0f} MB",
                      flush=True)

        step("bare Spark start and stop", {t: [sys.executable, "-c", BARE_SESSION] for t in (before, after)})
        step("Delta session start and stop", {after: [sys.executable, "-c", DELTA_SESSION + "spark.stop()"]})
        for name, corpus in (("ingest 6", small), (f"ingest {args.large:,}", large)):
            confs = {t: conf(work, name.replace(" ", "").replace(",", ""), t, ingest={
                "input": str(corpus), "image_root": str(corpus.parent / "images")}) for t in (before, after)}
            step(name, {t: [*cli, "ingest", "--config", str(c)] for t, c in confs.items()})
            step(f"{name}, rerun (nothing new)", {t: [*cli, "ingest", "--config", str(c)] for t, c in confs.items()})
            if name == "ingest 6":  # the engine's first look at a table: class loading and log replay
                table = work / f"lake-ingest6-{after.name}" / "corpus"
                step("Delta session, one table version read, stop",
                     {after: [sys.executable, "-c", DELTA_SESSION + FIRST_READ + "spark.stop()", str(table)]})
        confs = {t: conf(work, "score96", t, ingest={"input": str(scored), "image_root": str(scored.parent / "images")},
                         score={"scorer": {"model_path": model, "dtype": "float32", "blur_sigma": 0.3,
                                           "image_root": str(scored.parent / "images")}}) for t in (before, after)}
        for tree, c in confs.items():
            run([*cli, "ingest", "--config", str(c)], tree, work / f"score96-ingest-{tree.name}.log")
        step("score 96 (demo model)", {t: [*cli, "score", "--config", str(c)] for t, c in confs.items()})
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], capture_output=True)

    print(f"\n| step | before (s) | after (s) | after / before | peak MB before | peak MB after |\n|---|---|---|---|---|---|")
    for name, by in results.items():
        b, a = by.get("before"), by.get("after")
        ratio = f"{a[0] / b[0]:.2f}" if a and b else "-"
        print(f"| {name} | {b[0]:.1f} | {a[0]:.1f} | {ratio} | {b[1]:.0f} | {a[1]:.0f} |" if b else
              f"| {name} | - | {a[0]:.1f} | - | - | {a[1]:.0f} |")


if __name__ == "__main__":
    main()
