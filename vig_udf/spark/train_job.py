"""The train job: corpus + scores + one selection (pinned versions) -> a fine-tuned model, one MLflow run.

1. Resolve the selection (``selection_id``, or the one selection of ``policy``) and the table versions:
   the selection version (pinned or latest), the scores version its rows came from, the corpus version
   (pinned or latest). A resumed run reuses the versions it started with.
2. Build the training set with Spark: the selection's kept rows joined with their scores row (the scorer's
   token ids and character spans, to which ``token_keep`` is aligned) and their corpus row (conversation,
   image); written as Parquet to ``<output_dir>/train_set``.
3. Start (or continue) the MLflow run: the resolved config as params, tags naming the policy, selection and
   scorer, the three Delta tables as dataset inputs with their versions, the selection summary as an
   artifact, system metrics.
4. Run :func:`vig_udf.train.trainer.train_selected` in this process, or on the executors through pyspark's
   ``TorchDistributor`` (``distributed.num_processes``); it logs loss and supervised tokens per step.
5. Log the final model (Hugging Face layout) and the list of skipped samples as run artifacts.

Example::

    summary = run_train(spark, TrainJobConfig(lake="lake", policy="vig", training={"steps": 200}))
    print(summary["run_id"], summary["model_dir"])
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vig_udf.config import SparkConfig
from vig_udf.scoring.conversation import DEFAULT_IMAGE_PLACEMENT
from vig_udf.scoring.formats import TEMPLATE
from vig_udf.train.settings import TrainSettings

TRAIN_SET_ROW_GROUP_BYTES = 16 * 1024 * 1024  # Parquet row-group size of the training set
# what MLflow's and Databricks' clients read for a tracking server's credentials
CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                        "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH",
                        "MLFLOW_TRACKING_CLIENT_CERT_PATH", "DATABRICKS_HOST", "DATABRICKS_TOKEN",
                        "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET")
TRAIN_SET_COLUMNS = ["sample_id", "image_path", "image_bytes", "more_images", "conversations", "token_keep",
                     "token_weight", "token_ids", "token_turn", "token_char_start", "token_char_end"]


class MlflowConfig(BaseModel):
    """Where and how the run is tracked."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str = Field("sqlite:///mlflow.db", description="any MLflow tracking URI; the default is a local "
                                                                  "SQLite store in the working folder")
    experiment: str = Field("vig-spark", description="experiment name (created when missing)")
    artifact_location: str | None = Field(None, description="artifact root of a new experiment; None = MLflow's")
    run_name: str | None = Field(None, description="run name; None = <policy>-<selection_id>")
    log_model: bool = Field(True, description="log the final model folder as the run's 'model' artifact (by rank 0)")
    system_metrics: bool = Field(True, description="log CPU/GPU/memory usage while training")
    forward_env: list[str] = Field(default_factory=lambda: list(CREDENTIAL_VARIABLES),
                                   description="environment variables passed from the driver to the training ranks "
                                               "(executors do not inherit the driver's): MLflow's and Databricks' "
                                               "credentials; those set on the driver are sent, never logged")


class DistributedConfig(BaseModel):
    """How the training function is launched."""

    model_config = ConfigDict(extra="forbid")

    num_processes: int | None = Field(None, gt=0, description="None = in this process; n = TorchDistributor with "
                                                               "n processes (one per GPU)")
    local_mode: bool = Field(False, description="TorchDistributor on the driver's node instead of the executors")
    use_gpu: bool = Field(True, description="TorchDistributor: one GPU per process (spark.task.resource.gpu.amount)")


class TrainJobConfig(BaseModel):
    """``vig train``: which selection, which base model, how to train and where to track it."""

    model_config = ConfigDict(extra="forbid")

    lake: str = Field("lake", description="lake root with the corpus, scores and selection tables")
    selection_id: str | None = Field(None, description="the selection to train on (see the select summary)")
    policy: str | None = Field(None, description="instead of selection_id: the policy whose selection to use "
                                                 "(must be the only one of that policy in the table version)")
    selection_version: int | None = Field(None, description="selection table version; None = latest")
    corpus_version: int | None = Field(None, description="corpus table version; None = latest")
    output_dir: str | None = Field(None, description="checkpoints, training set and final model: a folder every "
                                                     "rank reaches (a volume, NFS) or a URI on object storage "
                                                     "(s3a://, abfss://, gs://; checkpoints are uploaded as they "
                                                     "are written); None = train_runs/<selection_id>-<settings "
                                                     "fingerprint>")
    training: TrainSettings = TrainSettings()
    mlflow: MlflowConfig = MlflowConfig()
    distributed: DistributedConfig = DistributedConfig()
    spark: SparkConfig = SparkConfig()

    @model_validator(mode="after")
    def _one_selection(self):
        if (self.selection_id is None) == (self.policy is None):
            raise ValueError("set exactly one of selection_id and policy")
        return self


def run_train(spark, cfg: TrainJobConfig, *, out=print, on_step=None) -> dict:
    """Build the training set, train, and track everything in one MLflow run; returns the job summary."""
    import mlflow

    from vig_udf.lake.read import lake_storage
    from vig_udf.storage import canonical, join
    from vig_udf.train.trainer import train_selected

    storage = lake_storage(spark)
    if cfg.distributed.num_processes:
        check_distributed(spark, cfg.distributed)
    output = canonical(cfg.output_dir) if cfg.output_dir else None
    previous = _previous_run(output, cfg, storage)
    # a resumed run trains on the data it started with: its pinned inputs, not a new resolution
    resolved = dict(previous["inputs"]) if previous else resolve_inputs(spark, cfg)
    settings = cfg.training.model_copy(update={"base_model": cfg.training.base_model or resolved["base_model"]})
    settings, conventions = training_conventions(settings, resolved)
    if not settings.base_model:
        raise ValueError(f"no base model: the scores table has no commit of scorer {resolved['scorer_id']} that names "
                         "its model_path; set training.base_model")
    if output is None:
        output = canonical(f"train_runs/{resolved['selection_id']}-{settings.fingerprint()}")
        previous = _previous_run(output, cfg, storage)
    state_file = join(output, "run.json")
    if previous:
        _refuse_a_different_run(output, previous, cfg, settings)
    if previous and previous.get("complete"):
        out(f"{output} already holds the finished run {previous['run_id']} (model {previous['result']['model_dir']}); "
            "nothing to do (training.resume=false trains again)")
        return {**resolved, "run_id": previous["run_id"], "output_dir": str(output), **previous["result"]}
    from vig_udf.train.trainer import has_checkpoint

    # the MLflow run continues only where training does: without a checkpoint training starts over, in a new run
    resuming = bool(previous) and has_checkpoint(output, storage)
    storage.makedirs(output)
    train_set = join(output, "train_set")
    rows = _existing_train_set(train_set, resolved, storage) if resuming else None
    if rows is None:  # a resumed run keeps its training set (the same files: the resume checks them)
        rows = write_train_set(spark, resolved, train_set)
    summary = selection_summary(spark, resolved)

    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    experiment_id = (experiment.experiment_id if experiment else
                     mlflow.create_experiment(cfg.mlflow.experiment, artifact_location=cfg.mlflow.artifact_location))
    run_id = previous.get("run_id") if resuming else None
    if previous and not resuming:
        mlflow.MlflowClient().set_terminated(previous["run_id"], status="KILLED")
    run_name = cfg.mlflow.run_name or f"{resolved['policy']}-{resolved['selection_id']}"
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=None if run_id else run_name,
                          log_system_metrics=cfg.mlflow.system_metrics) as run:
        if not run_id:
            _log_run_inputs(spark, cfg, settings, resolved, summary, rows, conventions)
        state = {"run_id": run.info.run_id, "fingerprint": settings.fingerprint(), "inputs": resolved,
                 "request": _request(cfg), "settings": settings.weight_settings()}
        storage.write_text(state_file, json.dumps(state, indent=2))  # after the inputs are logged: a resume skips them
        tracking = tracking_for_ranks(mlflow.get_tracking_uri(), run.info.run_id, cfg.mlflow)
        args = (settings.model_dump(mode="json"), train_set, output)
        if cfg.distributed.num_processes:
            from pyspark.ml.torch.distributor import TorchDistributor

            result = TorchDistributor(num_processes=cfg.distributed.num_processes, local_mode=cfg.distributed.local_mode,
                                      use_gpu=cfg.distributed.use_gpu).run(train_selected, *args, tracking=tracking,
                                                                           storage=storage)
        else:
            result = train_selected(*args, tracking=tracking, on_step=on_step, storage=storage)
        # supervised tokens: the selected answer tokens plus the end-of-turn tokens (also given alone), per visit
        mlflow.log_metrics({"final_loss": result["losses"][-1] if result["losses"] else float("nan"),
                            "supervised_tokens_total": result["supervised_tokens"],
                            "end_of_turn_tokens_total": result["end_of_turn_tokens"],
                            "skipped_samples_total": len(result["skipped"]),
                            "realigned_samples": result["realigned_samples"], "train_seconds": result["seconds"]})
        mlflow.log_dict(result["skipped"], "skipped_samples.json")
        mlflow.log_metrics({"truncated_samples_total": result["truncated_samples"],
                            "truncated_tokens_total": result["truncated_tokens"]})
        # what was supervised, from the counted tokens (not from the setting)
        mlflow.set_tags({"vig.end_of_turn": "supervised" if result["end_of_turn_tokens"] else "none",
                         "vig.end_of_turn_text": repr(result["end_of_turn_text"]) if result["end_of_turn_tokens"]
                         else "", "vig.prompt_format": result["prompt_format"], "vig.image_pad": result["image_pad"]})
        if result["realigned_samples"]:
            mlflow.set_tag("vig.token_alignment", "character_spans")
        mlflow.set_tag("vig.model_uri", result["model_dir"])
        done = {k: result[k] for k in ("steps", "supervised_tokens", "end_of_turn_tokens", "supervise_end_of_turn",
                                       "realigned_samples", "rows", "model_dir", "trainable_parameters",
                                       "truncated_samples", "truncated_tokens")}
        storage.write_text(state_file, json.dumps({**state, "complete": True, "result": {
            **done, "final_loss": result["losses"][-1] if result["losses"] else None,
            "skipped_samples": len(result["skipped"])}}, indent=2))
    out(f"trained {settings.base_model} on selection {resolved['selection_id']} ({resolved['policy']}): "
        f"{rows} samples, steps {result['resumed_from_step'] + 1}-{result['steps']}, loss "
        f"{result['losses'][0] if result['losses'] else float('nan'):.4f} -> "
        f"{result['losses'][-1] if result['losses'] else float('nan'):.4f}; {result['supervised_tokens']} supervised "
        f"tokens ({result['end_of_turn_tokens']} of them end-of-turn); {result['truncated_samples']} samples cut at "
        f"max_length {settings.max_length} ({result['truncated_tokens']} supervised tokens not trained); "
        f"skipped {len(result['skipped'])}, "
        f"realigned {result['realigned_samples']}; model {result['model_dir']}; MLflow run {run.info.run_id}")
    return {**resolved, "run_id": run.info.run_id, "rows": rows, "output_dir": output, **result}


def tracking_for_ranks(tracking_uri: str, run_id: str, cfg: MlflowConfig) -> dict:
    """What the training ranks need to log to the run: the URI, the run, whether rank 0 logs the model, and the
    credential variables of ``cfg.forward_env`` that the driver's environment sets (executors lack them)."""
    import os

    env = {name: os.environ[name] for name in cfg.forward_env if os.environ.get(name)}
    return {"tracking_uri": tracking_uri, "run_id": run_id, "log_model": cfg.log_model, "env": env}


def check_distributed(spark, cfg: DistributedConfig) -> None:
    """Refuse, before TorchDistributor starts, what makes its barrier stage fail later: dynamic allocation."""
    if cfg.local_mode:
        return
    if str(spark.conf.get("spark.dynamicAllocation.enabled", "false")).lower() == "true":
        raise ValueError("distributed training runs as one Spark barrier stage, which Spark refuses while dynamic "
                         "allocation is on (spark.dynamicAllocation.enabled=true): turn it off for this cluster or "
                         "job, give a fixed number of executors with GPUs, or set distributed.local_mode=true")


def _request(cfg: TrainJobConfig) -> dict:
    """What the user asked to train on (before resolution to a selection id and versions)."""
    return {k: getattr(cfg, k) for k in ("lake", "selection_id", "policy", "selection_version", "corpus_version")}


def _refuse_a_different_run(output: str, previous: dict, cfg: TrainJobConfig, settings: TrainSettings) -> None:
    """Raise, naming what differs, when ``output`` holds a run of another selection, pinned versions or settings."""
    from vig_udf.train.trainer import record_differences

    then = {"request": previous.get("request"), "settings": previous.get("settings")}
    now = {"request": _request(cfg), "settings": settings.weight_settings()}
    changed = record_differences(then, now)
    if changed:
        raise ValueError(f"{output} holds a run that differs from this one in {', '.join(changed)} "
                         f"(then -> now: {changed}); use another output_dir, or training.resume=false to start over")


def _existing_train_set(path: str, resolved: dict, storage) -> int | None:
    """The row count of the training set already at ``path`` when it is complete, else None."""
    from vig_udf.storage import join
    from vig_udf.train.data import list_units

    if not storage.is_file(join(path, "_SUCCESS")):  # Spark writes it when the job commits
        return None
    try:
        rows = sum(u.rows for u in list_units(path, storage))
    except (ValueError, OSError):
        return None
    return rows if rows == resolved["kept"] else None


def _previous_run(output: str | None, cfg: TrainJobConfig, storage) -> dict | None:
    """The state of an earlier run in ``output`` that this one continues (None: start a new run)."""
    from vig_udf.storage import join

    if output is None or not cfg.training.resume or not storage.is_file(join(output, "run.json")):
        return None
    return json.loads(storage.read_text(join(output, "run.json")))


def resolve_inputs(spark, cfg: TrainJobConfig) -> dict:
    """The selection id and policy, the scorer, the table paths and versions, and the default base model."""
    from vig_udf.lake import table_history
    from vig_udf.lake.scorers import commit_scorers, scorer_names
    from vig_udf.spark.selection_inputs import resolve_selection

    chosen = resolve_selection(spark, lake=cfg.lake, selection_id=cfg.selection_id, policy=cfg.policy,
                               selection_version=cfg.selection_version, corpus_version=cfg.corpus_version)
    if not chosen["kept"]:
        raise ValueError(f"selection {chosen['selection_id']} keeps no sample: nothing to train on")
    paths = chosen["paths"]
    base_model, record = None, {}
    history = table_history(spark, paths["scores"])
    for commit in history:  # the newest commit of this scorer
        config = commit.get("config") or {}
        written = {s["scorer_id"]: s["scorer_record"] for s in commit_scorers(config)}
        if (commit["version"] <= chosen["versions"]["scores"] and commit.get("job") == "score"
                and chosen["scorer_id"] in written):
            base_model = (config.get("scorer") or {}).get("model_path")
            record = written[chosen["scorer_id"]]
            break
    return {**{k: chosen[k] for k in ("selection_id", "policy", "scorer_id", "p", "params", "kept", "paths",
                                       "versions")},
            "base_model": base_model, "scorer_name": scorer_names(history).get(chosen["scorer_id"]),
            "scorer_chat_template": record.get("chat_template"),
            "scorer_image_placement": record.get("image_placement"),
            # scores that predate these settings were made with the chat template, unpadded images
            "scorer_prompt_format": record.get("prompt_format", TEMPLATE if record else None),
            "scorer_image_pad": record.get("image_pad", "none" if record else None),
            "scorer_max_length": (record.get("identity") or {}).get("max_length")}


def training_conventions(settings: TrainSettings, resolved: dict) -> tuple[TrainSettings, dict]:
    """The settings with the prompt (chat template, prompt format, image placement, image padding) and the
    length limit that training uses, and where each came from.

    Unless the training settings say otherwise, training uses what the scores were made with (recorded in the
    scores table's commit). The scores' template, format and padding are used only when the base model is the
    scorer's model: another model keeps its own (its processor's template, its checkpoint defaults, resolved
    when it is loaded). The scores' ``max_length`` is the training limit whatever the model: one limit for
    scoring and training.
    """
    same_model = settings.base_model == resolved.get("base_model")
    template, template_source = settings.chat_template, "training.chat_template"
    if template is None:
        template = resolved.get("scorer_chat_template") if same_model else None
        template_source = "scores" if template is not None else "base_model"
    placement, placement_source = settings.image_placement, "training.image_placement"
    if placement is None:
        placement = resolved.get("scorer_image_placement")
        placement_source = "scores" if placement is not None else "default"
        placement = placement or DEFAULT_IMAGE_PLACEMENT
    chosen = {}
    for name in ("prompt_format", "image_pad"):
        value, source = getattr(settings, name), f"training.{name}"
        if value is None:
            value = resolved.get(f"scorer_{name}") if same_model else None
            source = "scores" if value is not None else "base_model"
        chosen[name], chosen[f"{name}_source"] = value, source
    max_length, length_source = settings.max_length, "training.max_length"
    if max_length is None:
        max_length = resolved.get("scorer_max_length")
        length_source = "scores" if max_length is not None else "none"
    conventions = {"chat_template_source": template_source, "image_placement": placement,
                   "image_placement_source": placement_source, "prompt_format_source": chosen["prompt_format_source"],
                   "image_pad_source": chosen["image_pad_source"], "max_length": max_length,
                   "max_length_source": length_source}
    return settings.model_copy(update={"chat_template": template, "image_placement": placement,
                                       "prompt_format": chosen["prompt_format"], "image_pad": chosen["image_pad"],
                                       "max_length": max_length}), conventions


def training_rows(spark, resolved: dict):
    """The kept rows of the selection (mask and loss weights), with the scorer's token arrays and the corpus
    record."""
    from pyspark.sql import functions as F

    from vig_udf.lake import read_table

    paths, versions = resolved["paths"], resolved["versions"]
    selection = read_table(spark, paths["selection"], version=versions["selection"])
    # token_weight: the loss weights of a token_weight=vig selection (null otherwise; absent from older tables)
    weight = F.col("token_weight") if "token_weight" in selection.columns else F.lit(None).cast("array<float>")
    kept = (selection.where((F.col("selection_id") == resolved["selection_id"]) & F.col("kept"))
            .select("sample_id", "token_keep", weight.alias("token_weight")))
    scores = (read_table(spark, paths["scores"], version=versions["scores"])
              .where(F.col("scorer_id") == resolved["scorer_id"])
              .select("sample_id", "token_ids", "token_turn", "token_char_start", "token_char_end"))
    corpus = read_table(spark, paths["corpus"], version=versions["corpus"])
    # images 2..n of a multi-image record (absent from a corpus written before them: null)
    more = (F.col("more_images") if "more_images" in corpus.columns
            else F.lit(None).cast("array<struct<path:string,bytes:binary>>"))
    corpus = corpus.select("sample_id", "image_path", "image_bytes", more.alias("more_images"), "conversations")
    return kept.join(scores, "sample_id").join(corpus, "sample_id").select(*TRAIN_SET_COLUMNS)


def write_train_set(spark, resolved: dict, path: str) -> int:
    """Write the training set as Parquet at ``path``; returns its row count (checked against the selection)."""
    rows = training_rows(spark, resolved)
    # small row groups: a training rank holds one row group at a time (vig_udf.train.data)
    from vig_udf.storage import spark_path

    rows.write.mode("overwrite").option("parquet.block.size", TRAIN_SET_ROW_GROUP_BYTES).parquet(spark_path(path))
    n, kept = spark.read.parquet(spark_path(path)).count(), resolved["kept"]
    if n != kept:
        raise ValueError(f"the selection keeps {kept} samples but only {n} have a scores row (scores "
                         f"v{resolved['versions']['scores']}) and a corpus row (corpus v{resolved['versions']['corpus']}); "
                         "pin corpus_version to the version that was scored")
    return n


def selection_summary(spark, resolved: dict) -> dict:
    """Counts of the selection: rows and tokens kept, by reason; the fraction of supervision kept."""
    from pyspark.sql import functions as F

    from vig_udf.lake import read_table

    rows = (read_table(spark, resolved["paths"]["selection"], version=resolved["versions"]["selection"])
            .where(F.col("selection_id") == resolved["selection_id"]))
    # one row per selection reason (a handful), not per sample
    by_reason = {r["reason"]: {"rows": r["rows"], "kept": r["kept"], "tokens": r["tokens"], "tokens_kept": r["tokens_kept"]}
                 for r in rows.groupBy("reason").agg(
                     F.count(F.lit(1)).alias("rows"), F.sum(F.col("kept").cast("int")).alias("kept"),
                     F.sum("n_tokens").alias("tokens"), F.sum("n_tokens_kept").alias("tokens_kept")).collect()}
    failed = {k for k in by_reason if k.startswith("failed:")}
    tokens = sum(v["tokens"] or 0 for k, v in by_reason.items() if k not in failed)
    kept_tokens = sum(v["tokens_kept"] or 0 for v in by_reason.values())
    return {"selection_id": resolved["selection_id"], "policy": resolved["policy"], "p": resolved["p"],
            "params": json.loads(resolved["params"]), "by_reason": by_reason,
            "rows": sum(v["rows"] for v in by_reason.values()), "kept": sum(v["kept"] or 0 for v in by_reason.values()),
            "answer_tokens": tokens, "tokens_kept": kept_tokens,
            "supervision_kept": kept_tokens / tokens if tokens else None}


def _log_run_inputs(spark, cfg: TrainJobConfig, settings: TrainSettings, resolved: dict, summary: dict,
                    rows: int, conventions: dict) -> None:
    import hashlib

    import mlflow

    # the template itself goes in as an artifact (a param value is limited in length), its hash as a param
    template = settings.chat_template
    template_hash = hashlib.sha256(template.encode()).hexdigest()[:16] if template is not None else None
    params = _flatten({**cfg.model_dump(mode="json", exclude={"spark", "training"}),
                       "training": {**settings.model_dump(mode="json", exclude={"chat_template"}),
                                    "chat_template_sha256": template_hash},
                       "resolved": {k: resolved[k] for k in ("selection_id", "policy", "scorer_id", "versions", "p")}})
    mlflow.log_params(params)
    mlflow.set_tags({"vig.policy": resolved["policy"], "vig.selection_id": resolved["selection_id"],
                     "vig.scorer_id": resolved["scorer_id"], "vig.scorer": resolved.get("scorer_name") or "",
                     "vig.p": str(resolved["p"]),
                     "vig.base_model": settings.base_model, "vig.train_rows": str(rows),
                     "vig.chat_template": conventions["chat_template_source"],
                     "vig.prompt_format_source": conventions["prompt_format_source"],
                     "vig.image_pad_source": conventions["image_pad_source"],
                     "vig.max_length": str(conventions["max_length"]),
                     "vig.image_placement": conventions["image_placement"],
                     "vig.image_placement_source": conventions["image_placement_source"]})
    if template is not None:
        mlflow.log_text(template, "chat_template.jinja")
    for name in ("corpus", "scores", "selection"):
        # the version is also a tag: MLflow's DeltaDatasetSource drops version 0 from its JSON
        mlflow.log_input(_delta_dataset(spark, name, resolved), context="training",
                         tags={"delta_version": str(resolved["versions"][name]), "path": resolved["paths"][name]})
    mlflow.log_dict(summary, "selection_summary.json")


def _delta_dataset(spark, name: str, resolved: dict):
    """An MLflow dataset for a Delta table at a version (the rows this run read from it)."""
    import hashlib

    from mlflow.data.delta_dataset_source import DeltaDatasetSource
    from mlflow.data.spark_dataset import SparkDataset
    from pyspark.sql import functions as F

    from vig_udf.lake import read_table

    path, version = resolved["paths"][name], resolved["versions"][name]
    df = read_table(spark, path, version=version)
    if name == "selection":
        df = df.where(F.col("selection_id") == resolved["selection_id"])
    elif name == "scores":
        df = df.where(F.col("scorer_id") == resolved["scorer_id"])
    digest = hashlib.sha256(f"{path}@{version}/{resolved['selection_id']}".encode()).hexdigest()[:16]
    return SparkDataset(df=df.select("sample_id"), source=DeltaDatasetSource(path=path, delta_table_version=version),
                        name=name, digest=digest)


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return flat
