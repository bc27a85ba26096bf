"""The score job's rescore of chosen statuses and its progress lines, and ingest's rule for a turn's value.

One ingest and one first score run (module fixture) serve the three Spark tests.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import random_image
from tests.test_spark_jobs import score_rows, scorer_config, write_corpus
from vig_udf.lake import read_table, table_history
from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest
from vig_udf.spark.progress import Progress
from vig_udf.spark.score_job import ScoreJobConfig, run_score

QA = [{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "It is red."}]
NOT_A_STRING = [
    {"id": "number", "conversations": [{"from": "human", "value": "How many?"}, {"from": "gpt", "value": 42}]},
    {"id": "object", "conversations": [{"from": "human", "value": {"text": "Hi"}}, {"from": "gpt", "value": "Hi"}]},
]


@pytest.fixture(scope="module")
def scored_once(spark, tmp_path_factory, tiny_checkpoints):
    """A corpus with a record whose image is missing and two with a non-string turn value, scored once with
    progress lines every 0.2 s; returns (root, records, config, first summary, the job's output lines)."""
    root = tmp_path_factory.mktemp("retries")
    records = write_corpus(root, n=4, seed=22) + [{"id": "late", "image": "late/a.png", "conversations": QA}]
    (root / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records + NOT_A_STRING) + "\n")
    run_ingest(spark, IngestJobConfig(input=str(root / "records.jsonl"), image_root=str(root / "images"),
                                      lake=str(root / "lake"), check_files=False), out=lambda *_: None)
    cfg = ScoreJobConfig(lake=str(root / "lake"), partitions=2, progress_every_s=0.2,
                         scorer=scorer_config(tiny_checkpoints["llava"], root))
    lines: list[str] = []
    first = run_score(spark, cfg, out=lines.append)
    return root, records, cfg, first, lines


@pytest.mark.spark
def test_ingest_marks_a_turn_value_that_is_not_a_string_invalid_conversation(spark, scored_once):
    root, records, *_ = scored_once
    corpus = {r.sample_id: r for r in read_table(spark, str(root / "lake" / "corpus")).collect()}
    for key in ("number", "object"):
        assert corpus[key].status == "invalid_conversation", corpus[key].error
        assert "is not a {'from', 'value': str} dict" in corpus[key].error
    assert corpus["number"].conversations[1]["value"] == "42"  # stored as its JSON text
    assert all(corpus[r["id"]].status in ("ok", "text_only") for r in records)
    assert [t.asDict() for t in corpus[records[0]["id"]].conversations] == records[0]["conversations"]


@pytest.mark.spark
def test_a_score_job_prints_rows_done_rate_and_time_left_while_it_runs(scored_once):
    *_, first, lines = scored_once
    progress = [line for line in lines if line.startswith("progress: ")]
    total = first["scored"]
    assert len(progress) >= 2, lines  # lines while it ran, and the last count
    assert re.fullmatch(rf"progress: {total} of {total} rows scored \(100%\), {total} committed, [0-9.]+ rows/s, "
                        r"about 0s left", progress[-1]), progress
    assert ScoreJobConfig().progress_every_s > 0  # on by default


@pytest.mark.spark
def test_rescore_replaces_the_rows_of_chosen_statuses_and_keeps_one_row_per_key(spark, scored_once):
    root, records, cfg, first, _ = scored_once
    lake = root / "lake"
    before = score_rows(spark, lake, first["scorer_id"])
    assert before["late"]["status"] == "image_unreadable"
    (root / "images" / "late").mkdir()
    random_image(40, 40, 5).save(root / "images" / "late" / "a.png")  # the cause is fixed
    quiet = cfg.model_copy(update={"progress_every_s": 0})
    assert run_score(spark, quiet, out=lambda *_: None)["scored"] == 0  # resume alone never retries it
    lines: list[str] = []
    again = run_score(spark, quiet.model_copy(update={"rescore": ["image_unreadable", "model_error"]}),
                      out=lines.append)
    assert again["scored"] == 1
    after = score_rows(spark, lake, first["scorer_id"])
    assert after["late"]["status"] == "ok" and after["late"]["vig"] is not None
    keys = [(r.sample_id, r.scorer_id) for r in read_table(spark, str(lake / "scores")).collect()]
    assert len(keys) == len(set(keys)) == len(records) + len(NOT_A_STRING)
    for key, row in before.items():
        if key != "late":  # rows of other statuses untouched
            assert (after[key]["status"], after[key]["score_seconds"]) == (row["status"], row["score_seconds"])
    assert any("1 re-scored rows replaced" in line for line in lines), lines
    assert table_history(spark, str(lake / "scores"))[0]["metrics"]["numTargetRowsUpdated"] == 1
    with pytest.raises(ValueError, match="only failure statuses"):
        ScoreJobConfig(rescore=["ok"])


def test_progress_line_reports_rows_rate_and_time_left():
    now, printed = [100.0], []
    progress = Progress(1000, out=printed.append, every_s=10, clock=lambda: now[0])
    now[0] = 130.0
    assert progress.line(0, 0) == "progress: 0 of 1000 rows scored after 30s (counted as tasks finish)"
    now[0] = 150.0
    assert progress.line(250, 100) == ("progress: 250 of 1000 rows scored (25%), 100 committed, 5.00 rows/s, "
                                       "about 2m30s left")
    progress.maybe_print(250, 100)
    now[0] = 155.0
    progress.maybe_print(300, 100)  # 5 s after the last line: none
    assert printed == ["progress: 250 of 1000 rows scored (25%), 100 committed, 5.00 rows/s, about 2m30s left"]
