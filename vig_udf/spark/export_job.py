"""The export job: one selection -> the kept records as LLaVA-format JSON plus a per-token mask sidecar.

For training with other stacks (the LLaVA repo, LLaMA-Factory, TRL): the JSON is a single file in the
layout of ``llava_v1_5_mix665k.json`` (a list of ``{"id", "image", "conversations"}``, ``image`` omitted
for text-only records; a multi-image record's images as the list they came as, under ``image`` or ``images``),
holding exactly the corpus records that the selection keeps, unchanged. The
sidecar ``<name>.mask.json`` says which answer characters to train on:

    {"format": "vig-spark/token-mask", "format_version": 1, "selection_id": ..., "policy": ..., "params": {...},
     "tau": ..., ["taus": [{"source", "tau", "ok_rows"}, ...] for a tau_by=source selection,]
     "scorer_id": ..., "tables": {...versions...}, "offsets": "...", "records_file": ...,
     "images_dir": ..., "masks": {"<id>": [[assistant_turn_index, start, end], ...], ...},
     "records_sha256": ..., "totals": {"records": ..., "tokens_kept": ..., ...},
     "records_stat": {"size": ..., "mtime_ns": ...}}

A span ``[k, start, end]`` is ``value[start:end]`` of the k-th assistant message (``from`` gpt/assistant)
of that record's ``conversations``, exactly as exported. The spans are the kept tokens' character spans
merged with :func:`vig_udf.selection.spans.kept_char_spans`; another tokenizer keeps a token when it overlaps a span
(:func:`vig_udf.selection.spans.keep_from_spans`). Text-only records are kept whole: their spans cover all their
answer tokens.

A selection made with ``token_weight=vig`` (its ``params`` hold ``token_weight``) also carries each kept token's
loss weight: its spans are then ``[k, start, end, weight]``, the kept tokens' spans with their weights, touching
spans of equal weight merged (:func:`vig_udf.selection.spans.weighted_char_spans`; a text-only answer is one
span of weight 1). Another tokenizer's token takes the character-weighted mean weight of the spans it overlaps
(:func:`vig_udf.selection.spans.weights_from_spans`); the weights have mean 1 over a record's kept tokens.

The job reads the selection (pinned or latest version), the scores version the selection was made from
(recorded in its rows) and the corpus (pinned or latest) and joins the kept rows in Spark; the executors
turn each row into its JSON record and its mask entry. The driver checks the rows with one aggregation. Then
the executors write them in ingest order: the lines are range-partitioned on the ingest ordinal into parts of
about ``part_rows`` rows, each sorted, and each task writes its part's records and mask entries to two part
files in a staging folder (``staging_dir``, by default a hidden folder next to the output) and returns one
small row naming them. The driver concatenates the committed attempts' part files byte-wise in partition
order into both outputs (hashing the records as it copies; each file is written whole or not at all, the
records first, then the sidecar that describes them), and removes the staging folder whatever happens. No row
reaches the driver: its memory holds one row per part. Images stored as bytes in the corpus are written by the
executors too, under an images folder next to the output, so the exported ``image`` paths resolve against it
(LLaVA's ``--image_folder``). Every location is a URI of the storage layer (:mod:`vig_udf.storage`): the output,
``staging_dir`` and the images folder may be on object storage (``s3a://...``), which driver and executors
share by nature; a local folder on a cluster must be one they share (a mounted volume such as ``/dbfs`` or
``/Volumes``), and a folder an executor cannot see fails the job with that message. While it runs the export takes about twice
its size on disk (the parts, then the files); a driver killed mid-export leaves its hidden
``.<name>.parts-<id>`` folder behind, which may be deleted. Files get the process's umask permissions. A
rerun with the same selection, versions and options whose files are still there writes nothing: it reads
the selection from the selection table's history, then the sidecar's head and tail, and compares the records
file's size and time (or, when they differ, its hash) with those recorded (:func:`earlier_export`).
Example::

    summary = run_export(spark, ExportJobConfig(lake="lake", policy="vig", output="export/vig70.json"))
    # export/vig70.json, export/vig70.mask.json (and export/images/... for bytes-stored images)
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import uuid
from typing import Iterable, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from vig_udf.selection import policies as sel
from vig_udf.config import SparkConfig
from vig_udf.corpus import CONVERSATION_KEYS, IMAGE_KEYS, default_keys, json_text
from vig_udf.scoring.conversation import parse_conversation
from vig_udf.lake.read import lake_storage
from vig_udf.selection.spans import kept_char_spans, weighted_char_spans
from vig_udf.storage import Storage, canonical, join

FORMAT, FORMAT_VERSION = "vig-spark/token-mask", 1
# the sidecar is written as <header>, "masks": {<entries>}, <ending>: these bytes delimit the masks
MASKS_OPEN, MASKS_CLOSE = b', "masks": {', b'}, "records_sha256": '
TAIL_BYTES = 64 << 10  # the ending (records hash and totals) is a few hundred bytes
# one line of the export per kept row, made on the executors
LINE_DDL = ("_ordinal LONG, sample_id STRING, record_id STRING, record STRING, mask STRING, problem STRING, "
            "text_only BOOLEAN, image_bytes BOOLEAN, n_tokens LONG, n_tokens_kept LONG")
SHARED_STORAGE = ("the output's folder (or staging_dir) and the images folder must be on storage that the driver and "
                  "the executors share")
MARKER = ".vig-export-staging"  # the driver's file in the staging folder that each executor checks it sees
MORE_IMAGES_DDL = "array<struct<path:string,bytes:binary>>"  # the corpus's images 2..n of a record
IMAGE_BATCH_ROWS = 256  # images per Arrow batch when the executors write them: tens of MB, not gigabytes
OFFSETS = ("each mask span [k, start, end] is value[start:end] of the k-th assistant message (from gpt/assistant, "
           "k = 0 first) of the record's conversations as exported; train on the answer tokens that overlap a span")


class ExportJobConfig(BaseModel):
    """``vig export``: which selection, which table versions, and where to write the JSON and its mask."""

    model_config = ConfigDict(extra="forbid")

    lake: str = Field("lake", description="lake root with the corpus, scores and selection tables")
    selection_id: str | None = Field(None, description="the selection to export (see the select job's summary)")
    policy: str | None = Field(None, description="instead of selection_id: the policy (vig, sample, token, random, "
                                                 "all) whose selection to export; must be the only one of that "
                                                 "policy in the selection table version read")
    selection_version: int | None = Field(None, description="selection table version; None = latest")
    corpus_version: int | None = Field(None, description="corpus table version giving the records; None = latest")
    output: str = Field(..., description="the LLaVA JSON to write; the mask sidecar goes next to it as "
                                         "<name>.mask.json")
    images_dir: str | None = Field(
        "images", description="folder, relative to the output's folder, that images stored as bytes in the corpus "
                              "are written to (at their recorded relative path); None = export the recorded "
                              "paths and write no image files")
    part_rows: int = Field(20_000, gt=0, description="kept rows per ordered part, written by one task (the driver "
                                                     "concatenates the parts)")
    staging_dir: str | None = Field(
        None, description="folder for the executors' part files, on storage the driver and the executors share; "
                          "None = a hidden folder next to the output")
    spark: SparkConfig = SparkConfig()

    @model_validator(mode="after")
    def _one_way_to_pick(self) -> "ExportJobConfig":
        if (self.selection_id is None) == (self.policy is None):
            raise ValueError("set exactly one of selection_id and policy")
        return self


def mask_path(output: str) -> str:
    """The mask sidecar's path for the JSON at ``output``: ``x.json`` -> ``x.mask.json``."""
    base = output[: -len(".json")] if output.endswith(".json") else output
    return base + ".mask.json"


def run_export(spark, cfg: ExportJobConfig, *, out=print) -> dict:
    """Write the records kept by one selection and their mask sidecar; returns the job summary."""
    from pyspark.sql import functions as F

    from vig_udf.lake import read_table
    from vig_udf.spark.selection_inputs import resolve_selection

    chosen = resolve_selection(spark, lake=cfg.lake, selection_id=cfg.selection_id, policy=cfg.policy,
                               selection_version=cfg.selection_version, corpus_version=cfg.corpus_version)
    paths, versions = chosen["paths"], chosen["versions"]
    selection_version, scores_version, corpus_version = (versions[k] for k in ("selection", "scores", "corpus"))
    selection = read_table(spark, paths["selection"], version=selection_version)
    scores = (read_table(spark, paths["scores"], version=scores_version)
              .where(F.col("scorer_id") == chosen["scorer_id"])
              .select("sample_id", "token_turn", "token_char_start", "token_char_end", F.lit(True).alias("_scored")))
    corpus = _corpus_columns(read_table(spark, paths["corpus"], version=corpus_version))
    weight = F.col("token_weight") if "token_weight" in selection.columns else F.lit(None).cast("array<float>")
    kept = (selection.where((F.col("selection_id") == chosen["selection_id"]) & F.col("kept"))
            .select("sample_id", "reason", "token_keep", weight.alias("token_weight"), "n_tokens", "n_tokens_kept")
            .join(scores, "sample_id", "left").join(corpus, "sample_id", "left"))
    storage = lake_storage(spark)
    output = canonical(cfg.output)
    folder, name = posixpath.split(output)
    images_root = join(folder, cfg.images_dir) if cfg.images_dir is not None else None
    tables = {"selection": {"path": paths["selection"], "version": selection_version},
              "scores": {"path": paths["scores"], "version": scores_version},
              "corpus": {"path": paths["corpus"], "version": corpus_version}}
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "selection_id": chosen["selection_id"],
              "policy": chosen["policy"], "params": json.loads(chosen["params"]), "p": chosen["p"],
              "tau": chosen["tau"], "scorer_id": chosen["scorer_id"], "tables": tables, "offsets": OFFSETS,
              "records_file": name, "images_dir": cfg.images_dir}
    if chosen.get("taus") is not None:  # tau_by=source: no one tau; each source's, as the select commit recorded
        header["taus"] = chosen["taus"]
    sidecar = mask_path(output)
    totals, unchanged, parts = earlier_export(storage, output, sidecar, header), True, []
    if totals is None:
        unchanged = False
        lines = (kept.drop("image_bytes").withColumn("more_images", _without_bytes("more_images"))
                 .mapInArrow(export_lines(images_root is not None), LINE_DDL).persist())
        staging = join(canonical(cfg.staging_dir or folder), f".{name}.parts-{uuid.uuid4().hex}")
        try:
            totals = _check_lines(lines, corpus_version, scores_version)
            images = totals.pop("records_with_image_bytes")
            totals["images_written"] = 0
            if images_root is not None and images:
                totals["images_written"] = write_images(spark, bytes_images(kept), images_root, storage)
            parts = write_parts(lines, staging, totals["records"], cfg.part_rows, storage)
            _write_export(storage, output, sidecar, parts, header, totals)
        finally:
            lines.unpersist()
            storage.delete(staging)
    summary = {"selection_id": chosen["selection_id"], "policy": chosen["policy"], **totals, "output": output,
               "mask": sidecar, "images_dir": images_root if totals["images_written"] else None,
               "selection_version": selection_version, "scores_version": scores_version,
               "corpus_version": corpus_version, "parts": len(parts),
               "largest_part_rows": max((part.rows for part in parts), default=0), "unchanged": unchanged}
    _print_summary(summary, out)
    return summary


def _without_bytes(column: str):
    """``more_images`` with each image's bytes replaced by whether it has them (``{path, has_bytes}``): the lines
    carry no image data."""
    from pyspark.sql import functions as F

    return F.transform(column, lambda m: F.struct(m.getField("path").alias("path"),
                                                  m.getField("bytes").isNotNull().alias("has_bytes")))


def bytes_images(kept):
    """``(image_path, image_bytes)`` of every image of the kept rows stored as bytes: the first images and those
    of ``more_images``."""
    from pyspark.sql import functions as F

    more = (kept.select(F.explode("more_images").alias("m")).where(F.col("m.bytes").isNotNull())
            .select(F.col("m.path").alias("image_path"), F.col("m.bytes").alias("image_bytes")))
    return kept.where(F.col("_has_bytes")).select("image_path", "image_bytes").unionByName(more)


def exported_images(row: dict, bytes_images_renamed: bool):
    """The ``image`` value a kept row's record is exported with: its one path (or None), or the list of every
    image's where the record gave a list (``image_list``); a bytes-stored image's path is the one it is written
    at under the images folder (:func:`_image_name`)."""
    more = row.get("more_images") or []
    paths = ([row["image_path"]] if row["image_path"] is not None else []) + [m["path"] for m in more]
    stored = [bool(row["_has_bytes"])] + [bool(m["has_bytes"]) for m in more]
    paths = [_image_name(p) if p and has_bytes and bytes_images_renamed else p for p, has_bytes in zip(paths, stored)]
    if row.get("image_list") or len(paths) > 1:
        return paths
    return paths[0] if paths else None


def export_lines(bytes_images_renamed: bool):
    """``mapInArrow`` function: joined kept rows -> one :data:`LINE_DDL` row each: the record's JSON, its mask
    entry (``"<id>": [[k, start, end], ...]``), and a readable ``problem`` instead when the row cannot be
    exported (not in the corpus, no scores row, a token mask that does not fit, a bytes-stored image whose
    recorded path leaves the images folder)."""
    import pyarrow as pa

    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import _parse_datatype_string

    schema = to_arrow_schema(_parse_datatype_string(LINE_DDL))

    def lines(batches):
        for batch in batches:
            out = []
            for row in batch.to_pylist():
                line = {"_ordinal": row["_ordinal"], "sample_id": row["sample_id"], "record_id": None,
                        "record": None, "mask": None, "problem": None,
                        "text_only": row["reason"] == sel.TEXT_ONLY_KEPT,
                        "image_bytes": bool(row["_has_bytes"]) or any(m["has_bytes"] for m in row.get("more_images")
                                                                     or []),
                        "n_tokens": row["n_tokens"] or 0, "n_tokens_kept": row["n_tokens_kept"] or 0}
                if not row["_in_corpus"]:
                    line["problem"] = "not_in_corpus"
                elif not row["_scored"]:
                    line["problem"] = "unscored"
                else:
                    try:
                        spans = record_spans(row)
                        image = exported_images(row, bytes_images_renamed)
                    except ValueError as error:
                        line["problem"] = str(error)
                    else:
                        record_id = _record_id(row)
                        line.update(record_id=record_id, record=json_text(
                            exported_record(record_id, image, _turns(row["conversations"]), row["extra"],
                                            row["key_order"])),
                            mask=json_text(record_id) + ": " + json.dumps([list(span) for span in spans]))
                out.append(line)
            yield pa.RecordBatch.from_pylist(out, schema=schema)

    return lines


PART_DDL = "part INT, records_path STRING, masks_path STRING, records_bytes LONG, masks_bytes LONG, rows LONG"


class Part(NamedTuple):
    """One ordered part as its task wrote it: the records joined by ``,\\n`` and the mask entries likewise."""

    part: int
    records_path: str
    masks_path: str
    records_bytes: int
    masks_bytes: int
    rows: int


def write_parts(lines, staging: str, n_rows: int, part_rows: int, storage: Storage) -> list[Part]:
    """Have the executors write the lines, sorted by ingest ordinal (then sample id), as about ``part_rows``-row
    range partitions, each to two part files in ``staging``; returns the committed parts in order, checked to
    hold all ``n_rows`` rows and to be visible here, as written."""
    from pyspark.sql import functions as F

    marker = join(staging, MARKER)
    storage.write_text(marker, "")  # the executors check that they see it: the staging folder is shared
    order = [F.col("_ordinal").asc_nulls_last(), F.col("sample_id")]
    ordered = (lines.select("record", "mask", "_ordinal", "sample_id")
               .repartitionByRange(max(1, -(-n_rows // part_rows)), *order).sortWithinPartitions(*order)
               .select("record", "mask"))
    # one small row per part (n_rows / part_rows of them), from the attempt that Spark committed
    parts = sorted(Part(**row.asDict()) for row in
                   ordered.mapInArrow(part_writer(staging, storage), PART_DDL).collect())
    written = sum(part.rows for part in parts)
    if written != n_rows:
        raise RuntimeError(f"the export's parts hold {written} rows, not the {n_rows} checked; nothing was written")
    for part in parts:
        for path, size in ((part.records_path, part.records_bytes), (part.masks_path, part.masks_bytes)):
            found = storage.info(path)
            if found is None or found.size != size:
                raise RuntimeError(f"the part file {path} an executor wrote ({size} bytes) is not here as written: "
                                   + SHARED_STORAGE)
    return parts


def part_writer(staging: str, storage: Storage):
    """``mapInArrow`` function: one sorted partition of ``(record, mask)`` lines -> its two part files in
    ``staging`` (named by partition and a fresh id, so that no two attempts share a file) and one
    :data:`PART_DDL` row; an empty partition writes nothing and yields no row."""
    import pyarrow as pa

    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import _parse_datatype_string

    schema = to_arrow_schema(_parse_datatype_string(PART_DDL))

    def parts(batches):
        from pyspark import TaskContext

        if not storage.is_file(join(staging, MARKER)):
            raise FileNotFoundError(f"the export's staging folder {staging} is not visible on this executor: "
                                    + SHARED_STORAGE)
        part = TaskContext.get().partitionId()
        stem = join(staging, f"part-{part:05d}-{uuid.uuid4().hex}")
        paths, rows, sizes = (stem + ".records", stem + ".masks"), 0, [0, 0]
        with storage.write(paths[0]) as records, storage.write(paths[1]) as masks:
            for batch in batches:
                if batch.num_rows:
                    separator = b",\n" if rows else b""
                    for k, (f, column) in enumerate(((records, "record"), (masks, "mask"))):
                        data = separator + ",\n".join(batch.column(column).to_pylist()).encode()
                        f.write(data)
                        sizes[k] += len(data)
                    rows += batch.num_rows
        if not rows:
            for path in paths:
                storage.delete(path)
            return
        yield pa.RecordBatch.from_pylist([{
            "part": part, "records_path": paths[0], "masks_path": paths[1], "records_bytes": sizes[0],
            "masks_bytes": sizes[1], "rows": rows}], schema=schema)

    return parts


def record_spans(row) -> list[tuple]:
    """Merged ``(assistant_turn, start, end)`` spans of one kept row's kept tokens, as offsets into the
    assistant messages' ``value`` strings; ``(assistant_turn, start, end, weight)`` when the row carries loss
    weights (``token_weight``).

    The scores table's token spans are offsets into the answer text that the chat template locates, which is
    the message's ``value`` stripped of surrounding whitespace (:func:`vig_udf.scoring.masking.render_with_answer_spans`);
    they are shifted by the ``value``'s leading whitespace. A text-only row scored without token arrays is kept
    whole: one span per answer.
    """
    conversations = _turns(row["conversations"])
    n_images = (1 + len(row.get("more_images") or [])) if row["image_path"] else 0
    conv = parse_conversation(conversations, has_image=bool(n_images), n_images=n_images)
    values = [conversations[i]["value"] for i in conv.answer_turns]
    lead = np.array([len(v) - len(v.lstrip()) for v in values], dtype=np.int64)
    keep = np.asarray(row["token_keep"] or [], dtype=bool)
    weights = row.get("token_weight")
    turn, start, end = (np.asarray(row[c] or [], dtype=np.int64)
                        for c in ("token_turn", "token_char_start", "token_char_end"))
    if len(turn) == len(keep) and len(keep):
        if turn.min() < 0 or turn.max() >= len(values):
            raise ValueError(f"sample {row['sample_id']}: token turns {sorted(set(turn.tolist()))} do not match its "
                             f"{len(values)} assistant messages")
        if weights is not None:
            if len(weights) != len(keep):
                raise ValueError(f"sample {row['sample_id']}: token_weight has {len(weights)} entries for "
                                 f"{len(keep)} token_keep entries")
            return weighted_char_spans(turn, start + lead[turn], end + lead[turn], keep, weights)
        return kept_char_spans(turn, start + lead[turn], end + lead[turn], keep)
    if row["reason"] == sel.TEXT_ONLY_KEPT and not len(turn):
        weight = () if weights is None else (1.0,)
        return [(k, int(lead[k]), int(lead[k]) + len(v.strip()), *weight) for k, v in enumerate(values) if v.strip()]
    raise ValueError(f"sample {row['sample_id']}: the selection's token mask has {len(keep)} entries but the scores "
                     f"row has {len(turn)} tokens; was the selection made from another scores version?")


def _corpus_columns(corpus):
    """The corpus columns the export needs; tolerant of corpora written without ingest's bookkeeping columns."""
    from pyspark.sql import functions as F

    have = set(corpus.columns)
    missing = {"sample_id", "image_path", "conversations"} - have
    if missing:
        raise ValueError(f"the corpus table lacks the columns {sorted(missing)}; was it written by `vig ingest`?")
    optional = lambda name, kind: F.col(name) if name in have else F.lit(None).cast(kind)  # noqa: E731
    return corpus.select(
        "sample_id", optional("source_id", "string").alias("source_id"),
        optional("duplicate_id", "boolean").alias("duplicate_id"), "image_path", "conversations",
        optional("image_bytes", "binary").alias("image_bytes"),
        optional("more_images", MORE_IMAGES_DDL).alias("more_images"),
        optional("image_list", "boolean").alias("image_list"),
        optional("image_bytes", "binary").isNotNull().alias("_has_bytes"),
        optional("extra", "string").alias("extra"), optional("key_order", "array<string>").alias("key_order"),
        optional("ingest_ordinal", "long").alias("_ordinal"), F.lit(True).alias("_in_corpus"))


def _check_lines(lines, corpus_version: int, scores_version: int) -> dict:
    """The export's totals, after checking with one aggregation that every kept row can be exported: it has its
    corpus record and its scores row, its mask fits, and no two rows share a record id."""
    from pyspark.sql import functions as F

    totals = lines.agg(
        F.count(F.lit(1)).alias("records"), F.count_if("text_only").alias("text_only_records"),
        F.count_if("image_bytes").alias("records_with_image_bytes"),
        F.coalesce(F.sum("n_tokens_kept"), F.lit(0)).alias("tokens_kept"),
        F.coalesce(F.sum("n_tokens"), F.lit(0)).alias("answer_tokens"),
        F.count_if(F.col("problem") == "not_in_corpus").alias("not_in_corpus"),
        F.count_if(F.col("problem") == "unscored").alias("unscored"),
        F.count_if(~F.col("problem").isin("not_in_corpus", "unscored")).alias("bad_masks"),
        (F.count("record_id") - F.countDistinct("record_id")).alias("repeated_ids")).first().asDict()

    def examples(problem) -> list[str]:  # five sample ids
        return [r["sample_id"] for r in lines.where(problem).select("sample_id").limit(5).collect()]

    if totals.pop("not_in_corpus"):
        raise ValueError(f"kept samples are not in corpus v{corpus_version} (e.g. "
                         f"{examples(F.col('problem') == 'not_in_corpus')}); pin corpus_version to one that holds "
                         "them (the latest, unless rows were removed)")
    if totals.pop("unscored"):
        raise ValueError(f"kept samples have no row in scores v{scores_version} (e.g. "
                         f"{examples(F.col('problem') == 'unscored')}); the selection does not match its scores table")
    if totals.pop("bad_masks"):
        raise ValueError(lines.where(~F.col("problem").isin("not_in_corpus", "unscored")).first()["problem"])
    if totals.pop("repeated_ids"):
        repeated = lines.groupBy("record_id").count().where("count > 1").limit(5).collect()  # at most 5 rows
        raise ValueError(f"two kept records would be exported with the id {repeated[0]['record_id']!r} "
                         f"(repeated ids: {[r['record_id'] for r in repeated]})")
    return totals


def _record_id(row) -> str:
    """The record's original id where it had one of its own, else the corpus sample_id (a content id)."""
    return row["source_id"] if row["source_id"] is not None and not row["duplicate_id"] else row["sample_id"]


def _turns(conversations) -> list[dict]:
    """The corpus row's conversation (Spark structs) as LLaVA ``{"from", "value"}`` dicts."""
    return [{"from": turn["from"], "value": turn["value"]} for turn in conversations]


def exported_record(record_id: str, image, conversations: list[dict], extra: str | None = None,
                    key_order: list[str] | None = None) -> dict:
    """The record as ingest read it: its keys in input order (``key_order``, else LLaVA's), ``id`` the export's
    id (placed first where the record had none), its images under the key they came under (``image`` or
    ``images``: the first of them in ``key_order`` that ``extra`` does not hold) as their exported path, or the
    list of them (``image`` a list), the conversation under ``conversations`` (also where it came as Hugging
    Face ``messages``) and every other key from ``extra``."""
    others = json.loads(extra) if extra else {}
    keys = list(key_order) if key_order else default_keys(image) + list(others)
    if "id" not in keys:
        keys.insert(0, "id")
    image_key = next((k for k in keys if k in IMAGE_KEYS and k not in others), "image")
    record = {}
    for key in keys:
        if key == "id":
            record["id"] = record_id
        elif key == image_key:
            record[key] = image
        elif key in CONVERSATION_KEYS and key not in others:
            record["conversations"] = conversations
        elif key in others:
            record[key] = others[key]
    if image and image_key not in record:
        record[image_key] = image
    record.setdefault("conversations", conversations)
    return record


def _image_name(image_path: str) -> str:
    """Where a bytes-stored image goes under the images folder: its recorded path, normalised and relative."""
    name = posixpath.normpath(image_path.replace("\\", "/")).lstrip("/")
    if name in ("", ".") or name == ".." or name.startswith("../"):
        raise ValueError(f"image path {image_path!r} cannot be written under the images folder")
    return name


def write_images(spark, rows, root: str, storage: Storage) -> int:
    """Have the executors write each row's image bytes to ``root/<recorded path>`` (each file whole, a few
    hundred images per Arrow batch); returns how many were written. No image reaches the driver. A marker file
    that the driver leaves in ``root`` for the job proves that the executors write where the driver sees."""
    from pyspark.sql import functions as F

    from vig_udf.lake.session_conf import session_confs

    marker = join(root, f".vig-export-{uuid.uuid4().hex}")
    storage.write_text(marker, "")
    try:
        with session_confs(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": str(IMAGE_BATCH_ROWS)}):
            written = rows.mapInArrow(image_writer(root, marker, storage), "written LONG")
            return written.agg(F.coalesce(F.sum("written"), F.lit(0))).first()[0]
    finally:
        storage.delete(marker)


def image_writer(root: str, marker: str, storage: Storage):
    """``mapInArrow`` function: ``(image_path, image_bytes)`` rows -> the files under ``root``, one count per
    batch; fails with a readable message where ``marker`` is not visible (``root`` is not shared storage)."""

    def write(batches):
        import pyarrow as pa

        if not storage.is_file(marker):
            raise FileNotFoundError(f"the images folder {root} the driver prepared is not visible on this executor: "
                                    + SHARED_STORAGE)
        for batch in batches:
            for path, data in zip(batch.column("image_path").to_pylist(), batch.column("image_bytes").to_pylist()):
                storage.write_bytes(join(root, _image_name(path)), data)
            yield pa.RecordBatch.from_pydict({"written": pa.array([batch.num_rows], pa.int64())})

    return write


def earlier_export(storage: Storage, output: str, sidecar: str, header: dict) -> dict | None:
    """The totals of an export already at ``output`` with this ``header`` (same selection, table versions and
    options) whose records are the ones the sidecar describes; None when it must be written. Reads the sidecar's
    head and tail only: the masks in between can be gigabytes. The records are the described ones when their
    size and modification time are those the sidecar recorded when they were written (as make and rsync
    decide), or else when they hash to its ``records_sha256``; only an edit that restores both size and time
    goes unseen."""
    records, masks = storage.info(output), storage.info(sidecar)
    if records is None or masks is None:
        return None
    with storage.open(sidecar) as f:
        head = f.read(1 << 20)
        f.seek(max(0, masks.size - TAIL_BYTES))
        tail = f.read()
    marker, end = head.find(MASKS_OPEN), tail.rfind(MASKS_CLOSE)
    if marker < 0 or end < 0:
        return None
    try:
        earlier_header = json.loads(head[:marker] + b"}")
        ending = json.loads(b'{"records_sha256": ' + tail[end + len(MASKS_CLOSE):])
    except ValueError:
        return None
    if earlier_header != json.loads(json.dumps(header)) or "totals" not in ending:
        return None
    if ending.get("records_stat") == _file_stat(records):
        return ending["totals"]
    return ending["totals"] if file_sha256(storage, output) == ending.get("records_sha256") else None


def file_sha256(storage: Storage, path: str) -> str:
    """The SHA-256 of a file, read a megabyte at a time."""
    digest = hashlib.sha256()
    with storage.open(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_stat(entry) -> dict:
    """Size and modification time (ns) of a file, as the sidecar records them for its records file."""
    return {"size": entry.size, "mtime_ns": entry.mtime_ns}


def _write_export(storage: Storage, output: str, sidecar: str, parts: Iterable[Part], header: dict,
                  totals: dict) -> None:
    """Both files from the ordered parts, copied byte-wise (each file whole or not at all): the records first,
    then the sidecar, which ends with the records' hash, size and time and the export's ``totals`` (what a
    rerun reports), so a rerun tells whether the records are the ones the sidecar describes."""
    parts = list(parts)
    digest = hashlib.sha256()
    with storage.write(output) as records:
        def hashed(data: bytes) -> None:
            digest.update(data)
            records.write(data)

        for k, part in enumerate(parts):
            hashed(b"[\n" if k == 0 else b",\n")
            _copy(storage, part.records_path, hashed)
        hashed(b"\n]\n" if parts else b"[]\n")
    ending = json.dumps({"records_sha256": digest.hexdigest(), "totals": totals,
                         "records_stat": _file_stat(storage.info(output))})
    with storage.write(sidecar) as masks:
        masks.write(json.dumps(header, ensure_ascii=False)[:-1].encode() + MASKS_OPEN)
        for k, part in enumerate(parts):
            masks.write(b"\n" if k == 0 else b",\n")
            _copy(storage, part.masks_path, masks.write)
        masks.write(b"}, " + ending[1:].encode())


def _copy(storage: Storage, path: str, write) -> None:
    """Pass a file's bytes to ``write`` a megabyte at a time."""
    with storage.open(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            write(chunk)


def _print_summary(summary: dict, out) -> None:
    share = f"{summary['tokens_kept'] / summary['answer_tokens']:.1%}" if summary["answer_tokens"] else "n/a"
    out(f"selection {summary['selection_id']} ({summary['policy']}; selection v{summary['selection_version']}, "
        f"scores v{summary['scores_version']}, corpus v{summary['corpus_version']}): wrote {summary['records']} "
        f"records ({summary['text_only_records']} text-only) to {summary['output']}")
    out(f"mask {summary['mask']}: {summary['tokens_kept']}/{summary['answer_tokens']} answer tokens kept ({share})"
        + (f"; {summary['images_written']} images written under {summary['images_dir']}"
           if summary["images_written"] else ""))
