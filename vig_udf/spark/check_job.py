"""``vig check``: a sample of a corpus (the lake's corpus Delta table, or a LLaVA JSON, JSONL or Parquet input)
-> the scorer sanity check of :mod:`vig_udf.check` and its report (:mod:`vig_udf.report.check_report`).

The sample is drawn with a seed, in memory bounded by ``samples``: from the corpus table, or from a Parquet
input read by Spark (the ingest job's reader), by ``ORDER BY rand(seed) LIMIT samples`` over the rows with an
image (Spark keeps only ``samples`` rows per partition, so the driver receives ``samples`` rows whatever the
corpus size); from a JSONL or one-array JSON file by streaming it (:func:`vig_udf.check.sample_records`).
The check runs in the driver process with one scorer: it is meant for tens to hundreds of samples.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field

from vig_udf.config import ScorerConfig, SparkConfig
from vig_udf.scoring.status import SampleError

log = logging.getLogger(__name__)


class CheckJobConfig(BaseModel):
    """``vig check``: what to sample, which scorer, where the report goes, and when the scorer passes."""

    model_config = ConfigDict(extra="forbid")

    input: str | None = Field(None, description="LLaVA JSON, JSONL or Parquet input to sample; None = the lake's "
                                                "corpus table")
    lake: str = Field("lake", description="lake root whose corpus table is sampled when input is not set")
    corpus_version: int | None = Field(None, description="corpus table version; None = latest")
    samples: int = Field(64, gt=1, description="records checked (each is scored under five image conditions)")
    seed: int = Field(0, description="seed of the sample")
    out: str = Field("check", description="folder of check.md, check.html, check.png, check.json")
    min_matching_vig: float = Field(0.0, description="the mean VIG with the real image must exceed this")
    min_mismatch_drop_share: float = Field(0.6, ge=0, le=1, description="share of answers that must be less "
                                                                         "likely with another sample's image")
    max_retained: float = Field(0.5, description="largest share of the image's gain over no image that the "
                                                 "counterfactual may keep")
    max_identical_share: float = Field(0.1, ge=0, le=1, description="largest share of samples whose "
                                                                    "counterfactual changes no token's likelihood")
    scorer: ScorerConfig = ScorerConfig()
    spark: SparkConfig = SparkConfig(conf={"spark.ui.enabled": "false"})

    def thresholds(self):
        from vig_udf.check import CheckThresholds

        return CheckThresholds(min_matching_vig=self.min_matching_vig,
                               min_mismatch_drop_share=self.min_mismatch_drop_share,
                               max_retained=self.max_retained, max_identical_share=self.max_identical_share)


def uses_spark(cfg: CheckJobConfig) -> bool:
    """JSON and JSONL inputs are streamed without Spark."""
    return cfg.input is None or not cfg.input.endswith((".json", ".jsonl"))


def sample_input(spark, path: str, *, n: int, seed: int) -> list[dict]:
    """``n`` records with an image drawn with ``seed`` from a LLaVA Parquet input (Spark)."""
    from pyspark.sql import functions as F

    from vig_udf.corpus import parse_record
    from vig_udf.spark.ingest_job import read_records

    has_image = ((F.coalesce(F.size("_images_bytes"), F.lit(0)) > 0)
                 | ~F.coalesce(F.get_json_object("_record", "$.image"), F.lit("")).isin("", "[]")
                 | F.get_json_object("_record", "$.images[0]").isNotNull())
    # limit(n): the driver holds the check's sample only (n records), never the input
    rows = read_records(spark, path).where(has_image).orderBy(F.rand(seed)).limit(n).collect()
    records = []
    for row in rows:
        parsed = parse_record(row["_record"])
        embedded = row["_images_bytes"] or []
        images = [embedded[k] if k < len(embedded) and embedded[k] is not None else path
                  for k, path in enumerate(parsed.images)]  # bytes win over the path, image by image
        records.append({"id": parsed.id, "image": images if len(images) > 1 else images[0] if images else None,
                        "conversations": parsed.conversations})
    return records


def sample_corpus(spark, lake: str, *, n: int, seed: int, version: int | None = None,
                  image_root: str | None = None) -> list[dict]:
    """``n`` scorer records drawn with ``seed`` from the corpus table's ok rows that have an image."""
    from pyspark.sql import functions as F

    from vig_udf.lake import lake_table, read_table, table_exists
    from vig_udf.spark.score_udf import corpus_record

    path = lake_table(lake, "corpus")
    if not table_exists(spark, path):
        raise FileNotFoundError(f"no corpus table at {path}: run `vig ingest` first, or give input=<file.jsonl>")
    # limit(n): the driver holds the check's sample only (n records), never the table
    corpus = read_table(spark, path, version=version)
    has_image = F.col("image_path").isNotNull() | F.col("image_bytes").isNotNull()
    rows = (corpus.where((F.col("status") == "ok") & has_image)
            .select("sample_id", "image_path", "image_bytes", _more_images(corpus), "conversations")
            .orderBy(F.rand(seed)).limit(n).collect())
    records = []
    for row in rows:
        try:
            records.append(corpus_record(row.asDict(recursive=True), image_root))
        except SampleError as err:  # a path that leaves the image root (a corpus table not written by ingest)
            log.warning("vig check skips %s: %s", row["sample_id"], err.message)
    return records


def _more_images(corpus):
    """The corpus's ``more_images`` column, or a null one for a corpus written before it."""
    from pyspark.sql import functions as F

    if "more_images" in corpus.columns:
        return F.col("more_images")
    return F.lit(None).cast("array<struct<path:string,bytes:binary>>").alias("more_images")


def check_images_reachable(records: list[dict], image_root: str | None, storage=None) -> None:
    """Raise :class:`~vig_udf.preflight.InputError` naming the setting to fix when not one sampled record's image
    file is there (image bytes always are): the check would otherwise score nothing."""
    from vig_udf.preflight import InputError
    from vig_udf.scoring.images import check_image_file, resolve_image

    from vig_udf.check import one_image

    first = None
    for record in records:
        image = one_image(record)
        image = image[0] if isinstance(image, list) and image else image  # a multi-image record: its first
        if not isinstance(image, str):
            return
        try:
            check_image_file(resolve_image(image, image_root), storage)
            return
        except SampleError as err:
            first = first or err.message
    where = (f"scorer.image_root is not set, so the records' relative image paths are looked for under the working "
             "directory; set scorer.image_root to the folder they are relative to" if image_root is None else
             f"is scorer.image_root={image_root} the folder the records' image paths are relative to?")
    raise InputError(f"none of the {len(records)} sampled images can be read ({first}): {where}")


def run_check_job(cfg: CheckJobConfig, *, spark=None, out=print) -> dict:
    """Sample, check, write the report; returns ``{"passed", "verdict", "paths", "summary"}``."""
    from vig_udf.check import check_scorer, sample_records
    from vig_udf.report.check_report import write_check_report
    from vig_udf.scoring.scorer import VIGScorer
    from vig_udf.storage import Storage

    if not cfg.scorer.model_path:
        raise ValueError("scorer.model_path is not set: give a HF model id or a local checkpoint folder")
    if cfg.input is None:
        records = sample_corpus(spark, cfg.lake, n=cfg.samples, seed=cfg.seed, version=cfg.corpus_version,
                                image_root=cfg.scorer.image_root)
        source = f"{cfg.lake} corpus table" + (f" v{cfg.corpus_version}" if cfg.corpus_version is not None else "")
    elif uses_spark(cfg):
        records = sample_input(spark, cfg.input, n=cfg.samples, seed=cfg.seed)
        source = cfg.input
    else:
        storage = Storage.from_conf(cfg.spark.conf)
        if not storage.is_file(cfg.input):
            raise FileNotFoundError(f"input file not found: {cfg.input}")
        records = sample_records(cfg.input, n=cfg.samples, seed=cfg.seed, storage=storage)
        source = cfg.input
    if len(records) < 2:
        raise ValueError(f"{source} has {len(records)} record(s) with an image; the check needs at least two")
    check_images_reachable(records, cfg.scorer.image_root, Storage.from_conf(cfg.spark.conf) if spark is None
                           else None)
    storage = Storage.from_conf(cfg.spark.conf)
    if spark is not None:  # a session's own settings (Spark is not needed for a file)
        from vig_udf.lake.read import lake_storage

        storage = lake_storage(spark)
    scorer = VIGScorer.from_pretrained(cfg.scorer.model_path, cfg.scorer.options(), storage=storage)
    result = check_scorer(scorer, records, thresholds=cfg.thresholds())
    paths = write_check_report(result, cfg.out, context={"model": cfg.scorer.model_path, "input": source,
                                                         "seed": cfg.seed})
    out(result.verdict())
    out(f"report: {paths['check.html']} (and check.md, check.png, check.json)")
    return {"passed": result.passed, "verdict": result.verdict(), "paths": paths, "summary": result.summary}
