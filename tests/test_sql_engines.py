"""The two engines of `vig sql` and `vig lake history` agree on tables the jobs wrote: every `vig sql` query of the
README, time travel, and the history, read by Spark SQL with Delta Lake (engine=spark) and by delta-rs with
DuckDB (engine=local)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.test_spark_jobs import scorer_config, write_corpus
from vig_udf.cli import app
from vig_udf.lake import local_sql, local_tables, spark_sql, table_history
from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest
from vig_udf.spark.score_job import ScoreJobConfig, run_score
from vig_udf.spark.select_job import SelectJobConfig, run_select

pytestmark = pytest.mark.spark
ROOT = Path(__file__).resolve().parents[1]
QUIET = lambda *_: None  # noqa: E731


def readme_queries() -> list[str]:
    """Every statement the README runs with `vig sql "..."`."""
    text = (ROOT / "README.md").read_text()
    return [" ".join(q.split()) for q in re.findall(r'vig sql "([^"]+)"', text)]


@pytest.fixture(scope="module")
def jobs_lake(spark, tmp_path_factory, tiny_checkpoints):
    """A lake the jobs wrote: corpus v0 (8 records) and v1 (4 more), scores, a selection of two policies."""
    root = tmp_path_factory.mktemp("engines")
    records = write_corpus(root, n=12, seed=51)
    lake = str(root / "lake")
    (root / "first.json").write_text(json.dumps(records[:8]))
    (root / "second.json").write_text(json.dumps(records[8:]))
    for part in ("first.json", "second.json"):
        run_ingest(spark, IngestJobConfig(input=str(root / part), image_root=str(root / "images"), lake=lake),
                   out=QUIET)
    run_score(spark, ScoreJobConfig(lake=lake, scorer=scorer_config(tiny_checkpoints["llava"], root)), out=QUIET)
    run_select(spark, SelectJobConfig(lake=lake, policies=["vig", "random"], p=50), out=QUIET)
    return lake


def _same_rows(local: list[dict], spark: list[dict]) -> None:
    assert len(local) == len(spark)

    def key(row: dict):
        return tuple(str(v) for v in row.values())

    for a, b in zip(sorted(local, key=key), sorted(spark, key=key)):
        for x, y in zip(a.values(), b.values()):
            if isinstance(x, float) or isinstance(y, float):
                assert math.isclose(float(x), float(y), rel_tol=1e-12, abs_tol=1e-12), (a, b)
            else:
                assert (int(x) if hasattr(x, "as_tuple") else x) == y, (a, b)


def test_the_readme_has_queries_to_compare():
    queries = readme_queries()
    assert len(queries) >= 3 and any("JOIN corpus" in q for q in queries) and any("@v" in q for q in queries)


@pytest.mark.parametrize("statement", readme_queries())
def test_both_engines_answer_every_readme_query_alike(spark, jobs_lake, statement):
    local = local_sql.query(jobs_lake, statement).read_all()
    remote = spark_sql.query(spark, jobs_lake, statement, limit=1000)
    assert local.num_rows > 0
    _same_rows(local.to_pylist(), remote.to_pylist())
    # aliased and plain columns have the same names; an unaliased expression is named by each engine's rule
    assert [a for a in local.column_names if "(" not in a] == [b for b in remote.column_names if "(" not in b]


@pytest.mark.parametrize("statement", [
    "SELECT count(*) AS n FROM corpus@v0",
    "SELECT count(*) AS n FROM corpus",
    "SELECT sample_id FROM corpus EXCEPT SELECT sample_id FROM corpus@v0",
    "SELECT c.source, count(*) AS n, sum(c.n_turns) AS turns FROM corpus@v1 c JOIN scores s USING (sample_id) "
    "GROUP BY c.source ORDER BY n DESC, c.source",
    "SELECT sample_id, vig FROM scores ORDER BY vig DESC, sample_id LIMIT 5",
])
def test_both_engines_time_travel_alike(spark, jobs_lake, statement):
    local = local_sql.query(jobs_lake, statement).read_all().to_pylist()
    remote = spark_sql.query(spark, jobs_lake, statement, limit=1000).to_pylist()
    if "ORDER BY" in statement:
        assert [list(r.values())[0] for r in local] == [list(r.values())[0] for r in remote]  # same order
    _same_rows(local, remote)


def test_time_travel_reads_the_pinned_version(jobs_lake):
    assert local_sql.query(jobs_lake, "SELECT count(*) AS n FROM corpus@v0").read_all().to_pylist() == [{"n": 8}]
    assert local_sql.query(jobs_lake, "SELECT count(*) AS n FROM corpus").read_all().to_pylist() == [{"n": 12}]


def test_the_cli_prints_the_same_table_with_either_engine(spark, jobs_lake):
    statement = ("SELECT policy, count_if(kept) AS kept, sum(n_tokens_kept) AS tokens, min(tau) AS tau "
                 "FROM selection GROUP BY policy ORDER BY policy")
    runner = CliRunner()
    printed = {engine: runner.invoke(app, ["sql", statement, f"lake={jobs_lake}", f"engine={engine}"])
               for engine in ("local", "spark")}
    for result in printed.values():
        assert result.exit_code == 0, result.output
    assert printed["local"].stdout == printed["spark"].stdout
    assert printed["local"].stdout.startswith("+------+") and "|random|" in printed["local"].stdout


def test_both_engines_read_the_same_history(spark, jobs_lake):
    for table in ("corpus", "scores", "selection"):
        path = f"{jobs_lake}/{table}"
        local, remote = local_tables.table_history(path), table_history(spark, path)
        assert [c["version"] for c in local] == [c["version"] for c in remote]
        for a, b in zip(local, remote):
            assert {k: v for k, v in a.items() if k != "timestamp"} == {k: v for k, v in b.items() if k != "timestamp"}
            assert abs((a["timestamp"] - b["timestamp"]).total_seconds()) < 5
    runner = CliRunner()
    lines = {engine: runner.invoke(app, ["lake", "history", "corpus", f"lake={jobs_lake}", f"engine={engine}"])
             for engine in ("local", "spark")}
    assert all(r.exit_code == 0 for r in lines.values()), {k: r.output for k, r in lines.items()}
    strip = lambda text: [line.split("  ", 2)[0] + line.split("  ", 2)[2] for line in text.splitlines()]  # noqa: E731
    assert strip(lines["local"].stdout) == strip(lines["spark"].stdout)
    assert len(lines["local"].stdout.splitlines()) == 2 and "job ingest" in lines["local"].stdout


def test_the_spark_engine_refuses_what_the_local_one_refuses(spark, jobs_lake):
    runner = CliRunner()
    for engine in ("local", "spark"):
        result = runner.invoke(app, ["sql", "SELECT * FROM corpus@v9", f"lake={jobs_lake}", f"engine={engine}"])
        assert result.exit_code == 2 and "Traceback" not in result.output, (engine, result.output)
        result = runner.invoke(app, ["sql", "INSERT INTO corpus SELECT * FROM corpus", f"lake={jobs_lake}",
                                     f"engine={engine}"])
        assert result.exit_code == 2 and "read-only statements" in result.output
