"""The score job: corpus Delta table -> scores Delta table, through ``mapInArrow`` on the executors.

Resume and idempotency: the job scores only the corpus rows that have no row for this scorer yet, and adds
them with ``MERGE ... WHEN NOT MATCHED THEN INSERT`` on ``(sample_id, scorer_id)``, so a rerun after success
adds nothing, a rerun after an interruption scores what is left, and two runs at once never write a key
twice.

One scoring stage, commits beside it (:mod:`vig_udf.spark.score_commits`): the pending rows are scored by one
Spark job whose tasks each write their scores as a part file under ``<lake>/_staging/scores/<job id>``; the
driver merges the parts into the table while later tasks still score, one Delta commit per ``rows_per_commit``
rows (0: one commit at the end). The executors' Python workers keep their model for the whole job (one load
per worker, counted in the summary), a commit that must be retried after a concurrent commit re-reads the
parts instead of scoring again, and an interruption loses at most the parts not yet committed.

Sizing from the data: the pending rows are cut into tasks of ``rows_per_task`` rows (at least one task per
task slot of the cluster: its cores over a scoring task's CPUs, one per GPU on a GPU cluster), so a large job
spreads over every executor and each task holds many of the scorer's preparation chunks, and every commit
rolls to a new Parquet file after ``rows_per_file`` rows (Spark's ``maxRecordsPerFile``), so files stay a few
hundred MB. The scorer's ``prep_workers``, unless set, is the scoring task's CPUs minus the one that runs the
forwards (:func:`default_prep_workers`). On a cluster whose executors have GPUs the scoring stage gets its own
resources (stage-level scheduling, :func:`scoring_profile`): a GPU and ``task_cpus`` CPUs per task, while the
other stages run many tasks per executor.

``counterfactual=mismatched``: the partners of the whole corpus version are computed by a DataFrame job (each
image path's file hashed once, so copies of one picture under two paths are one image) and the partner's image is
joined onto each pending row before the scoring stage (:mod:`vig_udf.spark.partners`).
``counterfactuals=[...]``: one scoring stage for several counterfactuals, one real-image pass per sample; each
task's part holds every counterfactual's rows under its scorer id, so each commit holds all of them, and the
commit's config lists the scorers (``scorers``, :func:`commit_scorers_config`). A row is pending when some of
the scorers lack it.

``rescore``: rows of this scorer with the given failure statuses (``image_unreadable`` after the images
were fixed, ``model_error``) count as pending; the merge replaces them (``WHEN MATCHED AND t.status IN
(...) THEN UPDATE SET *``), so the table still holds one row per key. While scoring, a line with rows scored and
committed, rows per second and time left is printed every ``progress_every_s`` seconds
(:mod:`vig_udf.spark.progress`).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vig_udf.scoring import status as st
from vig_udf.config import ScorerConfig, SparkConfig
from vig_udf.preflight import check_image_root, check_model_path, is_local
from vig_udf.lake.scorers import blind_warning

log = logging.getLogger(__name__)


class ScoreJobConfig(BaseModel):
    """``vig score``: which corpus, which scorer, how to split the work."""

    model_config = ConfigDict(extra="forbid")

    lake: str = Field("lake", description="lake root folder (or URI) holding the corpus and scores tables")
    corpus_version: int | None = Field(None, description="corpus table version to score; None = latest")
    scorer: ScorerConfig = ScorerConfig()
    partitions: int | None = Field(None, description="scoring tasks of the job (an override, e.g. for tests); None = "
                                                     "from rows_per_task")
    rows_per_task: int = Field(2_000, gt=0, description="pending rows per scoring task (at least one task per task "
                               "slot); keep it many times prep_chunk: a task's first preparation chunk is prepared "
                               "before its first forward")
    rows_per_file: int = Field(100_000, gt=0, description="rows per Parquet file of the scores written (about 150 MB "
                                                          "of LLaVA-shaped rows); larger outputs roll to new files")
    rows_per_commit: int = Field(0, ge=0, description="scored rows per Delta commit, committed while scoring goes on "
                                                      "(0 = one commit at the end); smaller loses less on interruption")
    poll_s: float = Field(2.0, gt=0, description="seconds between the driver's looks at the scored parts (commits, "
                                                 "progress)")
    stage_scheduling: bool = Field(True, description="on a cluster whose executors have GPUs, give the scoring "
                                                     "stage its own resources (task_gpus, task_cpus per task)")
    task_gpus: float = Field(1.0, gt=0, description="GPUs per scoring task (stage-level scheduling)")
    task_cpus: int | None = Field(None, gt=0, description="CPUs per scoring task (image decoding, the processor); "
                                                          "None = spark.task.cpus")
    arrow_batch_rows: int = Field(64, description="rows per Arrow batch handed to the scorer (bounds executor memory)")
    rescore: list[str] = Field(default_factory=list, description="statuses whose rows of this scorer are scored "
                               "again and replaced, e.g. [image_unreadable, model_error] after fixing the cause")
    progress_every_s: float = Field(30.0, description="seconds between progress lines (rows done, rows/s, time "
                                    "left) while scoring; 0 = none")
    spark: SparkConfig = SparkConfig()

    @field_validator("rescore")
    @classmethod
    def _known_failures(cls, statuses: list[str]) -> list[str]:
        unknown = sorted(set(statuses) - set(st.FAILURES))
        if unknown:
            raise ValueError(f"rescore={unknown}: only failure statuses can be re-scored, choose among {st.FAILURES}")
        return statuses


def resolve_spec(cfg: ScoreJobConfig, *, gpu: bool, task_cpus: int = 1, storage=None):
    """The :class:`ScorerSpec` for this job, with the scorer id computed on the driver (no weights loaded).

    ``task_cpus``: the CPUs of one scoring task (``spark.task.cpus``); ``scorer.prep_workers``, unless the
    config sets it, becomes :func:`default_prep_workers` of them.

    The spec's ``record`` is what the score commits record beside the rows: the unhashed identity, the chat
    template text, image placement, prompt format (its definition) and image padding the rows were made with
    (training reads them; the limit ``max_length`` is in the identity) and library versions.
    A hub model is pinned to its resolved commit, so every executor loads the same files. The weights are
    hashed here only: the spec carries the digests and the weight files' stamps, which executors check
    cheaply instead of hashing again.
    """
    from transformers import AutoConfig, AutoProcessor

    from vig_udf.scoring.formats import describe, resolve_format
    from vig_udf.scoring.identity import (identity_record, library_versions, model_fingerprint, scorer_identity,
                                          weight_stamps)
    from vig_udf.spark.score_udf import ScorerSpec
    from vig_udf.storage import Storage, model_folder

    scorer = cfg.scorer
    if not scorer.model_path:
        raise ValueError("scorer.model_path is not set: give a HF model id or a local checkpoint folder")
    storage = storage or Storage.from_conf(cfg.spark.conf)
    options = scorer.options().for_device("cuda" if gpu else "cpu")
    local_model = model_folder(scorer.model_path, storage)
    stamps = weight_stamps(local_model)  # before hashing: a file rewritten meanwhile is hashed by executors
    fingerprint = model_fingerprint(local_model, options.revision)
    revision = fingerprint.get("commit", options.revision)
    processor = AutoProcessor.from_pretrained(local_model, revision=revision,
                                              trust_remote_code=options.trust_remote_code)
    if options.chat_template is not None:
        processor.chat_template = options.chat_template
    config = AutoConfig.from_pretrained(local_model, revision=revision, trust_remote_code=options.trust_remote_code)
    options = options.for_checkpoint(config, processor)  # the checkpoint's prompt format and image padding
    chat_template = options.chat_template or processor.chat_template
    if not chat_template and resolve_format(options.prompt_format) is None:
        raise ValueError(f"{scorer.model_path} has no chat template; set scorer.chat_template (a Jinja template) or "
                         "scorer.prompt_format")
    scorer_ids = {cf: scorer_identity(fingerprint, options.for_counterfactual(cf), chat_template=chat_template)
                  for cf in options.counterfactual_names()}
    # image_root is joined in the UDF so that executors resolve paths the same way; the task decides the device
    # batch_tokens left unset stays the executor device's default (it changes no score)
    kwargs = {**scorer.options().model_dump(exclude={"image_root", "device"}), "dtype": options.dtype,
              "revision": revision, "prompt_format": describe(options.prompt_format), "image_pad": options.image_pad}
    if "prep_workers" not in scorer.model_fields_set:
        kwargs["prep_workers"] = default_prep_workers(task_cpus)
    record = {"identity": identity_record(fingerprint, options, chat_template=chat_template),
              "chat_template": chat_template, "image_placement": options.image_placement,
              "prompt_format": describe(options.prompt_format), "image_pad": options.image_pad,
              "family": getattr(config, "model_type", None), "library_versions": library_versions()}
    if len(scorer_ids) > 1:  # each counterfactual's scorer is recorded with its own identity
        record["identities"] = {cf: identity_record(fingerprint, options.for_counterfactual(cf),
                                                    chat_template=chat_template) for cf in scorer_ids}
    return ScorerSpec(model_path=scorer.model_path, scorer_id="+".join(scorer_ids.values()), kwargs=kwargs,
                      image_root=scorer.image_root, record=record, fingerprint=fingerprint, weight_stamps=stamps,
                      load_log_dir=os.environ.get("VIG_LOAD_LOG_DIR"),
                      kill_worker_once=os.environ.get("VIG_FAULT_KILL_WORKER_ONCE"), storage=storage,
                      scorer_ids=scorer_ids if len(scorer_ids) > 1 else {})


def local_gpu_count(master: str | None, task_gpu_amount: float) -> int:
    """GPUs of a local master (Spark assigns none there; each Python worker takes one, see
    :mod:`vig_udf.spark.local_gpus`); 0 elsewhere or without GPUs."""
    if not (master or "").startswith("local") or task_gpu_amount > 0:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def spark_config(cfg: ScoreJobConfig) -> SparkConfig:
    """The job's Spark settings, with a local master cut to one task per GPU on a machine with GPUs (local
    mode schedules no GPUs; ``local[*]`` would load the model once per core)."""
    import torch

    from vig_udf.spark.local_gpus import local_master

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    master = local_master(cfg.spark.master, gpus)
    if master == cfg.spark.master:
        return cfg.spark
    log.warning("local mode with %d GPU(s): master %s becomes %s (one scoring task per GPU)", gpus,
                cfg.spark.master, master)
    # as many partitions as before (a task per core's worth of rows), run a GPU's worth at a time
    conf = {"spark.default.parallelism": str(os.cpu_count() or 1), **cfg.spark.conf}
    return cfg.spark.model_copy(update={"master": master, "conf": conf})


def check_config(cfg: ScoreJobConfig, spark=None) -> None:
    """Fail fast, before any table is written, when the model or the image root is not there (InputError).

    Without a session (before Spark starts) a local image root is checked only for a local master."""
    from vig_udf.lake.read import lake_storage
    from vig_udf.storage import Storage, local_path

    storage = lake_storage(spark) if spark is not None else Storage.from_conf(cfg.spark.conf)
    check_model_path(cfg.scorer.model_path, storage)
    root = cfg.scorer.image_root
    if spark is not None or is_local(cfg.spark.master) or (root is not None and local_path(root) is None):
        check_image_root(root, spark, storage)


def run_score(spark, cfg: ScoreJobConfig, *, out=print) -> dict:
    """Score the pending corpus rows and append them to ``<lake>/scores``; returns the job summary."""
    check_config(cfg, spark)
    from pyspark.sql import functions as F

    from vig_udf.lake import lake_table, read_table, staging_folder, table_exists, table_version
    from vig_udf.lake.read import lake_storage
    from vig_udf.lake.session_conf import session_confs
    from vig_udf.lake.write import delete_staged, stage_folder
    from vig_udf.spark.cluster import default_parallelism, executor_gpus, master_of
    from vig_udf.spark.progress import Progress
    from vig_udf.spark.score_commits import PartCommitter, run_while_committing
    from vig_udf.spark.score_udf import TASK_DDL, score_to_part

    corpus_path, scores_path = lake_table(cfg.lake, "corpus"), lake_table(cfg.lake, "scores")
    task_gpus = float(spark.conf.get("spark.task.resource.gpu.amount", "0") or 0)
    task_cpus = cfg.task_cpus or int(spark.conf.get("spark.task.cpus", "1") or 1)  # one scoring task's
    local_gpus = local_gpu_count(master_of(spark), task_gpus)
    with ThreadPoolExecutor(1) as pool:  # Delta's first look at the lake (seconds) overlaps loading the processor
        latest_corpus = pool.submit(table_version, spark, corpus_path)
        spec = resolve_spec(cfg, gpu=task_gpus > 0 or local_gpus > 0 or executor_gpus(spark) > 0,
                            task_cpus=task_cpus, storage=lake_storage(spark))
    corpus_version = cfg.corpus_version if cfg.corpus_version is not None else latest_corpus.result()
    if corpus_version is None:
        raise FileNotFoundError(f"no corpus table at {corpus_path}: run `vig ingest` first")
    # a rescore looks at the rows themselves: a completed corpus version can still hold rows to score again
    ids = list(spec.ids().values())
    completed = [None if cfg.rescore else completed_version(spark, scores_path, i, corpus_version) for i in ids]
    completed_in = None if None in completed else max(completed)
    if completed_in is not None:
        out(f"scorer {spec.scorer_id}: corpus v{corpus_version} was scored completely (scores v{completed_in}); "
            "nothing to score")
        return {"scorer_id": spec.scorer_id, "scorer_ids": spec.ids(), "scored": 0, "completed_in": completed_in}
    corpus = read_table(spark, corpus_path, version=corpus_version)
    pending, corpus_rows, n_pending = corpus, None, None
    if table_exists(spark, scores_path):
        done = read_table(spark, scores_path).where(F.col("scorer_id").isin(ids))
        if cfg.rescore:  # rows with these statuses count as not done: scored again, replaced by the merge
            done = done.where(~F.col("status").isin(cfg.rescore))
        if len(ids) == 1:
            done = done.select("sample_id")
        else:  # a row is done when every counterfactual's scorer has it; the merge keeps the rows that exist
            done = (done.groupBy("sample_id").agg(F.count_distinct("scorer_id").alias("_scorers"))
                    .where(F.col("_scorers") == len(ids)).select("sample_id"))
        pending = corpus.join(done, "sample_id", "left_anti")
        # corpus rows and pending rows in one pass over the corpus
        counts = corpus.join(done.withColumn("_done", F.lit(True)), "sample_id", "left").agg(
            F.count(F.lit(1)).alias("rows"), F.count_if(F.col("_done").isNull()).alias("pending")).first()
        corpus_rows, n_pending = counts["rows"], counts["pending"]
    else:
        corpus_rows = n_pending = corpus.count()
    out(f"scorer {spec.scorer_id}: {n_pending} of corpus v{corpus_version} rows to score")
    if "mismatched" in spec.ids():  # the partner's image on the row, so on the row's task
        from vig_udf.spark.partners import with_partner_images

        pending = with_partner_images(pending, corpus, seed=cfg.scorer.partner_seed, scope=cfg.scorer.partner_scope,
                                      image_root=spec.image_root, storage=spec.storage)
    if not n_pending:
        _print_summary({"scorer_id": spec.scorer_id, "scored": 0}, out)
        return {"scorer_id": spec.scorer_id, "scorer_ids": spec.ids(), "scored": 0}
    tasks = cfg.partitions or task_partitions(n_pending, cfg.rows_per_task,
                                              task_slots(default_parallelism(spark), task_cpus))
    job_confs = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.arrow_batch_rows),
                 "spark.sql.files.maxRecordsPerFile": str(cfg.rows_per_file)}
    parts_dir = f"{staging_folder(cfg.lake, 'scores')}/{uuid.uuid4().hex}"
    profile = scoring_profile(spark, cfg)
    scoring = (pending.repartition(tasks, "sample_id")  # a partition's rows are the same in every task attempt
               .mapInArrow(score_to_part(spec, parts_dir), TASK_DDL, profile=profile))
    config = {**cfg.model_dump(mode="json"), "corpus_version": corpus_version, **commit_scorers_config(spec)}
    # rescore: a row of this scorer with one of those statuses is replaced; any other existing row is kept
    replace_when = (f"t.status IN ({', '.join(repr(s) for s in cfg.rescore)})" if cfg.rescore else None)

    def commit(parts: list[str], completes: bool):
        number = len(committer.commits) + 1
        done = commit_parts(spark, parts, scores_path, config={**config, "completes_corpus_version": completes},
                            replace_when=replace_when)
        out(f"commit {number}: " + (_committed(done) if done else "every row was scored meanwhile by another run"))
        return done

    storage = lake_storage(spark)
    committer = PartCommitter(storage, parts_dir, tasks, cfg.rows_per_commit, commit)
    progress = Progress(n_pending, out=out, every_s=cfg.progress_every_s)
    out(f"scoring in {tasks} tasks" + (f" of {profile_text(profile)}" if profile is not None else "")
        + (f", a commit per {cfg.rows_per_commit} rows" if cfg.rows_per_commit else ", one commit at the end"))
    started = time.perf_counter()
    stage_folder(spark, parts_dir, "score")
    try:
        with session_confs(spark, job_confs):  # the batch and file sizes of this job; the session left as it was
            task_rows = run_while_committing(
                spark, scoring.collect, committer, poll_s=min(cfg.poll_s, cfg.progress_every_s or cfg.poll_s),
                on_poll=lambda: progress.maybe_print(committer.scored_rows // len(ids),
                                                     committer.committed_rows // len(ids)))
    finally:
        delete_staged(spark, parts_dir)
    elapsed = time.perf_counter() - started
    if committer.missing() or committer.scored_rows != n_pending * len(ids):
        raise RuntimeError(f"the scoring tasks wrote {committer.scored_rows} of the {n_pending * len(ids)} rows "
                           f"(partitions without a part: {committer.missing()[:10]}); the rows committed stay, a "
                           "rerun scores the rest")
    if cfg.progress_every_s > 0:
        out(progress.line(committer.scored_rows // len(ids), committer.committed_rows // len(ids)))
    workers = {**_worker_summary([row.asDict() for row in task_rows]), "commits": len(committer.commits)}
    if len(ids) == 1:
        summary = {**_summary(read_table(spark, scores_path), ids[0], corpus_rows, n_pending, elapsed), **workers}
        _print_summary(summary, out)
        return summary
    by_scorer = {i: _summary(read_table(spark, scores_path), i, corpus_rows, n_pending, elapsed) for i in ids}
    for i in ids:
        _print_summary({**by_scorer[i], **workers}, out)
    return {"scorer_ids": spec.ids(), "by_scorer": by_scorer, "scored": n_pending, "seconds": elapsed,
            "samples_per_s": n_pending / elapsed if elapsed else None, "corpus_rows": corpus_rows, **workers}


def commit_scorers_config(spec) -> dict:
    """What a score commit records of its scorers: ``scorer_id`` and ``scorer_record`` for one, ``scorers`` (each
    one's id, counterfactual and record) for several (:func:`vig_udf.lake.scorers.commit_scorers` reads both)."""
    if not spec.scorer_ids:
        return {"scorer_id": spec.scorer_id, "scorer_record": spec.record}
    shared = {k: v for k, v in spec.record.items() if k != "identities"}
    return {"scorers": [{"scorer_id": scorer_id, "counterfactual": cf,
                         "scorer_record": {**shared, "identity": spec.record["identities"][cf]}}
                        for cf, scorer_id in spec.scorer_ids.items()]}


def commit_parts(spark, parts: list[str], scores_path: str, *, config: dict, replace_when: str | None):
    """One Delta commit of the scored part files ``parts`` into the scores table (an insert-only ``MERGE`` on
    ``(sample_id, scorer_id)``, or the upsert of ``rescore``); returns the commit, or None if nothing was new."""
    from pyspark.sql.pandas.types import from_arrow_schema

    from vig_udf.lake import insert_new_rows
    from vig_udf.spark.arrow import NEW_SCORES_COLUMNS, SCORES_SCHEMA
    from vig_udf.storage import spark_path

    rows = spark.read.schema(from_arrow_schema(SCORES_SCHEMA)).parquet(*[spark_path(p) for p in parts])
    return insert_new_rows(rows, scores_path, keys=["sample_id", "scorer_id"], job="score", config=config,
                           replace_when=replace_when, add_columns=NEW_SCORES_COLUMNS)


def scoring_profile(spark, cfg: ScoreJobConfig):
    """The stage-level resource profile of the scoring stage on a cluster whose executors have GPUs: each task
    ``task_gpus`` GPUs and ``task_cpus`` CPUs, while the job's other stages (the anti-join, the commits) keep the
    session's defaults (one CPU, no GPU) and run a task per free core beside it. None in local mode or
    without GPUs, or when ``stage_scheduling`` is off."""
    from vig_udf.spark.cluster import executor_gpus, is_local_master, master_of

    if not cfg.stage_scheduling or executor_gpus(spark) <= 0 or is_local_master(master_of(spark)):
        return None
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    cpus = cfg.task_cpus or int(spark.conf.get("spark.task.cpus", "1") or 1)
    requests = TaskResourceRequests().cpus(cpus).resource("gpu", cfg.task_gpus)
    return ResourceProfileBuilder().require(requests).build


def profile_text(profile) -> str:
    """``2 CPUs and 1 GPU each`` for a scoring profile."""
    requests = profile.taskResources
    cpus, gpus = requests["cpus"].amount, requests["gpu"].amount
    return f"{cpus:g} CPU{'s' if cpus != 1 else ''} and {gpus:g} GPU{'s' if gpus != 1 else ''} each"


def completed_version(spark, scores_path: str, scorer_id: str, corpus_version: int) -> int | None:
    """The scores version whose commit scored the last pending rows of ``corpus_version`` for ``scorer_id``
    (after it, every row of that corpus version has a score of that scorer); None if there is none."""
    from vig_udf.lake import table_exists, table_history
    from vig_udf.lake.scorers import commit_scorers

    if not table_exists(spark, scores_path):
        return None
    for commit in table_history(spark, scores_path):
        config = commit["config"] or {}
        if (commit["job"] == "score" and scorer_id in {s["scorer_id"] for s in commit_scorers(config)}
                and config.get("corpus_version") == corpus_version and config.get("completes_corpus_version")):
            return commit["version"]
    return None


def task_partitions(rows: int, rows_per_task: int, slots: int) -> int:
    """Tasks for ``rows`` pending rows : ``rows_per_task`` rows a task, at least ``slots`` tasks
    (every task slot busy, :func:`task_slots`) and never more tasks than rows."""
    return max(1, min(max(rows, 1), max(slots, -(-rows // rows_per_task))))


def task_slots(parallelism: int, task_cpus: int) -> int:
    """Tasks the cluster runs at once: its cores (``defaultParallelism``) over the cores of a task
    (``spark.task.cpus``; one task per GPU when it is the executor's cores); at least 1."""
    return max(1, parallelism // max(1, task_cpus))


def default_prep_workers(task_cpus: int) -> int:
    """The scorer's preparation threads for a task of ``task_cpus`` CPUs: all but the one that runs the
    forward passes, at least 1 (benchmarks/prep_workers.py measures what they give)."""
    return max(1, task_cpus - 1)


def _committed(commit) -> str:
    replaced = f", {commit.rows_updated} re-scored rows replaced" if commit.rows_updated else ""
    return f"committed scores v{commit.version} ({commit.rows_added} rows added{replaced})"


def _worker_summary(tasks: list[dict]) -> dict:
    """What the scoring tasks' workers did: model loads (one per worker when nothing moves), by worker and GPU."""
    workers = {(t["host"], t["pid"]) for t in tasks}
    loads = [t for t in tasks if t["loads"]]
    return {"tasks": len(tasks), "task_records": tasks, "workers": len(workers),
            "model_loads": sum(t["loads"] for t in tasks), "passes": sum(t.get("passes") or 0 for t in tasks),
            "load_seconds": sum(t["load_seconds"] for t in loads),
            "loads": [f"{t['host']}:{t['pid']} on {t['device']}" + (f" (GPU {t['gpu']})" if t["gpu"] else "")
                      + (f", after releasing {t['released']}" if t["released"] else "") for t in loads],
            "gpus": sorted({t["gpu"] for t in tasks if t["gpu"] is not None})}


def _summary(scores, scorer_id: str, corpus_rows: int, n_pending: int, elapsed: float) -> dict:
    """Rows of this scorer by status and the quantiles of the ok rows' VIG: one aggregation over the table."""
    from pyspark.sql import functions as F

    groups = (scores.where(F.col("scorer_id") == scorer_id).groupBy("status")  # one row per status: bounded
              .agg(F.count(F.lit(1)).alias("count"),
                   F.percentile_approx("vig", [0.05, 0.25, 0.5, 0.75, 0.95], 10000).alias("q"),
                   F.min("vig").alias("low"), F.max("vig").alias("high")).collect())
    by_status = {r["status"]: r["count"] for r in groups}
    quantiles = next((r["q"] for r in groups if r["status"] == "ok"), None)
    ok = next((r for r in groups if r["status"] == "ok"), None)
    vig_range = (ok["low"], ok["high"]) if ok is not None else (None, None)
    return {"scorer_id": scorer_id, "scored": n_pending, "seconds": elapsed,
            "samples_per_s": n_pending / elapsed if elapsed else None, "rows_by_status": by_status,
            "rows_for_scorer": sum(by_status.values()), "corpus_rows": corpus_rows,
            "vig_quantiles": dict(zip(["p05", "p25", "p50", "p75", "p95"], quantiles or [])),
            "vig_range": list(vig_range), "warning": blind_warning(*vig_range)}


def _print_summary(summary: dict, out) -> None:
    if not summary.get("scored"):
        out("nothing to score: every corpus row already has a score for this scorer")
        return
    out(f"scored {summary['scored']} rows in {summary['seconds']:.1f}s ({summary['samples_per_s']:.2f} samples/s)")
    out(f"rows by status: {summary['rows_by_status']} ({summary['rows_for_scorer']} scored of "
        f"{summary['corpus_rows']} corpus rows)")
    quantiles = ", ".join(f"{k} {v:+.3f}" for k, v in summary["vig_quantiles"].items() if v is not None)
    out(f"sample VIG quantiles: {quantiles}")
    if summary.get("warning"):
        out(f"WARNING scorer {summary['scorer_id']}: {summary['warning']}")
    out(f"{summary['tasks']} tasks on {summary['workers']} Python workers, {summary['commits']} commits; model loads: "
        f"{summary['model_loads']} ({summary['load_seconds']:.1f} s: {'; '.join(summary['loads'])})")
