"""The demo job on the embedded default: build the shapes-world model, write a generated corpus, ingest
it and score it with Spark into local Delta tables, then show where the image mattered."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from vig_udf.config import DemoConfig, ScorerConfig
from vig_udf.demo.model import DemoModelConfig, build_demo_model
from vig_udf.demo.world import generate

log = logging.getLogger(__name__)


def write_demo_corpus(folder: Path, n: int, seed: int, model_config: DemoModelConfig) -> Path:
    """Generated records as LLaVA JSON with PNG images under ``folder/images/shapes``; returns the JSON path.

    The question kind of every answer turn goes to ``kinds.json`` (sample id -> kinds) for the report.
    """
    images = folder / "images" / "shapes"
    images.mkdir(parents=True, exist_ok=True)
    records, kinds = [], {}
    for rec in generate(n, seed=seed, config=model_config.world):
        out = {"id": rec["id"], "conversations": rec["conversations"]}
        if "image" in rec:
            rec["image"].save(images / f"{rec['id']}.png")
            out["image"] = f"shapes/{rec['id']}.png"
        records.append(out)
        kinds[rec["id"]] = rec["meta"]["kinds"]
    (folder / "records.json").write_text(json.dumps(records))
    (folder / "kinds.json").write_text(json.dumps(kinds))
    return folder / "records.json"


def run_demo(cfg: DemoConfig, *, model_config: DemoModelConfig = DemoModelConfig(), spark=None, out=print) -> dict:
    """Run the demo; returns a summary dict (statuses, VIG by question kind, scorer id, table versions)."""
    from vig_udf.lake import read_table
    from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest
    from vig_udf.spark.score_job import ScoreJobConfig, run_score
    from vig_udf.spark.session import spark_session

    workdir = Path(cfg.workdir)
    started = time.perf_counter()
    model_path = cfg.scorer.model_path or build_demo_model(workdir / "model", model_config)
    out(f"demo model: {model_path} (ready in {time.perf_counter() - started:.0f}s)")
    corpus_dir = workdir / "corpus"
    records_path = write_demo_corpus(corpus_dir, cfg.samples, cfg.seed, model_config)
    lake = cfg.lake or str(workdir / "lake")
    spark = spark or spark_session(cfg.spark)
    run_ingest(spark, IngestJobConfig(input=str(records_path), image_root=str(corpus_dir / "images"), lake=lake),
               out=out)
    scorer = ScorerConfig(**{**cfg.scorer.model_dump(), "model_path": model_path,
                             "image_root": str(corpus_dir / "images")})
    summary = run_score(spark, ScoreJobConfig(lake=lake, scorer=scorer, spark=cfg.spark), out=out)

    scores = read_table(spark, lake + "/scores").where(f"scorer_id = '{summary['scorer_id']}'").toPandas()
    corpus = read_table(spark, lake + "/corpus").select("sample_id", "conversations").toPandas()
    kinds = json.loads((corpus_dir / "kinds.json").read_text())
    conversations = {row.sample_id: list(row.conversations) for row in corpus.itertuples()}
    by_kind = _vig_by_question_kind(scores, kinds)
    out("\nmean token VIG by question kind (nats per token):")
    for kind, values in sorted(by_kind.items(), key=lambda kv: -np.mean(kv[1])):
        out(f"  {kind:<8} {np.mean(values):+.3f}  over {len(values)} answer turns")
    out(f"\n{cfg.top} highest-VIG answer tokens:")
    for vig, token, answer, question in _top_tokens(scores, conversations, cfg.top):
        out(f"  {vig:+.3f}  {token!r:<12} in {answer!r:<34} <- {question!r}")
    out(f"\ntables: {lake}/corpus, {lake}/scores  (query them: vig sql \"SELECT ... FROM scores\" --lake {lake})")
    return {**summary, "vig_by_kind": {k: float(np.mean(v)) for k, v in by_kind.items()}, "lake": lake}


def _vig_by_question_kind(scores, kinds: dict[str, list[str]]) -> dict[str, list[float]]:
    by_kind: dict[str, list[float]] = {}
    for row in scores[scores.status == "ok"].itertuples():
        turns, token_vig = np.asarray(row.token_turn), np.asarray(row.token_vig)
        for turn, kind in enumerate(kinds.get(row.sample_id, [])):
            if (turns == turn).any():
                by_kind.setdefault(kind, []).append(float(token_vig[turns == turn].mean()))
    return by_kind


def _top_tokens(scores, conversations: dict[str, list], top: int):
    rows = []
    for row in scores[scores.status == "ok"].itertuples():
        turns = conversations[row.sample_id]
        token_vig = np.asarray(row.token_vig)
        for i in np.argsort(-token_vig)[:3]:
            turn = int(row.token_turn[i])
            answer = turns[2 * turn + 1]["value"]
            token = answer[row.token_char_start[i]:row.token_char_end[i]]
            question = turns[2 * turn]["value"].replace("<image>\n", "")
            rows.append((float(token_vig[i]), token, answer, question))
    rows.sort(key=lambda r: -r[0])
    return rows[:top]
