"""The ingest job: LLaVA-format JSON / JSONL / Parquet plus an image root -> the ``corpus`` Delta table.

Every input record becomes one row. A one-array ``.json`` is first streamed into JSONL shards under
``<lake>/_staging/ingest`` (:mod:`vig_udf.spark.json_shards`), so that no task holds the whole file.
``sample_id`` is the record's id, or a content hash when the id is missing or shared by several records
(reported; exact duplicates get a ``-<n>`` suffix in input order).
Rows are checked with the scorer's own conversation parser; invalid ones keep a status and a message. A record
with several images (a list under ``image`` or ``images``) keeps the first as ``image_path`` / ``image_bytes`` and
the others, in order, in ``more_images``; ``image_list`` says the images came as a list.
Rows are added with ``MERGE ... WHEN NOT MATCHED THEN INSERT`` on ``sample_id``, so concurrent or
overlapping ingests never write a sample twice. Each input is a Delta app transaction (its files, sizes and
modification times, and the options that change rows): a rerun of an ingested input finds it in the table
history and returns before reading anything. ``ingest_ordinal`` is the row's place in ingest order, global
across ingests: each ingest numbers its rows after the corpus's largest ordinal, in input order (files in
path order, then their records in file order).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Iterator, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from vig_udf.config import SparkConfig
from vig_udf.corpus import (IMAGE_KEYS, INVALID_RECORD, content_id, parse_record, resolve_image, source_of,
                            validate_record)
from vig_udf.preflight import check_image_root, check_input, is_local
from vig_udf.storage import Storage, local_path
from vig_udf.scoring.status import IMAGE_UNREADABLE, INVALID_CONVERSATION, OK, TEXT_ONLY

# images 2..n of a record with several (the first is image_path / image_bytes), in order
MORE_IMAGES = pa.list_(pa.struct([("path", pa.string()), ("bytes", pa.binary())]))
CONVERSATIONS = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
# where a raw record was read from: its file, the file split and its place in the task (input order, sortable)
POSITION = ("_file", "_block", "_row")
VALIDATED_SCHEMA = pa.schema([
    ("_file", pa.string()), ("_block", pa.int64()), ("_row", pa.int64()),
    ("source_id", pa.string()), ("content_id", pa.string()), ("source", pa.string()),
    ("image_path", pa.string()), ("image_bytes", pa.binary()), ("more_images", MORE_IMAGES),
    ("image_list", pa.bool_()), ("conversations", CONVERSATIONS),
    ("n_turns", pa.int32()), ("status", pa.string()), ("error", pa.string()),
    ("extra", pa.string()), ("key_order", pa.list_(pa.string())),
])
# columns a corpus written before they existed lacks: ingest adds them (null for its earlier rows)
NEW_CORPUS_COLUMNS = ("extra", "key_order", "more_images", "image_list")
INLINE_SPLITS = 1000  # up to this many file splits, their ordinal offsets are an inline table (no Spark job)


class IngestJobConfig(BaseModel):
    """``vig ingest``: where the records and images are, and how to store images."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(..., description="LLaVA JSON (a list), JSONL, or Parquet with id, image (one or a list; or "
                                        "images), conversations (or messages)")
    image_root: str | None = Field(None, description="folder that the records' relative image paths live under")
    lake: str = Field("lake", description="lake root; the table is <lake>/corpus")
    image_storage: Literal["path", "bytes"] = Field("path", description="store the image path, or the file's bytes")
    check_files: bool = Field(True, description="check that every image file exists (stat per row)")
    partitions: int | None = Field(None, description="partitions for validation; None = default parallelism")
    json_shard_records: int = Field(100_000, gt=0, description="a one-array .json is streamed into JSONL shards "
                                                               "of this many records, read in parallel")
    spark: SparkConfig = SparkConfig()


def read_records(spark, path: str, *, jsonl_folder: bool = False):
    """The input as a DataFrame of ``_record`` (each record's JSON text), ``_images_bytes`` (the bytes of the
    record's Hugging Face Image values, one per image, else null) and the :data:`POSITION` columns. JSON lines
    are read as text, blank lines skipped; a Parquet row becomes the JSON of its columns in column order. An
    image column (``image`` or ``images``, :data:`vig_udf.corpus.IMAGE_KEYS`) holding a struct ``{bytes, path}``
    (the ``datasets`` Image feature) or a list of them (``Sequence(Image())``) stands for its paths in the JSON
    (``{"path": ...}`` each); its bytes go to ``_images_bytes``, from the first such column that is not null (the
    one :func:`vig_udf.corpus.parse_record` takes the images from). A one-array ``.json`` is read through its
    JSONL shards: ``path`` is then their folder and ``jsonl_folder`` is true (see
    :func:`vig_udf.spark.json_shards.stage_json_array`)."""
    from pyspark.sql import functions as F

    from vig_udf.lake.read import lake_storage
    from vig_udf.storage import spark_path

    if path.endswith(".json"):
        raise ValueError(f"{path}: a one-array .json is read through its JSONL shards (stage_json_array)")
    if not jsonl_folder and (path.endswith(".parquet") or lake_storage(spark).is_dir(path)):
        df = spark.read.parquet(spark_path(path))
        position = _position(df)
        columns, image_bytes = [], []
        for c in df.columns:
            kind = _image_column(df.schema[c].dataType) if c in IMAGE_KEYS else None
            if kind == "struct":  # a struct with neither bytes nor a path is no image, as a null one
                given = F.col(c).getField("path").isNotNull() | F.col(c).getField("bytes").isNotNull()
                columns.append(F.when(given, F.struct(F.col(c).getField("path").alias("path"))).alias(c))
                image_bytes.append(F.when(given, F.array(F.col(c).getField("bytes"))))
            elif kind == "list":
                columns.append(F.transform(c, lambda x: F.struct(x.getField("path").alias("path"))).alias(c))
                image_bytes.append(F.transform(c, lambda x: x.getField("bytes")))
            else:
                columns.append(F.col(c))
        as_json = F.to_json(F.struct(*columns), {"ignoreNullFields": "false"})
        embedded = (F.coalesce(*image_bytes) if len(image_bytes) > 1 else image_bytes[0] if image_bytes
                    else F.lit(None).cast("array<binary>"))
        return df.select(as_json.alias("_record"), embedded.alias("_images_bytes"), *position)
    df = spark.read.text(spark_path(path))
    return (df.select(F.col("value").alias("_record"), F.lit(None).cast("array<binary>").alias("_images_bytes"),
                      *_position(df))
            .where(F.trim(F.col("_record")) != ""))


def _image_column(kind) -> str | None:
    """``struct`` for a Hugging Face Image column (a struct with ``bytes`` and ``path``), ``list`` for a list of
    them, None for another type."""
    from pyspark.sql.types import ArrayType, StructType

    def image(t) -> bool:
        return isinstance(t, StructType) and {"bytes", "path"} <= set(t.fieldNames())

    if image(kind):
        return "struct"
    return "list" if isinstance(kind, ArrayType) and image(kind.elementType) else None


def _position(df) -> list:
    """The :data:`POSITION` columns of a file source read: file path, split start, index in the task (the
    task reads its splits one after the other, each in file order)."""
    from pyspark.sql import functions as F

    return [df["_metadata.file_path"].alias("_file"), df["_metadata.file_block_start"].alias("_block"),
            F.monotonically_increasing_id().alias("_row")]


def validate_batches(image_root: str | None, image_storage: str, check_files: bool, storage=None):
    """``mapInArrow`` function: raw records -> validated rows in :data:`VALIDATED_SCHEMA`; ``storage`` reaches
    images on object storage. A record's first image goes to ``image_path`` / ``image_bytes``, images 2..n to
    ``more_images``."""

    def validate(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows = []
            for raw in batch.to_pylist():
                rec = parse_record(raw["_record"])
                conversations, embedded = rec.conversations, raw["_images_bytes"] or []
                datas = [embedded[k] if k < len(embedded) else None for k in range(len(rec.images))]
                # an image that came as bytes only is recorded under embedded/<content hash>
                paths = [path if path or data is None else embedded_image_name(data)
                         for path, data in zip(rec.images, datas)]
                images = paths if rec.image_list else (paths[0] if paths else None)  # a list, or one path
                if rec.error:
                    status, error = INVALID_RECORD, rec.error
                elif rec.conversations_given and conversations is None:
                    status, error = INVALID_RECORD, "'conversations' is not a list of {from, value} turns"
                else:
                    status, error = validate_record(rec.id, images, conversations, image_root=image_root,
                                                    check_files=[check_files and d is None for d in datas],
                                                    storage=storage)
                    if rec.text_error and status in (OK, TEXT_ONLY):
                        status, error = INVALID_CONVERSATION, rec.text_error
                conversations = _storable(conversations)
                if image_storage == "bytes" and status == OK and paths:
                    status, error = _read_images(paths, datas, image_root, storage)
                rows.append({
                    "_file": raw["_file"], "_block": raw["_block"], "_row": raw["_row"], "source_id": rec.id,
                    "content_id": content_id(rec.id, images, conversations or (rec.raw if rec.error else None)),
                    "source": source_of(paths[0] if paths else None), "image_path": paths[0] if paths else None,
                    "image_bytes": datas[0] if datas else None,
                    "more_images": [{"path": p, "bytes": d} for p, d in zip(paths[1:], datas[1:])] or None,
                    "image_list": rec.image_list, "conversations": conversations,
                    "n_turns": len(conversations or []), "status": status, "error": error, "extra": rec.extra,
                    "key_order": rec.key_order,
                })
            yield pa.RecordBatch.from_pylist(rows, schema=VALIDATED_SCHEMA)

    return validate


def _read_images(paths: list, datas: list, image_root: str | None, storage) -> tuple[str, str | None]:
    """``image_storage=bytes``: fill ``datas`` with the bytes of each image that has none yet; (status, error)."""
    for k, path in enumerate(paths):
        if datas[k] is None:
            try:
                datas[k] = (storage or Storage()).read_bytes(resolve_image(path, image_root))
            except OSError as exc:
                which = f"image {k + 1} of {len(paths)}: " if len(paths) > 1 else ""
                return IMAGE_UNREADABLE, f"{which}cannot read {path}: {exc}"
    return OK, None


def embedded_image_name(data: bytes) -> str:
    """The recorded path of an image that came as bytes only: ``embedded/<content hash>.<format>``; the export
    writes it there."""
    kinds = {b"\x89PNG": "png", b"\xff\xd8\xff": "jpg", b"GIF8": "gif", b"RIFF": "webp", b"BM": "bmp",
             b"II*\x00": "tif", b"MM\x00*": "tif"}
    suffix = next((kind for magic, kind in kinds.items() if data.startswith(magic)), "img")
    return f"embedded/{hashlib.sha256(data).hexdigest()[:20]}.{suffix}"


def _storable(conversations) -> list[dict] | None:
    """Turns in the table's layout (``from`` and ``value`` strings); a value of another JSON type is kept as
    its JSON text (the row is already ``invalid_conversation``)."""
    if conversations is None:
        return None
    turns = []
    for turn in conversations:
        turn = turn if isinstance(turn, dict) else {"value": turn}
        role, value = turn.get("from"), turn.get("value")
        turns.append({"from": None if role is None else str(role),
                      "value": value if isinstance(value, str) or value is None else json.dumps(value)})
    return turns


def check_config(cfg: IngestJobConfig, spark=None) -> None:
    """Fail fast, before any table is written, when the input or the image root is unusable (InputError).

    Without a session (before Spark starts) a local image root is checked only for a local master."""
    from vig_udf.lake.read import lake_storage

    storage = lake_storage(spark) if spark is not None else Storage.from_conf(cfg.spark.conf)
    check_input(cfg.input, storage)
    if spark is not None or is_local(cfg.spark.master) or local_path(cfg.image_root or ".") is None:
        check_image_root(cfg.image_root, spark, storage)


def run_ingest(spark, cfg: IngestJobConfig, *, out=print) -> dict:
    """Ingest ``cfg.input`` into ``<lake>/corpus``; returns the summary (rows, statuses, duplicates)."""
    check_config(cfg, spark)
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    from vig_udf.lake import insert_new_rows, lake_table, staging_folder, table_exists, table_history
    from vig_udf.lake.read import lake_storage
    from vig_udf.lake.write import delete_staged, stage_folder
    from vig_udf.spark.json_shards import stage_json_array

    corpus_path = lake_table(cfg.lake, "corpus")
    app_id = "ingest/" + input_fingerprint(spark, cfg)
    if table_exists(spark, corpus_path):
        earlier = next((c for c in table_history(spark, corpus_path) if c["app_id"] == app_id), None)
        if earlier is not None:
            out(f"{cfg.input} was already ingested with these options (corpus v{earlier['version']}): corpus unchanged")
            return {"corpus_version": None, "new_rows": 0, "already_ingested_in": earlier["version"]}
    staged = None
    if cfg.input.endswith(".json"):  # one JSON array, the layout of llava_v1_5_mix665k.json
        staged = f"{staging_folder(cfg.lake, 'ingest')}/{uuid.uuid4().hex}"
    try:
        if staged:
            stage_folder(spark, staged, "ingest")
            n = stage_json_array(spark, cfg.input, staged, records_per_shard=cfg.json_shard_records)
            out(f"{cfg.input}: {n} records streamed into {-(-n // cfg.json_shard_records)} JSONL shards")
        raw = read_records(spark, staged, jsonl_folder=True) if staged else read_records(spark, cfg.input)
        if cfg.partitions:
            raw = raw.repartition(cfg.partitions)
        validated = raw.mapInArrow(validate_batches(cfg.image_root, cfg.image_storage, cfg.check_files,
                                                    lake_storage(spark)),
                                   from_arrow_schema(VALIDATED_SCHEMA))
        in_order = [F.col(c) for c in POSITION]
        per_id = Window.partitionBy("source_id")
        rows = (validated
                .withColumn("duplicate_id", F.col("source_id").isNotNull() & (F.count(F.lit(1)).over(per_id) > 1))
                .withColumn("sample_id", F.when(F.col("source_id").isNull() | F.col("duplicate_id"),
                                                F.col("content_id")).otherwise(F.col("source_id"))))
        same = Window.partitionBy("sample_id")
        rows = (rows.withColumn("_n", F.row_number().over(same.orderBy(*in_order)))
                .withColumn("sample_id", F.when(F.count(F.lit(1)).over(same) > 1,
                                                F.concat("sample_id", F.lit("-"), F.col("_n").cast("string")))
                            .otherwise(F.col("sample_id")))
                .select("sample_id", "source_id", "source", "image_path", "image_bytes", "more_images", "image_list",
                        "conversations", "n_turns",
                        "status", "error", "duplicate_id", "extra", "key_order", *POSITION))
        rows = rows.cache()  # validated once: the ordinals, the merge and the summary read the same rows
        try:
            groups = split_groups(rows)
            rows_in_order = with_ingest_ordinal(rows, next_ordinal(spark, corpus_path), groups).drop(*POSITION)
            commit = insert_new_rows(rows_in_order, corpus_path, keys=["sample_id"], job="ingest",
                                     config=cfg.model_dump(mode="json"), app_id=app_id, app_version=0,
                                     add_columns=NEW_CORPUS_COLUMNS)
            summary = _summary(groups)
        finally:
            rows.unpersist()
    finally:
        if staged:
            delete_staged(spark, staged)
    summary.update(corpus_version=commit.version if commit else None, new_rows=commit.rows_added if commit else 0)
    if commit is None:
        out(f"nothing new in {cfg.input}: every sample is in {corpus_path} already")
    else:
        out(f"ingested {summary['new_rows']} new rows of {summary['input_rows']} into {corpus_path} v{commit.version}")
    out(f"rows by status: {summary['rows_by_status']}; by source: {summary['rows_by_source']}; "
        f"rows whose id was shared (given a content id): {summary['duplicate_id_rows']}")
    return summary


def next_ordinal(spark, corpus_path: str) -> int:
    """The first ``ingest_ordinal`` of a new ingest: one after the corpus's largest (0 for a new corpus)."""
    from pyspark.sql import functions as F

    from vig_udf.lake import read_table, table_exists

    if not table_exists(spark, corpus_path):
        return 0
    corpus = read_table(spark, corpus_path)
    if "ingest_ordinal" not in corpus.columns:
        return 0
    largest = corpus.agg(F.max("ingest_ordinal")).first()[0]  # Delta answers it from the files' statistics
    return 0 if largest is None else largest + 1


def split_groups(rows) -> list[dict]:
    """The rows counted by file split and by (status, source, shared id), with each split's first ``_row``: one
    aggregation and one collect that both the ordinals and the summary read. Bounded by the input's splits (a few
    per GB) times its statuses and sources, not by its rows."""
    from pyspark.sql import functions as F

    keys = ["_file", "_block", "status", "source", "duplicate_id"]
    groups = rows.groupBy(*keys).agg(F.min("_row").alias("_first_row"), F.count(F.lit(1)).alias("count"))
    return [group.asDict() for group in groups.collect()]


def with_ingest_ordinal(rows, first: int, groups: list[dict]):
    """``rows`` (with the :data:`POSITION` columns) numbered ``first, first + 1, ...`` in input order; ``groups``
    are :func:`split_groups` of ``rows``.

    Each file split is read in file order by one task, so a row's ordinal is the rows of the splits before
    its split plus its index within the split: the split sizes come from the small aggregation, no sort of the
    rows.
    """
    from pyspark.sql import functions as F

    splits: dict[tuple, list[int]] = {}  # (file, block) -> [first _row, rows]
    for group in groups:
        split = splits.setdefault((group["_file"], group["_block"]), [group["_first_row"], 0])
        split[0] = min(split[0], group["_first_row"])
        split[1] += group["count"]
    starts, before = [], first
    for (file, block), (first_row, n) in sorted(splits.items()):
        starts.append((file, block, before - first_row))
        before += n
    return (rows.join(F.broadcast(_offsets_table(rows.sparkSession, starts)), ["_file", "_block"])
            .withColumn("ingest_ordinal", F.col("_offset") + F.col("_row")).drop("_offset"))


def _offsets_table(spark, starts: list[tuple]):
    """The split offsets as a table of ``_file``, ``_block``, ``_offset``. Up to :data:`INLINE_SPLITS` splits it is
    an inline table: a local relation that Spark broadcasts without a job, where a DataFrame made from Python rows
    is a distributed dataset that takes a job and Python workers to read. Paths go in as hex binary literals, so
    that no character of a file name needs SQL quoting."""
    if not starts or len(starts) > INLINE_SPLITS:
        return spark.createDataFrame(starts, "_file STRING, _block LONG, _offset LONG")
    rows = ", ".join(f"(CAST(X'{file.encode().hex()}' AS STRING), CAST({int(block)} AS BIGINT), "
                     f"CAST({int(offset)} AS BIGINT))" for file, block, offset in starts)
    return spark.sql(f"SELECT * FROM VALUES {rows} AS t(_file, _block, _offset)")


def _summary(groups: list[dict]) -> dict:
    """Input rows, by status and by source, and rows with a shared id, from :func:`split_groups`."""
    by_status: dict[str, int] = {}
    by_source: dict[str, int] = {}
    for group in groups:
        by_status[group["status"]] = by_status.get(group["status"], 0) + group["count"]
        by_source[group["source"]] = by_source.get(group["source"], 0) + group["count"]
    return {"input_rows": sum(g["count"] for g in groups), "rows_by_status": by_status, "rows_by_source": by_source,
            "duplicate_id_rows": sum(g["count"] for g in groups if g["duplicate_id"])}


def input_fingerprint(spark, cfg: IngestJobConfig) -> str:
    """Identity of an ingest: the input file(s) (path, size, modification time) and the options that change rows."""
    from vig_udf.lake.read import lake_storage

    listing = [(e.uri, e.size, (e.mtime_ns or 0) // 1_000_000) for e in lake_storage(spark).files(cfg.input)]
    key = {"files": listing, "image_root": cfg.image_root, "image_storage": cfg.image_storage,
           "check_files": cfg.check_files}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
