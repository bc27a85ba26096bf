"""Runs the whole `vig` command line on a Spark Connect session, as on Databricks standard or serverless: the
environment's SPARK_REMOTE selects it (over the config's local master). Used by tests/test_spark_connect.py.

Usage: SPARK_REMOTE=sc://host:port python tests/connect_job.py <config.yaml> <out.json>
Runs ingest, score, select, sql (a join, and a write and a file read it must refuse), report, check, export, train and
lake history, each in this one process (one Connect session), and writes each command's exit code and output.
"""

import json
import sys
import traceback

import yaml

from typer.testing import CliRunner

from vig_udf.cli import app


def main(config: str, out: str) -> None:
    runner = CliRunner()
    commands = {
        "ingest": ["ingest"], "score": ["score"], "select": ["select"],
        "sql": ["sql", "SELECT count(*) AS n FROM scores JOIN corpus USING (sample_id) WHERE scores.status = 'ok'"],
        "sql_write": ["sql", "FROM corpus INSERT INTO corpus SELECT *"],
        "sql_file": ["sql", "SELECT * FROM text.`/etc/hostname`"],
        "report": ["report"], "check": ["check"], "export": ["export"], "train": ["train"],
        "history": ["lake", "history", "scores"],
    }
    results = {}
    for name, command in commands.items():
        result = runner.invoke(app, [*command, "--config", config])
        error = None
        if result.exit_code not in (0, 1, 2) and result.exc_info:
            error = "".join(traceback.format_exception(*result.exc_info))[-4000:]
        results[name] = {"exit_code": result.exit_code, "output": result.output, "error": error}
    # vig sql's plan check on this Connect session (the text check refuses these before it is ever reached)
    from pyspark.sql import SparkSession

    from vig_udf.lake import register_views
    from vig_udf.lake.readonly import ReadOnlyError, _check_printed_plan

    spark = SparkSession.builder.getOrCreate()
    lake = yaml.safe_load(open(config))["lake"]
    register_views(spark, lake)
    refused = {}
    for statement in ("INSERT INTO corpus SELECT * FROM corpus", "SELECT count(*) FROM corpus",
                      "CREATE TABLE t AS SELECT 1", "SHOW TABLES", "DROP VIEW corpus",
                      "SELECT * FROM text.`/etc/hostname`", "SELECT * FROM read_files('/etc/hostname')",
                      f"SELECT * FROM json.`{lake}/corpus/_delta_log/00000000000000000000.json`",
                      f"SELECT count(*) FROM delta.`{lake}/corpus`", "SELECT * FROM range(3)"):
        try:
            _check_printed_plan(spark, statement, "", lake)
            refused[statement] = False
        except ReadOnlyError:
            refused[statement] = True
    results["plan_check"] = refused
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
