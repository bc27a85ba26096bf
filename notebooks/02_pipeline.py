# Databricks notebook source
# MAGIC %pip install "vig-spark[train]"

# COMMAND ----------

# MAGIC %md
# MAGIC # From a LLaVA corpus to a selectively trained model
# MAGIC
# MAGIC The whole vig-spark flow on your own data, one step per cell:
# MAGIC
# MAGIC 1. **configure** where the corpus, the images, the model and the lake are;
# MAGIC 2. **ingest** the LLaVA records into the `corpus` Delta table;
# MAGIC 3. **score** every sample and answer token with Visual Information Gain into `scores`;
# MAGIC 4. **explore** the scores with Spark SQL and a token heatmap;
# MAGIC 5. **select** the samples and tokens that need the image into `selection`;
# MAGIC 6. **train** on the selection, tracked in MLflow;
# MAGIC 7. **inspect** the MLflow run: parameters, loss, the exact Delta table versions it read, artifacts;
# MAGIC 8. **export** the selection as LLaVA JSON plus a token-mask sidecar for other training stacks.
# MAGIC
# MAGIC Runs locally as plain Python (`python notebooks/02_pipeline.py`, a few minutes on a CPU) or on
# MAGIC Databricks, where the cluster's `spark` session is used (a dedicated or job cluster with GPUs; on standard
# MAGIC access mode and serverless, which are Spark Connect, every step but distributed training runs). The
# MAGIC first cell installs vig-spark into the notebook's environment (`%pip`; the runtime's own Spark and Delta
# MAGIC are kept). Every setting is a widget on Databricks and an environment variable elsewhere, with a small
# MAGIC default; with none set, the notebook generates a small shapes-world corpus and builds the project's demo
# MAGIC model, so nothing is downloaded.

# COMMAND ----------

# MAGIC %md
# MAGIC ## 1. Configure
# MAGIC
# MAGIC | widget (environment variable) | meaning | default |
# MAGIC |---|---|---|
# MAGIC | `lake` (`VIG_LAKE`) | folder or URI of the Delta tables | `.demo/notebook_lake` |
# MAGIC | `records` (`VIG_RECORDS`) | your LLaVA JSON / JSONL / Parquet | a generated corpus |
# MAGIC | `image_root` (`VIG_IMAGE_ROOT`) | the folder or URI the records' image paths are relative to | the generated images |
# MAGIC | `model_path` (`VIG_MODEL_PATH`) | any Hugging Face image-text-to-text checkpoint (scorer and base model) | the demo model |
# MAGIC | `samples` (`VIG_SAMPLES`) | records to generate when `records` is unset | 48 |
# MAGIC | `train_steps` (`VIG_TRAIN_STEPS`) | optimizer steps of the training run | 20 |
# MAGIC | `dtype` (`VIG_DTYPE`) | scoring precision (`float32`, `bfloat16`); empty: bfloat16 on a GPU, float32 on a CPU | empty |
# MAGIC | `mlflow_uri` (`VIG_MLFLOW_URI`) | MLflow tracking URI (`databricks` on Databricks) | `.demo/notebook_mlflow.db` |
# MAGIC | `mlflow_experiment` (`VIG_MLFLOW_EXPERIMENT`) | MLflow experiment | `vig-notebook` |
# MAGIC
# MAGIC On Databricks, point `lake`, `records` and `image_root` at a Unity Catalog volume
# MAGIC (`/Volumes/<catalog>/<schema>/<volume>/...`) or an object-store URI the cluster can read, and set
# MAGIC `mlflow_uri=databricks`: the notebook's host and token are passed to the training processes. Local files
# MAGIC the notebook writes (generated corpus, heatmap, training output) go under `.demo/`.

# COMMAND ----------

import html
import json
import os
from pathlib import Path

from vig_udf.config import ScorerConfig, SparkConfig
from vig_udf.lake import register_views, table_history, table_version
from vig_udf.notebook import forward_databricks_credentials, setting

DBUTILS = globals().get("dbutils")  # Databricks: widgets and the notebook's credentials
WORKDIR = Path(".demo").absolute()
LAKE = setting(DBUTILS, "lake", str(WORKDIR / "notebook_lake"), "Delta lake (folder or URI)")
RECORDS = setting(DBUTILS, "records", None, "LLaVA JSON / JSONL / Parquet")
IMAGE_ROOT = setting(DBUTILS, "image_root", None, "image root")
SAMPLES = int(setting(DBUTILS, "samples", "48", "records to generate"))
TRAIN_STEPS = int(setting(DBUTILS, "train_steps", "20", "training steps"))
DTYPE = setting(DBUTILS, "dtype", None, "scoring dtype (empty: bf16 on GPU)")
MLFLOW_URI = setting(DBUTILS, "mlflow_uri", f"sqlite:///{WORKDIR / 'notebook_mlflow.db'}", "MLflow tracking URI")
MLFLOW_EXPERIMENT = setting(DBUTILS, "mlflow_experiment", "vig-notebook", "MLflow experiment")
MODEL_PATH = setting(DBUTILS, "model_path", None, "model (hub id, folder or URI)")
forward_databricks_credentials(DBUTILS)
WORKDIR.mkdir(parents=True, exist_ok=True)

if MODEL_PATH is None:  # a small LLaVA-architecture model trained on the shapes world (a few minutes on a CPU, then cached)
    from vig_udf.demo.model import build_demo_model

    MODEL_PATH = build_demo_model(str(WORKDIR / "model"))

# On Databricks the notebook's `spark` exists already; locally (or in a test) a session is started or reused.
spark = globals().get("spark")
if spark is None:
    from vig_udf.spark.session import spark_session

    spark = spark_session(SparkConfig(master="local[*]", app_name="vig-notebook", conf={
        "spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4"}))


def show(df, n: int = 20) -> None:
    """Databricks' `display` when it exists, `DataFrame.show` elsewhere."""
    if "displayHTML" in globals():
        display(df.limit(n))  # noqa: F821  (Databricks)
    else:
        df.show(n, truncate=False)


# COMMAND ----------

# MAGIC %md
# MAGIC Without `VIG_RECORDS`, write a generated corpus in the LLaVA layout: a JSON list of
# MAGIC `{"id", "image", "conversations"}` records with PNG images under an image root. Questions ask for a
# MAGIC shape's colour, the number of shapes, where a shape is, or what a shape is (answerable without looking);
# MAGIC a few records are text only. Each image is filed under the kind of its first question (`colour/...`,
# MAGIC `define/...`), and ingest names a sample's *source* after its image's first folder, so the SQL below
# MAGIC can compare VIG per question kind, as you would per dataset (`coco/`, `gqa/`, ...) in LLaVA-665K.


# COMMAND ----------

def write_llava_corpus(records: list[dict], folder: Path) -> tuple[str, str]:
    """Save generated records as LLaVA JSON plus PNG images; returns (records path, image root)."""
    images = folder / "images"
    rows = []
    for rec in records:
        row = {"id": rec["id"], "conversations": rec["conversations"]}
        if rec.get("image") is not None:
            row["image"] = f"{rec['meta']['kinds'][0]}/{rec['id']}.png"
            (images / row["image"]).parent.mkdir(parents=True, exist_ok=True)
            rec["image"].save(images / row["image"])
        rows.append(row)
    (folder / "records.json").write_text(json.dumps(rows, indent=1))
    return str(folder / "records.json"), str(images)


if RECORDS is None:
    from vig_udf.demo.world import generate

    RECORDS, IMAGE_ROOT = write_llava_corpus(generate(SAMPLES, seed=2), WORKDIR / "notebook_corpus")
print(f"records {RECORDS}\nimages  {IMAGE_ROOT}\nmodel   {MODEL_PATH}\nlake    {LAKE}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## 2. Ingest
# MAGIC
# MAGIC Every record becomes one row of `corpus`, valid or not: a broken conversation or a missing image keeps
# MAGIC a `status` and a readable `error` instead of disappearing. Rerunning the cell adds nothing (the commit
# MAGIC is idempotent). Set `image_storage="bytes"` to copy the images into the table.

# COMMAND ----------

from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest

ingest_summary = run_ingest(spark, IngestJobConfig(input=RECORDS, image_root=IMAGE_ROOT, lake=LAKE))

# COMMAND ----------

# MAGIC %md
# MAGIC ## 3. Score
# MAGIC
# MAGIC Each Spark task loads the scorer once and runs two teacher-forced passes per sample, with the real image
# MAGIC and with a blurred one; token VIG is how much the real image raised the log-probability of each answer
# MAGIC token, and sample VIG is its mean. On a GPU cluster, one task per GPU. Rows already scored by the same
# MAGIC scorer are skipped, so an interrupted run resumes where it stopped.

# COMMAND ----------

from vig_udf.spark.score_job import ScoreJobConfig, run_score

score_summary = run_score(spark, ScoreJobConfig(lake=LAKE, scorer=ScorerConfig(
    model_path=MODEL_PATH, image_root=IMAGE_ROOT, dtype=DTYPE)))
SCORER_ID = score_summary["scorer_id"]

# COMMAND ----------

# MAGIC %md
# MAGIC ## 4. Explore with SQL
# MAGIC
# MAGIC `register_views` exposes every table of the lake to Spark SQL under its folder name, pinned to the
# MAGIC version it shows now. How many samples scored, and why the others did not:

# COMMAND ----------

views = register_views(spark, LAKE)
print("views (table -> version):", views)
status_sql = f"SELECT status, count(*) AS samples FROM scores WHERE scorer_id = '{SCORER_ID}' GROUP BY status"
show(spark.sql(status_sql))
status_counts = {r["status"]: r["samples"] for r in spark.sql(status_sql).collect()}

# COMMAND ----------

# MAGIC %md VIG per source: sources whose answers follow from the text alone sit near zero.

# COMMAND ----------

vig_by_source = spark.sql(f"""
    SELECT c.source, count(*) AS samples, round(avg(s.vig), 3) AS mean_vig,
           round(percentile(s.vig, 0.1), 3) AS p10, round(percentile(s.vig, 0.5), 3) AS median,
           round(percentile(s.vig, 0.9), 3) AS p90
    FROM scores s JOIN corpus c USING (sample_id)
    WHERE s.scorer_id = '{SCORER_ID}' AND s.status = 'ok'
    GROUP BY c.source ORDER BY mean_vig DESC""")
show(vig_by_source)

# COMMAND ----------

# MAGIC %md The samples where the image mattered most (the first answer shown):

# COMMAND ----------

top_samples = spark.sql(f"""
    SELECT s.sample_id, c.source, round(s.vig, 3) AS vig, s.n_tokens,
           filter(c.conversations, t -> t.from IN ('gpt', 'assistant'))[0].value AS first_answer
    FROM scores s JOIN corpus c USING (sample_id)
    WHERE s.scorer_id = '{SCORER_ID}' AND s.status = 'ok'
    ORDER BY s.vig DESC LIMIT 10""")
show(top_samples)

# COMMAND ----------

# MAGIC %md
# MAGIC A token heatmap: every scored answer token coloured by its VIG (green: the image helped predict it,
# MAGIC red: it hurt; hover for the value). The scores table locates each token by its assistant turn
# MAGIC (`token_turn`) and its character span in that answer (`token_char_start`, `token_char_end`, offsets into
# MAGIC the answer text stripped of surrounding whitespace), so the corpus text can be coloured without the
# MAGIC scorer's tokenizer. Text-only samples have no VIG: their tokens are listed uncoloured.

# COMMAND ----------

HEATMAP_ROWS = 50


def answer_heatmap(answer: str, spans: list[tuple[int, int, float | None]]) -> str:
    """HTML of one answer with each token span ``(start, end, vig)`` coloured; the text between stays plain."""
    parts, position = [], 0
    for start, end, vig in spans:
        parts.append(html.escape(answer[position:start]))
        value = 0.0 if vig is None else vig
        alpha = min(abs(value), 2.0) / 2.0
        colour = f"rgba(0,160,0,{alpha:.2f})" if value >= 0 else f"rgba(200,0,0,{alpha:.2f})"
        title = "no VIG" if vig is None else f"{vig:+.3f}"
        parts.append(f'<span title="{title}" style="background:{colour}">{html.escape(answer[start:end])}</span>')
        position = end
    parts.append(html.escape(answer[position:]))
    return "<p>" + "".join(parts) + "</p>"


def sample_heatmap(row) -> str:
    answers = [t["value"].strip() for t in row["conversations"] if t["from"] in ("gpt", "assistant")]
    token_vig = row["token_vig"] if row["token_vig"] and len(row["token_vig"]) == row["n_tokens"] else None
    by_turn: dict[int, list] = {}
    for i, turn in enumerate(row["token_turn"]):
        by_turn.setdefault(turn, []).append(
            (row["token_char_start"][i], row["token_char_end"][i], None if token_vig is None else float(token_vig[i])))
    vig = "-" if row["vig"] is None else f"{row['vig']:+.3f}"
    return (f"<h4>{html.escape(row['sample_id'])} ({html.escape(row['status'])}, VIG {vig})</h4>"
            + "".join(answer_heatmap(answer, by_turn.get(k, [])) for k, answer in enumerate(answers)))


heatmap_rows = spark.sql(f"""
    SELECT s.sample_id, s.status, s.vig, s.n_tokens, s.token_vig, s.token_turn, s.token_char_start,
           s.token_char_end, c.conversations
    FROM scores s JOIN corpus c USING (sample_id)
    WHERE s.scorer_id = '{SCORER_ID}' AND s.n_tokens > 0
    ORDER BY s.vig DESC NULLS LAST, s.sample_id LIMIT {HEATMAP_ROWS}""").collect()
heatmap = "\n".join(sample_heatmap(row) for row in heatmap_rows)
if "displayHTML" in globals():
    displayHTML(heatmap)  # noqa: F821  (Databricks)
else:
    HEATMAP_PATH = WORKDIR / "notebook_heatmap.html"
    HEATMAP_PATH.write_text(f"<html><body>\n{heatmap}\n</body></html>\n")
    print(f"heatmap of {len(heatmap_rows)} samples written to {HEATMAP_PATH}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## 5. Select
# MAGIC
# MAGIC Selection is cheap and runs on CPUs only: try another `p` without rescoring. `p = 70` keeps the 70%
# MAGIC of multimodal samples with the highest VIG (threshold tau), and inside them only the answer tokens with
# MAGIC VIG >= tau are supervised; text-only samples are kept whole. The `random` policy keeps as many samples
# MAGIC at random: the baseline to compare against.

# COMMAND ----------

from vig_udf.spark.select_job import SelectJobConfig, run_select

select_summary = run_select(spark, SelectJobConfig(lake=LAKE, policies=["vig", "random"], p=70))

# COMMAND ----------

# MAGIC %md
# MAGIC Each policy's rows in the `selection` table: samples kept, and how much of the answer-token supervision
# MAGIC remains (`token_keep` is the mask, aligned with the scores table's token arrays).

# COMMAND ----------

views = register_views(spark, LAKE)  # again: the selection table is new, and the views are pinned
selection_sql = f"""
    SELECT policy, selection_id, count(*) AS samples, sum(CAST(kept AS INT)) AS kept,
           sum(n_tokens_kept) AS tokens_kept, sum(n_tokens) AS answer_tokens,
           round(sum(n_tokens_kept) / sum(n_tokens), 3) AS supervision_kept
    FROM selection WHERE scorer_id = '{SCORER_ID}' AND scores_version = {select_summary['scores_version']}
    GROUP BY policy, selection_id ORDER BY policy"""
show(spark.sql(selection_sql))
selection_counts = {r["policy"]: r.asDict() for r in spark.sql(selection_sql).collect()}
show(spark.sql("SELECT policy, reason, count(*) AS samples FROM selection GROUP BY policy, reason ORDER BY 1, 2"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## 6. Train
# MAGIC
# MAGIC Fine-tune the scorer's model on the `vig` selection: the loss covers only the kept tokens of the kept
# MAGIC samples (the other tokens stay in the input as context). The job pins the versions of the three tables
# MAGIC it reads and records them in the MLflow run. `resume=False` starts a fresh run on every execution of
# MAGIC this cell; on a GPU cluster set `distributed={"num_processes": <GPUs>}` to train with TorchDistributor.

# COMMAND ----------

from vig_udf.spark.train_job import TrainJobConfig, run_train

mlflow_settings = {"tracking_uri": MLFLOW_URI, "experiment": MLFLOW_EXPERIMENT}
if MLFLOW_URI.startswith("sqlite:///"):  # keep the local run's artifacts next to its database
    mlflow_settings["artifact_location"] = str(WORKDIR / "notebook_mlflow_artifacts")
train_summary = run_train(spark, TrainJobConfig(
    lake=LAKE, policy="vig", output_dir=str(WORKDIR / "notebook_train" / "vig"),
    training={"steps": TRAIN_STEPS, "batch_size": 4, "learning_rate": 1e-4, "warmup_ratio": 0.0,
              "image_root": IMAGE_ROOT, "resume": False},
    mlflow=mlflow_settings))

# COMMAND ----------

# MAGIC %md
# MAGIC ## 7. The MLflow run
# MAGIC
# MAGIC Everything needed to reproduce the model is in the run: the resolved config as parameters, the loss and
# MAGIC supervised tokens per logging window (every step in a short run), the three Delta tables as dataset
# MAGIC inputs with the versions read (time-travel to them with `read_table(spark, path, version=...)`), the
# MAGIC selection summary and the final model.

# COMMAND ----------

from mlflow.tracking import MlflowClient

client = MlflowClient(MLFLOW_URI)
run = client.get_run(train_summary["run_id"])
print(f"run {run.info.run_id} ({run.info.status}) in experiment {MLFLOW_EXPERIMENT!r}")
for key in ("resolved.policy", "resolved.selection_id", "training.base_model", "training.steps", "training.method"):
    print(f"  {key:<24} {run.data.params.get(key)}")

loss_history = [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, "loss"),
                                                   key=lambda m: m.step)]
print("loss by step:", ", ".join(f"{step}: {value:.3f}" for step, value in loss_history))

dataset_inputs = {}
for item in run.inputs.dataset_inputs:
    tags = {t.key: t.value for t in item.tags}
    dataset_inputs[item.dataset.name] = {"path": tags.get("path"), "version": int(tags["delta_version"])}
    print(f"  input {item.dataset.name:<10} v{tags['delta_version']}  {tags.get('path')}")

artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
print("artifacts:", artifacts)

# COMMAND ----------

# MAGIC %md
# MAGIC The lake's own history says which job wrote each of those versions, with which code and config:

# COMMAND ----------

show(spark.sql(f"DESCRIBE HISTORY delta.`{LAKE}/scores`").select(
    "version", "timestamp", "operation", "operationMetrics.numTargetRowsInserted", "userMetadata"))
lineage = {}
for name, info in dataset_inputs.items():
    commit = next(c for c in table_history(spark, info["path"]) if c["version"] == info["version"])
    lineage[name] = commit
    latest = table_version(spark, info["path"])
    print(f"{name:<10} v{info['version']} (latest v{latest}) written by job {commit.get('job')!r}, "
          f"code {commit.get('code_version')}, config keys {sorted(commit.get('config') or {})}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## 8. Export for other training stacks
# MAGIC
# MAGIC To train with the LLaVA repository, LLaMA-Factory or TRL instead: the records the selection keeps, as
# MAGIC LLaVA JSON (unchanged, in the layout of `llava_v1_5_mix665k.json`), plus a `.mask.json` sidecar that
# MAGIC lists, per record, the character spans `[assistant turn, start, end]` of the answer text to train on.
# MAGIC A tokenizer keeps a token when it overlaps a span, so the mask works with any tokenizer.

# COMMAND ----------

from vig_udf.spark.export_job import ExportJobConfig, run_export

export_summary = run_export(spark, ExportJobConfig(lake=LAKE, policy="vig",
                                                   output=str(WORKDIR / "notebook_export" / "vig.json")))
exported = json.loads(Path(export_summary["output"]).read_text())
mask = json.loads(Path(export_summary["mask"]).read_text())
first = exported[0]
answers = [t["value"] for t in first["conversations"] if t["from"] in ("gpt", "assistant")]
versions = {name: table["version"] for name, table in mask["tables"].items()}
print(f"{len(exported)} records in {export_summary['output']} (table versions {versions})")
print(f"{first['id']}: the characters of each answer that training supervises:")
for turn, start, end in mask["masks"][first["id"]]:
    print(f"  answer {turn}: {answers[turn]!r} -> {answers[turn][start:end]!r}")
