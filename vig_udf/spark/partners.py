"""The mismatched counterfactual's partners of a corpus table, as a DataFrame job (the rule:
:mod:`vig_udf.scoring.partners`, which this computes with windows and joins instead of a Python loop).

The candidates are the corpus rows with status ``ok`` (an image that ingest accepted), keyed by their image's
content: stored bytes by their SHA-256, a path by its file's bytes (hashed in a distributed step, once per
distinct path, :func:`file_keys`; a file that cannot be read by its path). Per group (a source, or the whole
corpus), the candidates are ordered by rank; consecutive rows with the same image form a run; a row's partner is
the first row of the next run, wrapping around (the last run's next is the first run, or the second when the
first shows the same image as the last); a group of one run has none.

No step over the samples holds a group (nor the corpus) in one partition. The rank is a SHA-256, uniform, so its
first 32 bits cut each group into ``buckets`` contiguous stretches of the order (bucket b holds the ranks in
[b / buckets, (b + 1) / buckets) of the hash range): the runs are numbered within each (group, bucket) by windows
partitioned by both, each stretch is summarised in one row (its first run's image and first row, its second
run's first row, its last run's image, its number of runs), and a stretch's last run finds its next run in the
following stretches of its group by one pass over the group's summaries (:func:`stretch_ends`: at most
``buckets`` rows a group, not its samples); the group's wrap-around comes from its first and last stretch. The
buckets depend on the ranks only, so the partners are the same for every ``buckets`` and every partitioning.

The score job joins the partner's image onto each pending row (:func:`with_partner_images`), so the partner's
image is on the row's own task.
"""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa

from vig_udf.scoring.partners import PARTNER_SCOPES, file_key
from vig_udf.scoring.status import OK

PARTNER_COLUMNS = ("counterfactual_partner", "partner_image_path", "partner_image_bytes")
DEFAULT_BUCKETS = 64  # stretches of each group's order; any number gives the same partners


def rank_column(seed: int):
    """:func:`vig_udf.scoring.partners.rank_key` of ``sample_id``."""
    from pyspark.sql import functions as F

    return F.sha2(F.concat(F.lit(f"{int(seed)}:"), F.col("sample_id")), 256)


def file_keys(paths, *, image_root: str | None = None, storage=None):
    """``(image_path, _file_key)`` for the distinct ``image_path`` values of ``paths``:
    :func:`vig_udf.scoring.partners.file_key` of each, computed on the executors (one file open at a time)."""
    from pyspark.sql import functions as F

    distinct = paths.select("image_path").where(F.col("image_path").isNotNull()).distinct()
    return distinct.mapInArrow(_hash_files(image_root, storage), "image_path string, _file_key string")


def _hash_files(image_root: str | None, storage):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            paths = batch.column("image_path").to_pylist()
            keys = [file_key(p, image_root=image_root, storage=storage) for p in paths]
            yield pa.RecordBatch.from_arrays([pa.array(paths, pa.string()), pa.array(keys, pa.string())],
                                             names=["image_path", "_file_key"])

    return run


def candidates_of(corpus, *, seed: int, image_root: str | None = None, storage=None):
    """The partner candidates of ``corpus``: ``(sample_id, source, _key, _rank)`` for its ``ok`` rows with an
    image, ``_key`` the image's content key (bytes win over the path, as the scorer reads them)."""
    from pyspark.sql import functions as F

    rows = corpus.where((F.col("status") == OK) & (F.col("image_bytes").isNotNull() | F.col("image_path").isNotNull()))
    by_path = rows.where(F.col("image_bytes").isNull())
    keyed = rows.join(file_keys(by_path, image_root=image_root, storage=storage), "image_path", "left")
    key = F.when(F.col("image_bytes").isNotNull(), F.concat(F.lit("sha256:"), F.sha2(F.col("image_bytes"), 256))) \
        .otherwise(F.col("_file_key"))
    return keyed.select("sample_id", "source", key.alias("_key"), rank_column(seed).alias("_rank"))


def partner_ids(corpus, *, seed: int, scope: str, image_root: str | None = None, storage=None,
                buckets: int = DEFAULT_BUCKETS):
    """``(sample_id, counterfactual_partner)`` for every candidate row of ``corpus`` that has a partner
    (``buckets``: how many stretches each group's order is cut into, see the module docstring)."""
    from pyspark.sql import functions as F

    if scope not in PARTNER_SCOPES:
        raise ValueError(f"partner_scope={scope!r}; choose one of {PARTNER_SCOPES}")
    if int(buckets) < 1:
        raise ValueError(f"buckets={buckets!r}; give a positive number")
    candidates = candidates_of(corpus, seed=seed, image_root=image_root, storage=storage)
    whole = _next_run_partner(candidates.withColumn("_group", F.lit("")), "_whole", int(buckets))
    if scope == "corpus":
        return whole.withColumnRenamed("_whole", "counterfactual_partner")
    within = _next_run_partner(candidates.withColumn("_group", F.col("source")), "_within", int(buckets))
    # a source with one image (one run) has no partner within it: the whole corpus's instead
    return (whole.join(within, "sample_id", "left")
            .select("sample_id", F.coalesce("_within", "_whole").alias("counterfactual_partner"))
            .where(F.col("counterfactual_partner").isNotNull()))


def _bucket_column(buckets: int):
    """The stretch of the order a rank falls in: its first 32 bits times ``buckets``, over 2^32."""
    from pyspark.sql import functions as F

    top = F.conv(F.substring("_rank", 1, 8), 16, 10).cast("long")
    return F.shiftright(top * F.lit(buckets).cast("long"), 32)


def _next_run_partner(rows, name: str, buckets: int):
    """``(sample_id, <name>)``: the first row of the next run in the row's ``_group`` (null for a group of one
    run), computed per stretch of the order (see the module docstring)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rows = rows.withColumn("_bucket", _bucket_column(buckets))
    stretch = Window.partitionBy("_group", "_bucket").orderBy("_rank", "sample_id")
    previous = F.lag("_key").over(stretch)
    # the first row of the next run within the stretch: the nearest run start after the row (a frame growing
    # from the stretch's end, so linear in the stretch's rows)
    after = Window.partitionBy("_group", "_bucket").orderBy(F.desc("_rank"), F.desc("sample_id")) \
        .rowsBetween(Window.unboundedPreceding, -1)
    rows = (rows.withColumn("_starts", previous.isNull() | (previous != F.col("_key")))
            .withColumn("_run", F.sum(F.col("_starts").cast("long")).over(
                stretch.rowsBetween(Window.unboundedPreceding, Window.currentRow)))
            .withColumn("_next", F.last(F.when(F.col("_starts"), F.col("sample_id")), ignorenulls=True).over(after)))
    # one row per stretch: its runs, its first run's image and first row, its second run's first row, its last
    # run's image
    runs = rows.where("_starts")
    stretches = runs.groupBy("_group", "_bucket").agg(
        F.max("_run").alias("_runs"),
        F.first(F.when(F.col("_run") == 1, F.col("_key")), ignorenulls=True).alias("_k0"),
        F.first(F.when(F.col("_run") == 1, F.col("sample_id")), ignorenulls=True).alias("_id0"),
        F.first(F.when(F.col("_run") == 2, F.col("sample_id")), ignorenulls=True).alias("_id1"),
        F.max_by("_key", "_run").alias("_klast"))
    # per group, its stretches (at most ``buckets`` rows, not its samples) in order: where each one's last run
    # goes on (:func:`stretch_ends`)
    ends = (stretches.groupBy("_group")
            .agg(F.sort_array(F.collect_list(F.struct("_bucket", "_runs", "_k0", "_id0", "_id1", "_klast")))
                 .alias("_stretches"))
            .select("_group", F.explode(_stretch_ends_udf()("_stretches")).alias("_e"))
            .select("_group", "_e._bucket", "_e._end"))
    return (rows.select("sample_id", "_group", "_bucket", "_next").join(ends, ["_group", "_bucket"])
            .select("sample_id", F.coalesce("_next", "_end").alias(name)))


def stretch_ends(stretches: list) -> list[tuple]:
    """``(bucket, end)`` for each stretch of one group, given as ``(bucket, runs, k0, id0, id1, klast)``
    sorted by bucket (its number of runs, its first run's image and first row, its second run's first row, its
    last run's image): ``end`` is the partner of the stretch's last run, the first row after it that shows another
    image, wrapping around to the group's start (None: the group is one run).

    A stretch of one run that shows the image its predecessor ends with continues that run; the first following
    stretch that does not continue it holds the next run's first row (its first row, or its second run's when its
    first run shows the same image). The group's last run wraps to the group's first row, or to the first row of
    the group's second run when both runs show one image."""
    n = len(stretches)
    if not n:
        return []
    buckets, runs, k0, id0, id1, klast = (list(column) for column in zip(*stretches))
    stop: list[int | None] = [None] * n  # the first following stretch that does not continue stretch i's last run
    for i in range(n - 2, -1, -1):
        continues = runs[i + 1] == 1 and k0[i + 1] == klast[i]
        stop[i] = stop[i + 1] if continues else i + 1
    tails = [None if j is None else (id0[j] if k0[j] != klast[i] else id1[j]) for i, j in enumerate(stop)]
    second = id1[0] if id1[0] is not None else tails[0]
    wrap = id0[0] if k0[0] != klast[-1] else second
    return [(buckets[i], tails[i] if tails[i] is not None else wrap) for i in range(n)]


def _stretch_ends_udf():
    from pyspark.sql import functions as F

    return F.udf(lambda rows: stretch_ends([tuple(r) for r in rows]), "array<struct<_bucket: long, _end: string>>")


def with_partner_images(pending, corpus, *, seed: int, scope: str, image_root: str | None = None, storage=None):
    """``pending`` (corpus rows) with :data:`PARTNER_COLUMNS`: the partner's id, image path and image bytes (null
    where a row has none), from the partners among all of ``corpus``'s rows, so that a resumed job or a rescore
    gives a row the partner a full run gives it. Image paths resolve under ``image_root`` through ``storage``
    (the scorer's) to be keyed by their files' bytes."""
    from pyspark.sql import functions as F

    ids = partner_ids(corpus, seed=seed, scope=scope, image_root=image_root, storage=storage)
    images = corpus.select(F.col("sample_id").alias("counterfactual_partner"),
                           F.col("image_path").alias("partner_image_path"),
                           F.col("image_bytes").alias("partner_image_bytes"))
    return pending.join(ids.join(images, "counterfactual_partner"), "sample_id", "left")
