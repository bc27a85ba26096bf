"""The mismatched counterfactual's partner rule at scale and by content: the DataFrame job cuts each group's order
into stretches (no window holds the corpus in one partition) and gives the in-process rule's partners for every
number of stretches and every partitioning; copies of one file under two paths (or as stored bytes) are one image,
so the rule moves on to the next candidate."""

from __future__ import annotations

import random
import shutil

import pytest

from tests.conftest import random_image, sample
from vig_udf.scoring.partners import assign_partners, content_key, file_key, image_key, partners, rank_key

SCHEMA = "sample_id string, source string, image_path string, image_bytes binary, status string"


def skewed_corpus(seed: int) -> tuple[list[str], list[str], list[str]]:
    """ids, image keys and sources with long runs: a source where one image dominates (its runs span many
    stretches of the order), a source of one image (the whole corpus's fallback), small mixed sources."""
    rng = random.Random(seed)
    ids, keys, sources = [], [], []
    for i in range(70):
        source = rng.choice(["coco", "coco", "coco", "gqa", "vg"])
        image = ("a" if rng.random() < 0.85 else rng.choice("bc")) if source == "coco" else (
            "one" if source == "gqa" else str(rng.randrange(3)))
        ids.append(f"k{seed}-{i}")
        sources.append(source)
        keys.append(f"path:{source}/{image}.jpg")
    return ids, keys, sources


def frame(spark, ids, keys, sources, partitions: int):
    rows = [(i, s, k.removeprefix("path:"), None, "ok") for i, k, s in zip(ids, keys, sources)]
    rows.append(("text", "text", None, None, "text_only"))
    return spark.createDataFrame(rows, SCHEMA).repartition(partitions)


def expected_partners(ids, keys, sources, *, seed: int, scope: str) -> dict[str, str]:
    found = partners(ids, keys, sources, seed=seed, scope=scope)
    return {ids[i]: ids[p] for i, p in enumerate(found) if p >= 0}


def sample_steps(spark, df) -> list[tuple[str, str]]:
    """``(node, partitioning)`` of every window and exchange of ``df``'s physical plan (adaptive execution off, so
    the plan is the one that runs) whose rows are samples (its output has ``sample_id``): a window's partition
    columns, an exchange's partitioning."""
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    try:
        plan = df._jdf.queryExecution().executedPlan()
    finally:
        spark.conf.unset("spark.sql.adaptive.enabled")
    found, stack = [], [plan]
    while stack:
        node = stack.pop()
        children = node.children()
        stack += [children.apply(i) for i in range(children.size())]
        output = node.output()
        if "sample_id" not in {output.apply(i).name() for i in range(output.size())}:
            continue
        if node.nodeName() == "Window":
            spec = node.partitionSpec()
            found.append(("Window", ", ".join(spec.apply(i).toString() for i in range(spec.size()))))
        elif node.nodeName() == "Exchange":
            found.append(("Exchange", node.outputPartitioning().toString()))
    return found


def assert_no_single_partition_step(spark, df) -> None:
    """No window over samples without partition columns, no exchange of samples into a single partition."""
    steps = sample_steps(spark, df)
    assert any(node == "Window" for node, _ in steps), steps
    for node, partitioning in steps:
        assert partitioning and partitioning != "SinglePartition", steps
    assert any(node == "Window" and "_bucket" in partitioning for node, partitioning in steps), steps


@pytest.mark.spark
def test_the_partner_job_has_no_single_partition_step_and_gives_the_rule_for_any_stretches(spark):
    from pyspark.sql import functions as F

    from tests.test_mismatched import corpus_like
    from vig_udf.spark.partners import partner_ids

    corpora = {"like": corpus_like(n=30, seed=7), "skewed": skewed_corpus(1), "skewed2": skewed_corpus(2)}
    # (tests/test_mismatched.py: corpus_like's partners with the default stretches, one and three partitions)
    cases = [("skewed", "source", 16, 3), ("skewed", "corpus", 64, 1), ("skewed2", "source", 7, 2),
             ("like", "corpus", 3, 2)]
    parts = []
    for name, scope, buckets, partitions in cases:
        df = partner_ids(frame(spark, *corpora[name], partitions), seed=9, scope=scope, buckets=buckets)
        if (buckets, partitions) == (16, 3):  # every window and exchange of samples is partitioned by stretch
            assert_no_single_partition_step(spark, df)
        parts.append(df.withColumn("case", F.lit(repr((name, scope, buckets, partitions)))))
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    got: dict[str, dict] = {}
    for r in union.collect():  # one Spark job for every case
        got.setdefault(r.case, {})[r.sample_id] = r.counterfactual_partner
    for name, scope, buckets, partitions in cases:
        expected = expected_partners(*corpora[name], seed=9, scope=scope)
        assert got[repr((name, scope, buckets, partitions))] == expected, (name, scope, buckets, partitions)
    # the skewed corpus really has runs longer than a stretch: a coco sample whose next ranked sample shows the
    # same image and whose partner lies further on
    ids, keys, sources = corpora["skewed"]
    coco = sorted((i for i in range(len(ids)) if sources[i] == "coco"), key=lambda i: rank_key(9, ids[i]))
    assert max(sum(1 for _ in run) for run in _runs([keys[i] for i in coco])) >= 8


def _runs(values):
    import itertools

    return [list(group) for _, group in itertools.groupby(values)]


@pytest.mark.spark
def test_the_old_single_window_rule_is_gone(spark):
    """Spark's plan for the whole-corpus order (scope=corpus) used to gather every candidate in one partition."""
    from vig_udf.spark.partners import partner_ids

    ids, keys, sources = skewed_corpus(3)
    df = partner_ids(frame(spark, ids, keys, sources, 4), seed=0, scope="corpus")
    assert_no_single_partition_step(spark, df)
    # the stretches' windows: the corpus's one group is gone from their partitioning (a constant), the stretch stays
    assert all("_group" not in p for node, p in sample_steps(spark, df) if node == "Window")


# -- content: the same bytes under another path are the same image --------------------------------------------


def _ordered_ids(seed: int, n: int) -> list[str]:
    """``n`` ids in their rank order under ``seed``."""
    return sorted((f"r{i}" for i in range(n)), key=lambda i: rank_key(seed, i))


def _image_tree(root, ids: list[str]) -> dict[str, str]:
    """Files for ``ids`` (in rank order) under root/coco: the second is a copy of the first's bytes under another
    path, the fourth the third's pixels re-encoded (other bytes); the rest their own pictures."""
    (root / "coco").mkdir(parents=True)
    paths = {}
    for k, sample_id in enumerate(ids):
        paths[sample_id] = f"coco/{sample_id}.png"
        if k == 1:
            shutil.copyfile(root / paths[ids[0]], root / paths[sample_id])
        elif k == 3:
            random_image(24, 24, 2).save(root / paths[sample_id], compress_level=1)
        else:
            random_image(24, 24, k).save(root / paths[sample_id], compress_level=9)
    return paths


def test_a_copy_of_the_samples_file_under_another_path_is_skipped_for_the_next_candidate(tmp_path):
    ids = _ordered_ids(0, 5)
    paths = _image_tree(tmp_path, ids)
    records = [sample(i, [("What?", "Red")], paths[i]) for i in ids]
    found = {r["id"]: r.get("counterfactual_partner")
             for r in assign_partners(records, seed=0, image_root=str(tmp_path))}
    # r0 and its copy are one image: each takes the next candidate with other bytes
    assert found[ids[0]] == ids[2] and found[ids[1]] == ids[2]
    assert found[ids[4]] == ids[0]  # the wrap-around: the first sample's image differs from the last's
    assert file_key(paths[ids[0]], image_root=str(tmp_path)) == file_key(paths[ids[1]], image_root=str(tmp_path))
    # stored bytes and a file with those bytes are one image too; an unreadable file is keyed by its path
    data = (tmp_path / paths[ids[0]]).read_bytes()
    assert content_key(data) == content_key(paths[ids[0]], image_root=str(tmp_path)) == image_key(data)
    assert file_key("coco/missing.png", image_root=str(tmp_path)) == "path:coco/missing.png"
    assert file_key("../outside.png", image_root=str(tmp_path)) == "path:../outside.png"


def test_the_same_pixels_in_other_bytes_remain_two_images_to_the_rule(tmp_path):
    """The documented limit: a picture re-encoded (other bytes, same pixels) is another image to the partner rule;
    the scorer, comparing pixels, then gives ``no_partner`` (tests/test_mismatched.py)."""
    ids = _ordered_ids(0, 5)
    paths = _image_tree(tmp_path, ids)
    root = str(tmp_path)
    assert file_key(paths[ids[3]], image_root=root) != file_key(paths[ids[2]], image_root=root)
    from PIL import Image

    with Image.open(tmp_path / paths[ids[3]]) as a, Image.open(tmp_path / paths[ids[2]]) as b:
        assert image_key(a.convert("RGB")) == image_key(b.convert("RGB"))  # the same pixels
    records = [sample(i, [("What?", "Red")], paths[i]) for i in ids]
    found = {r["id"]: r.get("counterfactual_partner") for r in assign_partners(records, seed=0, image_root=root)}
    assert found[ids[2]] == ids[3]


@pytest.mark.spark
def test_the_partner_job_keys_files_by_their_bytes_like_the_in_process_rule(spark, tmp_path):
    from vig_udf.spark.partners import partner_ids

    ids = _ordered_ids(0, 8)
    paths = _image_tree(tmp_path, ids)
    data0 = (tmp_path / paths[ids[0]]).read_bytes()
    # r2 stores r0's bytes in the table (no path): the same image as r0 and its copy r1
    rows = [(i, "coco", None if k == 2 else paths[i], data0 if k == 2 else None, "ok") for k, i in enumerate(ids)]
    rows.append(("gone", "coco", "coco/missing.png", None, "ok"))
    corpus = spark.createDataFrame(rows, SCHEMA).repartition(3)
    got = {r.sample_id: r.counterfactual_partner
           for r in partner_ids(corpus, seed=0, scope="source", image_root=str(tmp_path), buckets=4).collect()}
    all_ids = ids + ["gone"]
    images = [data0 if i == ids[2] else (paths[i] if i in paths else "coco/missing.png") for i in all_ids]
    keys = [content_key(im, image_root=str(tmp_path)) for im in images]
    assert len(set(keys)) == len(all_ids) - 2  # r0, r1 and r2 share one key
    assert got == expected_partners(all_ids, keys, ["coco"] * len(all_ids), seed=0, scope="source")
    for sample_id, partner in got.items():
        assert keys[all_ids.index(partner)] != keys[all_ids.index(sample_id)]
    assert got[ids[0]] == got[ids[1]] == ids[3]  # past the copy r1 and r2's stored bytes
