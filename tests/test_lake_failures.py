"""A damaged, read-only or full lake: every command ends with one line naming what happened and its cause, a
line saying what to do, the exit code of its class (vig_udf.errors), and the lake exactly as it was.

One small lake (corpus, scores) is made once per module by the jobs; each test damages a copy of it and runs
the commands in this process on the session's Spark.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.test_spark_jobs import scorer_config, write_corpus
from vig_udf.cli import app
from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest
from vig_udf.spark.score_job import ScoreJobConfig, run_score

pytestmark = pytest.mark.spark
QUIET = lambda *_: None  # noqa: E731


@pytest.fixture(scope="module")
def made_lake(spark, tmp_path_factory, tiny_checkpoints):
    """corpus v0 and v1 (two ingests), scores v0: the original that each test copies."""
    root = tmp_path_factory.mktemp("failures")
    records = write_corpus(root, n=6, seed=77)
    lake = root / "lake"
    for name, part in (("first.json", records[:4]), ("second.json", records[4:])):
        (root / name).write_text(json.dumps(part))
        run_ingest(spark, IngestJobConfig(input=str(root / name), image_root=str(root / "images"), lake=str(lake)),
                   out=QUIET)
    run_score(spark, ScoreJobConfig(lake=str(lake), scorer=scorer_config(tiny_checkpoints["llava"], root)), out=QUIET)
    return lake


@pytest.fixture
def lake(made_lake, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the module's lake; failure traces go to tmp_path/logs."""
    monkeypatch.setenv("VIG_LOG_DIR", str(tmp_path / "logs"))
    copy = tmp_path / "lake"
    shutil.copytree(made_lake, copy)
    return copy


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def commit_file(table: Path, version: int) -> Path:
    return table / "_delta_log" / f"{version:020d}.json"


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    lines = result.output.strip().splitlines()
    return result, lines


def assert_one_line_failure(result, lines, code: int, command: str, *needles: str) -> None:
    traces = [line.split(": ", 1)[1] for line in lines if line.startswith("  full trace: ")]
    assert result.exit_code == code, result.output + (Path(traces[0]).read_text()[-6000:] if traces else "")
    assert lines[0].startswith(f"vig {command}: "), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in result.output and "py4j" not in result.output.lower(), result.output
    assert any(line.startswith("  what to do: ") for line in lines), result.output
    trace = next(line for line in lines if line.startswith("  full trace: ")).split(": ", 1)[1]
    assert Path(trace).is_file() and Path(trace).stat().st_size > 0


def test_a_truncated_newest_commit_names_the_commit(lake):
    scores = lake / "scores"
    damaged = commit_file(scores, 0)
    damaged.write_bytes(damaged.read_bytes()[:100])
    before = snapshot(lake)
    result, lines = invoke("select", f"lake={lake}", "policies=[vig]")
    assert_one_line_failure(result, lines, 3, "select", "the scores table's commit 00000000000000000000.json is "
                                                        "damaged")
    assert snapshot(lake) == before


def test_a_deleted_commit_is_named(lake, made_lake):
    corpus = lake / "corpus"
    os.remove(commit_file(corpus, 0))
    before = snapshot(lake)
    inputs = made_lake.parent
    result, lines = invoke("ingest", f"input={inputs / 'first.json'}", f"image_root={inputs / 'images'}",
                           f"lake={lake}")
    assert_one_line_failure(result, lines, 3, "ingest", "corpus")
    assert snapshot(lake) == before


def test_a_missing_data_file_is_named(lake):
    scores = lake / "scores"
    victim = sorted(scores.glob("part-*.parquet"))[0]
    victim.unlink()
    before = snapshot(lake)
    result, lines = invoke("select", f"lake={lake}", "policies=[vig]")
    assert_one_line_failure(result, lines, 3, "select", f"the scores table's data file {victim.name} is missing")
    assert snapshot(lake) == before


def test_a_garbage_last_checkpoint(lake):
    (lake / "scores" / "_delta_log" / "_last_checkpoint").write_text("{not json at all")
    before = snapshot(lake)
    result, lines = invoke("select", f"lake={lake}", "policies=[vig]")
    # Delta treats an unreadable _last_checkpoint as a hint it cannot use and lists the log instead: the job
    # works, reads every scores row, and leaves the scores table as it was
    assert result.exit_code == 0, result.output
    after = snapshot(lake)
    assert {k: v for k, v in after.items() if k.startswith("scores/")} == \
        {k: v for k, v in before.items() if k.startswith("scores/")}
    result, lines = invoke("sql", "SELECT count(*) AS n FROM selection JOIN scores USING (sample_id, scorer_id)",
                           "--format", "csv", f"lake={lake}", "engine=spark")
    assert result.exit_code == 0 and lines[-2:] == ["n", "6"], result.output


def _can_mount() -> str | None:
    """Why this process cannot mount file systems (None: it can)."""
    if os.geteuid() != 0:
        return "needs root to mount a read-only or a small file system (chmod does not stop root)"
    if shutil.which("mount") is None:
        return "no mount command here"
    return None


@pytest.fixture
def mounted(tmp_path):
    """``mount(args, at=None)`` mounts a file system at ``at`` (default: a fresh folder); unmounted at the end."""
    reason = _can_mount()
    if reason:
        pytest.skip(reason)
    points = []

    def mount(args: list[str], at: Path | None = None) -> Path:
        point = at or tmp_path / f"mnt{len(points)}"
        point.mkdir(exist_ok=True)
        done = subprocess.run(["mount", *args, str(point)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"mount {' '.join(args)} failed here: {done.stderr.strip()}")
        points.append(point)
        return point

    yield mount
    for point in reversed(points):
        subprocess.run(["umount", "-l", str(point)], check=False)


def _fill(folder: Path) -> None:
    """Take the last free blocks of ``folder``'s file system."""
    filler = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(filler, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(filler)


def test_a_read_only_lake(lake, mounted):
    ro = mounted(["--bind", str(lake)])
    subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
    before = snapshot(lake)
    result, lines = invoke("select", f"lake={ro}", "policies=[vig]")
    assert_one_line_failure(result, lines, 5, "select", "cannot be written", "Read-only file system")
    assert snapshot(lake) == before


def test_a_full_disk_leaves_no_staging(lake, mounted):
    files = [p for p in lake.rglob("*") if p.is_file()]
    size = sum(-(-p.stat().st_size // 4096) * 4096 for p in files) + 4096 * len(list(lake.rglob("*")))
    small = mounted(["-t", "tmpfs", "-o", f"size={size + (1 << 20)}", "tmpfs"])
    shutil.copytree(lake, small / "lake")
    _fill(small)
    before = snapshot(small / "lake")
    result, lines = invoke("select", f"lake={small / 'lake'}", "policies=[vig]")
    assert_one_line_failure(result, lines, 4, "select", "the disk is full", "No space left on device")
    after = snapshot(small / "lake")
    assert {k: v for k, v in after.items() if not k.startswith("selection/")} == before
    assert not any(k.startswith("selection/_delta_log/") and k.endswith(".json") for k in after)  # no table made
    assert not any(k.startswith("_staging/") for k in after), sorted(after)


@pytest.fixture(scope="module")
def selected_lake(made_lake, tmp_path_factory):
    """The module's lake with a selection table (policy vig), made once."""
    lake = tmp_path_factory.mktemp("selected") / "lake"
    shutil.copytree(made_lake, lake)
    result, _ = invoke("select", f"lake={lake}", "policies=[vig]")
    assert result.exit_code == 0, result.output
    return lake


@pytest.mark.parametrize("damage", ["read_only", "full"])
def test_spark_writing_into_a_table_it_cannot_write(selected_lake, tmp_path, mounted, damage, monkeypatch):
    """The job's lease and staging are writable; only the selection table's own folder is read-only or full, so the
    failure comes from Spark's Delta write (a Java exception), not from the job's own files."""
    monkeypatch.setenv("VIG_LOG_DIR", str(tmp_path / "logs"))
    lake = tmp_path / "lake"
    shutil.copytree(selected_lake, lake)
    table = lake / "selection"
    if damage == "read_only":
        mounted(["--bind", str(table)], at=table)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(table)], check=True)
    else:
        saved = lake / "selection.saved"
        shutil.copytree(table, saved)
        mounted(["-t", "tmpfs", "-o", "size=2m", "tmpfs"], at=table)
        shutil.copytree(saved, table, dirs_exist_ok=True)
        shutil.rmtree(saved)
        _fill(table)
    before = snapshot(lake)
    result, lines = invoke("select", f"lake={lake}", "policies=[random]")
    if damage == "read_only":
        assert_one_line_failure(result, lines, 5, "select", "cannot be written", "Read-only file system")
    else:
        assert_one_line_failure(result, lines, 4, "select", "the disk is full", "No space left on device")
    after = snapshot(lake)
    assert all(after.get(k) == v for k, v in before.items() if not k.startswith("_staging/"))
    # what the failed write left in the table's folder is only data files no commit names (Delta's own failure
    # artefact, which `vig lake vacuum` removes after the retention): the log, hence the table, is as it was
    new = {k for k in after if k not in before and not k.startswith("_staging/")}
    assert all(k.startswith("selection/") and "_delta_log" not in k and ".parquet" in k for k in new), sorted(new)
    assert not any(k.startswith("_staging/selection") for k in after), sorted(after)


@pytest.mark.parametrize("engine", ["local", "spark"])
def test_history_of_a_table_whose_newest_commit_is_damaged(lake, engine):
    damaged = commit_file(lake / "corpus", 1)
    damaged.write_bytes(damaged.read_bytes()[:50])
    before = snapshot(lake)
    result = CliRunner().invoke(app, ["lake", "history", "corpus", f"lake={lake}", f"engine={engine}"])
    assert result.exit_code == 3, result.output
    shown = result.stdout.strip().splitlines()
    assert shown[0].startswith("v1  commit 00000000000000000001.json damaged: ") and shown[1].startswith("v0  ")
    assert "job ingest" in shown[1]
    assert "vig lake history: the corpus table's commit 00000000000000000001.json is damaged" in result.stderr
    assert snapshot(lake) == before


def test_check_names_every_problem(lake):
    clean = CliRunner().invoke(app, ["lake", "check", f"lake={lake}", "engine=local"])
    assert clean.exit_code == 0, clean.output
    assert "corpus: v1, 2 commits parse, every file of the latest version is there" in clean.stdout
    victim = sorted((lake / "scores").glob("part-*.parquet"))[0]
    victim.unlink()
    newest = commit_file(lake / "corpus", 1)
    newest.unlink()  # its checksum file stays: the commit was there
    before = snapshot(lake)
    result = CliRunner().invoke(app, ["lake", "check", f"lake={lake}", "engine=local"])
    assert result.exit_code == 3, result.output
    assert "corpus: commit 00000000000000000001.json is missing" in result.stdout
    assert f"scores: data file {victim.name} of the latest version is missing" in result.stdout
    assert result.stderr.startswith("vig lake check: damaged: corpus, scores")
    assert snapshot(lake) == before


def test_restore_makes_an_earlier_version_the_latest_and_is_refused_while_a_job_writes(spark, lake):
    from vig_udf.lake import read_table, table_history
    from vig_udf.lake.owners import JOBS, owner_record

    lease = lake / "_staging" / JOBS / "running.json"
    lease.parent.mkdir(parents=True)
    lease.write_text(json.dumps(owner_record("score")))  # this process: alive
    before = snapshot(lake)
    refused, lines = invoke("lake", "restore", "corpus", "version=0", f"lake={lake}")
    assert refused.exit_code == 6 and lines[0].startswith("vig lake restore: refused: score (pid "), refused.output
    assert snapshot(lake) == before
    lease.unlink()
    done = CliRunner().invoke(app, ["lake", "restore", "corpus", "version=0", f"lake={lake}"])
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("corpus: v2 restores v0")
    path = str(lake / "corpus")
    assert read_table(spark, path).count() == read_table(spark, path, version=0).count() == 4
    assert read_table(spark, path, version=1).count() == 6  # nothing deleted
    assert table_history(spark, path)[0]["operation"] == "RESTORE" and table_history(spark, path)[0]["job"] == "restore"
    no_version, lines = invoke("lake", "restore", "corpus", f"lake={lake}")
    assert no_version.exit_code == 2 and "version=N" in lines[0]


def test_a_job_removes_the_staging_of_killed_jobs_only(lake):
    from vig_udf.lake.owners import OWNER_SUFFIX, owner_record

    staging = lake / "_staging" / "scores"
    old = 200 * 3600
    folders = {}
    for name, owner, age in (("killed", {**owner_record("score"), "pid": 2 ** 22 + 17}, old),
                             ("unowned", None, old), ("live", owner_record("score"), old),
                             ("fresh", {**owner_record("score"), "pid": 2 ** 22 + 17}, 0)):
        folder = staging / name
        (folder / "_delta_log" / "_staged_commits").mkdir(parents=True)
        (folder / "part-0.parquet").write_bytes(b"x")
        if owner:
            (staging / f"{name}{OWNER_SUFFIX}").write_text(json.dumps(owner))
        for path in [folder, *folder.rglob("*")]:
            os.utime(path, (path.stat().st_atime - age, path.stat().st_mtime - age))
        folders[name] = folder
    tables_before = {k: v for k, v in snapshot(lake).items() if not k.startswith("_staging/")}
    result = CliRunner().invoke(app, ["select", f"lake={lake}", "policies=[vig]"])
    assert result.exit_code == 0, result.output
    assert "removed the staging of 2 killed job(s)" in result.stderr
    assert not folders["killed"].exists() and not folders["unowned"].exists()
    assert not (staging / f"killed{OWNER_SUFFIX}").exists()
    assert folders["live"].exists() and folders["fresh"].exists()
    after = snapshot(lake)
    assert {k: v for k, v in after.items() if not k.startswith(("_staging/", "selection/"))} == tables_before


def test_a_folder_with_only_staged_commits_is_no_table(lake):
    (lake / "ghost" / "_delta_log" / "_staged_commits").mkdir(parents=True)
    (lake / "ghost" / "_delta_log" / "_staged_commits" / "00000000000000000000.uuid.json").write_text("{}")
    listed = CliRunner().invoke(app, ["sql", "SHOW TABLES", f"lake={lake}", "engine=local"])
    assert listed.exit_code == 0 and "ghost" not in listed.stdout, listed.output
    ghost, lines = invoke("lake", "history", "ghost", f"lake={lake}", "engine=local")
    assert ghost.exit_code == 2 and "No Delta table" in lines[0] and "log segment" not in ghost.output


def _refused_statements(lake: Path, other: Path) -> list[str]:
    return [
        "SELECT * FROM text.`/etc/hostname`",
        "SELECT * FROM binaryFile.`/etc`",
        f"SELECT * FROM json.`{lake}/corpus/_delta_log/00000000000000000000.json`",
        f"SELECT count(*) FROM delta.`{other}/corpus`",
        "SELECT * FROM read_files('/etc/hostname')",
        "SELECT * FROM corpus WHERE sample_id IN (SELECT value FROM text.`/etc/hostname`)",
        "WITH x AS (SELECT * FROM csv.`/etc/passwd`) SELECT * FROM x",
        "SELECT (SELECT max(value) FROM parquet.`/tmp`) AS v",
    ]


@pytest.mark.parametrize("engine", ["spark", "local"])
def test_sql_reads_only_the_lake(spark, made_lake, tmp_path, engine, monkeypatch):
    monkeypatch.setenv("VIG_LOG_DIR", str(tmp_path / "logs"))
    other = tmp_path / "other"
    shutil.copytree(made_lake / "corpus", other / "corpus")
    runner = CliRunner()
    for statement in _refused_statements(made_lake, other):
        result = runner.invoke(app, ["sql", statement, f"lake={made_lake}", f"engine={engine}"])
        assert result.exit_code == 2 and result.stdout == "", (statement, result.output)
        assert result.stderr.startswith("vig sql: ") and "Traceback" not in result.output, (statement, result.output)
        if engine == "spark":
            assert "Refused" in result.stderr, (statement, result.stderr)
    inside = runner.invoke(app, ["sql", f"SELECT count(*) AS n FROM delta.`{made_lake}/corpus`", f"lake={made_lake}",
                                 "engine=spark", "--format", "json"])
    assert inside.exit_code == 0 and json.loads(inside.stdout) == [{"n": 6}], inside.output


def test_sql_prints_the_parsers_reason_and_takes_overrides_after_a_config(spark, made_lake, tmp_path, monkeypatch):
    monkeypatch.setenv("VIG_LOG_DIR", str(tmp_path / "logs"))
    config = tmp_path / "local.yaml"
    config.write_text("lake: /nowhere\nsql:\n  engine: spark\n")
    runner = CliRunner()
    bad = runner.invoke(app, ["sql", "SELECT sample_id FROM corpus WHERE (1 =", "--config", str(config),
                              f"lake={made_lake}"])
    assert bad.exit_code == 2 and "Spark cannot parse the statement: " in bad.stderr, bad.output
    assert "()" not in bad.stderr and ("PARSE_SYNTAX_ERROR" in bad.stderr or "Syntax error" in bad.stderr)
    good = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM corpus", "--config", str(config), f"lake={made_lake}",
                               "--format", "json"])
    assert good.exit_code == 0 and json.loads(good.stdout) == [{"n": 6}], good.output
