"""The export job: one selection -> the kept records as LLaVA-format JSON plus a per-token mask sidecar.

For training with other stacks (the LLaVA repo, LLaMA-Factory, TRL): the JSON is a single file in the
layout of ``llava_v1_5_mix665k.json`` (a list of ``{"id", "image", "conversations"}``, ``image`` omitted
for text-only records), holding exactly the corpus records that the selection keeps, unchanged. The
sidecar ``<name>.mask.json`` says which answer characters to train on:

    {"format": "vig-spark/token-mask", "format_version": 1, "selection_id": ..., "policy": ..., "params": {...},
     "tau": ..., "scorer_id": ..., "tables": {...versions...}, "offsets": "...", "records_sha256": ...,
     "masks": {"<id>": [[assistant_turn_index, start, end], ...], ...}}

A span ``[k, start, end]`` is ``value[start:end]`` of the k-th assistant message (``from`` gpt/assistant)
of that record's ``conversations``, exactly as exported. The spans are the kept tokens' character spans
merged with :func:`vig_udf.spans.kept_char_spans`; another tokenizer keeps a token when it overlaps a span
(:func:`vig_udf.spans.keep_from_spans`). Text-only records are kept whole: their spans cover all their
answer tokens.

The job reads the selection (pinned or latest version), the scores version the selection was made from
(recorded in its rows) and the corpus (pinned or latest), joins the kept rows in Spark and collects them
to the driver, which writes both files atomically (temporary file + rename; the JSON is renamed last).
Images stored as bytes in the corpus are streamed to the driver a partition at a time and written under
an images folder next to the output, so the exported ``image`` paths resolve against it (LLaVA's
``--image_folder``). Example::

    summary = run_export(spark, ExportJobConfig(lake="lake", policy="vig", output="export/vig70.json"))
    # export/vig70.json, export/vig70.mask.json (and export/images/... for bytes-stored images)
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from vig_udf import selection as sel
from vig_udf.config import SparkConfig
from vig_udf.conversation import parse_conversation
from vig_udf.spans import kept_char_spans

FORMAT, FORMAT_VERSION = "vig-spark/token-mask", 1
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
    kept = (selection.where((F.col("selection_id") == chosen["selection_id"]) & F.col("kept"))
            .select("sample_id", "reason", "token_keep", "n_tokens", "n_tokens_kept")
            .join(scores, "sample_id", "left").join(corpus, "sample_id", "left"))
    rows = kept.drop("image_bytes").orderBy(F.col("_ordinal").asc_nulls_last(), "sample_id").collect()
    _check_joined(rows, corpus_version, scores_version)

    output = Path(cfg.output)
    images_root = output.parent / cfg.images_dir if cfg.images_dir is not None else None
    records, masks, n_images = [], {}, 0
    image_names: dict[str, str] = {}
    for row in rows:
        image = row["image_path"]
        if image and row["_has_bytes"] and images_root is not None:
            image = image_names[row["sample_id"]] = _image_name(image)
        record_id = _record_id(row)
        if record_id in masks:
            raise ValueError(f"two kept records would be exported with the id {record_id!r}")
        records.append(_record(record_id, image, _turns(row["conversations"])))
        masks[record_id] = [list(span) for span in record_spans(row)]
    if image_names:
        n_images = _write_images(kept.where(F.col("_has_bytes")).select("sample_id", "image_bytes"), image_names,
                                 images_root)

    tables = {"selection": {"path": paths["selection"], "version": selection_version},
              "scores": {"path": paths["scores"], "version": scores_version},
              "corpus": {"path": paths["corpus"], "version": corpus_version}}
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "selection_id": chosen["selection_id"],
              "policy": chosen["policy"], "params": json.loads(chosen["params"]), "p": chosen["p"], "tau": chosen["tau"],
              "scorer_id": chosen["scorer_id"], "tables": tables, "offsets": OFFSETS, "records_file": output.name}
    sidecar = mask_path(str(output))
    _write_export(output, Path(sidecar), records, header, masks)
    summary = {"selection_id": chosen["selection_id"], "policy": chosen["policy"], "records": len(records),
               "text_only_records": sum(1 for r in rows if r["reason"] == sel.TEXT_ONLY_KEPT),
               "tokens_kept": sum(r["n_tokens_kept"] or 0 for r in rows),
               "answer_tokens": sum(r["n_tokens"] or 0 for r in rows), "images_written": n_images,
               "output": str(output), "mask": sidecar, "images_dir": str(images_root) if n_images else None,
               "selection_version": selection_version, "scores_version": scores_version,
               "corpus_version": corpus_version}
    _print_summary(summary, out)
    return summary


def record_spans(row) -> list[tuple[int, int, int]]:
    """Merged ``(assistant_turn, start, end)`` spans of one kept row's kept tokens, as offsets into the
    assistant messages' ``value`` strings.

    The scores table's token spans are offsets into the answer text that the chat template locates, which is
    the message's ``value`` stripped of surrounding whitespace (:func:`vig_udf.masking.render_with_answer_spans`);
    they are shifted by the ``value``'s leading whitespace. A text-only row scored without token arrays is kept
    whole: one span per answer.
    """
    conversations = _turns(row["conversations"])
    conv = parse_conversation(conversations, has_image=bool(row["image_path"]))
    values = [conversations[i]["value"] for i in conv.answer_turns]
    lead = np.array([len(v) - len(v.lstrip()) for v in values], dtype=np.int64)
    keep = np.asarray(row["token_keep"] or [], dtype=bool)
    turn, start, end = (np.asarray(row[c] or [], dtype=np.int64)
                        for c in ("token_turn", "token_char_start", "token_char_end"))
    if len(turn) == len(keep) and len(keep):
        if turn.min() < 0 or turn.max() >= len(values):
            raise ValueError(f"sample {row['sample_id']}: token turns {sorted(set(turn.tolist()))} do not match its "
                             f"{len(values)} assistant messages")
        return kept_char_spans(turn, start + lead[turn], end + lead[turn], keep)
    if row["reason"] == sel.TEXT_ONLY_KEPT and not len(turn):
        return [(k, int(lead[k]), int(lead[k]) + len(v.strip())) for k, v in enumerate(values) if v.strip()]
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
        optional("image_bytes", "binary").isNotNull().alias("_has_bytes"),
        optional("ingest_ordinal", "long").alias("_ordinal"), F.lit(True).alias("_in_corpus"))


def _check_joined(rows, corpus_version: int, scores_version: int) -> None:
    """Every kept sample must have its corpus record and its scores row (for the token spans)."""
    missing = [r["sample_id"] for r in rows if not r["_in_corpus"]]
    if missing:
        raise ValueError(f"{len(missing)} kept samples are not in corpus v{corpus_version} (e.g. {missing[:5]}); "
                         "pin corpus_version to one that holds them (the latest, unless rows were removed)")
    unscored = [r["sample_id"] for r in rows if not r["_scored"]]
    if unscored:
        raise ValueError(f"{len(unscored)} kept samples have no row in scores v{scores_version} "
                         f"(e.g. {unscored[:5]}); the selection does not match its scores table")


def _record_id(row) -> str:
    """The record's original id where it had one of its own, else the corpus sample_id (a content id)."""
    return row["source_id"] if row["source_id"] is not None and not row["duplicate_id"] else row["sample_id"]


def _turns(conversations) -> list[dict]:
    """The corpus row's conversation (Spark structs) as LLaVA ``{"from", "value"}`` dicts."""
    return [{"from": turn["from"], "value": turn["value"]} for turn in conversations]


def _record(record_id: str, image: str | None, conversations: list[dict]) -> dict:
    record = {"id": record_id}
    if image:
        record["image"] = image
    record["conversations"] = conversations
    return record


def _image_name(image_path: str) -> str:
    """Where a bytes-stored image goes under the images folder: its recorded path, normalised and relative."""
    name = posixpath.normpath(image_path.replace("\\", "/")).lstrip("/")
    if name in ("", ".") or name == ".." or name.startswith("../"):
        raise ValueError(f"image path {image_path!r} cannot be written under the images folder")
    return name


def _write_images(rows, names: dict[str, str], root: Path) -> int:
    """Write each row's image bytes to ``root/<name>`` (atomically per file); rows stream a partition at a time."""
    written = 0
    for row in rows.toLocalIterator():
        target = root / names[row["sample_id"]]
        _atomic_write(target, lambda f, data=row["image_bytes"]: f.write(data))
        written += 1
    return written


def _write_export(output: Path, sidecar: Path, records: list[dict], header: dict, masks: dict) -> None:
    """Both files through temporary files; the JSON is renamed last, so its presence marks a complete export."""
    digest = hashlib.sha256()
    json_tmp = _temp_file(output, lambda f: _write_records(f, records, digest))
    try:
        document = {**header, "records_sha256": digest.hexdigest(), "masks": masks}
        _atomic_write(sidecar, lambda f: f.write(json.dumps(document, ensure_ascii=False).encode()))
        os.replace(json_tmp, output)
    except BaseException:
        os.unlink(json_tmp)
        raise


def _write_records(f, records: Iterable[dict], digest) -> None:
    """A JSON list, one record a line (streamed, hashed as written)."""
    first = True
    for record in records:
        chunk = ("[\n" if first else ",\n") + json.dumps(record, ensure_ascii=False)
        first = False
        data = chunk.encode()
        digest.update(data)
        f.write(data)
    tail = ("[]\n" if first else "\n]\n").encode()
    digest.update(tail)
    f.write(tail)


def _temp_file(target: Path, write) -> str:
    """Write through ``write(binary_file)`` to a temporary file next to ``target``; returns its path."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _atomic_write(target: Path, write) -> None:
    os.replace(_temp_file(target, write), target)


def _print_summary(summary: dict, out) -> None:
    share = f"{summary['tokens_kept'] / summary['answer_tokens']:.1%}" if summary["answer_tokens"] else "n/a"
    out(f"selection {summary['selection_id']} ({summary['policy']}; selection v{summary['selection_version']}, "
        f"scores v{summary['scores_version']}, corpus v{summary['corpus_version']}): wrote {summary['records']} "
        f"records ({summary['text_only_records']} text-only) to {summary['output']}")
    out(f"mask {summary['mask']}: {summary['tokens_kept']}/{summary['answer_tokens']} answer tokens kept ({share})"
        + (f"; {summary['images_written']} images written under {summary['images_dir']}"
           if summary["images_written"] else ""))
