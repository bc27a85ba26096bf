"""The mismatched counterfactual: the partner rule (deterministic, never the sample itself nor the same image,
same source first), its VIG against an independent two-pass computation, and the partners as a DataFrame job
(the score job with mismatched: tests/test_multi_counterfactual.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.conftest import random_image, sample
from vig_udf.scoring.options import ScorerOptions
from vig_udf.scoring.partners import assign_partners, image_key, partners, rank_key
from vig_udf.scoring.scorer import VIGScorer


def corpus_like(n: int = 60, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """ids, image keys and sources: shared images within a source, a source with one image, a lone sample."""
    rng = random.Random(seed)
    ids, keys, sources = [], [], []
    for i in range(n):
        source = rng.choice(["coco", "gqa", "vg"])
        ids.append(f"s{i}")
        sources.append(source)
        keys.append(f"path:{source}/{rng.randrange(6)}.jpg")  # about n/18 samples per image
    ids += ["one-a", "one-b", "lone"]
    keys += ["path:ocr/x.jpg", "path:ocr/x.jpg", "path:textvqa/y.jpg"]
    sources += ["ocr", "ocr", "textvqa"]
    return ids, keys, sources


def test_partners_are_another_image_of_the_same_source_and_do_not_depend_on_input_order():
    ids, keys, sources = corpus_like()
    found = partners(ids, keys, sources, seed=3, scope="source")
    by_id = {ids[i]: ids[p] for i, p in enumerate(found)}
    for i, p in enumerate(found):
        assert p >= 0 and p != i and keys[p] != keys[i]
        if sources[i] in ("coco", "gqa", "vg"):
            assert sources[p] == sources[i]  # same source when it has more than one image
    for one_image in ("one-a", "one-b"):  # a source with one image takes a partner from the whole corpus
        assert sources[ids.index(by_id[one_image])] != "ocr"
    assert sources[ids.index(by_id["lone"])] != "textvqa"
    # the next other image in rank order, within the source
    coco = sorted((i for i in range(len(ids)) if sources[i] == "coco"), key=lambda i: rank_key(3, ids[i]))
    first = coco[0]
    expected = next(j for j in coco[1:] + coco[:1] if keys[j] != keys[first])
    assert found[first] == expected
    # another input order (another partitioning, a rerun) gives every sample the same partner
    order = list(range(len(ids)))
    random.Random(1).shuffle(order)
    shuffled = partners([ids[i] for i in order], [keys[i] for i in order], [sources[i] for i in order], seed=3,
                        scope="source")
    assert {ids[order[i]]: ids[order[p]] for i, p in enumerate(shuffled)} == by_id
    # the seed is the permutation; the corpus scope ignores sources
    assert partners(ids, keys, sources, seed=4, scope="source") != found
    anywhere = partners(ids, keys, sources, seed=3, scope="corpus")
    assert any(sources[p] != sources[i] for i, p in enumerate(anywhere))
    assert all(p != i and keys[p] != keys[i] for i, p in enumerate(anywhere))


def test_one_image_in_the_whole_corpus_gives_no_partner():
    assert partners(["a", "b"], ["path:x", "path:x"], ["coco", "gqa"], seed=0, scope="source") == [-1, -1]
    assert partners(["a"], ["path:x"], ["coco"], seed=0, scope="corpus") == [-1]


def test_partner_parameters_are_part_of_the_identity_of_mismatched_only():
    blur = ScorerOptions().identity_options()
    assert "partner_seed" not in blur and "partner_scope" not in blur  # earlier scorer ids hold
    assert ScorerOptions(partner_seed=5).identity_options() == blur
    mismatched = ScorerOptions(counterfactual="mismatched").identity_options()
    assert mismatched["partner_seed"] == 0 and mismatched["partner_scope"] == "source"
    assert ScorerOptions(counterfactual="mismatched", partner_seed=1).identity_options() != mismatched
    assert ScorerOptions(counterfactual="mismatched", partner_scope="corpus").identity_options() != mismatched


def records_with_images() -> list[dict]:
    shared = random_image(48, 40, 7)
    return [
        sample("a", [("What colour is the square?", "Red")], random_image(64, 48, 0)),
        sample("b", [("How many circles?", "There are three circles."), ("Left?", "Yes")], random_image(40, 60, 1)),
        sample("c", [("Describe it.", "A small blue square above a green triangle.")], shared),
        sample("d", [("What is on the right?", "A green triangle")], shared),
        sample("t", [("How do I reverse a list?", "Use slicing.")]),
    ]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])  # one image layout; a layout that follows the image size
def test_mismatched_vig_equals_two_passes_of_the_plain_scorer(tiny_checkpoints, family):
    records = assign_partners(records_with_images(), seed=0)
    by_id = {r["id"]: r for r in records}
    assert "counterfactual_partner" not in by_id["t"]
    assert by_id["c"]["counterfactual_partner"] != "d" and by_id["d"]["counterfactual_partner"] != "c"
    scorer = VIGScorer.from_pretrained(tiny_checkpoints[family], counterfactual="mismatched", dtype="float32")
    results = {r.sample_id: r for r in scorer.score(records)}
    plain = VIGScorer.from_pretrained(tiny_checkpoints[family], counterfactual="drop", dtype="float32")
    images = [r for r in records if "image" in r]
    own = plain.score(images)
    swapped = plain.score([{**r, "image": r["counterfactual_image"]} for r in images])
    for record, with_own, with_partner in zip(images, own, swapped):
        got = results[record["id"]]
        assert got.status == "ok" and got.counterfactual == "mismatched"
        assert got.counterfactual_partner == record["counterfactual_partner"]
        np.testing.assert_allclose(got.logp_with, with_own.logp_with, atol=1e-5)
        np.testing.assert_allclose(got.token_vig, with_own.logp_with - with_partner.logp_with, atol=1e-5)
        assert got.vig == pytest.approx(float(np.mean(with_own.logp_with - with_partner.logp_with)), abs=1e-5)
    assert results["t"].status == "text_only" and results["t"].counterfactual_partner is None
    assert scorer.scorer_id != plain.scorer_id


def test_no_partner_and_a_partner_with_the_same_pixels_get_no_partner(tiny_checkpoints):
    scorer = VIGScorer.from_pretrained(tiny_checkpoints["llava"], counterfactual="mismatched", dtype="float32")
    image = random_image(40, 40, 3)
    records = [sample("alone", [("What?", "Red")], image),
               {**sample("copy", [("What?", "Red")], image), "counterfactual_partner": "x",
                "counterfactual_image": image.copy()},
               {**sample("gone", [("What?", "Red")], image), "counterfactual_partner": "y",
                "counterfactual_image": "/nonexistent/y.png"}]
    results = scorer.score(records)
    assert [r.status for r in results] == ["no_partner", "no_partner", "image_unreadable"]
    assert "same image" in results[1].error and results[1].counterfactual_partner == "x"
    assert "partner y" in results[2].error
    assert image_key(image) == image_key(image.copy())


def test_score_file_draws_partners_among_the_files_records(tiny_checkpoints, tmp_path):
    import json

    from vig_udf.score_file import score_records

    scorer = VIGScorer.from_pretrained(tiny_checkpoints["llava"], counterfactual="mismatched", dtype="float32")
    paths = []
    for i in range(3):
        random_image(40, 40, i).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    records = [sample(f"r{i}", [("What?", "Red")], path) for i, path in enumerate(paths)]
    counts = score_records(scorer, records, tmp_path / "out.jsonl", chunk=2, progress=lambda *_: None)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert counts == {"ok": 3}
    expected = assign_partners(records, seed=0)
    assert [r["counterfactual_partner"] for r in rows] == [r["counterfactual_partner"] for r in expected]
    assert all(r["counterfactual_partner"] != r["sample_id"] for r in rows)


# -- Spark: the partners as a DataFrame job, and the score job ------------------------------------------------


def corpus_frame(spark, ids, keys, sources, partitions: int):
    """Corpus-shaped rows for ``corpus_like``'s samples (half the images as bytes, the others as paths), a
    text-only row and a failed row, in ``partitions`` partitions."""
    rows = []
    for i, (sample_id, key, source) in enumerate(zip(ids, keys, sources)):
        path = key.removeprefix("path:")
        as_bytes = path[-5] in "13579"  # coco/3.jpg as bytes, coco/2.jpg as a path (one form per image)
        rows.append((sample_id, source, None if as_bytes else path, path.encode() if as_bytes else None, "ok"))
    rows += [("text", "text", None, None, "text_only"), ("broken", "coco", "coco/9.jpg", None, "image_unreadable")]
    schema = "sample_id string, source string, image_path string, image_bytes binary, status string"
    return spark.createDataFrame(rows, schema).repartition(partitions)


@pytest.mark.spark
def test_the_dataframe_job_gives_the_partners_of_the_rule_whatever_the_partitioning(spark):
    from vig_udf.spark.partners import partner_ids

    ids, keys, sources = corpus_like(n=40, seed=2)
    frames = [corpus_frame(spark, ids, keys, sources, n) for n in (1, 3)]
    rows = frames[0].collect()  # the keys the job sees: bytes by their digest, paths as they are
    job_keys = [image_key(r.image_bytes) if r.image_bytes is not None else image_key(r.image_path) for r in rows
                if r.status == "ok"]
    ok_ids = [r.sample_id for r in rows if r.status == "ok"]
    ok_sources = [r.source for r in rows if r.status == "ok"]
    found = partners(ok_ids, job_keys, ok_sources, seed=5, scope="source")  # the corpus scope: the fallback's
    expected = {ok_ids[i]: ok_ids[p] for i, p in enumerate(found) if p >= 0}
    assert len(expected) == len(ok_ids)
    from pyspark.sql import functions as F

    both = (partner_ids(frames[0], seed=5, scope="source").withColumn("partitions", F.lit(1))
            .unionByName(partner_ids(frames[1], seed=5, scope="source").withColumn("partitions", F.lit(3))))
    got: dict[int, dict] = {1: {}, 3: {}}
    for r in both.collect():  # one Spark job for both partitionings
        got[r.partitions][r.sample_id] = r.counterfactual_partner
    assert got[1] == expected and got[3] == expected
