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
    if result.exit_code == 0:  # Delta falls back to listing the log: the job works and writes its selection
        assert (lake / "selection" / "_delta_log").is_dir()
    else:
        assert_one_line_failure(result, lines, 3, "select", "_last_checkpoint")
        assert snapshot(lake) == before


def _can_mount() -> str | None:
    """Why this process cannot mount file systems (None: it can)."""
    if os.geteuid() != 0:
        return "needs root to mount a read-only or a small file system (chmod does not stop root)"
    if shutil.which("mount") is None:
        return "no mount command here"
    return None


@pytest.fixture
def mounted(tmp_path):
    """``mount(source, options)`` mounts a file system at a fresh folder; unmounted at the end."""
    reason = _can_mount()
    if reason:
        pytest.skip(reason)
    points = []

    def mount(args: list[str]) -> Path:
        point = tmp_path / f"mnt{len(points)}"
        point.mkdir()
        done = subprocess.run(["mount", *args, str(point)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"mount {' '.join(args)} failed here: {done.stderr.strip()}")
        points.append(point)
        return point

    yield mount
    for point in reversed(points):
        subprocess.run(["umount", "-l", str(point)], check=False)


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
    filler = os.open(small / "filler", os.O_WRONLY | os.O_CREAT)  # takes the file system's last free blocks
    try:
        while os.write(filler, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(filler)
    before = snapshot(small / "lake")
    result, lines = invoke("select", f"lake={small / 'lake'}", "policies=[vig]")
    assert_one_line_failure(result, lines, 4, "select", "the disk is full", "No space left on device")
    after = snapshot(small / "lake")
    assert {k: v for k, v in after.items() if not k.startswith("selection/")} == before
    assert not any(k.startswith("selection/_delta_log/") and k.endswith(".json") for k in after)  # no table made
    assert not any(k.startswith("_staging/") for k in after), sorted(after)
