"""The mismatched counterfactual's partners of a corpus table, as a DataFrame job (the rule:
:mod:`vig_udf.scoring.partners`, which this computes with windows and joins instead of a Python loop).

The candidates are the corpus rows with status ``ok`` (an image that ingest accepted). Per group (a source, or
the whole corpus), the candidates are ordered by rank; consecutive rows with the same image form a run; a row's
partner is the first row of the next run, wrapping around (the last run's next is the first run, or the second
when the first shows the same image as the last); a group of one run has none. The score job joins the partner's
image onto each pending row (:func:`with_partner_images`), so the partner's image is on the row's own task.
"""

from __future__ import annotations

from vig_udf.scoring.partners import PARTNER_SCOPES
from vig_udf.scoring.status import OK

PARTNER_COLUMNS = ("counterfactual_partner", "partner_image_path", "partner_image_bytes")


def image_key_column():
    """:func:`vig_udf.scoring.partners.image_key` of a corpus row's image (bytes win over the path, as the
    scorer reads them)."""
    from pyspark.sql import functions as F

    return F.when(F.col("image_bytes").isNotNull(), F.concat(F.lit("sha256:"), F.sha2(F.col("image_bytes"), 256))) \
        .otherwise(F.concat(F.lit("path:"), F.col("image_path")))


def rank_column(seed: int):
    """:func:`vig_udf.scoring.partners.rank_key` of ``sample_id``."""
    from pyspark.sql import functions as F

    return F.sha2(F.concat(F.lit(f"{int(seed)}:"), F.col("sample_id")), 256)


def partner_ids(corpus, *, seed: int, scope: str):
    """``(sample_id, counterfactual_partner)`` for every candidate row of ``corpus`` that has a partner."""
    from pyspark.sql import functions as F

    if scope not in PARTNER_SCOPES:
        raise ValueError(f"partner_scope={scope!r}; choose one of {PARTNER_SCOPES}")
    candidates = (corpus.where((F.col("status") == OK) & (F.col("image_bytes").isNotNull()
                                                         | F.col("image_path").isNotNull()))
                  .select("sample_id", "source", image_key_column().alias("_key"), rank_column(seed).alias("_rank")))
    whole = _next_run_partner(candidates.withColumn("_group", F.lit("")), "_whole")
    if scope == "corpus":
        return whole.withColumnRenamed("_whole", "counterfactual_partner")
    within = _next_run_partner(candidates.withColumn("_group", F.col("source")), "_within")
    # a source with one image (one run) has no partner within it: the whole corpus's instead
    return (whole.join(within, "sample_id", "left")
            .select("sample_id", F.coalesce("_within", "_whole").alias("counterfactual_partner"))
            .where(F.col("counterfactual_partner").isNotNull()))


def _next_run_partner(rows, name: str):
    """``(sample_id, <name>)``: the first row of the next run in the row's ``_group`` (see the module docstring)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ordered = Window.partitionBy("_group").orderBy("_rank", "sample_id")
    runs_so_far = ordered.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    previous = F.lag("_key").over(ordered)
    rows = (rows.withColumn("_starts", previous.isNull() | (previous != F.col("_key")))
            .withColumn("_run", F.sum(F.col("_starts").cast("long")).over(runs_so_far)))
    group = Window.partitionBy("_group")
    first_key = F.first(F.when(F.col("_run") == 1, F.col("_key")), ignorenulls=True).over(group)
    runs = (rows.where("_starts")
            .select("_group", "_run", "_key", F.col("sample_id").alias("_first"))
            .withColumn("_runs", F.max("_run").over(group))
            .withColumn("_first_key", first_key))
    next_run = (F.when(F.col("_runs") == 1, F.lit(None))
                .when(F.col("_run") < F.col("_runs"), F.col("_run") + 1)
                .when(F.col("_first_key") != F.col("_key"), F.lit(1))
                .otherwise(F.lit(2)))
    links = runs.select("_group", "_run", next_run.alias("_next"))
    starts = runs.select("_group", F.col("_run").alias("_next"), F.col("_first").alias(name))
    return (rows.select("sample_id", "_group", "_run").join(links, ["_group", "_run"])
            .join(starts, ["_group", "_next"], "left").select("sample_id", name))


def with_partner_images(pending, corpus, *, seed: int, scope: str):
    """``pending`` (corpus rows) with :data:`PARTNER_COLUMNS`: the partner's id, image path and image bytes (null
    where a row has none), from the partners among all of ``corpus``'s rows, so that a resumed job or a rescore
    gives a row the partner a full run gives it."""
    from pyspark.sql import functions as F

    ids = partner_ids(corpus, seed=seed, scope=scope)
    images = corpus.select(F.col("sample_id").alias("counterfactual_partner"),
                           F.col("image_path").alias("partner_image_path"),
                           F.col("image_bytes").alias("partner_image_bytes"))
    return pending.join(ids.join(images, "counterfactual_partner"), "sample_id", "left")
