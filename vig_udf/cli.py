"""The ``vig`` command line."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Optional

import typer

from vig_udf.config import DemoConfig, LakeConfig, ScorerConfig, SparkConfig, SqlConfig, load_config
from vig_udf.errors import InputError, classify, error_text
from vig_udf.preflight import check_image_root, check_input, check_model_path

app = typer.Typer(help="vig-spark: Visual Information Gain scoring for vision-language training data.",
                  no_args_is_help=True, add_completion=False)
LOG_DIR_ENV = "VIG_LOG_DIR"  # where failures' full traces go; default ~/.cache/vig/logs
_options = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="on a failure, print the full trace (Python and Java) "
                                                           "to stderr instead of a log file")):
    _options["debug"] = debug


def guarded(command: str):
    """The error boundary of the command ``vig <command>``: any exception ends it with one line ``vig <command>:
    <what happened>: <cause>``, what to do, and the exit code of its class (:mod:`vig_udf.errors`); the full trace
    goes to a log file whose path is printed (or to stderr with ``vig --debug``). Bad input needs no trace."""

    def wrap(function):
        @functools.wraps(function)
        def run(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except (typer.Exit, typer.Abort, SystemExit, KeyboardInterrupt, ModuleNotFoundError):
                raise  # the command's own exit, ^C, and a missing extra (vig_udf.extras reports it)
            except Exception as error:  # noqa: BLE001 - the boundary: every failure becomes one line
                failure = classify(error)
                typer.echo(f"vig {command}: {failure}", err=True)
                if failure.todo:
                    typer.echo(f"  what to do: {failure.todo}", err=True)
                if not (isinstance(failure, InputError) and failure is error):
                    typer.echo(f"  full trace: {_write_trace(command, error)}", err=True)
                raise typer.Exit(failure.exit_code) from None

        return run

    return wrap


def _write_trace(command: str, error: BaseException) -> str:
    """Write the failure's Python and Java traces to a fresh log file; returns where they went."""
    trace = "".join(traceback.format_exception(error)) + "\n" + error_text(error) + "\n"
    if not _options["debug"]:
        folder = Path(os.environ.get(LOG_DIR_ENV) or Path.home() / ".cache" / "vig" / "logs")
        path = folder / f"vig-{command.replace(' ', '-')}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(trace)
            return str(path)
        except OSError:  # a full or read-only disk: the trace goes to stderr instead
            pass
    typer.echo(trace, err=True)
    return "printed above"


def _logging(verbose: bool) -> None:
    # the hub's online/offline setting (HF_HUB_OFFLINE) is the user's: left as the environment has it
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("vig_udf").setLevel(logging.INFO)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    else:  # read when the commands that load a model import it (importing it here took 1.5 to 3.5 s)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@app.command()
@guarded("demo")
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
PROGRESS = typer.Option(False, "--progress", help="show Spark's console progress bar (stage bars on stderr) "
                                                  "besides the job's own progress lines")
CONSOLE_PROGRESS = "spark.ui.showConsoleProgress"


def _console_progress(spark_cfg: SparkConfig, shown: bool) -> SparkConfig:
    """``spark_cfg`` with Spark's console progress bar on (``--progress``) or, unless the config turns it on
    itself, off: pyspark starts Spark as a shell, whose bar is on by default."""
    conf = dict(spark_cfg.conf)
    if shown:
        conf[CONSOLE_PROGRESS] = "true"
    else:
        conf.setdefault(CONSOLE_PROGRESS, "false")
    return spark_cfg.model_copy(update={"conf": conf})


def _to_stderr(line: str) -> None:
    typer.echo(line, err=True)


WRITERS = ("ingest", "score", "select")  # the jobs that write to the lake's tables


def _spark_job(module: str, config_class: str, run: str, section: str, config, overrides, progress: bool) -> None:
    """Load the job's typed config (its YAML section plus overrides), start Spark, run the job; its progress
    lines go to stderr. A job that writes the lake holds a lease on it while it runs and first removes the
    staging that killed jobs left (:mod:`vig_udf.lake.owners`)."""
    import importlib

    from vig_udf.spark.session import spark_session

    _logging(False)
    job = importlib.import_module(module)
    cfg = load_config(getattr(job, config_class), config, overrides, section=section)
    if hasattr(job, "check_config"):  # whole-input mistakes fail here, before Spark starts
        job.check_config(cfg)
    uris = [value for value in (getattr(cfg, "lake", None), getattr(cfg, "input", None)) if isinstance(value, str)]
    spark_cfg = job.spark_config(cfg) if hasattr(job, "spark_config") else cfg.spark  # score: a task per GPU
    spark = spark_session(_console_progress(spark_cfg, progress), uris=uris)
    if section not in WRITERS:
        getattr(job, run)(spark, cfg, out=_to_stderr)
        return
    from vig_udf.lake.maintenance import DEFAULT_RETENTION_HOURS, clear_staging
    from vig_udf.lake.owners import job_lease
    from vig_udf.lake.read import lake_storage

    with job_lease(lake_storage(spark), cfg.lake, section):
        removed = clear_staging(spark, cfg.lake, retain_hours=DEFAULT_RETENTION_HOURS)
        if removed:
            _to_stderr(f"removed the staging of {len(removed)} killed job(s): {', '.join(removed)}")
        getattr(job, run)(spark, cfg, out=_to_stderr)


@app.command()
@guarded("ingest")
def ingest(overrides: list[str] = OVERRIDES, config: Optional[Path] = CONFIG, progress: bool = PROGRESS):
    """LLaVA JSON/JSONL/Parquet + image root -> the corpus Delta table (every record a row, with a status)."""
    _spark_job("vig_udf.spark.ingest_job", "IngestJobConfig", "run_ingest", "ingest", config, overrides, progress)


@app.command()
@guarded("score")
def score(overrides: list[str] = OVERRIDES, config: Optional[Path] = CONFIG, progress: bool = PROGRESS):
    """corpus -> scores Delta table on Spark executors; resumes where an earlier run stopped."""
    _spark_job("vig_udf.spark.score_job", "ScoreJobConfig", "run_score", "score", config, overrides, progress)


@app.command()
@guarded("select")
def select(overrides: list[str] = OVERRIDES, config: Optional[Path] = CONFIG, progress: bool = PROGRESS):
    """scores -> selection Delta table: which samples and answer tokens to train on (CPU only, cheap to rerun)."""
    _spark_job("vig_udf.spark.select_job", "SelectJobConfig", "run_select", "select", config, overrides, progress)


@app.command()
@guarded("export")
def export(overrides: list[str] = OVERRIDES, config: Optional[Path] = CONFIG, progress: bool = PROGRESS):
    """selection -> LLaVA JSON of the kept records plus a per-token mask sidecar (for other training stacks)."""
    _spark_job("vig_udf.spark.export_job", "ExportJobConfig", "run_export", "export", config, overrides, progress)


@app.command()
@guarded("train")
def train(overrides: list[str] = OVERRIDES, config: Optional[Path] = CONFIG, progress: bool = PROGRESS):
    """corpus + scores + selection -> a fine-tuned model with loss on the selected tokens, one MLflow run."""
    _spark_job("vig_udf.spark.train_job", "TrainJobConfig", "run_train", "train", config, overrides, progress)


@app.command()
@guarded("check")
def check(overrides: list[str] = OVERRIDES, config: Optional[Path] = CONFIG, progress: bool = PROGRESS):
    """Scorer sanity check on a sample (input=<JSON, JSONL or Parquet> or the lake's corpus): real vs counterfactual vs
    mismatched image; writes check.md/html/png and prints the verdict; exit code 1 when the scorer fails."""
    from vig_udf.spark.check_job import CheckJobConfig, run_check_job, uses_spark

    _logging(False)
    cfg = load_config(CheckJobConfig, config, overrides, section="check")
    spark = None
    if uses_spark(cfg):
        from vig_udf.spark.session import spark_session

        uris = [cfg.lake] + ([cfg.input] if cfg.input else [])
        spark = spark_session(_console_progress(cfg.spark, progress), uris=uris)
    result = run_check_job(cfg, spark=spark, out=typer.echo)
    if not result["passed"]:
        raise typer.Exit(1)


@app.command()
@guarded("report")
def report(overrides: list[str] = OVERRIDES, config: Optional[Path] = CONFIG, progress: bool = PROGRESS):
    """HTML report (PNG plots) of the lake's scores: statuses, VIG per source and scorer, top/bottom samples
    with coloured tokens, and what each selection keeps."""
    _spark_job("vig_udf.report.scores_report", "ReportConfig", "write_scores_report", "report", config, overrides,
               progress)


SQL_FORMAT = typer.Option("table", "--format", help="table (Spark's show layout), csv or json (both parse "
                                                 "back to the rows); stdout holds the result alone")


def _read_engine(engine: str, lake: str, spark_cfg: SparkConfig) -> str:
    """The engine of a read-only command: ``engine`` unless ``auto``, which is Spark on Databricks, under Spark
    Connect and for a lake the local reader does not reach, and the local reader otherwise."""
    from vig_udf.lake.local_tables import reads_locally
    from vig_udf.lake.paths import table_uri
    from vig_udf.spark.session import on_databricks

    if engine != "auto":
        return engine
    remote = os.environ.get("SPARK_REMOTE") or getattr(spark_cfg, "remote", None)
    return "spark" if remote or on_databricks() or not reads_locally(table_uri(lake)) else "local"


def _read_session(spark_cfg: SparkConfig, lake: str):
    """A Spark session for a read-only command: no console progress bar."""
    from vig_udf.spark.session import spark_session

    return spark_session(_console_progress(spark_cfg, False), uris=[lake])


@app.command()
@guarded("sql")
def sql(
    query: str = typer.Argument(..., help="one read-only statement over the lake's tables by name (corpus, scores, "
                                          "selection); <table>@v<n> reads version n; SELECT, WITH, SHOW, "
                                          "DESCRIBE, EXPLAIN"),
    overrides: list[str] = typer.Argument(None, help="settings such as lake=/data/lake engine=spark"),
    config: Optional[Path] = CONFIG,
    limit: int = typer.Option(50, min=1, help="rows to show (at most this many reach this process)"),
    fmt: str = SQL_FORMAT,
):
    """Run a read-only SQL statement over the lake's Delta tables, each readable by its table name."""
    from vig_udf.lake import check_read_only
    from vig_udf.sql_output import FORMATS, write_result

    _logging(False)
    if fmt not in FORMATS:
        typer.echo(f"vig sql: --format must be one of {', '.join(FORMATS)}, not {fmt!r}", err=True)
        raise typer.Exit(2)
    check_read_only(query)
    cfg = load_config(SqlConfig, config, overrides, section="sql")
    if _read_engine(cfg.engine, cfg.lake, cfg.spark) == "local":
        from vig_udf.lake.local_sql import query as local_query

        result = local_query(cfg.lake, query, spark_conf=cfg.spark.conf)
        schema, batches = result.schema, result
    else:
        from vig_udf.lake.spark_sql import query as spark_query

        result = spark_query(_read_session(cfg.spark, cfg.lake), cfg.lake, query, limit=limit)
        schema, batches = result.schema, result.to_batches()
    write_result(schema, batches, fmt, sys.stdout, limit=limit, note=_to_stderr)


lake_app = typer.Typer(help="Delta table maintenance and history of the lake's tables.", no_args_is_help=True)
app.add_typer(lake_app, name="lake")


def _lake_session(config, overrides):
    from vig_udf.spark.session import spark_session

    _logging(False)
    cfg = load_config(LakeConfig, config, overrides, section="maintenance")
    return spark_session(_console_progress(cfg.spark, False), uris=[cfg.lake]), cfg


@lake_app.command("optimize")
@guarded("lake optimize")
def lake_optimize(overrides: list[str] = OVERRIDES, config: Optional[Path] = CONFIG):
    """OPTIMIZE (compact small files of) the lake's tables, or those in tables=[...]."""
    from vig_udf.lake import optimize_lake

    spark, cfg = _lake_session(config, overrides)
    for name, metrics in optimize_lake(spark, cfg.lake, cfg.tables).items():
        typer.echo(f"{name}: {metrics['numFilesRemoved']} files compacted into {metrics['numFilesAdded']}")


@lake_app.command("vacuum")
@guarded("lake vacuum")
def lake_vacuum(overrides: list[str] = OVERRIDES, config: Optional[Path] = CONFIG):
    """VACUUM the lake's tables (files no version within retain_hours needs, such as those of killed writes)
    and clear stale staging folders. retain_hours under 168 needs retention_check=false."""
    from vig_udf.lake import vacuum_lake

    spark, cfg = _lake_session(config, overrides)
    result = vacuum_lake(spark, cfg.lake, cfg.tables, retain_hours=cfg.retain_hours,
                         retention_check=cfg.retention_check)
    typer.echo(f"vacuumed {', '.join(result['tables']) or 'no table'} (retention {cfg.retain_hours} h); "
               f"staging folders removed: {len(result['staging_removed'])}")


@lake_app.command("scorers")
@guarded("lake scorers")
def lake_scorers(overrides: list[str] = OVERRIDES, config: Optional[Path] = CONFIG):
    """Every scorer of the scores table: id, model path, family, counterfactual, rows, last scored, options."""
    from vig_udf.lake import lake_table
    from vig_udf.lake.scorers import list_scorers, scorer_lines

    _logging(False)
    cfg = load_config(LakeConfig, config, overrides, section="maintenance")
    path = lake_table(cfg.lake, "scores")
    if _read_engine(cfg.engine, cfg.lake, cfg.spark) == "local":
        from vig_udf.lake.local_sql import query
        from vig_udf.lake.local_tables import table_history as local_history

        commits = local_history(path, spark_conf=cfg.spark.conf)
        counted = query(cfg.lake, "SELECT scorer_id, count(*) AS n FROM scores GROUP BY scorer_id",
                        spark_conf=cfg.spark.conf).read_all().to_pylist()
    else:
        from vig_udf.lake import read_table, table_history

        spark = _read_session(cfg.spark, cfg.lake)
        commits = table_history(spark, path)
        counted = [r.asDict() for r in read_table(spark, path).groupBy("scorer_id").count()
                   .withColumnRenamed("count", "n").collect()]
    for line in scorer_lines(list_scorers(commits, {r["scorer_id"]: r["n"] for r in counted})):
        typer.echo(line)


@lake_app.command("history")
@guarded("lake history")
def lake_history(
    table: str = typer.Argument(..., help="table name under the lake: corpus, scores, selection"),
    overrides: list[str] = OVERRIDES,
    config: Optional[Path] = CONFIG,
    limit: int = typer.Option(20, min=1, help="newest commits to show"),
):
    """The table's commits, newest first: version, time, operation, rows added, job and code version. A table
    whose log is damaged shows the commits that parse and names the damaged ones (exit code 3)."""
    from vig_udf.lake import lake_table
    from vig_udf.lake.log_check import log_history, read_log
    from vig_udf.storage import Storage

    _logging(False)
    cfg = load_config(LakeConfig, config, overrides, section="maintenance")
    path = lake_table(cfg.lake, table)
    report = read_log(Storage.from_conf(cfg.spark.conf), path)
    if report.damaged or report.missing:
        commits = log_history(report, limit=limit)
    elif _read_engine(cfg.engine, cfg.lake, cfg.spark) == "local":
        from vig_udf.lake.local_tables import table_history as local_history

        commits = local_history(path, limit=limit, spark_conf=cfg.spark.conf)
    else:
        from vig_udf.lake import table_history

        commits = table_history(_read_session(cfg.spark, cfg.lake), path, limit=limit)
    unreadable = {**{v: f"damaged: {why}" for v, why in report.damaged.items()},
                  **{v: "missing" for v in report.missing}}
    lines = {commit["version"]: _history_line(commit) for commit in commits}
    lines.update({v: f"v{v}  commit {v:020d}.json {why}" for v, why in unreadable.items()})
    for version in sorted(lines, reverse=True)[:limit]:
        typer.echo(lines[version])
    if unreadable:
        from vig_udf.errors import LakeDamagedError, damaged_log_error

        newest = max(unreadable)
        hint = damaged_log_error(f"{table}/_delta_log/{newest:020d}.json", "")
        raise LakeDamagedError(f"the {table} table's commit {newest:020d}.json is {unreadable[newest]}"
                               + (f" ({len(unreadable) - 1} more unreadable)" if len(unreadable) > 1 else ""),
                               todo=hint.todo)


def _history_line(commit: dict) -> str:
    metrics = commit["metrics"]
    added = metrics.get("numTargetRowsInserted", metrics.get("numOutputRows"))
    return (f"v{commit['version']}  {commit['timestamp']}  {commit['operation']:<8} rows added {added}  "
            f"job {commit['job']}  code {commit['code_version']}")


@lake_app.command("check")
@guarded("lake check")
def lake_check(overrides: list[str] = OVERRIDES, config: Optional[Path] = CONFIG):
    """Check the lake's tables (or those in tables=[...]): every commit parses, no version is missing, and
    every data file the latest version references exists. Exit code 3 when a table is damaged."""
    from vig_udf.errors import LakeDamagedError
    from vig_udf.lake import lake_table
    from vig_udf.lake.local_tables import lake_tables
    from vig_udf.lake.log_check import check_files, read_log
    from vig_udf.storage import Storage

    _logging(False)
    cfg = load_config(LakeConfig, config, overrides, section="maintenance")
    storage = Storage.from_conf(cfg.spark.conf)
    names = cfg.tables or lake_tables(cfg.lake, spark_conf=cfg.spark.conf)
    damaged = []
    for name in names:
        path = lake_table(cfg.lake, name)
        report = read_log(storage, path)
        if report.latest is None:
            raise InputError(f"no Delta table {name} under {cfg.lake}")
        if not (report.damaged or report.missing):
            check_files(storage, report, _latest_files(cfg, path))
        if report.problems:
            damaged.append(name)
            for problem in report.problems:
                typer.echo(f"{name}: {problem}")
        else:
            typer.echo(f"{name}: v{report.latest}, {len(report.commits)} commits parse, every file of the latest "
                       "version is there")
    if damaged:
        raise LakeDamagedError(f"damaged: {', '.join(damaged)}",
                               todo="restore the named files from a backup, or `vig lake restore TABLE version=N` "
                                    "to a version from before the damage (`vig lake history TABLE`)")


def _latest_files(cfg: LakeConfig, path: str) -> list[str]:
    """The data files the latest version of the table at ``path`` references, as URIs."""
    if _read_engine(cfg.engine, cfg.lake, cfg.spark) == "local":
        from vig_udf.lake.local_tables import open_table

        return open_table(path, spark_conf=cfg.spark.conf).file_uris()
    from vig_udf.storage import spark_path

    spark = _read_session(cfg.spark, cfg.lake)
    return list(spark.read.format("delta").load(spark_path(path)).inputFiles())


@lake_app.command("restore")
@guarded("lake restore")
def lake_restore(
    table: str = typer.Argument(..., help="table name under the lake: corpus, scores, selection"),
    overrides: list[str] = typer.Argument(None, help="version=N (required), lake=/data/lake, ..."),
    config: Optional[Path] = CONFIG,
):
    """Make version N the table's latest again with Delta's RESTORE: a new commit with N's files (nothing is
    deleted; later versions stay readable by time travel). Refused while a job writes to the lake."""
    from vig_udf.errors import ConcurrentWriteError
    from vig_udf.lake import lake_table, table_version
    from vig_udf.lake.metadata import commit_metadata
    from vig_udf.lake.owners import live_jobs
    from vig_udf.lake.paths import delta_sql
    from vig_udf.lake.read import lake_storage
    from vig_udf.lake.session_conf import session_confs
    from vig_udf.lake.write import USER_METADATA_CONF

    _logging(False)
    cfg = load_config(LakeConfig, config, overrides, section="maintenance")
    if cfg.version is None:
        raise InputError(f"give the version to restore: vig lake restore {table} version=N "
                         f"(`vig lake history {table}` lists them)")
    spark, path = _read_session(cfg.spark, cfg.lake), lake_table(cfg.lake, table)
    writing = live_jobs(lake_storage(spark), cfg.lake)
    if writing:
        jobs = ", ".join(f"{w.get('job')} (pid {w.get('pid')} on {w.get('host')})" for w in writing)
        raise ConcurrentWriteError(f"refused: {jobs} is writing to the lake", todo="restore when it has finished")
    latest = table_version(spark, path)
    if latest is None:
        raise InputError(f"no Delta table {table} under {cfg.lake}")
    if not 0 <= cfg.version < latest:
        raise InputError(f"{table} has versions 0 to {latest}: version={cfg.version} is not an earlier one")
    metadata = commit_metadata(job="restore", config=cfg.model_dump(mode="json"), write_id=uuid.uuid4().hex)
    with session_confs(spark, {USER_METADATA_CONF: json.dumps(metadata)}):
        spark.sql(f"RESTORE TABLE {delta_sql(path)} TO VERSION AS OF {int(cfg.version)}").collect()
    typer.echo(f"{table}: v{table_version(spark, path)} restores v{cfg.version} (v{latest} and earlier stay "
               "readable by time travel)")


@app.command("score-file")
@guarded("score-file")
def score_file(
    model: str = typer.Option(..., help="HF model id or local checkpoint folder"),
    input: Path = typer.Argument(..., help="LLaVA-format JSON (a list) or JSONL"),
    out: Path = typer.Option(..., help="output JSONL, one result per input record, in input order"),
    overrides: list[str] = typer.Option(None, "--set", help="scorer options such as counterfactual=drop"),
    chunk: int = typer.Option(16, help="records scored, then written, at a time (bounds memory)"),
    config: Optional[Path] = typer.Option(None, help="YAML config whose score.scorer section gives the options"),
):
    """Score a LLaVA JSON/JSONL file in this process (no Spark) and write one JSON line per record as it is done;
    max_length defaults to the shipped configs' (2048) unless the config or --set gives one."""
    _logging(False)
    from vig_udf.score_file import scorer_config, score_records
    from vig_udf.scoring.scorer import VIGScorer

    cfg = scorer_config(model, list(overrides or []), config)
    check_model_path(cfg.model_path)
    check_image_root(cfg.image_root)
    records = _read_records(input)
    scorer = VIGScorer.from_pretrained(cfg.model_path, cfg.options())
    counts = score_records(scorer, records, out, chunk=chunk, progress=_to_stderr)
    typer.echo(f"scored {len(records)} records -> {out}; statuses {counts}")


def _read_records(path: Path) -> list[dict]:
    """The records of a LLaVA JSON list or JSON lines file; :class:`InputError` when it is neither."""
    if path.suffix not in (".json", ".jsonl"):
        raise InputError(f"input {path} is not a .json (a JSON list of LLaVA records) or .jsonl file")
    check_input(str(path))
    text = path.read_text()
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"input {path} is not valid JSON: {error}") from None
    if not isinstance(data, list):
        raise InputError(f"input {path} must hold a JSON list of LLaVA records (or use .jsonl)")
    return data


def main() -> None:
    """The ``vig`` command: a command whose optional dependencies (pyproject.toml's extras) are not installed
    ends at its start with one line naming the extra to install (:mod:`vig_udf.extras`)."""
    from vig_udf.extras import run_cli

    run_cli(app)


if __name__ == "__main__":
    main()
