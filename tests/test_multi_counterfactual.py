"""Several counterfactuals in one job: one real-image pass per sample shared by k counterfactual passes, each
counterfactual's rows under its own scorer id, equal to k separate scorers; the score job's mismatched partners
(joined from the corpus) and the new column added to a table made before it."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import random_image, sample
from vig_udf.scoring.options import ScorerOptions
from vig_udf.scoring.partners import assign_partners
from vig_udf.scoring.scorer import VIGScorer

SEVERAL = ["blur", "mismatched", "drop"]


def test_the_list_option_names_distinct_known_counterfactuals():
    options = ScorerOptions(counterfactuals=SEVERAL)
    assert options.counterfactual == "blur" and options.counterfactual_names() == SEVERAL
    assert options.for_counterfactual("drop").identity_options() == ScorerOptions(counterfactual="drop").identity_options()
    assert ScorerOptions().counterfactual_names() == ["blur"]
    for bad in (["blur", "blur"], ["fog"], []):
        with pytest.raises(ValueError, match="counterfactuals"):
            ScorerOptions(counterfactuals=bad)
    with pytest.raises(ValueError, match="not in counterfactuals"):
        ScorerOptions(counterfactual="noise", counterfactuals=["drop", "blur"])


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_one_real_image_pass_per_sample_and_the_results_of_separate_scorers(tiny_checkpoints, family,
                                                                            forward_batches):
    records = assign_partners([
        sample("a", [("What colour is the square?", "Red")], random_image(64, 48, 0)),
        sample("b", [("How many circles?", "There are three."), ("Left?", "Yes")], random_image(40, 60, 1)),
        sample("c", [("Describe it.", "A small blue square above a green triangle.")], random_image(48, 48, 2)),
        sample("t", [("How do I reverse a list?", "Use slicing.")]),
    ], seed=0) + [sample("alone", [("What?", "Red")], random_image(32, 32, 3))]  # no partner: mismatched fails
    path = tiny_checkpoints[family]
    several = VIGScorer.from_pretrained(path, counterfactuals=SEVERAL, dtype="float32")
    got = several.score_all(records)
    multi_passes = sum(forward_batches)
    assert multi_passes == several.forwarded == 4 * (1 + 3) - 1  # 4 image samples; 'alone' has no mismatched pass
    forward_batches.clear()
    for cf in SEVERAL:
        alone = VIGScorer.from_pretrained(path, counterfactual=cf, dtype="float32")
        assert several.scorer_ids[cf] == alone.scorer_id
        for a, b in zip(got[cf], alone.score(records)):
            assert (a.sample_id, a.status, a.counterfactual, a.counterfactual_partner, a.error) == \
                (b.sample_id, b.status, b.counterfactual, b.counterfactual_partner, b.error)
            np.testing.assert_allclose(a.token_vig, b.token_vig, atol=1e-5)
            np.testing.assert_allclose(a.logp_without, b.logp_without, atol=1e-5)
            assert a.vig == pytest.approx(b.vig, abs=1e-5)
    assert sum(forward_batches) == 3 * 2 * 4 - 2  # k separate scorers: a real-image pass each
    assert [r.status for r in got["mismatched"]] == ["ok", "ok", "ok", "text_only", "no_partner"]
    with pytest.raises(ValueError, match="scorer_ids"):
        several.scorer_id


@pytest.mark.spark
def test_a_job_of_several_counterfactuals_equals_separate_scorers_in_one_commit(spark, tmp_path, tiny_checkpoints):
    from pyspark.sql.pandas.types import from_arrow_schema

    from tests.test_spark_jobs import scorer_config, write_corpus
    from vig_udf.lake import read_table, table_history, write_table
    from vig_udf.spark.arrow import SCORES_SCHEMA
    from vig_udf.lake.scorers import list_scorers
    from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest
    from vig_udf.spark.score_job import ScoreJobConfig, run_score

    records = write_corpus(tmp_path, n=8, seed=13)
    lake = tmp_path / "lake"
    run_ingest(spark, IngestJobConfig(input=str(tmp_path / "records.json"), image_root=str(tmp_path / "images"),
                                      lake=str(lake)), out=lambda *_: None)
    # a scores table from before counterfactual_partner existed: one row of another scorer
    before = SCORES_SCHEMA.remove(SCORES_SCHEMA.get_field_index("counterfactual_partner"))
    old = {"sample_id": records[0]["id"], "scorer_id": "old", "counterfactual": "blur", "status": "ok", "vig": 0.5}
    write_table(spark.createDataFrame([old], from_arrow_schema(before)), str(lake / "scores"), job="score",
                config={})
    cfg = ScoreJobConfig(lake=str(lake), partitions=2, scorer=scorer_config(
        tiny_checkpoints["llava"], tmp_path, counterfactuals=SEVERAL))
    summary = run_score(spark, cfg, out=lambda *_: None)
    with_image = [r for r in records if "image" in r]
    assert summary["commits"] == 1 and summary["passes"] == len(with_image) * (1 + len(SEVERAL))
    history = table_history(spark, str(lake / "scores"))
    assert [s["counterfactual"] for s in history[0]["config"]["scorers"]] == SEVERAL
    ids = summary["scorer_ids"]
    listed = {s["scorer_id"]: s for s in list_scorers(history, {})}
    assert {cf: listed[i]["counterfactual"] for cf, i in ids.items()} == {cf: cf for cf in SEVERAL}
    table = [r.asDict() for r in read_table(spark, str(lake / "scores")).collect()]  # one read for every scorer
    rows = {cf: {r["sample_id"]: r for r in table if r["scorer_id"] == i} for cf, i in ids.items()}
    partners = {s: r["counterfactual_partner"] for s, r in rows["mismatched"].items()}
    images = {r["id"]: r.get("image") for r in records}
    assert [r["counterfactual_partner"] for r in table if r["scorer_id"] == "old"] == [None]
    assert {s for s, p in partners.items() if p} == {r["id"] for r in with_image}  # the text-only rows have none
    for s, p in partners.items():  # another sample, another image, the same source
        assert p is None or (p != s and images[p] != images[s] and images[p].split("/")[0] == images[s].split("/")[0])
    assert all(rows[cf][s]["counterfactual_partner"] is None for cf in ("blur", "drop") for s in rows[cf])
    local = [{**r, "counterfactual_partner": partners[r["id"]], "counterfactual_image": images[partners[r["id"]]]}
             if partners.get(r["id"]) else r for r in records]
    for cf in SEVERAL:
        alone = VIGScorer.from_pretrained(tiny_checkpoints["llava"], counterfactual=cf, dtype="float32",
                                          image_root=str(tmp_path / "images"))
        assert alone.scorer_id == ids[cf]
        assert len(rows[cf]) == len(records)
        for result in alone.score(local):
            row = rows[cf][result.sample_id]
            assert (row["status"], row["counterfactual"], row["counterfactual_partner"]) == \
                (result.status, cf, result.counterfactual_partner)
            if result.status == "ok":
                np.testing.assert_allclose(row["token_vig"], result.token_vig, atol=1e-5)
    assert run_score(spark, cfg, out=lambda *_: None)["scored"] == 0  # every scorer completed the corpus
