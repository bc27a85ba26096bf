"""The ``vig`` command line."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

import typer

from vig_udf.config import DemoConfig, ScorerConfig, SqlConfig, load_config

app = typer.Typer(help="vig-spark: Visual Information Gain scoring for vision-language training data.",
                  no_args_is_help=True, add_completion=False)


def _logging(verbose: bool) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("vig_udf").setLevel(logging.INFO)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@app.command()
def demo(
    overrides: list[str] = typer.Argument(None, help="config overrides such as samples=32 scorer.counterfactual=drop"),
    config: Optional[Path] = typer.Option(None, help="YAML config (fields of DemoConfig)"),
    verbose: bool = typer.Option(False, help="log at INFO level"),
):
    """Build the small demo model, score generated samples, and print the highest-VIG tokens."""
    _logging(verbose)
    from vig_udf.demo.run import run_demo

    run_demo(load_config(DemoConfig, config, overrides))


OVERRIDES = typer.Argument(None, help="config overrides such as lake=/data/lake scorer.counterfactual=drop")
CONFIG = typer.Option(None, help="YAML config, e.g. conf/local.yaml (the job's section plus shared lake/spark)")


def _spark_job(module: str, config_class: str, run: str, section: str, config, overrides) -> None:
    """Load the job's typed config (its YAML section plus overrides), start Spark, run the job."""
    import importlib

    from vig_udf.spark.session import spark_session

    _logging(False)
    job = importlib.import_module(module)
    cfg = load_config(getattr(job, config_class), config, overrides, section=section)
    getattr(job, run)(spark_session(cfg.spark), cfg)


@app.command()
def ingest(overrides: list[str] = OVERRIDES, config: Optional[Path] = CONFIG):
    """LLaVA JSON/JSONL/Parquet + image root -> the corpus Delta table (every record a row, with a status)."""
    _spark_job("vig_udf.spark.ingest_job", "IngestJobConfig", "run_ingest", "ingest", config, overrides)


@app.command()
def score(overrides: list[str] = OVERRIDES, config: Optional[Path] = CONFIG):
    """corpus -> scores Delta table on Spark executors; resumes where an earlier run stopped."""
    _spark_job("vig_udf.spark.score_job", "ScoreJobConfig", "run_score", "score", config, overrides)


@app.command()
def select(overrides: list[str] = OVERRIDES, config: Optional[Path] = CONFIG):
    """scores -> selection Delta table: which samples and answer tokens to train on (CPU only, cheap to rerun)."""
    _spark_job("vig_udf.spark.select_job", "SelectJobConfig", "run_select", "select", config, overrides)


@app.command()
def export(overrides: list[str] = OVERRIDES, config: Optional[Path] = CONFIG):
    """selection -> LLaVA JSON of the kept records plus a per-token mask sidecar (for other training stacks)."""
    _spark_job("vig_udf.spark.export_job", "ExportJobConfig", "run_export", "export", config, overrides)


@app.command()
def train(overrides: list[str] = OVERRIDES, config: Optional[Path] = CONFIG):
    """corpus + scores + selection -> a fine-tuned model with loss on the selected tokens, one MLflow run."""
    _spark_job("vig_udf.spark.train_job", "TrainJobConfig", "run_train", "train", config, overrides)


@app.command()
def sql(
    query: str = typer.Argument(..., help="Spark SQL over the lake's tables by name (corpus, scores, ...)"),
    config: Optional[Path] = CONFIG,
    lake: Optional[str] = typer.Option(None, help="lake root (default: the config's, else ./lake)"),
    limit: int = typer.Option(50, help="rows to show"),
):
    """Run a Spark SQL query over the lake's Delta tables, registered as views by table name."""
    _logging(False)
    from vig_udf.lake import register_views
    from vig_udf.spark.session import spark_session

    data = load_config(SqlConfig, config, [f"lake={lake}"] if lake else [], section="sql")
    spark = spark_session(data.spark)
    register_views(spark, data.lake)
    spark.sql(query).show(limit, truncate=False)


@app.command("score-file")
def score_file(
    model: str = typer.Option(..., help="HF model id or local checkpoint folder"),
    input: Path = typer.Argument(..., help="LLaVA-format JSON (a list) or JSONL"),
    out: Path = typer.Option(..., help="output JSONL, one result per input record, in input order"),
    overrides: list[str] = typer.Option(None, "--set", help="scorer options such as counterfactual=drop"),
    chunk: int = typer.Option(256, help="records scored per call (bounds memory)"),
):
    """Score a LLaVA JSON/JSONL file in this process (no Spark) and write one JSON line per record."""
    _logging(False)
    from vig_udf.scorer import VIGScorer

    cfg = load_config(ScorerConfig, None, [f"model_path={model}"] + list(overrides or []))
    records = _read_records(input)
    scorer = VIGScorer.from_pretrained(cfg.model_path, **cfg.scorer_kwargs())
    counts: dict[str, int] = {}
    with out.open("w") as f:
        for start in range(0, len(records), chunk):
            for result in scorer.score(records[start:start + chunk]):
                counts[result.status] = counts.get(result.status, 0) + 1
                row = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in result.to_dict().items()}
                f.write(json.dumps({"scorer_id": scorer.scorer_id, **row}) + "\n")
    typer.echo(f"scored {len(records)} records -> {out}; statuses {counts}")


def _read_records(path: Path) -> list[dict]:
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if not isinstance(data, list):
        raise typer.BadParameter(f"{path} must hold a JSON list of LLaVA records (or use .jsonl)")
    return data


if __name__ == "__main__":
    app()
