"""The demo job: build the shapes-world model, score generated samples, show where the image matters."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from vig_udf.config import DemoConfig
from vig_udf.demo.model import DemoModelConfig, build_demo_model
from vig_udf.demo.world import generate
from vig_udf.scorer import VIGScorer

log = logging.getLogger(__name__)


def run_demo(cfg: DemoConfig, *, model_config: DemoModelConfig = DemoModelConfig(), out=print) -> dict:
    """Score ``cfg.samples`` generated records and print a summary; returns the summary as a dict."""
    workdir = Path(cfg.workdir)
    started = time.perf_counter()
    model_path = cfg.scorer.model_path or build_demo_model(workdir / "model", model_config)
    built = time.perf_counter() - started
    scorer = VIGScorer.from_pretrained(model_path, **cfg.scorer.scorer_kwargs())
    records = generate(cfg.samples, seed=cfg.seed, config=model_config.world)
    started = time.perf_counter()
    results = scorer.score(records)
    elapsed = time.perf_counter() - started
    workdir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(workdir / "scores.jsonl", results, scorer.scorer_id)

    statuses = Counter(r.status for r in results)
    by_kind = _vig_by_question_kind(records, results)
    out(f"model: {model_path} (ready in {built:.0f}s)   scorer {scorer.scorer_id}, counterfactual "
        f"{scorer.options.counterfactual}")
    out(f"scored {len(results)} samples in {elapsed:.1f}s ({len(results) / elapsed:.1f} samples/s); "
        f"statuses: {dict(statuses)}")
    out("\nmean token VIG by question kind (nats/token):")
    for kind, values in sorted(by_kind.items(), key=lambda kv: -np.mean(kv[1])):
        out(f"  {kind:<8} {np.mean(values):+.3f}  over {len(values)} answer turns")
    out(f"\n{cfg.top} highest-VIG answer tokens:")
    for vig, token, answer, question in _top_tokens(scorer, records, results, cfg.top):
        out(f"  {vig:+.3f}  {token!r:<12} in {answer!r:<34} <- {question!r}")
    out(f"\nall scores: {workdir / 'scores.jsonl'}")
    return {"statuses": dict(statuses), "vig_by_kind": {k: float(np.mean(v)) for k, v in by_kind.items()},
            "samples_per_s": len(results) / elapsed, "scorer_id": scorer.scorer_id}


def _vig_by_question_kind(records, results) -> dict[str, list[float]]:
    by_kind: dict[str, list[float]] = {}
    for record, result in zip(records, results):
        if result.status != "ok":
            continue
        for turn, kind in enumerate(record["meta"]["kinds"]):
            in_turn = result.token_turn == turn
            if in_turn.any():
                by_kind.setdefault(kind, []).append(float(result.token_vig[in_turn].mean()))
    return by_kind


def _top_tokens(scorer, records, results, top: int):
    rows = []
    for record, result in zip(records, results):
        if result.status != "ok":
            continue
        turns = record["conversations"]
        for i in np.argsort(-result.token_vig)[:3]:
            turn = int(result.token_turn[i])
            answer = turns[2 * turn + 1]["value"]
            token = answer[result.token_char_start[i]:result.token_char_end[i]]
            question = turns[2 * turn]["value"].replace("<image>\n", "")
            rows.append((float(result.token_vig[i]), token, answer, question))
    rows.sort(key=lambda row: -row[0])
    return rows[:top]


def _write_jsonl(path: Path, results, scorer_id: str) -> None:
    with path.open("w") as f:
        for result in results:
            row = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.to_dict().items()}
            f.write(json.dumps({"scorer_id": scorer_id, **row}) + "\n")
